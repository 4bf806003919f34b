//! Command line and environment: every option is a flag and an env var with NTH's
//! name and default, parsed by clap into [`Args`] and validated into [`Config`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};

use crate::node::TaintEffect;
use crate::report::{
    DEFAULT_PROBES_ENDPOINT, DEFAULT_PROBES_PORT, DEFAULT_PROMETHEUS_PORT, DEFAULT_WEBHOOK_HEADERS,
    DEFAULT_WEBHOOK_TEMPLATE, ReportSettings, WebhookSettings,
};
use crate::scale_back_flow::ScaleBackSettings;
use crate::spot_guard::FleetSettings;

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

    /// Seconds a Lease on an ASG stays valid without renewal: how long an agent that died
    /// holding it can keep the other nodes' agents from scaling that ASG.
    #[arg(long, env = "SPOT_GUARD_LEASE_DURATION", default_value_t = 15)]
    pub spot_guard_lease_duration: u64,

    /// Instances bought per rebalance recommendation.
    #[arg(long, env = "SPOT_GUARD_SCALE_COUNT", default_value_t = 1)]
    pub spot_guard_scale_count: i32,

    /// Seconds during which, after the spot ASG failed for lack of capacity, recommendations go straight to on-demand (0: off).
    #[arg(long, env = "SPOT_GUARD_CAPACITY_COOL_OFF", default_value_t = 600)]
    pub spot_guard_capacity_cool_off: u64,

    /// After a complete drain, terminate this instance with ShouldDecrementDesiredCapacity (needs autoscaling:TerminateInstanceInAutoScalingGroup).
    #[arg(long, env = "SPOT_GUARD_TERMINATE_AFTER_DRAIN", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub spot_guard_terminate_after_drain: bool,

    /// Seconds a replacement's node is protected from Cluster Autoscaler scale-down (cluster-autoscaler.kubernetes.io/scale-down-disabled), counted from InService (0: off).
    #[arg(long, env = "SPOT_GUARD_NEW_NODE_PROTECTION", default_value_t = 900)]
    pub spot_guard_new_node_protection: u64,

    /// On an on-demand fallback node: give it back (drain, terminate with ShouldDecrementDesiredCapacity) once spot capacity returns (needs autoscaling:TerminateInstanceInAutoScalingGroup, nodes list).
    #[arg(long, env = "SPOT_GUARD_SCALE_BACK", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub spot_guard_scale_back: bool,

    /// Seconds after a fallback was bought before it may be given back.
    #[arg(long, env = "SPOT_GUARD_SCALE_BACK_MIN_WAIT", default_value_t = 600)]
    pub spot_guard_scale_back_min_wait: u64,

    /// Seconds the spot ASG must be healthy (InService >= desired, nodes Ready) before a fallback is given back.
    #[arg(
        long,
        env = "SPOT_GUARD_SCALE_BACK_STABILITY_PERIOD",
        default_value_t = 120
    )]
    pub spot_guard_scale_back_stability_period: u64,

    /// Percent of allocatable CPU and memory the cluster's pod requests may reach without the fallback node (1-100).
    #[arg(
        long,
        env = "SPOT_GUARD_SCALE_BACK_UTILIZATION_CEILING",
        default_value_t = 75
    )]
    pub spot_guard_scale_back_utilization_ceiling: u8,

    /// Seconds between two scale-back checks on a fallback node.
    #[arg(
        long,
        env = "SPOT_GUARD_SCALE_BACK_CHECK_INTERVAL",
        default_value_t = 30
    )]
    pub spot_guard_scale_back_check_interval: u64,

    /// Attempts per AWS API call (SDK standard retry mode, with back-off on throttling).
    #[arg(long, env = "AWS_API_MAX_ATTEMPTS", default_value_t = 3)]
    pub aws_api_max_attempts: u32,

    /// Cordon and drain on EC2 scheduled maintenance events.
    #[arg(long, env = "ENABLE_SCHEDULED_EVENT_DRAINING", default_value = "true", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_scheduled_event_draining: bool,

    /// Cordon and drain when the ASG target lifecycle state becomes Terminated.
    #[arg(long, env = "ENABLE_ASG_LIFECYCLE_DRAINING", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_asg_lifecycle_draining: bool,

    /// After a complete drain, taint the node node.kubernetes.io/out-of-service (NoExecute).
    #[arg(long, env = "ENABLE_OUT_OF_SERVICE_TAINT", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_out_of_service_taint: bool,

    /// Label the cordoned node node.kubernetes.io/exclude-from-external-load-balancers (removed on uncordon).
    #[arg(long, env = "EXCLUDE_FROM_LOAD_BALANCERS", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub exclude_from_load_balancers: bool,

    /// URL that receives a message after each node action (NTH's webhook; may carry secrets, never logged).
    #[arg(long, env = "WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// JSON object of HTTP headers for webhook posts.
    #[arg(long, env = "WEBHOOK_HEADERS", default_value = DEFAULT_WEBHOOK_HEADERS, hide_default_value = true)]
    pub webhook_headers: String,

    /// Go text/template of the webhook body, with NTH's fields ({{ .EventID }}, {{ .Kind }}, …).
    #[arg(long, env = "WEBHOOK_TEMPLATE", default_value = DEFAULT_WEBHOOK_TEMPLATE, hide_default_value = true)]
    pub webhook_template: String,

    /// File holding the webhook template; replaces WEBHOOK_TEMPLATE.
    #[arg(long, env = "WEBHOOK_TEMPLATE_FILE")]
    pub webhook_template_file: Option<PathBuf>,

    /// HTTP(S) proxy for webhook posts.
    #[arg(long, env = "WEBHOOK_PROXY")]
    pub webhook_proxy: Option<String>,

    /// Record Kubernetes events on the node for every notice and action.
    #[arg(long, env = "EMIT_KUBERNETES_EVENTS", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub emit_kubernetes_events: bool,

    /// Extra annotations for those events: key=value,key2=value2.
    #[arg(long, env = "KUBERNETES_EVENTS_EXTRA_ANNOTATIONS", default_value = "")]
    pub kubernetes_events_extra_annotations: String,

    /// Serve Prometheus metrics on /metrics.
    #[arg(long, env = "ENABLE_PROMETHEUS_SERVER", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_prometheus_server: bool,

    /// Port of the metrics server.
    #[arg(long, env = "PROMETHEUS_SERVER_PORT", default_value_t = DEFAULT_PROMETHEUS_PORT)]
    pub prometheus_server_port: u16,

    /// Serve a liveness probe that fails when the IMDS monitor stops polling.
    #[arg(long, env = "ENABLE_PROBES_SERVER", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_probes_server: bool,

    /// Port of the probes server.
    #[arg(long, env = "PROBES_SERVER_PORT", default_value_t = DEFAULT_PROBES_PORT)]
    pub probes_server_port: u16,

    /// Path of the liveness probe.
    #[arg(long, env = "PROBES_SERVER_ENDPOINT", default_value = DEFAULT_PROBES_ENDPOINT)]
    pub probes_server_endpoint: String,

    /// Without Spot Guard: seconds after a rebalance recommendation after which, if it has left IMDS and no interruption came, the node is uncordoned and untainted; 0 keeps NTH's behaviour (stay cordoned).
    #[arg(long, env = "REBALANCE_UNCORDON_WINDOW", default_value_t = 0)]
    pub rebalance_uncordon_window: u64,

    /// Deprecated NTH name of --pod-termination-grace-period; the newer name wins when both are set.
    #[arg(long, env = "GRACE_PERIOD", allow_negative_numbers = true)]
    pub grace_period: Option<i64>,

    /// File holding the system uptime in /proc/uptime format (to tell whether the node rebooted).
    #[arg(long, env = "UPTIME_FROM_FILE", default_value = "/proc/uptime")]
    pub uptime_from_file: String,

    /// Kubernetes API queries per second (accepted for NTH compatibility; see docs).
    #[arg(long, env = "KUBE_API_QPS", default_value_t = 5.0)]
    pub kube_api_qps: f64,

    /// Kubernetes API burst (accepted for NTH compatibility; see docs).
    #[arg(long, env = "KUBE_API_BURST", default_value_t = 10)]
    pub kube_api_burst: u32,

    /// NTH's event workers; events on one node are handled in order here, so this is only checked.
    #[arg(long, env = "WORKERS", default_value_t = 10)]
    pub workers: u32,

    /// NTH's log format version (1 or 2); spot-guard has one format, so this is only checked.
    #[arg(long, env = "LOG_FORMAT_VERSION", default_value_t = 1)]
    pub log_format_version: u32,

    /// Name of this agent's pod (downward API), so a drain never evicts the agent itself.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Namespace of this agent's pod (downward API).
    #[arg(long = "pod-namespace", env = "NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// NTH's queue-processor mode is not available in a node-local agent: refused when true.
    #[arg(long, env = "ENABLE_SQS_TERMINATION_DRAINING", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_sqs_termination_draining: bool,

    /// NTH queue-processor setting: refused when set.
    #[arg(long, env = "QUEUE_URL", hide = true)]
    pub queue_url: Option<String>,

    /// NTH queue-processor setting, ignored in IMDS mode as NTH does (a warning says so).
    #[arg(long, env = "CHECK_ASG_TAG_BEFORE_DRAINING", hide = true)]
    pub check_asg_tag_before_draining: Option<String>,

    /// NTH queue-processor setting, ignored in IMDS mode as NTH does (a warning says so).
    #[arg(long, env = "CHECK_TAG_BEFORE_DRAINING", hide = true)]
    pub check_tag_before_draining: Option<String>,

    /// NTH queue-processor setting, ignored in IMDS mode as NTH does (a warning says so).
    #[arg(long, env = "MANAGED_ASG_TAG", hide = true)]
    pub managed_asg_tag: Option<String>,

    /// NTH queue-processor setting, ignored in IMDS mode as NTH does (a warning says so).
    #[arg(long, env = "MANAGED_TAG", hide = true)]
    pub managed_tag: Option<String>,

    /// NTH queue-processor setting, ignored in IMDS mode as NTH does (a warning says so).
    #[arg(long, env = "USE_PROVIDER_ID", hide = true)]
    pub use_provider_id: Option<String>,

    /// NTH queue-processor setting, ignored in IMDS mode as NTH does (a warning says so).
    #[arg(long, env = "AWS_ENDPOINT", hide = true)]
    pub aws_endpoint: Option<String>,

    /// NTH queue-processor setting, ignored in IMDS mode as NTH does (a warning says so).
    #[arg(long, env = "DELETE_SQS_MSG_IF_NODE_NOT_FOUND", hide = true)]
    pub delete_sqs_msg_if_node_not_found: Option<String>,

    /// NTH queue-processor setting, ignored in IMDS mode as NTH does (a warning says so).
    #[arg(long, env = "HEARTBEAT_INTERVAL", hide = true)]
    pub heartbeat_interval: Option<String>,

    /// NTH queue-processor setting, ignored in IMDS mode as NTH does (a warning says so).
    #[arg(long, env = "HEARTBEAT_UNTIL", hide = true)]
    pub heartbeat_until: Option<String>,

    /// NTH queue-processor setting, ignored in IMDS mode as NTH does (a warning says so).
    #[arg(long, env = "SQS_MSG_VISIBILITY_TIMEOUT_SEC", hide = true)]
    pub sqs_msg_visibility_timeout_sec: Option<String>,

    /// NTH queue-processor setting, ignored in IMDS mode as NTH does (a warning says so).
    #[arg(long, env = "COMPLETE_LIFECYCLE_ACTION_DELAY_SECONDS", hide = true)]
    pub complete_lifecycle_action_delay_seconds: Option<String>,

    /// NTH queue-processor setting, ignored in IMDS mode as NTH does (a warning says so).
    #[arg(long, env = "USE_APISERVER_CACHE", hide = true)]
    pub use_apiserver_cache: Option<String>,
}

