//! An NTH user switches by changing the image: NTH's whole chart values file (every key,
//! NTH's defaults, tests/fixtures/nth-values.yaml) with a typical user's overrides and
//! the spotGuard block installs with real Helm, lints strictly, and the DaemonSet carries
//! the user's settings; keys only NTH's other modes read are accepted and named in the
//! release notes; keys that are nobody's are refused. The Go Spot Guard fork's spotGuard
//! block installs too. docs/MIGRATING-FROM-NTH.md's tables are checked row by row.

#[path = "support/helm.rs"]
mod helm;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use clap::CommandFactory;
use helm::{only, round_trip};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::{Value, json};

const NTH_VALUES: &str = "tests/fixtures/nth-values.yaml";
const NTH_OVERRIDES: &str = "tests/fixtures/nth-overrides.yaml";
const NTH_SPOT_GUARD: &str = "tests/fixtures/nth-spot-guard.yaml";
const FORK_SPOT_GUARD: &str = "tests/fixtures/nth-fork-spot-guard.yaml";
const CHART_VALUES: &str = "charts/spot-guard/values.yaml";
const MIGRATING: &str = "docs/MIGRATING-FROM-NTH.md";

/// The heading of the release notes' list of NTH values with no effect.
const IGNORED_HEADING: &str = "that you set and that have no effect here";

fn render(files: &[&str], values: &str) -> Vec<Value> {
    helm::template_with(files, values)
        .unwrap_or_else(|refusal| panic!("Helm refused {files:?} + {values}: {refusal}"))
}

fn notes(files: &[&str], values: &str) -> String {
    helm::notes_with(files, values)
        .unwrap_or_else(|refusal| panic!("Helm refused {files:?} + {values}: {refusal}"))
}

fn pod(objects: &[Value]) -> PodSpec {
    let daemon_set: DaemonSet = round_trip(only(objects, "DaemonSet"));
    daemon_set
        .spec
        .and_then(|spec| spec.template.spec)
        .expect("a pod spec")
}

fn container(pod: &PodSpec) -> &Container {
    assert_eq!(pod.containers.len(), 1, "one container");
    &pod.containers[0]
}

fn env_values(container: &Container) -> BTreeMap<String, Option<String>> {
    container
        .env
        .iter()
        .flatten()
        .map(|var| (var.name.clone(), var.value.clone()))
        .collect()
}

