//! charts/spot-guard rendered and linted by real Helm: every object is valid Kubernetes
//! (no unknown or misspelled field survives a round trip through k8s-openapi), the
//! schema refuses bad values, the DaemonSet's env vars are flags the binary accepts, and
//! the ClusterRole grants exactly the API calls the code makes — no more, no less.

#[path = "support/helm.rs"]
mod helm;

use helm::{kind, only, round_trip};

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::CommandFactory;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_json::Value;
use spot_guard::config::ScaleBackSettings;
use spot_guard::sim::fleet::{FleetSpec, FleetWorld, SPOT_ASG, node_name};
use spot_guard::sim::harness::eventually;
use spot_guard::sim::kube::{FakePod, RequestRecord};
use tokio::runtime::Handle;

const SPOT_GUARD_VALUES: &str = r#"
enableRebalanceMonitoring: true
enableRebalanceDraining: true
taintEffect: PreferNoSchedule
spotGuard:
  enabled: true
  spotAsgName: eks-spot-workers
  onDemandAsgName: eks-on-demand-workers
  capacityCheckTimeout: 300
  checkInterval: 5
awsRegion: eu-west-1
serviceAccount:
  annotations:
    eks.amazonaws.com/role-arn: arn:aws:iam::111122223333:role/spot-guard
nodeSelector:
  karpenter.sh/capacity-type: spot
"#;

/// Every option the chart can set, switched on, so each env line of the template renders.
const EVERYTHING_VALUES: &str = r#"
emitKubernetesEvents: true
kubernetesEventsExtraAnnotations: team=platform
webhookURL: https://hooks.example.com/spot
webhookHeaders: '{"Content-Type": "application/json"}'
webhookProxy: http://proxy.example.com:3128
webhookTemplateConfigMapName: spot-guard-webhook
webhookTemplateConfigMapKey: template.tmpl
enablePrometheusServer: true
enableProbesServer: true
podMonitor: {create: true}
serviceMonitor: {create: true, labels: {release: prometheus}}
dryRun: true
cordonOnly: true
taintNode: true
enableOutOfServiceTaint: true
excludeFromLoadBalancers: true
jsonLogging: true
logLevel: debug
instanceMetadataURL: http://127.0.0.1:1338
awsEndpoint: http://127.0.0.1:5000
awsRegion: us-east-1
enableRebalanceMonitoring: true
spotGuard:
  enabled: true
  spotAsgName: spot
  onDemandAsgName: on-demand
  scaleBack:
    enabled: true
    minWait: 900
"#;

/// Env vars the chart sets that are not options of the binary: the AWS SDK's default
/// chain reads them.
const NOT_FLAGS: [&str; 2] = ["AWS_REGION", "AWS_ENDPOINT_URL"];

fn render(values: &str) -> Vec<Value> {
    helm::template(values).unwrap_or_else(|refusal| panic!("Helm refused {values}: {refusal}"))
}

/// Every rendered object must be of a kind this test knows and survive the round trip.
fn validate_all(objects: &[Value]) {
    for object in objects {
        match kind(object) {
            "DaemonSet" => drop(round_trip::<DaemonSet>(object)),
            "ServiceAccount" => drop(round_trip::<ServiceAccount>(object)),
            "ClusterRole" => drop(round_trip::<ClusterRole>(object)),
            "ClusterRoleBinding" => drop(round_trip::<ClusterRoleBinding>(object)),
            "Role" => drop(round_trip::<Role>(object)),
            "RoleBinding" => drop(round_trip::<RoleBinding>(object)),
            "Service" => drop(round_trip::<Service>(object)),
            "ValidatingAdmissionPolicy" => drop(round_trip::<ValidatingAdmissionPolicy>(object)),
            "ValidatingAdmissionPolicyBinding" => {
                drop(round_trip::<ValidatingAdmissionPolicyBinding>(object))
            }
            // Prometheus Operator kinds have no k8s-openapi type: checked by hand below.
            "PodMonitor" | "ServiceMonitor" => {}
            other => panic!("the chart rendered a {other}, which this test does not validate yet"),
        }
    }
}

fn container(objects: &[Value]) -> Container {
    let daemon_set: DaemonSet = round_trip(only(objects, "DaemonSet"));
    let pod = daemon_set
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    assert_eq!(pod.containers.len(), 1);
    pod.containers.into_iter().next().expect("a container")
}

fn env(container: &Container) -> BTreeMap<String, Option<String>> {
    container
        .env
        .iter()
        .flatten()
        .map(|var| (var.name.clone(), var.value.clone()))
        .collect()
}

