//! How loaded the cluster is, as the scheduler reasons: the CPU and memory *requests*
//! of the pods against the allocatable of the Ready, schedulable nodes, and whether a
//! node's pods would fit on the others. Pure.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::drain::{DrainSettings, PodDisposition, classify};
use crate::names::CORDONED_BY_ANNOTATION;
use crate::record::is_unschedulable;
use crate::spot_guard::decide::instance_id_of_provider_id;

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

/// A node as scale-back sees it, with what its pods request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub instance_id: Option<String>,
    pub ready: bool,
    pub schedulable: bool,
    /// Cordoned by a spot-guard (or NTH-compatible) agent for an event of its own.
    pub cordoned_by_agent: bool,
    pub allocatable: Resources,
    /// The requests of the scheduled, unfinished pods on it.
    pub requested: Resources,
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
            requested: Resources::default(),
        }
    }

    fn takes_pods(&self) -> bool {
        self.ready && self.schedulable
    }

    fn free(&self) -> Resources {
        self.allocatable.minus(self.requested)
    }
}

/// A scheduled, unfinished pod as scale-back sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub node: String,
    pub requests: Resources,
    /// A drain of its node would evict it (not a DaemonSet, mirror or own pod).
    pub moves: bool,
    /// What its budgets are matched on: kept for the pods of the node weighed only.
    pub identity: Option<PodIdentity>,
}

/// A pod's name, labels and readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
}

impl PodView {
    /// `None` for pods that hold nothing: unscheduled or finished. The pods on `own`
    /// keep their identity.
    pub fn of(pod: &Pod, drain: &DrainSettings, own: &str) -> Option<PodView> {
        let node = pod.spec.as_ref()?.node_name.clone()?;
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return None;
        }
        let identity = (node == own).then(|| PodIdentity {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        });
        Some(PodView {
            node,
            requests: pod_requests(pod),
            moves: classify(pod, drain) == PodDisposition::Evict,
            identity,
        })
    }
}

/// The cluster as one look of a fallback node's agent keeps it: every node with the sum
/// of its pods' requests, and only this node's own pods one by one. Built by folding the
/// pages of the Node and Pod lists, so it holds O(nodes) however many pods there are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The node whose scale-back is weighed.
    pub own: String,
    pub nodes: Vec<NodeView>,
    index: HashMap<String, usize>,
    /// The scheduled, unfinished pods on `own`.
    pub own_pods: Vec<PodView>,
}

impl ClusterView {
    pub fn new(own: &str) -> Self {
        ClusterView {
            own: own.to_owned(),
            ..ClusterView::default()
        }
    }

    /// Adds (or replaces) a node; its pods are added after it.
    pub fn add_node(&mut self, node: NodeView) {
        match self.index.get(&node.name) {
            Some(&at) => self.nodes[at] = node,
            None => {
                self.index.insert(node.name.clone(), self.nodes.len());
                self.nodes.push(node);
            }
        }
    }

    /// Counts a pod on its node; a pod on a node not (yet) listed counts nowhere, as a
    /// pod on a node that is gone.
    pub fn add_pod(&mut self, pod: PodView) {
        if let Some(&at) = self.index.get(&pod.node) {
            let node = &mut self.nodes[at];
            node.requested = node.requested.plus(pod.requests);
        }
        if pod.node == self.own {
            self.own_pods.push(pod);
        }
    }

    /// From views, nodes first: what the lists would have built.
    pub fn of(own: &str, nodes: Vec<NodeView>, pods: Vec<PodView>) -> Self {
        let mut cluster = ClusterView::new(own);
        nodes.into_iter().for_each(|node| cluster.add_node(node));
        pods.into_iter().for_each(|pod| cluster.add_pod(pod));
        cluster
    }

    /// The nodes that would take this node's pods.
    fn others(&self) -> impl Iterator<Item = &NodeView> {
        self.nodes
            .iter()
            .filter(|n| n.name != self.own && n.takes_pods())
    }

    fn moving(&self) -> impl Iterator<Item = Resources> {
        self.own_pods.iter().filter(|p| p.moves).map(|p| p.requests)
    }
}

/// Requested share of allocatable, in percent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Utilization {
    pub cpu: f64,
    pub memory: f64,
}

impl Utilization {
    pub fn highest(&self) -> f64 {
        self.cpu.max(self.memory)
    }
}

/// Allocatable of the nodes that would take this node's pods, and what would be
/// requested of them once its moving pods are there.
pub(super) fn totals_without(cluster: &ClusterView) -> (Resources, Resources) {
    let (allocatable, requested) = cluster.others().fold(
        (Resources::default(), Resources::default()),
        |(allocatable, requested), n| {
            (allocatable.plus(n.allocatable), requested.plus(n.requested))
        },
    );
    (
        allocatable,
        cluster.moving().fold(requested, Resources::plus),
    )
}

/// The cluster's requested CPU and memory against the allocatable of the nodes that take
/// pods, once this node is gone and its moving pods are elsewhere. `None` when no other
/// node takes pods.
pub fn utilization_without(cluster: &ClusterView) -> Option<Utilization> {
    let (allocatable, requested) = totals_without(cluster);
    if allocatable.cpu_millis <= 0 || allocatable.memory_bytes <= 0 {
        return None;
    }
    let percent = |used: i64, total: i64| used as f64 * 100.0 / total as f64;
    Some(Utilization {
        cpu: percent(requested.cpu_millis, allocatable.cpu_millis),
        memory: percent(requested.memory_bytes, allocatable.memory_bytes),
    })
}

/// Whether the pods a drain of this node would move fit into the other nodes' free
/// requests, placed largest first on the first node with room.
pub fn pods_fit_elsewhere(cluster: &ClusterView) -> bool {
    let mut free: BTreeMap<&str, Resources> = cluster
        .others()
        .map(|n| (n.name.as_str(), n.free()))
        .collect();
    let mut moving: Vec<Resources> = cluster.moving().collect();
    moving.sort_by_key(|r| std::cmp::Reverse((r.cpu_millis, r.memory_bytes)));
    moving.into_iter().all(|pod| {
        free.values_mut()
            .find(|room| pod.fits_in(**room))
            .map(|room| *room = room.minus(pod))
            .is_some()
    })
}
