//! Auto Scaling faults through the whole agent (started by `run::start` through the
//! simulator harness) with the real SDK client against the ASG simulator: throttling and
//! 5xx are retried with back-off and still buy exactly one instance; past the retries (or
//! with no endpoint at all) the flow falls back or ends, and a node whose ASGs are both
//! unusable is still tainted, cordoned and drained. What happened is read from the ASGs
//! and from the replacement record the agent writes on its Node.
//! (Unknown ASG, AccessDenied, InsufficientInstanceCapacity, MaxSize, never InService and
//! Cancelled activities on the spot side: tests/spot_guard.rs; SDK retries: tests/asg_sim.rs.)

use std::time::Duration;

use spot_guard::aws::{AwsAutoScaling, AwsSettings};
use spot_guard::names::{REBALANCE_TAINT, REPLACEMENT_ANNOTATION};
use spot_guard::record::annotation;
use spot_guard::sim::asg::{Behaviour, Fault, GroupSpec};
use spot_guard::sim::fleet::{
    FleetAgent, FleetSpec, FleetWorld, ON_DEMAND_ASG, SPOT_ASG, WORKLOAD_NAMESPACE, node_name,
};
use spot_guard::sim::kube::FakePod;
use spot_guard::spot_guard::decide::{
    AttemptRecord, AttemptResult, CapacityFailure, RecordedFailure, ReplacementRecord, Role,
};
use tokio::runtime::Handle;
use tokio::time::Instant;

/// Bound of every wait for the agent.
const LIMIT: Duration = Duration::from_secs(30);
const SCALE_TIMEOUT: Duration = Duration::from_secs(10);

fn group(behaviour: Behaviour, desired: i32, max: i32) -> GroupSpec {
    GroupSpec {
        min: 0,
        max,
        desired,
        behaviour,
        launch_delay: Duration::from_millis(100),
        capacity_rebalance: false,
    }
}

/// One spot node (instance 0 of a healthy spot ASG of 3, max 10) with one workload pod,
/// and a healthy on-demand ASG of 2, max 10.
async fn world() -> FleetWorld {
    world_with(group(Behaviour::Healthy, 3, 10)).await
}

async fn world_with(spot: GroupSpec) -> FleetWorld {
    spot_guard::tls::ensure_crypto_provider();
    let mut spec = FleetSpec::new(1);
    spec.spot = spot;
    spec.on_demand = group(Behaviour::Healthy, 2, 10);
    spec.check_interval = Duration::from_millis(50);
    spec.capacity_check_timeout = Duration::from_secs(3);
    let world = FleetWorld::start(spec).await.expect("simulators start");
    // These tests are about the ASGs: the workload stops at once when evicted
    // (`terminationGracePeriodSeconds: 0`), so a drain adds no grace period to each case.
    world.kube.add_pod(
        FakePod::new(WORKLOAD_NAMESPACE, "app-000", &node_name(0)).with_termination_grace_period(0),
    );
    world
}

/// An SDK client for `url` making `max_attempts` attempts per call.
fn client(url: &str, max_attempts: u32) -> AwsAutoScaling {
    AwsAutoScaling::for_endpoint(
        url,
        "us-east-1",
        &AwsSettings {
            endpoint_url: None,
            max_attempts,
        },
    )
}

/// Node 0's agent over `asg`, for ASGs `spot` and `on_demand`.
async fn start_for(
    world: &FleetWorld,
    asg: AwsAutoScaling,
    spot: &str,
    on_demand: &str,
) -> FleetAgent {
    let (spot, on_demand) = (spot.to_owned(), on_demand.to_owned());
    let node = node_name(0);
    let runtime = Handle::current();
    let starting = world.start_configured(
        &node,
        world.instance_id(0).map(str::to_owned),
        asg,
        &runtime,
        move |config| {
            let settings = config.spot_guard.as_mut().expect("Spot Guard is on");
            settings.spot_asg_name = spot;
            settings.on_demand_asg_name = on_demand;
            settings.scale_timeout = SCALE_TIMEOUT;
        },
    );
    tokio::time::timeout(LIMIT, starting)
        .await
        .expect("the agent starts in time")
        .expect("agent starts")
}

/// Node 0's agent over a client of the simulator making `max_attempts` attempts.
async fn start(world: &FleetWorld, max_attempts: u32) -> FleetAgent {
    start_for(
        world,
        client(world.asg.url(), max_attempts),
        SPOT_ASG,
        ON_DEMAND_ASG,
    )
    .await
}

