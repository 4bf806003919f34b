//! Telling people what happened: NTH's webhook, Kubernetes events and Prometheus metrics,
//! plus Spot Guard's own, behind one cheap, cloneable [`Reporter`]; and the metrics and
//! probes HTTP servers.
//!
//! Reporting never blocks or fails the caller: metrics are recorded in place, while
//! Kubernetes events and webhook posts go through a bounded queue to one background worker
//! each (so they keep their order), every request bounded by a timeout, every failure a
//! `warn!` line and a `spot_guard_report_errors_total` count.

mod interruption;
mod kube_events;
mod metrics;
mod probes;
mod reporter;
mod server;
mod spot_guard_steps;
mod template;
mod text_format;
mod webhook;

pub use interruption::{InterruptionEvent, NodeMetadata, kind, monitor_kind};
pub use kube_events::{
    DEFAULT_EVENT_TIMEOUT, EventType, KubeEventError, KubeEvents, NODE_EVENTS_NAMESPACE,
    ReasonedEvent, SOURCE_COMPONENT, parse_extra_annotations, reason,
};
pub use metrics::{Metrics, metric};
pub use probes::{Liveness, ProbeSettings, serve_probes};
pub use reporter::{NodeAction, Reporter};
pub use server::{ServeError, bind, serve_metrics};
pub use spot_guard_steps::{SpotGuardStep, webhook_kind};
pub use template::{TemplateError, WebhookTemplate};
pub use webhook::{Webhook, WebhookError};

use std::path::PathBuf;

pub use crate::config::{
    DEFAULT_PROBES_ENDPOINT, DEFAULT_PROBES_PORT, DEFAULT_PROMETHEUS_PORT, DEFAULT_WEBHOOK_HEADERS,
    DEFAULT_WEBHOOK_TEMPLATE, DEFAULT_WEBHOOK_TIMEOUT, ReportSettings, WebhookSettings,
};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "WEBHOOK_HEADERS must be a JSON object of string values, e.g. {DEFAULT_WEBHOOK_HEADERS}: {reason}"
    )]
    WebhookHeaders { reason: String },
    #[error("reading WEBHOOK_TEMPLATE_FILE {path}: {source}")]
    WebhookTemplateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the webhook template{origin}: {reason}")]
    WebhookTemplateParse { origin: String, reason: String },
    #[error("rendering the webhook template{origin} for an empty event: {reason}")]
    WebhookTemplateRender { origin: String, reason: String },
    /// `url` and `proxy` are redacted to scheme and host: both may carry credentials.
    #[error("WEBHOOK_URL {url} is not a usable http(s) URL: {reason}")]
    WebhookUrl { url: String, reason: String },
    #[error("WEBHOOK_PROXY {proxy} is not a usable proxy URL: {source}")]
    WebhookProxy {
        proxy: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("building the webhook HTTP client: {0}")]
    WebhookClient(#[source] reqwest::Error),
    #[error(
        "KUBERNETES_EVENTS_EXTRA_ANNOTATIONS must be key=value pairs separated by commas; {part:?} is not"
    )]
    ExtraAnnotations { part: String },
    #[error("EMIT_KUBERNETES_EVENTS is on but no Kubernetes client was given to the reporter")]
    NoKubeClient,
    #[error("PROBES_SERVER_ENDPOINT must be a path starting with '/', got {0:?}")]
    ProbesEndpoint(String),
}

impl ReportSettings {
    /// Checks every reporting setting as start-up would use it (headers JSON, template file,
    /// template parse and trial render, proxy, annotations), without starting anything.
    pub fn validate(&self) -> Result<(), ReportError> {
        if let Some(webhook) = &self.webhook {
            Webhook::new(webhook)?;
        }
        if self.emit_kubernetes_events {
            parse_extra_annotations(&self.kubernetes_events_extra_annotations)?;
        }
        Ok(())
    }
}
