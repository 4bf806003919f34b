//! docs/MIGRATING-FROM-NTH.md's environment tables, row by row, against the binary's own
//! option definitions and its configuration parsed as the binary parses it: one row per
//! variable NTH reads (tests/fixtures/nth-env.tsv, from NTH's pkg/config/config.go) and per
//! variable the Go Spot Guard fork adds (tests/fixtures/nth-fork-env.tsv), each saying what
//! that variable does here. A row that says what the binary does not fails the test.

#[path = "support/helm.rs"]
mod helm;

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;
use serde_json::{Value, json};
use spot_guard::config::{Cli, Config, parse_go_bool};
use spot_guard::sim::harness;

const MIGRATING: &str = "docs/MIGRATING-FROM-NTH.md";
const NTH_ENV: &str = "tests/fixtures/nth-env.tsv";
const FORK_ENV: &str = "tests/fixtures/nth-fork-env.tsv";
const NODE: &str = "ip-10-0-9-9.ec2.internal";

fn read(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// name → (default, rest of the line's fields).
fn fixture(path: &str) -> BTreeMap<String, (String, Vec<String>)> {
    read(path)
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.split('\t').map(str::to_owned);
            let name = fields.next().expect("a name");
            let default = fields.next().unwrap_or_default();
            (name, (default, fields.collect()))
        })
        .collect()
}

/// A table line's cells (no cell of these tables holds a `|`).
fn cells(line: &str) -> Vec<String> {
    let line = line.trim();
    let line = line.strip_prefix('|').unwrap_or(line);
    let line = line.strip_suffix('|').unwrap_or(line);
    line.split('|').map(|cell| cell.trim().to_owned()).collect()
}

/// The `code` spans of a cell.
fn spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// The rows of the doc's table with this header, as cells.
fn table(doc: &str, header: &[&str]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut inside = false;
    for line in doc.lines() {
        if !line.starts_with('|') {
            inside = false;
            continue;
        }
        let cells = cells(line);
        if cells == header {
            inside = true;
        } else if inside && !cells[0].starts_with("---") {
            assert_eq!(cells.len(), header.len(), "{MIGRATING}: {line}");
            rows.push(cells);
        }
    }
    assert!(!rows.is_empty(), "{MIGRATING} has no table {header:?}");
    rows
}

/// A default cell: one code span, or empty for "no value".
fn default_cell(cell: &str) -> String {
    match spans(cell).as_slice() {
        [] if cell.is_empty() => String::new(),
        [value] if cell == format!("`{value}`") => (*value).to_owned(),
        _ => panic!("{MIGRATING}: a default cell is one `value` or empty, not {cell:?}"),
    }
}

/// Whether a cell names a test that checks it (that the test exists is checked by
/// tests/docs.rs for every citation in the file).
fn cites_a_test(cell: &str) -> bool {
    spans(cell).iter().any(|span| {
        span.contains(".rs::") && (span.starts_with("tests/") || span.starts_with("src/"))
    })
}

struct Arg {
    long: String,
    default: String,
    hidden: bool,
}

/// The binary's option read from env var `name`.
fn arg(name: &str) -> Option<Arg> {
    Cli::command()
        .get_arguments()
        .find(|arg| arg.get_env().is_some_and(|env| env == name))
        .map(|arg| Arg {
            long: arg.get_long().expect("every option has a flag").to_owned(),
            default: arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(","),
            hidden: arg.is_hide_set(),
        })
}

/// Two defaults mean the same value: booleans as Go reads them, numbers as numbers.
fn same_value(a: &str, b: &str) -> bool {
    if let (Ok(a), Ok(b)) = (parse_go_bool(a), parse_go_bool(b)) {
        return a == b;
    }
    if let (Ok(a), Ok(b)) = (a.parse::<f64>(), b.parse::<f64>()) {
        return a == b;
    }
    a == b
}

/// A value other than `default`, valid for the option.
fn other_value(default: &str) -> String {
    if let Ok(n) = default.parse::<i64>() {
        return (n + 1).to_string();
    }
    if let Ok(b) = parse_go_bool(default) {
        return (!b).to_string();
    }
    "spot-guard-test".to_owned()
}