/// IMDS serves a rebalance recommendation; returns once the agent has handled it.
async fn recommend_and_wait(agent: &mut FleetAgent, case: &str) {
    agent.recommend();
    assert!(
        agent.wait_handled(1, LIMIT).await,
        "{case}: the agent handled the recommendation within {LIMIT:?}"
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

/// SetDesiredCapacity calls AWS answered with success.
fn answered_scale_ups(world: &FleetWorld) -> Vec<Option<String>> {
    world
        .asg
        .calls_of("SetDesiredCapacity")
        .into_iter()
        .filter(|call| call.error_code.is_none())
        .map(|call| call.group)
        .collect()
}

/// The replacement record on node 0, as `kubectl get node` shows it.
fn attempts(world: &FleetWorld) -> Vec<AttemptRecord> {
    let node = world.kube.node(&node_name(0)).expect("node 0 exists");
    ReplacementRecord::parse(annotation(&node, REPLACEMENT_ANNOTATION))
        .expect("the Node carries a readable replacement record")
        .attempts
}

/// The recorded failure, as the agent classified it.
fn failure_of(attempt: &AttemptRecord) -> CapacityFailure {
    match &attempt.result {
        AttemptResult::Failed { failure } => CapacityFailure::from(failure),
        other => panic!("expected {:?} to have failed, got {other:?}", attempt.role),
    }
}

/// Both ASGs failed: their failures, spot first.
fn both_failed(world: &FleetWorld) -> (CapacityFailure, CapacityFailure) {
    match attempts(world).as_slice() {
        [spot, on_demand] if spot.role == Role::Spot && on_demand.role == Role::OnDemand => {
            (failure_of(spot), failure_of(on_demand))
        }
        other => panic!("expected a spot and an on-demand attempt, got {other:?}"),
    }
}

fn assert_drained(world: &FleetWorld, case: &str) {
    assert!(
        world.node_drained(0),
        "{case}: node 0 is tainted, cordoned and drained: {:?}",
        world.kube.node(&node_name(0)).and_then(|n| n.spec)
    );
}

const TRANSIENT: [Fault; 3] = [
    Fault::Throttling,
    Fault::InternalFailure,
    Fault::ServiceUnavailable,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_on_every_call_are_retried_and_buy_exactly_one_spot_instance() {
    for fault in TRANSIENT {
        for action in [
            "DescribeAutoScalingGroups",
            "DescribeScalingActivities",
            "SetDesiredCapacity",
        ] {
            let case = format!("{fault:?} ×2 on {action}");
            let world = world().await;
            let mut agent = start(&world, 3).await;
            // After the start-up check, so the flow's own calls meet the faults.
            world.asg.fail_next(action, 2, fault);

            recommend_and_wait(&mut agent, &case).await;

            let failed = world
                .asg
                .calls_of(action)
                .iter()
                .filter(|call| call.error_code.is_some())
                .count();
            assert_eq!(failed, 2, "{case}: both faults were answered");
            match attempts(&world).as_slice() {
                [spot] => {
                    assert_eq!(spot.role, Role::Spot, "{case}");
                    assert_eq!(spot.result, AttemptResult::Ready, "{case}");
                }
                other => panic!("{case}: expected only a spot attempt, got {other:?}"),
            }
            assert_eq!(desired(&world, SPOT_ASG), 4, "{case}");
            assert_eq!(desired(&world, ON_DEMAND_ASG), 2, "{case}");
            assert_eq!(
                answered_scale_ups(&world),
                [Some(SPOT_ASG.to_owned())],
                "{case}: one scale-up went through"
            );
            assert_drained(&world, &case);
            stop(agent).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_past_the_retries_fall_back_to_on_demand_naming_the_error() {
    // A refusal never applied: the fallback follows at once. A server error may have
    // applied (AWS gives no answer either way): it counts as sent, so the agent waits
    // for its instance, and only when none comes within the capacity check timeout does
    // it buy on-demand. Here the simulator did not apply it, so the wait times out.
    for (fault, code, may_have_applied) in [
        (Fault::Throttling, "Throttling", false),
        (Fault::InternalFailure, "InternalFailure", true),
        (Fault::ServiceUnavailable, "ServiceUnavailable", true),
    ] {
        let world = world().await;
        // Two attempts per call: the spot scale-up fails twice, the on-demand one is clean.
        let mut agent = start(&world, 2).await;
        world.asg.fail_next("SetDesiredCapacity", 2, fault);

        recommend_and_wait(&mut agent, code).await;

        match attempts(&world).as_slice() {
            [spot, on_demand] => {
                assert_eq!(spot.role, Role::Spot, "{code}");
                match (may_have_applied, failure_of(spot)) {
                    (false, CapacityFailure::Api { error }) => {
                        assert_eq!(
                            spot.scaled, None,
                            "{code}: a refused scale-up is not counted"
                        );
                        assert!(error.contains(code), "{code}: {error}");
                    }
                    (true, CapacityFailure::Timeout { waited }) => {
                        assert!(spot.scaled.is_some(), "{code}: counted as sent");
                        assert!(waited >= Duration::from_secs(3), "{code}: {waited:?}");
                    }
                    (_, other) => panic!("{code}: unexpected spot failure {other:?}"),
                }
                assert_eq!(on_demand.role, Role::OnDemand, "{code}");
                assert_eq!(on_demand.result, AttemptResult::Ready, "{code}");
            }
            other => panic!("{code}: expected the on-demand fallback, got {other:?}"),
        }
        let spot_errors: Vec<Option<String>> = world
            .asg
            .calls_of("SetDesiredCapacity")
            .into_iter()
            .filter(|call| call.group.as_deref() == Some(SPOT_ASG))
            .map(|call| call.error_code)
            .collect();
        assert_eq!(
            spot_errors,
            [Some(code.to_owned()), Some(code.to_owned())],
            "{code}: two attempts on the spot ASG, both failed, none sent again"
        );
        assert_eq!(desired(&world, SPOT_ASG), 3, "{code}");
        assert_eq!(desired(&world, ON_DEMAND_ASG), 3, "{code}");
        assert_drained(&world, code);
        stop(agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_on_scaling_activities_still_detects_in_service() {
    // An IAM policy without autoscaling:DescribeScalingActivities.
    let world = world().await;
    let mut agent = start(&world, 1).await;
    world
        .asg
        .fail_next("DescribeScalingActivities", 100, Fault::AccessDenied);

    recommend_and_wait(&mut agent, "AccessDenied on DescribeScalingActivities").await;

    let refused = world.asg.calls_of("DescribeScalingActivities");
    assert!(
        !refused.is_empty()
            && refused
                .iter()
                .all(|call| call.error_code.as_deref() == Some("AccessDenied")),
        "every activities read was refused: {refused:?}"
    );
    match attempts(&world).as_slice() {
        [spot] => {
            assert_eq!(spot.role, Role::Spot);
            assert_eq!(spot.result, AttemptResult::Ready);
        }
        other => panic!("expected only a spot attempt, got {other:?}"),
    }
    assert_eq!(desired(&world, SPOT_ASG), 4);
    assert_eq!(desired(&world, ON_DEMAND_ASG), 2);
    assert_eq!(answered_scale_ups(&world), [Some(SPOT_ASG.to_owned())]);
    assert_drained(&world, "AccessDenied on DescribeScalingActivities");
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_asgs_unusable_ends_with_both_reasons_and_buys_nothing() {
    // The spot ASG is full; the on-demand scale-up is refused by IAM.
    let world = world_with(group(Behaviour::Healthy, 3, 3)).await;
    let mut agent = start(&world, 1).await;
    world
        .asg
        .fail_next("SetDesiredCapacity", 100, Fault::AccessDenied);

    recommend_and_wait(&mut agent, "both unusable").await;

    let (spot_failure, on_demand_failure) = both_failed(&world);
    assert_eq!(spot_failure.reason(), "max-size", "{spot_failure}");
    assert_eq!(
        on_demand_failure.reason(),
        "api-error",
        "{on_demand_failure}"
    );
    assert!(
        on_demand_failure.to_string().contains("AccessDenied"),
        "{on_demand_failure}"
    );
    let sets = world.asg.calls_of("SetDesiredCapacity");
    assert_eq!(sets.len(), 1, "only the on-demand ASG was asked: {sets:?}");
    assert_eq!(sets[0].group.as_deref(), Some(ON_DEMAND_ASG));
    assert_eq!(sets[0].error_code.as_deref(), Some("AccessDenied"));
    assert_eq!(desired(&world, SPOT_ASG), 3);
    assert_eq!(desired(&world, ON_DEMAND_ASG), 2);
    assert_drained(&world, "both unusable");
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_that_never_reaches_in_service_times_out_too() {
    let world = world_with(group(Behaviour::InsufficientCapacity, 3, 10)).await;
    world
        .asg
        .set_behaviour(ON_DEMAND_ASG, Behaviour::NeverInService)
        .expect("on-demand");
    let mut agent = start(&world, 1).await;

    recommend_and_wait(&mut agent, "never InService").await;

    let (spot_failure, on_demand_failure) = both_failed(&world);
    assert_eq!(
        spot_failure.reason(),
        "insufficient-capacity",
        "{spot_failure}"
    );
    assert!(
        matches!(on_demand_failure, CapacityFailure::Timeout { waited } if waited >= Duration::from_secs(3)),
        "{on_demand_failure:?}"
    );
    assert_eq!(
        desired(&world, SPOT_ASG),
        4,
        "the failed spot request stays"
    );
    assert_eq!(desired(&world, ON_DEMAND_ASG), 3);
    assert_drained(&world, "never InService");
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_autoscaling_endpoint_at_all_ends_the_flow_within_the_scale_timeout() {
    let world = world().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let url = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let mut agent = start_for(&world, client(&url, 2), SPOT_ASG, ON_DEMAND_ASG).await;

    let noticed = Instant::now();
    agent.recommend();
    // Each ASG's request is bounded by the scale timeout; the drain comes on top.
    let bound = SCALE_TIMEOUT * 2 + Duration::from_secs(5);
    assert!(
        agent.wait_handled(1, bound).await,
        "the recommendation was handled within {bound:?}"
    );
    let took = noticed.elapsed();

    let (spot_failure, on_demand_failure) = both_failed(&world);
    assert_eq!(spot_failure.reason(), "api-error", "{spot_failure}");
    assert_eq!(
        on_demand_failure.reason(),
        "api-error",
        "{on_demand_failure}"
    );
    assert!(
        spot_failure.to_string().contains(SPOT_ASG),
        "{spot_failure}"
    );
    assert!(
        on_demand_failure.to_string().contains(ON_DEMAND_ASG),
        "{on_demand_failure}"
    );
    assert!(
        world.asg.calls().is_empty(),
        "nothing reached the simulator"
    );
    assert_drained(&world, "no endpoint");
    println!("no endpoint: the recommendation was handled in {took:?}");
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_asgs_unknown_the_node_is_still_tainted_cordoned_and_drained() {
    let world = world().await;
    let node = node_name(0);
    world
        .kube
        .add_pod(FakePod::new(WORKLOAD_NAMESPACE, "web-1", &node));
    world
        .kube
        .add_pod(FakePod::new(WORKLOAD_NAMESPACE, "web-2", &node));
    let mut agent = start_for(
        &world,
        client(world.asg.url(), 1),
        "no-such-spot",
        "no-such-on-demand",
    )
    .await;

    recommend_and_wait(&mut agent, "both unknown").await;

    let recorded = attempts(&world);
    let named: Vec<(Role, &str)> = recorded.iter().map(|a| (a.role, a.asg.as_str())).collect();
    assert_eq!(
        named,
        [
            (Role::Spot, "no-such-spot"),
            (Role::OnDemand, "no-such-on-demand")
        ]
    );
    for attempt in &recorded {
        assert_eq!(attempt.scaled, None);
        match &attempt.result {
            AttemptResult::Failed {
                failure: RecordedFailure::Api { error },
            } => assert!(error.contains(&attempt.asg), "{error}"),
            other => panic!("expected {} to be unknown, got {other:?}", attempt.asg),
        }
    }
    let stored = world.kube.node(&node).expect("node 0");
    let spec = stored.spec.expect("spec");
    let taints: Vec<String> = spec
        .taints
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert_eq!(taints, [REBALANCE_TAINT]);
    assert_eq!(spec.unschedulable, Some(true));
    assert!(
        world.kube.pods_on_node(&node).is_empty(),
        "the node is drained"
    );
    let mut evicted: Vec<String> = world.kube.evictions().into_iter().map(|e| e.name).collect();
    evicted.sort();
    assert_eq!(
        evicted,
        ["app-000", "web-1", "web-2"],
        "each pod evicted once"
    );
    assert!(world.asg.calls_of("SetDesiredCapacity").is_empty());
    assert_eq!(desired(&world, SPOT_ASG), 3);
    assert_eq!(desired(&world, ON_DEMAND_ASG), 2);
    stop(agent).await;
}
