//! The kubelets of new instances: once an instance of a watched group is InService, its
//! Node registers after `join_delay`, NotReady and tainted `node.kubernetes.io/not-ready`
//! (as the node lifecycle controller marks it), and turns Ready `ready_delay` later. In
//! EC2 this takes 30–90 s; the simulations shorten it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use k8s_openapi::api::core::v1::{NodeCondition, Taint};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::sim::asg::AsgSim;
use crate::sim::kube::FakeKube;

/// How quickly the kubelet of a new instance joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeletSpec {
    /// From InService to the Node registered (NotReady).
    pub join_delay: Duration,
    /// From registered to Ready.
    pub ready_delay: Duration,
}

impl Default for KubeletSpec {
    fn default() -> Self {
        KubeletSpec {
            join_delay: Duration::from_millis(200),
            ready_delay: Duration::from_millis(200),
        }
    }
}

/// A Node's allocatable, the same for every simulated instance.
#[derive(Debug, Clone)]
pub struct NodeShape {
    pub cpu: String,
    pub memory: String,
}

const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

/// [`spawn`] for `groups` named after themselves, with the default delays and a Node of
/// 4 CPUs and 16 GiB.
pub fn spawn_default(asg: &Arc<AsgSim>, kube: &Arc<FakeKube>, groups: &[&str]) -> JoinHandle<()> {
    spawn(
        asg,
        kube,
        groups
            .iter()
            .map(|group| ((*group).to_owned(), (*group).to_owned()))
            .collect(),
        KubeletSpec::default(),
        NodeShape {
            cpu: "4".to_owned(),
            memory: "16Gi".to_owned(),
        },
    )
}

/// Runs the kubelets of the instances of `groups` (group name, node name prefix) until
/// the simulators are dropped. Instances that already have a Node are left alone.
pub fn spawn(
    asg: &Arc<AsgSim>,
    kube: &Arc<FakeKube>,
    groups: Vec<(String, String)>,
    spec: KubeletSpec,
    shape: NodeShape,
) -> JoinHandle<()> {
    let (asg, kube): (Weak<AsgSim>, Weak<FakeKube>) = (Arc::downgrade(asg), Arc::downgrade(kube));
    tokio::spawn(async move {
        // Instance → (node name, when it registers, when it turns Ready).
        let mut joining: Vec<(String, String, Instant, Instant)> = Vec::new();
        loop {
            let (Some(asg), Some(kube)) = (asg.upgrade(), kube.upgrade()) else {
                return;
            };
            let now = Instant::now();
            let known = |instance: &str| {
                kube.nodes().iter().any(|node| {
                    node.spec
                        .as_ref()
                        .and_then(|spec| spec.provider_id.as_deref())
                        .is_some_and(|id| id.ends_with(&format!("/{instance}")))
                })
            };
            for (group, prefix) in &groups {
                let Some(snapshot) = asg.group(group) else {
                    continue;
                };
                for instance in snapshot.in_service_ids {
                    if joining.iter().any(|(id, ..)| *id == instance) || known(&instance) {
                        continue;
                    }
                    let registers = now + spec.join_delay;
                    joining.push((
                        instance.clone(),
                        format!("{prefix}-{instance}"),
                        registers,
                        registers + spec.ready_delay,
                    ));
                }
            }
            joining.retain(|(instance, node, registers, ready)| {
                if now < *registers {
                    return true;
                }
                if kube.node(node).is_none() {
                    kube.add_instance_node(node, instance, &shape.cpu, &shape.memory);
                    kube.update_node(node, |stored| set_ready(stored, false));
                }
                if now < *ready {
                    return true;
                }
                kube.update_node(node, |stored| set_ready(stored, true));
                false
            });
            drop((asg, kube));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

fn set_ready(node: &mut k8s_openapi::api::core::v1::Node, ready: bool) {
    if let Some(status) = node.status.as_mut() {
        status.conditions = Some(vec![NodeCondition {
            type_: "Ready".to_owned(),
            status: if ready { "True" } else { "False" }.to_owned(),
            reason: Some(
                if ready {
                    "KubeletReady"
                } else {
                    "KubeletNotReady"
                }
                .to_owned(),
            ),
            ..NodeCondition::default()
        }]);
    }
    if let Some(spec) = node.spec.as_mut() {
        let mut taints: Vec<Taint> = spec
            .taints
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|taint| taint.key != NOT_READY_TAINT)
            .collect();
        if !ready {
            taints.push(Taint {
                key: NOT_READY_TAINT.to_owned(),
                effect: "NoSchedule".to_owned(),
                ..Taint::default()
            });
        }
        spec.taints = (!taints.is_empty()).then_some(taints);
    }
}
