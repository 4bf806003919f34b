//! The real SDK client (`AwsAutoScaling`) against the project's ASG simulator: what
//! AWS answers, how spot-guard reads it, and how errors surface.

use std::time::{Duration, SystemTime};

use spot_guard::asg::{AsgError, AutoScaling, ScalingActivity};
use spot_guard::aws::{AwsAutoScaling, AwsSettings};
use spot_guard::sim::asg::{AsgSim, Behaviour, Fault, GroupSpec};

const WAIT: Duration = Duration::from_secs(10);

fn install_crypto() {
    spot_guard::tls::ensure_crypto_provider();
}

async fn sim_with(name: &str, spec: GroupSpec) -> AsgSim {
    install_crypto();
    let sim = AsgSim::start().await.expect("start ASG simulator");
    sim.add_group(name, spec);
    sim
}

fn client(sim: &AsgSim, max_attempts: u32) -> AwsAutoScaling {
    let settings = AwsSettings {
        endpoint_url: None,
        max_attempts,
    };
    AwsAutoScaling::for_endpoint(sim.url(), "us-east-1", &settings)
}

fn spec(min: i32, max: i32, desired: i32) -> GroupSpec {
    GroupSpec {
        min,
        max,
        desired,
        launch_delay: Duration::from_millis(100),
        ..GroupSpec::default()
    }
}

/// Polls `check` until it returns true; fails the test after `WAIT`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn describe_maps_sizes_instances_and_capacity_rebalance() {
    let sim = sim_with(
        "spot",
        GroupSpec {
            capacity_rebalance: true,
            ..spec(1, 6, 3)
        },
    )
    .await;
    sim.add_group("on-demand", spec(0, 2, 0));
    let aws = client(&sim, 3);

    let state = aws.describe("spot").await.expect("describe spot");
    assert_eq!(state.name, "spot");
    assert_eq!(
        (state.min_size, state.max_size, state.desired_capacity),
        (1, 6, 3)
    );
    assert_eq!(state.in_service(), 3);
    let ids: Vec<&str> = state
        .instances
        .iter()
        .map(|i| i.instance_id.as_str())
        .collect();
    assert_eq!(ids, sim.group("spot").expect("spot").instance_ids);
    assert!(ids.iter().all(|id| id.starts_with("i-0")), "{ids:?}");
    assert!(state.capacity_rebalance);

    let on_demand = aws.describe("on-demand").await.expect("describe on-demand");
    assert_eq!(
        (on_demand.desired_capacity, on_demand.instances.len()),
        (0, 0)
    );
    assert!(!on_demand.capacity_rebalance);
}

#[tokio::test]
async fn raising_desired_launches_one_instance_that_becomes_in_service() {
    let sim = sim_with("spot", spec(1, 6, 3)).await;
    let aws = client(&sim, 3);

    aws.set_desired_capacity("spot", 4)
        .await
        .expect("set desired");

    let group = sim.group("spot").expect("spot");
    assert_eq!(group.desired, 4);
    assert_eq!(group.in_service + group.pending, 4);
    let calls = sim.calls_of("SetDesiredCapacity");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].desired_before, calls[0].desired_after),
        (Some(3), Some(4))
    );

    eventually("the new instance is InService", || async {
        aws.describe("spot").await.expect("describe").in_service() == 4
    })
    .await;
    let state = aws.describe("spot").await.expect("describe");
    assert_eq!(state.desired_capacity, 4);
    assert_eq!(state.instances.len(), 4);

    let activities = aws.scaling_activities("spot").await.expect("activities");
    assert_eq!(activities.len(), 1);
    assert_eq!(activities[0].status_code, "Successful");
    assert!(activities[0].start_time.is_some());
}

#[tokio::test]
async fn set_desired_sends_honor_cooldown_false() {
    let sim = sim_with("spot", spec(1, 6, 3)).await;
    client(&sim, 3)
        .set_desired_capacity("spot", 4)
        .await
        .expect("set desired");

    let call = &sim.calls_of("SetDesiredCapacity")[0];
    assert_eq!(call.group.as_deref(), Some("spot"));
    assert_eq!(call.param("DesiredCapacity"), Some("4"));
    assert_eq!(call.param("HonorCooldown"), Some("false"));
}

