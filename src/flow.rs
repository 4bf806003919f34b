//! The decisions, pure: given what IMDS and the ASG said, and how long we waited,
//! what to do next. No I/O here; [`crate::spot_guard`] and [`crate::agent`] act on
//! these answers, and the table tests below cover every scenario of the flow.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::asg::{AsgError, AsgState, ScalingActivity};
use crate::node::TaintEffect;

pub const REBALANCE_TAINT: &str = "aws-node-termination-handler/rebalance-recommendation";
pub const SPOT_ITN_TAINT: &str = "aws-node-termination-handler/spot-itn";
pub const SCHEDULED_MAINTENANCE_TAINT: &str = "aws-node-termination-handler/scheduled-maintenance";
pub const ASG_LIFECYCLE_TAINT: &str = "aws-node-termination-handler/asg-lifecycle-termination";
/// Spot Guard's own: an on-demand fallback node giving itself back (NoSchedule).
pub const SCALE_BACK_TAINT: &str = "spot-guard/scale-back";
/// Every taint key this agent may set, removed again when an event is undone.
pub const AGENT_TAINTS: [&str; 5] = [
    REBALANCE_TAINT,
    SPOT_ITN_TAINT,
    SCHEDULED_MAINTENANCE_TAINT,
    ASG_LIFECYCLE_TAINT,
    SCALE_BACK_TAINT,
];
/// Tells Kubernetes to force-evict pods and detach volumes of a node that is gone.
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";
pub const OUT_OF_SERVICE_VALUE: &str = "nodeshutdown";
pub const EXCLUDE_FROM_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// NTH's value, so that only a label this agent (or NTH) set is removed again.
pub const EXCLUDE_FROM_LB_VALUE: &str = "aws-node-termination-handler";

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScalePlan {
    Scale { from: i32, to: i32 },
    CannotScale(CapacityFailure),
}

