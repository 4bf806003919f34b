//! The decisions of on-demand scale-back, pure: is the spot ASG healthy, how loaded
//! would the cluster be without this node, would this node's pods fit on the others, and
//! so what to do next. [`crate::spot_guard::scale_back`] reads the world and acts on the answers.
//!
//! The load is what the scheduler reasons with: the CPU and memory *requests* of the
//! pods against the allocatable of the Ready, schedulable nodes. The fit check packs the
//! pods a drain would move onto the other nodes' free requests, largest first; it does
//! not model taints, affinity, topology spread or ports, so the ceiling keeps headroom.

mod budgets;
mod load;

pub use budgets::{BudgetView, budgets_allow, matches};
pub use load::{
    ClusterView, NodeView, PodIdentity, PodView, Resources, Utilization, parse_quantity,
    pod_requests, pods_fit_elsewhere, utilization_without,
};

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::asg::AsgState;
use crate::config::ScaleBackSettings;

/// Why the spot ASG does not count as healthy yet; `Ok` when it does: at least desired
/// instances InService, each with a Ready node that takes pods (or that an agent cordoned
/// for its own event, such as the node whose recommendation bought the fallback).
/// `tolerated` instances short of desired still count as healthy: those a pre-scale
/// asked for that did not come in time.
pub fn spot_health(state: &AsgState, nodes: &[NodeView], tolerated: i32) -> Result<(), String> {
    let in_service = state.in_service();
    if in_service.saturating_add(tolerated) < state.desired_capacity {
        return Err(format!(
            "spot ASG {} has {in_service} of {} instances InService",
            state.name, state.desired_capacity
        ));
    }
    if state.desired_capacity == 0 {
        return Err(format!("spot ASG {} is at desired capacity 0", state.name));
    }
    let by_instance: HashMap<&str, &NodeView> = nodes
        .iter()
        .filter_map(|n| Some((n.instance_id.as_deref()?, n)))
        .collect();
    for instance in state
        .instances
        .iter()
        .filter(|i| i.lifecycle_state == "InService")
    {
        let id = instance.instance_id.as_str();
        let Some(node) = by_instance.get(id) else {
            return Err(format!(
                "instance {id} of spot ASG {} has no node yet",
                state.name
            ));
        };
        if !node.ready {
            return Err(format!("node {} (instance {id}) is not Ready", node.name));
        }
        if !node.schedulable && !node.cordoned_by_agent {
            return Err(format!("node {} (instance {id}) is cordoned", node.name));
        }
    }
    Ok(())
}

/// The allocatable of one spot node, averaged over the Ready nodes of the spot ASG's
/// InService instances: what a pre-scale counts in. `None` without such a node.
pub fn spot_node_size(state: &AsgState, nodes: &[NodeView]) -> Option<Resources> {
    let sizes: Vec<Resources> = nodes
        .iter()
        .filter(|n| n.ready)
        .filter(|n| {
            n.instance_id.as_deref().is_some_and(|id| {
                state
                    .instances
                    .iter()
                    .any(|i| i.instance_id == id && i.lifecycle_state == "InService")
            })
        })
        .map(|n| n.allocatable)
        .collect();
    let count = i64::try_from(sizes.len()).ok().filter(|c| *c > 0)?;
    let sum = |f: fn(&Resources) -> i64| sizes.iter().map(f).sum::<i64>() / count;
    Some(Resources {
        cpu_millis: sum(|r| r.cpu_millis),
        memory_bytes: sum(|r| r.memory_bytes),
    })
}

/// Whether this instance can leave the on-demand ASG with a decrement: it is a member
/// and the group is above its MinSize (AWS refuses the decrement otherwise).
pub fn can_shrink(state: &AsgState, instance_id: &str) -> Result<(), String> {
    if !state.instances.iter().any(|i| i.instance_id == instance_id) {
        return Err(format!(
            "instance {instance_id} is not in on-demand ASG {}",
            state.name
        ));
    }
    if state.desired_capacity <= state.min_size {
        return Err(format!(
            "on-demand ASG {} is at its MinSize ({}); a decrement would be refused",
            state.name, state.min_size
        ));
    }
    Ok(())
}

