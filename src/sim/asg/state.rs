//! The simulated groups: sizes, instances and scaling activities.
//!
//! Launches settle lazily: every call first moves instances and activities whose
//! launch delay has passed to their final state, so no background task is needed.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use crate::asg::ScalingActivity;

mod changes;

/// What happens to the instances a group launches from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Instances start `Pending` and turn `InService` after the launch delay.
    Healthy,
    /// No instance starts; the activity ends `Failed` with EC2's capacity message.
    InsufficientCapacity,
    /// Instances stay `Pending` and their activity `InProgress` forever.
    NeverInService,
    /// No instance starts; the activity ends `Cancelled`.
    Cancelled,
    /// No instance starts; the activity ends `Failed` for a reason other than capacity
    /// (a launch template EC2 refuses).
    FailedOther,
}

/// ISO 8601 in UTC with milliseconds, as AWS writes timestamps (`2024-05-01T12:00:00.123Z`).
pub(super) fn timestamp(time: SystemTime) -> String {
    Timestamp::try_from(time)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// A group to create with [`super::AsgSim::add_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub min: i32,
    pub max: i32,
    /// Also the number of `InService` instances the group starts with.
    pub desired: i32,
    pub behaviour: Behaviour,
    pub launch_delay: Duration,
    pub capacity_rebalance: bool,
}

/// How long a terminated instance stays listed as `Terminating` unless set otherwise
/// (AWS: a minute or two, more with lifecycle hooks).
pub const DEFAULT_TERMINATE_DELAY: Duration = Duration::from_millis(500);

impl Default for GroupSpec {
    fn default() -> Self {
        GroupSpec {
            min: 0,
            max: 10,
            desired: 0,
            behaviour: Behaviour::Healthy,
            launch_delay: Duration::from_millis(100),
            capacity_rebalance: false,
        }
    }
}

/// A group as the simulator holds it now, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshot {
    pub name: String,
    pub min: i32,
    pub max: i32,
    pub desired: i32,
    pub in_service: i32,
    pub pending: i32,
    /// Ids of the instances that are not leaving, in launch order, oldest first.
    pub instance_ids: Vec<String>,
    /// Terminated instances still listed as `Terminating`.
    pub terminating_ids: Vec<String>,
    /// The InService ones among them, in the same order.
    pub in_service_ids: Vec<String>,
    pub behaviour: Behaviour,
    pub capacity_rebalance: bool,
    pub activities: usize,
}

/// An answer AWS would give instead of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn validation(message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            code: "ValidationError".to_string(),
            message: message.into(),
        }
    }
}

pub(super) const ZONE: &str = "us-east-1a";
pub(super) const INSTANCE_TYPE: &str = "m5.large";

/// EC2's wording for a launch template it refuses, as seen in real activities.
const INVALID_LAUNCH: &str = "The requested configuration is currently not supported. \
    Please check the documentation for supported configurations. Launching EC2 instance failed.";

/// EC2's wording for a spot launch without capacity, as seen in real activities.
const NO_CAPACITY: &str = "Could not launch Spot Instances. InsufficientInstanceCapacity - \
    There is no Spot capacity available that matches your request. Launching EC2 instance failed.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LifecycleState {
    Pending,
    InService,
    Terminating,
}