#[tokio::test]
async fn above_max_size_is_a_validation_error_and_changes_nothing() {
    let sim = sim_with("spot", spec(1, 4, 4)).await;
    let error = client(&sim, 3)
        .set_desired_capacity("spot", 5)
        .await
        .expect_err("above MaxSize must be refused");

    assert!(matches!(error, AsgError::Validation { .. }), "{error:?}");
    assert!(error.is_above_max_size(), "{error}");
    assert!(error.to_string().contains("above max value 4"), "{error}");
    assert_eq!(sim.group("spot").expect("spot").desired, 4);
}

#[tokio::test]
async fn unknown_group_is_not_found() {
    let sim = sim_with("spot", spec(1, 4, 2)).await;
    let aws = client(&sim, 3);

    let error = aws
        .describe("no-such-asg")
        .await
        .expect_err("unknown group");
    assert_eq!(
        error,
        AsgError::NotFound {
            asg: "no-such-asg".to_string()
        }
    );

    let error = aws
        .set_desired_capacity("no-such-asg", 3)
        .await
        .expect_err("unknown group");
    assert_eq!(
        error,
        AsgError::NotFound {
            asg: "no-such-asg".to_string()
        }
    );
    assert!(error.to_string().contains("no-such-asg"), "{error}");
}

#[tokio::test]
async fn insufficient_capacity_ends_in_a_failed_activity() {
    let sim = sim_with(
        "spot",
        GroupSpec {
            behaviour: Behaviour::InsufficientCapacity,
            ..spec(1, 6, 3)
        },
    )
    .await;
    let aws = client(&sim, 3);
    aws.set_desired_capacity("spot", 4)
        .await
        .expect("set desired");

    eventually("the launch activity has failed", || async {
        let activities = aws.scaling_activities("spot").await.expect("activities");
        activities
            .first()
            .is_some_and(|a| a.status_code == "Failed")
    })
    .await;
    let activities = aws.scaling_activities("spot").await.expect("activities");
    let message = activities[0].status_message.clone().unwrap_or_default();
    assert!(
        message.contains("InsufficientInstanceCapacity"),
        "{message}"
    );
    let state = aws.describe("spot").await.expect("describe");
    assert_eq!((state.desired_capacity, state.in_service()), (4, 3));
}

#[tokio::test]
async fn activities_come_newest_first_including_seeded_old_failures() {
    let sim = sim_with("spot", spec(1, 6, 3)).await;
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    sim.add_activity(
        "spot",
        ScalingActivity {
            activity_id: "old-failure".to_string(),
            status_code: "Failed".to_string(),
            status_message: Some("InsufficientInstanceCapacity".to_string()),
            description: Some("Launching a new EC2 instance".to_string()),
            start_time: Some(an_hour_ago),
        },
    )
    .expect("seed activity");
    // Ordering, not consistency, is under test here.
    sim.set_describe_lag(Duration::ZERO);
    let aws = client(&sim, 3);
    aws.set_desired_capacity("spot", 4)
        .await
        .expect("set desired");

    let activities = aws.scaling_activities("spot").await.expect("activities");
    assert_eq!(activities.len(), 2);
    assert_ne!(activities[0].activity_id, "old-failure");
    assert_eq!(activities[1].activity_id, "old-failure");
    assert_eq!(activities[1].status_code, "Failed");
    let seeded = activities[1].start_time.expect("start time");
    let drift = seeded
        .duration_since(an_hour_ago)
        .unwrap_or_else(|e| e.duration());
    assert!(
        drift < Duration::from_secs(1),
        "start time read back as {seeded:?}"
    );
    assert!(activities[0].start_time.expect("start time") > seeded);
}

