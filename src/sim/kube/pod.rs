//! The pod builder of [`super::FakeKube`], and the status changes the kubelet and the
//! scheduler make to a stored pod (bind, start).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, EmptyDirVolumeSource, HostIP, Pod, PodCondition, PodIP,
    PodSpec, PodStatus, ResourceRequirements, Toleration, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;

use super::Termination;
use crate::names::MIRROR_POD_ANNOTATION;

/// The `terminationGracePeriodSeconds` [`FakePod::new`] writes into each pod, as a manifest
/// may: one second, the shortest a pod can ask for short of being killed at once, so that an
/// evicted pod is visibly terminating (`deletionTimestamp` set) yet suites stay fast. A pod
/// built with [`FakePod::with_default_grace_period`] gets Kubernetes' default, 30 s.
pub const TEST_GRACE_PERIOD_SECONDS: i64 = 1;

/// What controls a pod: which controller (if any) recreates it when it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum OwnerKind {
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    /// A static pod's mirror, owned by its Node.
    Node,
    /// A Job's pod (a finished pod's owner): nothing recreates it once done.
    Job,
    /// A bare pod: nothing recreates it.
    None,
}

impl OwnerKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            OwnerKind::ReplicaSet => "ReplicaSet",
            OwnerKind::StatefulSet => "StatefulSet",
            OwnerKind::DaemonSet => "DaemonSet",
            OwnerKind::Node => "Node",
            OwnerKind::Job => "Job",
            OwnerKind::None => "",
        }
    }
}

/// A pod to add with [`super::FakeKube::add_pod`]; by default a running, Ready pod of its own
/// one-replica ReplicaSet (named like the pod), with
/// `terminationGracePeriodSeconds: 1` ([`TEST_GRACE_PERIOD_SECONDS`]).
#[derive(Debug, Clone)]
pub struct FakePod {
    pub(super) namespace: String,
    pub(super) name: String,
    /// The node it runs on; empty while unscheduled.
    pub(super) node: String,
    pub(super) owner_kind: OwnerKind,
    pub(super) owner_name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    empty_dir: bool,
    termination_grace_period_seconds: Option<i64>,
    phase: &'static str,
    ready: bool,
    pub(super) termination: Option<Termination>,
    /// Its replacements may only run on this node (a required node affinity).
    pub(super) pinned_to: Option<String>,
    /// CPU and memory requests of its one container, as Kubernetes quantities.
    pub(super) requests: Option<(String, String)>,
    extra_tolerations: Vec<Toleration>,
    pub(super) already_terminating: bool,
}

impl FakePod {
    pub fn new(namespace: &str, name: &str, node: &str) -> Self {
        FakePod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
            owner_kind: OwnerKind::ReplicaSet,
            owner_name: name.to_owned(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            empty_dir: false,
            termination_grace_period_seconds: Some(TEST_GRACE_PERIOD_SECONDS),
            phase: "Running",
            ready: true,
            termination: None,
            pinned_to: None,
            requests: None,
            extra_tolerations: Vec::new(),
            already_terminating: false,
        }
    }

    /// One of the replicas of ReplicaSet `name` (shared by every pod naming it): an evicted
    /// one is replaced by a new pod `name-xxxxx`, which the scheduler places.
    pub fn replica_set(mut self, name: &str) -> Self {
        self.owner_kind = OwnerKind::ReplicaSet;
        self.owner_name = name.to_owned();
        self
    }

    /// A member of StatefulSet `name`: once it is gone, it comes back with the same name and
    /// a new uid, wherever the scheduler places it.
    pub fn stateful_set(mut self, name: &str) -> Self {
        self.owner_kind = OwnerKind::StatefulSet;
        self.owner_name = name.to_owned();
        self
    }

    /// A DaemonSet pod (its DaemonSet is named like the pod); drains leave it, and if it is
    /// deleted anyway its DaemonSet puts a new one on the same node.
    pub fn daemon_set(mut self) -> Self {
        self.owner_kind = OwnerKind::DaemonSet;
        self.owner_name = self.name.clone();
        self
    }

    /// A static pod's mirror: annotated and owned by the Node, as the kubelet creates it.
    pub fn mirror(mut self) -> Self {
        self.owner_kind = OwnerKind::Node;
        self.owner_name = self.node.clone();
        self.annotations
            .insert(MIRROR_POD_ANNOTATION.to_owned(), "fake-hash".to_owned());
        self
    }

