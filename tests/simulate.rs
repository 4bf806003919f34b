//! `spot-guard-sim` (`cargo simulate`): every scenario ends as it promises, and the log a user reads
//! tells the story in order (scale-up or fallback, taint, cordon, evictions, completion).

use std::process::Command;

use spot_guard::sim::scenarios::{Scenario, run_scenario, scenarios};

fn scenario(name: &str) -> Scenario {
    scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("scenario {name} exists"))
}

async fn assert_ends_as_expected(name: &str) {
    spot_guard::tls::ensure_crypto_provider();
    let scenario = scenario(name);
    let outcome = run_scenario(&scenario).await.expect("scenario runs");
    let problems = outcome.mismatches(&scenario.expect);
    assert!(problems.is_empty(), "{name}: {problems:?} ({outcome:?})");
}

#[tokio::test]
async fn spot_success() {
    assert_ends_as_expected("spot-success").await;
}

#[tokio::test]
async fn spot_insufficient_capacity() {
    assert_ends_as_expected("spot-insufficient-capacity").await;
}

#[tokio::test]
async fn spot_timeout() {
    assert_ends_as_expected("spot-timeout").await;
}

#[tokio::test]
async fn spot_at_max_size() {
    assert_ends_as_expected("spot-at-max-size").await;
}

#[tokio::test]
async fn both_fail() {
    assert_ends_as_expected("both-fail").await;
}

#[tokio::test]
async fn pdb_holds_a_pod() {
    assert_ends_as_expected("pdb-holds-a-pod").await;
}

#[tokio::test]
async fn dry_run() {
    assert_ends_as_expected("dry-run").await;
}

#[tokio::test]
async fn spot_itn_during_wait() {
    assert_ends_as_expected("spot-itn-during-wait").await;
}

/// Runs `spot-guard-sim` and returns its output (stdout), asserting success.
fn simulate(name: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_spot-guard-sim"))
        .args(["--scenario", name])
        .env_remove("RUST_LOG")
        .output()
        .expect("spot-guard-sim runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "simulate {name} failed:\n{stdout}");
    stdout
}

fn assert_in_order(log: &str, steps: &[&str]) {
    let mut from = 0;
    for step in steps {
        match log[from..].find(step) {
            Some(at) => from += at + step.len(),
            None => panic!("'{step}' missing, or out of order, in:\n{log}"),
        }
    }
}

#[test]
fn the_fallback_log_tells_the_story_in_order() {
    let log = simulate("spot-insufficient-capacity");
    assert_in_order(
        &log,
        &[
            "Spot Guard enabled - Spot ASG: spot-asg, On-Demand ASG: on-demand-asg",
            "Scaling ASG spot-asg from 3 to 4 instances",
            "falling back to on-demand ASG on-demand-asg",
            "Scaling ASG on-demand-asg from 3 to 4 instances",
            "New instance reached InService in ASG on-demand-asg",
            "Spot Guard complete",
            "aws-node-termination-handler/rebalance-recommendation",
            "cordon the node",
            "Evicted pod default/",
            "Drained for the rebalance recommendation",
            "as expected",
        ],
    );
}

#[test]
fn simulate_lists_its_scenarios_and_refuses_unknown_ones() {
    let list = Command::new(env!("CARGO_BIN_EXE_spot-guard-sim"))
        .args(["--list"])
        .output()
        .expect("runs");
    let listing = String::from_utf8_lossy(&list.stdout);
    for scenario in scenarios() {
        assert!(listing.contains(scenario.name), "{listing}");
    }
    let unknown = Command::new(env!("CARGO_BIN_EXE_spot-guard-sim"))
        .args(["--scenario", "no-such-thing"])
        .output()
        .expect("runs");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no-such-thing"));
}

#[tokio::test]
async fn scheduled_reboot_then_restart() {
    assert_ends_as_expected("scheduled-reboot-then-restart").await;
}

#[tokio::test]
async fn asg_lifecycle_termination() {
    assert_ends_as_expected("asg-lifecycle-termination").await;
}

#[test]
fn json_logs_are_one_object_per_line_with_node_event_and_asg() {
    let output = Command::new(env!("CARGO_BIN_EXE_spot-guard-sim"))
        .args(["--scenario", "spot-success", "--json-logging"])
        .env_remove("RUST_LOG")
        .output()
        .expect("spot-guard-sim runs");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let logs: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).expect("each log line is one JSON object"))
        .collect();
    let scaling = logs
        .iter()
        .find(|log| {
            log["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Scaling ASG spot-asg"))
        })
        .expect("the scale-up is logged");
    let fields: Vec<&serde_json::Value> = scaling["spans"]
        .as_array()
        .expect("the spans are listed")
        .iter()
        .collect();
    for key in ["node", "event_id", "asg"] {
        assert!(
            fields.iter().any(|span| span.get(key).is_some()),
            "{key} missing from {scaling}"
        );
    }
    assert_eq!(scaling["level"], "INFO");
}

#[test]
fn the_agent_binary_has_no_simulator() {
    let output = Command::new(env!("CARGO_BIN_EXE_spot-guard"))
        .args(["simulate", "--list"])
        .env("NODE_NAME", "n1")
        .output()
        .expect("spot-guard runs");
    assert_eq!(
        output.status.code(),
        Some(2),
        "the agent accepted `simulate`"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unexpected argument 'simulate'"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
