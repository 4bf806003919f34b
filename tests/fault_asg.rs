//! Auto Scaling faults through Spot Guard with the real SDK client against the ASG
//! simulator: throttling and 5xx are retried with back-off and still buy exactly one
//! instance; past the retries (or with no endpoint at all) the flow falls back or ends, and
//! a node whose ASGs are both unusable is still tainted, cordoned and drained.
//! (Unknown ASG, AccessDenied, InsufficientInstanceCapacity, MaxSize, never InService and
//! Cancelled activities on the spot side: tests/spot_guard.rs; SDK retries: tests/asg_sim.rs.)

use std::time::Duration;

use spot_guard::agent::{Agent, AgentSettings};
use spot_guard::aws::{AwsAutoScaling, AwsSettings};
use spot_guard::config::SpotGuardConfig;
use spot_guard::drain::DrainSettings;
use spot_guard::flow::{ActionSettings, CapacityFailure, REBALANCE_TAINT, ReplacementOutcome};
use spot_guard::monitor::Notice;
use spot_guard::node;
use spot_guard::report::InterruptionEvent;
use spot_guard::sim::asg::{AsgSim, Behaviour, Fault, GroupSpec};
use spot_guard::sim::kube::{FakeKube, FakePod};
use spot_guard::spot_guard::SpotGuard;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SPOT: &str = "spot-asg";
const ON_DEMAND: &str = "on-demand-asg";
const NODE: &str = "ip-10-0-8-8.ec2.internal";
const BOUND: Duration = Duration::from_secs(30);

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

fn config(spot: &str, on_demand: &str) -> SpotGuardConfig {
    SpotGuardConfig {
        spot_asg_name: spot.into(),
        on_demand_asg_name: on_demand.into(),
        scale_timeout: Duration::from_secs(10),
        capacity_check_timeout: Duration::from_secs(3),
        check_interval: Duration::from_millis(50),
    }
}

async fn setup() -> AsgSim {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let sim = AsgSim::start().await.expect("ASG simulator");
    sim.add_group(SPOT, group(Behaviour::Healthy, 3, 10));
    sim.add_group(ON_DEMAND, group(Behaviour::Healthy, 2, 10));
    sim
}

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

async fn replace(guard: &SpotGuard<AwsAutoScaling>) -> ReplacementOutcome {
    tokio::time::timeout(
        BOUND,
        guard.secure_replacement(&CancellationToken::new(), &InterruptionEvent::default()),
    )
    .await
    .expect("the flow ends")
}

fn desired(sim: &AsgSim, name: &str) -> i32 {
    sim.group(name).expect("group exists").desired
}

const TRANSIENT: [Fault; 3] = [
    Fault::Throttling,
    Fault::InternalFailure,
    Fault::ServiceUnavailable,
];

#[tokio::test]
async fn transient_errors_on_every_call_are_retried_and_buy_exactly_one_spot_instance() {
    for fault in TRANSIENT {
        for action in [
            "DescribeAutoScalingGroups",
            "DescribeScalingActivities",
            "SetDesiredCapacity",
        ] {
            let sim = setup().await;
            sim.fail_next(action, 2, fault);
            let guard = SpotGuard::new(client(sim.url(), 3), config(SPOT, ON_DEMAND), false);

            let outcome = replace(&guard).await;

            let case = format!("{fault:?} ×2 on {action}");
            assert_eq!(outcome, ReplacementOutcome::Spot, "{case}");
            assert_eq!(desired(&sim, SPOT), 4, "{case}");
            assert_eq!(desired(&sim, ON_DEMAND), 2, "{case}");
            let answered = sim
                .calls_of("SetDesiredCapacity")
                .iter()
                .filter(|call| call.error_code.is_none())
                .count();
            assert_eq!(answered, 1, "{case}: one scale-up went through");
        }
    }
}

#[tokio::test]
async fn transient_errors_past_the_retries_fall_back_to_on_demand_naming_the_error() {
    for (fault, code) in [
        (Fault::Throttling, "Throttling"),
        (Fault::InternalFailure, "InternalFailure"),
        (Fault::ServiceUnavailable, "ServiceUnavailable"),
    ] {
        let sim = setup().await;
        // Two attempts per call: the spot scale-up fails twice, the on-demand one is clean.
        sim.fail_next("SetDesiredCapacity", 2, fault);
        let guard = SpotGuard::new(client(sim.url(), 2), config(SPOT, ON_DEMAND), false);

        let outcome = replace(&guard).await;

        match outcome {
            ReplacementOutcome::OnDemand {
                spot_failure: CapacityFailure::Api { error },
            } => assert!(error.contains(code), "{code}: {error}"),
            other => panic!("{code}: expected the on-demand fallback, got {other:?}"),
        }
        assert_eq!(desired(&sim, SPOT), 3, "{code}");
        assert_eq!(desired(&sim, ON_DEMAND), 3, "{code}");
    }
}

