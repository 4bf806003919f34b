//! Spot Guard's capacity decisions, pure: which desired capacity to ask for, when a
//! replacement counts as ready or failed, what the agents remember together and when
//! capacity is given back. [`super::replace`] acts on these answers; the node's record of
//! each step is [`record`].
//!
//! Many agents scale one ASG, one at a time under a Lease, each from the desired
//! capacity it reads (which includes every earlier agent's request), so N
//! recommendations raise desired by exactly N. A replacement is ready when enough
//! instances that did not exist at the agent's read are InService: `to` minus the live
//! instances it saw, which also waits for earlier agents' launches that AWS had not
//! listed yet, and is not fooled by other nodes' instances being terminated.

mod record;

pub use record::{
    AttemptRecord, AttemptResult, NextStep, RecordedFailure, ReplacementRecord, Role, Scaled,
    failed, next_step,
};

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::asg::{AsgError, AsgState, ScalingActivity};

/// Phrases AWS puts in scaling activity messages when EC2 has no capacity to give.
const CAPACITY_PHRASES: [&str; 8] = [
    "insufficientinstancecapacity",
    "insufficient capacity",
    "do not have sufficient",
    "spot request could not be fulfilled",
    "no spot capacity available",
    "capacity-not-available",
    "unfulfillablecapacity",
    "maxspotinstancecountexceeded",
];

/// AWS stamps activities with its own clock; accept ours being this far ahead.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(30);

/// Why an ASG could not deliver a replacement; each one sends the flow to the fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapacityFailure {
    /// Desired capacity already equals MaxSize: checked before asking AWS.
    AtMaxSize { desired: i32, max_size: i32 },
    /// AWS refused the new desired capacity as above MaxSize (someone raced us).
    AboveMaxSize { message: String },
    /// EC2 reported no capacity for the launch.
    InsufficientCapacity { message: String },
    /// The launch activity ended Failed or Cancelled for another reason.
    ActivityFailed { status: String, message: String },
    /// No new InService instance within the capacity check timeout.
    Timeout { waited: Duration },
    /// Reading or scaling the ASG failed (not found, AccessDenied, throttled past retries…).
    Api { error: String },
}

impl fmt::Display for CapacityFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapacityFailure::AtMaxSize { desired, max_size } => {
                write!(f, "ASG is at MaxSize (desired {desired}, max {max_size})")
            }
            CapacityFailure::AboveMaxSize { message } => {
                write!(f, "AWS refused to go above MaxSize: {message}")
            }
            CapacityFailure::InsufficientCapacity { message } => {
                write!(f, "insufficient capacity: {message}")
            }
            CapacityFailure::ActivityFailed { status, message } => {
                write!(f, "scaling activity {status}: {message}")
            }
            CapacityFailure::Timeout { waited } => write!(
                f,
                "no new instance reached InService within {:.1}s",
                waited.as_secs_f64()
            ),
            CapacityFailure::Api { error } => write!(f, "{error}"),
        }
    }
}

impl CapacityFailure {
    /// A short label for metrics and events.
    pub fn reason(&self) -> &'static str {
        match self {
            CapacityFailure::AtMaxSize { .. } | CapacityFailure::AboveMaxSize { .. } => "max-size",
            CapacityFailure::InsufficientCapacity { .. } => "insufficient-capacity",
            CapacityFailure::ActivityFailed { .. } => "activity-failed",
            CapacityFailure::Timeout { .. } => "timeout",
            CapacityFailure::Api { .. } => "api-error",
        }
    }

    /// An error from a Describe or SetDesiredCapacity call, classified.
    pub fn from_api_error(error: &AsgError) -> Self {
        if error.is_above_max_size() {
            let message = match error {
                AsgError::Validation { message, .. } => message.clone(),
                other => other.to_string(),
            };
            CapacityFailure::AboveMaxSize { message }
        } else {
            CapacityFailure::Api {
                error: error.to_string(),
            }
        }
    }
}

