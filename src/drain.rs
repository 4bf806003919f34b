//! The eviction loop: list the node's pods a page at a time ([`pods`]), decide per pod
//! ([`classify`], pure) keeping only what the drain needs of each, evict through
//! the Eviction API with bounded concurrency, retrying PDB refusals (429) and transient errors
//! until one deadline ([`evictions`]), then wait until the evicted pods are gone or replaced.
//!
//! The whole drain answers within `DrainSettings::timeout` of its start (plus at most one
//! short check whether the last evicted pods are gone): every request is cut at that deadline,
//! so a budget that never relents cannot hold the agent past a spot notice.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::node::is_transient;

/// One request may take this long before it is given up and sent again (on a fresh
/// connection): a connection that died silently must not eat the drain's whole window.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The end of one attempt: ATTEMPT_TIMEOUT from now, never past the drain's deadline.
fn attempt_deadline(deadline: Instant) -> Instant {
    deadline.min(Instant::now() + ATTEMPT_TIMEOUT)
}

mod budgets;
mod classify;
mod evictions;
mod pods;

use budgets::Budgets;
pub use classify::{PodDisposition, RefuseReason, SkipReason, classify};
use pods::ListFailure;
pub use pods::{PAGE_SIZE, pod_names_on_node};

/// What the drain keeps of each pod on the node: a few fields, not the whole Pod.
struct Listed {
    pod_ref: PodRef,
    uid: Option<String>,
    disposition: PodDisposition,
    /// To tell which PodDisruptionBudget covers the pod.
    labels: BTreeMap<String, String>,
}

/// How long the one check for gone pods may run past the deadline.
const FINAL_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainSettings {
    /// IGNORE_DAEMON_SETS: leave DaemonSet pods alone (their controller would recreate them).
    pub ignore_daemon_sets: bool,
    /// DELETE_LOCAL_DATA: evict pods with emptyDir volumes, losing that data.
    pub delete_local_data: bool,
    /// POD_TERMINATION_GRACE_PERIOD; `None` (config -1) keeps each pod's own.
    pub pod_termination_grace_period: Option<i64>,
    /// NODE_TERMINATION_GRACE_PERIOD: the whole drain ends this long after it starts.
    pub timeout: Duration,
    pub max_concurrent_evictions: usize,
    /// Pause between rounds of evictions refused by a PDB or failed.
    pub eviction_retry_interval: Duration,
    /// Pause between checks whether evicted pods are gone.
    pub poll_interval: Duration,
    /// The agent's own pod, never evicted (NTH skips its own pod too).
    pub own_pod: Option<PodRef>,
}

impl Default for DrainSettings {
    /// NTH's defaults. Concurrency 16: a node holds at most ~110 pods, so a full node takes
    /// about seven quick rounds, while many nodes draining at once (a spot pool shortage hits
    /// many) each add at most 16 in-flight requests to the API server's mutating budget.
    fn default() -> Self {
        DrainSettings {
            ignore_daemon_sets: true,
            delete_local_data: true,
            pod_termination_grace_period: None,
            timeout: Duration::from_secs(120),
            max_concurrent_evictions: 16,
            eviction_retry_interval: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            own_pod: None,
        }
    }
}

/// A pod by namespace and name, shown as `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    pub fn of(pod: &Pod) -> PodRef {
        PodRef {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    pub dry_run: bool,
    /// Pods whose eviction the API server accepted (in dry run: would have been evicted).
    pub evicted: Vec<PodRef>,
    pub skipped: Vec<(PodRef, SkipReason)>,
    pub refused: Vec<(PodRef, RefuseReason)>,
    /// Still refused by a PodDisruptionBudget at the deadline.
    pub blocked_by_pdb: Vec<PodRef>,
    /// Evictions that kept failing for another reason until the deadline, with the last error.
    pub eviction_failed: Vec<(PodRef, String)>,
    /// Evicted, but still on the node at the deadline.
    pub not_terminated: Vec<PodRef>,
    /// Eviction requests a PodDisruptionBudget refused (429), each retried.
    pub pdb_refusals: u64,
}

