//! What the agents wrote (Node annotations, Leases) → the rows `spot-guard status` prints.
//! Pure: no client, the time is an argument.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use serde::Serialize;

use crate::names::{
    CAPACITY_FAILURE_ANNOTATION, LAST_TARGET_ANNOTATION, LEDGER_KEY_PREFIX, REPLACEMENT_ANNOTATION,
    SCALE_BACK_ANNOTATION, SCALE_BACK_LEASE,
};
use crate::record::{NodeRecord, annotation};
use crate::spot_guard::decide::{
    AttemptResult, CapacityFailure, CapacityFailureNote, LastTarget, NodeWaitResult,
    ReplacementRecord, Role, from_unix_millis, instance_id_of_provider_id, millis_ago,
};
use crate::spot_guard::ledger::LedgerEntry;
use crate::spot_guard::scale_back::decide::{Phase, ScaleBackRecord};

/// Where a node's Spot Guard work stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    WaitingForInService,
    WaitingForNodeReady,
    Draining,
    Drained,
    GivenBack,
    ScaleBackPending,
    ScaleBackDraining,
    ScaleBackAborted,
}

impl Step {
    pub fn text(self) -> &'static str {
        match self {
            Step::WaitingForInService => "waiting for InService",
            Step::WaitingForNodeReady => "waiting for Node Ready",
            Step::Draining => "draining",
            // The agent's node actions are over; a drain that left pods is over too (it
            // is not retried for a recommendation): the log names them.
            Step::Drained => "drain finished",
            Step::GivenBack => "given back",
            Step::ScaleBackPending => "scale-back pending",
            Step::ScaleBackDraining => "scale-back draining",
            Step::ScaleBackAborted => "scale-back aborted",
        }
    }
}

/// One node that carries Spot Guard state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    pub node: String,
    pub instance: Option<String>,
    pub step: Step,
    /// The ASG the replacement came (or is coming) from; `None` when both failed.
    pub replacement_asg: Option<String>,
    /// `ready`, `timed-out` or `waiting` once the replacement is InService.
    pub replacement_node: Option<&'static str>,
    /// Since the first scale-up was requested (or the scale-back began).
    pub age_seconds: Option<u64>,
    /// Why the spot ASG was passed over, when it was.
    pub fallback_reason: Option<&'static str>,
}

/// One ASG's Lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRow {
    pub lease: String,
    /// The agent holding it now; `None` when free or expired.
    pub holder: Option<String>,
    pub last_target: Option<LastTargetView>,
    pub cool_off: Option<CoolOffView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastTargetView {
    pub desired: i32,
    pub node: String,
    pub age_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CoolOffView {
    pub reason: String,
    pub node: String,
    pub remaining_seconds: u64,
}

/// An on-demand instance the ledger holds: scale-back gives it back once spot returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GiveBackRow {
    pub instance: String,
    pub asg: String,
    pub for_node: String,
    pub age_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub nodes: Vec<NodeRow>,
    pub leases: Vec<LeaseRow>,
    pub give_back: Vec<GiveBackRow>,
}

/// The status of the fleet from its Nodes and the Leases of the agents' namespace;
/// `cool_off` is the agents' SPOT_GUARD_CAPACITY_COOL_OFF.
pub fn status(nodes: &[Node], leases: &[Lease], now: SystemTime, cool_off: Duration) -> Status {
    let mut node_rows: Vec<NodeRow> = nodes.iter().filter_map(|n| node_row(n, now)).collect();
    node_rows.sort_by(|a, b| a.node.cmp(&b.node));
    let asg_leases: Vec<&Lease> = leases
        .iter()
        .filter(|lease| {
            let name = lease.metadata.name.as_deref().unwrap_or_default();
            name.starts_with("spot-guard-") && name != SCALE_BACK_LEASE
        })
        .collect();
    let mut give_back: Vec<GiveBackRow> = asg_leases
        .iter()
        .flat_map(|lease| ledger(lease))
        .filter(|(_, entry)| entry.role == Role::OnDemand)
        .filter(|(instance, _)| !given_back(nodes, instance))
        .map(|(instance, entry)| GiveBackRow {
            instance,
            age_seconds: entry.age(now).as_secs(),
            asg: entry.asg,
            for_node: entry.for_node,
        })
        .collect();
    give_back.sort_by(|a, b| a.instance.cmp(&b.instance));
    let mut lease_rows: Vec<LeaseRow> = asg_leases
        .iter()
        .map(|lease| lease_row(lease, now, cool_off))
        .collect();
    lease_rows.sort_by(|a, b| a.lease.cmp(&b.lease));
    Status {
        nodes: node_rows,
        leases: lease_rows,
        give_back,
    }
}

fn instance_of(node: &Node) -> Option<String> {
    node.spec
        .as_ref()?
        .provider_id
        .as_deref()
        .and_then(instance_id_of_provider_id)
}

