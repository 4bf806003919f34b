//! Spot Guard's guarantees under AWS's real rules, on the production path (agents
//! started by `run::start`): Describe calls lag a change, a change can apply and its
//! answer be lost, terminated instances linger as `Terminating`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use spot_guard::names;
use spot_guard::sim::asg::Fault;
use spot_guard::sim::fleet::{FleetAgent, FleetSpec, FleetWorld, NAMESPACE, SPOT_ASG};
use spot_guard::sim::harness::eventually as eventually_within;
use spot_guard::spot_guard::ledger;
use tokio::runtime::Handle;

const LIMIT: Duration = Duration::from_secs(60);

fn install_crypto() {
    spot_guard::tls::ensure_crypto_provider();
}

async fn start_all(world: &FleetWorld) -> Vec<FleetAgent> {
    world.start_all().await.expect("agents start")
}

async fn handle_all(agents: &mut [FleetAgent]) {
    for agent in agents.iter() {
        agent.recommend();
    }
    for agent in agents.iter_mut() {
        assert!(
            agent.wait_handled(1, LIMIT).await,
            "{} did not finish its recommendation",
            agent.node
        );
    }
}

/// The ledger on the spot ASG's Lease: instance → the node it was bought for.
fn ledger_of(world: &FleetWorld) -> BTreeMap<String, String> {
    let lease = world
        .kube
        .lease(NAMESPACE, &names::asg_lease(SPOT_ASG))
        .expect("the spot ASG's lease exists");
    let annotations = lease.metadata.annotations.unwrap_or_default();
    annotations
        .keys()
        .filter_map(|key| key.strip_prefix(names::LEDGER_KEY_PREFIX))
        .filter_map(|instance| {
            ledger::entry_of(&annotations, instance)
                .map(|entry| (instance.to_owned(), entry.for_node))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_recommendations_buy_exactly_one_each_while_describe_lags() {
    install_crypto();
    let mut spec = FleetSpec::new(5);
    spec.spot.desired = 10;
    spec.spot.max = 30;
    let world = FleetWorld::start(spec).await.expect("world");
    // AWS answers Describe from before each change for 4 s.
    world.asg.set_describe_lag(Duration::from_secs(4));
    let mut agents = start_all(&world).await;

    handle_all(&mut agents).await;

    let spot = world.asg.group(SPOT_ASG).expect("spot group");
    assert_eq!(spot.desired, 15, "5 recommendations on a group of 10");
    let claims = ledger_of(&world);
    let nodes: BTreeSet<&String> = claims.values().collect();
    assert_eq!(
        claims.len(),
        5,
        "one new instance recorded per node: {claims:?}"
    );
    assert_eq!(
        nodes.len(),
        5,
        "no two nodes count the same instance: {claims:?}"
    );
    for (index, _) in agents.iter().enumerate() {
        assert!(world.node_drained(index), "node {index} drained");
    }
    for agent in agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_up_whose_answer_was_lost_is_waited_for_not_bought_again() {
    install_crypto();
    let world = FleetWorld::start(FleetSpec::new(1)).await.expect("world");
    let mut agents = start_all(&world).await;
    // Every attempt the SDK makes applies the change, and every answer is lost.
    world
        .asg
        .fail_next("SetDesiredCapacity", 3, Fault::AnswerLost);

    handle_all(&mut agents).await;

    let spot_before = world.spec.spot.desired.max(1);
    assert_eq!(
        world.asg.group(SPOT_ASG).expect("spot").desired,
        spot_before + 1,
        "the applied scale-up is the replacement"
    );
    assert_eq!(
        world
            .asg
            .group(spot_guard::sim::fleet::ON_DEMAND_ASG)
            .expect("on-demand")
            .desired,
        world.spec.on_demand.desired,
        "nothing bought on-demand for a scale-up that went through"
    );
    assert!(world.node_drained(0));
    for agent in agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_interruption_drains_at_once_while_a_describe_call_hangs() {
    install_crypto();
    let mut spec = FleetSpec::new(1);
    spec.spot.behaviour = spot_guard::sim::asg::Behaviour::NeverInService;
    spec.capacity_check_timeout = Duration::from_secs(120);
    let world = FleetWorld::start(spec).await.expect("world");
    let agents = start_all(&world).await;
    let agent = &agents[0];
    agent.recommend();
    eventually("the spot scale-up is sent", || {
        !world.asg.calls_of("SetDesiredCapacity").is_empty()
    })
    .await;
    // From now on AWS holds every Describe answer far longer than a spot notice lasts.
    world
        .asg
        .set_call_delay("DescribeAutoScalingGroups", Duration::from_secs(600));
    let checks = world.asg.calls_of("DescribeAutoScalingGroups").len();
    // Long enough for the wait loop to be inside its next (hung) check.
    tokio::time::sleep(world.spec.check_interval * 3).await;

    agent
        .imds
        .set_spot_action(Some(("terminate", "2026-11-24T08:24:00Z")));
    // Well inside the SDK's own 10 s cut-off of the hung call: the drain did not wait
    // for the check to end.
    eventually_within(
        "the interruption drains the node",
        Duration::from_secs(5),
        || !world.kube.evictions().is_empty(),
    )
    .await;
    assert_eq!(
        world.asg.calls_of("DescribeAutoScalingGroups").len(),
        checks,
        "the hung check never answered"
    );
    for agent in agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cut_short_is_retried_while_the_interruption_stands() {
    install_crypto();
    let world = FleetWorld::start(FleetSpec::new(1)).await.expect("world");
    // A budget that allows no disruption holds a pod of the node.
    let node = spot_guard::sim::fleet::node_name(0);
    world.kube.add_pod(
        spot_guard::sim::kube::FakePod::new("default", "guarded", &node)
            .with_label("app", "guarded"),
    );
    world
        .kube
        .add_pdb("default", "guarded", &[("app", "guarded")], 0);
    let imds = spot_guard::sim::imds::ImdsSim::start().await.expect("IMDS");
    imds.set_instance_id(world.instance_id(0).expect("instance"));
    let mut config = world
        .config(&spot_guard::sim::fleet::node_name(0), &imds.url())
        .expect("config");
    config.node_termination_grace_period = Duration::from_secs(1);
    config.report.emit_kubernetes_events = true;
    let agent = spot_guard::sim::harness::start(&config, &world.kube.url(), Some(world.aws()))
        .await
        .expect("agent starts");

    imds.set_spot_action(Some(("terminate", "2026-11-24T08:24:00Z")));
    eventually("the first drain gives up on the budget", || {
        world
            .kube
            .events()
            .iter()
            .any(|event| event.reason.as_deref() == Some("CordonAndDrainError"))
    })
    .await;
    world.kube.set_pdb_max_unavailable("default", "guarded", 1);
    eventually("a later attempt evicts the pod", || {
        world.kube.pod("default", "guarded").is_none()
    })
    .await;
    agent.stop().await;
}

async fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(20), check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_instance_is_given_back_once_even_when_killed_right_after_the_call() {
    install_crypto();
    let mut spec = FleetSpec::new(1);
    spec.terminate_after_drain = true;
    let world = FleetWorld::start(spec).await.expect("world");
    let instance = world.instance_id(0).expect("instance").to_owned();
    let terminations = || {
        world
            .asg
            .calls_of("TerminateInstanceInAutoScalingGroup")
            .iter()
            .filter(|call| call.param("InstanceId") == Some(instance.as_str()))
            .count()
    };
    let runtime = spot_guard::sim::harness::killable_runtime().expect("agent runtime");
    let first = world
        .start_agent(0, world.aws(), runtime.handle())
        .await
        .expect("agent starts");
    // Slow Node writes keep the agent between the call and its record when it is killed.
    world.kube.set_latency(Duration::from_millis(300));
    first.recommend();
    eventually("the give-back is sent", || terminations() == 1).await;
    runtime.shutdown_background();
    assert_eq!(first.handled(), 0, "killed before it recorded the event");
    world.kube.set_latency(Duration::ZERO);

    let mut restarted = world
        .start_agent(0, world.aws(), &Handle::current())
        .await
        .expect("agent restarts");
    restarted.recommend();
    assert!(
        restarted.wait_handled(1, LIMIT).await,
        "the restarted agent finishes"
    );

    assert_eq!(
        terminations(),
        1,
        "TerminateInstanceInAutoScalingGroup sent once"
    );
    let spot = world.asg.group(SPOT_ASG).expect("spot");
    assert_eq!(
        spot.desired,
        world.spec.spot.desired.max(1),
        "one bought, one given back"
    );
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_holder_whose_clock_is_a_minute_behind_keeps_its_lease() {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use kube::api::{Api, PostParams};

    install_crypto();
    let world = FleetWorld::start(FleetSpec::new(1)).await.expect("world");
    let agents = start_all(&world).await;
    // Another node's agent holds the spot ASG's lease and renews it; its clock runs a
    // minute behind ours, so every renewTime it writes looks a minute old here.
    let name = names::asg_lease(SPOT_ASG);
    let other = Api::<Lease>::namespaced(
        spot_guard::node::client_for_url(&world.kube.url()).expect("client"),
        NAMESPACE,
    );
    let skewed_now = || MicroTime(Timestamp::now() - SignedDuration::from_secs(60));
    let mut held = other
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("other-node".to_owned()),
                    lease_duration_seconds: Some(2),
                    acquire_time: Some(skewed_now()),
                    renew_time: Some(skewed_now()),
                    ..LeaseSpec::default()
                }),
            },
        )
        .await
        .expect("the other agent takes the lease");
    let lease_reads = || {
        world
            .kube
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/leases/{name}")))
            .count()
    };
    let reads_before = lease_reads();
    agents[0].recommend();

    // The holder renews every 300 ms for longer than the lease's duration.
    let renewing_until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < renewing_until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(spec) = held.spec.as_mut() {
            spec.renew_time = Some(skewed_now());
        }
        held = other
            .replace(&name, &PostParams::default(), &held)
            .await
            .expect("the other agent renews");
    }
    assert!(
        lease_reads() >= reads_before + 5,
        "the agent kept looking at the lease while it waited"
    );
    assert!(
        world.asg.calls_of("SetDesiredCapacity").is_empty(),
        "the agent scaled while another agent held the lease"
    );

    // The holder dies: after the lease's duration, as watched here, it is taken over.
    let mut agents = agents;
    assert!(agents[0].wait_handled(1, LIMIT).await);
    assert_eq!(world.asg.calls_of("SetDesiredCapacity").len(), 1);
    for agent in agents {
        agent.stop().await;
    }
}
