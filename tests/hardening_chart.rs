//! The chart's least-privilege and liveness settings, rendered by real Helm: Lease rights
//! only on the agent's own Leases (named as src/names.rs names them), events only in
//! their namespace, secrets from Secrets, a liveness probe by default, a termination
//! grace period that covers a drain SIGTERM interrupts, and refusals of values that
//! would break the agent.

#[path = "support/helm.rs"]
mod helm;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use serde_json::Value;
use spot_guard::names::{SCALE_BACK_LEASE, asg_lease};
use spot_guard::report::NODE_EVENTS_NAMESPACE;

const SPOT_GUARD: &str = r#"
enableRebalanceMonitoring: true
emitKubernetesEvents: true
webhookURLSecretName: hooks
webhookHeadersSecretName: hooks
webhookProxySecretName: hooks
spotGuard:
  enabled: true
  spotAsgName: "Team_A Spot.Workers-"
  onDemandAsgName: eks-on-demand
  scaleBack:
    enabled: true
"#;

fn render(values: &str) -> Vec<Value> {
    helm::template(values).unwrap_or_else(|refusal| panic!("Helm refused {values}: {refusal}"))
}

fn objects_of<T: serde::de::DeserializeOwned>(objects: &[Value], kind: &str) -> Vec<T> {
    objects
        .iter()
        .filter(|o| o["kind"] == kind)
        .map(|o| serde_json::from_value(o.clone()).expect("valid object"))
        .collect()
}

fn pod(objects: &[Value]) -> PodSpec {
    let daemon_set: DaemonSet = objects_of(objects, "DaemonSet").remove(0);
    daemon_set.spec.unwrap().template.spec.unwrap()
}

fn container(objects: &[Value]) -> Container {
    pod(objects).containers.remove(0)
}

#[test]
fn lease_rights_are_limited_to_the_agents_own_leases() {
    helm::lint(SPOT_GUARD).unwrap_or_else(|report| panic!("lint failed:\n{report}"));
    let objects = render(SPOT_GUARD);
    let role = objects_of::<Role>(&objects, "Role")
        .into_iter()
        .find(|r| r.metadata.name.as_deref() == Some("spot-guard-leases"))
        .expect("the Lease Role");
    let rules = role.rules.unwrap_or_default();
    for rule in &rules {
        let named = rule.resource_names.clone().unwrap_or_default();
        if rule
            .verbs
            .iter()
            .any(|v| v == "get" || v == "update" || v == "patch")
        {
            assert_eq!(
                named,
                [
                    asg_lease("Team_A Spot.Workers-"),
                    asg_lease("eks-on-demand"),
                    SCALE_BACK_LEASE.to_owned()
                ],
                "{rule:?}"
            );
        } else {
            // RBAC cannot limit create by name.
            assert_eq!(rule.verbs, ["create"], "{rule:?}");
        }
    }
    assert!(rules.iter().any(|r| r.verbs.contains(&"update".to_owned())));
}

#[test]
fn events_are_granted_in_their_namespace_only() {
    let objects = render(SPOT_GUARD);
    let cluster_role: ClusterRole = objects_of(&objects, "ClusterRole").remove(0);
    assert!(
        !cluster_role.rules.unwrap_or_default().iter().any(|r| r
            .resources
            .iter()
            .flatten()
            .any(|res| res == "events")),
        "events in the ClusterRole"
    );
    let role = objects_of::<Role>(&objects, "Role")
        .into_iter()
        .find(|r| {
            r.rules
                .iter()
                .flatten()
                .any(|rule| rule.resources.iter().flatten().any(|res| res == "events"))
        })
        .expect("an events Role");
    assert_eq!(
        role.metadata.namespace.as_deref(),
        Some(NODE_EVENTS_NAMESPACE)
    );
}

#[test]
fn webhook_credentials_come_from_secrets() {
    let env = container(&render(SPOT_GUARD)).env.unwrap_or_default();
    for (name, key) in [
        ("WEBHOOK_URL", "webhookurl"),
        ("WEBHOOK_HEADERS", "webhookheaders"),
        ("WEBHOOK_PROXY", "webhookproxy"),
    ] {
        let var = env.iter().find(|v| v.name == name).expect(name);
        assert!(var.value.is_none(), "{name} in clear");
        let secret = var
            .value_from
            .as_ref()
            .and_then(|from| from.secret_key_ref.as_ref())
            .expect("a Secret reference");
        assert_eq!((secret.name.as_str(), secret.key.as_str()), ("hooks", key));
    }
}

#[test]
fn liveness_is_probed_by_default() {
    let container = container(&render(""));
    let probe = container.liveness_probe.expect("a liveness probe");
    let env = container.env.unwrap_or_default();
    let served = |name: &str| {
        env.iter()
            .find(|v| v.name == name)
            .and_then(|v| v.value.clone())
    };
    assert_eq!(served("ENABLE_PROBES_SERVER").as_deref(), Some("true"));
    let get = probe.http_get.expect("an HTTP probe");
    assert_eq!(
        Some(get.path.unwrap_or_default()),
        served("PROBES_SERVER_ENDPOINT")
    );
}

#[test]
fn the_termination_grace_period_covers_a_drain_interrupted_by_sigterm() {
    // The agent goes on draining for NODE_TERMINATION_GRACE_PERIOD after SIGTERM, then
    // gives queued reports 5 s.
    for (values, drain) in [("", 120), ("nodeTerminationGracePeriod: 300\n", 300)] {
        let objects = render(values);
        let grace = pod(&objects).termination_grace_period_seconds.expect("set");
        assert!(grace > drain + 5, "{values:?}: {grace} s");
    }
    let grace =
        pod(&render("terminationGracePeriodSeconds: 45\n")).termination_grace_period_seconds;
    assert_eq!(grace, Some(45), "an explicit value is kept");
}

#[test]
fn values_that_would_break_the_agent_are_refused() {
    for (values, reason) in [
        (
            "updateStrategy:\n  type: RollingUpdate\n  rollingUpdate:\n    maxSurge: 1\n",
            "rollingUpdate",
        ),
        ("metadataTries: 6\n", "metadataTries"),
    ] {
        let refusal = helm::template(values).expect_err(values);
        assert!(refusal.contains(reason), "{values}: {refusal}");
    }
}

#[test]
fn iam_policies_take_the_partition_as_a_parameter() {
    for file in ["docs/iam-policy.json", "docs/iam-policy-terminate.json"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let policy: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let arns: Vec<String> = policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| match &s["Resource"] {
                Value::Array(list) => list.clone(),
                other => vec![other.clone()],
            })
            .filter_map(|r| r.as_str().map(str::to_owned))
            .filter(|r| r != "*")
            .collect();
        assert!(!arns.is_empty(), "{file}");
        for arn in arns {
            // aws, aws-cn and aws-us-gov: never hard-coded.
            assert!(arn.starts_with("arn:PARTITION:"), "{file}: {arn}");
        }
    }
}
