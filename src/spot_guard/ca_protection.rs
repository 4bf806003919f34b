//! Keeps Cluster Autoscaler from removing a replacement Spot Guard bought before the
//! evicted pods have landed on it: an empty new node looks unneeded to Cluster Autoscaler.
//! The agent on the new node annotates its own Node
//! `cluster-autoscaler.kubernetes.io/scale-down-disabled=true` until
//! SPOT_GUARD_NEW_NODE_PROTECTION after the replacement was InService, and removes it
//! then. `spot-guard/scale-down-disabled-until` records that the annotation is Spot
//! Guard's, so a restarted agent removes it on time and one set by someone else is never
//! touched.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::decide::{from_unix_millis, unix_millis};
use super::ledger::{self, LedgerEntry};
use crate::lease::Leases;
use crate::names::{CA_SCALE_DOWN_DISABLED, PROTECTED_UNTIL_ANNOTATION};
use crate::node::NodeClient;
use crate::record;

/// What to do about the protection now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Annotate, then remove at `until`.
    Protect { until: SystemTime },
    /// Ours already (an earlier run set it): remove at `until`.
    RemoveAt { until: SystemTime },
    /// Ours and past its time.
    RemoveNow,
    /// Not a replacement, protection off, past the window, or someone else's annotation.
    Nothing,
}

/// Decides from the Node's annotations (ours, if any, and Cluster Autoscaler's) and the
/// node's ledger entry.
pub fn plan(
    ours: Option<&str>,
    ca_annotation_set: bool,
    entry: Option<&LedgerEntry>,
    window: Duration,
    now: SystemTime,
) -> Step {
    if let Some(ours) = ours {
        let until = ours.parse::<u64>().map_or(UNIX_EPOCH, from_unix_millis);
        return if now >= until {
            Step::RemoveNow
        } else {
            Step::RemoveAt { until }
        };
    }
    if ca_annotation_set || window.is_zero() {
        return Step::Nothing;
    }
    match entry {
        // The entry's time is read from a Lease anyone may write: checked arithmetic.
        Some(entry) => match from_unix_millis(entry.at).checked_add(window) {
            Some(until) if now < until => Step::Protect { until },
            _ => Step::Nothing,
        },
        None => Step::Nothing,
    }
}

/// The protection of this agent's own node.
pub struct CaProtection {
    pub node: NodeClient,
    pub leases: Leases,
    /// The leases of both ASGs, where the ledger is.
    pub lease_names: Vec<String>,
    pub instance_id: String,
    pub window: Duration,
    /// Between two looks for this node's ledger entry while the node is young.
    pub lookup_interval: Duration,
}

impl CaProtection {
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.node.name().to_owned();
        let (ours, ca_set) = match self.node.get().await {
            Ok(node) => (
                record::annotation(&node, PROTECTED_UNTIL_ANNOTATION).map(str::to_owned),
                record::annotation(&node, CA_SCALE_DOWN_DISABLED).is_some(),
            ),
            Err(error) => {
                error!(
                    "Cannot read node {name} to check its Cluster Autoscaler protection: {error}"
                );
                return;
            }
        };
        let entry = if ours.is_none() && !ca_set && !self.window.is_zero() {
            ledger::wait_for_entry(
                &self.leases,
                &self.lease_names,
                &self.instance_id,
                &self.node,
                self.lookup_interval,
                &shutdown,
            )
            .await
            .map(|(_, entry)| entry)
        } else {
            None
        };
        let until = match plan(
            ours.as_deref(),
            ca_set,
            entry.as_ref(),
            self.window,
            SystemTime::now(),
        ) {
            Step::Nothing => return,
            Step::RemoveNow => {
                self.remove().await;
                return;
            }
            Step::RemoveAt { until } => until,
            Step::Protect { until } => {
                let until_ms = unix_millis(until).to_string();
                match self
                    .node
                    .set_annotations(&[
                        (CA_SCALE_DOWN_DISABLED, "true"),
                        (PROTECTED_UNTIL_ANNOTATION, until_ms.as_str()),
                    ])
                    .await
                {
                    Ok(_) => info!(
                        "Node {name} is a replacement Spot Guard bought: Cluster Autoscaler scale-down disabled on it for {}s, while the evicted pods land",
                        until
                            .duration_since(SystemTime::now())
                            .unwrap_or_default()
                            .as_secs()
                    ),
                    Err(error) => {
                        error!(
                            "Protecting node {name} from Cluster Autoscaler scale-down failed: {error}"
                        );
                        return;
                    }
                }
                until
            }
        };
        let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::select! {
            // A restarted agent removes it on time.
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => self.remove().await,
        }
    }

    async fn remove(&self) {
        let name = self.node.name();
        match self
            .node
            .remove_annotations(&[CA_SCALE_DOWN_DISABLED, PROTECTED_UNTIL_ANNOTATION])
            .await
        {
            Ok(_) => info!(
                "Cluster Autoscaler protection of node {name} ended: scale-down enabled again"
            ),
            Err(error) => error!(
                "Removing the Cluster Autoscaler protection of node {name} failed (remove {CA_SCALE_DOWN_DISABLED} by hand): {error}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spot_guard::decide::Role;

    #[test]
    fn protection_lasts_the_window_from_in_service_and_only_ours_is_removed() {
        let now = SystemTime::now();
        let window = Duration::from_secs(900);
        let entry = LedgerEntry {
            role: Role::Spot,
            asg: "spot".into(),
            for_node: "old".into(),
            at: unix_millis(now - Duration::from_secs(60)),
        };
        let until = UNIX_EPOCH + Duration::from_millis(entry.at) + window;
        assert_eq!(
            plan(None, false, Some(&entry), window, now),
            Step::Protect { until }
        );
        assert_eq!(plan(None, false, None, window, now), Step::Nothing);
        assert_eq!(
            plan(None, true, Some(&entry), window, now),
            Step::Nothing,
            "someone else's annotation is left alone"
        );
        assert_eq!(
            plan(None, false, Some(&entry), Duration::ZERO, now),
            Step::Nothing
        );
        let late = now + window;
        assert_eq!(plan(None, false, Some(&entry), window, late), Step::Nothing);
        let ours = unix_millis(until).to_string();
        assert_eq!(
            plan(Some(&ours), true, None, window, now),
            Step::RemoveAt {
                until: UNIX_EPOCH + Duration::from_millis(unix_millis(until))
            }
        );
        assert_eq!(plan(Some(&ours), true, None, window, late), Step::RemoveNow);
        assert_eq!(
            plan(Some("garbage"), true, None, window, now),
            Step::RemoveNow
        );
    }
}
