//! The decisions of fleet-safe Spot Guard, pure: what a node's record says to do next,
//! which desired capacity to ask for, when a replacement counts as ready, and what the
//! agents remember together. [`crate::spot_guard`] acts on these answers.
//!
//! Many agents scale one ASG, one at a time under a Lease, each from the desired
//! capacity it reads (which includes every earlier agent's request), so N
//! recommendations raise desired by exactly N. A replacement is ready when enough
//! instances that did not exist at the agent's read are InService: `to` minus the live
//! instances it saw, which also waits for earlier agents' launches that AWS had not
//! listed yet, and is not fooled by other nodes' instances being terminated.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::asg::{AsgState, ScalingActivity};
use crate::flow::{self, CapacityFailure, CapacityWatch, ReplacementOutcome, WatchVerdict};

/// On the Node: the replacement bought for the current rebalance recommendation.
pub const REPLACEMENT_ANNOTATION: &str = "spot-guard/replacement";
/// On the spot ASG's Lease: its last capacity failure, shared by every agent.
pub const CAPACITY_FAILURE_ANNOTATION: &str = "spot-guard/capacity-failure";

/// Lifecycle states of instances that are on their way out.
const LEAVING_STATES: [&str; 6] = [
    "Terminating",
    "Terminating:Wait",
    "Terminating:Proceed",
    "Terminated",
    "Detaching",
    "Detached",
];

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
}