impl Args {
    /// NTH's queue-processor settings that are set: NTH ignores them in IMDS mode too.
    fn queue_only_settings(&self) -> Vec<&'static str> {
        [
            (
                "CHECK_ASG_TAG_BEFORE_DRAINING",
                &self.check_asg_tag_before_draining,
            ),
            ("CHECK_TAG_BEFORE_DRAINING", &self.check_tag_before_draining),
            ("MANAGED_ASG_TAG", &self.managed_asg_tag),
            ("MANAGED_TAG", &self.managed_tag),
            ("USE_PROVIDER_ID", &self.use_provider_id),
            ("AWS_ENDPOINT", &self.aws_endpoint),
            (
                "DELETE_SQS_MSG_IF_NODE_NOT_FOUND",
                &self.delete_sqs_msg_if_node_not_found,
            ),
            ("HEARTBEAT_INTERVAL", &self.heartbeat_interval),
            ("HEARTBEAT_UNTIL", &self.heartbeat_until),
            (
                "SQS_MSG_VISIBILITY_TIMEOUT_SEC",
                &self.sqs_msg_visibility_timeout_sec,
            ),
            (
                "COMPLETE_LIFECYCLE_ACTION_DELAY_SECONDS",
                &self.complete_lifecycle_action_delay_seconds,
            ),
            ("USE_APISERVER_CACHE", &self.use_apiserver_cache),
        ]
        .into_iter()
        .filter(|(_, value)| value.as_deref().is_some_and(|v| !v.trim().is_empty()))
        .map(|(name, _)| name)
        .collect()
    }
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone)]
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
    /// How the agents of all nodes share the ASGs; set when Spot Guard is enabled.
    pub spot_guard_fleet: Option<FleetSettings>,
    pub aws_api_max_attempts: u32,
    pub enable_scheduled_event_draining: bool,
    pub enable_asg_lifecycle_draining: bool,
    pub enable_out_of_service_taint: bool,
    pub exclude_from_load_balancers: bool,
    pub uptime_from_file: String,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    /// Settings given that this agent accepts but does not apply; warned about at start-up.
    pub ignored_settings: Vec<String>,
    pub report: ReportSettings,
    /// `None` keeps NTH's behaviour: a rebalance cordon is never undone.
    pub rebalance_uncordon_window: Option<Duration>,
    pub prometheus_port: Option<u16>,
    pub probes: Option<ProbesServer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbesServer {
    pub port: u16,
    pub endpoint: String,
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
        if args.uptime_from_file.trim().is_empty() {
            problems.push("UPTIME_FROM_FILE (--uptime-from-file) must name a file".to_string());
        }
        let mut ignored_settings: Vec<String> = args
            .queue_only_settings()
            .into_iter()
            .map(|name| format!("{name} (queue-processor mode only)"))
            .collect();
        if args.workers != 10 {
            ignored_settings.push("WORKERS (one node's events are handled in order)".to_string());
        }
        if args.kube_api_qps != 5.0 || args.kube_api_burst != 10 {
            ignored_settings.push(
                "KUBE_API_QPS/KUBE_API_BURST (requests are bounded by DRAIN_CONCURRENCY instead)"
                    .to_string(),
            );
        }

        let report = report_settings(&args);
        if let Err(error) = report.validate() {
            problems.push(error.to_string());
        }
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
            spot_guard_config(&args, &mut problems)
        } else {
            None
        };
        let spot_guard_fleet = if args.enable_spot_guard {
            fleet_settings(&args, &mut problems)
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
                spot_guard_fleet,
                aws_api_max_attempts: args.aws_api_max_attempts,
                enable_scheduled_event_draining: args.enable_scheduled_event_draining,
                enable_asg_lifecycle_draining: args.enable_asg_lifecycle_draining,
                enable_out_of_service_taint: args.enable_out_of_service_taint,
                exclude_from_load_balancers: args.exclude_from_load_balancers,
                uptime_from_file: args.uptime_from_file.trim().to_string(),
                pod_name: non_empty(args.pod_name.as_ref()),
                pod_namespace: non_empty(args.pod_namespace.as_ref()),
                ignored_settings,
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
            }),
            _ => Err(ConfigError { problems }),
        }
    }
}