fn string_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The release notes' lines naming ignored values, without the list's bullet.
fn ignored_lines(notes: &str) -> Vec<String> {
    notes
        .split_once(IGNORED_HEADING)
        .map(|(_, rest)| {
            rest.lines()
                .skip(1)
                .take_while(|line| line.starts_with("  - "))
                .map(|line| line.trim_start_matches("  - ").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_nth_values_file_with_overrides_and_spot_guard_installs_with_its_settings() {
    let files = [NTH_VALUES, NTH_OVERRIDES, NTH_SPOT_GUARD];
    helm::lint_with(&files, "").unwrap_or_else(|report| panic!("lint failed:\n{report}"));
    let objects = render(&files, "");
    let pod = pod(&objects);

    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("node-agents-critical")
    );
    let secrets: Vec<String> = pod
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|secret| secret.name.clone())
        .collect();
    assert_eq!(secrets, ["ecr-pull"]);
    // linuxNodeSelector and linuxTolerations win over every other selector, as in NTH.
    assert_eq!(
        pod.node_selector.clone().unwrap_or_default(),
        string_map(&[
            ("karpenter.sh/capacity-type", "spot"),
            ("kubernetes.io/os", "linux")
        ])
    );
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert_eq!(tolerations.len(), 1, "{tolerations:?}");
    assert_eq!(tolerations[0].key.as_deref(), Some("dedicated"));
    assert_eq!(tolerations[0].value.as_deref(), Some("batch"));

    let daemon_set: DaemonSet = round_trip(only(&objects, "DaemonSet"));
    let labels = daemon_set
        .spec
        .and_then(|spec| spec.template.metadata)
        .and_then(|meta| meta.labels)
        .unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("platform"));
    assert_eq!(labels.get("tier").map(String::as_str), Some("node-agents"));

    let container = container(&pod);
    assert_eq!(
        container.image.as_deref(),
        Some("111122223333.dkr.ecr.eu-west-1.amazonaws.com/spot-guard:0.1.0")
    );
    let resources = container.resources.clone().expect("resources");
    let quantity = |map: &Option<BTreeMap<String, _>>, name: &str| {
        map.as_ref()
            .and_then(|m| m.get(name))
            .map(|q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| q.0.clone())
    };
    assert_eq!(quantity(&resources.requests, "cpu").as_deref(), Some("50m"));
    assert_eq!(
        quantity(&resources.requests, "memory").as_deref(),
        Some("64Mi")
    );
    assert_eq!(
        quantity(&resources.limits, "memory").as_deref(),
        Some("128Mi")
    );

    let webhook = container
        .env
        .iter()
        .flatten()
        .find(|var| var.name == "WEBHOOK_URL")
        .expect("WEBHOOK_URL");
    let secret = webhook
        .value_from
        .as_ref()
        .and_then(|from| from.secret_key_ref.as_ref())
        .expect("WEBHOOK_URL from a Secret");
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("nth-webhook", "webhookurl")
    );
    assert_eq!(
        webhook.value, None,
        "the URL itself is not in the DaemonSet"
    );

    let env = env_values(container);
    for (name, value) in [
        ("ENABLE_REBALANCE_MONITORING", "true"),
        ("ENABLE_REBALANCE_DRAINING", "true"),
        ("TAINT_NODE", "true"),
        ("EMIT_KUBERNETES_EVENTS", "true"),
        ("ENABLE_SPOT_GUARD", "true"),
        ("SPOT_ASG_NAME", "eks-spot-workers"),
        ("ON_DEMAND_ASG_NAME", "eks-on-demand-workers"),
        ("JSON_LOGGING", "true"),
        ("LOG_FORMAT_VERSION", "2"),
        ("WEBHOOK_TEMPLATE_FILE", "/config/slack.tmpl"),
        ("UPTIME_FROM_FILE", "/proc/uptime"),
        ("ENABLE_PROMETHEUS_SERVER", "true"),
        ("ENABLE_PROBES_SERVER", "true"),
        ("AWS_REGION", "eu-west-1"),
        ("HTTPS_PROXY", "http://proxy.internal:3128"),
        ("NO_PROXY", "169.254.169.254,.svc,.cluster.local"),
    ] {
        assert_eq!(
            env.get(name),
            Some(&Some(value.to_owned())),
            "{name} in {env:?}"
        );
    }
    // Every other env var is an option of the binary (a name the agent does not read
    // would be a setting silently lost).
    let flags: BTreeSet<String> = spot_guard::config::Cli::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .filter_map(|name| name.to_str().map(str::to_owned))
        .collect();
    let not_flags = ["AWS_REGION", "AWS_ENDPOINT_URL", "HTTPS_PROXY", "NO_PROXY"];
    for name in env.keys() {
        assert!(
            flags.contains(name) || not_flags.contains(&name.as_str()),
            "the chart sets {name}, which spot-guard does not read"
        );
    }

    // procUptimeFile is mounted from the host as NTH does; the webhook template too.
    let mounts: BTreeMap<String, (String, Option<bool>)> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), (m.mount_path.clone(), m.read_only)))
        .collect();
    assert_eq!(
        mounts.get("uptime"),
        Some(&("/proc/uptime".to_owned(), Some(true)))
    );
    assert_eq!(
        mounts.get("webhook-template").map(|m| m.0.as_str()),
        Some("/config/")
    );
    let volumes = pod.volumes.clone().unwrap_or_default();
    let uptime = volumes.iter().find(|v| v.name == "uptime").expect("uptime");
    assert_eq!(
        uptime.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/proc/uptime")
    );
    let template = volumes
        .iter()
        .find(|v| v.name == "webhook-template")
        .expect("webhook-template");
    assert_eq!(
        template.config_map.as_ref().map(|c| c.name.as_str()),
        Some("nth-webhook-template")
    );

    let monitor = only(&objects, "PodMonitor");
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );

    // The three queue-processor values the user set are named, and only those.
    assert_eq!(
        ignored_lines(&notes(&files, "")),
        [
            "checkTagBeforeDraining, priorityClassName, workers: queue-processor mode only (this chart runs IMDS mode)"
        ]
    );
}