#[test]
fn default_values_render_a_hardened_daemonset_for_spot_nodes() {
    let objects = render("");
    let kinds: BTreeSet<&str> = objects.iter().map(kind).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ])
    );
    validate_all(&objects);
    helm::lint("").unwrap_or_else(|report| panic!("lint failed:\n{report}"));

    let daemon_set: DaemonSet = round_trip(only(&objects, "DaemonSet"));
    let pod = daemon_set
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    let selector = pod.node_selector.clone().unwrap_or_default();
    assert_eq!(
        selector
            .get("eks.amazonaws.com/capacityType")
            .map(String::as_str),
        Some("SPOT")
    );
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "the agent must tolerate every taint, including its own: {tolerations:?}"
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );

    let container = container(&objects);
    assert_eq!(
        env(&container).get("ENABLE_SPOT_GUARD"),
        Some(&Some("false".to_owned()))
    );
    let node_name = container
        .env
        .iter()
        .flatten()
        .find(|var| var.name == "NODE_NAME")
        .and_then(|var| var.value_from.as_ref())
        .and_then(|from| from.field_ref.as_ref())
        .map(|field| field.field_path.clone());
    assert_eq!(node_name.as_deref(), Some("spec.nodeName"));
    let security = container.security_context.expect("securityContext");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    let resources = container.resources.expect("resources");
    assert!(
        resources
            .requests
            .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory"))
    );
    assert!(resources.limits.is_some_and(|l| l.contains_key("memory")));
}

#[test]
fn spot_guard_values_reach_the_agent_as_its_env_vars() {
    let objects = render(SPOT_GUARD_VALUES);
    validate_all(&objects);
    helm::lint(SPOT_GUARD_VALUES).unwrap_or_else(|report| panic!("lint failed:\n{report}"));

    let env = env(&container(&objects));
    for (name, value) in [
        ("ENABLE_SPOT_GUARD", "true"),
        ("SPOT_ASG_NAME", "eks-spot-workers"),
        ("ON_DEMAND_ASG_NAME", "eks-on-demand-workers"),
        ("SPOT_GUARD_CAPACITY_CHECK_TIMEOUT", "300"),
        ("SPOT_GUARD_CHECK_INTERVAL", "5"),
        ("SPOT_GUARD_SCALE_TIMEOUT", "120"),
        ("ENABLE_REBALANCE_MONITORING", "true"),
        ("ENABLE_REBALANCE_DRAINING", "true"),
        ("TAINT_EFFECT", "PreferNoSchedule"),
        ("AWS_REGION", "eu-west-1"),
    ] {
        assert_eq!(
            env.get(name),
            Some(&Some(value.to_owned())),
            "{name} in {env:?}"
        );
    }

    let account: ServiceAccount = round_trip(only(&objects, "ServiceAccount"));
    let annotations = account.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get("eks.amazonaws.com/role-arn")
            .map(String::as_str),
        Some("arn:aws:iam::111122223333:role/spot-guard")
    );
    // A user's nodeSelector replaces the EKS default instead of being ANDed with it.
    let daemon_set: DaemonSet = round_trip(only(&objects, "DaemonSet"));
    let selector = daemon_set
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.node_selector)
        .unwrap_or_default();
    assert_eq!(
        selector,
        BTreeMap::from([
            ("karpenter.sh/capacity-type".to_owned(), "spot".to_owned()),
            ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ])
    );
}

/// Whether a `matchLabels` selector is non-empty and matches `labels`.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let wanted = selector["matchLabels"].as_object().expect("matchLabels");
    !wanted.is_empty()
        && wanted
            .iter()
            .all(|(key, value)| labels.get(key).map(String::as_str) == value.as_str())
}

#[test]
fn monitors_scrape_the_agent_pods_metrics_port() {
    let objects = render(EVERYTHING_VALUES);
    validate_all(&objects);
    helm::lint(EVERYTHING_VALUES).unwrap_or_else(|report| panic!("lint failed:\n{report}"));

    let daemon_set: DaemonSet = round_trip(only(&objects, "DaemonSet"));
    let template = daemon_set.spec.expect("spec").template;
    let pod_labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
    let selects_agent = |selector: &Value| selects(selector, &pod_labels);
    let container = template.spec.expect("pod spec").containers.remove(0);
    let ports = container.ports.unwrap_or_default();
    let metrics = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("http-metrics"))
        .expect("a named metrics port");
    assert_eq!(metrics.container_port, 9092);
    let probe = container.liveness_probe.expect("a liveness probe");
    assert_eq!(
        probe.http_get.map(|h| h.path),
        Some(Some("/healthz".to_owned()))
    );

    let pod_monitor = only(&objects, "PodMonitor");
    assert_eq!(pod_monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert!(
        selects_agent(&pod_monitor["spec"]["selector"]),
        "{pod_monitor:#}"
    );
    assert_eq!(
        pod_monitor["spec"]["podMetricsEndpoints"][0]["port"],
        "http-metrics"
    );

    let service: Service = round_trip(only(&objects, "Service"));
    let spec = service.spec.expect("service spec");
    let selector = serde_json::json!({ "matchLabels": spec.selector.unwrap_or_default() });
    assert!(
        selects_agent(&selector),
        "the metrics Service does not select the agent pods"
    );
    assert_eq!(
        spec.cluster_ip.as_deref(),
        Some("None"),
        "headless: one endpoint per pod"
    );
    let service_monitor = only(&objects, "ServiceMonitor");
    assert_eq!(
        service_monitor["metadata"]["labels"]["release"],
        "prometheus"
    );
    let service_labels = service.metadata.labels.unwrap_or_default();
    assert!(selects(
        &service_monitor["spec"]["selector"],
        &service_labels
    ));
    assert_eq!(
        service_monitor["spec"]["endpoints"][0]["port"],
        "http-metrics"
    );
}