    /// A pod no controller owns: nothing recreates it (kubectl drain refuses it without
    /// `--force`).
    pub fn bare(mut self) -> Self {
        self.owner_kind = OwnerKind::None;
        self.owner_name.clear();
        self
    }

    pub fn with_empty_dir(mut self) -> Self {
        self.empty_dir = true;
        self
    }

    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn with_termination_grace_period(mut self, seconds: i64) -> Self {
        self.termination_grace_period_seconds = Some(seconds);
        self
    }

    /// No `terminationGracePeriodSeconds` in the manifest: the API server's default, 30 s.
    pub fn with_default_grace_period(mut self) -> Self {
        self.termination_grace_period_seconds = None;
        self
    }

    /// `"Succeeded"` or `"Failed"` for a finished pod (a Job's, unless an owner was chosen
    /// first: a ReplicaSet's pods never finish), `"Pending"` for one bound but not started.
    pub fn with_phase(mut self, phase: &'static str) -> Self {
        self.phase = phase;
        let default_owner =
            self.owner_kind == OwnerKind::ReplicaSet && self.owner_name == self.name;
        if matches!(phase, "Succeeded" | "Failed") && default_owner {
            self.owner_kind = OwnerKind::Job;
        }
        self
    }

    /// Running but failing its readiness probe: not Ready, so no PodDisruptionBudget counts
    /// it healthy.
    pub fn not_ready(mut self) -> Self {
        self.ready = false;
        self
    }

    /// Requests of its container, e.g. `("500m", "1Gi")`.
    pub fn with_requests(mut self, cpu: &str, memory: &str) -> Self {
        self.requests = Some((cpu.to_owned(), memory.to_owned()));
        self
    }

    /// Tolerates every taint with `key` (operator `Exists`, any effect).
    pub fn tolerating(mut self, key: &str) -> Self {
        self.extra_tolerations.push(Toleration {
            key: Some(key.to_owned()),
            operator: Some("Exists".to_owned()),
            ..Toleration::default()
        });
        self
    }

    /// Overrides the server-wide [`Termination`] for this pod (and its replacements).
    pub fn terminating(mut self, termination: Termination) -> Self {
        self.termination = Some(termination);
        self
    }

    /// Deleted just before it is added: it carries `deletionTimestamp` (now + its grace
    /// period) and goes when that grace period (or its [`Termination`]) has passed, as a pod
    /// being deleted when a drain starts. Its controller has already made its replacement.
    pub fn already_terminating(mut self) -> Self {
        self.already_terminating = true;
        self
    }

    /// A StatefulSet member (StatefulSet named like the pod) whose node affinity pins it to
    /// `node`: after it terminates it comes back with the same name and a new uid there, once
    /// that node can take it (Ready, schedulable, untainted for it).
    pub fn recreated_on(mut self, node: &str) -> Self {
        self.owner_kind = OwnerKind::StatefulSet;
        self.owner_name = self.name.clone();
        self.pinned_to = Some(node.to_owned());
        self
    }

    /// The pod its controller creates in its place: same template, `name`, not yet placed.
    pub(super) fn replacement(&self, name: &str) -> FakePod {
        FakePod {
            name: name.to_owned(),
            node: String::new(),
            phase: if matches!(self.phase, "Succeeded" | "Failed" | "Pending") {
                "Running"
            } else {
                self.phase
            },
            already_terminating: false,
            ..self.clone()
        }
    }

    pub(super) fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    pub(super) fn grace_period_seconds(&self) -> i64 {
        self.termination_grace_period_seconds.unwrap_or(30)
    }

    /// Whether the kubelet reports it Ready once its containers run.
    pub(super) fn ready_when_started(&self) -> bool {
        self.ready
    }

