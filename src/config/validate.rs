//! [`Args`] → [`Config`]: every problem found in one pass, so a user fixes them all at
//! once.

use std::time::Duration;

use super::args::Args;
use super::{
    Config, ConfigError, PreScaleSettings, ProbesServer, ReportSettings, ScaleBackSettings,
    SpotGuardSettings, TaintEffect, Tuning, WebhookSettings,
};

const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// METADATA_TRIES at most: with the IMDS client's capped back-off, a poll with IMDS gone
/// still ends well within the liveness probe's staleness limit.
pub const MAX_METADATA_TRIES: u32 = 5;

const HOUR: u64 = 3_600;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;

/// Upper bounds, far above any real use: no deadline computed from a setting can
/// overflow a clock, and a value meant in milliseconds is refused instead of meaning
/// "never".
fn check_bounds(args: &Args, problems: &mut Vec<String>) {
    let seconds: [(&str, &str, u64, u64); 14] = [
        (
            "NODE_TERMINATION_GRACE_PERIOD",
            "--node-termination-grace-period",
            args.node_termination_grace_period,
            DAY,
        ),
        (
            "SPOT_GUARD_SCALE_TIMEOUT",
            "--spot-guard-scale-timeout",
            args.spot_guard_scale_timeout,
            DAY,
        ),
        (
            "SPOT_GUARD_CAPACITY_CHECK_TIMEOUT",
            "--spot-guard-capacity-check-timeout",
            args.spot_guard_capacity_check_timeout,
            DAY,
        ),
        (
            "SPOT_GUARD_CHECK_INTERVAL",
            "--spot-guard-check-interval",
            args.spot_guard_check_interval,
            HOUR,
        ),
        (
            "SPOT_GUARD_NODE_READY_TIMEOUT",
            "--spot-guard-node-ready-timeout",
            args.spot_guard_node_ready_timeout,
            DAY,
        ),
        (
            "SPOT_GUARD_LEASE_DURATION",
            "--spot-guard-lease-duration",
            args.spot_guard_lease_duration,
            HOUR,
        ),
        (
            "SPOT_GUARD_CAPACITY_COOL_OFF",
            "--spot-guard-capacity-cool-off",
            args.spot_guard_capacity_cool_off,
            WEEK,
        ),
        (
            "SPOT_GUARD_NEW_NODE_PROTECTION",
            "--spot-guard-new-node-protection",
            args.spot_guard_new_node_protection,
            WEEK,
        ),
        (
            "SPOT_GUARD_SCALE_BACK_MIN_WAIT",
            "--spot-guard-scale-back-min-wait",
            args.spot_guard_scale_back_min_wait,
            WEEK,
        ),
        (
            "SPOT_GUARD_SCALE_BACK_STABILITY_PERIOD",
            "--spot-guard-scale-back-stability-period",
            args.spot_guard_scale_back_stability_period,
            WEEK,
        ),
        (
            "SPOT_GUARD_SCALE_BACK_CHECK_INTERVAL",
            "--spot-guard-scale-back-check-interval",
            args.spot_guard_scale_back_check_interval,
            HOUR,
        ),
        (
            "REBALANCE_UNCORDON_WINDOW",
            "--rebalance-uncordon-window",
            args.rebalance_uncordon_window,
            WEEK,
        ),
        (
            "POD_TERMINATION_GRACE_PERIOD",
            "--pod-termination-grace-period",
            u64::try_from(args.pod_termination_grace_period).unwrap_or(0),
            DAY,
        ),
        (
            "GRACE_PERIOD",
            "--grace-period",
            args.grace_period
                .and_then(|g| u64::try_from(g).ok())
                .unwrap_or(0),
            DAY,
        ),
    ];
    for (name, flag, value, max) in seconds {
        if value > max {
            problems.push(format!(
                "{name} ({flag}) is {value} seconds: at most {max} ({}) is accepted",
                in_words(max)
            ));
        }
    }
    if args.metadata_tries > MAX_METADATA_TRIES {
        problems.push(format!(
            "METADATA_TRIES (--metadata-tries) is {}: at most {MAX_METADATA_TRIES} is accepted, so that a poll with IMDS gone ends before the liveness probe gives up",
            args.metadata_tries
        ));
    }
}

