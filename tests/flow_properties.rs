//! Bounded, seeded randomized runs. First the pure decisions over thousands of generated
//! scenarios: Spot Guard's target (`decide::plan_target`), its wait verdict
//! (`decide::judge`) and NTH's node-action plans (`plan`), each checked against what the
//! scenario says should happen and against AWS's and NTH's documented behaviour (AWS's own
//! scaling-activity messages, NTH's option tables), not against a copy of the formula under
//! test. Then the agent as production starts it (`run::start`, through the simulators'
//! harness) over generated sequences of IMDS notices, IMDS faults and ASG behaviours: once
//! the agent is shown to have finished what it started, each recommendation was acted on
//! at most once, raised each ASG's desired capacity at most once, and evicted each pod at
//! most once. The seeds are fixed so a failure reproduces; the failing case's seed and
//! script are printed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use spot_guard::asg::{AsgInstance, AsgState, ScalingActivity};
use spot_guard::config::{Config, TaintEffect};
use spot_guard::imds::{InstanceAction, REBALANCE_RECOMMENDATION_PATH, RebalanceRecommendation};
use spot_guard::monitor::{rebalance_event_id, spot_itn_event_id};
use spot_guard::names::{
    ASG_LIFECYCLE_TAINT, REBALANCE_TAINT, REPLACEMENT_ANNOTATION, SCHEDULED_MAINTENANCE_TAINT,
    SPOT_ITN_TAINT,
};
use spot_guard::plan::{ActionSettings, plan_drain_now, plan_rebalance};
use spot_guard::record::{self, NodeRecord};
use spot_guard::report::reason;
use spot_guard::run::RunningAgent;
use spot_guard::sim::asg::{AsgSim, Behaviour, GroupSpec};
use spot_guard::sim::harness;
use spot_guard::sim::imds::ImdsSim;
use spot_guard::sim::kube::{EvictionOutcome, FakeKube, FakePod};
use spot_guard::spot_guard::decide::{
    CapacityFailure, ReplacementRecord, WatchVerdict, judge, plan_target,
};

/// xorshift64*: small, deterministic, good enough to spread cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn range(&mut self, low: i64, high: i64) -> i64 {
        low + i64::try_from(self.below(u64::try_from(high - low + 1).unwrap_or(1))).unwrap_or(0)
    }

    /// A whole number from `low` to `high`, both included.
    fn int(&mut self, low: i32, high: i32) -> i32 {
        i32::try_from(self.range(i64::from(low), i64::from(high))).unwrap_or(low)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.below(items.len() as u64)).unwrap_or(0)]
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = usize::try_from(self.below(i as u64 + 1)).unwrap_or(0);
            items.swap(i, j);
        }
    }
}

// --- Spot Guard's target ----------------------------------------------------------------

/// AWS's lifecycle states of an instance that is running or on its way to running.
const RUNNING_OR_LAUNCHING: [&str; 4] = ["InService", "Pending", "Pending:Wait", "Pending:Proceed"];
/// AWS's lifecycle states of an instance on its way out of the group.
const ON_ITS_WAY_OUT: [&str; 6] = [
    "Terminating",
    "Terminating:Wait",
    "Terminating:Proceed",
    "Terminated",
    "Detaching",
    "Detached",
];

/// What is going on in an ASG when one agent reads it under its Lease; its numbers
/// (desired capacity, MaxSize, the instance list) follow from this story.
#[derive(Debug, Clone)]
struct Scene {
    /// Instances this recommendation buys (SPOT_GUARD_SCALE_COUNT).
    count: i32,
    /// Listed instances that are running or launching.
    running: i32,
    /// Listed instances on their way out (other nodes given back, detached).
    leaving: i32,
    /// Instances earlier agents asked for that AWS does not list yet.
    unlisted: i32,
    /// Running instances above desired capacity: someone lowered it, AWS will terminate them.
    surplus: i32,
    /// How many more instances MaxSize allows.
    room: i32,
}

impl Scene {
    fn generate(rng: &mut Rng) -> Scene {
        let running = rng.int(0, 12);
        let (unlisted, surplus) = match rng.below(3) {
            0 => (0, 0),
            1 => (rng.int(1, 4), 0),
            _ => (0, rng.int(0, running.min(3))),
        };
        Scene {
            count: rng.int(1, 3),
            running,
            leaving: rng.int(0, 3),
            unlisted,
            surplus,
            room: rng.int(0, 5),
        }
    }

    fn desired(&self) -> i32 {
        self.running + self.unlisted - self.surplus
    }

