//! Which instances Spot Guard bought, and for whom: one annotation per instance on the
//! Lease of the ASG it was bought in (`replacement.spot-guard/<instance-id>`), written by
//! the agent that bought it once it is InService. The agent on the new instance reads
//! its own entry: to keep Cluster Autoscaler from removing it while the evicted pods
//! land ([`crate::spot_guard::ca_protection`]) and, for an on-demand fallback, to give it back once
//! spot capacity returns ([`crate::spot_guard::scale_back`]).
//!
//! Agents that wait on the same ASG at once may each see the others' new instances as
//! new (AWS's Describe calls lag): each claims its replacement here, and an instance
//! another node claimed is never counted again. An instance another actor launched into
//! the ASG during such a wait can be claimed too; scale-back only gives an instance back
//! when the cluster has room without it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::decide::{Role, millis_ago, unix_millis};
use crate::lease::{LeaseError, Leases};
use crate::names::LEDGER_KEY_PREFIX;
use crate::node::NodeClient;

/// Entries older than this are pruned when the next entry is written: by then the
/// instance is long protected, and given back or kept on purpose.
const KEEP_ENTRIES: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    pub role: Role,
    pub asg: String,
    /// The node whose rebalance recommendation bought it.
    pub for_node: String,
    /// When its buyer saw it InService, Unix milliseconds.
    pub at: u64,
}

impl LedgerEntry {
    pub fn age(&self, now: SystemTime) -> Duration {
        millis_ago(self.at, now)
    }
}

pub fn key(instance_id: &str) -> String {
    format!("{LEDGER_KEY_PREFIX}{instance_id}")
}

/// The entry of `instance_id` among a lease's annotations; an unreadable one is none.
pub fn entry_of(annotations: &BTreeMap<String, String>, instance_id: &str) -> Option<LedgerEntry> {
    serde_json::from_str(annotations.get(&key(instance_id))?).ok()
}

/// Keys of entries older than the keep period or unreadable.
pub fn stale_keys(annotations: &BTreeMap<String, String>, now: SystemTime) -> Vec<String> {
    annotations
        .iter()
        .filter(|(key, _)| key.starts_with(LEDGER_KEY_PREFIX))
        .filter(|(_, value)| {
            serde_json::from_str::<LedgerEntry>(value)
                .map_or(true, |entry| entry.age(now) > KEEP_ENTRIES)
        })
        .map(|(key, _)| key.clone())
        .collect()
}

/// Claims `count` of the new InService `candidates` for `for_node`, in one
/// read-modify-write of the lease: an instance another node's replacement already
/// claimed is never taken, so two nodes never count the same new instance (AWS's
/// Describe lag can show one agent's launch to another as new). This node's own earlier
/// claims (a restarted agent) count first. Returns the claimed instances, or none when
/// fewer than `count` are free yet.
#[allow(clippy::too_many_arguments)]
pub async fn claim(
    leases: &Leases,
    lease: &str,
    asg: &str,
    role: Role,
    for_node: &str,
    candidates: &[String],
    count: usize,
) -> Result<Vec<String>, LeaseError> {
    let now = SystemTime::now();
    let value = serde_json::to_string(&LedgerEntry {
        role,
        asg: asg.to_owned(),
        for_node: for_node.to_owned(),
        at: unix_millis(now),
    })
    .unwrap_or_default();
    let claimed = std::sync::Mutex::new(Vec::new());
    leases
        .edit_annotations(lease, |annotations| {
            let owner = |id: &String| entry_of(annotations, id).map(|entry| entry.for_node);
            let mine: Vec<String> = candidates
                .iter()
                .filter(|id| owner(id).as_deref() == Some(for_node))
                .cloned()
                .collect();
            let free = candidates.iter().filter(|id| owner(id).is_none()).cloned();
            let picked: Vec<String> = mine.iter().cloned().chain(free).take(count).collect();
            let enough = picked.len() == count;
            let mut write = false;
            if enough {
                for stale in stale_keys(annotations, now) {
                    annotations.remove(&stale);
                }
                for id in picked.iter().filter(|id| !mine.contains(id)) {
                    annotations.insert(key(id), value.clone());
                    write = true;
                }
            }
            *claimed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                if enough { picked } else { Vec::new() };
            write
        })
        .await?;
    Ok(claimed
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// This instance's entry on one of the leases, if any.
pub async fn find(
    leases: &Leases,
    lease_names: &[String],
    instance_id: &str,
) -> Result<Option<(String, LedgerEntry)>, LeaseError> {
    for lease in lease_names {
        if let Some(entry) = entry_of(&leases.annotations(lease).await?, instance_id) {
            return Ok(Some((lease.clone(), entry)));
        }
    }
    Ok(None)
}

/// A node whose entry is not there within this age was not bought by Spot Guard: its
/// buyer records it when it sees it InService, before the kubelet registers the node.
const LOOKUP_WINDOW: Duration = Duration::from_secs(600);

/// This instance's entry, looked for again every `interval` while the node is young
/// (its buyer may not have recorded it yet); `None` when it has none or on shutdown.
pub async fn wait_for_entry(
    leases: &Leases,
    lease_names: &[String],
    instance_id: &str,
    node: &NodeClient,
    interval: Duration,
    shutdown: &CancellationToken,
) -> Option<(String, LedgerEntry)> {
    loop {
        match find(leases, lease_names, instance_id).await {
            Ok(Some(found)) => return Some(found),
            Ok(None) => {}
            Err(error) => warn!(
                "Looking up instance {instance_id} among the replacements Spot Guard bought failed, will look again: {error}"
            ),
        }
        let age = match node.get().await {
            Ok(node) => node
                .metadata
                .creation_timestamp
                .map(|Time(created)| Timestamp::now().duration_since(created))
                .and_then(|age| Duration::try_from(age).ok())
                .unwrap_or_default(),
            Err(error) => {
                warn!("Reading node {} failed: {error}", node.name());
                Duration::ZERO
            }
        };
        if age >= LOOKUP_WINDOW {
            debug!("Instance {instance_id} is not a replacement Spot Guard bought");
            return None;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Removes this instance's entry once it was given back.
pub async fn forget(leases: &Leases, lease: &str, instance_id: &str) -> Result<(), LeaseError> {
    leases
        .annotate(lease, &[(key(instance_id).as_str(), None)])
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_old_or_garbled_ones_are_stale() {
        let now = SystemTime::now();
        let fresh = LedgerEntry {
            role: Role::OnDemand,
            asg: "od".into(),
            for_node: "n1".into(),
            at: unix_millis(now - Duration::from_secs(60)),
        };
        let old = LedgerEntry {
            at: unix_millis(now - KEEP_ENTRIES - Duration::from_secs(1)),
            ..fresh.clone()
        };
        let annotations = BTreeMap::from([
            (key("i-fresh"), serde_json::to_string(&fresh).unwrap()),
            (key("i-old"), serde_json::to_string(&old).unwrap()),
            (key("i-garbled"), "{".to_owned()),
            ("spot-guard/capacity-failure".to_owned(), "{".to_owned()),
        ]);
        assert_eq!(entry_of(&annotations, "i-fresh"), Some(fresh));
        assert_eq!(entry_of(&annotations, "i-garbled"), None);
        assert_eq!(entry_of(&annotations, "i-missing"), None);
        assert_eq!(
            stale_keys(&annotations, now),
            vec![key("i-garbled"), key("i-old")]
        );
        assert_eq!(key("i-0abc"), "replacement.spot-guard/i-0abc");
    }
}
