//! Ties the pipeline together: notices from the monitor go through Spot Guard (for
//! rebalance recommendations) and then become taint, cordon and drain on this node.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::asg::AutoScaling;
use crate::config::Config;
use crate::drain::{self, DrainSettings};
use crate::flow::{self, ActionSettings, NodeActionPlan, ReplacementOutcome};
use crate::monitor::Notice;
use crate::node::NodeClient;
use crate::spot_guard::SpotGuard;

/// What the agent needs to act; built once from [`Config`].
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub node_name: String,
    pub dry_run: bool,
    pub actions: ActionSettings,
    pub drain: DrainSettings,
}

impl AgentSettings {
    pub fn from_config(config: &Config) -> Self {
        AgentSettings {
            node_name: config.node_name.clone(),
            dry_run: config.dry_run,
            actions: ActionSettings {
                spot_guard: config.spot_guard.is_some(),
                taint_node: config.taint_node,
                taint_effect: config.taint_effect,
                cordon_only: config.cordon_only,
                enable_rebalance_draining: config.enable_rebalance_draining,
            },
            drain: DrainSettings {
                ignore_daemon_sets: config.ignore_daemon_sets,
                delete_local_data: config.delete_emptydir_data,
                pod_termination_grace_period: config.pod_termination_grace_period,
                timeout: config.node_termination_grace_period,
                max_concurrent_evictions: config.drain_concurrency,
                ..DrainSettings::default()
            },
        }
    }
}

pub struct Agent<A> {
    settings: AgentSettings,
    kube: kube::Client,
    node: NodeClient,
    spot_guard: Option<SpotGuard<A>>,
    /// How many notices have been fully handled, for callers that wait on the agent.
    handled: watch::Sender<u32>,
}

/// A rebalance recommendation being handled in the background, so that a spot
/// interruption notice can still be received and preempt it.
struct RebalanceTask {
    event_id: String,
    preempt: CancellationToken,
    handle: JoinHandle<()>,
}

