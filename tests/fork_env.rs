//! A user of the Go Spot Guard fork (BananaSorcery/aws-node-termination-handler) keeps the
//! environment its chart renders (templates/daemonset.linux.yaml with its values.yaml
//! defaults): the agent's configuration is parsed from it as the binary parses it. Names
//! that mean the same here are aliases, the rest are explained or refused.

use clap::CommandFactory;
use spot_guard::config::{Cli, Config};
use spot_guard::sim::harness;
use std::time::Duration;

const NODE: &str = "ip-10-0-9-9.ec2.internal";

/// The fork chart's env for its default values (`spotGuard.enabled: true`), minus
/// pre-scale, with the ASG names a user fills in.
const FORK_ENV: [(&str, &str); 13] = [
    ("ENABLE_SPOT_INTERRUPTION_DRAINING", "true"),
    ("ENABLE_REBALANCE_MONITORING", "true"),
    ("ENABLE_REBALANCE_DRAINING", "true"),
    ("ENABLE_SQS_TERMINATION_DRAINING", "false"),
    ("ENABLE_SPOT_GUARD", "true"),
    ("SPOT_ASG_NAME", "workers-spot"),
    ("ON_DEMAND_ASG_NAME", "workers-on-demand"),
    ("SPOT_GUARD_CHECK_INTERVAL", "30"),
    ("SPOT_GUARD_MINIMUM_WAIT_DURATION", "120"),
    ("SPOT_GUARD_SPOT_STABILITY_DURATION", "90"),
    ("SPOT_GUARD_MAX_CLUSTER_UTILIZATION", "70"),
    ("SPOT_GUARD_POD_EVICTION_TIMEOUT", "300"),
    ("SPOT_GUARD_POD_MIGRATION_BUFFER", "180"),
];

/// `env` as the binary reads it: each variable becomes the flag clap reads it for, so the
/// test does not change the process environment the other tests share.
fn flags(env: &[(&str, &str)]) -> Vec<String> {
    let command = Cli::command();
    env.iter()
        .map(|(name, value)| {
            let arg = command
                .get_arguments()
                .find(|arg| arg.get_env().is_some_and(|env| env == *name))
                .unwrap_or_else(|| panic!("{name} is not an env var the agent reads"));
            format!(
                "--{}={value}",
                arg.get_long().expect("every option has a flag")
            )
        })
        .collect()
}

fn config(env: &[(&str, &str)]) -> Result<Config, String> {
    let flags = flags(env);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    harness::config(NODE, "http://127.0.0.1:1", &flags).map_err(|error| error.to_string())
}

#[test]
fn a_fork_env_starts_with_its_settings_under_the_new_names() {
    let mut env = FORK_ENV.to_vec();
    env.push(("SPOT_GUARD_SCALE_BACK", "true"));
    let config = config(&env).expect("the fork's env is accepted");
    let spot_guard = config.spot_guard.as_ref().expect("Spot Guard is on");
    assert_eq!(spot_guard.spot_asg_name, "workers-spot");
    assert_eq!(spot_guard.on_demand_asg_name, "workers-on-demand");
    let scale_back = spot_guard.scale_back.as_ref().expect("scale-back is on");
    assert_eq!(scale_back.min_wait, Duration::from_secs(120));
    assert_eq!(scale_back.stability_period, Duration::from_secs(90));
    assert_eq!(scale_back.utilization_ceiling, 70);
    // SPOT_GUARD_CHECK_INTERVAL keeps this agent's meaning, and the start-up notes say so.
    assert_eq!(spot_guard.check_interval, Duration::from_secs(30));
    let notes = config.fork_notes.join("\n");
    for expected in [
        "SPOT_GUARD_MINIMUM_WAIT_DURATION is the Go fork's name of SPOT_GUARD_SCALE_BACK_MIN_WAIT",
        "SPOT_GUARD_SPOT_STABILITY_DURATION is the Go fork's name of SPOT_GUARD_SCALE_BACK_STABILITY_PERIOD",
        "SPOT_GUARD_MAX_CLUSTER_UTILIZATION is the Go fork's name of SPOT_GUARD_SCALE_BACK_UTILIZATION_CEILING",
        "SPOT_GUARD_POD_EVICTION_TIMEOUT (Go fork) has no effect",
        "SPOT_GUARD_POD_MIGRATION_BUFFER (Go fork) has no effect",
        "is SPOT_GUARD_SCALE_BACK_CHECK_INTERVAL",
    ] {
        assert!(
            notes.contains(expected),
            "missing {expected:?} in:\n{notes}"
        );
    }
}