    fn max_size(&self) -> i32 {
        self.desired() + self.room
    }

    /// The request fits under MaxSize as a whole.
    fn fits(&self) -> bool {
        self.count <= self.room
    }

    /// New InService instances that make this replacement ready: ours, plus the launches
    /// of earlier agents AWS does not list yet (they come first); instances on their way
    /// out and the surplus do not stand in for any of them.
    fn needed(&self) -> i32 {
        self.count + self.unlisted
    }

    fn state(&self, rng: &mut Rng) -> AsgState {
        let mut instances = Vec::new();
        for i in 0..self.running {
            instances.push(AsgInstance {
                instance_id: format!("i-running-{i:02}"),
                lifecycle_state: (*rng.pick(&RUNNING_OR_LAUNCHING)).into(),
            });
        }
        for i in 0..self.leaving {
            instances.push(AsgInstance {
                instance_id: format!("i-leaving-{i:02}"),
                lifecycle_state: (*rng.pick(&ON_ITS_WAY_OUT)).into(),
            });
        }
        rng.shuffle(&mut instances);
        AsgState {
            name: "spot".into(),
            min_size: 0,
            max_size: self.max_size(),
            desired_capacity: self.desired(),
            instances,
            capacity_rebalance: false,
        }
    }
}

fn ids(instances: &[AsgInstance]) -> BTreeSet<String> {
    instances.iter().map(|i| i.instance_id.clone()).collect()
}

#[test]
fn the_target_is_desired_plus_count_within_max_size_or_at_max_size() {
    let mut rng = Rng(0x0005_ca1e_0000_0001);
    let requested_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for case in 0..5_000 {
        let scene = Scene::generate(&mut rng);
        let state = scene.state(&mut rng);
        let activities: Vec<ScalingActivity> = (0..rng.below(3))
            .map(|i| {
                activity(
                    &format!("listed-{i}"),
                    rng.pick(&CATALOGUE),
                    Some(requested_at - Duration::from_secs(600)),
                    true,
                )
            })
            .collect();
        let context = format!("case {case}: {scene:?} → {state:?}");
        match plan_target(&state, scene.count, &activities, requested_at) {
            Ok(scaled) => {
                assert!(scene.fits(), "scaled past MaxSize: {scaled:?}, {context}");
                assert_eq!(scaled.from, scene.desired(), "{context}");
                assert_eq!(scaled.to, scene.desired() + scene.count, "{context}");
                assert!(scaled.to <= scene.max_size(), "{context}");
                assert_eq!(scaled.needed, scene.needed(), "{scaled:?}, {context}");
                assert_eq!(
                    scaled
                        .known_instances
                        .iter()
                        .cloned()
                        .collect::<BTreeSet<_>>(),
                    ids(&state.instances),
                    "every listed instance is known, so none of them counts as new: {context}"
                );
                assert_eq!(
                    scaled.known_activities,
                    activities
                        .iter()
                        .map(|a| a.activity_id.clone())
                        .collect::<Vec<_>>(),
                    "{context}"
                );
                assert_eq!(
                    scaled.requested_at, 1_800_000_000_000,
                    "Unix milliseconds of the request: {context}"
                );
            }
            Err(failure) => {
                assert!(
                    !scene.fits(),
                    "refused a request that fits: {failure:?}, {context}"
                );
                assert_eq!(
                    failure,
                    CapacityFailure::AtMaxSize {
                        desired: scene.desired(),
                        max_size: scene.max_size(),
                    },
                    "{context}"
                );
                assert_eq!(failure.reason(), "max-size");
            }
        }
    }
}

// --- Spot Guard's wait verdict ------------------------------------------------------------

/// What a scaling activity says about the launch, by AWS's documentation of its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Says {
    /// EC2 has no capacity to give (InsufficientInstanceCapacity and kin).
    NoCapacity,
    /// The launch failed for another reason: configuration, quota, lifecycle hook.
    OtherFailure,
    /// Under way or done: not a failure.
    Fine,
}

