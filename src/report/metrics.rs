//! Prometheus metrics (ENABLE_PROMETHEUS_SERVER): NTH's counters under the names its
//! OpenTelemetry exporter gives them (`actions_total{node_action,node_status}`,
//! `actions_node_total{…,node_name,node_event_id}`, `events_error_total{event_error_where}`),
//! then Spot Guard's, all prefixed `spot_guard_`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The exposed names (after the exporter's `_total` / `_bucket` suffixes), for docs and tests.
pub mod metric {
    pub const ACTIONS: &str = "actions_total";
    pub const ACTIONS_NODE: &str = "actions_node_total";
    pub const EVENTS_ERROR: &str = "events_error_total";
    pub const REPLACEMENT_SECONDS: &str = "spot_guard_replacement_in_service_seconds";
    pub const NODE_READY_SECONDS: &str = "spot_guard_replacement_node_ready_seconds";
    pub const NODE_NOT_READY: &str = "spot_guard_replacement_node_not_ready_total";
    pub const SCALE_ATTEMPTS: &str = "spot_guard_scale_attempts_total";
    pub const FALLBACKS: &str = "spot_guard_fallbacks_total";
    pub const DRAIN_SECONDS: &str = "spot_guard_drain_duration_seconds";
    pub const PDB_EVICTION_RETRIES: &str = "spot_guard_pdb_eviction_retries_total";
    pub const REPORT_ERRORS: &str = "spot_guard_report_errors_total";
    pub const SCALE_BACKS: &str = "spot_guard_scale_backs_total";
}

/// Notice → replacement InService: spot usually takes one to a few minutes.
const REPLACEMENT_BUCKETS: [f64; 12] = [
    15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0, 450.0, 600.0, 900.0,
];
/// A drain ends by NODE_TERMINATION_GRACE_PERIOD (120 s by default).
const DRAIN_BUCKETS: [f64; 11] = [
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0,
];

/// The instrumentation scope NTH's meter is named after; its OpenTelemetry Prometheus
/// exporter adds it (and an empty version) to every series, and NTH's e2e checks and
/// users' queries match on it.
const OTEL_SCOPE_NAME: &str = "aws.node.termination.handler";

