//! The pod builder of [`super::FakeKube`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, Pod, PodSpec, PodStatus, ResourceRequirements, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;

use super::Termination;
use crate::names::MIRROR_POD_ANNOTATION;

/// A pod to add with [`FakeKube::add_pod`]; by default a running, ReplicaSet-owned pod.
#[derive(Debug, Clone)]
pub struct FakePod {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) node: String,
    owner_kind: &'static str,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    empty_dir: bool,
    termination_grace_period_seconds: Option<i64>,
    phase: &'static str,
    pub(super) termination: Option<Termination>,
    pub(super) recreate_on: Option<String>,
    /// CPU and memory requests of its one container, as Kubernetes quantities.
    requests: Option<(String, String)>,
}

impl FakePod {
    pub fn new(namespace: &str, name: &str, node: &str) -> Self {
        FakePod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
            owner_kind: "ReplicaSet",
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            empty_dir: false,
            termination_grace_period_seconds: None,
            phase: "Running",
            termination: None,
            recreate_on: None,
            requests: None,
        }
    }

    pub fn daemon_set(mut self) -> Self {
        self.owner_kind = "DaemonSet";
        self
    }

    /// A static pod's mirror: annotated and owned by the Node, as the kubelet creates it.
    pub fn mirror(mut self) -> Self {
        self.owner_kind = "Node";
        self.annotations
            .insert(MIRROR_POD_ANNOTATION.to_owned(), "fake-hash".to_owned());
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

    /// `"Succeeded"` or `"Failed"` for a finished pod.
    pub fn with_phase(mut self, phase: &'static str) -> Self {
        self.phase = phase;
        self
    }

    /// Requests of its container, e.g. `("500m", "1Gi")`.
    pub fn with_requests(mut self, cpu: &str, memory: &str) -> Self {
        self.requests = Some((cpu.to_owned(), memory.to_owned()));
        self
    }

    /// Overrides the server-wide [`Termination`] for this pod.
    pub fn terminating(mut self, termination: Termination) -> Self {
        self.termination = Some(termination);
        self
    }

    /// After it terminates, the pod comes back with the same name and a new uid on `node`,
    /// as a StatefulSet controller would recreate it.
    pub fn recreated_on(mut self, node: &str) -> Self {
        self.recreate_on = Some(node.to_owned());
        self
    }

    pub(super) fn build(&self, uid: String, resource_version: String) -> Pod {
        let owner = OwnerReference {
            api_version: if self.owner_kind == "Node" {
                "v1".to_owned()
            } else {
                "apps/v1".to_owned()
            },
            kind: self.owner_kind.to_owned(),
            name: if self.owner_kind == "Node" {
                self.node.clone()
            } else {
                format!("{}-owner", self.name)
            },
            uid: format!("owner-of-{uid}"),
            controller: Some(true),
            block_owner_deletion: None,
        };
        let volumes = self.empty_dir.then(|| {
            vec![Volume {
                name: "scratch".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]
        });
        Pod {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                uid: Some(uid),
                resource_version: Some(resource_version),
                creation_timestamp: Some(Time(Timestamp::now())),
                labels: (!self.labels.is_empty()).then(|| self.labels.clone()),
                annotations: (!self.annotations.is_empty()).then(|| self.annotations.clone()),
                owner_references: Some(vec![owner]),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(self.node.clone()),
                containers: vec![Container {
                    name: "main".to_owned(),
                    image: Some("registry.k8s.io/pause:3.10".to_owned()),
                    resources: self
                        .requests
                        .as_ref()
                        .map(|(cpu, memory)| ResourceRequirements {
                            requests: Some(BTreeMap::from([
                                ("cpu".to_owned(), Quantity(cpu.clone())),
                                ("memory".to_owned(), Quantity(memory.clone())),
                            ])),
                            ..ResourceRequirements::default()
                        }),
                    ..Container::default()
                }],
                volumes,
                termination_grace_period_seconds: self.termination_grace_period_seconds,
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(self.phase.to_owned()),
                ..PodStatus::default()
            }),
        }
    }
}