/// Scaling-activity status codes and messages as AWS writes them (Auto Scaling's
/// troubleshooting guide and EC2's error codes), each with what it means.
const CATALOGUE: [(&str, &str, Says); 20] = [
    (
        "Failed",
        "We currently do not have sufficient m5.large capacity in the Availability Zone you requested (us-east-1a). Our system will be working on provisioning additional capacity. You can currently get m5.large capacity by not specifying an Availability Zone in your request or choosing us-east-1b, us-east-1c, us-east-1d. Launching EC2 instance failed.",
        Says::NoCapacity,
    ),
    (
        "Failed",
        "There is no Spot capacity available that matches your request. Launching EC2 instance failed.",
        Says::NoCapacity,
    ),
    (
        "Failed",
        "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available that matches your request. Launching EC2 instance failed.",
        Says::NoCapacity,
    ),
    (
        "Failed",
        "Could not launch On-Demand Instances. InsufficientInstanceCapacity - We currently do not have sufficient c5.xlarge capacity in the Availability Zone you requested (eu-west-1b). Our system will be working on provisioning additional capacity. You can currently get c5.xlarge capacity by not specifying an Availability Zone in your request or choosing eu-west-1a, eu-west-1c. Launching EC2 instance failed.",
        Says::NoCapacity,
    ),
    (
        "Failed",
        "Could not launch Spot Instances. UnfulfillableCapacity - Unable to fulfill capacity due to your request configuration. Please adjust your request and try again. Launching EC2 instance failed.",
        Says::NoCapacity,
    ),
    (
        "Failed",
        "Could not launch Spot Instances. MaxSpotInstanceCountExceeded - Max spot instance count exceeded. Launching EC2 instance failed.",
        Says::NoCapacity,
    ),
    (
        "Failed",
        "The security group sg-0123456789abcdef0 does not exist. Launching EC2 instance failed.",
        Says::OtherFailure,
    ),
    (
        "Failed",
        "Could not launch On-Demand Instances. VcpuLimitExceeded - You have requested more vCPU capacity than your current vCPU limit of 32 allows for the instance bucket that the specified instance type belongs to. Please visit http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit. Launching EC2 instance failed.",
        Says::OtherFailure,
    ),
    (
        "Failed",
        "Could not launch On-Demand Instances. InsufficientFreeAddressesInSubnet - There are not enough free addresses in subnet 'subnet-0123456789abcdef0' to satisfy the requested number of instances. Launching EC2 instance failed.",
        Says::OtherFailure,
    ),
    (
        "Failed",
        "Your quota allows for 0 more running instance(s). You requested at least 1. Launching EC2 instance failed.",
        Says::OtherFailure,
    ),
    (
        "Failed",
        "The requested configuration is currently not supported. Please check the documentation for supported configurations. Launching EC2 instance failed.",
        Says::OtherFailure,
    ),
    (
        "Failed",
        "Your requested instance type (m5.large) is not supported in your requested Availability Zone (us-east-1e). Please retry your request by not specifying an Availability Zone or choosing us-east-1a, us-east-1b, us-east-1c. Launching EC2 instance failed.",
        Says::OtherFailure,
    ),
    (
        "Cancelled",
        "Instance failed to complete user's Lifecycle Action: Lifecycle Action with token 3f1e2d4c-5b6a-4789-8a0b-1c2d3e4f5a6b was abandoned: Lifecycle Action Completed with ABANDON Result",
        Says::OtherFailure,
    ),
    (
        "Successful",
        "Launching a new EC2 instance: i-0123456789abcdef0",
        Says::Fine,
    ),
    (
        "InProgress",
        "Launching a new EC2 instance: i-0123456789abcdef0",
        Says::Fine,
    ),
    ("PreInService", "", Says::Fine),
    ("WaitingForSpotInstanceId", "", Says::Fine),
    ("MidLifecycleAction", "", Says::Fine),
    (
        "Successful",
        "Terminating EC2 instance: i-0fedcba9876543210",
        Says::Fine,
    ),
    ("InProgress", "", Says::Fine),
];

/// An activity as DescribeScalingActivities returns it: the reason in StatusMessage and,
/// for a failure, again in Description; `with_message` false leaves StatusMessage out.
fn activity(
    id: &str,
    (status, message, says): &(&str, &str, Says),
    start_time: Option<SystemTime>,
    with_message: bool,
) -> ScalingActivity {
    let description = if *says == Says::Fine {
        "Launching a new EC2 instance: i-0123456789abcdef0".to_owned()
    } else {
        format!("Launching a new EC2 instance.  Status Reason: {message}")
    };
    ScalingActivity {
        activity_id: id.into(),
        status_code: (*status).into(),
        status_message: with_message.then(|| (*message).into()),
        description: Some(description),
        start_time,
    }
}

/// When an activity started, against the agent's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Started {
    /// Listed when the agent read the ASG, before its request: someone else's.
    Listed,
    /// After the request.
    After,
    /// A few seconds before it: AWS's clock a little behind ours.
    JustBefore,
    /// Ten minutes or more before it: someone else's, missing from our read.
    LongBefore,
    /// AWS gave no start time.
    Unknown,
}

