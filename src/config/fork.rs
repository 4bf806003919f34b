//! The Go Spot Guard fork's settings (BananaSorcery/aws-node-termination-handler,
//! pkg/config/config.go): accepted under their names where they mean what a setting here
//! means, with a note naming the new name; noted as having no effect where nothing here
//! does that; refused where they ask for a feature this agent lacks. Hidden from `--help`.

use clap::ArgAction;

use super::{Args, parse_go_bool};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ForkArgs {
    /// Go fork: SPOT_GUARD_SCALE_BACK_MIN_WAIT.
    #[arg(long, env = "SPOT_GUARD_MINIMUM_WAIT_DURATION", hide = true)]
    pub spot_guard_minimum_wait_duration: Option<u64>,
    /// Go fork: SPOT_GUARD_SCALE_BACK_STABILITY_PERIOD.
    #[arg(long, env = "SPOT_GUARD_SPOT_STABILITY_DURATION", hide = true)]
    pub spot_guard_spot_stability_duration: Option<u64>,
    /// Go fork: SPOT_GUARD_SCALE_BACK_UTILIZATION_CEILING.
    #[arg(long, env = "SPOT_GUARD_MAX_CLUSTER_UTILIZATION", hide = true)]
    pub spot_guard_max_cluster_utilization: Option<u8>,
    /// Go fork: its scale-down drain's timeout.
    #[arg(long, env = "SPOT_GUARD_POD_EVICTION_TIMEOUT", hide = true)]
    pub spot_guard_pod_eviction_timeout: Option<u64>,
    /// Go fork: extra protection time after its scale-down drain.
    #[arg(long, env = "SPOT_GUARD_POD_MIGRATION_BUFFER", hide = true)]
    pub spot_guard_pod_migration_buffer: Option<u64>,
    /// Go fork: clean-up of its in-memory fallback records.
    #[arg(long, env = "SPOT_GUARD_CLEANUP_INTERVAL", hide = true)]
    pub spot_guard_cleanup_interval: Option<u64>,
    /// Go fork: age of its in-memory fallback records.
    #[arg(long, env = "SPOT_GUARD_MAX_EVENT_AGE", hide = true)]
    pub spot_guard_max_event_age: Option<u64>,
    /// Go fork: pre-scale of the spot ASG before an on-demand scale-down.
    #[arg(long, env = "ENABLE_PRE_SCALE", hide = true, value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_pre_scale: Option<bool>,
    #[arg(long, env = "PRE_SCALE_TIMEOUT_SECONDS", hide = true)]
    pub pre_scale_timeout_seconds: Option<String>,
    #[arg(long, env = "PRE_SCALE_TARGET_UTILIZATION", hide = true)]
    pub pre_scale_target_utilization: Option<String>,
    #[arg(long, env = "PRE_SCALE_SAFETY_BUFFER_PERCENT", hide = true)]
    pub pre_scale_safety_buffer_percent: Option<String>,
    #[arg(long, env = "PRE_SCALE_FAILURE_FALLBACK", hide = true)]
    pub pre_scale_failure_fallback: Option<String>,
    #[arg(long, env = "PRE_SCALE_FALLBACK_THRESHOLD", hide = true)]
    pub pre_scale_fallback_threshold: Option<String>,
    #[arg(long, env = "PRE_SCALE_RETRY_BACKOFF_SECONDS", hide = true)]
    pub pre_scale_retry_backoff_seconds: Option<String>,
}

/// What the fork's settings turned into: start-up notes and refusals.
#[derive(Debug, Default)]
pub(super) struct ForkOutcome {
    pub notes: Vec<String>,
    pub problems: Vec<String>,
}