#[tokio::test]
async fn throttling_is_retried_by_the_sdk() {
    let sim = sim_with("spot", spec(1, 6, 3)).await;
    sim.fail_next("SetDesiredCapacity", 2, Fault::Throttling);

    client(&sim, 3)
        .set_desired_capacity("spot", 4)
        .await
        .expect("third attempt succeeds");

    let calls = sim.calls_of("SetDesiredCapacity");
    let codes: Vec<Option<&str>> = calls.iter().map(|c| c.error_code.as_deref()).collect();
    assert_eq!(codes, [Some("Throttling"), Some("Throttling"), None]);
    assert_eq!(sim.group("spot").expect("spot").desired, 4);
}

#[tokio::test]
async fn throttling_without_retries_surfaces_as_an_api_error() {
    let sim = sim_with("spot", spec(1, 6, 3)).await;
    sim.fail_next("SetDesiredCapacity", 1, Fault::Throttling);

    let error = client(&sim, 1)
        .set_desired_capacity("spot", 4)
        .await
        .expect_err("one attempt only");

    assert!(
        matches!(&error, AsgError::Api { code, .. } if code == "Throttling"),
        "{error:?}"
    );
    assert_eq!(sim.calls_of("SetDesiredCapacity").len(), 1);
    assert_eq!(sim.group("spot").expect("spot").desired, 3);
}

