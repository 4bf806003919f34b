//! Spot Guard's capacity workflow as production runs it: the whole agent, started by
//! `run::start` through the simulator harness, gets a rebalance recommendation from its
//! IMDS; given these two ASGs, which ASG grows and why. The answer is read where a user
//! reads it: the ASGs' desired capacity and calls, and the replacement record the agent
//! writes on its Node (`kubectl get node -o yaml`).

use std::time::{Duration, SystemTime};

use spot_guard::asg::ScalingActivity;
use spot_guard::config::Config;
use spot_guard::imds::RebalanceRecommendation;
use spot_guard::monitor::rebalance_event_id;
use spot_guard::names::{REBALANCE_TAINT, REPLACEMENT_ANNOTATION, SPOT_ITN_TAINT};
use spot_guard::record::annotation;
use spot_guard::sim::asg::{Behaviour, Fault, GroupSpec};
use spot_guard::sim::fleet::{
    FleetAgent, FleetSpec, FleetWorld, ON_DEMAND_ASG, RECOMMENDATION_TIME, SPOT_ASG,
    WORKLOAD_NAMESPACE, node_name,
};
use spot_guard::sim::kube::FakePod;
use spot_guard::spot_guard::decide::{
    AttemptRecord, AttemptResult, RecordedFailure, ReplacementRecord, Role,
};
use tokio::runtime::Handle;
use tokio::time::Instant;

/// Bound of every wait for the agent.
const LIMIT: Duration = Duration::from_secs(30);

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

/// One spot node (on instance 0 of the spot ASG) with one workload pod.
async fn world(
    spot: GroupSpec,
    on_demand: GroupSpec,
    capacity_check_timeout: Duration,
) -> FleetWorld {
    spot_guard::tls::ensure_crypto_provider();
    let mut spec = FleetSpec::new(1);
    spec.spot = spot;
    spec.on_demand = on_demand;
    spec.check_interval = Duration::from_millis(50);
    spec.capacity_check_timeout = capacity_check_timeout;
    let world = FleetWorld::start(spec).await.expect("simulators start");
    // These tests are about the ASGs: the workload stops at once when evicted
    // (`terminationGracePeriodSeconds: 0`), so a drain adds no grace period to each.
    world.kube.add_pod(
        FakePod::new(WORKLOAD_NAMESPACE, "app-000", &node_name(0)).with_termination_grace_period(0),
    );
    world
}

/// Node 0's agent, from the flags the chart sets, changed by `edit`.
async fn start(world: &FleetWorld, edit: impl FnOnce(&mut Config)) -> FleetAgent {
    let node = node_name(0);
    let runtime = Handle::current();
    let starting = world.start_configured(
        &node,
        world.instance_id(0).map(str::to_owned),
        world.aws(),
        &runtime,
        |config| {
            if let Some(settings) = config.spot_guard.as_mut() {
                settings.scale_timeout = Duration::from_secs(10);
            }
            edit(config);
        },
    );
    tokio::time::timeout(LIMIT, starting)
        .await
        .expect("the agent starts in time")
        .expect("agent starts")
}

/// IMDS serves a rebalance recommendation; returns once the agent has handled it.
async fn recommend_and_wait(agent: &mut FleetAgent) {
    agent.recommend();
    assert!(
        agent.wait_handled(1, LIMIT).await,
        "the agent handled the recommendation within {LIMIT:?}"
    );
}

async fn stop(agent: FleetAgent) {
    tokio::time::timeout(LIMIT, agent.stop())
        .await
        .expect("the agent stops");
}

fn desired(world: &FleetWorld, name: &str) -> i32 {
    world.asg.group(name).expect("group exists").desired
}

fn scale_ups_of(world: &FleetWorld, name: &str) -> usize {
    world
        .asg
        .calls_of("SetDesiredCapacity")
        .iter()
        .filter(|call| call.group.as_deref() == Some(name))
        .count()
}

/// The replacement record on node 0, as `kubectl get node` shows it.
fn replacement(world: &FleetWorld) -> ReplacementRecord {
    let node = world.kube.node(&node_name(0)).expect("node 0 exists");
    let record = ReplacementRecord::parse(annotation(&node, REPLACEMENT_ANNOTATION))
        .expect("the Node carries a readable replacement record");
    let expected = rebalance_event_id(&RebalanceRecommendation {
        notice_time: RECOMMENDATION_TIME.to_owned(),
    });
    assert_eq!(
        record.event_id, expected,
        "the record is for this recommendation"
    );
    record
}