impl Started {
    fn is_ours(self) -> bool {
        !matches!(self, Started::Listed | Started::LongBefore)
    }
}

#[derive(Debug)]
struct Observed {
    activity: ScalingActivity,
    started: Started,
    says: Says,
}

#[test]
fn wait_verdicts_follow_the_new_instances_and_our_own_activities() {
    let mut rng = Rng(0x0005_ca1e_0000_0002);
    let requested_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let timeout = Duration::from_secs(120);
    let mut seen = [0usize; 4];
    for case in 0..5_000 {
        let mut scene = Scene::generate(&mut rng);
        scene.room = scene.count + rng.int(0, 2);
        let before = scene.state(&mut rng);
        // Failures listed at the read belong to someone else, however bad they look.
        let listed: Vec<Observed> = (0..rng.below(3))
            .map(|i| {
                let entry = rng.pick(&CATALOGUE[..13]);
                let start_time = requested_at - Duration::from_secs(rng.below(3_600));
                Observed {
                    activity: activity(&format!("listed-{i}"), entry, Some(start_time), true),
                    started: Started::Listed,
                    says: entry.2,
                }
            })
            .collect();
        let listed_activities: Vec<ScalingActivity> =
            listed.iter().map(|o| o.activity.clone()).collect();
        let scaled = plan_target(&before, scene.count, &listed_activities, requested_at)
            .unwrap_or_else(|failure| panic!("case {case}: {failure:?} for {scene:?}"));

        // Later: the instances listed before are still there in any state, or gone; new
        // ones are InService, launching or already leaving.
        let mut instances = Vec::new();
        for listed_instance in &before.instances {
            if rng.chance(20) {
                continue;
            }
            let lifecycle_state = if rng.chance(70) {
                "InService"
            } else {
                *rng.pick(&ON_ITS_WAY_OUT)
            };
            instances.push(AsgInstance {
                instance_id: listed_instance.instance_id.clone(),
                lifecycle_state: lifecycle_state.into(),
            });
        }
        let new_in_service = rng.int(0, scene.needed() + 1);
        let new = |n: i32, states: &[&str], rng: &mut Rng, tag: &str| -> Vec<AsgInstance> {
            (0..n)
                .map(|i| AsgInstance {
                    instance_id: format!("i-new-{tag}-{i:02}"),
                    lifecycle_state: (*rng.pick(states)).into(),
                })
                .collect()
        };
        instances.extend(new(new_in_service, &["InService"], &mut rng, "up"));
        let pending = rng.int(0, 2);
        instances.extend(new(
            pending,
            &RUNNING_OR_LAUNCHING[1..],
            &mut rng,
            "pending",
        ));
        let gone = rng.int(0, 1);
        instances.extend(new(gone, &ON_ITS_WAY_OUT, &mut rng, "gone"));
        rng.shuffle(&mut instances);
        let now_state = AsgState {
            instances,
            ..before.clone()
        };

        let mut observed = listed;
        for i in 0..rng.below(4) {
            let started = *rng.pick(&[
                Started::After,
                Started::After,
                Started::JustBefore,
                Started::LongBefore,
                Started::Unknown,
            ]);
            let start_time = match started {
                Started::After => Some(requested_at + Duration::from_millis(rng.below(600_000))),
                Started::JustBefore => {
                    Some(requested_at - Duration::from_millis(1 + rng.below(10_000)))
                }
                Started::LongBefore | Started::Listed => {
                    Some(requested_at - Duration::from_secs(600 + rng.below(7_200)))
                }
                Started::Unknown => None,
            };
            let entry = rng.pick(&CATALOGUE);
            observed.push(Observed {
                activity: activity(&format!("new-{i}"), entry, start_time, rng.chance(85)),
                started,
                says: entry.2,
            });
        }
        rng.shuffle(&mut observed);
        let activities: Vec<ScalingActivity> =
            observed.iter().map(|o| o.activity.clone()).collect();

        let elapsed = match rng.below(3) {
            0 => Duration::from_millis(rng.below(120_000)),
            1 => timeout,
            _ => timeout + Duration::from_millis(1 + rng.below(100_000)),
        };
        let verdict = judge(
            &scaled,
            timeout,
            &now_state,
            &activities,
            requested_at + elapsed,
        );

        // What should happen, in order: enough new instances InService win; otherwise the
        // first failure among our own activities (AWS lists newest first) says why;
        // otherwise the wait times out once the timeout has passed, and goes on before.
        let first_failure = observed
            .iter()
            .find(|o| o.started.is_ours() && o.says != Says::Fine);
        let expected = if new_in_service >= scene.needed() {
            WatchVerdict::Ready {
                in_service: new_in_service,
            }
        } else if let Some(failure) = first_failure {
            let message = failure
                .activity
                .status_message
                .clone()
                .or_else(|| failure.activity.description.clone())
                .unwrap_or_default();
            match failure.says {
                Says::NoCapacity => {
                    WatchVerdict::Failed(CapacityFailure::InsufficientCapacity { message })
                }
                _ => WatchVerdict::Failed(CapacityFailure::ActivityFailed {
                    status: failure.activity.status_code.clone(),
                    message,
                }),
            }
        } else if elapsed >= timeout {
            WatchVerdict::Failed(CapacityFailure::Timeout { waited: elapsed })
        } else {
            WatchVerdict::Waiting
        };
        seen[match &expected {
            WatchVerdict::Ready { .. } => 0,
            WatchVerdict::Waiting => 1,
            WatchVerdict::Failed(CapacityFailure::Timeout { .. }) => 2,
            WatchVerdict::Failed(_) => 3,
        }] += 1;
        assert_eq!(
            verdict,
            expected,
            "case {case}: {scene:?}, {new_in_service} new InService of {} needed, elapsed {elapsed:?}, activities {observed:#?}",
            scene.needed()
        );
    }
    assert!(
        seen.iter().all(|n| *n >= 250),
        "every kind of verdict is exercised (ready, waiting, timeout, failed): {seen:?}"
    );
}

