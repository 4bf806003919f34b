//! [`Reporter`]: the one handle the agent calls to report a step. Each method records its
//! metrics at once and queues its Kubernetes event and webhook post for a background worker,
//! so it never waits on the network and never fails. What each of Spot Guard's steps reports
//! is [`super::spot_guard_steps`]'s.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::ReportError;
use super::ReportSettings;
use super::interruption::{InterruptionEvent, NodeMetadata};
use super::kube_events::{KubeEvents, ReasonedEvent, SharedNode, reason, snapshot};
use super::metrics::Metrics;
use super::webhook::Webhook;
use crate::instance_metadata::InstanceMetadata;

/// Pending reports per sink before new ones are dropped (with a warning): a sink that hangs
/// must not make the agent hold unbounded memory.
const QUEUE_CAPACITY: usize = 256;

/// A node action as NTH counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    /// The notice's taint: NTH's pre-drain task in IMDS mode (`pre-drain`, PreDrain).
    Taint,
    /// Cordon without drain (`cordon`, Cordon); posts the webhook, as NTH does.
    Cordon,
    /// Cordon and drain (`cordon-and-drain`, CordonAndDrain); posts the webhook.
    CordonAndDrain,
    /// Undoing a cordon (`uncordon`, Uncordon).
    Uncordon,
}

impl NodeAction {
    /// NTH's `node_action` label value.
    pub fn label(self) -> &'static str {
        match self {
            NodeAction::Taint => "pre-drain",
            NodeAction::Cordon => "cordon",
            NodeAction::CordonAndDrain => "cordon-and-drain",
            NodeAction::Uncordon => "uncordon",
        }
    }

    fn event(self, error: Option<&str>) -> ReasonedEvent {
        match (self, error) {
            // NTH's messages (pkg/observability/k8s-events.go), word for word.
            (NodeAction::Taint, None) => {
                ReasonedEvent::normal(reason::PRE_DRAIN, "Pre-drain task successfully executed")
            }
            (NodeAction::Taint, Some(error)) => ReasonedEvent::warning(
                reason::PRE_DRAIN_ERROR,
                format!("There was a problem executing the pre-drain task: {error}"),
            ),
            (NodeAction::Cordon, None) => {
                ReasonedEvent::normal(reason::CORDON, "Node successfully cordoned")
            }
            (NodeAction::Cordon, Some(error)) => ReasonedEvent::warning(
                reason::CORDON_ERROR,
                format!("There was a problem while trying to cordon the node: {error}"),
            ),
            (NodeAction::CordonAndDrain, None) => ReasonedEvent::normal(
                reason::CORDON_AND_DRAIN,
                "Node successfully cordoned and drained",
            ),
            (NodeAction::CordonAndDrain, Some(error)) => ReasonedEvent::warning(
                reason::CORDON_AND_DRAIN_ERROR,
                format!("There was a problem while trying to cordon and drain the node: {error}"),
            ),
            (NodeAction::Uncordon, None) => {
                ReasonedEvent::normal(reason::UNCORDON, "Node successfully uncordoned")
            }
            (NodeAction::Uncordon, Some(error)) => ReasonedEvent::warning(
                reason::UNCORDON_ERROR,
                format!("There was a problem while trying to uncordon the node: {error}"),
            ),
        }
    }
}

enum Job<T> {
    Report(T),
    Flush(oneshot::Sender<()>),
}

struct WebhookPost {
    event: InterruptionEvent,
    reason: String,
}

struct Inner {
    node: SharedNode,
    metrics: Option<Metrics>,
    events: Option<mpsc::Sender<Job<ReasonedEvent>>>,
    webhook: Option<mpsc::Sender<Job<WebhookPost>>>,
}