/// NTH's labels come out of its exporter sorted by attribute key, then the scope's; kept in
/// that order so text matches of a scrape (NTH's e2e `grep`) still find the lines.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    node_action: String,
    node_status: String,
    otel_scope_name: &'static str,
    otel_scope_version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionNodeLabels {
    node_action: String,
    node_event_id: String,
    node_name: String,
    node_status: String,
    otel_scope_name: &'static str,
    otel_scope_version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhereLabels {
    event_error_where: String,
    otel_scope_name: &'static str,
    otel_scope_version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AsgLabels {
    asg: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    asg: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    asg: String,
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The metric registry and its families; cheap to clone, every clone records into the same
/// registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    actions: Family<ActionLabels, Counter>,
    actions_node: Family<ActionNodeLabels, Counter>,
    events_error: Family<WhereLabels, Counter>,
    replacement_seconds: HistogramFamily<AsgLabels>,
    node_ready_seconds: HistogramFamily<AsgLabels>,
    node_not_ready: Family<InstanceLabels, Counter>,
    scale_attempts: Family<AttemptLabels, Counter>,
    fallbacks: Family<ReasonLabels, Counter>,
    drain_seconds: HistogramFamily<OutcomeLabels>,
    pdb_eviction_retries: Counter,
    report_errors: Family<SinkLabels, Counter>,
    scale_backs: Family<OutcomeLabels, Counter>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register("actions", "Number of actions", actions.clone());
        let actions_node = Family::<ActionNodeLabels, Counter>::default();
        registry.register(
            "actions_node",
            "Number of actions per node (deprecated in NTH: use actions)",
            actions_node.clone(),
        );
        let events_error = Family::<WhereLabels, Counter>::default();
        registry.register(
            "events_error",
            "Number of errors in events processing",
            events_error.clone(),
        );
        let replacement_seconds: HistogramFamily<AsgLabels> =
            Family::new_with_constructor(|| Histogram::new(REPLACEMENT_BUCKETS));
        registry.register(
            "spot_guard_replacement_in_service_seconds",
            "Time from the rebalance recommendation to the replacement instance InService, by ASG",
            replacement_seconds.clone(),
        );
        let node_ready_seconds: HistogramFamily<AsgLabels> =
            Family::new_with_constructor(|| Histogram::new(REPLACEMENT_BUCKETS));
        registry.register(
            "spot_guard_replacement_node_ready_seconds",
            "Time from the replacement instance InService to its Node Ready and schedulable, by ASG",
            node_ready_seconds.clone(),
        );
        // One series per replacement whose Node never became Ready: a handful per agent.
        let node_not_ready = Family::<InstanceLabels, Counter>::default();
        registry.register(
            "spot_guard_replacement_node_not_ready",
            "Replacements whose Node was not Ready within SPOT_GUARD_NODE_READY_TIMEOUT, by ASG and instance",
            node_not_ready.clone(),
        );
        let scale_attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "spot_guard_scale_attempts",
            "Scale-up attempts by ASG and outcome (in_service, failed, preempted)",
            scale_attempts.clone(),
        );
        let fallbacks = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "spot_guard_fallbacks",
            "Fallbacks from the spot ASG to the on-demand ASG, by reason",
            fallbacks.clone(),
        );
        let scale_backs = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "spot_guard_scale_backs",
            "On-demand fallback nodes given back (terminated) or whose scale-back was given up (aborted)",
            scale_backs.clone(),
        );
        let drain_seconds: HistogramFamily<OutcomeLabels> =
            Family::new_with_constructor(|| Histogram::new(DRAIN_BUCKETS));
        registry.register(
            "spot_guard_drain_duration_seconds",
            "Duration of node drains, by outcome (complete, incomplete, failed)",
            drain_seconds.clone(),
        );
        let pdb_eviction_retries = Counter::default();
        registry.register(
            "spot_guard_pdb_eviction_retries",
            "Evictions retried because a PodDisruptionBudget refused them",
            pdb_eviction_retries.clone(),
        );
        let report_errors = Family::<SinkLabels, Counter>::default();
        registry.register(
            "spot_guard_report_errors",
            "Reports that could not be delivered, by sink (webhook, kubernetes_events)",
            report_errors.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            actions,
            actions_node,
            events_error,
            replacement_seconds,
            node_ready_seconds,
            node_not_ready,
            scale_attempts,
            fallbacks,
            drain_seconds,
            pdb_eviction_retries,
            report_errors,
            scale_backs,
        }
    }

    /// The registry in the OpenMetrics text format (what Prometheus scrapes).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// NTH's `NodeActionsInc`: `action` is NTH's label value (`cordon`, `cordon-and-drain`,
    /// `pre-drain`, `uncordon`).
    pub fn node_action(&self, action: &str, node_name: &str, event_id: &str, success: bool) {
        let status = if success { "success" } else { "error" };
        self.actions
            .get_or_create(&ActionLabels {
                node_action: action.to_owned(),
                node_status: status.to_owned(),
                otel_scope_name: OTEL_SCOPE_NAME,
                otel_scope_version: "",
            })
            .inc();
        self.actions_node
            .get_or_create(&ActionNodeLabels {
                node_action: action.to_owned(),
                node_event_id: event_id.to_owned(),
                node_name: node_name.to_owned(),
                node_status: status.to_owned(),
                otel_scope_name: OTEL_SCOPE_NAME,
                otel_scope_version: "",
            })
            .inc();
    }

    /// NTH's `ErrorEventsInc`: `place` is the failing monitor's kind.
    pub fn event_error(&self, place: &str) {
        self.events_error
            .get_or_create(&WhereLabels {
                event_error_where: place.to_owned(),
                otel_scope_name: OTEL_SCOPE_NAME,
                otel_scope_version: "",
            })
            .inc();
    }

    pub fn replacement_in_service(&self, asg: &str, since_notice: Duration) {
        self.replacement_seconds
            .get_or_create(&AsgLabels {
                asg: asg.to_owned(),
            })
            .observe(since_notice.as_secs_f64());
    }

    pub fn node_ready(&self, asg: &str, since_in_service: Duration) {
        self.node_ready_seconds
            .get_or_create(&AsgLabels {
                asg: asg.to_owned(),
            })
            .observe(since_in_service.as_secs_f64());
    }

    pub fn node_not_ready(&self, asg: &str, instance: &str) {
        self.node_not_ready
            .get_or_create(&InstanceLabels {
                asg: asg.to_owned(),
                instance: instance.to_owned(),
            })
            .inc();
    }

    pub fn scale_attempt(&self, asg: &str, outcome: &str) {
        self.scale_attempts
            .get_or_create(&AttemptLabels {
                asg: asg.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// `terminated` or `aborted`.
    pub fn scale_back(&self, outcome: &str) {
        self.scale_backs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn fallback(&self, reason: &str) {
        self.fallbacks
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn drain(&self, outcome: &str, duration: Duration) {
        self.drain_seconds
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .observe(duration.as_secs_f64());
    }

    pub fn pdb_eviction_retries(&self, count: u64) {
        self.pdb_eviction_retries.inc_by(count);
    }

    pub fn report_error(&self, sink: &str) {
        self.report_errors
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .inc();
    }
}