    /// The tolerations the pod ends with: the admission plugin's defaults (or, for a
    /// DaemonSet pod, the DaemonSet controller's), plus its own.
    fn tolerations(&self) -> Vec<Toleration> {
        let exists = |key: &str, effect: &str, seconds: Option<i64>| Toleration {
            key: Some(key.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some(effect.to_owned()),
            toleration_seconds: seconds,
            ..Toleration::default()
        };
        let mut tolerations = match self.owner_kind {
            OwnerKind::DaemonSet => vec![
                exists("node.kubernetes.io/not-ready", "NoExecute", None),
                exists("node.kubernetes.io/unreachable", "NoExecute", None),
                exists("node.kubernetes.io/disk-pressure", "NoSchedule", None),
                exists("node.kubernetes.io/memory-pressure", "NoSchedule", None),
                exists("node.kubernetes.io/pid-pressure", "NoSchedule", None),
                exists("node.kubernetes.io/unschedulable", "NoSchedule", None),
            ],
            OwnerKind::Node => vec![Toleration {
                operator: Some("Exists".to_owned()),
                effect: Some("NoExecute".to_owned()),
                ..Toleration::default()
            }],
            _ => vec![
                exists("node.kubernetes.io/not-ready", "NoExecute", Some(300)),
                exists("node.kubernetes.io/unreachable", "NoExecute", Some(300)),
            ],
        };
        tolerations.extend(self.extra_tolerations.iter().cloned());
        tolerations
    }

    /// The pod as the API server stores it after creation; `owner_uid` is its controller's.
    pub(super) fn build(&self, ids: &PodIds) -> Pod {
        let owner_references = (self.owner_kind != OwnerKind::None).then(|| {
            let is_node = self.owner_kind == OwnerKind::Node;
            let api_version = match self.owner_kind {
                OwnerKind::Node => "v1",
                OwnerKind::Job => "batch/v1",
                _ => "apps/v1",
            };
            vec![OwnerReference {
                api_version: api_version.to_owned(),
                kind: self.owner_kind.as_str().to_owned(),
                name: self.owner_name.clone(),
                uid: ids.owner_uid.clone(),
                controller: Some(true),
                block_owner_deletion: (!is_node).then_some(true),
            }]
        });
        let generate_name = matches!(
            self.owner_kind,
            OwnerKind::ReplicaSet | OwnerKind::DaemonSet
        )
        .then(|| format!("{}-", self.owner_name));
        let volumes = self.empty_dir.then(|| {
            vec![Volume {
                name: "scratch".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]
        });
        let mut pod = Pod {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                generate_name,
                namespace: Some(self.namespace.clone()),
                uid: Some(ids.uid.clone()),
                resource_version: Some(ids.resource_version.clone()),
                creation_timestamp: Some(Time(Timestamp::now())),
                labels: (!self.labels.is_empty()).then(|| self.labels.clone()),
                annotations: (!self.annotations.is_empty()).then(|| self.annotations.clone()),
                owner_references,
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".to_owned(),
                    image: Some("registry.k8s.io/pause:3.10".to_owned()),
                    image_pull_policy: Some("IfNotPresent".to_owned()),
                    resources: Some(ResourceRequirements {
                        requests: self.requests.as_ref().map(|(cpu, memory)| {
                            BTreeMap::from([
                                ("cpu".to_owned(), Quantity(cpu.clone())),
                                ("memory".to_owned(), Quantity(memory.clone())),
                            ])
                        }),
                        ..ResourceRequirements::default()
                    }),
                    termination_message_path: Some("/dev/termination-log".to_owned()),
                    termination_message_policy: Some("File".to_owned()),
                    ..Container::default()
                }],
                volumes,
                termination_grace_period_seconds: Some(self.grace_period_seconds()),
                restart_policy: Some(
                    if self.owner_kind == OwnerKind::Job {
                        "Never"
                    } else {
                        "Always"
                    }
                    .to_owned(),
                ),
                dns_policy: Some("ClusterFirst".to_owned()),
                scheduler_name: Some("default-scheduler".to_owned()),
                service_account_name: Some("default".to_owned()),
                enable_service_links: Some(true),
                priority: Some(0),
                preemption_policy: Some("PreemptLowerPriority".to_owned()),
                tolerations: Some(self.tolerations()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Pending".to_owned()),
                qos_class: Some(
                    if self.requests.is_some() {
                        "Burstable"
                    } else {
                        "BestEffort"
                    }
                    .to_owned(),
                ),
                ..PodStatus::default()
            }),
        };
        if !self.node.is_empty() {
            bind(&mut pod, &self.node, &ids.host_ip);
            match self.phase {
                "Pending" => {}
                "Succeeded" | "Failed" => finish(&mut pod, self.phase, &ids.pod_ip),
                _ => start(&mut pod, self.ready, &ids.pod_ip),
            }
        }
        pod
    }
}

