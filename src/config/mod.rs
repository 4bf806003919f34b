//! The agent's configuration: [`Args`] (flags and env vars with NTH's names and
//! defaults) validated into [`Config`]. A leaf: it knows nothing of the clients, the
//! agent or the simulators.

mod args;
mod fork;
mod validate;

pub use args::{Args, Cli, empty_option_env_vars, parse_go_bool};
pub use validate::{MAX_METADATA_TRIES, report_settings};

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// NTH's metrics port.
pub const DEFAULT_PROMETHEUS_PORT: u16 = 9092;
/// NTH's probes port and path.
pub const DEFAULT_PROBES_PORT: u16 = 8080;
pub const DEFAULT_PROBES_ENDPOINT: &str = "/healthz";

/// NTH's default WEBHOOK_HEADERS.
pub const DEFAULT_WEBHOOK_HEADERS: &str = r#"{"Content-type":"application/json"}"#;

/// NTH's default WEBHOOK_TEMPLATE, kept identical so existing receivers see the same text.
pub const DEFAULT_WEBHOOK_TEMPLATE: &str = r#"{"text":"[NTH][Instance Interruption] EventID: {{ .EventID }} - Kind: {{ .Kind }} - Instance: {{ .InstanceID }} - Node: {{ .NodeName }} - Description: {{ .Description }} - Start Time: {{ .StartTime }}"}"#;

/// NTH's client timeout for one post.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// The raw settings, as configured. `Debug` shows none of the values that may hold
/// credentials (URL, headers, proxy).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    pub url: String,
    /// A JSON object of header names to string values.
    pub headers: String,
    pub template: String,
    /// When set, its content replaces `template` (NTH's precedence).
    pub template_file: Option<PathBuf>,
    /// An http(s) proxy URL for the posts.
    pub proxy: Option<String>,
    pub timeout: Duration,
}

impl fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &"(not shown)")
            .field("headers", &"(not shown)")
            .field("template", &self.template)
            .field("template_file", &self.template_file)
            .field("proxy", &self.proxy.as_ref().map(|_| "(not shown)"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl WebhookSettings {
    /// NTH's defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        WebhookSettings {
            url: url.into(),
            headers: DEFAULT_WEBHOOK_HEADERS.to_owned(),
            template: DEFAULT_WEBHOOK_TEMPLATE.to_owned(),
            template_file: None,
            proxy: None,
            timeout: DEFAULT_WEBHOOK_TIMEOUT,
        }
    }
}

/// Everything reporting needs from the configuration, under NTH's names.
#[derive(Debug, Clone, Default)]
pub struct ReportSettings {
    /// WEBHOOK_URL, WEBHOOK_HEADERS, WEBHOOK_TEMPLATE(_FILE), WEBHOOK_PROXY; `None` when
    /// WEBHOOK_URL is empty.
    pub webhook: Option<WebhookSettings>,
    /// EMIT_KUBERNETES_EVENTS.
    pub emit_kubernetes_events: bool,
    /// KUBERNETES_EVENTS_EXTRA_ANNOTATIONS, `key=value,key2=value2`.
    pub kubernetes_events_extra_annotations: String,
    /// ENABLE_PROMETHEUS_SERVER: record metrics (the server itself is [`serve_metrics`]).
    pub metrics: bool,
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
    /// Set when ENABLE_SPOT_GUARD is on.
    pub spot_guard: Option<SpotGuardSettings>,
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
    /// What the Go fork's settings became (aliases, no effect, meanings); warned at start-up.
    pub fork_notes: Vec<String>,
    pub report: ReportSettings,
    /// `None` keeps NTH's behaviour: a rebalance cordon is never undone.
    pub rebalance_uncordon_window: Option<Duration>,
    pub prometheus_port: Option<u16>,
    pub probes: Option<ProbesServer>,
    pub tuning: Tuning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbesServer {
    pub port: u16,
    pub endpoint: String,
}

/// Spot Guard's settings (ENABLE_SPOT_GUARD, the ASG names and SPOT_GUARD_*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpotGuardSettings {
    pub spot_asg_name: String,
    pub on_demand_asg_name: String,
    /// Reading an ASG and raising its desired capacity, SDK retries included.
    pub scale_timeout: Duration,
    /// The wait for InService, per ASG, counted from the request.
    pub capacity_check_timeout: Duration,
    pub check_interval: Duration,
    /// After InService, how long to wait for the replacement's Node to be Ready in the
    /// cluster; zero does not wait.
    pub node_ready_timeout: Duration,
    /// The agent's namespace, where the Leases live.
    pub lease_namespace: String,
    pub lease_duration: Duration,
    /// Pause between two tries to take a Lease someone else holds.
    pub lease_retry_interval: Duration,
    /// Instances bought per recommendation.
    pub scale_count: i32,
    /// After a capacity failure of the spot ASG, later recommendations go straight to
    /// on-demand for this long; zero turns the memory off.
    pub capacity_cool_off: Duration,
    /// After a complete drain, terminate this instance with ShouldDecrementDesiredCapacity.
    pub terminate_after_drain: bool,
    /// How long after InService a replacement's node keeps Cluster Autoscaler away;
    /// zero turns the protection off.
    pub new_node_protection: Duration,
    /// Give on-demand fallback nodes back once spot capacity returns.
    pub scale_back: Option<ScaleBackSettings>,
    /// With scale-back: buy spot nodes first when the cluster would be over the ceiling.
    pub pre_scale: Option<PreScaleSettings>,
}

