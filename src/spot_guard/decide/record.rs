//! What a node records of its replacement, step by step, on its Node: written before
//! each step is taken, so a restarted agent resumes and never buys twice. Pure.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{CapacityFailure, ReplacementOutcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Spot,
    OnDemand,
}

/// What the agent asked of one ASG and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub role: Role,
    pub asg: String,
    /// Absent when the ASG was not scaled (full, in cool-off, unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaled: Option<Scaled>,
    pub result: AttemptResult,
}

/// A scale-up, recorded before `SetDesiredCapacity` is sent: a restarted agent that
/// finds it assumes the request went out, so a recommendation never buys twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scaled {
    pub from: i32,
    pub to: i32,
    /// Unix milliseconds.
    pub requested_at: u64,
    /// Instances in the ASG at the read: any other instance is new.
    pub known_instances: Vec<String>,
    /// New InService instances that make this replacement ready.
    pub needed: i32,
    /// Activities listed at the read: their failures are not ours.
    pub known_activities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum AttemptResult {
    Pending,
    Ready,
    Failed { failure: RecordedFailure },
}

/// A [`CapacityFailure`] as written on the Node, read back exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum RecordedFailure {
    AtMaxSize { desired: i32, max_size: i32 },
    AboveMaxSize { message: String },
    InsufficientCapacity { message: String },
    ActivityFailed { status: String, message: String },
    Timeout { waited_ms: u64 },
    Api { error: String },
}

impl From<&CapacityFailure> for RecordedFailure {
    fn from(failure: &CapacityFailure) -> Self {
        match failure.clone() {
            CapacityFailure::AtMaxSize { desired, max_size } => {
                RecordedFailure::AtMaxSize { desired, max_size }
            }
            CapacityFailure::AboveMaxSize { message } => RecordedFailure::AboveMaxSize { message },
            CapacityFailure::InsufficientCapacity { message } => {
                RecordedFailure::InsufficientCapacity { message }
            }
            CapacityFailure::ActivityFailed { status, message } => {
                RecordedFailure::ActivityFailed { status, message }
            }
            CapacityFailure::Timeout { waited } => RecordedFailure::Timeout {
                waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            },
            CapacityFailure::Api { error } => RecordedFailure::Api { error },
        }
    }
}

impl From<&RecordedFailure> for CapacityFailure {
    fn from(failure: &RecordedFailure) -> Self {
        match failure.clone() {
            RecordedFailure::AtMaxSize { desired, max_size } => {
                CapacityFailure::AtMaxSize { desired, max_size }
            }
            RecordedFailure::AboveMaxSize { message } => CapacityFailure::AboveMaxSize { message },
            RecordedFailure::InsufficientCapacity { message } => {
                CapacityFailure::InsufficientCapacity { message }
            }
            RecordedFailure::ActivityFailed { status, message } => {
                CapacityFailure::ActivityFailed { status, message }
            }
            RecordedFailure::Timeout { waited_ms } => CapacityFailure::Timeout {
                waited: Duration::from_millis(waited_ms),
            },
            RecordedFailure::Api { error } => CapacityFailure::Api { error },
        }
    }
}

/// The whole record for one rebalance recommendation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplacementRecord {
    pub event_id: String,
    pub attempts: Vec<AttemptRecord>,
    /// This instance was terminated (with decrement) after its drain.
    #[serde(default)]
    pub gave_back: bool,
    /// The give-back was about to be sent: never send it again, even after a restart.
    #[serde(default)]
    pub give_back_sent: bool,
    /// The wait for the replacement's Node, once it is InService (when configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_wait: Option<NodeWait>,
}

/// The wait for the Nodes of the instances this node claimed as its replacement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeWait {
    pub asg: String,
    pub instances: Vec<String>,
    /// When they were seen InService, Unix milliseconds.
    pub in_service_at: u64,
    pub result: NodeWaitResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum NodeWaitResult {
    Waiting,
    Ready,
    /// Not Ready within the timeout: drained anyway.
    TimedOut,
}

impl ReplacementRecord {
    pub fn new(event_id: &str) -> Self {
        ReplacementRecord {
            event_id: event_id.to_owned(),
            attempts: Vec::new(),
            gave_back: false,
            give_back_sent: false,
            node_wait: None,
        }
    }

    /// The Node wait still to do, if any.
    pub fn pending_node_wait(&self) -> Option<&NodeWait> {
        self.node_wait
            .as_ref()
            .filter(|wait| wait.result == NodeWaitResult::Waiting)
    }

    /// Parses the annotation; anything unreadable counts as no record.
    pub fn parse(annotation: Option<&str>) -> Option<Self> {
        serde_json::from_str(annotation?).ok()
    }

    pub fn to_annotation(&self) -> String {
        // A struct of strings and numbers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The record with `attempt` in place of the same role's attempt, or appended.
    pub fn with_attempt(&self, attempt: AttemptRecord) -> Self {
        let mut record = self.clone();
        record.attempts.retain(|a| a.role != attempt.role);
        record.attempts.push(attempt);
        record
    }

    /// What was asked of the ASG of `role`, if anything.
    pub fn attempt(&self, role: Role) -> Option<&AttemptRecord> {
        self.attempts.iter().find(|a| a.role == role)
    }
}

/// What to do for a recommendation, given the node's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Ask this ASG for capacity.
    Start(Role),
    /// A scale-up was requested before a restart: wait for it again, never ask twice.
    Resume { role: Role, scaled: Scaled },
    /// Capacity is settled; go on to the node actions.
    Finished(ReplacementOutcome),
}