/// One look at the world by a fallback node's agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Since the fallback was bought.
    pub bought_ago: Duration,
    /// Since the last scale-back of this node was given up, if one was.
    pub aborted_ago: Option<Duration>,
    /// Whether this instance may leave the on-demand ASG ([`can_shrink`]).
    pub on_demand: Result<(), String>,
    pub spot_health: Result<(), String>,
    /// How long the spot ASG has been healthy without a break.
    pub healthy_for: Duration,
    pub utilization: Option<Utilization>,
    pub pods_fit: bool,
    /// Whether PodDisruptionBudgets let every moving pod go now ([`budgets_allow`]).
    pub budgets: Result<(), String>,
    /// This node already asked the spot ASG for one more instance.
    pub spot_requested: bool,
    pub pre_scale: PreScale,
}

/// Where this fallback's pre-scale stands (SPOT_GUARD_PRE_SCALE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreScale {
    Off,
    /// Not asked for yet: the spot nodes it would ask for ([`pre_scale_nodes`]); `None`
    /// when no Ready spot node gives a size to count in.
    NotYet {
        nodes: Option<i32>,
    },
    /// Asked for `ago`; after `timeout` the ceiling is `fallback_threshold` (0: none).
    Asked {
        ago: Duration,
        timeout: Duration,
        fallback_threshold: u8,
    },
}

