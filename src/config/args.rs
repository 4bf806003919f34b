//! Command line and environment: every option is a flag and an env var with NTH's
//! name and default, parsed by clap into [`Args`]; [`super::validate`] turns them into
//! a [`super::Config`].

use std::path::PathBuf;

use clap::{ArgAction, Parser};

use super::{
    DEFAULT_PROBES_ENDPOINT, DEFAULT_PROBES_PORT, DEFAULT_PROMETHEUS_PORT, DEFAULT_WEBHOOK_HEADERS,
    DEFAULT_WEBHOOK_TEMPLATE,
};

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
    #[command(flatten)]
    pub args: Args,
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
    /// Watch IMDS for rebalance recommendations (cordon only, unless ENABLE_REBALANCE_DRAINING).
    #[arg(long, env = "ENABLE_REBALANCE_MONITORING", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_rebalance_monitoring: bool,
    /// Drain (not only cordon) on a rebalance recommendation; also watches for them, as NTH does.
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

    /// Seconds to wait, after the replacement is InService, for its Node to be Ready and schedulable in the cluster before the node is tainted and drained (0: do not wait).
    #[arg(long, env = "SPOT_GUARD_NODE_READY_TIMEOUT", default_value_t = 180)]
    pub spot_guard_node_ready_timeout: u64,

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

    /// With SPOT_GUARD_SCALE_BACK: when the cluster would be at or over the ceiling without the fallback, raise the spot ASG first by enough nodes to reach SPOT_GUARD_PRE_SCALE_TARGET_UTILIZATION (once per fallback).
    #[arg(long, env = "SPOT_GUARD_PRE_SCALE", default_value = "false", value_parser = parse_go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub spot_guard_pre_scale: bool,

    /// Percent of allocatable CPU and memory requested, without the fallback, that pre-scale aims for (below the ceiling).
    #[arg(
        long,
        env = "SPOT_GUARD_PRE_SCALE_TARGET_UTILIZATION",
        default_value_t = 65
    )]
    pub spot_guard_pre_scale_target_utilization: u8,

    /// Percent more spot nodes than pre-scale computes, rounded up.
    #[arg(long, env = "SPOT_GUARD_PRE_SCALE_SAFETY_BUFFER", default_value_t = 10)]
    pub spot_guard_pre_scale_safety_buffer: u8,

    /// Seconds the pre-scaled spot nodes have to bring the load under the ceiling before the fallback threshold applies.
    #[arg(long, env = "SPOT_GUARD_PRE_SCALE_TIMEOUT", default_value_t = 300)]
    pub spot_guard_pre_scale_timeout: u64,

    /// After the pre-scale timeout: the utilization ceiling that applies instead (0: keep the fallback).
    #[arg(
        long,
        env = "SPOT_GUARD_PRE_SCALE_FALLBACK_THRESHOLD",
        default_value_t = 95
    )]
    pub spot_guard_pre_scale_fallback_threshold: u8,

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
    #[arg(long, env = "WEBHOOK_URL", hide_env_values = true)]
    pub webhook_url: Option<String>,

    /// JSON object of HTTP headers for webhook posts.
    #[arg(long, env = "WEBHOOK_HEADERS", default_value = DEFAULT_WEBHOOK_HEADERS, hide_default_value = true, hide_env_values = true)]
    pub webhook_headers: String,

    /// Go text/template of the webhook body, with NTH's fields ({{ .EventID }}, {{ .Kind }}, …).
    #[arg(long, env = "WEBHOOK_TEMPLATE", default_value = DEFAULT_WEBHOOK_TEMPLATE, hide_default_value = true)]
    pub webhook_template: String,

    /// File holding the webhook template; replaces WEBHOOK_TEMPLATE.
    #[arg(long, env = "WEBHOOK_TEMPLATE_FILE")]
    pub webhook_template_file: Option<PathBuf>,

    /// HTTP(S) proxy for webhook posts.
    #[arg(long, env = "WEBHOOK_PROXY", hide_env_values = true)]
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

    /// NTH's pod listing from the API server's cache; pods are listed with a quorum read
    /// here, NTH's default (a warning says so).
    #[arg(long, env = "USE_APISERVER_CACHE", hide = true)]
    pub use_apiserver_cache: Option<String>,

    /// The Go Spot Guard fork's settings, under its names.
    #[command(flatten)]
    pub fork: super::fork::ForkArgs,
}

impl Args {
    /// NTH's queue-processor settings that are set: NTH ignores them in IMDS mode too.
    pub(super) fn queue_only_settings(&self) -> Vec<&'static str> {
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
        ]
        .into_iter()
        .filter(|(_, value)| value.as_deref().is_some_and(|v| !v.trim().is_empty()))
        .map(|(name, _)| name)
        .collect()
    }
}
