//! Carries out a [`NodeActionPlan`] on the agent's node (taint, cordon, drain), undoes
//! it when an event is cancelled or the node came back from a reboot, and keeps the
//! record on the Node that lets a restarted agent know what was done.
//!
//! Each step is logged and a failed step does not stop the next one: a node about to
//! lose its instance is better half-protected than not at all.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{error, info, warn};

use crate::config::TaintEffect;
use crate::drain::{self, DrainSettings};
use crate::names::{
    self, ACTION_LABEL, ACTION_TIME_LABEL, AGENT_TAINTS, CORDONED_BY_ANNOTATION, EVENT_ID_LABEL,
    EXCLUDE_FROM_LB_LABEL, EXCLUDE_FROM_LB_VALUE, HANDLED_EVENTS_ANNOTATION, NTH_LABELS,
    OUT_OF_SERVICE_TAINT, OUT_OF_SERVICE_VALUE, UNCORDON_AFTER_REBOOT,
};
use crate::node::NodeClient;
use crate::plan::{self, NodeActionPlan};
use crate::record::{self, NodeRecord};
use crate::report::{InterruptionEvent, NodeAction, Reporter};

pub struct NodeActions {
    node: NodeClient,
    kube: kube::Client,
    drain: DrainSettings,
    dry_run: bool,
    uptime_file: String,
    reporter: Reporter,
}

/// How the node actions for one event ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    Cordoned,
    Drained,
    /// The drain ended with pods left (PDB, refused, not terminated) or failed.
    DrainIncomplete,
}