fn failure(attempt: &AttemptRecord) -> &RecordedFailure {
    match &attempt.result {
        AttemptResult::Failed { failure } => failure,
        other => panic!("expected {:?} to have failed, got {other:?}", attempt.role),
    }
}

/// Spot failed (its failure returned), then on-demand was scaled by one and delivered.
fn spot_failed_on_demand_ready(world: &FleetWorld) -> (AttemptRecord, RecordedFailure) {
    let record = replacement(world);
    let [spot, on_demand] = record.attempts.as_slice() else {
        panic!("expected a spot and an on-demand attempt: {record:?}");
    };
    assert_eq!((spot.role, spot.asg.as_str()), (Role::Spot, SPOT_ASG));
    assert_eq!(
        (on_demand.role, on_demand.asg.as_str()),
        (Role::OnDemand, ON_DEMAND_ASG)
    );
    assert_eq!(on_demand.result, AttemptResult::Ready, "{record:?}");
    let scaled = on_demand.scaled.as_ref().expect("on-demand was scaled");
    assert_eq!(scaled.to, scaled.from + 1, "{record:?}");
    (spot.clone(), failure(spot).clone())
}

/// Tainted, cordoned, its workload pod evicted exactly once.
fn assert_drained(world: &FleetWorld) {
    assert!(
        world.node_drained(0),
        "node 0 is tainted, cordoned and drained: {:?}",
        world.kube.node(&node_name(0)).and_then(|n| n.spec)
    );
    let evictions = world.kube.evictions();
    assert_eq!(
        evictions.iter().filter(|e| e.name == "app-000").count(),
        1,
        "the workload pod was evicted exactly once: {evictions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_spot_asg_gets_exactly_one_more_instance_and_on_demand_is_untouched() {
    let world = world(
        group(Behaviour::Healthy, 3, 10),
        group(Behaviour::Healthy, 2, 10),
        Duration::from_secs(5),
    )
    .await;
    let mut agent = start(&world, |_| {}).await;

    recommend_and_wait(&mut agent).await;

    let record = replacement(&world);
    let [spot] = record.attempts.as_slice() else {
        panic!("expected only a spot attempt: {record:?}");
    };
    assert_eq!((spot.role, spot.asg.as_str()), (Role::Spot, SPOT_ASG));
    assert_eq!(spot.result, AttemptResult::Ready);
    let scaled = spot.scaled.as_ref().expect("spot was scaled");
    assert_eq!((scaled.from, scaled.to), (3, 4));
    assert_eq!(desired(&world, SPOT_ASG), 4);
    assert_eq!(world.asg.group(SPOT_ASG).unwrap().in_service, 4);
    let sets = world.asg.calls_of("SetDesiredCapacity");
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(sets[0].group.as_deref(), Some(SPOT_ASG));
    assert_eq!(sets[0].param("HonorCooldown"), Some("false"));
    assert_eq!(sets[0].param("DesiredCapacity"), Some("4"));
    assert_eq!(desired(&world, ON_DEMAND_ASG), 2);
    assert_eq!(world.asg.group(ON_DEMAND_ASG).unwrap().in_service, 2);
    assert_drained(&world);
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_spot_capacity_falls_back_to_on_demand() {
    // A long capacity timeout proves the failed activity, not the clock, ended the wait.
    let world = world(
        group(Behaviour::InsufficientCapacity, 3, 10),
        group(Behaviour::Healthy, 2, 10),
        Duration::from_secs(120),
    )
    .await;
    let mut agent = start(&world, |_| {}).await;

    recommend_and_wait(&mut agent).await;

    let (spot, failure) = spot_failed_on_demand_ready(&world);
    match failure {
        RecordedFailure::InsufficientCapacity { message } => {
            assert!(
                message.contains("InsufficientInstanceCapacity"),
                "{message}"
            );
        }
        other => panic!("expected insufficient capacity, got {other:?}"),
    }
    let scaled = spot.scaled.expect("spot was asked first");
    assert_eq!((scaled.from, scaled.to), (3, 4));
    assert_eq!(desired(&world, ON_DEMAND_ASG), 3);
    assert_eq!(world.asg.group(ON_DEMAND_ASG).unwrap().in_service, 3);
    assert_drained(&world);
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_spot_activity_falls_back_to_on_demand() {
    let world = world(
        group(Behaviour::Cancelled, 3, 10),
        group(Behaviour::Healthy, 2, 10),
        Duration::from_secs(120),
    )
    .await;
    let mut agent = start(&world, |_| {}).await;

    recommend_and_wait(&mut agent).await;

    let (_, failure) = spot_failed_on_demand_ready(&world);
    assert!(
        matches!(failure, RecordedFailure::ActivityFailed { ref status, .. } if status == "Cancelled"),
        "{failure:?}"
    );
    assert_eq!(desired(&world, ON_DEMAND_ASG), 3);
    assert_drained(&world);
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_instance_that_never_reaches_in_service_times_out_into_on_demand() {
    let world = world(
        group(Behaviour::NeverInService, 3, 10),
        group(Behaviour::Healthy, 2, 10),
        // Long enough for the on-demand launch to show through AWS's Describe lag.
        Duration::from_millis(2500),
    )
    .await;
    let mut agent = start(&world, |_| {}).await;

    recommend_and_wait(&mut agent).await;

    let (_, failure) = spot_failed_on_demand_ready(&world);
    match failure {
        RecordedFailure::Timeout { waited_ms } => assert!(waited_ms >= 2500, "{waited_ms}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(desired(&world, SPOT_ASG), 4, "the spot request stays");
    assert_eq!(desired(&world, ON_DEMAND_ASG), 3);
    assert_drained(&world);
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_asg_at_max_size_is_not_asked_and_on_demand_delivers() {
    let world = world(
        group(Behaviour::Healthy, 4, 4),
        group(Behaviour::Healthy, 2, 10),
        Duration::from_secs(5),
    )
    .await;
    let mut agent = start(&world, |_| {}).await;

    recommend_and_wait(&mut agent).await;

    let (spot, failure) = spot_failed_on_demand_ready(&world);
    assert_eq!(
        failure,
        RecordedFailure::AtMaxSize {
            desired: 4,
            max_size: 4
        }
    );
    assert_eq!(spot.scaled, None, "the spot ASG was not scaled");
    let sets = world.asg.calls_of("SetDesiredCapacity");
    assert_eq!(sets.len(), 1, "only the on-demand ASG is scaled: {sets:?}");
    assert_eq!(sets[0].group.as_deref(), Some(ON_DEMAND_ASG));
    assert_eq!(desired(&world, SPOT_ASG), 4);
    assert_eq!(desired(&world, ON_DEMAND_ASG), 3);
    assert_drained(&world);
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_asgs_failing_ends_the_flow_with_both_reasons() {
    let world = world(
        group(Behaviour::InsufficientCapacity, 3, 10),
        group(Behaviour::Healthy, 5, 5),
        Duration::from_secs(120),
    )
    .await;
    let mut agent = start(&world, |_| {}).await;

    recommend_and_wait(&mut agent).await;

    let record = replacement(&world);
    let [spot, on_demand] = record.attempts.as_slice() else {
        panic!("expected a spot and an on-demand attempt: {record:?}");
    };
    assert_eq!(spot.role, Role::Spot);
    assert!(
        matches!(failure(spot), RecordedFailure::InsufficientCapacity { .. }),
        "{record:?}"
    );
    assert_eq!(on_demand.role, Role::OnDemand);
    assert_eq!(
        failure(on_demand),
        &RecordedFailure::AtMaxSize {
            desired: 5,
            max_size: 5
        }
    );
    assert_eq!(
        on_demand.scaled, None,
        "the full on-demand ASG was not scaled"
    );
    assert_eq!(scale_ups_of(&world, ON_DEMAND_ASG), 0);
    assert_eq!(desired(&world, ON_DEMAND_ASG), 5);
    // No capacity anywhere, and the node is still tainted, cordoned and drained.
    assert_drained(&world);
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_failed_activity_does_not_count_against_a_new_scale_up() {
    let world = world(
        group(Behaviour::Healthy, 3, 10),
        group(Behaviour::Healthy, 2, 10),
        Duration::from_secs(5),
    )
    .await;
    // EC2's message for a launch without capacity, from an hour ago.
    let message = "We currently do not have sufficient m5.large capacity in the Availability Zone you requested (us-east-1a). Our system will be working on provisioning additional capacity. You can currently get m5.large capacity by not specifying an Availability Zone in your request or choosing us-east-1b, us-east-1c. Launching EC2 instance failed.";
    world
        .asg
        .add_activity(
            SPOT_ASG,
            ScalingActivity {
                activity_id: "5a86d2a4-0cd7-4ee4-8c5e-2a1c8e4b1f0a".into(),
                status_code: "Failed".into(),
                status_message: Some(message.into()),
                description: Some(format!(
                    "Launching a new EC2 instance.  Status Reason: {message}"
                )),
                start_time: Some(SystemTime::now() - Duration::from_secs(3600)),
            },
        )
        .expect("spot group exists");
    let mut agent = start(&world, |_| {}).await;

    recommend_and_wait(&mut agent).await;

    let record = replacement(&world);
    let [spot] = record.attempts.as_slice() else {
        panic!("expected only a spot attempt: {record:?}");
    };
    assert_eq!(spot.role, Role::Spot);
    assert_eq!(spot.result, AttemptResult::Ready);
    assert_eq!(desired(&world, SPOT_ASG), 4);
    assert_eq!(scale_ups_of(&world, ON_DEMAND_ASG), 0);
    assert_eq!(desired(&world, ON_DEMAND_ASG), 2);
    assert_drained(&world);
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_spot_asg_falls_back_with_the_error_named() {
    let world = world(
        group(Behaviour::Healthy, 3, 10),
        group(Behaviour::Healthy, 2, 10),
        Duration::from_secs(5),
    )
    .await;
    let mut agent = start(&world, |config| {
        config
            .spot_guard
            .as_mut()
            .expect("Spot Guard is on")
            .spot_asg_name = "no-such-asg".into();
    })
    .await;

    recommend_and_wait(&mut agent).await;

    let record = replacement(&world);
    let [spot, on_demand] = record.attempts.as_slice() else {
        panic!("expected a spot and an on-demand attempt: {record:?}");
    };
    assert_eq!((spot.role, spot.asg.as_str()), (Role::Spot, "no-such-asg"));
    assert_eq!(spot.scaled, None);
    match failure(spot) {
        RecordedFailure::Api { error } => assert!(error.contains("no-such-asg"), "{error}"),
        other => panic!("expected an API error, got {other:?}"),
    }
    assert_eq!(on_demand.role, Role::OnDemand);
    assert_eq!(on_demand.result, AttemptResult::Ready);
    let sets = world.asg.calls_of("SetDesiredCapacity");
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(sets[0].group.as_deref(), Some(ON_DEMAND_ASG));
    assert_eq!(desired(&world, SPOT_ASG), 3);
    assert_eq!(desired(&world, ON_DEMAND_ASG), 3);
    assert_drained(&world);
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_on_spot_scale_up_falls_back_to_on_demand() {
    let world = world(
        group(Behaviour::Healthy, 3, 10),
        group(Behaviour::Healthy, 2, 10),
        Duration::from_secs(5),
    )
    .await;
    let mut agent = start(&world, |_| {}).await;
    world
        .asg
        .fail_next("SetDesiredCapacity", 1, Fault::AccessDenied);

    recommend_and_wait(&mut agent).await;

    let (spot, failure) = spot_failed_on_demand_ready(&world);
    match failure {
        RecordedFailure::Api { error } => {
            assert!(error.contains("AccessDenied"), "{error}");
            assert!(error.contains("autoscaling:SetDesiredCapacity"), "{error}");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    assert_eq!(
        spot.scaled, None,
        "the refused scale-up is not recorded as sent"
    );
    let sets = world.asg.calls_of("SetDesiredCapacity");
    assert_eq!(sets.len(), 2, "{sets:?}");
    assert_eq!(
        (sets[0].group.as_deref(), sets[0].error_code.as_deref()),
        (Some(SPOT_ASG), Some("AccessDenied"))
    );
    assert_eq!(
        (sets[1].group.as_deref(), sets[1].error_code.as_deref()),
        (Some(ON_DEMAND_ASG), None)
    );
    assert_eq!(desired(&world, SPOT_ASG), 3);
    assert_eq!(desired(&world, ON_DEMAND_ASG), 3);
    assert_drained(&world);
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_interruption_preempts_the_wait_and_scales_nothing_more() {
    let capacity_check_timeout = Duration::from_secs(120);
    let world = world(
        group(Behaviour::NeverInService, 3, 10),
        group(Behaviour::Healthy, 2, 10),
        capacity_check_timeout,
    )
    .await;
    // TAINT_NODE on: the interruption's own taint shows what the node was drained for.
    let mut agent = start(&world, |config| config.taint_node = true).await;
    agent.recommend();
    // Evidence the flow is in its wait: the spot scale-up went through.
    tokio::time::timeout(LIMIT, async {
        while world.asg.group(SPOT_ASG).expect("spot").desired < 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the spot ASG is scaled up");

    let interrupted = Instant::now();
    agent
        .imds
        .set_spot_action(Some(("terminate", "2026-11-24T08:24:00Z")));
    assert!(
        agent.wait_handled(1, LIMIT).await,
        "the interruption was handled within {LIMIT:?}"
    );
    let took = interrupted.elapsed();

    assert!(
        took < capacity_check_timeout / 4,
        "the {capacity_check_timeout:?} wait was cut short: drained {took:?} after the notice"
    );
    // The interruption was handled only after the rebalance flow had returned, so
    // nothing can scale after this point.
    assert_eq!(
        agent.handled(),
        1,
        "the rebalance flow never reached its node actions"
    );
    assert_eq!(
        scale_ups_of(&world, ON_DEMAND_ASG),
        0,
        "no fallback after preemption"
    );
    assert_eq!(desired(&world, ON_DEMAND_ASG), 2);
    assert_eq!(scale_ups_of(&world, SPOT_ASG), 1);
    let record = replacement(&world);
    let [spot] = record.attempts.as_slice() else {
        panic!("expected only the spot attempt: {record:?}");
    };
    assert_eq!(spot.role, Role::Spot);
    assert_eq!(
        spot.result,
        AttemptResult::Pending,
        "the spot replacement never arrived"
    );
    let node = world.kube.node(&node_name(0)).expect("node 0");
    let spec = node.spec.expect("spec");
    let taints: Vec<String> = spec
        .taints
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert_eq!(
        taints,
        [SPOT_ITN_TAINT],
        "drained for the interruption, not the recommendation"
    );
    assert!(!taints.iter().any(|t| t == REBALANCE_TAINT));
    assert_eq!(spec.unschedulable, Some(true));
    assert!(
        world.kube.pods_on_node(&node_name(0)).is_empty(),
        "the node is drained"
    );
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_reads_but_never_scales() {
    let world = world(
        group(Behaviour::Healthy, 3, 10),
        group(Behaviour::Healthy, 2, 10),
        Duration::from_secs(5),
    )
    .await;
    let mut agent = start(&world, |config| config.dry_run = true).await;
    let node_before = world.kube.node(&node_name(0)).expect("node 0");
    let reads_before = world.asg.calls_of("DescribeAutoScalingGroups").len();

    recommend_and_wait(&mut agent).await;

    let reads = world.asg.calls_of("DescribeAutoScalingGroups");
    let read_now: Vec<Option<&str>> = reads[reads_before..]
        .iter()
        .map(|call| call.group.as_deref())
        .collect();
    assert!(
        read_now.contains(&Some(SPOT_ASG)) && read_now.contains(&Some(ON_DEMAND_ASG)),
        "both ASGs were read for the recommendation: {read_now:?}"
    );
    assert!(world.asg.calls_of("SetDesiredCapacity").is_empty());
    assert_eq!(desired(&world, SPOT_ASG), 3);
    assert_eq!(desired(&world, ON_DEMAND_ASG), 2);
    let node_after = world.kube.node(&node_name(0)).expect("node 0");
    assert_eq!(node_after, node_before, "nothing was written to the Node");
    assert!(world.kube.evictions().is_empty(), "nothing was evicted");
    assert_eq!(world.kube.pods_on_node(&node_name(0)).len(), 1);
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_launches_costs_one_describe_per_check_once_aws_shows_it() {
    let world = world(
        GroupSpec {
            launch_delay: Duration::from_secs(1),
            ..group(Behaviour::Healthy, 3, 10)
        },
        group(Behaviour::Healthy, 2, 10),
        Duration::from_secs(5),
    )
    .await;
    // AWS's reads catch up with the scale-up after 100 ms; the launch takes 1 s, checked
    // every 50 ms: about 20 checks, the first two before the new instance can be seen.
    world.asg.set_describe_lag(Duration::from_millis(100));
    let mut agent = start(&world, |_| {}).await;

    recommend_and_wait(&mut agent).await;

    assert_eq!(replacement(&world).attempts.len(), 1, "spot delivered");
    let on_spot = |operation: &str| {
        world
            .asg
            .calls_of(operation)
            .iter()
            .filter(|call| call.group.as_deref() == Some(SPOT_ASG))
            .count()
    };
    let describes = on_spot("DescribeAutoScalingGroups");
    let activities = on_spot("DescribeScalingActivities");
    assert_eq!(on_spot("SetDesiredCapacity"), 1);
    assert!(describes >= 10, "{describes} checks");
    // Activities are read only while the new instance is not seen yet (a failed launch
    // leaves none); once it shows, Pending or InService, a check is one Describe.
    assert!(
        activities * 3 < describes,
        "{activities} DescribeScalingActivities for {describes} DescribeAutoScalingGroups"
    );
    stop(agent).await;
}