/// The configuration the binary builds from `env` (later entries win), each variable
/// passed as the flag clap reads it for, so the tests do not change the process env.
fn config(env: &[(&str, String)]) -> Result<Config, String> {
    let mut merged: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, value) in env {
        merged.insert(name, value);
    }
    let flags: Vec<String> = merged
        .iter()
        .map(|(name, value)| {
            let arg = arg(name).unwrap_or_else(|| panic!("{name} is not an option"));
            format!("--{}={value}", arg.long)
        })
        .collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    harness::config(NODE, "http://127.0.0.1:1", &flags).map_err(|e| e.to_string())
}

/// What the configuration does, without the start-up notes that only talk about it.
fn behaviour(config: &Config) -> String {
    let mut config = config.clone();
    config.ignored_settings.clear();
    config.fork_notes.clear();
    format!("{config:?}")
}

fn check_nth_row(name: &str, default: &str, here: &str, baseline: &Config) -> Result<(), String> {
    let found = arg(name);
    if let Some(reason) = here.strip_prefix("not an option: ") {
        if let Some(found) = found {
            return Err(format!("says not an option, but --{} reads it", found.long));
        }
        return if cites_a_test(reason) {
            Ok(())
        } else {
            Err("says what reads it without naming the test that checks it".to_owned())
        };
    }
    let Some(found) = found else {
        return Err("the binary has no option read from it".to_owned());
    };
    if here == "same" {
        if found.hidden {
            return Err("hidden from --help and the README's table".to_owned());
        }
        return if same_value(&found.default, default) {
            Ok(())
        } else {
            Err(format!(
                "says same, but the default here is {:?}",
                found.default
            ))
        };
    }
    if let Some(rest) = here.strip_prefix("default ") {
        let claimed = spans(rest).first().copied().unwrap_or_default();
        if found.default != claimed || same_value(claimed, default) {
            return Err(format!(
                "says default {claimed:?}, the binary's is {:?}",
                found.default
            ));
        }
        // NTH's own default, written out, must mean what the default here means.
        if !default.is_empty() {
            let given = config(&[(name, default.to_owned())])?;
            if behaviour(&given) != behaviour(baseline) {
                return Err(format!(
                    "{name}={default} (NTH's default) changes the configuration"
                ));
            }
        }
        return Ok(());
    }
    if let Some(rest) = here.strip_prefix("read as ") {
        let newer = spans(rest).first().copied().unwrap_or_default();
        let newer_arg = arg(newer).ok_or(format!("{newer} is not an option"))?;
        if !found.default.is_empty() {
            return Err(format!("has its own default {:?}", found.default));
        }
        if !same_value(&newer_arg.default, default) {
            return Err(format!("{newer}'s default is {:?}", newer_arg.default));
        }
        // The old name alone means what the newer name with that value means.
        let value = other_value(default);
        let old = config(&[(name, value.clone())])?;
        let new = config(&[(newer, value)])?;
        if behaviour(&old) != behaviour(&new) {
            return Err(format!("{name} does not act as {newer}"));
        }
        return if cites_a_test(rest) {
            Ok(())
        } else {
            Err("names no test for which wins when both are set".to_owned())
        };
    }
    if let Some(reason) = here.strip_prefix("no effect: ") {
        let value = other_value(default);
        let given = config(&[(name, value.clone())])?;
        if behaviour(&given) != behaviour(baseline) {
            return Err(format!("{name}={value} changes the configuration"));
        }
        // When the start-up warning names the variable, it gives the doc's reason.
        let warned: Vec<&String> = given
            .ignored_settings
            .iter()
            .filter(|warning| warning.contains(name))
            .collect();
        return match warned.as_slice() {
            [] => Ok(()),
            [warning] if warning.contains(reason) => Ok(()),
            other => Err(format!(
                "the start-up warning says {other:?}, not {reason:?}"
            )),
        };
    }
    if let Some(rest) = here.strip_prefix("refused when ") {
        let refused = spans(rest).first().copied().unwrap_or_default();
        let (_, value) = refused
            .split_once('=')
            .ok_or(format!("`{refused}` is not NAME=value"))?;
        if !same_value(&found.default, default) {
            return Err(format!("the default here is {:?}", found.default));
        }
        return match config(&[(name, value.to_owned())]) {
            Err(refusal) if refusal.contains(name) => Ok(()),
            other => Err(format!(
                "{refused} was not refused naming {name}: {other:?}"
            )),
        };
    }
    Err(format!("cannot read {here:?}"))
}