#[test]
fn bad_values_are_refused_at_install_time() {
    for (values, named) in [
        (
            "spotGuard: {enabled: true}\nenableRebalanceMonitoring: true",
            "/spotGuard/spotAsgName",
        ),
        (
            "spotGuard: {enabled: true, spotAsgName: spot}\nenableRebalanceMonitoring: true",
            "/spotGuard/onDemandAsgName",
        ),
        (
            "spotGuard: {enabled: true, spotAsgName: spot, onDemandAsgName: od}",
            "/enableRebalanceMonitoring",
        ),
        ("dryRun: \"yes\"", "/dryRun"),
        ("taintEffect: Sometimes", "/taintEffect"),
        (
            "nodeTerminationGracePeriod: 0",
            "/nodeTerminationGracePeriod",
        ),
        ("spotguard: {enabled: true}", "spotguard"),
    ] {
        match helm::template(values) {
            Ok(_) => panic!("Helm accepted bad values:\n{values}"),
            Err(refusal) => assert!(refusal.contains(named), "{named} not named in: {refusal}"),
        }
        assert!(
            helm::lint(values).is_err(),
            "lint passed bad values:\n{values}"
        );
    }
    // NTH starts its rebalance monitor for the draining flag alone, and so does the agent.
    let draining_alone = "spotGuard: {enabled: true, spotAsgName: spot, onDemandAsgName: od}\nenableRebalanceDraining: true";
    if let Err(refusal) = helm::template(draining_alone) {
        panic!("Spot Guard with enableRebalanceDraining alone refused: {refusal}");
    }
}

#[test]
fn daemonset_env_vars_are_options_the_binary_accepts() {
    let flags: BTreeSet<String> = spot_guard::config::Cli::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .filter_map(|name| name.to_str())
        .map(str::to_owned)
        .collect();
    assert!(
        flags.contains("NODE_NAME"),
        "clap lists no env names: {flags:?}"
    );
    for values in ["", SPOT_GUARD_VALUES, EVERYTHING_VALUES] {
        let objects = render(values);
        validate_all(&objects);
        for name in env(&container(&objects)).keys() {
            assert!(
                flags.contains(name) || NOT_FLAGS.contains(&name.as_str()),
                "the chart sets {name}, which spot-guard does not read (options: {flags:?})"
            );
        }
    }
}

/// What RBAC checks for one request: (apiGroup, resource[/subresource], verb).
fn rbac_attributes(request: &RequestRecord) -> (String, String, String) {
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    // /api/v1/... is the core group; /apis/{group}/{version}/... the others.
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => panic!("not a Kubernetes API path: {}", request.path),
    };
    let rest = match rest {
        ["namespaces", _namespace, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, subresource] => (format!("{resource}/{subresource}"), true),
        _ => panic!("unexpected path shape: {}", request.path),
    };
    let watching = request
        .query
        .as_deref()
        .is_some_and(|q| q.contains("watch=true"));
    let verb = match (request.method.as_str(), named) {
        ("GET", _) if watching => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (method, _) => panic!("unexpected method {method} on {}", request.path),
    };
    (group, resource, verb.to_owned())
}

