//! Spot Guard's capacity workflow with the real SDK client against the ASG simulator:
//! given these two ASGs, when a replacement is asked for, which ASG grows and why.

use std::time::{Duration, SystemTime};

use spot_guard::asg::ScalingActivity;
use spot_guard::aws::{AwsAutoScaling, AwsSettings};
use spot_guard::config::SpotGuardConfig;
use spot_guard::flow::{CapacityFailure, ReplacementOutcome};
use spot_guard::report::InterruptionEvent;
use spot_guard::sim::asg::{AsgSim, Behaviour, Fault, GroupSpec};
use spot_guard::spot_guard::SpotGuard;
use tokio_util::sync::CancellationToken;

const SPOT: &str = "spot-asg";
const ON_DEMAND: &str = "on-demand-asg";

fn group(behaviour: Behaviour, desired: i32, max: i32) -> GroupSpec {
    GroupSpec {
        min: 0,
        max,
        desired,
        behaviour,
        launch_delay: Duration::from_millis(150),
        capacity_rebalance: false,
    }
}

fn config(capacity_check_timeout: Duration) -> SpotGuardConfig {
    SpotGuardConfig {
        spot_asg_name: SPOT.into(),
        on_demand_asg_name: ON_DEMAND.into(),
        scale_timeout: Duration::from_secs(10),
        capacity_check_timeout,
        check_interval: Duration::from_millis(50),
    }
}

async fn setup(spot: GroupSpec, on_demand: GroupSpec) -> AsgSim {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let sim = AsgSim::start().await.expect("ASG simulator starts");
    sim.add_group(SPOT, spot);
    sim.add_group(ON_DEMAND, on_demand);
    sim
}

fn guard(sim: &AsgSim, timeout: Duration, dry_run: bool) -> SpotGuard<AwsAutoScaling> {
    let client = AwsAutoScaling::for_endpoint(
        sim.url(),
        "us-east-1",
        &AwsSettings {
            endpoint_url: None,
            max_attempts: 1,
        },
    );
    SpotGuard::new(client, config(timeout), dry_run)
}

async fn replace(sim: &AsgSim, timeout: Duration) -> ReplacementOutcome {
    tokio::time::timeout(
        Duration::from_secs(30),
        guard(sim, timeout, false)
            .secure_replacement(&CancellationToken::new(), &InterruptionEvent::default()),
    )
    .await
    .expect("the flow ends")
}

fn desired(sim: &AsgSim, name: &str) -> i32 {
    sim.group(name).expect("group exists").desired
}

#[tokio::test]
async fn healthy_spot_asg_gets_exactly_one_more_instance_and_on_demand_is_untouched() {
    let sim = setup(
        group(Behaviour::Healthy, 3, 10),
        group(Behaviour::Healthy, 2, 10),
    )
    .await;
    let outcome = replace(&sim, Duration::from_secs(5)).await;
    assert_eq!(outcome, ReplacementOutcome::Spot);
    assert_eq!(desired(&sim, SPOT), 4);
    assert_eq!(sim.group(SPOT).unwrap().in_service, 4);
    assert_eq!(desired(&sim, ON_DEMAND), 2);
    let sets = sim.calls_of("SetDesiredCapacity");
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].param("HonorCooldown"), Some("false"));
    assert_eq!(sets[0].param("DesiredCapacity"), Some("4"));
}

#[tokio::test]
async fn insufficient_spot_capacity_falls_back_to_on_demand() {
    let sim = setup(
        group(Behaviour::InsufficientCapacity, 3, 10),
        group(Behaviour::Healthy, 2, 10),
    )
    .await;
    // A long timeout proves the failed activity, not the clock, ended the wait.
    let outcome = replace(&sim, Duration::from_secs(20)).await;
    match outcome {
        ReplacementOutcome::OnDemand {
            spot_failure: CapacityFailure::InsufficientCapacity { message },
        } => assert!(message.contains("capacity"), "{message}"),
        other => panic!("expected on-demand after insufficient capacity, got {other:?}"),
    }
    assert_eq!(desired(&sim, ON_DEMAND), 3);
    assert_eq!(sim.group(ON_DEMAND).unwrap().in_service, 3);
}