// --- NTH's node-action plans ------------------------------------------------------------

/// (Spot Guard, TAINT_NODE, ENABLE_REBALANCE_DRAINING, CORDON_ONLY).
type RebalanceOptions = (bool, bool, bool, bool);

/// NTH's documented rules for a rebalance recommendation, written out case by case:
/// (Spot Guard, TAINT_NODE, ENABLE_REBALANCE_DRAINING, CORDON_ONLY) → (tainted, drained).
/// A recommendation only cordons by default; ENABLE_REBALANCE_DRAINING drains, CORDON_ONLY
/// never drains; TAINT_NODE taints, and Spot Guard always taints.
const REBALANCE_RULES: [(RebalanceOptions, (bool, bool)); 16] = [
    ((false, false, false, false), (false, false)),
    ((false, false, false, true), (false, false)),
    ((false, false, true, false), (false, true)),
    ((false, false, true, true), (false, false)),
    ((false, true, false, false), (true, false)),
    ((false, true, false, true), (true, false)),
    ((false, true, true, false), (true, true)),
    ((false, true, true, true), (true, false)),
    ((true, false, false, false), (true, false)),
    ((true, false, false, true), (true, false)),
    ((true, false, true, false), (true, true)),
    ((true, false, true, true), (true, false)),
    ((true, true, false, false), (true, false)),
    ((true, true, false, true), (true, false)),
    ((true, true, true, false), (true, true)),
    ((true, true, true, true), (true, false)),
];

/// Spot interruption, scheduled maintenance, ASG termination: (TAINT_NODE, CORDON_ONLY) →
/// (tainted with the event's key, drained). Cordon and drain, unless CORDON_ONLY.
const DRAIN_NOW_RULES: [((bool, bool), (bool, bool)); 4] = [
    ((false, false), (false, true)),
    ((false, true), (false, false)),
    ((true, false), (true, true)),
    ((true, true), (true, false)),
];

/// (the node is drained, ENABLE_OUT_OF_SERVICE_TAINT) → out-of-service taint after the
/// drain: only after a drain that happens, and only when asked for.
const OUT_OF_SERVICE_RULES: [((bool, bool), bool); 4] = [
    ((false, false), false),
    ((false, true), false),
    ((true, false), false),
    ((true, true), true),
];

fn rule<K: PartialEq + std::fmt::Debug, V: Copy>(rules: &[(K, V)], key: K) -> V {
    rules
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no rule for {key:?}"))
}

fn settings_from(bits: u32, effect: TaintEffect) -> ActionSettings {
    ActionSettings {
        spot_guard: bits & 1 != 0,
        taint_node: bits & 2 != 0,
        taint_effect: effect,
        cordon_only: bits & 4 != 0,
        enable_rebalance_draining: bits & 8 != 0,
        exclude_from_load_balancers: bits & 16 != 0,
        enable_out_of_service_taint: bits & 32 != 0,
    }
}