#[tokio::test]
async fn access_denied_on_scaling_activities_still_detects_in_service() {
    // An IAM policy without autoscaling:DescribeScalingActivities.
    let sim = setup().await;
    sim.fail_next("DescribeScalingActivities", 100, Fault::AccessDenied);
    let guard = SpotGuard::new(client(sim.url(), 1), config(SPOT, ON_DEMAND), false);

    assert_eq!(replace(&guard).await, ReplacementOutcome::Spot);
    assert_eq!(desired(&sim, SPOT), 4);
    assert_eq!(desired(&sim, ON_DEMAND), 2);
}

#[tokio::test]
async fn both_asgs_unusable_ends_with_both_reasons_and_buys_nothing() {
    let sim = setup().await;
    sim.set_max_size(SPOT, 3).expect("spot");
    sim.fail_next("SetDesiredCapacity", 100, Fault::AccessDenied);
    let guard = SpotGuard::new(client(sim.url(), 1), config(SPOT, ON_DEMAND), false);

    match replace(&guard).await {
        ReplacementOutcome::NoneAvailable {
            spot_failure,
            on_demand_failure,
        } => {
            assert_eq!(spot_failure.reason(), "max-size");
            assert_eq!(on_demand_failure.reason(), "api-error");
            assert!(on_demand_failure.to_string().contains("AccessDenied"));
        }
        other => panic!("expected no replacement, got {other:?}"),
    }
    assert_eq!(desired(&sim, SPOT), 3);
    assert_eq!(desired(&sim, ON_DEMAND), 2);
}

#[tokio::test]
async fn on_demand_that_never_reaches_in_service_times_out_too() {
    let sim = setup().await;
    sim.set_behaviour(SPOT, Behaviour::InsufficientCapacity)
        .expect("spot");
    sim.set_behaviour(ON_DEMAND, Behaviour::NeverInService)
        .expect("on-demand");
    let guard = SpotGuard::new(client(sim.url(), 1), config(SPOT, ON_DEMAND), false);

    match replace(&guard).await {
        ReplacementOutcome::NoneAvailable {
            spot_failure,
            on_demand_failure,
        } => {
            assert_eq!(spot_failure.reason(), "insufficient-capacity");
            assert_eq!(on_demand_failure.reason(), "timeout");
        }
        other => panic!("expected no replacement, got {other:?}"),
    }
    assert_eq!(desired(&sim, SPOT), 4, "the failed spot request stays");
    assert_eq!(desired(&sim, ON_DEMAND), 3);
}

#[tokio::test]
async fn no_autoscaling_endpoint_at_all_ends_the_flow_within_the_scale_timeout() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let url = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let guard = SpotGuard::new(client(&url, 2), config(SPOT, ON_DEMAND), false);

    match replace(&guard).await {
        ReplacementOutcome::NoneAvailable {
            spot_failure,
            on_demand_failure,
        } => {
            assert_eq!(spot_failure.reason(), "api-error");
            assert_eq!(on_demand_failure.reason(), "api-error");
        }
        other => panic!("expected no replacement, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_asgs_unknown_the_node_is_still_tainted_cordoned_and_drained() {
    let sim = setup().await;
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    kube.add_node(NODE);
    kube.add_pod(FakePod::new("default", "web-1", NODE));
    kube.add_pod(FakePod::new("default", "web-2", NODE));
    let guard = SpotGuard::new(
        client(sim.url(), 1),
        config("no-such-spot", "no-such-on-demand"),
        false,
    );
    let settings = AgentSettings {
        node_name: NODE.into(),
        dry_run: false,
        actions: ActionSettings {
            spot_guard: true,
            enable_rebalance_draining: true,
            ..ActionSettings::default()
        },
        drain: DrainSettings {
            timeout: Duration::from_secs(5),
            eviction_retry_interval: Duration::from_millis(50),
            poll_interval: Duration::from_millis(50),
            ..DrainSettings::default()
        },
        uptime_file: "/proc/uptime".into(),
    };
    let agent = Agent::new(
        settings,
        node::client_for_url(&kube.url()).expect("kube client"),
        Some(guard),
    );
    let mut handled = agent.handled();
    let shutdown = CancellationToken::new();
    let (tx, rx) = mpsc::channel(4);
    let running = tokio::spawn(agent.run(rx, shutdown.clone()));
    tx.send(Notice::RebalanceRecommendation {
        event_id: "rebalance-recommendation-test".into(),
        notice_time: "2026-11-24T10:00:00Z".into(),
    })
    .await
    .expect("agent listens");

    tokio::time::timeout(BOUND, handled.wait_for(|n| *n >= 1))
        .await
        .expect("the flow ends")
        .expect("agent alive");

    let node = kube.node(NODE).expect("node");
    let spec = node.spec.expect("spec");
    let taints: Vec<String> = spec
        .taints
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert_eq!(taints, [REBALANCE_TAINT]);
    assert_eq!(spec.unschedulable, Some(true));
    assert!(kube.pods_on_node(NODE).is_empty(), "the node is drained");
    assert!(sim.calls_of("SetDesiredCapacity").is_empty());
    shutdown.cancel();
    tokio::time::timeout(BOUND, running)
        .await
        .expect("agent stops")
        .expect("agent did not panic");
}