fn in_words(seconds: u64) -> &'static str {
    match seconds {
        HOUR => "an hour",
        DAY => "a day",
        _ => "a week",
    }
}

fn non_empty(value: Option<&String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(mut args: Args) -> Result<Self, ConfigError> {
        let fork = super::fork::apply(&mut args);
        let mut problems = fork.problems;

        let node_name = non_empty(args.node_name.as_ref());
        if node_name.is_none() {
            problems.push(
                "NODE_NAME (--node-name) is required: the name of the node this agent runs on"
                    .to_string(),
            );
        }
        if args.metadata_url.trim().is_empty() {
            problems.push("INSTANCE_METADATA_URL (--metadata-url) must not be empty".to_string());
        }
        if args.metadata_tries == 0 {
            problems.push("METADATA_TRIES (--metadata-tries) must be at least 1".to_string());
        }
        let taint_effect = match args.taint_effect.parse::<TaintEffect>() {
            Ok(effect) => Some(effect),
            Err(error) => {
                problems.push(format!("TAINT_EFFECT (--taint-effect): {error}"));
                None
            }
        };
        if args.pod_termination_grace_period < -1 {
            problems.push(format!(
                "POD_TERMINATION_GRACE_PERIOD (--pod-termination-grace-period) is {}: use -1 (the pod's own) or seconds ≥ 0",
                args.pod_termination_grace_period
            ));
        }
        if args.node_termination_grace_period == 0 {
            problems.push("NODE_TERMINATION_GRACE_PERIOD (--node-termination-grace-period) must be at least 1 second".to_string());
        }
        if args.drain_concurrency == 0 {
            problems.push("DRAIN_CONCURRENCY (--drain-concurrency) must be at least 1".to_string());
        }
        if !LOG_LEVELS.contains(&args.log_level.to_ascii_lowercase().as_str()) {
            problems.push(format!(
                "LOG_LEVEL (--log-level) is '{}': use one of {}",
                args.log_level,
                LOG_LEVELS.join(", ")
            ));
        }
        if args.aws_api_max_attempts == 0 {
            problems.push(
                "AWS_API_MAX_ATTEMPTS (--aws-api-max-attempts) must be at least 1".to_string(),
            );
        }

        if args.enable_sqs_termination_draining {
            problems.push("ENABLE_SQS_TERMINATION_DRAINING is true: NTH's queue-processor mode is not part of spot-guard, a node-local agent; run NTH's queue processor for that, or set it to false".to_string());
        }
        if non_empty(args.queue_url.as_ref()).is_some() {
            problems.push("QUEUE_URL is set: NTH's queue-processor mode is not part of spot-guard, a node-local agent; unset it".to_string());
        }
        if !matches!(args.log_format_version, 1 | 2) {
            problems.push(format!(
                "LOG_FORMAT_VERSION (--log-format-version) is {}: use 1 or 2",
                args.log_format_version
            ));
        }
        if args.workers == 0 {
            problems.push("WORKERS (--workers) must be at least 1".to_string());
        }
        if args.kube_api_qps.is_nan() || args.kube_api_qps <= 0.0 {
            problems.push(format!(
                "KUBE_API_QPS (--kube-api-qps) is {}: use a number above 0",
                args.kube_api_qps
            ));
        }
        if args.kube_api_burst == 0 {
            problems.push("KUBE_API_BURST (--kube-api-burst) must be at least 1".to_string());
        }
        if let Some(grace) = args.grace_period
            && grace < -1
        {
            problems.push(format!(
                "GRACE_PERIOD (--grace-period) is {grace}: use -1 (the pod's own) or seconds ≥ 0"
            ));
        }
        check_bounds(&args, &mut problems);
        if args.uptime_from_file.trim().is_empty() {
            problems.push("UPTIME_FROM_FILE (--uptime-from-file) must name a file".to_string());
        }
        let mut ignored_settings: Vec<String> = args
            .queue_only_settings()
            .into_iter()
            .map(|name| format!("{name} (queue-processor mode only)"))
            .collect();
        if non_empty(args.use_apiserver_cache.as_ref()).is_some() {
            ignored_settings.push(
                "USE_APISERVER_CACHE (pods are listed with a quorum read, NTH's default)"
                    .to_string(),
            );
        }
        if args.workers != 10 {
            ignored_settings.push("WORKERS (one node's events are handled in order)".to_string());
        }
        if args.kube_api_qps != 5.0 || args.kube_api_burst != 10 {
            ignored_settings.push(
                "KUBE_API_QPS/KUBE_API_BURST (requests are bounded by DRAIN_CONCURRENCY instead)"
                    .to_string(),
            );
        }

        // Whether the webhook can be built is checked by `run::configure`, which knows it.
        let report = report_settings(&args);
        if args.enable_probes_server && !args.probes_server_endpoint.starts_with('/') {
            problems.push(format!(
                "PROBES_SERVER_ENDPOINT (--probes-server-endpoint) is '{}': it must be a path starting with /",
                args.probes_server_endpoint
            ));
        }

        if !args.enable_spot_guard {
            for (set, name) in [
                (
                    args.spot_guard_terminate_after_drain,
                    "SPOT_GUARD_TERMINATE_AFTER_DRAIN",
                ),
                (args.spot_guard_scale_back, "SPOT_GUARD_SCALE_BACK"),
            ] {
                if set {
                    problems.push(format!(
                        "{name} is true but ENABLE_SPOT_GUARD is false: it gives back capacity that Spot Guard bought, so it needs ENABLE_SPOT_GUARD=true"
                    ));
                }
            }
        }
        let spot_guard = if args.enable_spot_guard {
            spot_guard_settings(&args, &mut problems)
        } else {
            None
        };

        match (node_name, taint_effect) {
            (Some(node_name), Some(taint_effect)) if problems.is_empty() => Ok(Config {
                node_name,
                metadata_url: args.metadata_url.trim().to_string(),
                metadata_tries: args.metadata_tries,
                dry_run: args.dry_run,
                enable_rebalance_monitoring: args.enable_rebalance_monitoring,
                enable_rebalance_draining: args.enable_rebalance_draining,
                enable_spot_interruption_draining: args.enable_spot_interruption_draining,
                cordon_only: args.cordon_only,
                taint_node: args.taint_node,
                taint_effect,
                // NTH renamed DELETE_LOCAL_DATA; either name set to false keeps emptyDir pods.
                delete_emptydir_data: args.delete_emptydir_data
                    && args.delete_local_data.unwrap_or(true),
                ignore_daemon_sets: args.ignore_daemon_sets,
                pod_termination_grace_period: pod_grace_period(&args),
                node_termination_grace_period: Duration::from_secs(
                    args.node_termination_grace_period,
                ),
                drain_concurrency: args.drain_concurrency,
                log_level: args.log_level.to_ascii_lowercase(),
                json_logging: args.json_logging,
                spot_guard,
                aws_api_max_attempts: args.aws_api_max_attempts,
                enable_scheduled_event_draining: args.enable_scheduled_event_draining,
                enable_asg_lifecycle_draining: args.enable_asg_lifecycle_draining,
                enable_out_of_service_taint: args.enable_out_of_service_taint,
                exclude_from_load_balancers: args.exclude_from_load_balancers,
                uptime_from_file: args.uptime_from_file.trim().to_string(),
                pod_name: non_empty(args.pod_name.as_ref()),
                pod_namespace: non_empty(args.pod_namespace.as_ref()),
                ignored_settings,
                fork_notes: fork.notes,
                report,
                rebalance_uncordon_window: (args.rebalance_uncordon_window > 0)
                    .then(|| Duration::from_secs(args.rebalance_uncordon_window)),
                prometheus_port: args
                    .enable_prometheus_server
                    .then_some(args.prometheus_server_port),
                probes: args.enable_probes_server.then(|| ProbesServer {
                    port: args.probes_server_port,
                    endpoint: args.probes_server_endpoint.clone(),
                }),
                tuning: Tuning::default(),
            }),
            _ => Err(ConfigError { problems }),
        }
    }
}