#[test]
fn nth_defaults_alone_keep_this_charts_spot_selector_and_name_nothing_ignored() {
    let objects = render(&[NTH_VALUES], "");
    let pod = pod(&objects);
    // Helm merges NTH's empty maps with this chart's defaults.
    assert_eq!(
        pod.node_selector.clone().unwrap_or_default(),
        string_map(&[
            ("eks.amazonaws.com/capacityType", "SPOT"),
            ("kubernetes.io/os", "linux")
        ])
    );
    let container = container(&pod);
    let requests = container
        .resources
        .clone()
        .and_then(|r| r.requests)
        .unwrap_or_default();
    assert_eq!(requests.get("memory").map(|q| q.0.as_str()), Some("32Mi"));
    // NTH's own securityContext wins where it sets something.
    let security = container.security_context.clone().expect("securityContext");
    assert_eq!(security.run_as_user, Some(1000));
    assert_eq!(
        security.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    let notes = notes(&[NTH_VALUES], "");
    assert!(!notes.contains(IGNORED_HEADING), "{notes}");
    assert!(notes.contains("(IMDS mode, Linux nodes)"), "{notes}");
}

#[test]
fn keys_that_are_nobodys_are_refused_and_queue_mode_fails_the_install() {
    for (values, named) in [
        ("workerz: 3", "workerz"),
        ("rbac: {pspEnable: true}", "pspEnable"),
        ("spotGuard: {spotAsgname: spot}", "spotAsgname"),
        ("windowsTolerations: [operator]", "/windowsTolerations/0"),
        ("image: {pullSecrets: [regcred]}", "/image/pullSecrets/0"),
    ] {
        match helm::template_with(&[NTH_VALUES], values) {
            Ok(_) => panic!("Helm accepted {values}"),
            Err(refusal) => assert!(refusal.contains(named), "{named} not named in: {refusal}"),
        }
    }
    let refusal = helm::template_with(&[NTH_VALUES], "enableSqsTerminationDraining: true")
        .expect_err("queue-processor mode must fail the install");
    assert!(
        refusal.contains("this chart runs IMDS mode only"),
        "{refusal}"
    );
}

#[test]
fn windows_targets_are_said_plainly() {
    let both = "targetNodeOs: linux windows\nwindowsTolerations: [{operator: Exists}]";
    assert_eq!(
        render(&[NTH_VALUES], both)
            .iter()
            .filter(|o| helm::kind(o) == "DaemonSet")
            .count(),
        1
    );
    let text = notes(&[NTH_VALUES], both);
    assert!(
        text.contains("this agent is Linux-only, so nothing runs on Windows nodes"),
        "{text}"
    );
    assert_eq!(
        ignored_lines(&text),
        ["windowsTolerations: Windows nodes only (this agent is Linux-only)"]
    );

    let windows = "targetNodeOs: windows";
    let objects = render(&[NTH_VALUES], windows);
    assert!(
        objects.iter().all(|o| helm::kind(o) != "DaemonSet"),
        "no DaemonSet for Windows only"
    );
    let text = notes(&[NTH_VALUES], windows);
    assert!(
        text.contains("No DaemonSet was created: targetNodeOs is \"windows\", and this agent runs on Linux nodes only."),
        "{text}"
    );
}

#[test]
fn the_forks_spot_guard_block_installs_with_this_charts_meanings() {
    let files = [NTH_VALUES, FORK_SPOT_GUARD];
    helm::lint_with(&files, "").unwrap_or_else(|report| panic!("lint failed:\n{report}"));
    let env = env_values(container(&pod(&render(&files, ""))));
    for (name, value) in [
        ("ENABLE_SPOT_GUARD", Some("true")),
        ("SPOT_ASG_NAME", Some("eks-spot-workers")),
        ("ON_DEMAND_ASG_NAME", Some("eks-on-demand-workers")),
        // Our meaning of the shared name: the InService check, every 30 s as written.
        ("SPOT_GUARD_CHECK_INTERVAL", Some("30")),
        ("SPOT_GUARD_SCALE_BACK", Some("false")),
    ] {
        assert_eq!(
            env.get(name).cloned().flatten().as_deref(),
            value,
            "{name} in {env:?}"
        );
    }
    assert!(!env.contains_key("SPOT_GUARD_SCALE_BACK_MIN_WAIT"));
    let text = notes(&files, "");
    for said in [
        "spotGuard.checkInterval (30 s) means here the seconds between two checks of a bought instance reaching InService",
        "that is spotGuard.scaleBack.checkInterval (30 s)",
        "does not give on-demand nodes back: that is spotGuard.scaleBack.enabled (off)",
        "spotGuard.spotASGName is the fork's name of spotGuard.spotAsgName",
        "spotGuard.enablePreScale is the fork's name of spotGuard.scaleBack.preScale.enabled",
        "spotGuard.preScaleRetryBackoff has no effect",
    ] {
        assert!(text.contains(said), "{said:?} not in:\n{text}");
    }

    // The fork's name wins while both are set (the notes ask to rename it).
    let both = "spotGuard: {spotAsgName: renamed-spot-workers}";
    let env = env_values(container(&pod(&render(&files, both))));
    assert_eq!(
        env.get("SPOT_ASG_NAME"),
        Some(&Some("eks-spot-workers".to_owned()))
    );

    let scale_back = "spotGuard: {scaleBack: {enabled: true}}";
    let env = env_values(container(&pod(&render(&files, scale_back))));
    assert_eq!(
        env.get("SPOT_GUARD_SCALE_BACK_MIN_WAIT"),
        Some(&Some("120".to_owned())),
        "the fork's minimumWaitDuration, not this chart's 600"
    );
    let text = notes(&files, scale_back);
    assert!(
        !text.contains("does not give on-demand nodes back"),
        "{text}"
    );
}

// --- docs/MIGRATING-FROM-NTH.md, row by row ---------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    /// NTH's chart: baseline tests/fixtures/nth-values.yaml.
    Nth,
    /// This chart's own values: baseline its defaults.
    Ours,
    /// The Go fork's spotGuard block: baseline tests/fixtures/nth-fork-spot-guard.yaml.
    Fork,
}