#[test]
fn node_action_plans_follow_nth_for_every_setting_and_event_id() {
    let mut rng = Rng(0x0005_ca1e_0000_0003);
    let effects = [
        TaintEffect::NoSchedule,
        TaintEffect::PreferNoSchedule,
        TaintEffect::NoExecute,
    ];
    for bits in 0..64 {
        for effect in effects {
            let settings = settings_from(bits, effect);
            let (rebalance_taint, rebalance_drain) = rule(
                &REBALANCE_RULES,
                (
                    settings.spot_guard,
                    settings.taint_node,
                    settings.enable_rebalance_draining,
                    settings.cordon_only,
                ),
            );
            let (drain_now_taint, drain_now_drain) = rule(
                &DRAIN_NOW_RULES,
                (settings.taint_node, settings.cordon_only),
            );
            for _ in 0..20 {
                let length = usize::try_from(rng.below(130)).unwrap_or(0);
                let event_id: String = (0..length)
                    .map(|_| {
                        char::from(
                            b"abcdef0123456789-"[usize::try_from(rng.below(17)).unwrap_or(0)],
                        )
                    })
                    .collect();
                // Kubernetes label values, and so NTH's taint values, hold 63 characters.
                let taint_value: String = event_id.chars().take(63).collect();
                let key = *rng.pick(&[
                    SPOT_ITN_TAINT,
                    SCHEDULED_MAINTENANCE_TAINT,
                    ASG_LIFECYCLE_TAINT,
                ]);
                let rebalance = plan_rebalance(&settings, &event_id);
                let drain_now = plan_drain_now(&settings, key, &event_id);
                let context = format!("{settings:?} {event_id:?}: {rebalance:?} / {drain_now:?}");
                for (plan, taint_key, tainted, drained) in [
                    (
                        &rebalance,
                        REBALANCE_TAINT,
                        rebalance_taint,
                        rebalance_drain,
                    ),
                    (&drain_now, key, drain_now_taint, drain_now_drain),
                ] {
                    assert!(plan.cordon, "every notice cordons: {context}");
                    assert_eq!(plan.drain, drained, "{context}");
                    assert_eq!(
                        plan.out_of_service_after_drain,
                        rule(
                            &OUT_OF_SERVICE_RULES,
                            (drained, settings.enable_out_of_service_taint)
                        ),
                        "{context}"
                    );
                    assert_eq!(
                        plan.exclude_from_load_balancers, settings.exclude_from_load_balancers,
                        "{context}"
                    );
                    let taint = plan
                        .taint
                        .as_ref()
                        .map(|t| (t.key, t.value.clone(), t.effect));
                    assert_eq!(
                        taint,
                        tainted.then(|| (taint_key, taint_value.clone(), effect)),
                        "{context}"
                    );
                }
            }
        }
    }
}

// --- The agent over generated notice sequences -------------------------------------------