pub fn next_step(record: Option<&ReplacementRecord>, event_id: &str) -> NextStep {
    let Some(record) = record.filter(|r| r.event_id == event_id) else {
        return NextStep::Start(Role::Spot);
    };
    let resume_or =
        |attempt: &AttemptRecord, done: NextStep| match (&attempt.result, &attempt.scaled) {
            (AttemptResult::Pending, Some(scaled)) => NextStep::Resume {
                role: attempt.role,
                scaled: scaled.clone(),
            },
            // Recorded as pending without a scale-up cannot happen; start that ASG over.
            (AttemptResult::Pending, None) => NextStep::Start(attempt.role),
            _ => done,
        };
    let spot_failure = match record.attempt(Role::Spot) {
        None => return NextStep::Start(Role::Spot),
        Some(spot) => match &spot.result {
            AttemptResult::Ready => return NextStep::Finished(ReplacementOutcome::Spot),
            AttemptResult::Pending => return resume_or(spot, NextStep::Start(Role::Spot)),
            AttemptResult::Failed { failure } => failure.into(),
        },
    };
    match record.attempt(Role::OnDemand) {
        None => NextStep::Start(Role::OnDemand),
        Some(on_demand) => match &on_demand.result {
            AttemptResult::Ready => {
                NextStep::Finished(ReplacementOutcome::OnDemand { spot_failure })
            }
            AttemptResult::Pending => resume_or(on_demand, NextStep::Start(Role::OnDemand)),
            AttemptResult::Failed { failure } => {
                NextStep::Finished(ReplacementOutcome::NoneAvailable {
                    spot_failure,
                    on_demand_failure: failure.into(),
                })
            }
        },
    }
}

pub fn failed(failure: &CapacityFailure) -> AttemptResult {
    AttemptResult::Failed {
        failure: failure.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled(to: i32, known: &[&str], needed: i32) -> Scaled {
        Scaled {
            from: to - 1,
            to,
            requested_at: 1_700_000_000_000,
            known_instances: known.iter().map(|s| (*s).to_owned()).collect(),
            needed,
            known_activities: vec![],
        }
    }

    fn attempt(role: Role, result: AttemptResult, with_scale: bool) -> AttemptRecord {
        AttemptRecord {
            role,
            asg: "x".into(),
            scaled: with_scale.then(|| scaled(4, &["a"], 1)),
            result,
        }
    }

    fn ice() -> AttemptResult {
        failed(&CapacityFailure::InsufficientCapacity {
            message: "no capacity".into(),
        })
    }

    #[test]
    fn next_step_for_every_record() {
        let record = |attempts: Vec<AttemptRecord>| ReplacementRecord {
            event_id: "e1".into(),
            attempts,
            gave_back: false,
            give_back_sent: false,
            node_wait: None,
        };
        let spot_ice = CapacityFailure::InsufficientCapacity {
            message: "no capacity".into(),
        };
        let cases: Vec<(&str, Option<ReplacementRecord>, &str, NextStep)> = vec![
            ("no record", None, "e1", NextStep::Start(Role::Spot)),
            (
                "a record of an older event",
                Some(record(vec![attempt(
                    Role::Spot,
                    AttemptResult::Ready,
                    true,
                )])),
                "e2",
                NextStep::Start(Role::Spot),
            ),
            (
                "spot requested, restarted during the wait",
                Some(record(vec![attempt(
                    Role::Spot,
                    AttemptResult::Pending,
                    true,
                )])),
                "e1",
                NextStep::Resume {
                    role: Role::Spot,
                    scaled: scaled(4, &["a"], 1),
                },
            ),
            (
                "spot ready",
                Some(record(vec![attempt(
                    Role::Spot,
                    AttemptResult::Ready,
                    true,
                )])),
                "e1",
                NextStep::Finished(ReplacementOutcome::Spot),
            ),
            (
                "spot failed, on-demand not tried yet",
                Some(record(vec![attempt(Role::Spot, ice(), true)])),
                "e1",
                NextStep::Start(Role::OnDemand),
            ),
            (
                "on-demand requested, restarted during its wait",
                Some(record(vec![
                    attempt(Role::Spot, ice(), false),
                    attempt(Role::OnDemand, AttemptResult::Pending, true),
                ])),
                "e1",
                NextStep::Resume {
                    role: Role::OnDemand,
                    scaled: scaled(4, &["a"], 1),
                },
            ),
            (
                "on-demand ready",
                Some(record(vec![
                    attempt(Role::Spot, ice(), false),
                    attempt(Role::OnDemand, AttemptResult::Ready, true),
                ])),
                "e1",
                NextStep::Finished(ReplacementOutcome::OnDemand {
                    spot_failure: spot_ice.clone(),
                }),
            ),
            (
                "both failed",
                Some(record(vec![
                    attempt(Role::Spot, ice(), true),
                    attempt(Role::OnDemand, ice(), true),
                ])),
                "e1",
                NextStep::Finished(ReplacementOutcome::NoneAvailable {
                    spot_failure: spot_ice.clone(),
                    on_demand_failure: spot_ice.clone(),
                }),
            ),
        ];
        for (name, record, event, expected) in cases {
            // Through the annotation, as a restarted agent reads it.
            let read = record
                .as_ref()
                .and_then(|r| ReplacementRecord::parse(Some(&r.to_annotation())));
            assert_eq!(read, record, "case {name}: round trip");
            assert_eq!(next_step(read.as_ref(), event), expected, "case: {name}");
        }
        assert_eq!(ReplacementRecord::parse(Some("{garbage")), None);
    }

    #[test]
    fn with_attempt_replaces_the_same_role() {
        let record = ReplacementRecord::new("e")
            .with_attempt(attempt(Role::Spot, AttemptResult::Pending, true))
            .with_attempt(attempt(Role::Spot, AttemptResult::Ready, true));
        assert_eq!(record.attempts.len(), 1);
        assert_eq!(record.attempts[0].result, AttemptResult::Ready);
    }
}