#[test]
fn the_fork_s_spot_guard_alone_is_explained_not_silently_changed() {
    let config = config(&FORK_ENV).expect("the fork's env is accepted");
    let spot_guard = config.spot_guard.as_ref().expect("Spot Guard is on");
    assert!(spot_guard.scale_back.is_none());
    let notes = config.fork_notes.join("\n");
    assert!(
        notes.contains("here that is SPOT_GUARD_SCALE_BACK=true, which is off"),
        "{notes}"
    );
}

#[test]
fn new_names_win_over_the_fork_s() {
    let mut env = FORK_ENV.to_vec();
    env.push(("SPOT_GUARD_SCALE_BACK", "true"));
    env.push(("SPOT_GUARD_SCALE_BACK_MIN_WAIT", "900"));
    let config = config(&env).expect("accepted");
    let scale_back = config.spot_guard.unwrap().scale_back.unwrap();
    assert_eq!(scale_back.min_wait, Duration::from_secs(900));
    assert!(
        config
            .fork_notes
            .iter()
            .any(|note| note.contains("SPOT_GUARD_MINIMUM_WAIT_DURATION=120 is ignored"))
    );
}

#[test]
fn the_fork_s_pre_scale_becomes_spot_guard_pre_scale_under_scale_back() {
    let pre_scale = [
        ("ENABLE_PRE_SCALE", "true"),
        ("PRE_SCALE_TIMEOUT_SECONDS", "240"),
        ("PRE_SCALE_TARGET_UTILIZATION", "60"),
        ("PRE_SCALE_SAFETY_BUFFER_PERCENT", "20"),
        ("PRE_SCALE_FAILURE_FALLBACK", "increase_threshold"),
        ("PRE_SCALE_FALLBACK_THRESHOLD", "90"),
        ("PRE_SCALE_RETRY_BACKOFF_SECONDS", "600"),
    ];
    let mut env = FORK_ENV.to_vec();
    env.push(("SPOT_GUARD_SCALE_BACK", "true"));
    env.extend(pre_scale);
    let accepted = config(&env).expect("the fork's pre-scale is accepted");
    let spot_guard = accepted.spot_guard.as_ref().expect("Spot Guard is on");
    assert!(spot_guard.scale_back.is_some());
    let pre_scale_settings = spot_guard.pre_scale.as_ref().expect("pre-scale is on");
    assert_eq!(pre_scale_settings.target_utilization, 60);
    assert_eq!(pre_scale_settings.safety_buffer, 20);
    assert_eq!(pre_scale_settings.timeout, Duration::from_secs(240));
    let notes = accepted.fork_notes.join("\n");
    for expected in [
        "ENABLE_PRE_SCALE is the Go fork's name of SPOT_GUARD_PRE_SCALE",
        "PRE_SCALE_FALLBACK_THRESHOLD is the Go fork's name of SPOT_GUARD_PRE_SCALE_FALLBACK_THRESHOLD",
        "PRE_SCALE_RETRY_BACKOFF_SECONDS (Go fork) has no effect",
    ] {
        assert!(
            notes.contains(expected),
            "missing {expected:?} in:\n{notes}"
        );
    }

    // Without scale-back there is nothing to pre-scale for: said, not refused.
    let mut without = FORK_ENV.to_vec();
    without.extend(pre_scale);
    let accepted = config(&without).expect("accepted");
    assert!(accepted.spot_guard.as_ref().unwrap().scale_back.is_none());
    assert!(accepted.fork_notes.iter().any(|note| {
        note.contains("ENABLE_PRE_SCALE (Go fork) has no effect while SPOT_GUARD_SCALE_BACK is off")
    }));

    let mut off = FORK_ENV.to_vec();
    off.extend([
        ("ENABLE_PRE_SCALE", "false"),
        ("PRE_SCALE_TARGET_UTILIZATION", "65"),
    ]);
    let config = config(&off).expect("pre-scale off is accepted");
    assert!(
        config
            .fork_notes
            .iter()
            .any(|note| note.contains("PRE_SCALE_TARGET_UTILIZATION (Go fork) have no effect"))
    );
}
