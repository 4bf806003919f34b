//! The decisions of on-demand scale-back, pure: is the spot ASG healthy, how loaded
//! would the cluster be without this node, would this node's pods fit on the others, and
//! so what to do next. [`crate::spot_guard::scale_back`] reads the world and acts on the answers.
//!
//! The load is what the scheduler reasons with: the CPU and memory *requests* of the
//! pods against the allocatable of the Ready, schedulable nodes. The fit check packs the
//! pods a drain would move onto the other nodes' free requests, largest first; it does
//! not model taints, affinity, topology spread or ports, so the ceiling keeps headroom.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};

use crate::asg::AsgState;
use crate::drain::{DrainSettings, PodDisposition, classify};
use crate::config::ScaleBackSettings;
use crate::names::CORDONED_BY_ANNOTATION;
use crate::record::is_unschedulable;


/// CPU in millicores and memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

impl Resources {
    fn plus(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }

    fn minus(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }

    fn max(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.max(other.cpu_millis),
            memory_bytes: self.memory_bytes.max(other.memory_bytes),
        }
    }

    fn fits_in(self, free: Resources) -> bool {
        self.cpu_millis <= free.cpu_millis && self.memory_bytes <= free.memory_bytes
    }
}

/// A Kubernetes quantity ("250m", "1.5", "512Mi", "1G", "1e3") in base units.
pub fn parse_quantity(quantity: &str) -> Option<f64> {
    let quantity = quantity.trim();
    let split = quantity
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * multiplier)
}

/// CPU and memory of a resource list; what is missing or unreadable counts as zero.
fn resources_of(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
    let read = |name: &str, scale: f64| {
        list.and_then(|list| list.get(name))
            .and_then(|Quantity(q)| parse_quantity(q))
            .map_or(0, |value| (value * scale).ceil() as i64)
    };
    Resources {
        cpu_millis: read("cpu", 1000.0),
        memory_bytes: read("memory", 1.0),
    }
}

/// What a pod asks of its node, as the scheduler counts it: the sum of its containers'
/// requests, at least each init container's, plus the pod overhead.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::default();
    };
    let containers = spec
        .containers
        .iter()
        .map(|c| resources_of(c.resources.as_ref().and_then(|r| r.requests.as_ref())))
        .fold(Resources::default(), Resources::plus);
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| resources_of(c.resources.as_ref().and_then(|r| r.requests.as_ref())))
        .fold(Resources::default(), Resources::max);
    containers
        .max(init)
        .plus(resources_of(spec.overhead.as_ref()))
}

/// A node as scale-back sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub instance_id: Option<String>,
    pub ready: bool,
    pub schedulable: bool,
    /// Cordoned by a spot-guard (or NTH-compatible) agent for an event of its own.
    pub cordoned_by_agent: bool,
    pub allocatable: Resources,
}

impl NodeView {
    pub fn of(node: &Node) -> NodeView {
        let status = node.status.as_ref();
        NodeView {
            name: node.metadata.name.clone().unwrap_or_default(),
            instance_id: node
                .spec
                .as_ref()
                .and_then(|spec| spec.provider_id.as_deref())
                .and_then(instance_id_of_provider_id),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                }),
            schedulable: !is_unschedulable(node),
            cordoned_by_agent: node
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(CORDONED_BY_ANNOTATION)),
            allocatable: resources_of(status.and_then(|s| s.allocatable.as_ref())),
        }
    }

    fn takes_pods(&self) -> bool {
        self.ready && self.schedulable
    }
}

/// `aws:///us-east-1a/i-0abc…` → `i-0abc…`.
pub fn instance_id_of_provider_id(provider_id: &str) -> Option<String> {
    let last = provider_id.strip_prefix("aws://")?.rsplit('/').next()?;
    last.starts_with("i-").then(|| last.to_owned())
}

/// A scheduled, unfinished pod as scale-back sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub node: String,
    pub requests: Resources,
    /// A drain of its node would evict it (not a DaemonSet, mirror or own pod).
    pub moves: bool,
}