const NODE: &str = "ip-10-0-6-6.ec2.internal";
const SPOT_ASG: &str = "spot";
const ON_DEMAND_ASG: &str = "on-demand";
const POLL: Duration = Duration::from_millis(30);
const PODS: usize = 4;
const INTERRUPTION: (&str, &str) = ("terminate", "2026-11-24T12:00:00Z");
/// Every wait on the agent ends by then.
const BOUND: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Step {
    Rebalance(Option<&'static str>),
    SpotItn(bool),
    ImdsErrors(u32),
    ImdsDown(bool),
    SpotBehaviour(Behaviour),
    SpotAtMax(bool),
    Wait(u32),
}

fn script(rng: &mut Rng) -> Vec<Step> {
    let notice_times = ["2026-11-24T10:00:00Z", "2026-11-24T11:30:00Z"];
    let behaviours = [
        Behaviour::Healthy,
        Behaviour::InsufficientCapacity,
        Behaviour::NeverInService,
        Behaviour::Cancelled,
    ];
    let length = 3 + rng.below(6);
    (0..length)
        .map(|_| match rng.below(10) {
            0..=2 => Step::Rebalance(rng.chance(75).then(|| *rng.pick(&notice_times))),
            3 => Step::SpotItn(rng.chance(50)),
            4 => Step::ImdsErrors(u32::try_from(rng.range(1, 8)).unwrap_or(1)),
            5 => Step::ImdsDown(rng.chance(50)),
            6 => Step::SpotBehaviour(*rng.pick(&behaviours)),
            7 => Step::SpotAtMax(rng.chance(50)),
            _ => Step::Wait(u32::try_from(rng.range(1, 8)).unwrap_or(1)),
        })
        .collect()
}

/// The flags the chart sets for Spot Guard with TAINT_NODE and events on, parsed as the
/// binary parses them, with pauses and timeouts short enough for a script to run in seconds.
fn agent_config(imds_url: &str) -> Config {
    let mut flags = harness::spot_guard_flags(SPOT_ASG, ON_DEMAND_ASG);
    for flag in [
        "--taint-node=true",
        "--metadata-tries=1",
        "--emit-kubernetes-events=true",
    ] {
        flags.push(flag.to_owned());
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut config = harness::config(NODE, imds_url, &flags).expect("the flags are accepted");
    config.tuning.poll_interval = POLL;
    config.tuning.eviction_retry_interval = Duration::from_millis(30);
    config.tuning.drain_poll_interval = Duration::from_millis(20);
    // The whole drain.
    config.node_termination_grace_period = Duration::from_secs(1);
    let settings = config.spot_guard.as_mut().expect("Spot Guard is on");
    harness::fast_spot_guard(settings);
    settings.scale_timeout = Duration::from_secs(5);
    settings.capacity_check_timeout = Duration::from_millis(400);
    settings.check_interval = Duration::from_millis(30);
    config
}

async fn wait_for_polls(imds: &ImdsSim, polls: u64, context: &str) {
    let target = imds.gets(REBALANCE_RECOMMENDATION_PATH) + polls;
    let polled = tokio::time::timeout(BOUND, async {
        while imds.gets(REBALANCE_RECOMMENDATION_PATH) < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "the monitor stopped polling: {context}");
}

/// What the agent acted on, read once it has finished everything it started.
#[derive(Debug)]
struct Acted {
    /// Rebalance recommendations it started acting on (their Kubernetes events).
    recommendations: usize,
    /// Spot interruptions it started acting on.
    interruptions: usize,
    /// Notices whose actions finished.
    handled: u32,
}

/// What IMDS still serves once it is healthy again: the agent must act on it.
#[derive(Debug, Clone, Copy)]
struct Serving {
    rebalance: bool,
    interruption: bool,
}

/// Waits (bounded) for evidence that the agent has acted on what IMDS still serves and
/// finished every notice it started: each notice it acts on writes an event first thing; a
/// rebalance flow counts as handled when it ends, unless an interruption preempts it, after
/// which the interruption's handling is the last thing the agent does (it is recorded as
/// handled on the Node, and the agent ignores recommendations from then on).
async fn wait_until_finished(
    agent: &RunningAgent,
    kube: &FakeKube,
    serving: Serving,
    context: &str,
) -> Acted {
    let interruption_id = spot_itn_event_id(&InstanceAction {
        action: INTERRUPTION.0.into(),
        time: INTERRUPTION.1.into(),
    });
    let handled = agent.handled();
    let started = Instant::now();
    loop {
        assert!(
            agent.reporter.flush(BOUND).await,
            "the agent's events are written: {context}"
        );
        let events = kube.events();
        let count = |wanted: &str| {
            events
                .iter()
                .filter(|event| event.reason.as_deref() == Some(wanted))
                .count()
        };
        let acted = Acted {
            recommendations: count(reason::REBALANCE_RECOMMENDATION),
            interruptions: count(reason::SPOT_INTERRUPTION),
            handled: *handled.borrow(),
        };
        let record = kube
            .node(NODE)
            .map(|node| NodeRecord::from_node(&node))
            .unwrap_or_default();
        let acted_on_what_is_served = (!serving.interruption || acted.interruptions > 0)
            && (!serving.rebalance || acted.recommendations + acted.interruptions > 0);
        let finished = if acted.interruptions > 0 || serving.interruption {
            record.handled(&interruption_id)
        } else {
            usize::try_from(acted.handled).unwrap_or(usize::MAX) >= acted.recommendations
        };
        if acted_on_what_is_served && finished {
            return acted;
        }
        assert!(
            started.elapsed() < BOUND,
            "within {BOUND:?}, the agent did not act on what IMDS serves ({serving:?}) or did not finish what it started ({acted:?}, {record:?}): {context}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_script(seed: u64, steps: &[Step]) {
    let context = format!("seed {seed:#x}, script {steps:?}");
    let imds = ImdsSim::start().await.expect("IMDS simulator");
    let asg = AsgSim::start().await.expect("ASG simulator");
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    for name in [SPOT_ASG, ON_DEMAND_ASG] {
        asg.add_group(
            name,
            GroupSpec {
                desired: 2,
                max: 10,
                launch_delay: Duration::from_millis(60),
                ..GroupSpec::default()
            },
        );
    }
    kube.add_node(NODE);
    for i in 0..PODS {
        kube.add_pod(FakePod::new("default", &format!("web-{i}"), NODE));
    }
    let agent = harness::start(
        &agent_config(&imds.url()),
        &kube.url(),
        Some(harness::aws(&asg)),
    )
    .await
    .expect("the agent starts");

    let mut recommendations = BTreeSet::new();
    let mut serving_rebalance = false;
    let mut serving_interruption = false;
    for step in steps {
        match step {
            Step::Rebalance(time) => {
                imds.set_rebalance(*time);
                serving_rebalance = time.is_some();
                if let Some(time) = time {
                    recommendations.insert(rebalance_event_id(&RebalanceRecommendation {
                        notice_time: (*time).to_owned(),
                    }));
                }
            }
            Step::SpotItn(on) => {
                imds.set_spot_action(on.then_some(INTERRUPTION));
                serving_interruption = *on;
            }
            Step::ImdsErrors(count) => imds.fail_next_gets(*count, 500),
            Step::ImdsDown(down) => imds.set_down(*down),
            Step::SpotBehaviour(behaviour) => {
                asg.set_behaviour(SPOT_ASG, *behaviour).expect("spot group");
            }
            Step::SpotAtMax(at_max) => {
                let desired = asg.group(SPOT_ASG).expect("spot group").desired;
                asg.set_max_size(SPOT_ASG, if *at_max { desired } else { 10 })
                    .expect("spot group");
            }
            Step::Wait(polls) => tokio::time::sleep(POLL * *polls).await,
        }
        tokio::time::sleep(POLL).await;
    }
    // IMDS answers again and what it serves stays: once the monitor has read it a few
    // times, every notice it will ever send is sent.
    imds.set_down(false);
    imds.fail_next_gets(0, 500);
    wait_for_polls(&imds, 3, &context).await;
    let serving = Serving {
        rebalance: serving_rebalance,
        interruption: serving_interruption,
    };
    let acted = wait_until_finished(&agent, &kube, serving, &context).await;
    let context = format!("{context}: {acted:?}");

    assert!(
        agent.handled().has_changed().is_ok(),
        "the agent stopped: {context}"
    );
    assert!(
        acted.interruptions <= 1,
        "one interruption served, acted on {} times: {context}",
        acted.interruptions
    );
    assert!(
        acted.recommendations <= recommendations.len(),
        "{} distinct recommendations served, acted on {} times: {context}",
        recommendations.len(),
        acted.recommendations
    );
    for group in [SPOT_ASG, ON_DEMAND_ASG] {
        let raised = asg
            .calls_of("SetDesiredCapacity")
            .iter()
            .filter(|call| call.group.as_deref() == Some(group) && call.error_code.is_none())
            .count();
        assert!(
            raised <= acted.recommendations,
            "{group} raised {raised} times for {} recommendations acted on: {context}",
            acted.recommendations
        );
    }
    let mut evicted = BTreeSet::new();
    for eviction in kube.evictions() {
        if eviction.outcome == EvictionOutcome::Allowed {
            assert!(
                evicted.insert(eviction.name.clone()),
                "{} evicted twice: {context}",
                eviction.name
            );
        }
    }
    if acted.recommendations > 0 && acted.interruptions == 0 {
        // Each step of a replacement is recorded on the Node before it is taken.
        let node = kube.node(NODE).expect("the node");
        let replacement =
            ReplacementRecord::parse(record::annotation(&node, REPLACEMENT_ANNOTATION))
                .unwrap_or_else(|| panic!("no replacement record on the node: {context}"));
        assert!(
            recommendations.contains(&replacement.event_id),
            "{replacement:?}: {context}"
        );
    }
    assert!(
        tokio::time::timeout(BOUND, agent.stop()).await.is_ok(),
        "the agent stops: {context}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_notice_sequence_acts_once_per_notice_scales_each_asg_once_and_evicts_once() {
    spot_guard::tls::ensure_crypto_provider();
    let mut rng = Rng(0x0005_ca1e_0000_0004);
    for _ in 0..8 {
        let seed = rng.next();
        let steps = script(&mut Rng(seed | 1));
        run_script(seed, &steps).await;
    }
}
