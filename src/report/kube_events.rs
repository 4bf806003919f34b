//! Kubernetes events on the Node (EMIT_KUBERNETES_EVENTS): core/v1 Events in the `default`
//! namespace, as NTH writes them, with NTH's reasons and Spot Guard's own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use super::ReportError;
use super::interruption::NodeMetadata;

/// Events about cluster-scoped objects such as Nodes live here (NTH and the kubelet agree).
pub const NODE_EVENTS_NAMESPACE: &str = "default";
/// `source.component` of every event: NTH's, which its docs tell users to select on
/// (`kubectl get events --field-selector source=aws-node-termination-handler`). Legacy-style
/// events (no `eventTime`, so the API server does not ask for `action` and
/// `reportingController`), as client-go's recorder writes them.
pub const SOURCE_COMPONENT: &str = "aws-node-termination-handler";
/// One event POST; the agent never waits longer for the events API.
pub const DEFAULT_EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Event reasons: NTH's, unchanged so existing alerts keep working, then Spot Guard's.
pub mod reason {
    use super::super::interruption::kind;

    pub const REBALANCE_RECOMMENDATION: &str = "RebalanceRecommendation";
    pub const SPOT_INTERRUPTION: &str = "SpotInterruption";
    pub const SCHEDULED_EVENT: &str = "ScheduledEvent";
    pub const ASG_LIFECYCLE: &str = "ASGLifecycle";
    pub const UNKNOWN_INTERRUPTION: &str = "UnknownInterruption";
    pub const MONITOR_ERROR: &str = "MonitorError";
    /// NTH's name for its pre-drain task, which is the taint in IMDS mode.
    pub const PRE_DRAIN: &str = "PreDrain";
    pub const PRE_DRAIN_ERROR: &str = "PreDrainError";
    pub const CORDON: &str = "Cordon";
    pub const CORDON_ERROR: &str = "CordonError";
    pub const CORDON_AND_DRAIN: &str = "CordonAndDrain";
    pub const CORDON_AND_DRAIN_ERROR: &str = "CordonAndDrainError";
    pub const UNCORDON: &str = "Uncordon";
    pub const UNCORDON_ERROR: &str = "UncordonError";
    pub const SPOT_GUARD_SCALE_UP: &str = "SpotGuardScaleUp";
    pub const SPOT_GUARD_IN_SERVICE: &str = "SpotGuardInService";
    pub const SPOT_GUARD_FALLBACK: &str = "SpotGuardFallback";
    pub const SPOT_GUARD_FAILED: &str = "SpotGuardFailed";
    pub const SPOT_GUARD_PREEMPTED: &str = "SpotGuardPreempted";
    pub const SPOT_GUARD_NODE_READY: &str = "SpotGuardNodeReady";
    pub const SPOT_GUARD_NODE_NOT_READY: &str = "SpotGuardNodeNotReady";
    pub const SPOT_GUARD_SCALE_BACK: &str = "SpotGuardScaleBack";
    pub const SPOT_GUARD_SCALE_BACK_ABORTED: &str = "SpotGuardScaleBackAborted";