impl Source {
    fn files(self) -> &'static [&'static str] {
        match self {
            Source::Nth => &[NTH_VALUES],
            Source::Ours => &[],
            Source::Fork => &[FORK_SPOT_GUARD],
        }
    }
}

#[derive(Debug)]
struct Row {
    source: Source,
    key: String,
    here: String,
    default: String,
}

fn read_doc(path: &str) -> String {
    std::fs::read_to_string(helm::repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split(" | ")
        .map(|cell| cell.trim().to_owned())
        .collect()
}

/// The rows of the doc's value tables, by the table's header.
fn value_rows(doc: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut source = None;
    for line in doc.lines() {
        if !line.starts_with('|') {
            source = None;
            continue;
        }
        let cells = cells(line);
        match cells
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["NTH value", "here", "default"] => source = Some(Source::Nth),
            ["value", "here", "default"] => source = Some(Source::Ours),
            ["fork value", "here", "default"] => source = Some(Source::Fork),
            [first, ..] if first.starts_with("---") => {}
            [key, here, default] => {
                if let Some(source) = source {
                    rows.push(Row {
                        source,
                        key: key.trim_matches('`').to_owned(),
                        here: (*here).to_owned(),
                        default: (*default).to_owned(),
                    });
                }
            }
            _ => {}
        }
    }
    rows
}

/// The `code` spans of a cell.
fn spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// Where a row says its value lands.
#[derive(Debug)]
enum Claim {
    Env(String),
    Pod(String),
    Container(String),
    Object(String, String),
}

const KINDS: [&str; 6] = [
    "DaemonSet",
    "ServiceAccount",
    "ClusterRole",
    "Role",
    "PodMonitor",
    "ServiceMonitor",
];

fn claims(here: &str) -> Vec<Claim> {
    let mut claims = Vec::new();
    for span in spans(here) {
        let (first, rest) = span.split_once(' ').unwrap_or((span, ""));
        match first {
            "env" => claims.push(Claim::Env(rest.to_owned())),
            "pod" => claims.push(Claim::Pod(rest.to_owned())),
            "container" => claims.push(Claim::Container(rest.to_owned())),
            kind if kind.starts_with(char::is_uppercase) => {
                assert!(KINDS.contains(&kind), "unknown kind in `{span}`");
                claims.push(Claim::Object(kind.to_owned(), rest.to_owned()));
            }
            // Names of values, quoted values: not claims.
            _ => {}
        }
    }
    claims
}

fn at(value: &Value, path: &str) -> Value {
    path.split('.')
        .filter(|part| !part.is_empty())
        .fold(value.clone(), |value, part| {
            value.get(part).cloned().unwrap_or(Value::Null)
        })
}

