//! After the replacement is InService: wait until its Node is Ready and schedulable in
//! the cluster (bounded by SPOT_GUARD_NODE_READY_TIMEOUT), so the evicted pods have
//! somewhere to go. Polls a paged Node list every check interval and keeps only the
//! Nodes that name an instance: a watch would hold every Node of the cluster in memory
//! for minutes, on every spot node at once.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::SpotGuard;
use super::decide::{
    self, NodeReadiness, NodeWait, NodeWaitResult, ReplacementOutcome, ReplacementRecord,
};
use super::replace::Preempted;
use crate::asg::AutoScaling;
use crate::paged_list::{self, OnExpired};
use crate::report::{InterruptionEvent, SpotGuardStep};

/// Nodes per page of the list, so one answer stays small on a large cluster.
const PAGE: u32 = 500;

impl<A: AutoScaling> SpotGuard<A> {
    /// The outcome once the replacement's Node is Ready (or the wait is over): the
    /// record's pending Node wait is done first, if there is one.
    pub(super) async fn after_in_service(
        &self,
        outcome: ReplacementOutcome,
        record: &mut ReplacementRecord,
        preempt: &CancellationToken,
        event: &InterruptionEvent,
    ) -> ReplacementOutcome {
        let Some(wait) = record.pending_node_wait().cloned() else {
            return outcome;
        };
        let result = match self.wait_for_nodes(&wait, preempt, event).await {
            Ok(result) => result,
            Err(Preempted) => return self.preempted(event, &wait.asg),
        };
        if let Some(node_wait) = record.node_wait.as_mut() {
            node_wait.result = result;
        }
        self.save_or_warn(record).await;
        outcome
    }

    async fn wait_for_nodes(
        &self,
        wait: &NodeWait,
        preempt: &CancellationToken,
        event: &InterruptionEvent,
    ) -> Result<NodeWaitResult, Preempted> {
        let timeout = self.settings.node_ready_timeout;
        let since_in_service = || decide::millis_ago(wait.in_service_at, SystemTime::now());
        let instances = wait.instances.join(", ");
        info!(
            "Waiting up to {}s for the Node of {instances} to be Ready before tainting and draining (checking every {:?})",
            timeout.as_secs(),
            self.settings.check_interval
        );
        loop {
            let nodes = tokio::select! {
                _ = preempt.cancelled() => return Err(Preempted),
                nodes = self.list_nodes() => nodes,
            };
            let waited = since_in_service();
            match nodes {
                Ok(nodes) => {
                    let states: Vec<(&String, NodeReadiness)> = wait
                        .instances
                        .iter()
                        .map(|instance| (instance, decide::readiness(&nodes, instance)))
                        .collect();
                    let pending: Vec<String> = states
                        .iter()
                        .filter_map(|(instance, state)| match state {
                            NodeReadiness::Ready { .. } => None,
                            NodeReadiness::Missing => Some(format!("{instance}: no Node yet")),
                            NodeReadiness::NotYet { node, why } => {
                                Some(format!("{instance}: Node {node} {why}"))
                            }
                        })
                        .collect();
                    if pending.is_empty() {
                        for (instance, state) in &states {
                            if let NodeReadiness::Ready { node } = state {
                                info!(
                                    "Node {node} of replacement {instance} is Ready, {:.1}s after InService",
                                    waited.as_secs_f64()
                                );
                                self.reporter.spot_guard(
                                    event,
                                    SpotGuardStep::NodeReady {
                                        asg: &wait.asg,
                                        instance,
                                        node,
                                        waited,
                                    },
                                );
                            }
                        }
                        return Ok(NodeWaitResult::Ready);
                    }
                    if waited >= timeout {
                        let detail = pending.join("; ");
                        warn!(
                            "The Node of replacement {instances} is not Ready {}s after InService ({detail}); tainting and draining anyway: check the new instance's bootstrap (kubelet logs, node IAM role, aws-auth or access entries, CNI)",
                            waited.as_secs()
                        );
                        for instance in &wait.instances {
                            self.reporter.spot_guard(
                                event,
                                SpotGuardStep::NodeNotReady {
                                    asg: &wait.asg,
                                    instance,
                                    waited,
                                    detail: &detail,
                                },
                            );
                        }
                        return Ok(NodeWaitResult::TimedOut);
                    }
                    info!(
                        "Waiting for the Node of {} (InService {}s ago) to be Ready",
                        pending.join("; "),
                        waited.as_secs()
                    );
                }
                Err(error) => {
                    warn!(
                        "Listing Nodes to find the replacement's failed, will look again: {error}"
                    );
                    if waited >= timeout {
                        return Ok(NodeWaitResult::TimedOut);
                    }
                }
            }
            let pause = self
                .settings
                .check_interval
                .min(timeout.saturating_sub(since_in_service()))
                .max(Duration::from_millis(1));
            tokio::select! {
                _ = preempt.cancelled() => return Err(Preempted),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Every Node, a page at a time, keeping only those that name an instance. Any
    /// failure, an expired continue token too, is this check's: the wait lists again on
    /// the next.
    async fn list_nodes(&self) -> Result<Vec<Node>, kube::Error> {
        let api = &Api::<Node>::all(self.kube.clone());
        paged_list::collect(
            |params| async move { api.list(&params).await },
            ListParams::default(),
            PAGE,
            OnExpired::Fail,
            |node: Node| {
                node.spec
                    .as_ref()
                    .and_then(|spec| spec.provider_id.as_deref())
                    .and_then(decide::instance_id_of_provider_id)
                    .is_some()
                    .then_some(node)
            },
        )
        .await
    }
}
