//! What runs in a cluster besides the API server, played whenever the server is touched
//! (so a client sees it exactly as if it ran in the background): the kubelets (pods whose
//! termination is over go, bound pods start, nodes report their status), the ReplicaSet,
//! StatefulSet and DaemonSet controllers (a replacement for each pod that left), and the
//! scheduler (a Ready, schedulable, tolerated node with room for each Pending pod).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::pod::{self, OwnerKind};
use super::{Cluster, FakeKube, FakePod, StoredPod, Workload, WorkloadKey, pod_node};
use crate::spot_guard::scale_back::decide::parse_quantity;

/// A bound pod is Running and Ready this long after the scheduler placed it.
pub(super) const DEFAULT_POD_STARTUP: Duration = Duration::from_millis(200);
/// How often each Ready node's status is written. A kubelet posts every 10 s and other
/// node agents write too; once a second keeps tests short while a stale write still meets
/// a conflict now and then.
pub(super) const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

impl FakeKube {
    /// The ReplicaSet, StatefulSet and DaemonSet controllers and the scheduler (default:
    /// on). Off, a deleted pod is not replaced and a Pending pod stays unscheduled.
    pub fn set_controllers(&self, on: bool) {
        self.cluster().rules.controllers = on;
    }

    /// How long a pod the scheduler placed takes to be Running and Ready (default 200 ms).
    pub fn set_pod_startup(&self, delay: Duration) {
        self.cluster().rules.pod_startup = delay;
    }

    /// How often each Ready node's kubelet writes its status, bumping the Node's
    /// `resourceVersion` (default: every second); `None` stops them.
    pub fn set_node_heartbeat(&self, every: Option<Duration>) {
        self.cluster().rules.heartbeat = every;
    }
}

/// Whether a node reports Ready.
pub(super) fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A pod its controller counts as one of its replicas: neither terminating nor finished.
fn is_active(stored: &StoredPod) -> bool {
    stored.pod.metadata.deletion_timestamp.is_none()
        && !matches!(pod::phase(&stored.pod), "Succeeded" | "Failed")
}

impl Cluster {
    /// Stores a pod a test (not a controller) adds: its controller now keeps it.
    pub(super) fn add_pod(&mut self, template: FakePod, now: Instant) -> Pod {
        let key = (template.namespace.clone(), template.name.clone());
        // A pod replaced under the same name leaves its controller's count first.
        if let Some(old) = self.pods.remove(&key)
            && let Some(old_key) = &old.workload
        {
            self.forget(old_key, &old.template);
        }
        let workload = self.adopt(&template);
        let owner_uid = match (&workload, template.owner_kind) {
            (Some(key), _) => self.workloads.get(key).map(|w| w.uid.clone()),
            (None, OwnerKind::Node) => self
                .nodes
                .get(&template.node)
                .and_then(|n| n.metadata.uid.clone()),
            (None, _) => None,
        }
        .unwrap_or_default();
        let ids = self.pod_ids(owner_uid, &template.node.clone());
        let mut pod = template.build(&ids);
        let mut gone_at = None;
        if template.already_terminating {
            let grace = template.grace_period_seconds();
            gone_at = self.mark_deleted(&mut pod, &template, grace, now);
        }
        self.pods.insert(
            key,
            StoredPod {
                pod: pod.clone(),
                template,
                gone_at,
                starts_at: None,
                workload,
            },
        );
        pod
    }

    /// Registers `template` with its controller, which keeps one more pod from now on.
    fn adopt(&mut self, template: &FakePod) -> Option<WorkloadKey> {
        let kind = template.owner_kind;
        if !matches!(
            kind,
            OwnerKind::ReplicaSet | OwnerKind::StatefulSet | OwnerKind::DaemonSet
        ) {
            return None;
        }
        let key = (
            template.namespace.clone(),
            kind,
            template.owner_name.clone(),
        );
        if !self.workloads.contains_key(&key) {
            let uid = self.next_uid();
            self.workloads.insert(
                key.clone(),
                Workload {
                    uid,
                    created: Time(Timestamp::now()),
                    replicas: 0,
                    members: BTreeMap::new(),
                    template: template.clone(),
                },
            );
        }
        if let Some(workload) = self.workloads.get_mut(&key) {
            match kind {
                OwnerKind::ReplicaSet => workload.replicas += 1,
                OwnerKind::StatefulSet => {
                    workload
                        .members
                        .insert(template.name.clone(), template.clone());
                }
                OwnerKind::DaemonSet => {
                    workload
                        .members
                        .insert(template.node.clone(), template.clone());
                }
                _ => {}
            }
        }
        Some(key)
    }