/// What a claim points at in the rendered objects (Null when absent).
fn find(objects: &[Value], claim: &Claim) -> Value {
    let daemon_set = objects
        .iter()
        .find(|o| helm::kind(o) == "DaemonSet")
        .cloned()
        .unwrap_or(Value::Null);
    let pod = at(&daemon_set, "spec.template.spec");
    let container = pod["containers"][0].clone();
    match claim {
        Claim::Env(name) => container["env"]
            .as_array()
            .and_then(|vars| vars.iter().find(|var| var["name"] == name.as_str()))
            .cloned()
            .unwrap_or(Value::Null),
        Claim::Pod(path) => at(&pod, path),
        Claim::Container(path) => at(&container, path),
        Claim::Object(kind, path) => Value::Array(
            objects
                .iter()
                .filter(|o| helm::kind(o) == kind)
                .map(|o| at(o, path))
                .collect(),
        ),
    }
}

/// A value the key does not have by default, valid for the schema.
fn mutated(key: &str, default: &Value) -> Value {
    let special = match key {
        "image.pullPolicy" => json!("Always"),
        "image.pullSecrets" => json!([{"name": "spot-guard-test"}]),
        "terminationGracePeriodSeconds" => json!(45),
        "resources" => json!({"requests": {"cpu": "20m"}}),
        "extraEnv" => json!([{"name": "SPOT_GUARD_TEST", "value": "x"}]),
        "logLevel" => json!("debug"),
        "targetNodeOs" => json!("windows"),
        "dnsPolicy" | "linuxDnsPolicy" => json!("Default"),
        "podMonitor" | "serviceMonitor" => json!({"create": true}),
        "taintEffect" => json!("PreferNoSchedule"),
        "spotGuard.preScaleFailureFallback" => json!("wait"),
        _ => Value::Null,
    };
    if !special.is_null() {
        return special;
    }
    match default {
        Value::Bool(b) => json!(!b),
        Value::Number(n) => json!(n.as_i64().expect("whole numbers") + 1),
        Value::String(s) if s.is_empty() => json!("spot-guard-test"),
        Value::String(s) => json!(format!("{s}-test")),
        Value::Null => json!("spot-guard-test"),
        Value::Object(map) => {
            let mut map = map.clone();
            map.insert("spot-guard-test".to_owned(), json!("x"));
            Value::Object(map)
        }
        Value::Array(_) => json!([{"key": "spot-guard-test", "operator": "Exists"}]),
    }
}

/// The env var's value expected from `mutated` (None: read from a Secret).
fn expected_env(key: &str, mutated: &Value) -> Option<String> {
    match key {
        "webhookURLSecretName" => None,
        "webhookTemplateConfigMapName" => Some("/config/t.tmpl".to_owned()),
        "webhookTemplateConfigMapKey" => Some("/config/spot-guard-test".to_owned()),
        _ => Some(match mutated {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
    }
}

/// Values the key needs beside it to show (e.g. probes need the probes server).
fn context(row: &Row) -> Value {
    let key = row.key.as_str();
    match key {
        "probes" => return json!({"enableProbesServer": true}),
        "podMonitor" | "serviceMonitor" => return json!({"enablePrometheusServer": true}),
        "webhookTemplateConfigMapName" => return json!({"webhookTemplateConfigMapKey": "t.tmpl"}),
        "webhookTemplateConfigMapKey" => return json!({"webhookTemplateConfigMapName": "cm"}),
        _ => {}
    }
    let scale_back_alias = [
        "spotGuard.minimumWaitDuration",
        "spotGuard.spotStabilityDuration",
        "spotGuard.maxClusterUtilization",
        "spotGuard.enablePreScale",
        "spotGuard.preScaleTimeout",
        "spotGuard.preScaleTargetUtilization",
        "spotGuard.preScaleSafetyBuffer",
        "spotGuard.preScaleFallbackThreshold",
    ];
    match row.source {
        Source::Fork if scale_back_alias.contains(&key) => {
            json!({"spotGuard": {"scaleBack": {"enabled": true}}})
        }
        Source::Ours if key.starts_with("spotGuard.") => {
            let mut spot_guard = json!({"spotAsgName": "spot", "onDemandAsgName": "on-demand"});
            if key != "spotGuard.enabled" {
                spot_guard["enabled"] = json!(true);
            }
            if key.starts_with("spotGuard.scaleBack.") && key != "spotGuard.scaleBack.enabled" {
                spot_guard["scaleBack"] = json!({"enabled": true});
            }
            json!({"enableRebalanceMonitoring": true, "spotGuard": spot_guard})
        }
        _ => json!({}),
    }
}

fn set(target: &mut Value, path: &str, value: Value) {
    let mut node = target;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        if !node.get(*part).is_some_and(Value::is_object) {
            node[*part] = json!({});
        }
        node = &mut node[*part];
    }
    node[parts[parts.len() - 1]] = value;
}

fn get(values: &Value, path: &str) -> Option<Value> {
    path.split('.')
        .try_fold(values, |node, part| node.get(part))
        .cloned()
}

/// The value keys of NTH's file as the doc's rows name them.
fn flat_keys(values: &Value, prefix: &str, expand: &[&str]) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for (key, value) in values.as_object().expect("a map") {
        let path = format!("{prefix}{key}");
        if expand.contains(&path.as_str()) {
            keys.extend(flat_keys(value, &format!("{path}."), expand));
        } else {
            keys.insert(path);
        }
    }
    keys
}