/// What to ask of an ASG before the scale-up.

/// What we knew when we raised desired capacity, to judge what comes after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityWatch {
    pub baseline_in_service: i32,
    pub requested_at: SystemTime,
    /// Activities that existed before our request: their failures are not ours.
    pub known_activity_ids: HashSet<String>,
    pub timeout: Duration,
}

impl CapacityWatch {
    pub fn new(
        before: &AsgState,
        activities_before: &[ScalingActivity],
        requested_at: SystemTime,
        timeout: Duration,
    ) -> Self {
        CapacityWatch {
            baseline_in_service: before.in_service(),
            requested_at,
            known_activity_ids: activities_before
                .iter()
                .map(|a| a.activity_id.clone())
                .collect(),
            timeout,
        }
    }

    fn is_ours(&self, activity: &ScalingActivity) -> bool {
        if self.known_activity_ids.contains(&activity.activity_id) {
            return false;
        }
        match activity.start_time {
            Some(started) => started + CLOCK_SKEW_ALLOWANCE >= self.requested_at,
            None => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchVerdict {
    /// Keep polling.
    Waiting,
    /// One more instance than before is InService.
    Ready {
        in_service: i32,
    },
    Failed(CapacityFailure),
}

fn mentions_capacity_shortage(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    CAPACITY_PHRASES.iter().any(|phrase| lower.contains(phrase))
}

/// One check of the wait for InService.
pub fn judge_capacity(
    watch: &CapacityWatch,
    in_service: i32,
    activities: &[ScalingActivity],
    elapsed: Duration,
) -> WatchVerdict {
    if in_service > watch.baseline_in_service {
        return WatchVerdict::Ready { in_service };
    }
    for activity in activities.iter().filter(|a| watch.is_ours(a)) {
        let message = activity
            .status_message
            .clone()
            .or_else(|| activity.description.clone())
            .unwrap_or_default();
        if mentions_capacity_shortage(&message) {
            return WatchVerdict::Failed(CapacityFailure::InsufficientCapacity { message });
        }
        if matches!(activity.status_code.as_str(), "Failed" | "Cancelled") {
            return WatchVerdict::Failed(CapacityFailure::ActivityFailed {
                status: activity.status_code.clone(),
                message,
            });
        }
    }
    if elapsed >= watch.timeout {
        return WatchVerdict::Failed(CapacityFailure::Timeout { waited: elapsed });
    }
    WatchVerdict::Waiting
}

/// How one ASG's attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    Ready { from: i32, to: i32 },
    Failed(CapacityFailure),
}

/// Which ASG delivered the replacement, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplacementOutcome {
    Spot,
    OnDemand {
        spot_failure: CapacityFailure,
    },
    NoneAvailable {
        spot_failure: CapacityFailure,
        on_demand_failure: CapacityFailure,
    },
    /// A spot interruption notice arrived first: the node drains now.
    Preempted,
    /// Dry run: nothing was bought.
    DryRun,
}

/// Lifecycle states of instances that are on their way out.
const LEAVING_STATES: [&str; 6] = [
    "Terminating",
    "Terminating:Wait",
    "Terminating:Proceed",
    "Terminated",
    "Detaching",
    "Detached",
];

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
    judge_capacity(&watch, new_in_service(scaled, state), activities, elapsed)
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
    fn asg(desired: i32, max: i32, in_service: i32) -> AsgState {
        AsgState {
            name: "spot".into(),
            min_size: 0,
            max_size: max,
            desired_capacity: desired,
            instances: (0..in_service)
                .map(|i| AsgInstance {
                    instance_id: format!("i-{i}"),
                    lifecycle_state: "InService".into(),
                })
                .collect(),
            capacity_rebalance: false,
        }
    }

    fn activity(id: &str, status: &str, message: &str, start: SystemTime) -> ScalingActivity {
        ScalingActivity {
            activity_id: id.into(),
            status_code: status.into(),
            status_message: Some(message.into()),
            description: None,
            start_time: Some(start),
        }
    }