impl PodView {
    /// `None` for pods that hold nothing: unscheduled or finished.
    pub fn of(pod: &Pod, drain: &DrainSettings) -> Option<PodView> {
        let node = pod.spec.as_ref()?.node_name.clone()?;
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        Some(PodView {
            node,
            requests: pod_requests(pod),
            moves: classify(pod, drain) == PodDisposition::Evict,
        })
    }
}

/// Why the spot ASG does not count as healthy yet; `Ok` when it does: at least desired
/// instances InService, each with a Ready node that takes pods (or that an agent cordoned
/// for its own event, such as the node whose recommendation bought the fallback).
pub fn spot_health(state: &AsgState, nodes: &[NodeView]) -> Result<(), String> {
    let in_service = state.in_service();
    if in_service < state.desired_capacity {
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

/// Requested share of allocatable, in percent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Utilization {
    pub cpu: f64,
    pub memory: f64,
}

impl Utilization {
    fn highest(&self) -> f64 {
        self.cpu.max(self.memory)
    }
}

/// The cluster's requested CPU and memory against the allocatable of the nodes that take
/// pods, once `node` is gone and its moving pods are elsewhere. `None` when no other node
/// takes pods.
pub fn utilization_without(
    node: &str,
    nodes: &[NodeView],
    pods: &[PodView],
) -> Option<Utilization> {
    let remaining: HashMap<&str, &NodeView> = nodes
        .iter()
        .filter(|n| n.name != node && n.takes_pods())
        .map(|n| (n.name.as_str(), n))
        .collect();
    let allocatable = remaining
        .values()
        .fold(Resources::default(), |sum, n| sum.plus(n.allocatable));
    if allocatable.cpu_millis <= 0 || allocatable.memory_bytes <= 0 {
        return None;
    }
    let requested = pods
        .iter()
        .filter(|p| remaining.contains_key(p.node.as_str()) || (p.node == node && p.moves))
        .fold(Resources::default(), |sum, p| sum.plus(p.requests));
    let percent = |used: i64, total: i64| used as f64 * 100.0 / total as f64;
    Some(Utilization {
        cpu: percent(requested.cpu_millis, allocatable.cpu_millis),
        memory: percent(requested.memory_bytes, allocatable.memory_bytes),
    })
}

/// Whether the pods a drain of `node` would move fit into the other nodes' free
/// requests, placed largest first on the first node with room.
pub fn pods_fit_elsewhere(node: &str, nodes: &[NodeView], pods: &[PodView]) -> bool {
    let mut free: BTreeMap<&str, Resources> = nodes
        .iter()
        .filter(|n| n.name != node && n.takes_pods())
        .map(|n| (n.name.as_str(), n.allocatable))
        .collect();
    for pod in pods {
        if let Some(room) = free.get_mut(pod.node.as_str()) {
            *room = room.minus(pod.requests);
        }
    }
    let mut moving: Vec<Resources> = pods
        .iter()
        .filter(|p| p.node == node && p.moves)
        .map(|p| p.requests)
        .collect();
    moving.sort_by_key(|r| std::cmp::Reverse((r.cpu_millis, r.memory_bytes)));
    moving.into_iter().all(|pod| {
        free.values_mut()
            .find(|room| pod.fits_in(**room))
            .map(|room| *room = room.minus(pod))
            .is_some()
    })
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
    /// This node already asked the spot ASG for one more instance.
    pub spot_requested: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Wait(String),
    /// The pods would not fit on the other nodes: buy one more spot instance first.
    ScaleSpotFirst,
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
            return Decision::Wait(format!(
                "without this node the cluster would have {:.0}% of its CPU and {:.0}% of its memory requested, at or above the {}% ceiling",
                load.cpu, load.memory, settings.utilization_ceiling
            ));
        }
        Some(_) => {}
    }
    match (seen.pods_fit, seen.spot_requested) {
        (true, _) => Decision::DrainAndTerminate,
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
    pub phase: Phase,
}