/// Rewrites `args` for the fork's names that mean the same here. A name of ours that still
/// holds its default takes the fork's value; one set to something else wins, as NTH's newer
/// names win over their deprecated ones.
pub(super) fn apply(args: &mut Args) -> ForkOutcome {
    let fork = args.fork.clone();
    let mut outcome = ForkOutcome::default();
    fn alias(
        outcome: &mut ForkOutcome,
        old: &str,
        new: &str,
        value: Option<u64>,
        target: &mut u64,
        default: u64,
    ) {
        let Some(value) = value else { return };
        if *target == default {
            *target = value;
            outcome.notes.push(format!(
                "{old} is the Go fork's name of {new}: using {new}={value}; rename it, the old name is deprecated"
            ));
        } else if *target != value {
            outcome.notes.push(format!(
                "{old}={value} is ignored: {new}={target} is set too and wins"
            ));
        }
    }
    alias(
        &mut outcome,
        "SPOT_GUARD_MINIMUM_WAIT_DURATION",
        "SPOT_GUARD_SCALE_BACK_MIN_WAIT",
        fork.spot_guard_minimum_wait_duration,
        &mut args.spot_guard_scale_back_min_wait,
        600,
    );
    alias(
        &mut outcome,
        "SPOT_GUARD_SPOT_STABILITY_DURATION",
        "SPOT_GUARD_SCALE_BACK_STABILITY_PERIOD",
        fork.spot_guard_spot_stability_duration,
        &mut args.spot_guard_scale_back_stability_period,
        120,
    );
    let mut ceiling = u64::from(args.spot_guard_scale_back_utilization_ceiling);
    alias(
        &mut outcome,
        "SPOT_GUARD_MAX_CLUSTER_UTILIZATION",
        "SPOT_GUARD_SCALE_BACK_UTILIZATION_CEILING",
        fork.spot_guard_max_cluster_utilization.map(u64::from),
        &mut ceiling,
        75,
    );
    // From a u8 and u8 values only: it fits.
    args.spot_guard_scale_back_utilization_ceiling = u8::try_from(ceiling).unwrap_or(u8::MAX);

    let grace = args.node_termination_grace_period;
    for (name, set, why) in [
        (
            "SPOT_GUARD_POD_EVICTION_TIMEOUT",
            fork.spot_guard_pod_eviction_timeout.is_some(),
            format!(
                "a scale-back drain here ends by NODE_TERMINATION_GRACE_PERIOD ({grace} s), as every drain does"
            ),
        ),
        (
            "SPOT_GUARD_POD_MIGRATION_BUFFER",
            fork.spot_guard_pod_migration_buffer.is_some(),
            "replacements are kept from Cluster Autoscaler for SPOT_GUARD_NEW_NODE_PROTECTION"
                .to_owned(),
        ),
        (
            "SPOT_GUARD_CLEANUP_INTERVAL",
            fork.spot_guard_cleanup_interval.is_some(),
            "Spot Guard keeps its records on the Node, where nothing needs cleaning".to_owned(),
        ),
        (
            "SPOT_GUARD_MAX_EVENT_AGE",
            fork.spot_guard_max_event_age.is_some(),
            "Spot Guard keeps its records on the Node, where nothing needs cleaning".to_owned(),
        ),
    ] {
        if set {
            outcome
                .notes
                .push(format!("{name} (Go fork) has no effect: {why}"));
        }
    }

    let pre_scale_set: Vec<&str> = [
        ("PRE_SCALE_TIMEOUT_SECONDS", &fork.pre_scale_timeout_seconds),
        (
            "PRE_SCALE_TARGET_UTILIZATION",
            &fork.pre_scale_target_utilization,
        ),
        (
            "PRE_SCALE_SAFETY_BUFFER_PERCENT",
            &fork.pre_scale_safety_buffer_percent,
        ),
        (
            "PRE_SCALE_FAILURE_FALLBACK",
            &fork.pre_scale_failure_fallback,
        ),
        (
            "PRE_SCALE_FALLBACK_THRESHOLD",
            &fork.pre_scale_fallback_threshold,
        ),
        (
            "PRE_SCALE_RETRY_BACKOFF_SECONDS",
            &fork.pre_scale_retry_backoff_seconds,
        ),
    ]
    .into_iter()
    .filter(|(_, value)| value.as_deref().is_some_and(|v| !v.trim().is_empty()))
    .map(|(name, _)| name)
    .collect();
    if fork.enable_pre_scale == Some(true) && !args.spot_guard_scale_back {
        outcome.notes.push(
            "ENABLE_PRE_SCALE (Go fork) has no effect while SPOT_GUARD_SCALE_BACK is off: pre-scale is a step of giving an on-demand node back; with SPOT_GUARD_SCALE_BACK=true it is SPOT_GUARD_PRE_SCALE".to_owned(),
        );
    } else if fork.enable_pre_scale == Some(true) {
        if !args.spot_guard_pre_scale {
            args.spot_guard_pre_scale = true;
            outcome.notes.push(
                "ENABLE_PRE_SCALE is the Go fork's name of SPOT_GUARD_PRE_SCALE: using SPOT_GUARD_PRE_SCALE=true; rename it, the old name is deprecated".to_owned(),
            );
        }
        let mut problems = Vec::new();
        let mut number = |old: &str, raw: &Option<String>| -> Option<u64> {
            let raw = raw.as_deref().map(str::trim).filter(|v| !v.is_empty())?;
            match raw.parse::<u64>() {
                Ok(value) => Some(value),
                Err(_) => {
                    problems.push(format!(
                        "{old} (Go fork) is '{raw}': it must be a whole number"
                    ));
                    None
                }
            }
        };
        let timeout = number("PRE_SCALE_TIMEOUT_SECONDS", &fork.pre_scale_timeout_seconds);
        let target = number(
            "PRE_SCALE_TARGET_UTILIZATION",
            &fork.pre_scale_target_utilization,
        );
        let buffer = number(
            "PRE_SCALE_SAFETY_BUFFER_PERCENT",
            &fork.pre_scale_safety_buffer_percent,
        );
        let fallback = number(
            "PRE_SCALE_FALLBACK_THRESHOLD",
            &fork.pre_scale_fallback_threshold,
        );
        outcome.problems.extend(problems);
        alias(
            &mut outcome,
            "PRE_SCALE_TIMEOUT_SECONDS",
            "SPOT_GUARD_PRE_SCALE_TIMEOUT",
            timeout,
            &mut args.spot_guard_pre_scale_timeout,
            300,
        );
        for (old, new, value, target, default) in [
            (
                "PRE_SCALE_TARGET_UTILIZATION",
                "SPOT_GUARD_PRE_SCALE_TARGET_UTILIZATION",
                target,
                &mut args.spot_guard_pre_scale_target_utilization,
                65,
            ),
            (
                "PRE_SCALE_SAFETY_BUFFER_PERCENT",
                "SPOT_GUARD_PRE_SCALE_SAFETY_BUFFER",
                buffer,
                &mut args.spot_guard_pre_scale_safety_buffer,
                10,
            ),
            (
                "PRE_SCALE_FALLBACK_THRESHOLD",
                "SPOT_GUARD_PRE_SCALE_FALLBACK_THRESHOLD",
                fallback,
                &mut args.spot_guard_pre_scale_fallback_threshold,
                95,
            ),
        ] {
            let mut wide = u64::from(*target);
            alias(&mut outcome, old, new, value, &mut wide, default);
            // Percentages: anything past 255 is refused by validation as out of range.
            *target = u8::try_from(wide).unwrap_or(u8::MAX);
        }
        for (old, raw, why) in [
            (
                "PRE_SCALE_FAILURE_FALLBACK",
                &fork.pre_scale_failure_fallback,
                "after SPOT_GUARD_PRE_SCALE_TIMEOUT the ceiling becomes SPOT_GUARD_PRE_SCALE_FALLBACK_THRESHOLD, as the fork's increase_threshold does",
            ),
            (
                "PRE_SCALE_RETRY_BACKOFF_SECONDS",
                &fork.pre_scale_retry_backoff_seconds,
                "pre-scale buys once per fallback, recorded on the Node",
            ),
        ] {
            if raw.as_deref().is_some_and(|v| !v.trim().is_empty()) {
                outcome
                    .notes
                    .push(format!("{old} (Go fork) has no effect: {why}"));
            }
        }
    } else if !pre_scale_set.is_empty() {
        outcome.notes.push(format!(
            "{} (Go fork) have no effect: ENABLE_PRE_SCALE is not true",
            pre_scale_set.join(", ")
        ));
    }

    let fork_config = fork.spot_guard_minimum_wait_duration.is_some()
        || fork.spot_guard_spot_stability_duration.is_some()
        || fork.spot_guard_max_cluster_utilization.is_some()
        || fork.spot_guard_pod_eviction_timeout.is_some()
        || fork.spot_guard_pod_migration_buffer.is_some()
        || fork.spot_guard_cleanup_interval.is_some()
        || fork.spot_guard_max_event_age.is_some()
        || fork.enable_pre_scale.is_some()
        || !pre_scale_set.is_empty();
    if fork_config {
        outcome.notes.push(format!(
            "A Go fork configuration is in use: SPOT_GUARD_CHECK_INTERVAL ({} s) here is the pause between checks for the replacement to be InService (default 10 s); the fork's meaning, the pause between scale-down checks (its default 30 s), is SPOT_GUARD_SCALE_BACK_CHECK_INTERVAL ({} s)",
            args.spot_guard_check_interval, args.spot_guard_scale_back_check_interval
        ));
        if args.enable_spot_guard && !args.spot_guard_scale_back {
            outcome.notes.push(
                "The Go fork gave on-demand nodes back with ENABLE_SPOT_GUARD alone; here that is SPOT_GUARD_SCALE_BACK=true, which is off: on-demand fallbacks stay until you turn it on".to_owned(),
            );
        }
    }
    outcome
}