    /// The controller no longer keeps the pod `template` names (scaled down).
    pub(super) fn forget(&mut self, key: &WorkloadKey, template: &FakePod) {
        if let Some(workload) = self.workloads.get_mut(key) {
            match key.1 {
                OwnerKind::ReplicaSet => workload.replicas = workload.replicas.saturating_sub(1),
                OwnerKind::StatefulSet => {
                    workload.members.remove(&template.name);
                }
                OwnerKind::DaemonSet => {
                    workload.members.remove(&template.node);
                }
                _ => {}
            }
        }
    }

    /// Brings the cluster to `now`: kubelets, then controllers, then the scheduler.
    pub(super) fn settle(&mut self, now: Instant) {
        self.run_kubelets(now);
        if self.rules.controllers {
            self.replace_missing_pods();
            self.schedule(now);
        }
        self.write_pdb_status();
    }

    fn run_kubelets(&mut self, now: Instant) {
        let before = self.pods.len();
        self.pods
            .retain(|_, stored| stored.gone_at.is_none_or(|at| at > now));
        if self.pods.len() != before {
            // The final deletion is a write like any other.
            self.next_resource_version();
        }
        let starting: Vec<(String, String)> = self
            .pods
            .iter()
            .filter(|(_, stored)| stored.starts_at.is_some_and(|at| at <= now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in starting {
            let resource_version = self.next_resource_version();
            self.uid_counter += 1;
            let n = self.uid_counter;
            if let Some(stored) = self.pods.get_mut(&key) {
                let ip = format!("10.1.{}.{}", (n / 250) % 250, n % 250 + 2);
                pod::start(&mut stored.pod, stored.template.ready_when_started(), &ip);
                stored.pod.metadata.resource_version = Some(resource_version);
                stored.starts_at = None;
            }
        }
        let Some(every) = self.rules.heartbeat else {
            return;
        };
        let due: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, node)| node_ready(node))
            .filter(|(name, _)| {
                self.heartbeats
                    .get(*name)
                    .is_none_or(|last| now.saturating_duration_since(*last) >= every)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            let resource_version = self.next_resource_version();
            if let Some(node) = self.nodes.get_mut(&name) {
                let beat = Some(Time(Timestamp::now()));
                for condition in node
                    .status
                    .iter_mut()
                    .flat_map(|s| s.conditions.iter_mut())
                    .flatten()
                {
                    condition.last_heartbeat_time = beat.clone();
                }
                node.metadata.resource_version = Some(resource_version);
            }
            self.heartbeats.insert(name, now);
        }
    }

    /// Each controller makes up for the pods it is missing.
    fn replace_missing_pods(&mut self) {
        let mut active: HashMap<&WorkloadKey, usize> = HashMap::new();
        let mut daemon_nodes: BTreeSet<(&WorkloadKey, &str)> = BTreeSet::new();
        for stored in self.pods.values().filter(|stored| is_active(stored)) {
            if let Some(key) = &stored.workload {
                *active.entry(key).or_default() += 1;
                if let Some(node) = stored
                    .template
                    .pinned_to
                    .as_deref()
                    .or(pod_node(&stored.pod))
                {
                    daemon_nodes.insert((key, node));
                }
            }
        }
        let mut wanted: Vec<(WorkloadKey, Option<String>, FakePod)> = Vec::new();
        for (key, workload) in &self.workloads {
            match key.1 {
                OwnerKind::ReplicaSet => {
                    let missing = workload
                        .replicas
                        .saturating_sub(active.get(key).copied().unwrap_or(0));
                    for _ in 0..missing {
                        wanted.push((key.clone(), None, workload.template.clone()));
                    }
                }
                OwnerKind::StatefulSet => {
                    for (name, template) in &workload.members {
                        if !self.pods.contains_key(&(key.0.clone(), name.clone())) {
                            wanted.push((key.clone(), Some(name.clone()), template.clone()));
                        }
                    }
                }
                OwnerKind::DaemonSet => {
                    for (node, template) in &workload.members {
                        let present = daemon_nodes.contains(&(key, node.as_str()));
                        if !present && self.nodes.contains_key(node) {
                            let mut template = template.clone();
                            template.pinned_to = Some(node.clone());
                            wanted.push((key.clone(), None, template));
                        }
                    }
                }
                _ => {}
            }
        }
        for (key, name, template) in wanted {
            let name = match name {
                Some(name) => name,
                None => self.generated_name(&key),
            };
            self.create_replacement(key, &name, &template);
        }
    }

    /// `<owner>-xxxxx`, not taken in the namespace.
    fn generated_name(&mut self, key: &WorkloadKey) -> String {
        loop {
            let name = format!("{}-{}", key.2, self.next_suffix());
            if !self.pods.contains_key(&(key.0.clone(), name.clone())) {
                return name;
            }
        }
    }

    fn create_replacement(&mut self, key: WorkloadKey, name: &str, template: &FakePod) {
        let template = template.replacement(name);
        let owner_uid = self
            .workloads
            .get(&key)
            .map(|w| w.uid.clone())
            .unwrap_or_default();
        let ids = self.pod_ids(owner_uid, "");
        let pod = template.build(&ids);
        self.pods.insert(
            (template.namespace.clone(), name.to_owned()),
            StoredPod {
                pod,
                template,
                gone_at: None,
                starts_at: None,
                workload: Some(key),
            },
        );
    }

    /// Binds every Pending pod it can, one at a time, each to the feasible node with the
    /// fewest pods; marks the others Unschedulable with the scheduler's message.
    fn schedule(&mut self, now: Instant) {
        let pending: Vec<(String, String)> = self
            .pods
            .iter()
            .filter(|(_, stored)| {
                pod_node(&stored.pod).is_none()
                    && stored.pod.metadata.deletion_timestamp.is_none()
                    && pod::phase(&stored.pod) == "Pending"
            })
            .map(|(key, _)| key.clone())
            .collect();
        // Nothing changed since the last pass left these pods Pending: they still cannot go.
        if pending.is_empty() || self.scheduled_at == Some(self.resource_version) {
            return;
        }
        let mut usage = self.node_usage();
        for key in pending {
            let Some(stored) = self.pods.get(&key) else {
                continue;
            };
            let choice = self.pick_node(stored, &usage);
            match choice {
                Ok(node) => {
                    let host_ip = self.node_ip(&node);
                    let resource_version = self.next_resource_version();
                    let startup = self.rules.pod_startup;
                    if let Some(stored) = self.pods.get_mut(&key) {
                        pod::bind(&mut stored.pod, &node, &host_ip);
                        stored.pod.metadata.resource_version = Some(resource_version);
                        stored.starts_at = Some(now + startup);
                        let requested = requests_of(&stored.template);
                        let entry = usage.entry(node).or_default();
                        entry.pods += 1;
                        entry.cpu_millis += requested.0;
                        entry.memory_bytes += requested.1;
                    }
                }
                Err(message) => {
                    if let Some(stored) = self.pods.get_mut(&key) {
                        pod::unschedulable(&mut stored.pod, &message);
                    }
                }
            }
        }
        self.scheduled_at = Some(self.resource_version);
    }

    fn node_usage(&self) -> BTreeMap<String, Usage> {
        let mut usage: BTreeMap<String, Usage> = BTreeMap::new();
        for stored in self.pods.values() {
            let Some(node) = pod_node(&stored.pod) else {
                continue;
            };
            if matches!(pod::phase(&stored.pod), "Succeeded" | "Failed") {
                continue;
            }
            let (cpu, memory) = requests_of(&stored.template);
            let entry = usage.entry(node.to_owned()).or_default();
            entry.pods += 1;
            entry.cpu_millis += cpu;
            entry.memory_bytes += memory;
        }
        usage
    }

    /// The node for `stored`, or the scheduler's "0/N nodes are available: …" message.
    fn pick_node(
        &self,
        stored: &StoredPod,
        usage: &BTreeMap<String, Usage>,
    ) -> Result<String, String> {
        if self.nodes.is_empty() {
            return Err("no nodes available to schedule pods".to_owned());
        }
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<(usize, &str)> = None;
        for (name, node) in &self.nodes {
            let used = usage.get(name).copied().unwrap_or_default();
            match unfit(stored, node, used) {
                Some(reason) => *reasons.entry(reason).or_default() += 1,
                None => {
                    if best.is_none_or(|(pods, _)| used.pods < pods) {
                        best = Some((used.pods, name));
                    }
                }
            }
        }
        if let Some((_, name)) = best {
            return Ok(name.to_owned());
        }
        let total = self.nodes.len();
        let listed: Vec<String> = reasons
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        Err(format!(
            "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: \
             {total} Preemption is not helpful for scheduling.",
            listed.join(", ")
        ))
    }
}

/// What the pods bound to a node take of it.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    pods: usize,
    cpu_millis: i64,
    memory_bytes: i64,
}

