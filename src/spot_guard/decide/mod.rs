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

mod node_ready;
mod record;

pub use node_ready::{NodeReadiness, STARTUP_TAINTS, instance_id_of_provider_id, readiness};
pub use record::{
    AttemptRecord, AttemptResult, NextStep, NodeWait, NodeWaitResult, RecordedFailure,
    ReplacementRecord, Role, Scaled, failed, next_step,
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

fn live_count(state: &AsgState) -> i32 {
    let live = state
        .instances
        .iter()
        .filter(|i| is_live(&i.lifecycle_state))
        .count();
    i32::try_from(live).unwrap_or(i32::MAX)
}

/// As many live instances as desired: no launch in flight, so no launch failure to tell
/// apart from ours before a scale-up.
pub fn is_settled(state: &AsgState) -> bool {
    live_count(state) == state.desired_capacity
}

/// The request's instances exist (live, not known at the request), InService or not: its
/// launches went through, so there is no failed launch activity to look for.
pub fn launches_started(scaled: &Scaled, state: &AsgState) -> bool {
    let known: HashSet<&str> = scaled.known_instances.iter().map(String::as_str).collect();
    let new = state
        .instances
        .iter()
        .filter(|i| is_live(&i.lifecycle_state) && !known.contains(i.instance_id.as_str()))
        .count();
    i32::try_from(new).unwrap_or(i32::MAX) >= scaled.needed
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
    let live = live_count(state);
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

/// How long the desired capacity last set under an ASG's Lease is trusted over a read:
/// longer than AWS's Describe calls lag a change, short enough that a decrease made by
/// someone else (Cluster Autoscaler, a person) soon wins again.
pub const LAST_TARGET_TRUST: Duration = Duration::from_secs(60);

/// The desired capacity last set under an ASG's Lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastTarget {
    pub desired: i32,
    /// Unix milliseconds, on the setter's clock.
    pub at: u64,
    pub node: String,
}

impl LastTarget {
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The desired capacity to count from: the read, or what was last set under the Lease
/// if that is larger and recent, since a read right after a change may predate it.
pub fn trusted_desired(read: i32, last_target: Option<&str>, now: SystemTime) -> i32 {
    let last = last_target.and_then(|text| serde_json::from_str::<LastTarget>(text).ok());
    let Some(last) = last else {
        return read;
    };
    // Either way off on the setter's clock (skew) counts as age.
    let age = match now.duration_since(from_unix_millis(last.at)) {
        Ok(age) => age,
        Err(ahead) => ahead.duration(),
    };
    if age < LAST_TARGET_TRUST {
        read.max(last.desired)
    } else {
        read
    }
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
mod tests;