struct Sources {
    chart: Value,
    nth: Value,
    fork: Value,
}

impl Sources {
    fn of(&self, source: Source) -> &Value {
        match source {
            Source::Nth => &self.nth,
            Source::Ours => &self.chart,
            Source::Fork => &self.fork,
        }
    }
}

fn check_default(row: &Row, sources: &Sources) -> Result<(), String> {
    let ours = get(&sources.chart, &row.key);
    let theirs = get(sources.of(row.source), &row.key);
    let parse = |span: &str| {
        serde_json::from_str::<Value>(span).map_err(|e| format!("`{span}` is not JSON: {e}"))
    };
    match row.default.as_str() {
        "same" if ours.is_some() && ours == theirs => Ok(()),
        "same" => Err(format!("says same, but {ours:?} here and {theirs:?} there")),
        "—" if ours.is_none() => Ok(()),
        "—" => Err(format!("says not in values.yaml, but it is: {ours:?}")),
        cell => {
            let spans = spans(cell);
            let claimed = parse(spans.first().ok_or("no default")?)?;
            if ours.as_ref() != Some(&claimed) {
                return Err(format!("says {claimed} here, values.yaml has {ours:?}"));
            }
            match (row.source, spans.get(1)) {
                (Source::Ours, None) => Ok(()),
                (Source::Nth | Source::Fork, Some(span)) => {
                    let claimed = parse(span)?;
                    if theirs.as_ref() == Some(&claimed) {
                        Ok(())
                    } else {
                        Err(format!("says {claimed} there, the fixture has {theirs:?}"))
                    }
                }
                _ => Err(format!("cannot read the default cell {cell:?}")),
            }
        }
    }
}

type Renders = Mutex<HashMap<String, Result<Vec<Value>, String>>>;

fn cached(cache: &Renders, files: &[&str], values: &str) -> Result<Vec<Value>, String> {
    let key = format!("{files:?}{values}");
    if let Some(found) = cache.lock().expect("cache").get(&key) {
        return found.clone();
    }
    let rendered = helm::template_with(files, values);
    cache.lock().expect("cache").insert(key, rendered.clone());
    rendered
}

/// Renders the chart with the row's key changed from its default and checks what the
/// row says against the render without that change.
fn check_here(row: &Row, sources: &Sources, cache: &Renders) -> Result<(), String> {
    let files = row.source.files();
    let context = context(row);
    let default = get(sources.of(row.source), &row.key).unwrap_or(Value::Null);
    let value = mutated(&row.key, &default);
    let mut changed = context.clone();
    set(&mut changed, &row.key, value.clone());
    let baseline = cached(cache, files, &context.to_string())
        .map_err(|refusal| format!("baseline refused: {refusal}"))?;
    let rendered = helm::template_with(files, &changed.to_string());

    if row.here.starts_with("fails the install") {
        return match rendered {
            Err(refusal) if refusal.contains("IMDS mode only") => Ok(()),
            other => Err(format!("{value} did not fail the install: {other:?}")),
        };
    }
    let rendered = rendered.map_err(|refusal| format!("{value} refused: {refusal}"))?;
    if let Some(reason) = row.here.strip_prefix("no effect: ") {
        if rendered != baseline {
            return Err(format!("{value} changed the rendered objects"));
        }
        let notes = helm::notes_with(files, &changed.to_string())?;
        let named = notes.lines().any(|line| {
            line.split_once(reason)
                .is_some_and(|(keys, _)| keys.split([',', ' ', ':']).any(|word| word == row.key))
        });
        return if named {
            Ok(())
        } else {
            Err(format!(
                "the release notes do not name it with {reason:?}:\n{notes}"
            ))
        };
    }
    let claims = claims(&row.here);
    if claims.is_empty() {
        return Err("says neither where it lands nor \"no effect\"".to_owned());
    }
    for claim in &claims {
        let before = find(&baseline, claim);
        let after = find(&rendered, claim);
        if before == after {
            return Err(format!("{value} did not change {claim:?} ({after})"));
        }
        if let Claim::Env(name) = claim {
            let expected = expected_env(&row.key, &value);
            let got = after
                .get("value")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if got != expected {
                return Err(format!("{name} is {got:?}, expected {expected:?}"));
            }
        }
    }
    Ok(())
}

