//! When a replacement counts as arrived in the cluster: its Node (found by
//! `spec.providerID`) exists, is Ready, schedulable and free of the start-up taints that
//! keep pods off. InService is EC2's word; this is the scheduler's. Pure.

use k8s_openapi::api::core::v1::Node;

use crate::record::is_unschedulable;

/// Taints the kubelet, the node lifecycle controller and the cloud provider put on a
/// node that cannot take pods yet (Kubernetes' names, read, never written).
pub const STARTUP_TAINTS: [&str; 3] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.cloudprovider.kubernetes.io/uninitialized",
];

/// `aws:///us-east-1a/i-0abc…` → `i-0abc…`.
pub fn instance_id_of_provider_id(provider_id: &str) -> Option<String> {
    let last = provider_id.strip_prefix("aws://")?.rsplit('/').next()?;
    last.starts_with("i-").then(|| last.to_owned())
}

/// Where a replacement's Node stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeReadiness {
    /// No Node names the instance yet: the kubelet has not registered.
    Missing,
    /// Registered, but cannot take pods yet, and why.
    NotYet {
        node: String,
        why: String,
    },
    Ready {
        node: String,
    },
}

/// The readiness of the Node running `instance_id` among `nodes`.
pub fn readiness(nodes: &[Node], instance_id: &str) -> NodeReadiness {
    let Some(node) = nodes.iter().find(|node| {
        node.spec
            .as_ref()
            .and_then(|spec| spec.provider_id.as_deref())
            .and_then(instance_id_of_provider_id)
            .is_some_and(|id| id == instance_id)
    }) else {
        return NodeReadiness::Missing;
    };
    let name = node.metadata.name.clone().unwrap_or_default();
    let not_yet = |why: String| NodeReadiness::NotYet {
        node: name.clone(),
        why,
    };
    let ready = node
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(condition) if condition.status == "True" => {}
        Some(condition) => return not_yet(format!("Ready={}", condition.status)),
        None => return not_yet("no Ready condition yet".to_owned()),
    }
    if is_unschedulable(node) {
        return not_yet("unschedulable (cordoned)".to_owned());
    }
    let startup = node
        .spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .and_then(|taints| {
            taints
                .iter()
                .find(|taint| STARTUP_TAINTS.contains(&taint.key.as_str()))
        });
    if let Some(taint) = startup {
        return not_yet(format!("tainted {}", taint.key));
    }
    NodeReadiness::Ready { node: name }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn node(instance: &str, ready: Option<&str>, cordoned: bool, taint: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(format!("node-{instance}")),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                provider_id: Some(format!("aws:///us-east-1a/{instance}")),
                unschedulable: cordoned.then_some(true),
                taints: taint.map(|key| {
                    vec![Taint {
                        key: key.to_owned(),
                        effect: "NoSchedule".to_owned(),
                        ..Taint::default()
                    }]
                }),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                conditions: ready.map(|status| {
                    vec![NodeCondition {
                        type_: "Ready".to_owned(),
                        status: status.to_owned(),
                        ..NodeCondition::default()
                    }]
                }),
                ..NodeStatus::default()
            }),
        }
    }

    #[test]
    fn a_replacement_counts_only_once_its_node_can_take_pods() {
        let ready = |n: &str| NodeReadiness::Ready { node: n.to_owned() };
        let cases = [
            ("no node yet", vec![], NodeReadiness::Missing),
            (
                "another instance's node",
                vec![node("i-0other", Some("True"), false, None)],
                NodeReadiness::Missing,
            ),
            (
                "registered, NotReady",
                vec![node("i-0new", Some("False"), false, None)],
                NodeReadiness::NotYet {
                    node: "node-i-0new".into(),
                    why: "Ready=False".into(),
                },
            ),
            (
                "registered without conditions",
                vec![node("i-0new", None, false, None)],
                NodeReadiness::NotYet {
                    node: "node-i-0new".into(),
                    why: "no Ready condition yet".into(),
                },
            ),
            (
                "Ready but cordoned",
                vec![node("i-0new", Some("True"), true, None)],
                NodeReadiness::NotYet {
                    node: "node-i-0new".into(),
                    why: "unschedulable (cordoned)".into(),
                },
            ),
            (
                "Ready but the cloud provider has not initialized it",
                vec![node(
                    "i-0new",
                    Some("True"),
                    false,
                    Some("node.cloudprovider.kubernetes.io/uninitialized"),
                )],
                NodeReadiness::NotYet {
                    node: "node-i-0new".into(),
                    why: "tainted node.cloudprovider.kubernetes.io/uninitialized".into(),
                },
            ),
            (
                "Ready with a workload taint of its own",
                vec![node("i-0new", Some("True"), false, Some("dedicated"))],
                ready("node-i-0new"),
            ),
            (
                "Ready among others",
                vec![
                    node("i-0other", Some("False"), false, None),
                    node("i-0new", Some("True"), false, None),
                ],
                ready("node-i-0new"),
            ),
        ];
        for (name, nodes, expected) in cases {
            assert_eq!(readiness(&nodes, "i-0new"), expected, "case: {name}");
        }
    }

    #[test]
    fn provider_ids_name_aws_instances_only() {
        assert_eq!(
            instance_id_of_provider_id("aws:///us-east-1a/i-0abc"),
            Some("i-0abc".to_owned())
        );
        assert_eq!(instance_id_of_provider_id("gce://p/z/n"), None);
        assert_eq!(
            instance_id_of_provider_id("aws:///us-east-1a/fargate-ip-1"),
            None
        );
    }
}