impl<A: AutoScaling + 'static> Agent<A> {
    pub fn new(
        settings: AgentSettings,
        kube: kube::Client,
        spot_guard: Option<SpotGuard<A>>,
    ) -> Self {
        let node = NodeClient::new(kube.clone(), &settings.node_name, settings.dry_run);
        Agent {
            settings,
            kube,
            node,
            spot_guard,
            handled: watch::Sender::new(0),
        }
    }

    /// Counts notices whose node actions have finished (or been given up).
    pub fn handled(&self) -> watch::Receiver<u32> {
        self.handled.subscribe()
    }

    /// Handles notices until the monitor stops or `shutdown` is cancelled.
    pub async fn run(self, mut notices: mpsc::Receiver<Notice>, shutdown: CancellationToken) {
        let agent = Arc::new(self);
        let mut rebalance: Option<RebalanceTask> = None;
        let mut interrupted = false;
        loop {
            let notice = tokio::select! {
                biased;
                _ = shutdown.cancelled() => None,
                notice = notices.recv() => notice,
            };
            // The monitor closes the channel only when it stops, i.e. on shutdown too.
            let Some(notice) = notice else {
                if let Some(task) = rebalance.take().filter(|task| !task.handle.is_finished()) {
                    warn!(event_id = %task.event_id, "Shutting down: abandoning the rebalance flow in progress; a restarted agent will see the recommendation again");
                    task.preempt.cancel();
                    let _ = task.handle.await;
                }
                return;
            };
            match notice {
                Notice::RebalanceRecommendation {
                    event_id,
                    notice_time,
                } => {
                    if interrupted {
                        info!(%event_id, "Ignoring rebalance recommendation: the node is already being drained for a spot interruption");
                        continue;
                    }
                    if let Some(task) = rebalance.as_ref().filter(|task| !task.handle.is_finished())
                    {
                        info!(%event_id, "Rebalance recommendation (noticeTime={notice_time}) arrived while {} is still being handled; it is covered by that flow", task.event_id);
                        continue;
                    }
                    info!(%event_id, "Handling rebalance recommendation (noticeTime={notice_time})");
                    // Not a child of `shutdown`: the shutdown branch cancels it itself, after saying so.
                    let preempt = CancellationToken::new();
                    let span = info_span!("rebalance", node = %agent.settings.node_name, %event_id);
                    let handle = tokio::spawn({
                        let agent = Arc::clone(&agent);
                        let preempt = preempt.clone();
                        let event_id = event_id.clone();
                        async move { agent.handle_rebalance(&event_id, &preempt).await }
                            .instrument(span)
                    });
                    rebalance = Some(RebalanceTask {
                        event_id,
                        preempt,
                        handle,
                    });
                }
                Notice::SpotInterruption {
                    event_id,
                    action,
                    time,
                } => {
                    interrupted = true;
                    if let Some(task) = rebalance.take().filter(|task| !task.handle.is_finished()) {
                        warn!(%event_id, "Spot interruption notice preempts the rebalance flow of {}: the replacement may still be pending; draining now", task.event_id);
                        task.preempt.cancel();
                        let _ = task.handle.await;
                    }
                    info!(%event_id, "Handling spot interruption notice: action={action} time={time}");
                    let plan = flow::plan_spot_interruption(&agent.settings.actions, &event_id);
                    let span = info_span!("spot_interruption", node = %agent.settings.node_name, %event_id);
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            warn!(%event_id, "Shutting down: abandoning the drain for the spot interruption");
                            return;
                        }
                        _ = agent.apply(&plan, "spot interruption").instrument(span) => {
                            agent.handled.send_modify(|count| *count += 1);
                        }
                    }
                }
            }
        }
    }

    async fn handle_rebalance(&self, event_id: &str, preempt: &CancellationToken) {
        if let Some(spot_guard) = &self.spot_guard {
            let outcome = spot_guard.secure_replacement(preempt).await;
            match &outcome {
                ReplacementOutcome::Preempted => return,
                ReplacementOutcome::Spot => info!(
                    "Spot Guard complete: replacement is InService in the spot ASG; tainting, cordoning and draining node {}",
                    self.settings.node_name
                ),
                ReplacementOutcome::OnDemand { spot_failure } => info!(
                    "Spot Guard complete: replacement is InService in the on-demand ASG (spot: {spot_failure}); tainting, cordoning and draining node {}",
                    self.settings.node_name
                ),
                ReplacementOutcome::NoneAvailable { .. } => warn!(
                    "Spot Guard complete without replacement capacity; tainting, cordoning and draining node {} anyway",
                    self.settings.node_name
                ),
                ReplacementOutcome::DryRun => {
                    info!("DRY RUN: Spot Guard complete; node actions follow as a dry run")
                }
            }
        }
        let plan = flow::plan_rebalance(&self.settings.actions, event_id);
        tokio::select! {
            _ = preempt.cancelled() => info!("Rebalance node actions stopped: a spot interruption or shutdown took over"),
            _ = self.apply(&plan, "rebalance recommendation") => {
                self.handled.send_modify(|count| *count += 1);
            }
        }
    }

    /// Taint, cordon, drain, each logged; a failed step does not stop the next one,
    /// since a node about to lose its instance is better half-protected than not at all.
    async fn apply(&self, plan: &NodeActionPlan, reason: &str) {
        let node = &self.settings.node_name;
        if let Some(taint) = &plan.taint
            && let Err(error) = self.node.taint(taint.key, &taint.value, taint.effect).await
        {
            error!("Tainting node {node} with {} failed: {error}", taint.key);
        }
        if plan.cordon
            && let Err(error) = self.node.cordon().await
        {
            error!("Cordoning node {node} failed: {error}");
        }
        if !plan.drain {
            info!("Node {node} cordoned for the {reason}; not draining (cordon only)");
            return;
        }
        match drain::drain(
            &self.kube,
            node,
            &self.settings.drain,
            self.settings.dry_run,
        )
        .await
        {
            Ok(report) if report.is_complete() => {
                info!("Node {node} drained for the {reason}")
            }
            Ok(_) => error!(
                "Drain of node {node} for the {reason} did not complete; see the pods named above"
            ),
            Err(error) => error!("Draining node {node} failed: {error}"),
        }
    }
}