/// The Kubernetes requests the agent makes in its behaviours, recorded by the fake API
/// server while they run on the production path (agents started by `run::start`), not
/// a list written here: node 0 gets a rebalance recommendation while spot capacity is
/// short, so its agent takes the ASG Leases, buys an on-demand fallback, waits for the
/// fallback's Node to be Ready, taints, cordons and drains (a PodDisruptionBudget
/// refusal, an emptyDir pod), with `events` writing
/// Kubernetes events; with `scale_back` the fallback's own agent protects its node from
/// Cluster Autoscaler, then gives it back once spot capacity returns.
async fn requests_of_every_flow(events: bool, scale_back: bool) -> Vec<RequestRecord> {
    spot_guard::tls::ensure_crypto_provider();
    let mut spec = FleetSpec::new(1);
    spec.reports = events;
    spec.new_node_protection = Duration::from_secs(60);
    spec.scale_back = scale_back.then(|| ScaleBackSettings {
        min_wait: Duration::from_secs(1),
        stability_period: Duration::from_secs(1),
        utilization_ceiling: 75,
        check_interval: Duration::from_millis(200),
    });
    let world = FleetWorld::start(spec).await.expect("simulators start");
    let node = node_name(0);
    world
        .kube
        .add_pod(FakePod::new("default", "web-1", &node).with_label("app", "web"));
    world
        .kube
        .add_pod(FakePod::new("default", "cache-1", &node).with_empty_dir());
    // Refuses the first eviction of web-1, then lets it go.
    world.kube.add_pdb("default", "web", &[("app", "web")], 0);
    let relax = async {
        eventually("a PDB refusal", Duration::from_secs(30), || {
            world
                .kube
                .requests()
                .iter()
                .any(|r| r.path.ends_with("/eviction") && r.status == 429)
        })
        .await;
        world.kube.set_pdb_max_unavailable("default", "web", 1);
    };
    let (bought, ()) = tokio::join!(world.buy_fallback(), relax);
    let (fallback_node, fallback) = bought.expect("node 0 buys an on-demand fallback");
    if scale_back {
        let agent = world
            .start_agent_on(
                &fallback_node,
                Some(fallback.clone()),
                world.aws(),
                &Handle::current(),
            )
            .await
            .expect("the fallback's agent starts");
        world.asg.restore_capacity(SPOT_ASG).expect("spot group");
        eventually(
            "the fallback is given back",
            Duration::from_secs(60),
            || {
                world
                    .asg
                    .calls_of("TerminateInstanceInAutoScalingGroup")
                    .iter()
                    .any(|call| call.param("InstanceId") == Some(fallback.as_str()))
            },
        )
        .await;
        agent.stop().await;
    }
    world.kube.requests()
}

/// The (apiGroup, resource, verb) triples a role's rules grant.
fn granted(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut grants = BTreeSet::new();
    for rule in rules {
        // resourceNames narrow a rule further (tests/hardening_chart.rs checks them).
        assert!(rule.non_resource_urls.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "wildcard in {rule:?}"
                    );
                    grants.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    grants
}

async fn assert_role_matches_code(
    values: &'static str,
    events: bool,
    leases: bool,
    scale_back: bool,
) {
    let used: BTreeSet<(String, String, String)> = requests_of_every_flow(events, scale_back)
        .await
        .iter()
        .map(rbac_attributes)
        .collect();
    let objects = tokio::task::spawn_blocking(move || render(values))
        .await
        .expect("render");
    let role: ClusterRole = round_trip(only(&objects, "ClusterRole"));
    let mut grants = granted(role.rules.as_deref().unwrap_or_default());
    let lease_roles: Vec<&Value> = objects.iter().filter(|o| kind(o) == "Role").collect();
    assert_eq!(
        lease_roles.len(),
        usize::from(leases) + usize::from(events),
        "a lease Role exactly with Spot Guard, an events Role exactly with events"
    );
    for object in lease_roles {
        let lease_role: Role = round_trip(object);
        let name = lease_role.metadata.name.clone().unwrap_or_default();
        let bound = objects
            .iter()
            .filter(|o| kind(o) == "RoleBinding")
            .any(|o| {
                let binding: RoleBinding = round_trip(o);
                binding.role_ref.name == name
            });
        assert!(bound, "no RoleBinding for Role {name}");
        grants.extend(granted(lease_role.rules.as_deref().unwrap_or_default()));
    }

    let missing: Vec<_> = used.difference(&grants).collect();
    assert!(
        missing.is_empty(),
        "the code calls {missing:?}, which the ClusterRole does not grant (values: {values})"
    );
    let unused: Vec<_> = grants.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "the ClusterRole grants {unused:?}, which the code never calls (values: {values})"
    );

    let binding: ClusterRoleBinding = round_trip(only(&objects, "ClusterRoleBinding"));
    let account: ServiceAccount = round_trip(only(&objects, "ServiceAccount"));
    assert_eq!(
        binding.role_ref.name,
        role.metadata.name.clone().unwrap_or_default()
    );
    let subject = &binding.subjects.unwrap_or_default()[0];
    assert_eq!(Some(&subject.name), account.metadata.name.as_ref());
    assert_eq!(subject.namespace, account.metadata.namespace);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_role_grants_exactly_the_calls_the_code_makes() {
    assert_role_matches_code(SPOT_GUARD_VALUES, false, true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_role_with_events_grants_exactly_the_calls_the_code_makes() {
    assert_role_matches_code(EVERYTHING_VALUES, true, true, true).await;
}