/// Desired + 1, unless that would pass MaxSize (which AWS would refuse anyway).
pub fn plan_scale_up(state: &AsgState) -> ScalePlan {
    if state.desired_capacity >= state.max_size {
        ScalePlan::CannotScale(CapacityFailure::AtMaxSize {
            desired: state.desired_capacity,
            max_size: state.max_size,
        })
    } else {
        ScalePlan::Scale {
            from: state.desired_capacity,
            to: state.desired_capacity + 1,
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

/// Whether the on-demand ASG is tried after the spot ASG's attempt.
pub fn needs_fallback(spot: &AttemptOutcome) -> bool {
    matches!(spot, AttemptOutcome::Failed(_))
}

/// What a notice does to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeActionPlan {
    pub taint: Option<Taint>,
    pub cordon: bool,
    pub drain: bool,
    /// Label the node out of external load balancers when cordoning it.
    pub exclude_from_load_balancers: bool,
    /// After a complete drain, taint the node out-of-service (NoExecute).
    pub out_of_service_after_drain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: &'static str,
    pub value: String,
    pub effect: TaintEffect,
}

/// The options that shape node actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionSettings {
    pub spot_guard: bool,
    pub taint_node: bool,
    pub taint_effect: TaintEffect,
    pub cordon_only: bool,
    pub enable_rebalance_draining: bool,
    pub exclude_from_load_balancers: bool,
    pub enable_out_of_service_taint: bool,
}

impl Default for ActionSettings {
    /// NTH's defaults: no Spot Guard, no taint, NoSchedule, rebalance only cordons.
    fn default() -> Self {
        ActionSettings {
            spot_guard: false,
            taint_node: false,
            taint_effect: TaintEffect::NoSchedule,
            cordon_only: false,
            enable_rebalance_draining: false,
            exclude_from_load_balancers: false,
            enable_out_of_service_taint: false,
        }
    }
}

/// Kubernetes label values (and so NTH's taint values) hold at most 63 characters.
pub fn taint_value(event_id: &str) -> String {
    event_id.chars().take(63).collect()
}

/// NTH's rule: a rebalance recommendation alone only cordons unless rebalance
/// draining is on; Spot Guard always taints, since its flow promises it.
pub fn plan_rebalance(settings: &ActionSettings, event_id: &str) -> NodeActionPlan {
    let drain = settings.enable_rebalance_draining && !settings.cordon_only;
    NodeActionPlan {
        taint: (settings.spot_guard || settings.taint_node).then(|| Taint {
            key: REBALANCE_TAINT,
            value: taint_value(event_id),
            effect: settings.taint_effect,
        }),
        cordon: true,
        drain,
        exclude_from_load_balancers: settings.exclude_from_load_balancers,
        out_of_service_after_drain: drain && settings.enable_out_of_service_taint,
    }
}

/// A spot interruption, scheduled maintenance or ASG termination: cordon and drain
/// at once, tainting with the event's key when TAINT_NODE is on.
pub fn plan_drain_now(
    settings: &ActionSettings,
    taint_key: &'static str,
    event_id: &str,
) -> NodeActionPlan {
    let drain = !settings.cordon_only;
    NodeActionPlan {
        taint: settings.taint_node.then(|| Taint {
            key: taint_key,
            value: taint_value(event_id),
            effect: settings.taint_effect,
        }),
        cordon: true,
        drain,
        exclude_from_load_balancers: settings.exclude_from_load_balancers,
        out_of_service_after_drain: drain && settings.enable_out_of_service_taint,
    }
}

/// Maintenance codes after which the instance comes back: the agent then undoes its cordon.
pub fn is_restart_event(code: &str) -> bool {
    matches!(
        code,
        "instance-stop" | "instance-retirement" | "instance-reboot" | "system-reboot"
    )
}

/// A node marked before a reboot has rebooted when the mark is older than its uptime.
pub fn has_rebooted_since(marked_at_unix: i64, now_unix: i64, uptime_seconds: i64) -> bool {
    now_unix - marked_at_unix >= uptime_seconds
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
    fn scale_plan_adds_one_or_reports_max_size() {
        assert_eq!(
            plan_scale_up(&asg(3, 10, 3)),
            ScalePlan::Scale { from: 3, to: 4 }
        );
        assert_eq!(
            plan_scale_up(&asg(4, 4, 4)),
            ScalePlan::CannotScale(CapacityFailure::AtMaxSize {
                desired: 4,
                max_size: 4
            })
        );
    }

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

    #[test]
    fn fallback_only_after_a_failed_spot_attempt() {
        assert!(!needs_fallback(&AttemptOutcome::Ready { from: 3, to: 4 }));
        assert!(needs_fallback(&AttemptOutcome::Failed(
            CapacityFailure::Timeout {
                waited: Duration::from_secs(120)
            }
        )));
    }

    fn settings() -> ActionSettings {
        ActionSettings {
            spot_guard: false,
            taint_node: false,
            taint_effect: TaintEffect::NoSchedule,
            cordon_only: false,
            enable_rebalance_draining: false,
            exclude_from_load_balancers: false,
            enable_out_of_service_taint: false,
        }
    }

    #[test]
    fn rebalance_plans_follow_nth_and_spot_guard() {
        let id = "rebalance-recommendation-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let nth_default = plan_rebalance(&settings(), id);
        assert_eq!(
            nth_default,
            NodeActionPlan {
                taint: None,
                cordon: true,
                drain: false,
                exclude_from_load_balancers: false,
                out_of_service_after_drain: false,
            }
        );

        let draining = plan_rebalance(
            &ActionSettings {
                enable_rebalance_draining: true,
                ..settings()
            },
            id,
        );
        assert!(draining.drain);

        let cordon_only = plan_rebalance(
            &ActionSettings {
                enable_rebalance_draining: true,
                cordon_only: true,
                ..settings()
            },
            id,
        );
        assert!(!cordon_only.drain);

        let guarded = plan_rebalance(
            &ActionSettings {
                spot_guard: true,
                ..settings()
            },
            id,
        );
        let taint = guarded.taint.unwrap();
        assert_eq!(taint.key, REBALANCE_TAINT);
        assert_eq!(taint.value.len(), 63);
        assert_eq!(taint.effect, TaintEffect::NoSchedule);
    }

    #[test]
    fn drain_now_events_drain_unless_cordon_only() {
        let plan = plan_drain_now(
            &ActionSettings {
                taint_node: true,
                enable_out_of_service_taint: true,
                exclude_from_load_balancers: true,
                ..settings()
            },
            SPOT_ITN_TAINT,
            "spot-itn-abc",
        );
        assert_eq!(plan.taint.unwrap().key, SPOT_ITN_TAINT);
        assert!(plan.cordon && plan.drain);
        assert!(plan.out_of_service_after_drain && plan.exclude_from_load_balancers);
        let cordon_only = plan_drain_now(
            &ActionSettings {
                cordon_only: true,
                enable_out_of_service_taint: true,
                ..settings()
            },
            ASG_LIFECYCLE_TAINT,
            "x",
        );
        assert!(!cordon_only.drain && cordon_only.taint.is_none());
        assert!(!cordon_only.out_of_service_after_drain);
    }

    #[test]
    fn restart_events_and_reboot_detection() {
        assert!(is_restart_event("system-reboot"));
        assert!(is_restart_event("instance-stop"));
        assert!(!is_restart_event("system-maintenance"));
        // Marked 100 s ago, up for 30 s: rebooted. Up for 300 s: not yet.
        assert!(has_rebooted_since(1_000, 1_100, 30));
        assert!(!has_rebooted_since(1_000, 1_100, 300));
    }
}