impl SpotGuardSettings {
    /// The defaults of every SPOT_GUARD_* flag, for these two ASGs.
    pub fn new(spot_asg_name: &str, on_demand_asg_name: &str) -> Self {
        SpotGuardSettings {
            spot_asg_name: spot_asg_name.to_owned(),
            on_demand_asg_name: on_demand_asg_name.to_owned(),
            scale_timeout: Duration::from_secs(120),
            capacity_check_timeout: Duration::from_secs(120),
            check_interval: Duration::from_secs(10),
            node_ready_timeout: Duration::from_secs(180),
            lease_namespace: "kube-system".to_owned(),
            lease_duration: Duration::from_secs(15),
            lease_retry_interval: Duration::from_millis(500),
            scale_count: 1,
            capacity_cool_off: Duration::from_secs(600),
            terminate_after_drain: false,
            new_node_protection: Duration::from_secs(900),
            scale_back: None,
            pre_scale: None,
        }
    }
}

/// Scale-back's options (SPOT_GUARD_SCALE_BACK_*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleBackSettings {
    /// Not before this long after the fallback was bought.
    pub min_wait: Duration,
    /// The spot ASG must have been healthy this long without a break.
    pub stability_period: Duration,
    /// Percent of allocatable CPU and memory the cluster's requests may reach without
    /// this node.
    pub utilization_ceiling: u8,
    pub check_interval: Duration,
}

impl Default for ScaleBackSettings {
    fn default() -> Self {
        ScaleBackSettings {
            min_wait: Duration::from_secs(600),
            stability_period: Duration::from_secs(120),
            utilization_ceiling: 75,
            check_interval: Duration::from_secs(30),
        }
    }
}

/// Scale-back's pre-scale (SPOT_GUARD_PRE_SCALE_*): when the cluster would be at or over
/// the utilization ceiling without the fallback, raise the spot ASG by enough nodes to
/// bring it to the target, once per fallback; if that has not done it within the timeout,
/// give the fallback back under the fallback threshold instead of the ceiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreScaleSettings {
    /// Percent of allocatable CPU and memory requested, without the fallback, that the
    /// spot nodes bought should bring the cluster to.
    pub target_utilization: u8,
    /// Percent more nodes than that, rounded up.
    pub safety_buffer: u8,
    /// How long the nodes bought have to come in and bring the load down.
    pub timeout: Duration,
    /// The ceiling after the timeout; 0 keeps the fallback (the fork's `keep_ondemand`).
    pub fallback_threshold: u8,
}

impl Default for PreScaleSettings {
    fn default() -> Self {
        PreScaleSettings {
            target_utilization: 65,
            safety_buffer: 10,
            timeout: Duration::from_secs(300),
            fallback_threshold: 95,
        }
    }
}

/// Pauses that production fixes and no flag sets; the simulators shorten them to run
/// the same agent in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// Between two IMDS polls (NTH: 2 s).
    pub poll_interval: Duration,
    /// Between rounds of evictions refused by a PodDisruptionBudget (NTH: 5 s).
    pub eviction_retry_interval: Duration,
    /// Between checks whether evicted pods are gone.
    pub drain_poll_interval: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            poll_interval: Duration::from_secs(2),
            eviction_retry_interval: Duration::from_secs(5),
            drain_poll_interval: Duration::from_secs(1),
        }
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

impl fmt::Display for TaintEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid taint effect {0:?}: expected one of NoSchedule, PreferNoSchedule, NoExecute")]
pub struct ParseTaintEffectError(String);

impl FromStr for TaintEffect {
    type Err = ParseTaintEffectError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "NoSchedule" => Ok(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Ok(TaintEffect::PreferNoSchedule),
            "NoExecute" => Ok(TaintEffect::NoExecute),
            other => Err(ParseTaintEffectError(other.to_owned())),
        }
    }
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
        if let Some(fleet) = &self.spot_guard {
            settings.extend([
                (
                    "spot_guard_node_ready_timeout",
                    seconds(fleet.node_ready_timeout),
                ),
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
mod tests;
