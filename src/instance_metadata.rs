//! What the agent knows about its own instance, read from IMDS as NTH reads it at start-up
//! (the instance identity document, then the life cycle, host names and addresses): the
//! webhook's `.AccountId`, `.InstanceType`, `.LocalIP`, … and the annotations of every
//! Kubernetes event. When IMDS does not answer at start, [`read_until_answered`] keeps
//! trying in the background, so reports filled in later still carry the fields.

use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::imds::{ImdsClient, ImdsError};

pub const IDENTITY_DOCUMENT_PATH: &str = "/latest/dynamic/instance-identity/document";
pub const INSTANCE_LIFE_CYCLE_PATH: &str = "/latest/meta-data/instance-life-cycle";
pub const INSTANCE_TYPE_PATH: &str = "/latest/meta-data/instance-type";
pub const LOCAL_HOSTNAME_PATH: &str = "/latest/meta-data/local-hostname";
pub const LOCAL_IPV4_PATH: &str = "/latest/meta-data/local-ipv4";
pub const PUBLIC_HOSTNAME_PATH: &str = "/latest/meta-data/public-hostname";
pub const PUBLIC_IPV4_PATH: &str = "/latest/meta-data/public-ipv4";
pub const AVAILABILITY_ZONE_PATH: &str = "/latest/meta-data/placement/availability-zone";

/// The longest pause between two background reads while IMDS does not answer.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// NTH's `NodeMetadata`; empty strings where IMDS has nothing (no public address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceMetadata {
    pub account_id: String,
    pub instance_id: String,
    /// `spot` or `on-demand`.
    pub instance_life_cycle: String,
    pub instance_type: String,
    pub public_hostname: String,
    pub public_ipv4: String,
    pub local_hostname: String,
    pub local_ipv4: String,
    pub availability_zone: String,
    pub region: String,
}

/// The fields NTH takes from the identity document (IMDS serves more).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument {
    #[serde(default)]
    account_id: String,
    #[serde(default)]
    instance_type: String,
    #[serde(default)]
    private_ip: String,
    #[serde(default)]
    availability_zone: String,
    #[serde(default)]
    region: String,
}

/// Reads everything; an error only when the instance id itself cannot be read (IMDS
/// unreachable or refusing), the other fields are best effort as in NTH.
pub async fn read(imds: &ImdsClient) -> Result<InstanceMetadata, ImdsError> {
    imds.off_runtime(read_blocking).await
}

fn read_blocking(imds: &ImdsClient) -> Result<InstanceMetadata, ImdsError> {
    let instance_id = imds.instance_id()?;
    let mut metadata = match identity_document(imds) {
        Ok(document) => InstanceMetadata {
            account_id: document.account_id,
            instance_type: document.instance_type,
            local_ipv4: document.private_ip,
            availability_zone: document.availability_zone,
            region: document.region,
            ..InstanceMetadata::default()
        },
        Err(error) => {
            // NTH's fallback: the same fields from their own paths, the region from the zone.
            warn!(
                "Cannot read the instance identity document ({error}); reading its fields one by one"
            );
            let availability_zone = optional(imds, AVAILABILITY_ZONE_PATH);
            InstanceMetadata {
                instance_type: optional(imds, INSTANCE_TYPE_PATH),
                local_ipv4: optional(imds, LOCAL_IPV4_PATH),
                region: region_of(&availability_zone).to_owned(),
                availability_zone,
                ..InstanceMetadata::default()
            }
        }
    };
    metadata.instance_id = instance_id;
    metadata.instance_life_cycle = optional(imds, INSTANCE_LIFE_CYCLE_PATH);
    metadata.local_hostname = optional(imds, LOCAL_HOSTNAME_PATH);
    metadata.public_hostname = optional(imds, PUBLIC_HOSTNAME_PATH);
    metadata.public_ipv4 = optional(imds, PUBLIC_IPV4_PATH);
    Ok(metadata)
}

/// [`read`] again and again, the wait doubling from `first_wait` up to a minute, until
/// IMDS answers; None when `shutdown` comes first.
pub async fn read_until_answered(
    imds: &ImdsClient,
    first_wait: Duration,
    shutdown: &CancellationToken,
) -> Option<InstanceMetadata> {
    let mut wait = first_wait;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(wait) => {}
        }
        match read(imds).await {
            Ok(metadata) => {
                info!(
                    instance = %metadata.instance_id,
                    "IMDS answered: instance metadata read for webhooks and events"
                );
                return Some(metadata);
            }
            Err(error) => {
                debug!("Instance metadata still unreadable ({error}); trying again");
                wait = wait.saturating_mul(2).min(MAX_RETRY_WAIT);
            }
        }
    }
}

fn identity_document(imds: &ImdsClient) -> Result<IdentityDocument, String> {
    let text = imds
        .text(IDENTITY_DOCUMENT_PATH)
        .map_err(|error| error.to_string())?
        .ok_or_else(|| format!("IMDS answered 404 to GET {IDENTITY_DOCUMENT_PATH}"))?;
    serde_json::from_str(&text).map_err(|error| format!("not the JSON IMDS serves: {error}"))
}

fn optional(imds: &ImdsClient, path: &str) -> String {
    match imds.text(path) {
        Ok(text) => text.unwrap_or_default(),
        Err(error) => {
            debug!(path, "Instance metadata field left empty: {error}");
            String::new()
        }
    }
}

/// `us-east-1a` → `us-east-1` (NTH drops the zone's last character).
fn region_of(availability_zone: &str) -> &str {
    match availability_zone.char_indices().last() {
        Some((last, _)) if last > 0 => &availability_zone[..last],
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_is_the_zone_without_its_letter() {
        assert_eq!(region_of("eu-west-1b"), "eu-west-1");
        assert_eq!(region_of("a"), "");
        assert_eq!(region_of(""), "");
    }
}
