//! The binary's command line as a user meets it: flags, env vars, exit codes, messages.

use std::process::{Command, Output};

fn spot_guard(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spot-guard"));
    command.args(args).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn spot_guard_without_asg_names_or_rebalance_monitoring_exits_non_zero_naming_each() {
    let output = spot_guard(&["--node-name=n1", "--enable-spot-guard=true"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    for missing in [
        "SPOT_ASG_NAME",
        "ON_DEMAND_ASG_NAME",
        "ENABLE_REBALANCE_MONITORING",
    ] {
        assert!(
            message.contains(missing),
            "{missing} not named in: {message}"
        );
    }
}

#[test]
fn env_vars_with_nth_names_configure_the_agent() {
    let output = spot_guard(
        &[],
        &[
            ("NODE_NAME", "n1"),
            ("ENABLE_SPOT_GUARD", "true"),
            ("ENABLE_REBALANCE_MONITORING", "true"),
            ("SPOT_ASG_NAME", "same"),
            ("ON_DEMAND_ASG_NAME", "same"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("both 'same'"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_non_number_names_the_setting() {
    let output = spot_guard(
        &[],
        &[
            ("NODE_NAME", "n1"),
            ("NODE_TERMINATION_GRACE_PERIOD", "soon"),
        ],
    );
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stderr(&output).contains("node-termination-grace-period"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_bad_boolean_env_value_is_refused() {
    let output = spot_guard(&[], &[("NODE_NAME", "n1"), ("DRY_RUN", "perhaps")]);
    assert_ne!(output.status.code(), Some(0));
    assert!(stderr(&output).contains("perhaps"), "{}", stderr(&output));
}

#[test]
fn missing_node_name_is_refused_before_anything_is_touched() {
    let output = spot_guard(&["--metadata-url=http://127.0.0.1:1"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("NODE_NAME"), "{}", stderr(&output));
}

#[test]
fn empty_env_values_mean_unset_as_in_nth() {
    // A chart that renders `value: ""` must not break start-up: the defaults apply.
    let output = spot_guard(
        &["--enable-spot-guard=true"],
        &[
            ("NODE_NAME", "n1"),
            ("METADATA_TRIES", ""),
            ("DRY_RUN", ""),
            ("SPOT_ASG_NAME", ""),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(!message.contains("METADATA_TRIES"), "{message}");
    assert!(message.contains("SPOT_ASG_NAME"), "{message}");
}