/// Why `node` cannot take the pod, in the scheduler's words; `None` if it can.
fn unfit(stored: &StoredPod, node: &Node, used: Usage) -> Option<String> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let tolerations = stored
        .pod
        .spec
        .as_ref()
        .and_then(|spec| spec.tolerations.clone())
        .unwrap_or_default();
    let tolerated = |key: &str, value: &str, effect: &str| {
        tolerations
            .iter()
            .any(|t| pod::tolerates(t, key, value, effect))
    };
    if stored
        .template
        .pinned_to
        .as_deref()
        .is_some_and(|pinned| pinned != name)
    {
        return Some("node(s) didn't match Pod's node affinity/selector".to_owned());
    }
    if !node_ready(node) && !tolerated(NOT_READY_TAINT, "", "NoSchedule") {
        return Some(format!(
            "node(s) had untolerated taint {{{NOT_READY_TAINT}: }}"
        ));
    }
    let spec = node.spec.clone().unwrap_or_default();
    if spec.unschedulable == Some(true) && !tolerated(UNSCHEDULABLE_TAINT, "", "NoSchedule") {
        return Some("node(s) were unschedulable".to_owned());
    }
    for taint in spec.taints.iter().flatten() {
        let value = taint.value.as_deref().unwrap_or_default();
        let blocks = matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute");
        if blocks && !tolerated(&taint.key, value, &taint.effect) {
            return Some(format!(
                "node(s) had untolerated taint {{{}: {value}}}",
                taint.key
            ));
        }
    }
    let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let (cpu, memory) = requests_of(&stored.template);
    let limit = |resource: &str, scale: f64| {
        allocatable
            .and_then(|a| a.get(resource))
            .and_then(|q| parse_quantity(&q.0))
            .map(|v| (v * scale).ceil() as i64)
    };
    if limit("cpu", 1000.0).is_some_and(|cap| used.cpu_millis + cpu > cap) {
        return Some("Insufficient cpu".to_owned());
    }
    if limit("memory", 1.0).is_some_and(|cap| used.memory_bytes + memory > cap) {
        return Some("Insufficient memory".to_owned());
    }
    None
}

/// A pod's CPU (millicores) and memory (bytes) requests.
fn requests_of(template: &FakePod) -> (i64, i64) {
    let Some((cpu, memory)) = &template.requests else {
        return (0, 0);
    };
    let read = |q: &str, scale: f64| parse_quantity(q).map_or(0, |v| (v * scale).ceil() as i64);
    (read(cpu, 1000.0), read(memory, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_base_units() {
        assert_eq!(parse_quantity("250m"), Some(0.25));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1Gi"), Some(1024f64.powi(3)));
        assert_eq!(parse_quantity("bogus"), None);
    }
}