/// Cheap to clone; [`Reporter::default`] reports nothing.
#[derive(Clone, Default)]
pub struct Reporter {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.as_deref();
        f.debug_struct("Reporter")
            .field(
                "metrics",
                &inner.is_some_and(|inner| inner.metrics.is_some()),
            )
            .field(
                "kubernetes_events",
                &inner.is_some_and(|inner| inner.events.is_some()),
            )
            .field(
                "webhook",
                &inner.is_some_and(|inner| inner.webhook.is_some()),
            )
            .finish()
    }
}

impl Reporter {
    /// Starts the background workers for the configured sinks; must run inside a Tokio
    /// runtime. `kube` is needed only when EMIT_KUBERNETES_EVENTS is on.
    pub fn start(
        settings: &ReportSettings,
        node: NodeMetadata,
        kube: Option<kube::Client>,
    ) -> Result<Self, ReportError> {
        let webhook = settings.webhook.as_ref().map(Webhook::new).transpose()?;
        let events = if settings.emit_kubernetes_events {
            let client = kube.ok_or(ReportError::NoKubeClient)?;
            Some(KubeEvents::new(
                client,
                node.clone(),
                &settings.kubernetes_events_extra_annotations,
            )?)
        } else {
            None
        };
        let metrics = settings.metrics.then(Metrics::new);
        Ok(Self::with_sinks(node, webhook, events, metrics))
    }

    /// [`Reporter::start`] with sinks built by the caller.
    pub fn with_sinks(
        node: NodeMetadata,
        webhook: Option<Webhook>,
        events: Option<KubeEvents>,
        metrics: Option<Metrics>,
    ) -> Self {
        let node: SharedNode = Arc::new(RwLock::new(node));
        let events = events.map(|events| {
            let events = events.share_node(Arc::clone(&node));
            let metrics = metrics.clone();
            spawn_worker(move |event: ReasonedEvent| {
                let events = events.clone();
                let metrics = metrics.clone();
                async move {
                    if let Err(error) = events.emit(&event).await {
                        warn!("Kubernetes event not written: {error}");
                        if let Some(metrics) = &metrics {
                            metrics.report_error("kubernetes_events");
                        }
                    }
                }
            })
        });
        let webhook = webhook.map(|webhook| {
            let metrics = metrics.clone();
            let node = Arc::clone(&node);
            spawn_worker(move |post: WebhookPost| {
                let webhook = webhook.clone();
                let metrics = metrics.clone();
                let node = snapshot(&node);
                async move {
                    if let Err(error) = webhook.post(&node, &post.event, &post.reason).await {
                        warn!("Webhook notification not sent: {error}");
                        if let Some(metrics) = &metrics {
                            metrics.report_error("webhook");
                        }
                    }
                }
            })
        });
        Reporter {
            inner: Some(Arc::new(Inner {
                node,
                metrics,
                events,
                webhook,
            })),
        }
    }

    /// The instance IMDS described, for every report from now on (read late when IMDS did
    /// not answer at start-up).
    pub fn set_instance(&self, instance: &InstanceMetadata) {
        if let Some(inner) = &self.inner {
            let mut node = inner.node.write().unwrap_or_else(PoisonError::into_inner);
            node.instance = instance.clone();
        }
    }

    /// The metrics to serve, when ENABLE_PROMETHEUS_SERVER is on.
    pub fn metrics(&self) -> Option<Metrics> {
        self.inner.as_ref()?.metrics.clone()
    }

    /// A new notice is being handled: NTH's event with the reason for its kind.
    pub fn notice_received(&self, event: &InterruptionEvent) {
        self.emit(ReasonedEvent::normal(
            reason::for_kind(&event.kind),
            event.description.clone(),
        ));
    }

    /// Polling `monitor` (one of [`super::monitor_kind`]) failed: `events_error_total` and a
    /// MonitorError event, as NTH reports every failed poll.
    pub fn monitor_error(&self, monitor: &str) {
        if let Some(metrics) = self.metrics_ref() {
            metrics.event_error(monitor);
        }
        // NTH's message names only the monitor; the error is in the agent's log.
        self.emit(ReasonedEvent::warning(
            reason::MONITOR_ERROR,
            format!("There was a problem monitoring for events in monitor '{monitor}'"),
        ));
    }