/// Whether the Node of `instance` says it was given back already.
fn given_back(nodes: &[Node], instance: &str) -> bool {
    nodes
        .iter()
        .filter(|node| instance_of(node).as_deref() == Some(instance))
        .any(|node| {
            let record = ScaleBackRecord::parse(annotation(node, SCALE_BACK_ANNOTATION), instance);
            matches!(record.phase, Phase::Terminated { .. })
        })
}

fn node_row(node: &Node, now: SystemTime) -> Option<NodeRow> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let instance = instance_of(node);
    if let Some(record) = ReplacementRecord::parse(annotation(node, REPLACEMENT_ANNOTATION)) {
        return Some(replacement_row(node, name, instance, &record, now));
    }
    let text = annotation(node, SCALE_BACK_ANNOTATION)?;
    let record = ScaleBackRecord::parse(Some(text), instance.as_deref().unwrap_or_default());
    let (step, since) = match record.phase {
        Phase::Watching => (Step::ScaleBackPending, record.spot_requested_at),
        Phase::Draining { since } => (Step::ScaleBackDraining, Some(since)),
        Phase::Terminated { at } => (Step::GivenBack, Some(at)),
        Phase::Aborted { at, .. } => (Step::ScaleBackAborted, Some(at)),
    };
    Some(NodeRow {
        node: name,
        instance,
        step,
        replacement_asg: None,
        replacement_node: None,
        age_seconds: since.map(|at| millis_ago(at, now).as_secs()),
        fallback_reason: None,
    })
}

fn replacement_row(
    node: &Node,
    name: String,
    instance: Option<String>,
    record: &ReplacementRecord,
    now: SystemTime,
) -> NodeRow {
    let pending = record
        .attempts
        .iter()
        .find(|a| a.result == AttemptResult::Pending);
    let ready = record
        .attempts
        .iter()
        .find(|a| a.result == AttemptResult::Ready);
    let drained = NodeRecord::from_node(node).handled(&record.event_id);
    let step = if record.gave_back {
        Step::GivenBack
    } else if pending.is_some() {
        Step::WaitingForInService
    } else if record.pending_node_wait().is_some() {
        Step::WaitingForNodeReady
    } else if drained {
        Step::Drained
    } else {
        Step::Draining
    };
    let fallback_reason = record
        .attempt(Role::Spot)
        .and_then(|spot| match &spot.result {
            AttemptResult::Failed { failure } => Some(CapacityFailure::from(failure).reason()),
            _ => None,
        });
    let requested_at = record
        .attempts
        .iter()
        .filter_map(|a| a.scaled.as_ref().map(|s| s.requested_at))
        .min();
    NodeRow {
        node: name,
        instance,
        step,
        replacement_asg: pending.or(ready).map(|a| a.asg.clone()),
        replacement_node: record.node_wait.as_ref().map(|wait| match wait.result {
            NodeWaitResult::Waiting => "waiting",
            NodeWaitResult::Ready => "ready",
            NodeWaitResult::TimedOut => "timed-out",
        }),
        age_seconds: requested_at.map(|at| millis_ago(at, now).as_secs()),
        fallback_reason,
    }
}

fn annotations(lease: &Lease) -> BTreeMap<String, String> {
    lease.metadata.annotations.clone().unwrap_or_default()
}

/// The ledger's readable entries on `lease`, by instance.
fn ledger(lease: &Lease) -> Vec<(String, LedgerEntry)> {
    annotations(lease)
        .iter()
        .filter_map(|(key, value)| {
            let instance = key.strip_prefix(LEDGER_KEY_PREFIX)?;
            let entry = serde_json::from_str(value).ok()?;
            Some((instance.to_owned(), entry))
        })
        .collect()
}

fn lease_row(lease: &Lease, now: SystemTime, cool_off: Duration) -> LeaseRow {
    let annotations = annotations(lease);
    let spec = lease.spec.clone().unwrap_or_default();
    let held = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(seconds)) => {
            let renewed = SystemTime::from(renewed.0);
            let until = renewed + Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
            until > now
        }
        _ => false,
    };
    let last_target = annotations
        .get(LAST_TARGET_ANNOTATION)
        .and_then(|text| serde_json::from_str::<LastTarget>(text).ok())
        .map(|target| LastTargetView {
            desired: target.desired,
            age_seconds: millis_ago(target.at, now).as_secs(),
            node: target.node,
        });
    let cool_off = annotations
        .get(CAPACITY_FAILURE_ANNOTATION)
        .and_then(|text| serde_json::from_str::<CapacityFailureNote>(text).ok())
        .and_then(|note| {
            let ends = from_unix_millis(note.at) + cool_off;
            let remaining = ends.duration_since(now).ok()?;
            Some(CoolOffView {
                reason: note.reason,
                node: note.node,
                remaining_seconds: remaining.as_secs().max(1),
            })
        });
    LeaseRow {
        lease: lease.metadata.name.clone().unwrap_or_default(),
        holder: spec.holder_identity.filter(|_| held),
        last_target,
        cool_off,
    }
}