#[test]
fn migration_doc_nth_env_table_says_what_the_binary_does() {
    let doc = read(MIGRATING);
    let nth = fixture(NTH_ENV);
    let rows = table(&doc, &["NTH env var", "NTH default", "here"]);
    let documented: BTreeMap<String, String> = rows
        .iter()
        .map(|row| (row[0].trim_matches('`').to_owned(), default_cell(&row[1])))
        .collect();
    assert_eq!(documented.len(), rows.len(), "a variable twice");
    let expected: BTreeMap<String, String> = nth
        .iter()
        .map(|(name, (default, _))| (name.clone(), default.clone()))
        .collect();
    assert_eq!(
        documented, expected,
        "one row per NTH variable, with NTH's default"
    );

    let baseline = config(&[]).expect("the defaults start");
    let mut failures = Vec::new();
    for row in &rows {
        let name = row[0].trim_matches('`');
        let (default, mode) = &nth[name];
        let here = row[2].as_str();
        // IMDS mode is the mode spot-guard replaces: its variables keep their name (and
        // are read), unless Kubernetes' or AWS's own client reads them.
        if mode.first().map(String::as_str) == Some("imds")
            && !(here == "same"
                || here.starts_with("default ")
                || here.starts_with("read as ")
                || here.starts_with("no effect: ")
                || here.starts_with("not an option: "))
        {
            failures.push(format!("{name}: an IMDS-mode variable that is {here:?}"));
        }
        if let Err(why) = check_nth_row(name, default, here, &baseline) {
            failures.push(format!("{name}: {why}"));
        }
        // A queue-processor setting that has no effect is named at start-up.
        if mode.first().map(String::as_str) == Some("queue") && here.starts_with("no effect: ") {
            let warned = config(&[(name, other_value(default))])
                .is_ok_and(|given| given.ignored_settings.iter().any(|w| w.starts_with(name)));
            if !warned {
                failures.push(format!("{name}: no start-up warning names it"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{MIGRATING}'s NTH env table says what the binary does not:\n{}",
        failures.join("\n")
    );
}

/// Spot Guard on, as a fork user has it.
fn fork_base() -> Vec<(&'static str, String)> {
    [
        ("ENABLE_REBALANCE_MONITORING", "true"),
        ("ENABLE_SPOT_GUARD", "true"),
        ("SPOT_ASG_NAME", "spot"),
        ("ON_DEMAND_ASG_NAME", "on-demand"),
    ]
    .into_iter()
    .map(|(name, value)| (name, value.to_owned()))
    .collect()
}

/// The `NAME=value` spans of a cell: settings the row holds for.
fn context(cell: &str) -> Vec<(&str, String)> {
    spans(cell)
        .into_iter()
        .filter_map(|span| span.split_once('='))
        .filter(|(name, _)| arg(name).is_some())
        .map(|(name, value)| (name, value.to_owned()))
        .collect()
}

fn check_fork_row(name: &str, default: &str, here: &str) -> Result<(), String> {
    let found = arg(name).ok_or("the binary does not read it")?;
    let mut env = fork_base();
    env.extend(context(here));
    if here == "same" {
        if found.hidden || !same_value(&found.default, default) {
            return Err(format!("the default here is {:?}", found.default));
        }
        env.push((name, other_value(default)));
        let given = config(&env)?;
        return match given.fork_notes.iter().find(|note| note.contains(name)) {
            Some(note) => Err(format!("says same, the start-up notes say {note:?}")),
            None => Ok(()),
        };
    }
    if let Some(rest) = here.strip_prefix("read as ") {
        let newer = spans(rest).first().copied().unwrap_or_default();
        let newer_arg = arg(newer).ok_or(format!("{newer} is not an option"))?;
        if !same_value(&newer_arg.default, default) {
            return Err(format!("{newer}'s default is {:?}", newer_arg.default));
        }
        let value = match default.parse::<u64>() {
            Ok(n) => (n - 3).to_string(),
            Err(_) => other_value(default),
        };
        env.push((name, value.clone()));
        let given = config(&env)?;
        let said = format!("{name} is the Go fork's name of {newer}: using {newer}={value}");
        return if given.fork_notes.iter().any(|note| note.contains(&said)) {
            Ok(())
        } else {
            Err(format!("no note {said:?} in {:?}", given.fork_notes))
        };
    }
    if let Some(rest) = here.strip_prefix("no effect") {
        let reason = rest
            .split_once(": ")
            .map(|(_, reason)| reason.replace('`', ""))
            .ok_or("no reason")?;
        env.push((name, default.to_owned()));
        let given = config(&env)?;
        let said = format!("{name} (Go fork) has no effect: {reason}");
        return if given.fork_notes.iter().any(|note| note.contains(&said)) {
            Ok(())
        } else {
            Err(format!("no note {said:?} in {:?}", given.fork_notes))
        };
    }
    if here.starts_with("another meaning: ") {
        // Any fork-only setting shows that a fork configuration is reused.
        env.push(("SPOT_GUARD_POD_MIGRATION_BUFFER", "180".to_owned()));
        let value = match default.parse::<u64>() {
            Ok(n) => n.to_string(),
            Err(_) => other_value(default),
        };
        env.push((name, value));
        let given = config(&env)?;
        let names: Vec<&str> = spans(here)
            .into_iter()
            .filter(|s| !s.contains('='))
            .collect();
        let note = given
            .fork_notes
            .iter()
            .find(|note| note.contains(name) && names.iter().all(|n| note.contains(n)));
        return match note {
            Some(_) => Ok(()),
            None => Err(format!(
                "no note names {name} and {names:?}: {:?}",
                given.fork_notes
            )),
        };
    }
    Err(format!("cannot read {here:?}"))
}

#[test]
fn migration_doc_fork_env_table_says_what_the_binary_does() {
    let doc = read(MIGRATING);
    let fork = fixture(FORK_ENV);
    let rows = table(&doc, &["fork env var", "fork default", "here"]);
    let documented: BTreeMap<String, String> = rows
        .iter()
        .map(|row| (row[0].trim_matches('`').to_owned(), default_cell(&row[1])))
        .collect();
    assert_eq!(documented.len(), rows.len(), "a variable twice");
    let expected: BTreeMap<String, String> = fork
        .iter()
        .map(|(name, (default, _))| (name.clone(), default.clone()))
        .collect();
    assert_eq!(
        documented, expected,
        "one row per fork variable, with the fork's default"
    );

    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let name = row[0].trim_matches('`');
            check_fork_row(name, &fork[name].0, &row[2])
                .err()
                .map(|why| format!("{name}: {why}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{MIGRATING}'s fork env table says what the binary does not:\n{}",
        failures.join("\n")
    );
}

// --- The RBAC table: NTH's ClusterRole and this chart's, resource by resource ----------------

type Rules = BTreeMap<String, BTreeSet<String>>;

/// The ClusterRole's verbs by `group/resource` (core group: the resource alone).
fn cluster_role(values: &Value) -> Rules {
    let objects = helm::template_with(&[], &values.to_string())
        .unwrap_or_else(|refusal| panic!("Helm refused {values}: {refusal}"));
    let role = helm::only(&objects, "ClusterRole");
    let mut rules = Rules::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for group in rule["apiGroups"].as_array().into_iter().flatten() {
            for resource in rule["resources"].as_array().into_iter().flatten() {
                let group = group.as_str().unwrap_or_default();
                let resource = resource.as_str().unwrap_or_default();
                let key = if group.is_empty() {
                    resource.to_owned()
                } else {
                    format!("{group}/{resource}")
                };
                let verbs = rule["verbs"].as_array().into_iter().flatten();
                rules
                    .entry(key)
                    .or_default()
                    .extend(verbs.filter_map(Value::as_str).map(str::to_owned));
            }
        }
    }
    rules
}

fn verbs(cell: &str) -> BTreeSet<String> {
    spans(cell).into_iter().map(str::to_owned).collect()
}

/// One column of the table as rules (resources with no verbs left out).
fn column(rows: &[Vec<String>], index: usize) -> Rules {
    rows.iter()
        .map(|row| (row[0].trim_matches('`').to_owned(), verbs(&row[index])))
        .filter(|(_, verbs)| !verbs.is_empty())
        .collect()
}

#[test]
fn migration_doc_rbac_table_is_nths_and_the_charts() {
    let doc = read(MIGRATING);
    let rows = table(
        &doc,
        &[
            "ClusterRole resource",
            "NTH",
            "here",
            "with `spotGuard.enabled`",
            "with `spotGuard.scaleBack.enabled`",
        ],
    );
    let nth: Rules = fixture("tests/fixtures/nth-clusterrole.tsv")
        .into_iter()
        .map(|(resource, (verbs, _))| (resource, verbs.split(',').map(str::to_owned).collect()))
        .collect();
    assert_eq!(column(&rows, 1), nth, "NTH's ClusterRole");
    let spot_guard = json!({
        "enableRebalanceMonitoring": true,
        "spotGuard": {"enabled": true, "spotAsgName": "spot", "onDemandAsgName": "on-demand"},
    });
    let mut scale_back = spot_guard.clone();
    scale_back["spotGuard"]["scaleBack"] = json!({"enabled": true});
    assert_eq!(
        column(&rows, 2),
        cluster_role(&json!({})),
        "the default ClusterRole"
    );
    assert_eq!(
        column(&rows, 3),
        cluster_role(&spot_guard),
        "with spotGuard.enabled"
    );
    assert_eq!(
        column(&rows, 4),
        cluster_role(&scale_back),
        "with scaleBack.enabled"
    );
}

/// The pod's node selector with NTH's values file and `daemonset_node_selector`.
fn node_selector(daemonset_node_selector: &str) -> Value {
    let values = format!("daemonsetNodeSelector: {daemonset_node_selector}");
    let objects = helm::template_with(&["tests/fixtures/nth-values.yaml"], &values)
        .unwrap_or_else(|refusal| panic!("Helm refused {values}: {refusal}"));
    helm::only(&objects, "DaemonSet")["spec"]["template"]["spec"]["nodeSelector"].clone()
}

#[test]
fn a_null_daemonset_node_selector_reaches_the_on_demand_nodes() {
    // Helm merges `{}` into the default: the spot selector stays.
    assert_eq!(
        node_selector("{}"),
        json!({"eks.amazonaws.com/capacityType": "SPOT", "kubernetes.io/os": "linux"})
    );
    // `null` deletes it: every Linux node, on-demand ones too.
    assert_eq!(node_selector("null"), json!({"kubernetes.io/os": "linux"}));
}

#[test]
fn the_image_is_distroless_and_runs_as_uid_65532() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let from: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(from.len(), 1, "one stage: {from:?}");
    assert!(
        from[0].starts_with("FROM gcr.io/distroless/static"),
        "a distroless static base, with no libc for a dynamic binary: {}",
        from[0]
    );
    assert!(
        instructions.contains(&"USER 65532:65532"),
        "{instructions:?}"
    );
}

// --- Behaviour the guide states that no other test covers ---------------------------------

/// The binary's output when it is started with `env` and no kubeconfig: it builds its
/// Kubernetes client first, so a client it cannot build ends it at once. `None` when it
/// built one and kept running (inside a pod, where the service account files exist).
fn agent_without_kubeconfig(env: &[(&str, &str)]) -> Option<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_spot-guard"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("NODE_NAME", NODE)
        .env("INSTANCE_METADATA_URL", "http://127.0.0.1:1")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut agent = command.spawn().expect("the binary runs");
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(20) {
        if let Some(status) = agent.try_wait().expect("wait") {
            assert!(!status.success(), "no cluster, no agent");
            return Some(std::fs::read_to_string(&log_path).expect("log"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    None
}

#[test]
fn the_kubernetes_client_finds_the_api_server_from_the_pods_env() {
    // Without the two variables Kubernetes sets in every pod there is no in-cluster API.
    let unset = agent_without_kubeconfig(&[]).expect("no client without them");
    assert!(
        unset.contains("failed to read an incluster environment variable"),
        "{unset}"
    );
    // The port is read (and must be a port) ...
    let bad_port = agent_without_kubeconfig(&[
        ("KUBERNETES_SERVICE_HOST", "10.100.0.1"),
        ("KUBERNETES_SERVICE_PORT", "https"),
    ])
    .expect("no client with a bad port");
    assert!(
        bad_port.contains("failed to parse cluster port"),
        "{bad_port}"
    );
    // ... and with both the client goes on to the pod's service account files: off a
    // pod it stops there, in one it is built.
    let both = agent_without_kubeconfig(&[
        ("KUBERNETES_SERVICE_HOST", "10.100.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
    ]);
    if let Some(both) = both {
        assert!(both.contains("Cannot build a Kubernetes client"), "{both}");
        assert!(
            !both.contains("incluster environment variable") && !both.contains("cluster port"),
            "{both}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_spot_guard_the_uncordon_window_leaves_the_node_as_spot_guard_left_it() {
    use spot_guard::imds::REBALANCE_RECOMMENDATION_PATH;
    use spot_guard::names::REBALANCE_TAINT;
    use spot_guard::sim::fleet::{FleetSpec, FleetWorld, node_name};
    use std::time::Duration;

    const LIMIT: Duration = Duration::from_secs(30);
    spot_guard::tls::ensure_crypto_provider();
    let mut spec = FleetSpec::new(1);
    spec.check_interval = Duration::from_millis(50);
    let world = FleetWorld::start(spec).await.expect("simulators start");
    let node = node_name(0);
    let window = Duration::from_millis(300);
    let runtime = tokio::runtime::Handle::current();
    let starting = world.start_configured(
        &node,
        world.instance_id(0).map(str::to_owned),
        world.aws(),
        &runtime,
        |config| config.rebalance_uncordon_window = Some(window),
    );
    let mut agent = tokio::time::timeout(LIMIT, starting)
        .await
        .expect("the agent starts in time")
        .expect("agent starts");
    agent.recommend();
    assert!(agent.wait_handled(1, LIMIT).await, "recommendation handled");
    // Received before this moment: an undo, had one been scheduled, would be due by then.
    let undo_due = tokio::time::Instant::now() + window;

    let polls =
        |agent: &spot_guard::sim::fleet::FleetAgent| agent.imds.gets(REBALANCE_RECOMMENDATION_PATH);
    agent.imds.set_rebalance(None);
    // Two polls after the recommendation left: the monitor has passed its end on.
    let from = polls(&agent);
    let passed_on = async {
        while polls(&agent) < from + 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep_until(undo_due).await;
        // Still polling past the moment the undo would have been due.
        let from = polls(&agent);
        while polls(&agent) < from + 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(LIMIT, passed_on)
        .await
        .expect("the monitor polls");

    let left = world.kube.node(&node).expect("the node");
    let spec = left.spec.unwrap_or_default();
    assert_eq!(spec.unschedulable, Some(true), "still cordoned");
    let taints: Vec<String> = spec
        .taints
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert!(taints.iter().any(|t| t == REBALANCE_TAINT), "{taints:?}");
    tokio::time::timeout(LIMIT, agent.stop())
        .await
        .expect("the agent stops");
}