fn report_settings(args: &Args) -> ReportSettings {
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

fn fleet_settings(args: &Args, problems: &mut Vec<String>) -> Option<FleetSettings> {
    let before = problems.len();
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
    (problems.len() == before).then(|| FleetSettings {
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
        ..FleetSettings::default()
    })
}

impl fmt::Display for Config {
    /// The one start-up line that says what the agent will do. Webhook settings stay
    /// out of it, as in NTH: URLs and headers may carry secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = |d: Duration| format!("{}s", d.as_secs());
        let mut settings: Vec<(&str, String)> = vec![
            ("node_name", self.node_name.clone()),
            ("metadata_url", self.metadata_url.clone()),
            ("metadata_tries", self.metadata_tries.to_string()),
            ("dry_run", self.dry_run.to_string()),
            (
                "enable_rebalance_monitoring",
                self.enable_rebalance_monitoring.to_string(),
            ),
            (
                "enable_rebalance_draining",
                self.enable_rebalance_draining.to_string(),
            ),
            (
                "enable_spot_interruption_draining",
                self.enable_spot_interruption_draining.to_string(),
            ),
            (
                "enable_scheduled_event_draining",
                self.enable_scheduled_event_draining.to_string(),
            ),
            (
                "enable_asg_lifecycle_draining",
                self.enable_asg_lifecycle_draining.to_string(),
            ),
            ("cordon_only", self.cordon_only.to_string()),
            ("taint_node", self.taint_node.to_string()),
            ("taint_effect", self.taint_effect.to_string()),
            (
                "enable_out_of_service_taint",
                self.enable_out_of_service_taint.to_string(),
            ),
            (
                "exclude_from_load_balancers",
                self.exclude_from_load_balancers.to_string(),
            ),
            (
                "delete_emptydir_data",
                self.delete_emptydir_data.to_string(),
            ),
            ("ignore_daemon_sets", self.ignore_daemon_sets.to_string()),
            (
                "pod_termination_grace_period",
                self.pod_termination_grace_period.unwrap_or(-1).to_string(),
            ),
            (
                "node_termination_grace_period",
                seconds(self.node_termination_grace_period),
            ),
            ("drain_concurrency", self.drain_concurrency.to_string()),
            ("uptime_from_file", self.uptime_from_file.clone()),
            ("log_level", self.log_level.clone()),
            ("json_logging", self.json_logging.to_string()),
            (
                "aws_api_max_attempts",
                self.aws_api_max_attempts.to_string(),
            ),
            ("webhook", self.report.webhook.is_some().to_string()),
            (
                "emit_kubernetes_events",
                self.report.emit_kubernetes_events.to_string(),
            ),
            (
                "prometheus_server_port",
                self.prometheus_port
                    .map_or("off".to_string(), |p| p.to_string()),
            ),
            (
                "probes_server",
                self.probes
                    .as_ref()
                    .map_or("off".to_string(), |p| format!("{}{}", p.port, p.endpoint)),
            ),
            ("enable_spot_guard", self.spot_guard.is_some().to_string()),
        ];
        if let Some(sg) = &self.spot_guard {
            settings.extend([
                ("spot_asg_name", sg.spot_asg_name.clone()),
                ("on_demand_asg_name", sg.on_demand_asg_name.clone()),
                ("spot_guard_scale_timeout", seconds(sg.scale_timeout)),
                (
                    "spot_guard_capacity_check_timeout",
                    seconds(sg.capacity_check_timeout),
                ),
                ("spot_guard_check_interval", seconds(sg.check_interval)),
            ]);
        }
        if let Some(fleet) = &self.spot_guard_fleet {
            settings.extend([
                ("spot_guard_lease_namespace", fleet.lease_namespace.clone()),
                ("spot_guard_lease_duration", seconds(fleet.lease_duration)),
                ("spot_guard_scale_count", fleet.scale_count.to_string()),
                (
                    "spot_guard_capacity_cool_off",
                    seconds(fleet.capacity_cool_off),
                ),
                (
                    "spot_guard_terminate_after_drain",
                    fleet.terminate_after_drain.to_string(),
                ),
                (
                    "spot_guard_new_node_protection",
                    seconds(fleet.new_node_protection),
                ),
                (
                    "spot_guard_scale_back",
                    fleet.scale_back.as_ref().map_or("off".to_string(), |sb| {
                        format!(
                            "min_wait={} stability_period={} utilization_ceiling={}% check_interval={}",
                            seconds(sb.min_wait),
                            seconds(sb.stability_period),
                            sb.utilization_ceiling,
                            seconds(sb.check_interval)
                        )
                    }),
                ),
            ]);
        }
        let line: Vec<String> = settings
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        f.write_str(&line.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The least that turns Spot Guard on.
    const SPOT_GUARD_ON: [&str; 5] = [
        "--node-name=n1",
        "--enable-spot-guard=true",
        "--enable-rebalance-monitoring",
        "--spot-asg-name=spot",
        "--on-demand-asg-name=od",
    ];

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
        let config = parse(&SPOT_GUARD_ON).unwrap();
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
    fn fleet_flags_have_defaults_and_are_checked() {
        let base = SPOT_GUARD_ON;
        let fleet = parse(&base).unwrap().spot_guard_fleet.unwrap();
        assert_eq!(fleet.lease_namespace, "kube-system");
        assert_eq!(fleet.lease_duration, Duration::from_secs(15));
        assert_eq!(fleet.scale_count, 1);
        assert_eq!(fleet.capacity_cool_off, Duration::from_secs(600));
        assert!(!fleet.terminate_after_drain);

        let mut custom = base.to_vec();
        custom.extend([
            "--pod-namespace=spot-guard",
            "--spot-guard-scale-count=2",
            "--spot-guard-terminate-after-drain",
        ]);
        let fleet = parse(&custom).unwrap().spot_guard_fleet.unwrap();
        assert_eq!(fleet.lease_namespace, "spot-guard");
        assert_eq!(fleet.scale_count, 2);
        assert!(fleet.terminate_after_drain);

        let mut bad = base.to_vec();
        bad.extend([
            "--spot-guard-scale-count=0",
            "--spot-guard-lease-duration=0",
        ]);
        let message = parse(&bad).unwrap_err();
        assert!(message.contains("SPOT_GUARD_SCALE_COUNT"), "{message}");
        assert!(message.contains("SPOT_GUARD_LEASE_DURATION"), "{message}");
        assert_eq!(parse(&["--node-name=n1"]).unwrap().spot_guard_fleet, None);
    }

    #[test]
    fn scale_back_is_opt_in_with_nth_style_defaults_and_checked_values() {
        let base = SPOT_GUARD_ON;
        let fleet = parse(&base).unwrap().spot_guard_fleet.unwrap();
        assert_eq!(fleet.scale_back, None);
        assert_eq!(fleet.new_node_protection, Duration::from_secs(900));

        let mut on = base.to_vec();
        on.extend([
            "--spot-guard-scale-back",
            "--spot-guard-new-node-protection=0",
        ]);
        let fleet = parse(&on).unwrap().spot_guard_fleet.unwrap();
        assert_eq!(fleet.scale_back, Some(ScaleBackSettings::default()));
        assert_eq!(fleet.new_node_protection, Duration::ZERO);

        let mut bad = on.clone();
        bad.extend([
            "--spot-guard-scale-back-utilization-ceiling=0",
            "--spot-guard-scale-back-check-interval=0",
        ]);
        let message = parse(&bad).unwrap_err();
        assert!(
            message.contains("SPOT_GUARD_SCALE_BACK_UTILIZATION_CEILING"),
            "{message}"
        );
        assert!(
            message.contains("SPOT_GUARD_SCALE_BACK_CHECK_INTERVAL"),
            "{message}"
        );
        let mut over = on.clone();
        over.push("--spot-guard-scale-back-utilization-ceiling=101");
        assert!(parse(&over).unwrap_err().contains("1 to 100"));

        let message = parse(&[
            "--node-name=n1",
            "--spot-guard-scale-back=true",
            "--spot-guard-terminate-after-drain=true",
        ])
        .unwrap_err();
        assert!(
            message.contains("SPOT_GUARD_SCALE_BACK is true but ENABLE_SPOT_GUARD is false"),
            "{message}"
        );
        assert!(
            message.contains("SPOT_GUARD_TERMINATE_AFTER_DRAIN is true"),
            "{message}"
        );
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
    fn queue_processor_mode_is_refused_not_ignored() {
        let message = parse(&[
            "--node-name=n1",
            "--enable-sqs-termination-draining=true",
            "--queue-url=https://sqs.example/q",
        ])
        .unwrap_err();
        assert!(
            message.contains("ENABLE_SQS_TERMINATION_DRAINING"),
            "{message}"
        );
        assert!(message.contains("QUEUE_URL"), "{message}");
    }

    #[test]
    fn queue_only_settings_are_reported_as_ignored() {
        let config = parse(&["--node-name=n1", "--managed-tag=x", "--workers=3"]).unwrap();
        assert!(
            config
                .ignored_settings
                .iter()
                .any(|s| s.starts_with("MANAGED_TAG"))
        );
        assert!(
            config
                .ignored_settings
                .iter()
                .any(|s| s.starts_with("WORKERS"))
        );
    }

    #[test]
    fn deprecated_grace_period_applies_only_without_the_new_name() {
        let old = parse(&["--node-name=n1", "--grace-period=20"]).unwrap();
        assert_eq!(old.pod_termination_grace_period, Some(20));
        let both = parse(&[
            "--node-name=n1",
            "--grace-period=20",
            "--pod-termination-grace-period=40",
        ])
        .unwrap();
        assert_eq!(both.pod_termination_grace_period, Some(40));
    }

    #[test]
    fn bad_webhook_headers_and_probe_path_are_refused_at_start() {
        let message = parse(&[
            "--node-name=n1",
            "--webhook-url=http://127.0.0.1:1/hook",
            "--webhook-headers=not json",
            "--enable-probes-server=true",
            "--probes-server-endpoint=healthz",
        ])
        .unwrap_err();
        assert!(message.contains("WEBHOOK_HEADERS"), "{message}");
        assert!(message.contains("PROBES_SERVER_ENDPOINT"), "{message}");
    }

    #[test]
    fn webhook_url_is_never_in_the_start_up_line() {
        let config = parse(&[
            "--node-name=n1",
            "--webhook-url=https://hooks.example/T0KEN",
        ])
        .unwrap();
        assert!(config.report.webhook.is_some());
        assert!(!config.to_string().contains("T0KEN"));
    }

    #[test]
    fn nth_scheduled_event_default_is_on() {
        let config = parse(&["--node-name=n1"]).unwrap();
        assert!(config.enable_scheduled_event_draining);
        assert!(!config.enable_asg_lifecycle_draining);
    }

    #[test]
    fn grace_period_minus_one_means_the_pods_own() {
        let config = parse(&["--node-name=n1", "--pod-termination-grace-period=30"]).unwrap();
        assert_eq!(config.pod_termination_grace_period, Some(30));
    }
}