    const ICE: &str = "We currently do not have sufficient m5.large capacity in the Availability Zone you requested (us-east-1a). Launching EC2 instance failed. InsufficientInstanceCapacity";

    #[test]
    fn capacity_verdicts_for_every_scenario() {
        let now = SystemTime::now();
        let old = now - Duration::from_secs(3600);
        let before = asg(3, 10, 3);
        let watch = CapacityWatch::new(
            &before,
            &[activity("old-known", "Failed", ICE, old)],
            now,
            Duration::from_secs(120),
        );
        let secs = Duration::from_secs;
        let cases: Vec<(&str, i32, Vec<ScalingActivity>, Duration, WatchVerdict)> = vec![
            ("nothing yet", 3, vec![], secs(10), WatchVerdict::Waiting),
            (
                "instance InService",
                4,
                vec![],
                secs(20),
                WatchVerdict::Ready { in_service: 4 },
            ),
            (
                "InService wins over a failed activity",
                4,
                vec![activity("a1", "Failed", ICE, now)],
                secs(20),
                WatchVerdict::Ready { in_service: 4 },
            ),
            (
                "our launch failed for capacity",
                3,
                vec![activity("a1", "Failed", ICE, now)],
                secs(20),
                WatchVerdict::Failed(CapacityFailure::InsufficientCapacity {
                    message: ICE.into(),
                }),
            ),
            (
                "capacity message while still in progress",
                3,
                vec![activity(
                    "a1",
                    "InProgress",
                    "Spot request could not be fulfilled",
                    now,
                )],
                secs(20),
                WatchVerdict::Failed(CapacityFailure::InsufficientCapacity {
                    message: "Spot request could not be fulfilled".into(),
                }),
            ),
            (
                "our launch was cancelled",
                3,
                vec![activity("a1", "Cancelled", "cancelled by user", now)],
                secs(20),
                WatchVerdict::Failed(CapacityFailure::ActivityFailed {
                    status: "Cancelled".into(),
                    message: "cancelled by user".into(),
                }),
            ),
            (
                "a failure we already knew is not ours",
                3,
                vec![activity("old-known", "Failed", ICE, old)],
                secs(20),
                WatchVerdict::Waiting,
            ),
            (
                "an unknown failure from an hour ago is not ours",
                3,
                vec![activity("old-unknown", "Failed", ICE, old)],
                secs(20),
                WatchVerdict::Waiting,
            ),
            (
                "successful activity but not InService yet",
                3,
                vec![activity(
                    "a1",
                    "Successful",
                    "Launching a new EC2 instance",
                    now,
                )],
                secs(20),
                WatchVerdict::Waiting,
            ),
            (
                "timeout",
                3,
                vec![activity(
                    "a1",
                    "InProgress",
                    "Launching a new EC2 instance",
                    now,
                )],
                secs(120),
                WatchVerdict::Failed(CapacityFailure::Timeout { waited: secs(120) }),
            ),
        ];
        for (name, in_service, activities, elapsed, expected) in cases {
            assert_eq!(
                judge_capacity(&watch, in_service, &activities, elapsed),
                expected,
                "case: {name}"
            );
        }
    }

    #[test]
    fn above_max_size_validation_is_a_capacity_failure() {
        let error = AsgError::Validation {
            operation: "SetDesiredCapacity",
            asg: "spot".into(),
            message:
                "New SetDesiredCapacity value 5 is above max value 4 for the AutoScalingGroup."
                    .into(),
        };
        assert_eq!(CapacityFailure::from_api_error(&error).reason(), "max-size");
        let denied = AsgError::Api {
            operation: "SetDesiredCapacity",
            asg: "spot".into(),
            code: "AccessDenied".into(),
            message: "not allowed".into(),
        };
        assert_eq!(
            CapacityFailure::from_api_error(&denied).reason(),
            "api-error"
        );
    }
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