    /// A node action finished: NTH's `actions_total` and `actions_node_total`, the event
    /// with NTH's reason, and, after [`NodeAction::Cordon`] or [`NodeAction::CordonAndDrain`],
    /// the webhook post for `event` (whatever the result, as NTH does).
    pub fn node_action(
        &self,
        event: &InterruptionEvent,
        action: NodeAction,
        result: Result<(), &str>,
    ) {
        let Some(inner) = &self.inner else {
            return;
        };
        if let Some(metrics) = &inner.metrics {
            metrics.node_action(
                action.label(),
                &snapshot(&inner.node).node_name,
                &event.event_id,
                result.is_ok(),
            );
        }
        self.emit(action.event(result.err()));
        if matches!(action, NodeAction::Cordon | NodeAction::CordonAndDrain) {
            self.post(event.clone(), "");
        }
    }

    /// A drain ended after `duration`: `complete` when every pod left, `incomplete` when some
    /// stayed at the deadline, `failed` when it could not run.
    pub fn drain_finished(&self, outcome: &str, duration: Duration) {
        if let Some(metrics) = self.metrics_ref() {
            metrics.drain(outcome, duration);
        }
    }

    /// Evictions retried because a PodDisruptionBudget refused them.
    pub fn pdb_eviction_retries(&self, count: u64) {
        if let Some(metrics) = self.metrics_ref().filter(|_| count > 0) {
            metrics.pdb_eviction_retries(count);
        }
    }

    /// Waits until every report queued so far has been delivered or given up, or `timeout`;
    /// false on timeout. For shutdown (let the last webhook out) and tests.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        let events = flush_one(inner.events.as_ref());
        let webhook = flush_one(inner.webhook.as_ref());
        tokio::time::timeout(timeout, async { tokio::join!(events, webhook) })
            .await
            .is_ok()
    }

    pub(super) fn metrics_ref(&self) -> Option<&Metrics> {
        self.inner.as_ref()?.metrics.as_ref()
    }

    pub(super) fn emit(&self, event: ReasonedEvent) {
        if let Some(queue) = self.inner.as_ref().and_then(|inner| inner.events.as_ref()) {
            enqueue(queue, "Kubernetes event", event);
        }
    }

    pub(super) fn post(&self, event: InterruptionEvent, reason: &str) {
        if let Some(queue) = self.inner.as_ref().and_then(|inner| inner.webhook.as_ref()) {
            let reason = reason.to_owned();
            enqueue(queue, "webhook notification", WebhookPost { event, reason });
        }
    }
}

fn enqueue<T>(queue: &mpsc::Sender<Job<T>>, what: &str, item: T) {
    if let Err(error) = queue.try_send(Job::Report(item)) {
        warn!(
            "Dropping a {what}: its queue is {}",
            match error {
                mpsc::error::TrySendError::Full(_) => "full (the receiver is slow or down)",
                mpsc::error::TrySendError::Closed(_) => "closed",
            }
        );
    }
}

async fn flush_one<T>(queue: Option<&mpsc::Sender<Job<T>>>) {
    let Some(queue) = queue else {
        return;
    };
    let (done, wait) = oneshot::channel();
    if queue.send(Job::Flush(done)).await.is_ok() {
        let _ = wait.await;
    }
}

/// One worker per sink keeps that sink's reports in order; it ends with the last Reporter.
fn spawn_worker<T, F, Fut>(mut deliver: F) -> mpsc::Sender<Job<T>>
where
    T: Send + 'static,
    F: FnMut(T) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (sender, mut receiver) = mpsc::channel::<Job<T>>(QUEUE_CAPACITY);
    tokio::spawn(async move {
        while let Some(job) = receiver.recv().await {
            match job {
                Job::Report(item) => deliver(item).await,
                Job::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
    sender
}