/// `a / b` rounded up, for `a ≥ 0` and `b > 0` (signed `div_ceil` is not stable).
fn ceil_div(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// How many spot nodes of `spot_node`'s size bring the requests (without this node)
/// to `target` percent of allocatable, for CPU and for memory, plus `buffer` percent
/// more, rounded up; at least one.
pub fn pre_scale_nodes(
    cluster: &ClusterView,
    spot_node: Resources,
    target: u8,
    buffer: u8,
) -> Option<i32> {
    let (allocatable, requested) = load::totals_without(cluster);
    let needed = |requested: i64, allocatable: i64, per_node: i64| -> Option<i64> {
        if per_node <= 0 {
            return None;
        }
        let wanted = ceil_div(requested.checked_mul(100)?, i64::from(target.max(1)));
        Some(ceil_div((wanted - allocatable).max(0), per_node))
    };
    let nodes = needed(
        requested.cpu_millis,
        allocatable.cpu_millis,
        spot_node.cpu_millis,
    )?
    .max(needed(
        requested.memory_bytes,
        allocatable.memory_bytes,
        spot_node.memory_bytes,
    )?)
    .max(1);
    let buffered = ceil_div(nodes.checked_mul(100 + i64::from(buffer))?, 100);
    i32::try_from(buffered).ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Wait(String),
    /// The pods would not fit on the other nodes: buy one more spot instance first.
    ScaleSpotFirst,
    /// Over the ceiling: buy this many spot instances first (pre-scale).
    PreScale(i32),
    DrainAndTerminate,
}

pub fn decide(seen: &Observation, settings: &ScaleBackSettings) -> Decision {
    let secs = |d: Duration| d.as_secs();
    if seen.bought_ago < settings.min_wait {
        return Decision::Wait(format!(
            "the fallback was bought {}s ago; scale-back waits at least {}s",
            secs(seen.bought_ago),
            secs(settings.min_wait)
        ));
    }
    if let Some(ago) = seen.aborted_ago.filter(|ago| *ago < settings.min_wait) {
        return Decision::Wait(format!(
            "the last scale-back was given up {}s ago; trying again after {}s",
            secs(ago),
            secs(settings.min_wait)
        ));
    }
    if let Err(why) = &seen.on_demand {
        return Decision::Wait(why.clone());
    }
    if let Err(why) = &seen.spot_health {
        return Decision::Wait(format!("spot capacity is not back: {why}"));
    }
    if seen.healthy_for < settings.stability_period {
        return Decision::Wait(format!(
            "the spot ASG has been healthy for {}s of the {}s stability period",
            secs(seen.healthy_for),
            secs(settings.stability_period)
        ));
    }
    match seen.utilization {
        None => {
            return Decision::Wait(
                "no other Ready, schedulable node would be left for the pods".to_owned(),
            );
        }
        Some(load) if load.highest() >= f64::from(settings.utilization_ceiling) => {
            let over = format!(
                "without this node the cluster would have {:.0}% of its CPU and {:.0}% of its memory requested, at or above the {}% ceiling",
                load.cpu, load.memory, settings.utilization_ceiling
            );
            match &seen.pre_scale {
                PreScale::Off => return Decision::Wait(over),
                PreScale::NotYet { nodes: Some(nodes) } => return Decision::PreScale(*nodes),
                PreScale::NotYet { nodes: None } => {
                    return Decision::Wait(format!(
                        "{over}; no Ready spot node to size a pre-scale on"
                    ));
                }
                PreScale::Asked { ago, timeout, .. } if ago < timeout => {
                    return Decision::Wait(format!(
                        "{over}; the spot nodes of the pre-scale have {}s of {}s left to come in",
                        secs(timeout.saturating_sub(*ago)),
                        secs(*timeout)
                    ));
                }
                PreScale::Asked {
                    fallback_threshold, ..
                } if load.highest() >= f64::from(*fallback_threshold) => {
                    return Decision::Wait(format!(
                        "{over}, and the pre-scale did not bring it under the {fallback_threshold}% fallback threshold"
                    ));
                }
                PreScale::Asked { .. } => {}
            }
        }
        Some(_) => {}
    }
    match (seen.pods_fit, seen.spot_requested) {
        (true, _) => match &seen.budgets {
            Ok(()) => Decision::DrainAndTerminate,
            Err(why) => Decision::Wait(why.clone()),
        },
        (false, false) => Decision::ScaleSpotFirst,
        (false, true) => Decision::Wait(
            "this node's pods do not fit on the other nodes yet; waiting for the extra spot instance"
                .to_owned(),
        ),
    }
}

/// Where a node's scale-back stands, as recorded on the Node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Phase {
    Watching,
    /// Tainted, cordoned and draining; recorded before the taint.
    Draining {
        since: u64,
    },
    /// TerminateInstanceInAutoScalingGroup was sent (or the instance had left the ASG).
    Terminated {
        at: u64,
    },
    /// The drain or the termination failed; the node was put back in service.
    Aborted {
        at: u64,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleBackRecord {
    pub instance_id: String,
    /// When this node asked the spot ASG for one more instance (Unix ms); once per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_requested_at: Option<u64>,
    /// When this node's pre-scale asked the spot ASG for more (Unix ms), and for how many;
    /// once per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_scaled: Option<(u64, i32)>,
    pub phase: Phase,
}

impl ScaleBackRecord {
    pub fn new(instance_id: &str) -> Self {
        ScaleBackRecord {
            instance_id: instance_id.to_owned(),
            spot_requested_at: None,
            pre_scaled: None,
            phase: Phase::Watching,
        }
    }

    /// The record of `instance_id`; one of another instance (a reused node name) or an
    /// unreadable one counts as none.
    pub fn parse(annotation: Option<&str>, instance_id: &str) -> Self {
        annotation
            .and_then(|a| serde_json::from_str::<ScaleBackRecord>(a).ok())
            .filter(|record| record.instance_id == instance_id)
            .unwrap_or_else(|| ScaleBackRecord::new(instance_id))
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What a (re)started agent does first, given the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Watch for spot capacity to return.
    Watch,
    /// A drain had started: finish it and terminate, without deciding again.
    FinishDrain,
    /// Given back already; the instance is on its way out.
    Done,
}

pub fn resume(record: &ScaleBackRecord) -> Resume {
    match record.phase {
        Phase::Watching | Phase::Aborted { .. } => Resume::Watch,
        Phase::Draining { .. } => Resume::FinishDrain,
        Phase::Terminated { .. } => Resume::Done,
    }
}

#[cfg(test)]
mod tests;
