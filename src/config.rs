//! Command line and environment: every option is a flag and an env var with NTH's
//! name and default, parsed by clap into [`Args`] and validated into [`Config`].

use std::fmt;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};

use crate::node::TaintEffect;

/// Go's `strconv.ParseBool`, which NTH uses for every boolean flag and env var, so an
/// NTH configuration (`TRUE`, `1`, `f`, …) means the same here.
pub fn parse_go_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        other => Err(format!("'{other}' is not a boolean: use true or false")),
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "spot-guard",
    version,
    about = "Buys replacement capacity for an EC2 spot node that got a rebalance recommendation, then taints, cordons and drains it (AWS Node Termination Handler compatible)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub args: Args,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole flow against in-process simulators of IMDS, both ASGs and the
    /// Kubernetes API, and print the log a user would see in `kubectl logs`.
    Simulate(crate::sim::scenarios::SimulateArgs),
}

/// Env vars of the agent's options that are set but empty. NTH treats an empty
/// value as unset (Helm charts often render `value: ""`), so the caller unsets them
/// before parsing to keep that meaning.
pub fn empty_option_env_vars() -> Vec<String> {
    use clap::CommandFactory;
    Cli::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .filter_map(|name| name.to_str())
        .filter(|name| std::env::var_os(name).is_some_and(|value| value.is_empty()))
        .map(str::to_string)
        .collect()
}

/// The agent's options, with NTH's names. Env vars win over defaults, flags over env.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Name of the Kubernetes node this agent acts on (downward API `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Base URL of the EC2 instance metadata service.
    #[arg(
        long = "metadata-url",
        env = "INSTANCE_METADATA_URL",
        default_value = "http://169.254.169.254"
    )]
    pub metadata_url: String,

    /// Attempts for each IMDS request before the poll is given up.
    #[arg(long, env = "METADATA_TRIES", default_value_t = 3)]
    pub metadata_tries: u32,

    /// Log every action and change nothing: neither the node nor any ASG.
    #[arg(long, env = "DRY_RUN", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub dry_run: bool,
    /// Watch IMDS for rebalance recommendations.
    #[arg(long, env = "ENABLE_REBALANCE_MONITORING", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_rebalance_monitoring: bool,
    /// Drain (not only cordon) on a rebalance recommendation.
    #[arg(long, env = "ENABLE_REBALANCE_DRAINING", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_rebalance_draining: bool,
    /// Watch IMDS for spot interruption notices and drain at once.
    #[arg(long, env = "ENABLE_SPOT_INTERRUPTION_DRAINING", default_value = "true", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_spot_interruption_draining: bool,
    /// Only cordon, never drain.
    #[arg(long, env = "CORDON_ONLY", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub cordon_only: bool,
    /// Taint the node with the event's taint key (always done for rebalance when Spot Guard is on).
    #[arg(long, env = "TAINT_NODE", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub taint_node: bool,

    /// Effect of the taints this agent sets: NoSchedule, PreferNoSchedule or NoExecute.
    #[arg(long, env = "TAINT_EFFECT", default_value = "NoSchedule")]
    pub taint_effect: String,

    /// Deprecated NTH name of --delete-emptydir-data; either set to false keeps emptyDir pods.
    #[arg(long, env = "DELETE_LOCAL_DATA", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub delete_local_data: Option<bool>,

    /// Evict pods that use emptyDir volumes (their data is lost).
    #[arg(long, env = "DELETE_EMPTYDIR_DATA", default_value = "true", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub delete_emptydir_data: bool,
    /// Leave DaemonSet pods in place while draining; when false the drain refuses them.
    #[arg(long, env = "IGNORE_DAEMON_SETS", default_value = "true", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub ignore_daemon_sets: bool,

    /// Grace period in seconds given to each evicted pod; -1 uses each pod's own.
    #[arg(long, env = "POD_TERMINATION_GRACE_PERIOD", default_value_t = -1, allow_negative_numbers = true)]
    pub pod_termination_grace_period: i64,

    /// Seconds the whole drain may take before it gives up and names the pods left.
    #[arg(long, env = "NODE_TERMINATION_GRACE_PERIOD", default_value_t = 120)]
    pub node_termination_grace_period: u64,

    /// Evictions sent at the same time during a drain.
    #[arg(long, env = "DRAIN_CONCURRENCY", default_value_t = 16)]
    pub drain_concurrency: usize,

    /// Log level: trace, debug, info, warn or error.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// One JSON object per log line.
    #[arg(long, env = "JSON_LOGGING", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub json_logging: bool,
    /// Buy replacement capacity (spot ASG, then on-demand) before acting on a rebalance recommendation.
    #[arg(long, env = "ENABLE_SPOT_GUARD", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_spot_guard: bool,

    /// Auto Scaling group of the spot nodes; scaled first.
    #[arg(long = "spot-asg-name", env = "SPOT_ASG_NAME")]
    pub spot_asg_name: Option<String>,

    /// Auto Scaling group of on-demand nodes; scaled when the spot ASG cannot deliver.
    #[arg(long = "on-demand-asg-name", env = "ON_DEMAND_ASG_NAME")]
    pub on_demand_asg_name: Option<String>,

    /// Seconds allowed for reading an ASG and raising its desired capacity (SDK retries included).
    #[arg(long, env = "SPOT_GUARD_SCALE_TIMEOUT", default_value_t = 120)]
    pub spot_guard_scale_timeout: u64,

    /// Seconds to wait for the new instance to reach InService, per ASG.
    #[arg(long, env = "SPOT_GUARD_CAPACITY_CHECK_TIMEOUT", default_value_t = 120)]
    pub spot_guard_capacity_check_timeout: u64,

    /// Seconds between two checks of the ASG while waiting for InService.
    #[arg(long, env = "SPOT_GUARD_CHECK_INTERVAL", default_value_t = 10)]
    pub spot_guard_check_interval: u64,

    /// Attempts per AWS API call (SDK standard retry mode, with back-off on throttling).
    #[arg(long, env = "AWS_API_MAX_ATTEMPTS", default_value_t = 3)]
    pub aws_api_max_attempts: u32,
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node_name: String,
    pub metadata_url: String,
    pub metadata_tries: u32,
    pub dry_run: bool,
    pub enable_rebalance_monitoring: bool,
    pub enable_rebalance_draining: bool,
    pub enable_spot_interruption_draining: bool,
    pub cordon_only: bool,
    pub taint_node: bool,
    pub taint_effect: TaintEffect,
    pub delete_emptydir_data: bool,
    pub ignore_daemon_sets: bool,
    /// `None` leaves each pod its own grace period (NTH's -1).
    pub pod_termination_grace_period: Option<i64>,
    pub node_termination_grace_period: Duration,
    pub drain_concurrency: usize,
    pub log_level: String,
    pub json_logging: bool,
    pub spot_guard: Option<SpotGuardConfig>,
    pub aws_api_max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpotGuardConfig {
    pub spot_asg_name: String,
    pub on_demand_asg_name: String,
    pub scale_timeout: Duration,
    pub capacity_check_timeout: Duration,
    pub check_interval: Duration,
}