/// The reporting settings of `args`, NTH's names.
pub fn report_settings(args: &Args) -> ReportSettings {
    ReportSettings {
        webhook: non_empty(args.webhook_url.as_ref()).map(|url| WebhookSettings {
            headers: args.webhook_headers.clone(),
            template: args.webhook_template.clone(),
            template_file: args.webhook_template_file.clone(),
            proxy: non_empty(args.webhook_proxy.as_ref()),
            ..WebhookSettings::new(url)
        }),
        emit_kubernetes_events: args.emit_kubernetes_events,
        kubernetes_events_extra_annotations: args.kubernetes_events_extra_annotations.clone(),
        metrics: args.enable_prometheus_server,
    }
}

/// POD_TERMINATION_GRACE_PERIOD, or NTH's deprecated GRACE_PERIOD when only that is set;
/// `None` (from -1) leaves each pod its own.
fn pod_grace_period(args: &Args) -> Option<i64> {
    let seconds = match args.grace_period {
        Some(deprecated) if args.pod_termination_grace_period == -1 => deprecated,
        _ => args.pod_termination_grace_period,
    };
    (seconds >= 0).then_some(seconds)
}

fn spot_guard_settings(args: &Args, problems: &mut Vec<String>) -> Option<SpotGuardSettings> {
    let before = problems.len();
    let spot = non_empty(args.spot_asg_name.as_ref());
    let on_demand = non_empty(args.on_demand_asg_name.as_ref());
    if spot.is_none() {
        problems.push(
            "ENABLE_SPOT_GUARD is true but SPOT_ASG_NAME (--spot-asg-name) is not set".to_string(),
        );
    }
    if on_demand.is_none() {
        problems.push(
            "ENABLE_SPOT_GUARD is true but ON_DEMAND_ASG_NAME (--on-demand-asg-name) is not set"
                .to_string(),
        );
    }
    // NTH watches rebalance recommendations when either flag is set.
    if !args.enable_rebalance_monitoring && !args.enable_rebalance_draining {
        problems.push(
            "ENABLE_SPOT_GUARD is true but neither ENABLE_REBALANCE_MONITORING nor ENABLE_REBALANCE_DRAINING is true: Spot Guard acts on rebalance recommendations, which are watched when either is set".to_string(),
        );
    }
    if let (Some(spot), Some(on_demand)) = (&spot, &on_demand)
        && spot == on_demand
    {
        problems.push(format!(
            "SPOT_ASG_NAME and ON_DEMAND_ASG_NAME are both '{spot}': the fallback must be a different ASG"
        ));
    }
    for (name, seconds) in [
        (
            "SPOT_GUARD_SCALE_TIMEOUT (--spot-guard-scale-timeout)",
            args.spot_guard_scale_timeout,
        ),
        (
            "SPOT_GUARD_CAPACITY_CHECK_TIMEOUT (--spot-guard-capacity-check-timeout)",
            args.spot_guard_capacity_check_timeout,
        ),
        (
            "SPOT_GUARD_CHECK_INTERVAL (--spot-guard-check-interval)",
            args.spot_guard_check_interval,
        ),
    ] {
        if seconds == 0 {
            problems.push(format!("{name} must be at least 1 second"));
        }
    }
    if args.spot_guard_lease_duration == 0 {
        problems.push(
            "SPOT_GUARD_LEASE_DURATION (--spot-guard-lease-duration) must be at least 1 second"
                .to_string(),
        );
    }
    if args.spot_guard_scale_count < 1 {
        problems.push(format!(
            "SPOT_GUARD_SCALE_COUNT (--spot-guard-scale-count) is {}: it must be at least 1",
            args.spot_guard_scale_count
        ));
    }
    if args.spot_guard_scale_back {
        if !(1..=100).contains(&args.spot_guard_scale_back_utilization_ceiling) {
            problems.push(format!(
                "SPOT_GUARD_SCALE_BACK_UTILIZATION_CEILING (--spot-guard-scale-back-utilization-ceiling) is {}: it must be a percentage from 1 to 100",
                args.spot_guard_scale_back_utilization_ceiling
            ));
        }
        if args.spot_guard_scale_back_check_interval == 0 {
            problems.push(
                "SPOT_GUARD_SCALE_BACK_CHECK_INTERVAL (--spot-guard-scale-back-check-interval) must be at least 1 second"
                    .to_string(),
            );
        }
    }
    if args.spot_guard_pre_scale {
        let ceiling = args.spot_guard_scale_back_utilization_ceiling;
        let target = args.spot_guard_pre_scale_target_utilization;
        let fallback = args.spot_guard_pre_scale_fallback_threshold;
        if !args.spot_guard_scale_back {
            problems.push(
                "SPOT_GUARD_PRE_SCALE is true but SPOT_GUARD_SCALE_BACK is false: pre-scale is a step of scale-back"
                    .to_string(),
            );
        }
        if target == 0 || target >= ceiling {
            problems.push(format!(
                "SPOT_GUARD_PRE_SCALE_TARGET_UTILIZATION (--spot-guard-pre-scale-target-utilization) is {target}: it must be a percentage from 1 to below SPOT_GUARD_SCALE_BACK_UTILIZATION_CEILING ({ceiling})"
            ));
        }
        if fallback != 0 && !(ceiling..=100).contains(&fallback) {
            problems.push(format!(
                "SPOT_GUARD_PRE_SCALE_FALLBACK_THRESHOLD (--spot-guard-pre-scale-fallback-threshold) is {fallback}: it must be 0 (keep the fallback) or a percentage from SPOT_GUARD_SCALE_BACK_UTILIZATION_CEILING ({ceiling}) to 100"
            ));
        }
    }
    let spot_asg_name = spot?;
    let on_demand_asg_name = on_demand?;
    (problems.len() == before).then(|| SpotGuardSettings {
        scale_timeout: Duration::from_secs(args.spot_guard_scale_timeout),
        capacity_check_timeout: Duration::from_secs(args.spot_guard_capacity_check_timeout),
        check_interval: Duration::from_secs(args.spot_guard_check_interval),
        node_ready_timeout: Duration::from_secs(args.spot_guard_node_ready_timeout),
        lease_namespace: non_empty(args.pod_namespace.as_ref())
            .unwrap_or_else(|| "kube-system".to_string()),
        lease_duration: Duration::from_secs(args.spot_guard_lease_duration),
        scale_count: args.spot_guard_scale_count,
        capacity_cool_off: Duration::from_secs(args.spot_guard_capacity_cool_off),
        terminate_after_drain: args.spot_guard_terminate_after_drain,
        new_node_protection: Duration::from_secs(args.spot_guard_new_node_protection),
        scale_back: args.spot_guard_scale_back.then(|| ScaleBackSettings {
            min_wait: Duration::from_secs(args.spot_guard_scale_back_min_wait),
            stability_period: Duration::from_secs(args.spot_guard_scale_back_stability_period),
            utilization_ceiling: args.spot_guard_scale_back_utilization_ceiling,
            check_interval: Duration::from_secs(args.spot_guard_scale_back_check_interval),
        }),
        pre_scale: args.spot_guard_pre_scale.then(|| PreScaleSettings {
            target_utilization: args.spot_guard_pre_scale_target_utilization,
            safety_buffer: args.spot_guard_pre_scale_safety_buffer,
            timeout: Duration::from_secs(args.spot_guard_pre_scale_timeout),
            fallback_threshold: args.spot_guard_pre_scale_fallback_threshold,
        }),
        ..SpotGuardSettings::new(&spot_asg_name, &on_demand_asg_name)
    })
}
