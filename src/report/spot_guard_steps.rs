//! Spot Guard's steps as reports: each [`SpotGuardStep`] becomes its metrics, its
//! Kubernetes event and, for the steps a webhook receiver acts on, a post whose `.Kind`
//! is one of [`webhook_kind`]. NTH's own reports stay in [`super::reporter`].

use std::time::Duration;

use super::interruption::InterruptionEvent;
use super::kube_events::{ReasonedEvent, reason};
use super::reporter::Reporter;

/// A step of Spot Guard's capacity workflow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SpotGuardStep<'a> {
    /// SetDesiredCapacity was sent to `asg`.
    ScaleUp { asg: &'a str, from: i32, to: i32 },
    /// The replacement is InService in `asg`; `since_notice` feeds the histogram when known.
    InService {
        asg: &'a str,
        on_demand: bool,
        since_notice: Option<Duration>,
    },
    /// The spot ASG could not deliver; trying the on-demand ASG. `reason` is a short,
    /// low-cardinality label ([`crate::spot_guard::decide::CapacityFailure::reason`]: `max-size`,
    /// `insufficient-capacity`, `activity-failed`, `timeout`, `api-error`), `detail` the message.
    Fallback {
        spot_asg: &'a str,
        on_demand_asg: &'a str,
        reason: &'a str,
        detail: &'a str,
    },
    /// The on-demand ASG could not deliver either: draining without a replacement.
    Failed {
        on_demand_asg: &'a str,
        reason: &'a str,
        detail: &'a str,
    },
    /// The replacement's Node is Ready and schedulable, `waited` after InService.
    NodeReady {
        asg: &'a str,
        instance: &'a str,
        node: &'a str,
        waited: Duration,
    },
    /// The replacement's Node was not Ready within the timeout; draining anyway.
    NodeNotReady {
        asg: &'a str,
        instance: &'a str,
        waited: Duration,
        detail: &'a str,
    },
    /// A spot interruption notice stopped the wait on `asg`.
    Preempted { asg: &'a str },
    /// An on-demand fallback was drained and `instance` terminated in `asg` (decremented).
    ScaleBack { asg: &'a str, instance: &'a str },
    /// A fallback's scale-back was given up and the node put back in service.
    ScaleBackAborted { asg: &'a str, detail: &'a str },
}

/// Webhook `.Kind` values of Spot Guard's posts.
pub mod webhook_kind {
    pub const SPOT_GUARD_IN_SERVICE: &str = "SPOT_GUARD_IN_SERVICE";
    pub const SPOT_GUARD_NODE_READY: &str = "SPOT_GUARD_NODE_READY";
    pub const SPOT_GUARD_NODE_NOT_READY: &str = "SPOT_GUARD_NODE_NOT_READY";
    pub const SPOT_GUARD_FALLBACK: &str = "SPOT_GUARD_FALLBACK";
    pub const SPOT_GUARD_FAILED: &str = "SPOT_GUARD_FAILED";
    pub const SPOT_GUARD_SCALE_BACK: &str = "SPOT_GUARD_SCALE_BACK";
}

impl Reporter {
    /// A Spot Guard step for the notice `event`: its event, metrics and webhook post.
    pub fn spot_guard(&self, event: &InterruptionEvent, step: SpotGuardStep<'_>) {
        let metrics = self.metrics_ref();
        match step {
            SpotGuardStep::ScaleUp { asg, from, to } => {
                self.emit(ReasonedEvent::normal(
                    reason::SPOT_GUARD_SCALE_UP,
                    format!("Scaling ASG {asg} from {from} to {to} instances for a replacement"),
                ));
            }
            SpotGuardStep::InService {
                asg,
                on_demand,
                since_notice,
            } => {
                if let Some(metrics) = metrics {
                    metrics.scale_attempt(asg, "in_service");
                    if let Some(since_notice) = since_notice {
                        metrics.replacement_in_service(asg, since_notice);
                    }
                }
                let capacity = if on_demand { "on-demand" } else { "spot" };
                let message = format!("Replacement instance is InService in {capacity} ASG {asg}");
                self.emit(ReasonedEvent::normal(
                    reason::SPOT_GUARD_IN_SERVICE,
                    message.clone(),
                ));
                self.post(
                    spot_guard_event(event, webhook_kind::SPOT_GUARD_IN_SERVICE, asg, message),
                    "",
                );
            }
            SpotGuardStep::Fallback {
                spot_asg,
                on_demand_asg,
                reason: why,
                detail,
            } => {
                if let Some(metrics) = metrics {
                    metrics.scale_attempt(spot_asg, "failed");
                    metrics.fallback(why);
                }
                let message = format!(
                    "Spot ASG {spot_asg} could not provide a replacement ({detail}); falling back to on-demand ASG {on_demand_asg}"
                );
                self.emit(ReasonedEvent::warning(
                    reason::SPOT_GUARD_FALLBACK,
                    message.clone(),
                ));
                self.post(
                    spot_guard_event(
                        event,
                        webhook_kind::SPOT_GUARD_FALLBACK,
                        on_demand_asg,
                        message,
                    ),
                    why,
                );
            }
            SpotGuardStep::Failed {
                on_demand_asg,
                reason: why,
                detail,
            } => {
                if let Some(metrics) = metrics {
                    metrics.scale_attempt(on_demand_asg, "failed");
                }
                let message = format!(
                    "No replacement capacity: on-demand ASG {on_demand_asg} failed too ({detail}); draining the node without a replacement"
                );
                self.emit(ReasonedEvent::warning(
                    reason::SPOT_GUARD_FAILED,
                    message.clone(),
                ));
                self.post(
                    spot_guard_event(
                        event,
                        webhook_kind::SPOT_GUARD_FAILED,
                        on_demand_asg,
                        message,
                    ),
                    why,
                );
            }
            SpotGuardStep::NodeReady {
                asg,
                instance,
                node,
                waited,
            } => {
                if let Some(metrics) = metrics {
                    metrics.node_ready(asg, waited);
                }
                let message = format!(
                    "Node {node} of replacement {instance} is Ready, {:.0}s after InService",
                    waited.as_secs_f64()
                );
                self.emit(ReasonedEvent::normal(
                    reason::SPOT_GUARD_NODE_READY,
                    message.clone(),
                ));
                self.post(
                    spot_guard_event(event, webhook_kind::SPOT_GUARD_NODE_READY, asg, message),
                    "",
                );
            }
            SpotGuardStep::NodeNotReady {
                asg,
                instance,
                waited,
                detail,
            } => {
                if let Some(metrics) = metrics {
                    metrics.node_not_ready(asg, instance);
                }
                let message = format!(
                    "Replacement {instance} was InService {:.0}s ago but its Node is not Ready ({detail}); draining anyway",
                    waited.as_secs_f64()
                );
                self.emit(ReasonedEvent::warning(
                    reason::SPOT_GUARD_NODE_NOT_READY,
                    message.clone(),
                ));
                self.post(
                    spot_guard_event(event, webhook_kind::SPOT_GUARD_NODE_NOT_READY, asg, message),
                    "node-not-ready",
                );
            }
            SpotGuardStep::Preempted { asg } => {
                if let Some(metrics) = metrics {
                    metrics.scale_attempt(asg, "preempted");
                }
                self.emit(ReasonedEvent::warning(
                    reason::SPOT_GUARD_PREEMPTED,
                    format!("A spot interruption notice stopped the wait for a replacement in ASG {asg}; draining now"),
                ));
            }
            SpotGuardStep::ScaleBack { asg, instance } => {
                if let Some(metrics) = metrics {
                    metrics.scale_back("terminated");
                }
                let message = format!(
                    "Spot capacity is back: on-demand fallback drained and instance {instance} terminated in ASG {asg} (desired capacity decremented)"
                );
                self.emit(ReasonedEvent::normal(
                    reason::SPOT_GUARD_SCALE_BACK,
                    message.clone(),
                ));
                self.post(
                    spot_guard_event(event, webhook_kind::SPOT_GUARD_SCALE_BACK, asg, message),
                    "",
                );
            }
            SpotGuardStep::ScaleBackAborted { asg, detail } => {
                if let Some(metrics) = metrics {
                    metrics.scale_back("aborted");
                }
                self.emit(ReasonedEvent::warning(
                    reason::SPOT_GUARD_SCALE_BACK_ABORTED,
                    format!("Scale-back of this on-demand fallback (ASG {asg}) given up: {detail}; the node is back in service"),
                ));
            }
        }
    }
}

fn spot_guard_event(
    notice: &InterruptionEvent,
    kind: &str,
    asg: &str,
    description: String,
) -> InterruptionEvent {
    InterruptionEvent {
        kind: kind.to_owned(),
        description,
        auto_scaling_group_name: asg.to_owned(),
        ..notice.clone()
    }
}