/// Every problem found in one pass, so a user fixes them all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

fn non_empty(value: Option<&String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();

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

        let spot_guard = if args.enable_spot_guard {
            spot_guard_config(&args, &mut problems)
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
                pod_termination_grace_period: (args.pod_termination_grace_period >= 0)
                    .then_some(args.pod_termination_grace_period),
                node_termination_grace_period: Duration::from_secs(
                    args.node_termination_grace_period,
                ),
                drain_concurrency: args.drain_concurrency,
                log_level: args.log_level.to_ascii_lowercase(),
                json_logging: args.json_logging,
                spot_guard,
                aws_api_max_attempts: args.aws_api_max_attempts,
            }),
            _ => Err(ConfigError { problems }),
        }
    }
}

fn spot_guard_config(args: &Args, problems: &mut Vec<String>) -> Option<SpotGuardConfig> {
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
    if !args.enable_rebalance_monitoring {
        problems.push(
            "ENABLE_SPOT_GUARD is true but ENABLE_REBALANCE_MONITORING (--enable-rebalance-monitoring) is false: Spot Guard acts on rebalance recommendations".to_string(),
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
    Some(SpotGuardConfig {
        spot_asg_name: spot?,
        on_demand_asg_name: on_demand?,
        scale_timeout: Duration::from_secs(args.spot_guard_scale_timeout),
        capacity_check_timeout: Duration::from_secs(args.spot_guard_capacity_check_timeout),
        check_interval: Duration::from_secs(args.spot_guard_check_interval),
    })
}

impl fmt::Display for Config {
    /// The one start-up line that says what the agent will do; no secrets live here.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node_name={} metadata_url={} metadata_tries={} dry_run={} enable_rebalance_monitoring={} enable_rebalance_draining={} enable_spot_interruption_draining={} cordon_only={} taint_node={} taint_effect={} delete_emptydir_data={} ignore_daemon_sets={} pod_termination_grace_period={} node_termination_grace_period={}s drain_concurrency={} log_level={} json_logging={} aws_api_max_attempts={}",
            self.node_name,
            self.metadata_url,
            self.metadata_tries,
            self.dry_run,
            self.enable_rebalance_monitoring,
            self.enable_rebalance_draining,
            self.enable_spot_interruption_draining,
            self.cordon_only,
            self.taint_node,
            self.taint_effect,
            self.delete_emptydir_data,
            self.ignore_daemon_sets,
            self.pod_termination_grace_period.unwrap_or(-1),
            self.node_termination_grace_period.as_secs(),
            self.drain_concurrency,
            self.log_level,
            self.json_logging,
            self.aws_api_max_attempts,
        )?;
        match &self.spot_guard {
            Some(sg) => write!(
                f,
                " enable_spot_guard=true spot_asg_name={} on_demand_asg_name={} spot_guard_scale_timeout={}s spot_guard_capacity_check_timeout={}s spot_guard_check_interval={}s",
                sg.spot_asg_name,
                sg.on_demand_asg_name,
                sg.scale_timeout.as_secs(),
                sg.capacity_check_timeout.as_secs(),
                sg.check_interval.as_secs()
            ),
            None => write!(f, " enable_spot_guard=false"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Config, String> {
        let mut full = vec!["spot-guard"];
        full.extend_from_slice(argv);
        let cli = Cli::try_parse_from(full).map_err(|e| e.to_string())?;
        Config::try_from(cli.args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_nth() {
        let config = parse(&["--node-name=n1"]).unwrap();
        assert_eq!(config.metadata_url, "http://169.254.169.254");
        assert_eq!(config.metadata_tries, 3);
        assert!(!config.dry_run);
        assert!(!config.enable_rebalance_monitoring);
        assert!(!config.enable_rebalance_draining);
        assert!(config.enable_spot_interruption_draining);
        assert!(!config.cordon_only);
        assert!(!config.taint_node);
        assert_eq!(config.taint_effect, TaintEffect::NoSchedule);
        assert!(config.delete_emptydir_data);
        assert!(config.ignore_daemon_sets);
        assert_eq!(config.pod_termination_grace_period, None);
        assert_eq!(
            config.node_termination_grace_period,
            Duration::from_secs(120)
        );
        assert_eq!(config.spot_guard, None);
    }

    #[test]
    fn spot_guard_takes_nth_style_booleans_and_its_defaults() {
        let config = parse(&[
            "--node-name=n1",
            "--enable-spot-guard=true",
            "--enable-rebalance-monitoring",
            "--spot-asg-name=spot",
            "--on-demand-asg-name=od",
        ])
        .unwrap();
        let sg = config.spot_guard.unwrap();
        assert_eq!(sg.spot_asg_name, "spot");
        assert_eq!(sg.on_demand_asg_name, "od");
        assert_eq!(sg.scale_timeout, Duration::from_secs(120));
        assert_eq!(sg.capacity_check_timeout, Duration::from_secs(120));
        assert_eq!(sg.check_interval, Duration::from_secs(10));
    }

    #[test]
    fn spot_guard_without_its_settings_names_each_missing_one() {
        let message = parse(&["--node-name=n1", "--enable-spot-guard=true"]).unwrap_err();
        assert!(message.contains("SPOT_ASG_NAME"), "{message}");
        assert!(message.contains("ON_DEMAND_ASG_NAME"), "{message}");
        assert!(message.contains("ENABLE_REBALANCE_MONITORING"), "{message}");
    }

    #[test]
    fn same_asg_for_both_is_refused() {
        let message = parse(&[
            "--node-name=n1",
            "--enable-spot-guard=true",
            "--enable-rebalance-monitoring=true",
            "--spot-asg-name=a",
            "--on-demand-asg-name=a",
        ])
        .unwrap_err();
        assert!(message.contains("both 'a'"), "{message}");
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let message = parse(&[
            "--taint-effect=Sometimes",
            "--pod-termination-grace-period=-5",
            "--node-termination-grace-period=0",
            "--log-level=loud",
        ])
        .unwrap_err();
        for setting in [
            "NODE_NAME",
            "TAINT_EFFECT",
            "POD_TERMINATION_GRACE_PERIOD",
            "NODE_TERMINATION_GRACE_PERIOD",
            "LOG_LEVEL",
        ] {
            assert!(
                message.contains(setting),
                "{setting} missing from: {message}"
            );
        }
    }

    #[test]
    fn go_booleans_parse_like_strconv() {
        for yes in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(yes), Ok(true));
        }
        for no in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(no), Ok(false));
        }
        assert!(parse_go_bool("yes").is_err());
        assert!(parse(&["--node-name=n1", "--dry-run=maybe"]).is_err());
    }

    #[test]
    fn deprecated_delete_local_data_false_keeps_emptydir_pods() {
        let config = parse(&["--node-name=n1", "--delete-local-data=false"]).unwrap();
        assert!(!config.delete_emptydir_data);
    }

    #[test]
    fn grace_period_minus_one_means_the_pods_own() {
        let config = parse(&["--node-name=n1", "--pod-termination-grace-period=30"]).unwrap();
        assert_eq!(config.pod_termination_grace_period, Some(30));
    }
}