#[test]
fn migration_doc_value_tables_say_what_the_chart_does() {
    let rows = value_rows(&read_doc(MIGRATING));
    let sources = Sources {
        chart: helm::values_of(&[CHART_VALUES]),
        nth: helm::values_of(&[NTH_VALUES]),
        fork: helm::values_of(&[FORK_SPOT_GUARD]),
    };

    // Every key of NTH's file has exactly one row, and so has every key of the fork's
    // spotGuard block; this chart's own rows name its values NTH does not have.
    let keys_of = |source: Source| -> Vec<String> {
        rows.iter()
            .filter(|r| r.source == source)
            .map(|r| r.key.clone())
            .collect()
    };
    let nth_keys = flat_keys(&sources.nth, "", &["image", "serviceAccount", "rbac"]);
    let nth_rows = keys_of(Source::Nth);
    assert_eq!(
        nth_rows.len(),
        nth_rows.iter().collect::<BTreeSet<_>>().len(),
        "a key twice"
    );
    assert_eq!(nth_rows.into_iter().collect::<BTreeSet<_>>(), nth_keys);
    let fork_keys = flat_keys(&sources.fork["spotGuard"], "spotGuard.", &[]);
    assert_eq!(
        keys_of(Source::Fork).into_iter().collect::<BTreeSet<_>>(),
        fork_keys
    );
    for key in keys_of(Source::Ours) {
        assert!(
            get(&sources.chart, &key).is_some(),
            "{key} is not in values.yaml"
        );
        assert!(!nth_keys.contains(&key), "{key} is NTH's");
    }

    let cache = Renders::default();
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    std::thread::scope(|scope| {
        for chunk in rows.chunks(rows.len().div_ceil(threads)) {
            let (sources, cache, failures) = (&sources, &cache, &failures);
            scope.spawn(move || {
                for row in chunk {
                    let result =
                        check_default(row, sources).and_then(|()| check_here(row, sources, cache));
                    if let Err(why) = result {
                        failures
                            .lock()
                            .expect("failures")
                            .push(format!("{:?} `{}`: {why}", row.source, row.key));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().expect("failures");
    assert!(
        failures.is_empty(),
        "{MIGRATING} says what the chart does not:\n{}",
        failures.join("\n")
    );
}

#[test]
fn migration_doc_names_the_agents_taints_and_annotations() {
    use spot_guard::names;
    let lease = names::asg_lease("asg").replace("asg", "<asg>");
    let ledger_key = format!("{}<instance-id>", names::LEDGER_KEY_PREFIX);
    let annotations = [
        names::SCALE_BACK_ANNOTATION,
        names::PROTECTED_UNTIL_ANNOTATION,
        names::CA_SCALE_DOWN_DISABLED,
    ];
    let doc = read_doc(MIGRATING);
    let mut in_table = false;
    let mut checked = 0;
    for line in doc.lines() {
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells = cells(line);
        if cells == ["fork", "here"] {
            in_table = true;
            continue;
        }
        if !in_table || cells[0].starts_with("---") {
            continue;
        }
        let here = &cells[1];
        let parts: Vec<&str> = here.split('`').collect();
        for (index, name) in parts.iter().enumerate().skip(1).step_by(2) {
            let what = parts[index - 1].split_whitespace().last().unwrap_or("");
            let known = match what {
                "taint" => names::AGENT_TAINTS.contains(name),
                "annotation" => annotations.contains(name),
                "key" => *name == ledger_key,
                "Lease" => *name == lease,
                other => panic!("{MIGRATING}: `{name}` is a {other:?}, not a name kind"),
            };
            assert!(known, "{MIGRATING}: the agent writes no {what} `{name}`");
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "the fork names table is missing ({checked} names)"
    );
}