/// The longest wait for the node's labels and pod names before acting: they only feed
/// reports, so an API server that does not answer must not delay the drain.
const CONTEXT_READ_TIMEOUT: Duration = Duration::from_secs(3);

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl NodeActions {
    pub fn new(
        node: NodeClient,
        kube: kube::Client,
        drain: DrainSettings,
        dry_run: bool,
        uptime_file: String,
    ) -> Self {
        NodeActions {
            node,
            kube,
            drain,
            dry_run,
            uptime_file,
            reporter: Reporter::default(),
        }
    }

    pub fn set_reporter(&mut self, reporter: Reporter) {
        self.reporter = reporter;
    }

    fn name(&self) -> &str {
        self.node.name()
    }

    /// What earlier runs of the agent recorded; empty (with a warning) when unreadable.
    pub async fn load_record(&self) -> NodeRecord {
        match self.node.get().await {
            Ok(node) => NodeRecord::from_node(&node),
            Err(error) => {
                warn!(
                    "Cannot read node {} to learn what an earlier run did ({error}); acting as on a fresh node",
                    self.name()
                );
                NodeRecord::default()
            }
        }
    }

    pub async fn apply(
        &self,
        plan: &NodeActionPlan,
        event: &InterruptionEvent,
        reason: &str,
    ) -> ActionOutcome {
        let name = self.name().to_string();
        let event = &self.with_node_context(event).await;
        if let Some(taint) = &plan.taint {
            let tainted = self.node.taint(taint.key, &taint.value, taint.effect).await;
            if let Err(error) = &tainted {
                error!("Tainting node {name} with {} failed: {error}", taint.key);
            }
            let error = tainted.err().map(|e| e.to_string());
            self.reporter.node_action(
                event,
                NodeAction::Taint,
                error.as_deref().map_or(Ok(()), Err),
            );
        }
        let cordon_error = if plan.cordon {
            self.cordon(&event.event_id, plan.exclude_from_load_balancers)
                .await
        } else {
            None
        };
        if !plan.drain {
            info!("Node {name} cordoned for the {reason}; not draining (cordon only)");
            self.reporter.node_action(
                event,
                NodeAction::Cordon,
                cordon_error.as_deref().map_or(Ok(()), Err),
            );
            return ActionOutcome::Cordoned;
        }
        let started = Instant::now();
        let drained = drain::drain(&self.kube, &name, &self.drain, self.dry_run).await;
        let (outcome, failure) = match &drained {
            Ok(report) if report.is_complete() => (ActionOutcome::Drained, None),
            Ok(report) => {
                error!(
                    "Drain of node {name} for the {reason} did not complete; see the pods named above"
                );
                (
                    ActionOutcome::DrainIncomplete,
                    Some(format!(
                        "drain incomplete: {} blocked by PodDisruptionBudget, {} not terminated, {} refused, {} failed",
                        report.blocked_by_pdb.len(),
                        report.not_terminated.len(),
                        report.refused.len(),
                        report.eviction_failed.len()
                    )),
                )
            }
            Err(error) => {
                error!("Draining node {name} failed: {error}");
                (ActionOutcome::DrainIncomplete, Some(error.to_string()))
            }
        };
        let failure = cordon_error.or(failure);
        self.reporter.node_action(
            event,
            NodeAction::CordonAndDrain,
            failure.as_deref().map_or(Ok(()), Err),
        );
        self.reporter.drain_finished(
            match (&drained, &outcome) {
                (Err(_), _) => "failed",
                (Ok(_), ActionOutcome::Drained) => "complete",
                _ => "incomplete",
            },
            started.elapsed(),
        );
        if let Ok(report) = &drained {
            self.reporter.pdb_eviction_retries(report.pdb_refusals);
        }
        if outcome != ActionOutcome::Drained {
            return outcome;
        }
        info!("Drained for the {reason}");
        if plan.out_of_service_after_drain
            && let Err(error) = self
                .node
                .taint(
                    OUT_OF_SERVICE_TAINT,
                    OUT_OF_SERVICE_VALUE,
                    TaintEffect::NoExecute,
                )
                .await
        {
            error!("Tainting node {name} out-of-service failed: {error}");
        }
        outcome
    }

    /// `event` with NTH's `.NodeLabels` and `.Pods` (the names of the pods on the node, read
    /// before the drain) for its reports; what cannot be read stays empty, with a warning.
    async fn with_node_context(&self, event: &InterruptionEvent) -> InterruptionEvent {
        let mut event = event.clone();
        let read_by = tokio::time::Instant::now() + CONTEXT_READ_TIMEOUT;
        let (node, pods) = tokio::join!(
            tokio::time::timeout(CONTEXT_READ_TIMEOUT, self.node.get()),
            tokio::time::timeout(
                CONTEXT_READ_TIMEOUT,
                drain::pod_names_on_node(&self.kube, self.name(), read_by)
            ),
        );
        match node {
            Ok(Ok(node)) => event.node_labels = node.metadata.labels.unwrap_or_default(),
            Ok(Err(error)) => warn!("Reports go without the node's labels: {error}"),
            Err(_) => warn!("Reports go without the node's labels: no answer in time"),
        }
        match pods {
            Ok(Ok(names)) => {
                event.pods = names;
                info!("Pods on the node: {}", event.pods.join(", "));
            }
            Ok(Err(error)) => warn!("Reports go without the node's pod names: {error}"),
            Err(_) => warn!("Reports go without the node's pod names: no answer in time"),
        }
        event
    }

    /// Cordons, and records that this event's cordon is ours to undo, unless someone
    /// had cordoned the node already.
    /// Returns the cordon's error, if any, for the report.
    async fn cordon(&self, event_id: &str, exclude_from_load_balancers: bool) -> Option<String> {
        let name = self.name();
        let mut failure = None;
        match self.node.cordon().await {
            Ok(true) if !self.dry_run => {
                if let Err(error) = self
                    .node
                    .set_annotations(&[(CORDONED_BY_ANNOTATION, event_id)])
                    .await
                {
                    warn!(
                        "Recording the cordon on node {name} failed; a later undo will leave the cordon: {error}"
                    );
                }
            }
            Ok(_) => {}
            Err(error) => {
                error!("Cordoning node {name} failed: {error}");
                failure = Some(error.to_string());
            }
        }
        if exclude_from_load_balancers
            && let Err(error) = self
                .node
                .add_label(EXCLUDE_FROM_LB_LABEL, EXCLUDE_FROM_LB_VALUE)
                .await
        {
            error!("Labelling node {name} out of external load balancers failed: {error}");
        }
        failure
    }

    /// Before a maintenance event after which the instance comes back (reboot, stop):
    /// label the node as NTH does, so a restarted agent uncordons it once it is back,
    /// unless it was cordoned by someone else before.
    pub async fn prepare_for_reboot(&self, event_id: &str) {
        let name = self.name();
        if let Err(error) = self
            .node
            .add_label(EVENT_ID_LABEL, names::taint_value(event_id))
            .await
        {
            warn!("Labelling node {name} with the event id failed: {error}");
        }
        match self.node.get().await {
            Ok(node) if record::is_unschedulable(&node) => {
                info!(
                    "Node {name} was already cordoned: it will not be uncordoned after the reboot"
                )
            }
            Ok(_) => {
                let now = unix_now().to_string();
                let marked = async {
                    self.node.add_label(ACTION_TIME_LABEL, &now).await?;
                    self.node
                        .add_label(ACTION_LABEL, UNCORDON_AFTER_REBOOT)
                        .await
                };
                match marked.await {
                    Ok(_) => info!(
                        "Node {name} will be uncordoned when the agent starts again after the reboot"
                    ),
                    Err(error) => {
                        warn!("Marking node {name} for uncordon after reboot failed: {error}")
                    }
                }
            }
            Err(error) => warn!("Reading node {name} before the reboot failed: {error}"),
        }
    }

    /// Remembers on the Node that this event's actions are done.
    pub async fn record_handled(&self, event_id: &str) {
        if self.dry_run {
            return;
        }
        let record = self.load_record().await;
        let value = record.handled_events_with(event_id);
        if let Err(error) = self
            .node
            .set_annotations(&[(HANDLED_EVENTS_ANNOTATION, value.as_str())])
            .await
        {
            warn!(
                "Recording the event as handled on the node failed; a restarted agent may act on it again: {error}"
            );
        }
    }

    /// Undoes what was done for an event that was cancelled or completed: its cordon
    /// (only if this agent set it for that event), NTH's taints and labels.
    pub async fn undo(&self, event: &InterruptionEvent, why: &str) {
        let event_id = event.event_id.as_str();
        let record = self.load_record().await;
        if record.cordoned_by.as_deref() == Some(event_id) {
            let error = self.uncordon().await;
            self.reporter.node_action(
                event,
                NodeAction::Uncordon,
                error.as_deref().map_or(Ok(()), Err),
            );
        } else {
            info!("Not uncordoning the node: its cordon was not set by this agent for this event");
        }
        self.remove_marks().await;
        info!("Undid the actions on the node: {why}");
    }

    /// At start-up: a node marked before a reboot that has since rebooted is uncordoned.
    pub async fn uncordon_if_rebooted(&self, record: &NodeRecord) {
        let Some(marked_at) = record.uncordon_after_reboot_marked_at else {
            return;
        };
        let uptime = match read_uptime_seconds(&self.uptime_file) {
            Ok(uptime) => uptime,
            Err(error) => {
                warn!("Cannot tell whether node {} rebooted: {error}", self.name());
                return;
            }
        };
        if !plan::has_rebooted_since(marked_at, unix_now(), uptime) {
            info!(
                "Node {} is marked for uncordon after a reboot that has not happened yet",
                self.name()
            );
            return;
        }
        info!(
            "Node {} rebooted after scheduled maintenance: uncordoning it and removing the agent's taints and labels",
            self.name()
        );
        self.uncordon().await;
        self.remove_marks().await;
    }

    /// Returns the uncordon's error, if any, for the report.
    async fn uncordon(&self) -> Option<String> {
        let name = self.name();
        let failure = match self.node.uncordon().await {
            Ok(_) => None,
            Err(error) => {
                error!("Uncordoning node {name} failed: {error}");
                Some(error.to_string())
            }
        };
        // NTH leaves this label behind; a node back in service belongs in load balancers.
        match self.node.get().await {
            Ok(node)
                if record::label_value(&node, EXCLUDE_FROM_LB_LABEL)
                    == Some(EXCLUDE_FROM_LB_VALUE) =>
            {
                if let Err(error) = self.node.remove_label(EXCLUDE_FROM_LB_LABEL).await {
                    warn!("Removing {EXCLUDE_FROM_LB_LABEL} from node {name} failed: {error}");
                }
            }
            Ok(_) => {}
            Err(error) => warn!("Reading node {name} after uncordon failed: {error}"),
        }
        if let Err(error) = self
            .node
            .remove_annotations(&[CORDONED_BY_ANNOTATION])
            .await
        {
            warn!("Removing the cordon record from node {name} failed: {error}");
        }
        failure
    }

    async fn remove_marks(&self) {
        let name = self.name();
        for key in AGENT_TAINTS.iter().chain([&OUT_OF_SERVICE_TAINT]) {
            if let Err(error) = self.node.remove_taint(key).await {
                warn!("Removing taint {key} from node {name} failed: {error}");
            }
        }
        for key in NTH_LABELS {
            if let Err(error) = self.node.remove_label(key).await {
                warn!("Removing label {key} from node {name} failed: {error}");
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("reading uptime from {path}: {detail}")]
pub struct UptimeError {
    path: String,
    detail: String,
}

/// Seconds since boot from a file in /proc/uptime's format ("12345.67 54321.00").
pub fn read_uptime_seconds(path: &str) -> Result<i64, UptimeError> {
    let error = |detail: String| UptimeError {
        path: path.to_string(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let first = text
        .split_whitespace()
        .next()
        .ok_or_else(|| error("the file is empty".to_string()))?;
    let seconds: f64 = first
        .parse()
        .map_err(|_| error(format!("'{first}' is not a number of seconds")))?;
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(error(format!("'{first}' is not a number of seconds")));
    }
    // Truncation is intended: whole seconds are all the comparison needs.
    Ok(seconds as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_read_in_proc_format_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uptime");
        std::fs::write(&path, "350735.47 234388.90\n").unwrap();
        assert_eq!(
            read_uptime_seconds(path.to_str().unwrap()).unwrap(),
            350_735
        );
        std::fs::write(&path, "soon").unwrap();
        let message = read_uptime_seconds(path.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(message.contains("soon"), "{message}");
        assert!(read_uptime_seconds("/no/such/file").is_err());
    }
}