impl ScaleBackRecord {
    pub fn new(instance_id: &str) -> Self {
        ScaleBackRecord {
            instance_id: instance_id.to_owned(),
            spot_requested_at: None,
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
mod tests {
    use super::*;
    use crate::asg::AsgInstance;

    fn node(name: &str, instance: &str, cpu: i64, memory_gib: i64) -> NodeView {
        NodeView {
            name: name.into(),
            instance_id: Some(instance.into()),
            ready: true,
            schedulable: true,
            cordoned_by_agent: false,
            allocatable: Resources {
                cpu_millis: cpu,
                memory_bytes: memory_gib << 30,
            },
        }
    }

    fn pod(node: &str, cpu: i64, memory_gib: i64, moves: bool) -> PodView {
        PodView {
            node: node.into(),
            requests: Resources {
                cpu_millis: cpu,
                memory_bytes: memory_gib << 30,
            },
            moves,
        }
    }

    fn spot(desired: i32, instances: &[(&str, &str)]) -> AsgState {
        AsgState {
            name: "spot".into(),
            min_size: 0,
            max_size: 10,
            desired_capacity: desired,
            instances: instances
                .iter()
                .map(|(id, state)| AsgInstance {
                    instance_id: (*id).into(),
                    lifecycle_state: (*state).into(),
                })
                .collect(),
            capacity_rebalance: false,
        }
    }

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        let cases = [
            ("250m", Some(0.25)),
            ("2", Some(2.0)),
            ("1.5", Some(1.5)),
            ("512Mi", Some(512.0 * 1024.0 * 1024.0)),
            ("1Gi", Some(1024f64.powi(3))),
            ("1G", Some(1e9)),
            ("1e3", Some(1000.0)),
            ("100k", Some(1e5)),
            ("1x", None),
            ("", None),
            ("-1", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_quantity(text), expected, "{text}");
        }
        assert_eq!(
            instance_id_of_provider_id("aws:///us-east-1a/i-0abc"),
            Some("i-0abc".to_owned())
        );
        assert_eq!(instance_id_of_provider_id("gce://p/z/n"), None);
    }

    #[test]
    fn spot_is_healthy_only_with_every_instance_in_service_on_a_usable_node() {
        let mut drained = node("a", "i-a", 1000, 1);
        drained.schedulable = false;
        drained.cordoned_by_agent = true;
        let nodes = vec![drained.clone(), node("b", "i-b", 1000, 1)];
        let both = [("i-a", "InService"), ("i-b", "InService")];
        assert_eq!(spot_health(&spot(2, &both), &nodes), Ok(()));
        let pending = [("i-a", "InService"), ("i-b", "Pending")];
        assert!(spot_health(&spot(2, &pending), &nodes).is_err());
        let unknown = [("i-a", "InService"), ("i-c", "InService")];
        assert!(
            spot_health(&spot(2, &unknown), &nodes)
                .unwrap_err()
                .contains("no node yet")
        );
        let mut not_ready = nodes.clone();
        not_ready[1].ready = false;
        assert!(spot_health(&spot(2, &both), &not_ready).is_err());
        let mut cordoned_by_someone = nodes.clone();
        cordoned_by_someone[0].cordoned_by_agent = false;
        assert!(spot_health(&spot(2, &both), &cordoned_by_someone).is_err());
        assert!(spot_health(&spot(0, &[]), &nodes).is_err());
    }

    #[test]
    fn utilization_counts_this_nodes_moving_pods_on_the_rest() {
        let nodes = vec![
            node("fallback", "i-f", 2000, 8),
            node("a", "i-a", 2000, 8),
            node("b", "i-b", 2000, 8),
        ];
        let pods = vec![
            pod("a", 1000, 2, true),
            pod("b", 500, 2, true),
            pod("fallback", 500, 4, true),
            // A DaemonSet pod of the fallback stays with it.
            pod("fallback", 1000, 4, false),
        ];
        let load = utilization_without("fallback", &nodes, &pods).unwrap();
        assert_eq!(load.cpu, 50.0);
        assert_eq!(load.memory, 50.0);
        assert!(pods_fit_elsewhere("fallback", &nodes, &pods));
        assert_eq!(utilization_without("a", &[node("a", "i", 1, 1)], &[]), None);
    }

    #[test]
    fn pods_that_fit_in_total_may_not_fit_any_one_node() {
        let nodes = vec![
            node("fallback", "i-f", 4000, 8),
            node("a", "i-a", 2000, 8),
            node("b", "i-b", 2000, 8),
        ];
        // 1.5 CPU free on each of a and b, one 1.6-CPU pod to move: 65% in total.
        let pods = vec![
            pod("a", 500, 1, true),
            pod("b", 500, 1, true),
            pod("fallback", 1600, 1, true),
        ];
        let load = utilization_without("fallback", &nodes, &pods).unwrap();
        assert!(load.cpu < 75.0);
        assert!(!pods_fit_elsewhere("fallback", &nodes, &pods));
    }

    fn ready_to_go() -> Observation {
        Observation {
            bought_ago: Duration::from_secs(700),
            aborted_ago: None,
            on_demand: Ok(()),
            spot_health: Ok(()),
            healthy_for: Duration::from_secs(130),
            utilization: Some(Utilization {
                cpu: 40.0,
                memory: 50.0,
            }),
            pods_fit: true,
            spot_requested: false,
        }
    }

    #[test]
    fn each_condition_holds_scale_back_until_it_is_met() {
        let settings = ScaleBackSettings::default();
        assert_eq!(
            decide(&ready_to_go(), &settings),
            Decision::DrainAndTerminate
        );
        let over = Utilization {
            cpu: 40.0,
            memory: 75.0,
        };
        let waits: Vec<(&str, Observation)> = vec![
            (
                "too soon",
                Observation {
                    bought_ago: Duration::from_secs(599),
                    ..ready_to_go()
                },
            ),
            (
                "aborted recently",
                Observation {
                    aborted_ago: Some(Duration::from_secs(10)),
                    ..ready_to_go()
                },
            ),
            (
                "on-demand ASG at MinSize",
                Observation {
                    on_demand: Err("at MinSize".into()),
                    ..ready_to_go()
                },
            ),
            (
                "spot unhealthy",
                Observation {
                    spot_health: Err("1 of 2 InService".into()),
                    ..ready_to_go()
                },
            ),
            (
                "not stable long enough",
                Observation {
                    healthy_for: Duration::from_secs(119),
                    ..ready_to_go()
                },
            ),
            (
                "memory at the ceiling",
                Observation {
                    utilization: Some(over),
                    ..ready_to_go()
                },
            ),
            (
                "nowhere to go",
                Observation {
                    utilization: None,
                    ..ready_to_go()
                },
            ),
            (
                "extra spot instance asked for, pods still do not fit",
                Observation {
                    pods_fit: false,
                    spot_requested: true,
                    ..ready_to_go()
                },
            ),
        ];
        for (name, seen) in waits {
            assert!(
                matches!(decide(&seen, &settings), Decision::Wait(_)),
                "case: {name}"
            );
        }
        let no_fit = Observation {
            pods_fit: false,
            ..ready_to_go()
        };
        assert_eq!(decide(&no_fit, &settings), Decision::ScaleSpotFirst);
    }

    #[test]
    fn the_record_says_where_a_restarted_agent_goes_on() {
        let mut record = ScaleBackRecord::new("i-f");
        assert_eq!(resume(&record), Resume::Watch);
        record.phase = Phase::Draining { since: 1 };
        let read = ScaleBackRecord::parse(Some(&record.to_annotation()), "i-f");
        assert_eq!(read, record);
        assert_eq!(resume(&read), Resume::FinishDrain);
        record.phase = Phase::Terminated { at: 2 };
        assert_eq!(resume(&record), Resume::Done);
        // A record of another instance that had the same node name does not count.
        let other = ScaleBackRecord::parse(Some(&record.to_annotation()), "i-g");
        assert_eq!(other, ScaleBackRecord::new("i-g"));
        assert_eq!(
            ScaleBackRecord::parse(Some("{"), "i-f"),
            ScaleBackRecord::new("i-f")
        );
    }
}