/// What the API server and the node give a new pod: ids, version, addresses.
pub(super) struct PodIds {
    pub(super) uid: String,
    pub(super) resource_version: String,
    pub(super) owner_uid: String,
    pub(super) pod_ip: String,
    pub(super) host_ip: String,
}

fn now() -> Option<Time> {
    Some(Time(Timestamp::now()))
}

fn condition(type_: &str, status: bool) -> PodCondition {
    PodCondition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        last_transition_time: now(),
        ..PodCondition::default()
    }
}

/// Sets (or replaces) the condition of its type.
pub(super) fn set_condition(pod: &mut Pod, new: PodCondition) {
    let status = pod.status.get_or_insert_with(PodStatus::default);
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != new.type_);
    conditions.push(new);
}

/// The scheduler's binding: the pod is on `node`, its containers being created.
pub(super) fn bind(pod: &mut Pod, node: &str, host_ip: &str) {
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.to_owned());
    }
    set_condition(pod, condition("PodScheduled", true));
    let status = pod.status.get_or_insert_with(PodStatus::default);
    status.host_ip = Some(host_ip.to_owned());
    status.host_ips = Some(vec![HostIP {
        ip: host_ip.to_owned(),
    }]);
    status.container_statuses = Some(vec![ContainerStatus {
        name: "main".to_owned(),
        image: "registry.k8s.io/pause:3.10".to_owned(),
        ready: false,
        started: Some(false),
        state: Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".to_owned()),
                ..ContainerStateWaiting::default()
            }),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }]);
}

/// The scheduler found no node: `PodScheduled=False`, reason `Unschedulable`.
pub(super) fn unschedulable(pod: &mut Pod, message: &str) {
    let mut new = condition("PodScheduled", false);
    new.reason = Some("Unschedulable".to_owned());
    new.message = Some(message.to_owned());
    let unchanged = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .is_some_and(|old| old.message == new.message);
    if !unchanged {
        set_condition(pod, new);
    }
}

/// The kubelet started the containers: Running, and Ready unless the probe fails.
pub(super) fn start(pod: &mut Pod, ready: bool, pod_ip: &str) {
    for (type_, status) in [
        ("PodReadyToStartContainers", true),
        ("Initialized", true),
        ("ContainersReady", ready),
        ("Ready", ready),
    ] {
        set_condition(pod, condition(type_, status));
    }
    let status = pod.status.get_or_insert_with(PodStatus::default);
    status.phase = Some("Running".to_owned());
    status.start_time = now();
    status.pod_ip = Some(pod_ip.to_owned());
    status.pod_ips = Some(vec![PodIP {
        ip: pod_ip.to_owned(),
    }]);
    status.container_statuses = Some(vec![ContainerStatus {
        name: "main".to_owned(),
        image: "registry.k8s.io/pause:3.10".to_owned(),
        image_id: "registry.k8s.io/pause@sha256:fake".to_owned(),
        container_id: Some(format!("containerd://{}", pod_ip.replace('.', ""))),
        ready,
        started: Some(true),
        restart_count: 0,
        state: Some(ContainerState {
            running: Some(ContainerStateRunning { started_at: now() }),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }]);
}

fn finish(pod: &mut Pod, phase: &str, pod_ip: &str) {
    start(pod, false, pod_ip);
    let status = pod.status.get_or_insert_with(PodStatus::default);
    status.phase = Some(phase.to_owned());
    let (reason, code) = if phase == "Succeeded" {
        ("Completed", 0)
    } else {
        ("Error", 1)
    };
    for container in status.container_statuses.iter_mut().flatten() {
        container.started = Some(false);
        container.state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: Some(reason.to_owned()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        });
    }
}

/// Whether the pod is Ready (`IsPodReady`).
pub(super) fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub(super) fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Whether `toleration` tolerates a taint (`Toleration.ToleratesTaint`).
pub(super) fn tolerates(toleration: &Toleration, key: &str, value: &str, effect: &str) -> bool {
    if toleration
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != effect)
    {
        return false;
    }
    let toleration_key = toleration.key.as_deref().unwrap_or_default();
    if !toleration_key.is_empty() && toleration_key != key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        _ => toleration.value.as_deref().unwrap_or_default() == value,
    }
}