impl LifecycleState {
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleState::Pending => "Pending",
            LifecycleState::InService => "InService",
            LifecycleState::Terminating => "Terminating",
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Instance {
    pub id: String,
    pub state: LifecycleState,
    /// `None`: never turns InService.
    in_service_at: Option<Instant>,
    /// When a `Terminating` instance leaves the group.
    gone_at: Option<Instant>,
}

/// How an `InProgress` activity ends, and when.
#[derive(Debug, Clone)]
struct Outcome {
    at: Instant,
    end_time: SystemTime,
    status: &'static str,
    message: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) struct Activity {
    pub id: String,
    pub description: String,
    pub cause: String,
    pub start_time: SystemTime,
    pub end_time: Option<SystemTime>,
    pub status: String,
    pub message: Option<String>,
    outcome: Option<Outcome>,
}

impl Activity {
    pub fn progress(&self) -> u8 {
        if self.end_time.is_some() { 100 } else { 30 }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Group {
    pub name: String,
    pub min: i32,
    pub max: i32,
    pub desired: i32,
    pub behaviour: Behaviour,
    pub launch_delay: Duration,
    pub terminate_delay: Duration,
    /// Outcomes of the next launches, one each, before `behaviour` applies again.
    pub launch_plan: std::collections::VecDeque<Behaviour>,
    pub capacity_rebalance: bool,
    pub created: SystemTime,
    pub instances: Vec<Instance>,
    pub activities: Vec<Activity>,
}

pub(super) fn group_arn(name: &str) -> String {
    format!(
        "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:00000000-0000-4000-8000-000000000000:autoScalingGroupName/{name}"
    )
}

impl Group {
    fn count(&self, state: LifecycleState) -> i32 {
        let count = self.instances.iter().filter(|i| i.state == state).count();
        i32::try_from(count).unwrap_or(i32::MAX)
    }

    fn snapshot(&self) -> GroupSnapshot {
        GroupSnapshot {
            name: self.name.clone(),
            min: self.min,
            max: self.max,
            desired: self.desired,
            in_service: self.count(LifecycleState::InService),
            pending: self.count(LifecycleState::Pending),
            instance_ids: self
                .instances
                .iter()
                .filter(|i| i.state != LifecycleState::Terminating)
                .map(|i| i.id.clone())
                .collect(),
            terminating_ids: self
                .instances
                .iter()
                .filter(|i| i.state == LifecycleState::Terminating)
                .map(|i| i.id.clone())
                .collect(),
            in_service_ids: self
                .instances
                .iter()
                .filter(|i| i.state == LifecycleState::InService)
                .map(|i| i.id.clone())
                .collect(),
            behaviour: self.behaviour,
            capacity_rebalance: self.capacity_rebalance,
            activities: self.activities.len(),
        }
    }

    fn settle(&mut self, now: Instant) {
        self.instances
            .retain(|instance| instance.gone_at.is_none_or(|at| at > now));
        for instance in &mut self.instances {
            if instance.in_service_at.is_some_and(|at| at <= now) {
                instance.state = LifecycleState::InService;
                instance.in_service_at = None;
            }
        }
        for activity in &mut self.activities {
            if let Some(outcome) = activity.outcome.take_if(|o| o.at <= now) {
                activity.status = outcome.status.to_string();
                activity.message = outcome.message;
                activity.end_time = Some(outcome.end_time);
            }
        }
    }
}

/// The clock of one call: monotonic for delays, wall time for what AWS reports.
#[derive(Debug, Clone, Copy)]
pub(super) struct Now {
    pub instant: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn read() -> Self {
        Now {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub(super) struct World {
    groups: BTreeMap<String, Group>,
    next_id: u64,
    /// How far AWS's clock (activity times) is ahead of ours; negative: behind.
    pub clock_skew_ms: i64,
}

impl World {
    /// A time as AWS stamps it, on its own clock.
    fn aws_time(&self, wall: SystemTime) -> SystemTime {
        let skew = Duration::from_millis(self.clock_skew_ms.unsigned_abs());
        if self.clock_skew_ms >= 0 {
            wall.checked_add(skew).unwrap_or(wall)
        } else {
            wall.checked_sub(skew).unwrap_or(wall)
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn instance_id(&mut self) -> String {
        format!("i-0abc{:013x}", self.next_id())
    }

    fn activity_id(&mut self) -> String {
        format!("5e3f0b1c-0000-4000-8000-{:012x}", self.next_id())
    }

    pub fn settle(&mut self, now: Instant) {
        for group in self.groups.values_mut() {
            group.settle(now);
        }
    }

    pub fn add_group(&mut self, name: &str, spec: GroupSpec, now: Now) {
        let count = usize::try_from(spec.desired).unwrap_or(0);
        let instances = (0..count)
            .map(|_| Instance {
                id: self.instance_id(),
                state: LifecycleState::InService,
                in_service_at: None,
                gone_at: None,
            })
            .collect();
        let group = Group {
            name: name.to_string(),
            min: spec.min,
            max: spec.max,
            desired: spec.desired,
            behaviour: spec.behaviour,
            launch_delay: spec.launch_delay,
            terminate_delay: DEFAULT_TERMINATE_DELAY,
            launch_plan: std::collections::VecDeque::new(),
            capacity_rebalance: spec.capacity_rebalance,
            created: now.wall,
            instances,
            activities: Vec::new(),
        };
        self.groups.insert(name.to_string(), group);
    }

    pub fn add_activity(&mut self, name: &str, seed: ScalingActivity, now: Now) -> bool {
        let Some(group) = self.groups.get_mut(name) else {
            return false;
        };
        let start_time = seed.start_time.unwrap_or(now.wall);
        let finished = !matches!(seed.status_code.as_str(), "InProgress" | "PreInService");
        group.activities.push(Activity {
            id: seed.activity_id,
            description: seed.description.unwrap_or_default(),
            cause: String::new(),
            start_time,
            end_time: finished.then_some(start_time),
            status: seed.status_code,
            message: seed.status_message,
            outcome: None,
        });
        true
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    pub fn group_mut(&mut self, name: &str) -> Option<&mut Group> {
        self.groups.get_mut(name)
    }

    pub fn snapshot(&self, name: &str) -> Option<GroupSnapshot> {
        self.groups.get(name).map(Group::snapshot)
    }

    /// Groups in `names` order, unknown names left out; all groups when `names` is empty.
    pub fn describe(&self, names: &[String]) -> Vec<&Group> {
        if names.is_empty() {
            return self.groups.values().collect();
        }
        names.iter().filter_map(|n| self.groups.get(n)).collect()
    }

    /// Newest first, at most `max`.
    pub fn activities(&self, name: &str, max: usize) -> Vec<&Activity> {
        let Some(group) = self.groups.get(name) else {
            return Vec::new();
        };
        let mut list: Vec<&Activity> = group.activities.iter().collect();
        list.sort_by_key(|activity| std::cmp::Reverse(activity.start_time));
        list.truncate(max);
        list
    }
}