#[tokio::test]
async fn access_denied_is_an_api_error_and_not_retried() {
    let sim = sim_with("spot", spec(1, 6, 3)).await;
    sim.fail_next("DescribeAutoScalingGroups", 1, Fault::AccessDenied);

    let error = client(&sim, 3).describe("spot").await.expect_err("denied");

    assert!(
        matches!(&error, AsgError::Api { code, .. } if code == "AccessDenied"),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("autoscaling:DescribeAutoScalingGroups"),
        "{error}"
    );
    assert_eq!(sim.calls_of("DescribeAutoScalingGroups").len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried() {
    let sim = sim_with("spot", spec(1, 6, 3)).await;
    sim.fail_next("DescribeScalingActivities", 1, Fault::ServiceUnavailable);
    sim.fail_next("DescribeAutoScalingGroups", 1, Fault::InternalFailure);
    let aws = client(&sim, 3);

    aws.scaling_activities("spot")
        .await
        .expect("retried after 503");
    aws.describe("spot").await.expect("retried after 500");
    assert_eq!(sim.calls().len(), 4);
}

#[tokio::test]
async fn nothing_listening_is_a_transport_error() {
    install_crypto();
    let sim = AsgSim::start().await.expect("start");
    let url = sim.url().to_string();
    sim.shutdown().await;
    let aws = AwsAutoScaling::for_endpoint(&url, "us-east-1", &AwsSettings::default());

    let error = aws.describe("spot").await.expect_err("nobody answers");
    assert!(matches!(error, AsgError::Transport { .. }), "{error:?}");
}

#[tokio::test]
async fn terminate_instance_with_decrement_shrinks_the_group() {
    let sim = sim_with("spot", spec(1, 6, 3)).await;
    let aws = client(&sim, 3);
    let victim = sim.group("spot").expect("spot").instance_ids[0].clone();

    aws.terminate_instance(&victim, true)
        .await
        .expect("terminate");

    let group = sim.group("spot").expect("spot");
    assert_eq!(group.desired, 2);
    assert!(!group.instance_ids.contains(&victim));
    let call = &sim.calls_of("TerminateInstanceInAutoScalingGroup")[0];
    assert_eq!(call.param("ShouldDecrementDesiredCapacity"), Some("true"));
    assert_eq!(
        (call.desired_before, call.desired_after),
        (Some(3), Some(2))
    );
}

#[tokio::test]
async fn describe_answers_the_state_from_before_a_change_until_the_lag_has_passed() {
    let sim = sim_with("spot", spec(1, 6, 3)).await;
    sim.set_describe_lag(Duration::from_millis(600));
    let aws = client(&sim, 3);
    aws.set_desired_capacity("spot", 4)
        .await
        .expect("set desired");

    let right_after = aws.describe("spot").await.expect("describe");
    assert_eq!(
        right_after.desired_capacity, 3,
        "a read right after the change"
    );
    assert_eq!(right_after.instances.len(), 3);
    assert_eq!(
        sim.group("spot").expect("spot").desired,
        4,
        "the change applied"
    );

    eventually("the read shows the change", || async {
        let state = aws.describe("spot").await.expect("describe");
        state.desired_capacity == 4 && state.instances.len() == 4
    })
    .await;
}

#[tokio::test]
async fn a_terminated_instance_is_listed_terminating_for_a_while_then_gone() {
    let sim = sim_with("spot", spec(1, 6, 3)).await;
    sim.set_describe_lag(Duration::ZERO);
    sim.set_terminate_delay("spot", Duration::from_millis(400))
        .expect("group exists");
    let aws = client(&sim, 3);
    let victim = sim.group("spot").expect("spot").instance_ids[0].clone();
    aws.terminate_instance(&victim, true)
        .await
        .expect("terminate");

    let state = aws.describe("spot").await.expect("describe");
    let listed = state.instances.iter().find(|i| i.instance_id == victim);
    assert_eq!(
        listed.map(|i| i.lifecycle_state.as_str()),
        Some("Terminating")
    );
    assert_eq!(state.desired_capacity, 2);
    assert_eq!(state.in_service(), 2);
    // AWS refuses a second termination of an instance that is already leaving.
    let again = aws.terminate_instance(&victim, true).await;
    assert!(
        matches!(&again, Err(AsgError::Validation { message, .. }) if message.contains("Instance Id not found")),
        "{again:?}"
    );
    eventually("the instance is gone", || async {
        let state = aws.describe("spot").await.expect("describe");
        !state.instances.iter().any(|i| i.instance_id == victim)
    })
    .await;
}

#[tokio::test]
async fn a_lost_answer_still_applies_the_change() {
    let sim = sim_with("spot", spec(1, 6, 3)).await;
    sim.fail_next("SetDesiredCapacity", 1, Fault::AnswerLost);
    let answer = client(&sim, 1).set_desired_capacity("spot", 4).await;
    assert!(answer.is_err(), "the caller saw an error: {answer:?}");
    assert_eq!(sim.group("spot").expect("spot").desired, 4);
}

#[tokio::test]
async fn each_launch_has_its_own_outcome() {
    let sim = sim_with("spot", spec(1, 6, 3)).await;
    sim.set_describe_lag(Duration::ZERO);
    sim.set_launch_plan(
        "spot",
        &[Behaviour::Healthy, Behaviour::InsufficientCapacity],
    )
    .expect("group exists");
    let aws = client(&sim, 3);
    aws.set_desired_capacity("spot", 5)
        .await
        .expect("set desired");
    eventually("the first launch is InService", || async {
        aws.describe("spot").await.expect("describe").in_service() == 4
    })
    .await;
    let activities = aws.scaling_activities("spot").await.expect("activities");
    let failed = activities
        .iter()
        .filter(|a| a.status_code == "Failed")
        .count();
    assert_eq!(failed, 1, "{activities:?}");
    assert_eq!(sim.group("spot").expect("spot").in_service, 4);
}

#[tokio::test]
async fn activity_times_come_from_aws_clock() {
    let sim = sim_with("spot", spec(1, 6, 3)).await;
    sim.set_describe_lag(Duration::ZERO);
    sim.set_activity_clock_skew(-90_000);
    let aws = client(&sim, 3);
    let before = SystemTime::now();
    aws.set_desired_capacity("spot", 4)
        .await
        .expect("set desired");
    let activities = aws.scaling_activities("spot").await.expect("activities");
    let started = activities[0].start_time.expect("start time");
    let behind = before.duration_since(started).unwrap_or_default();
    assert!(
        behind > Duration::from_secs(80),
        "AWS's clock runs 90 s behind ours: {started:?} vs {before:?}"
    );
}