impl DrainReport {
    /// Every pod that had to leave the node has left.
    pub fn is_complete(&self) -> bool {
        self.refused.is_empty()
            && self.blocked_by_pdb.is_empty()
            && self.eviction_failed.is_empty()
            && self.not_terminated.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(
        "listing the pods on node {node} to drain it (until the {timeout:?} deadline): {source}"
    )]
    ListPods {
        node: String,
        timeout: Duration,
        #[source]
        source: kube::Error,
    },
    #[error(
        "listing the pods on node {node} to drain it: no answer before the {timeout:?} deadline"
    )]
    ListTimedOut { node: String, timeout: Duration },
}

/// Evicts every pod that [`classify`] says to evict from `node_name`, and waits for them to go.
pub async fn drain(
    client: &kube::Client,
    node_name: &str,
    settings: &DrainSettings,
    dry_run: bool,
) -> Result<DrainReport, DrainError> {
    // Config bounds NODE_TERMINATION_GRACE_PERIOD to a day; never panic on a bigger one.
    let deadline = Instant::now()
        .checked_add(settings.timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
    let pods = list_pods_until(client, node_name, settings, deadline).await?;
    let mut report = DrainReport {
        dry_run,
        ..DrainReport::default()
    };
    let mut to_evict = Vec::new();
    let mut labels = BTreeMap::new();
    for pod in pods {
        let pod_ref = pod.pod_ref;
        match pod.disposition {
            PodDisposition::Evict => {
                to_evict.push((pod_ref.clone(), pod.uid));
                labels.insert(pod_ref, pod.labels);
            }
            PodDisposition::Skip { reason } => report.skipped.push((pod_ref, reason)),
            PodDisposition::Refuse { reason } => {
                error!(pod = %pod_ref, "Not evicting pod {pod_ref}: {}", refusal_text(reason));
                report.refused.push((pod_ref, reason));
            }
        }
    }
    info!(
        "Draining: {} pods to evict, {} skipped, {} refused",
        to_evict.len(),
        report.skipped.len(),
        report.refused.len()
    );
    if dry_run {
        for (pod_ref, _) in &to_evict {
            info!(pod = %pod_ref, "DRY RUN: would evict pod {pod_ref}");
        }
        report.evicted = to_evict.into_iter().map(|(pod_ref, _)| pod_ref).collect();
        return Ok(report);
    }
    let budgets = Budgets::new(client, labels);
    let evicted =
        evictions::evict_all(client, settings, deadline, to_evict, budgets, &mut report).await;
    report.not_terminated = wait_until_gone(client, node_name, settings, deadline, evicted).await;
    log_summary(settings, &report);
    Ok(report)
}

fn refusal_text(reason: RefuseReason) -> &'static str {
    match reason {
        RefuseReason::LocalStorage => {
            "it uses emptyDir local storage and DELETE_LOCAL_DATA is false"
        }
        RefuseReason::DaemonSetNotIgnored => {
            "it belongs to a DaemonSet and IGNORE_DAEMON_SETS is false"
        }
    }
}

/// Lists the node's pods, retrying transient errors until the deadline; keeps of each pod
/// what the drain needs.
async fn list_pods_until(
    client: &kube::Client,
    node_name: &str,
    settings: &DrainSettings,
    deadline: Instant,
) -> Result<Vec<Listed>, DrainError> {
    loop {
        let listed = pods::each_pod(client, node_name, deadline, |pod| {
            Some(Listed {
                pod_ref: PodRef::of(&pod),
                disposition: classify(&pod, settings),
                uid: pod.metadata.uid,
                labels: pod.metadata.labels.unwrap_or_default(),
            })
        })
        .await;
        match listed {
            Ok(listed) => return Ok(listed),
            Err(ListFailure::Api(source))
                if !is_transient(&source) || Instant::now() >= deadline =>
            {
                return Err(DrainError::ListPods {
                    node: node_name.to_owned(),
                    timeout: settings.timeout,
                    source,
                });
            }
            Err(ListFailure::Api(error)) => {
                warn!("Listing the pods on the node failed, retrying: {error}");
                sleep_until_before(deadline, settings.eviction_retry_interval).await;
            }
            Err(ListFailure::TimedOut) if Instant::now() < deadline => {
                warn!(
                    "Listing the pods on the node got no answer within {ATTEMPT_TIMEOUT:?}, retrying"
                );
            }
            Err(ListFailure::TimedOut) => {
                return Err(DrainError::ListTimedOut {
                    node: node_name.to_owned(),
                    timeout: settings.timeout,
                });
            }
        }
    }
}