impl ReplacementRecord {
    pub fn new(event_id: &str) -> Self {
        ReplacementRecord {
            event_id: event_id.to_owned(),
            attempts: Vec::new(),
            gave_back: false,
        }
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

    fn attempt(&self, role: Role) -> Option<&AttemptRecord> {
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

fn is_live(lifecycle_state: &str) -> bool {
    !LEAVING_STATES.contains(&lifecycle_state)
}

/// Desired + `count` from the state read under the lease, with what must come of it;
/// a request that does not fit under MaxSize as a whole goes to the fallback.
pub fn plan_target(
    state: &AsgState,
    count: i32,
    activities: &[ScalingActivity],
    requested_at: SystemTime,
) -> Result<Scaled, CapacityFailure> {
    let to = state.desired_capacity.saturating_add(count);
    if to > state.max_size {
        return Err(CapacityFailure::AtMaxSize {
            desired: state.desired_capacity,
            max_size: state.max_size,
        });
    }
    let live = state
        .instances
        .iter()
        .filter(|i| is_live(&i.lifecycle_state))
        .count();
    let live = i32::try_from(live).unwrap_or(i32::MAX);
    Ok(Scaled {
        from: state.desired_capacity,
        to,
        requested_at: unix_millis(requested_at),
        known_instances: state
            .instances
            .iter()
            .map(|i| i.instance_id.clone())
            .collect(),
        needed: (to - live).max(count),
        known_activities: activities.iter().map(|a| a.activity_id.clone()).collect(),
    })
}

pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn from_unix_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// How long before `now` the Unix-millisecond time `millis` was; zero if it is later.
pub fn millis_ago(millis: u64, now: SystemTime) -> Duration {
    now.duration_since(from_unix_millis(millis))
        .unwrap_or_default()
}

/// InService instances that did not exist at the read.
pub fn new_in_service_ids(scaled: &Scaled, state: &AsgState) -> Vec<String> {
    let known: HashSet<&str> = scaled.known_instances.iter().map(String::as_str).collect();
    state
        .instances
        .iter()
        .filter(|i| i.lifecycle_state == "InService" && !known.contains(i.instance_id.as_str()))
        .map(|i| i.instance_id.clone())
        .collect()
}

pub fn new_in_service(scaled: &Scaled, state: &AsgState) -> i32 {
    i32::try_from(new_in_service_ids(scaled, state).len()).unwrap_or(i32::MAX)
}

/// One check of the wait: [`flow::judge_capacity`] counting new instances only.
pub fn judge(
    scaled: &Scaled,
    timeout: Duration,
    state: &AsgState,
    activities: &[ScalingActivity],
    now: SystemTime,
) -> WatchVerdict {
    let requested_at = from_unix_millis(scaled.requested_at);
    let watch = CapacityWatch {
        baseline_in_service: scaled.needed - 1,
        requested_at,
        known_activity_ids: scaled.known_activities.iter().cloned().collect(),
        timeout,
    };
    let elapsed = now.duration_since(requested_at).unwrap_or_default();
    flow::judge_capacity(&watch, new_in_service(scaled, state), activities, elapsed)
}

/// Failures that say the spot pool is short, worth remembering for everyone.
pub fn is_capacity_shortage(failure: &CapacityFailure) -> bool {
    matches!(
        failure,
        CapacityFailure::InsufficientCapacity { .. } | CapacityFailure::Timeout { .. }
    )
}

/// The shared memory of a capacity failure, on the spot ASG's Lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityFailureNote {
    /// Unix milliseconds.
    pub at: u64,
    pub reason: String,
    pub node: String,
}

impl CapacityFailureNote {
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The failure that puts the spot ASG in cool-off now, if any.
pub fn cool_off(
    annotation: Option<&str>,
    now: SystemTime,
    window: Duration,
) -> Option<CapacityFailureNote> {
    let note: CapacityFailureNote = serde_json::from_str(annotation?).ok()?;
    let since = millis_ago(note.at, now);
    (since < window).then_some(note)
}

/// The instance is given back only when its replacement arrived and it was drained.
pub fn may_give_back(outcome: &ReplacementOutcome, drained: bool) -> bool {
    drained
        && matches!(
            outcome,
            ReplacementOutcome::Spot | ReplacementOutcome::OnDemand { .. }
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asg::AsgInstance;

    fn state(desired: i32, max: i32, instances: &[(&str, &str)]) -> AsgState {
        AsgState {
            name: "spot".into(),
            min_size: 0,
            max_size: max,
            desired_capacity: desired,
            instances: instances
                .iter()
                .map(|(id, lifecycle)| AsgInstance {
                    instance_id: (*id).into(),
                    lifecycle_state: (*lifecycle).into(),
                })
                .collect(),
            capacity_rebalance: false,
        }
    }

    fn scaled(to: i32, known: &[&str], needed: i32) -> Scaled {
        Scaled {
            from: to - 1,
            to,
            requested_at: unix_millis(SystemTime::now()),
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

    #[test]
    fn targets_count_from_desired_and_wait_for_unlisted_launches() {
        let now = SystemTime::now();
        // Earlier agents raised desired to 12; AWS lists only 10 live instances so far.
        let lagging = state(
            12,
            20,
            &[
                ("i-1", "InService"),
                ("i-2", "InService"),
                ("i-3", "InService"),
                ("i-4", "InService"),
                ("i-5", "InService"),
                ("i-6", "InService"),
                ("i-7", "InService"),
                ("i-8", "InService"),
                ("i-9", "InService"),
                ("i-10", "Terminating"),
                ("i-11", "Pending"),
            ],
        );
        let plan = plan_target(&lagging, 1, &[], now).unwrap();
        assert_eq!((plan.from, plan.to, plan.needed), (12, 13, 3));
        assert_eq!(plan.known_instances.len(), 11);

        // More live instances than desired (terminations to come): still our own one.
        let surplus = state(
            2,
            20,
            &[("a", "InService"), ("b", "InService"), ("c", "InService")],
        );
        assert_eq!(plan_target(&surplus, 1, &[], now).unwrap().needed, 1);

        let scale_two = plan_target(&state(3, 5, &[]), 2, &[], now).unwrap();
        assert_eq!((scale_two.to, scale_two.needed), (5, 5));
        assert_eq!(
            plan_target(&state(4, 5, &[]), 2, &[], now),
            Err(CapacityFailure::AtMaxSize {
                desired: 4,
                max_size: 5
            })
        );
    }

    #[test]
    fn only_new_in_service_instances_make_a_replacement_ready() {
        let now = SystemTime::now();
        let watch = scaled(3, &["a", "b", "c"], 2);
        let timeout = Duration::from_secs(60);
        let cases = [
            (
                "nothing new",
                vec![("a", "InService"), ("b", "InService")],
                WatchVerdict::Waiting,
            ),
            (
                "one of two new, one pending",
                vec![("a", "InService"), ("x", "InService"), ("y", "Pending")],
                WatchVerdict::Waiting,
            ),
            (
                "known ones turning InService do not count",
                vec![("c", "InService"), ("x", "InService")],
                WatchVerdict::Waiting,
            ),
            (
                "two new InService, old ones terminated",
                vec![("x", "InService"), ("y", "InService")],
                WatchVerdict::Ready { in_service: 2 },
            ),
        ];
        for (name, instances, expected) in cases {
            assert_eq!(
                judge(&watch, timeout, &state(3, 10, &instances), &[], now),
                expected,
                "case: {name}"
            );
        }
        let late = now + Duration::from_secs(61);
        assert!(matches!(
            judge(&watch, timeout, &state(3, 10, &[]), &[], late),
            WatchVerdict::Failed(CapacityFailure::Timeout { .. })
        ));
    }

    #[test]
    fn cool_off_lasts_the_window_and_ignores_garbage() {
        let now = SystemTime::now();
        let note = CapacityFailureNote {
            at: unix_millis(now - Duration::from_secs(100)),
            reason: "insufficient-capacity".into(),
            node: "n1".into(),
        };
        let annotation = note.to_annotation();
        assert_eq!(
            cool_off(Some(&annotation), now, Duration::from_secs(300)),
            Some(note)
        );
        assert_eq!(
            cool_off(Some(&annotation), now, Duration::from_secs(60)),
            None
        );
        assert_eq!(
            cool_off(Some("not json"), now, Duration::from_secs(300)),
            None
        );
        assert_eq!(cool_off(None, now, Duration::from_secs(300)), None);
        assert!(is_capacity_shortage(&CapacityFailure::Timeout {
            waited: Duration::from_secs(1)
        }));
        assert!(!is_capacity_shortage(&CapacityFailure::AtMaxSize {
            desired: 1,
            max_size: 1
        }));
    }

    #[test]
    fn capacity_is_given_back_only_after_a_replacement_and_a_full_drain() {
        let failure = CapacityFailure::Api { error: "x".into() };
        assert!(may_give_back(&ReplacementOutcome::Spot, true));
        assert!(may_give_back(
            &ReplacementOutcome::OnDemand {
                spot_failure: failure.clone()
            },
            true
        ));
        assert!(!may_give_back(&ReplacementOutcome::Spot, false));
        assert!(!may_give_back(&ReplacementOutcome::Preempted, true));
        assert!(!may_give_back(
            &ReplacementOutcome::NoneAvailable {
                spot_failure: failure.clone(),
                on_demand_failure: failure
            },
            true
        ));
    }
}
