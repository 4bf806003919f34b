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
        message: "New SetDesiredCapacity value 5 is above max value 4 for the AutoScalingGroup."
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