async fn sleep_until_before(deadline: Instant, pause: Duration) {
    tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
}

/// Polls the node's pods until none of `evicted` is left (a pod with the same name and a new
/// uid is a replacement and counts as gone); returns those still there at the deadline.
async fn wait_until_gone(
    client: &kube::Client,
    node_name: &str,
    settings: &DrainSettings,
    deadline: Instant,
    mut remaining: Vec<(PodRef, Option<String>)>,
) -> Vec<PodRef> {
    // PDB waits may have used up the deadline: one check is still owed to the pods evicted last.
    let mut request_deadline = deadline.max(Instant::now() + FINAL_CHECK_TIMEOUT);
    while !remaining.is_empty() {
        let answer = pods::present(client, node_name, request_deadline).await;
        request_deadline = deadline;
        match answer {
            Ok(present) => {
                let present: BTreeSet<(PodRef, Option<String>)> = present.into_iter().collect();
                remaining.retain(|entry| present.contains(entry));
            }
            Err(ListFailure::Api(error)) => {
                warn!("Checking which evicted pods are gone failed, retrying: {error}");
            }
            Err(ListFailure::TimedOut) if Instant::now() < deadline => {
                warn!(
                    "Checking which evicted pods are gone got no answer within {ATTEMPT_TIMEOUT:?}, retrying"
                );
            }
            Err(ListFailure::TimedOut) => break,
        }
        if remaining.is_empty() || Instant::now() >= deadline {
            break;
        }
        sleep_until_before(deadline, settings.poll_interval).await;
    }
    remaining.into_iter().map(|(pod_ref, _)| pod_ref).collect()
}

fn names(pods: impl IntoIterator<Item = impl fmt::Display>) -> String {
    pods.into_iter()
        .map(|pod| pod.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn log_summary(settings: &DrainSettings, report: &DrainReport) {
    info!(
        "Drain finished: {} evicted, {} skipped (DaemonSet, mirror or completed), \
         {} refused, {} blocked by PodDisruptionBudget, {} failed, {} not terminated",
        report.evicted.len(),
        report.skipped.len(),
        report.refused.len(),
        report.blocked_by_pdb.len(),
        report.eviction_failed.len(),
        report.not_terminated.len()
    );
    if report.is_complete() {
        return;
    }
    let mut problems = Vec::new();
    if !report.blocked_by_pdb.is_empty() {
        problems.push(format!(
            "blocked by PodDisruptionBudget: {}",
            names(&report.blocked_by_pdb)
        ));
    }
    if !report.not_terminated.is_empty() {
        problems.push(format!(
            "evicted but not terminated: {}",
            names(&report.not_terminated)
        ));
    }
    if !report.eviction_failed.is_empty() {
        let failed = report
            .eviction_failed
            .iter()
            .map(|(pod_ref, why)| format!("{pod_ref} ({why})"));
        problems.push(format!("eviction failed: {}", names(failed)));
    }
    if !report.refused.is_empty() {
        problems.push(format!(
            "refused: {}",
            names(report.refused.iter().map(|(pod_ref, _)| pod_ref))
        ));
    }
    error!(
        "Drain incomplete after {:?}: {}",
        settings.timeout,
        problems.join("; ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_incomplete_while_a_pod_is_blocked() {
        let mut report = DrainReport::default();
        assert!(report.is_complete());
        report.blocked_by_pdb.push(PodRef {
            namespace: "ns".to_owned(),
            name: "p".to_owned(),
        });
        assert!(!report.is_complete());
    }
}