    /// The reason of the event announcing a notice of this kind.
    pub fn for_kind(event_kind: &str) -> &'static str {
        match event_kind {
            kind::REBALANCE_RECOMMENDATION => REBALANCE_RECOMMENDATION,
            kind::SPOT_ITN => SPOT_INTERRUPTION,
            kind::SCHEDULED_EVENT => SCHEDULED_EVENT,
            kind::ASG_LIFECYCLE => ASG_LIFECYCLE,
            _ => UNKNOWN_INTERRUPTION,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One event to write about the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonedEvent {
    pub event_type: EventType,
    pub reason: &'static str,
    pub message: String,
}

impl ReasonedEvent {
    pub fn normal(reason: &'static str, message: impl Into<String>) -> Self {
        ReasonedEvent {
            event_type: EventType::Normal,
            reason,
            message: message.into(),
        }
    }

    pub fn warning(reason: &'static str, message: impl Into<String>) -> Self {
        ReasonedEvent {
            event_type: EventType::Warning,
            reason,
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeEventError {
    #[error("creating event {reason} about node {node}: {source}")]
    Create {
        reason: &'static str,
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating event {reason} about node {node}: no answer within {timeout:?}")]
    TimedOut {
        reason: &'static str,
        node: String,
        timeout: Duration,
    },
}

/// KUBERNETES_EVENTS_EXTRA_ANNOTATIONS: `key=value,key2=value2`; empty means none.
pub fn parse_extra_annotations(text: &str) -> Result<BTreeMap<String, String>, ReportError> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    text.split(',')
        .map(|part| match part.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() && !value.contains('=') => {
                Ok((key.trim().to_owned(), value.trim().to_owned()))
            }
            _ => Err(ReportError::ExtraAnnotations {
                part: part.to_owned(),
            }),
        })
        .collect()
}

/// The node's metadata, shared by the reporter's sinks: filled in when IMDS answers late.
pub(super) type SharedNode = Arc<RwLock<NodeMetadata>>;

pub(super) fn snapshot(node: &SharedNode) -> NodeMetadata {
    node.read().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Writes events about this node; cheap to clone.
#[derive(Clone)]
pub struct KubeEvents {
    api: Api<Event>,
    node: SharedNode,
    /// KUBERNETES_EVENTS_EXTRA_ANNOTATIONS; they win over NTH's own, as in NTH.
    extra_annotations: BTreeMap<String, String>,
    timeout: Duration,
    /// Makes event names unique even within one clock tick.
    sequence: Arc<AtomicU64>,
}

impl KubeEvents {
    /// `extra_annotations` is the raw KUBERNETES_EVENTS_EXTRA_ANNOTATIONS; they are added to
    /// NTH's default annotations from the instance metadata.
    pub fn new(
        client: kube::Client,
        node: NodeMetadata,
        extra_annotations: &str,
    ) -> Result<Self, ReportError> {
        Ok(KubeEvents {
            api: Api::namespaced(client, NODE_EVENTS_NAMESPACE),
            node: Arc::new(RwLock::new(node)),
            extra_annotations: parse_extra_annotations(extra_annotations)?,
            timeout: DEFAULT_EVENT_TIMEOUT,
            sequence: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Describes the node from `node` from now on, as the reporter's other sinks do.
    pub(super) fn share_node(mut self, node: SharedNode) -> Self {
        self.node = node;
        self
    }

    /// Creates one event; waits at most the timeout.
    pub async fn emit(&self, event: &ReasonedEvent) -> Result<(), KubeEventError> {
        let node = snapshot(&self.node);
        let object = self.event_object(&node, event);
        match tokio::time::timeout(
            self.timeout,
            self.api.create(&PostParams::default(), &object),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(KubeEventError::Create {
                reason: event.reason,
                node: node.node_name,
                source,
            }),
            Err(_) => Err(KubeEventError::TimedOut {
                reason: event.reason,
                node: node.node_name,
                timeout: self.timeout,
            }),
        }
    }

    fn event_object(&self, node: &NodeMetadata, event: &ReasonedEvent) -> Event {
        let node_name = &node.node_name;
        let mut annotations = node.event_annotations();
        annotations.extend(self.extra_annotations.clone());
        let now = Timestamp::now();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        Event {
            metadata: ObjectMeta {
                // client-go's naming, `<object>.<hex time>`, plus a sequence against clashes.
                name: Some(format!("{node_name}.{nanos:x}{sequence:x}")),
                namespace: Some(NODE_EVENTS_NAMESPACE.to_owned()),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(node_name.clone()),
                uid: Some(node.node_uid.clone().unwrap_or_else(|| node_name.clone())),
                ..ObjectReference::default()
            },
            reason: Some(event.reason.to_owned()),
            message: Some(event.message.clone()),
            type_: Some(event.event_type.as_str().to_owned()),
            source: Some(EventSource {
                component: Some(SOURCE_COMPONENT.to_owned()),
                host: Some(node_name.clone()),
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Event::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_annotations_parse_as_nth_documents() {
        let parsed = parse_extra_annotations("team=infra, cost-center=42").unwrap();
        assert_eq!(parsed["team"], "infra");
        assert_eq!(parsed["cost-center"], "42");
        assert!(parse_extra_annotations("").unwrap().is_empty());
        for bad in ["team", "team=infra,", "a=b=c", "=x"] {
            assert!(parse_extra_annotations(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn notice_kinds_map_to_nth_reasons() {
        use super::super::interruption::kind;
        assert_eq!(
            reason::for_kind(kind::REBALANCE_RECOMMENDATION),
            "RebalanceRecommendation"
        );
        assert_eq!(reason::for_kind(kind::SPOT_ITN), "SpotInterruption");
        assert_eq!(reason::for_kind(kind::SCHEDULED_EVENT), "ScheduledEvent");
        assert_eq!(reason::for_kind(kind::ASG_LIFECYCLE), "ASGLifecycle");
        assert_eq!(reason::for_kind("SOMETHING"), "UnknownInterruption");
    }
}