#[tokio::test]
async fn cancelled_spot_activity_falls_back_to_on_demand() {
    let sim = setup(
        group(Behaviour::Cancelled, 3, 10),
        group(Behaviour::Healthy, 2, 10),
    )
    .await;
    let outcome = replace(&sim, Duration::from_secs(20)).await;
    assert!(
        matches!(
            outcome,
            ReplacementOutcome::OnDemand {
                spot_failure: CapacityFailure::ActivityFailed { ref status, .. }
            } if status == "Cancelled"
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn spot_instance_that_never_reaches_in_service_times_out_into_on_demand() {
    let sim = setup(
        group(Behaviour::NeverInService, 3, 10),
        group(Behaviour::Healthy, 2, 10),
    )
    .await;
    let outcome = replace(&sim, Duration::from_millis(600)).await;
    assert!(
        matches!(
            outcome,
            ReplacementOutcome::OnDemand {
                spot_failure: CapacityFailure::Timeout { .. }
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(desired(&sim, ON_DEMAND), 3);
}

#[tokio::test]
async fn spot_asg_at_max_size_is_not_asked_and_on_demand_delivers() {
    let sim = setup(
        group(Behaviour::Healthy, 4, 4),
        group(Behaviour::Healthy, 2, 10),
    )
    .await;
    let outcome = replace(&sim, Duration::from_secs(5)).await;
    assert_eq!(
        outcome,
        ReplacementOutcome::OnDemand {
            spot_failure: CapacityFailure::AtMaxSize {
                desired: 4,
                max_size: 4
            }
        }
    );
    let sets = sim.calls_of("SetDesiredCapacity");
    assert_eq!(sets.len(), 1, "only the on-demand ASG is scaled");
    assert_eq!(sets[0].group.as_deref(), Some(ON_DEMAND));
    assert_eq!(desired(&sim, SPOT), 4);
}

#[tokio::test]
async fn both_asgs_failing_ends_the_flow_with_both_reasons() {
    let sim = setup(
        group(Behaviour::InsufficientCapacity, 3, 10),
        group(Behaviour::Healthy, 5, 5),
    )
    .await;
    let outcome = replace(&sim, Duration::from_secs(20)).await;
    match outcome {
        ReplacementOutcome::NoneAvailable {
            spot_failure: CapacityFailure::InsufficientCapacity { .. },
            on_demand_failure: CapacityFailure::AtMaxSize { .. },
        } => {}
        other => panic!("expected both to fail, got {other:?}"),
    }
}

#[tokio::test]
async fn an_old_failed_activity_does_not_count_against_a_new_scale_up() {
    let sim = setup(
        group(Behaviour::Healthy, 3, 10),
        group(Behaviour::Healthy, 2, 10),
    )
    .await;
    sim.add_activity(
        SPOT,
        ScalingActivity {
            activity_id: "old-failure".into(),
            status_code: "Failed".into(),
            status_message: Some(
                "We currently do not have sufficient m5.large capacity. InsufficientInstanceCapacity"
                    .into(),
            ),
            description: Some("Launching a new EC2 instance.  Status Reason: ...".into()),
            start_time: Some(SystemTime::now() - Duration::from_secs(3600)),
        },
    )
    .unwrap();
    assert_eq!(
        replace(&sim, Duration::from_secs(5)).await,
        ReplacementOutcome::Spot
    );
}

#[tokio::test]
async fn unknown_spot_asg_falls_back_with_the_error_named() {
    let sim = setup(
        group(Behaviour::Healthy, 3, 10),
        group(Behaviour::Healthy, 2, 10),
    )
    .await;
    let client = AwsAutoScaling::for_endpoint(sim.url(), "us-east-1", &AwsSettings::default());
    let guard = SpotGuard::new(
        client,
        SpotGuardConfig {
            spot_asg_name: "no-such-asg".into(),
            ..config(Duration::from_secs(5))
        },
        false,
    );
    let outcome = guard
        .secure_replacement(&CancellationToken::new(), &InterruptionEvent::default())
        .await;
    match outcome {
        ReplacementOutcome::OnDemand {
            spot_failure: CapacityFailure::Api { error },
        } => assert!(error.contains("no-such-asg"), "{error}"),
        other => panic!("expected fallback, got {other:?}"),
    }
}

#[tokio::test]
async fn access_denied_on_spot_scale_up_falls_back_to_on_demand() {
    let sim = setup(
        group(Behaviour::Healthy, 3, 10),
        group(Behaviour::Healthy, 2, 10),
    )
    .await;
    sim.fail_next("SetDesiredCapacity", 1, Fault::AccessDenied);
    let outcome = replace(&sim, Duration::from_secs(5)).await;
    match outcome {
        ReplacementOutcome::OnDemand {
            spot_failure: CapacityFailure::Api { error },
        } => assert!(error.contains("AccessDenied"), "{error}"),
        other => panic!("expected fallback, got {other:?}"),
    }
    assert_eq!(desired(&sim, SPOT), 3);
    assert_eq!(desired(&sim, ON_DEMAND), 3);
}

#[tokio::test]
async fn a_spot_interruption_preempts_the_wait_and_scales_nothing_more() {
    let sim = setup(
        group(Behaviour::NeverInService, 3, 10),
        group(Behaviour::Healthy, 2, 10),
    )
    .await;
    let preempt = CancellationToken::new();
    let guard = guard(&sim, Duration::from_secs(60), false);
    let event = InterruptionEvent::default();
    let flow = guard.secure_replacement(&preempt, &event);
    let trigger = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        preempt.cancel();
    };
    let (outcome, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(flow, trigger)
    })
    .await
    .expect("preemption ends the 60 s wait at once");
    assert_eq!(outcome, ReplacementOutcome::Preempted);
    assert_eq!(desired(&sim, ON_DEMAND), 2, "no fallback after preemption");
}

#[tokio::test]
async fn dry_run_reads_but_never_scales() {
    let sim = setup(
        group(Behaviour::Healthy, 3, 10),
        group(Behaviour::Healthy, 2, 10),
    )
    .await;
    let outcome = guard(&sim, Duration::from_secs(5), true)
        .secure_replacement(&CancellationToken::new(), &InterruptionEvent::default())
        .await;
    assert_eq!(outcome, ReplacementOutcome::DryRun);
    assert!(sim.calls_of("SetDesiredCapacity").is_empty());
    assert!(!sim.calls_of("DescribeAutoScalingGroups").is_empty());
    assert_eq!(desired(&sim, SPOT), 3);
}
