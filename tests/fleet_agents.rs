//! Many nodes get a rebalance recommendation at once: given one spot ASG, one on-demand
//! ASG and one agent per node (each with its own clients, coordinating through Leases on
//! the fake API server), desired capacity grows by exactly one per node, with no lost
//! update in the simulator's log, and every node ends drained.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use spot_guard::asg::{AsgError, AsgState, AutoScaling, ScalingActivity};
use spot_guard::aws::AwsAutoScaling;
use spot_guard::imds::REBALANCE_RECOMMENDATION_PATH;
use spot_guard::names::{CAPACITY_FAILURE_ANNOTATION, asg_lease};
use spot_guard::sim::asg::Behaviour;
use spot_guard::sim::fleet::{
    self, FleetAgent, FleetSpec, FleetSummary, FleetWorld, NAMESPACE, ON_DEMAND_ASG, SPOT_ASG,
};
use tokio::runtime::Handle;

const LIMIT: Duration = Duration::from_secs(90);

async fn world(mut spec: FleetSpec) -> FleetWorld {
    spot_guard::tls::ensure_crypto_provider();
    // Generous, so that a loaded machine does not turn a slow launch or a slow Node
    // into a fallback: these tests count where capacity was bought.
    spec.capacity_check_timeout = Duration::from_secs(30);
    spec.node_ready_timeout = Duration::from_secs(30);
    FleetWorld::start(spec).await.expect("simulators start")
}

fn desired(world: &FleetWorld, asg: &str) -> i32 {
    world.asg.group(asg).expect("group exists").desired
}

async fn start_all(world: &FleetWorld, indices: std::ops::Range<usize>) -> Vec<FleetAgent> {
    let mut agents = Vec::new();
    for index in indices {
        agents.push(
            world
                .start_agent(index, world.aws(), &Handle::current())
                .await
                .expect("agent starts"),
        );
    }
    agents
}

async fn wait_all(agents: &mut [FleetAgent]) {
    for agent in agents.iter_mut() {
        assert!(
            agent.wait_handled(1, LIMIT).await,
            "agent of {} finished its recommendation in time",
            agent.node
        );
    }
}

fn assert_one_each(world: &FleetWorld, summary: &FleetSummary, spot: i32, on_demand: i32) {
    assert_eq!(
        summary.spot_desired.1 - summary.spot_desired.0,
        spot,
        "spot growth\n{summary}"
    );
    assert_eq!(
        summary.on_demand_desired.1 - summary.on_demand_desired.0,
        on_demand,
        "on-demand growth\n{summary}"
    );
    assert!(
        summary.lost_updates.is_empty(),
        "lost updates: {:?}",
        summary.lost_updates
    );
    assert_eq!(
        summary.scale_ups,
        usize::try_from(spot + on_demand).unwrap(),
        "one SetDesiredCapacity per bought instance\n{summary}"
    );
    assert_eq!(
        summary.drained, world.spec.nodes,
        "every node drained\n{summary}"
    );
    let evictions = world.kube.evictions();
    for index in 0..world.spec.nodes {
        let pod = format!("app-{index:03}");
        assert_eq!(
            evictions.iter().filter(|e| e.name == pod).count(),
            1,
            "{pod} evicted exactly once"
        );
    }
}

/// A seeded, bounded delay per agent (a small LCG: no timing assertion rests on it).
fn delays(count: usize, seed: u64, max_ms: u64) -> Vec<Duration> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            Duration::from_millis((state >> 33) % max_ms)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_recommendations_at_once_buy_exactly_twenty_spot_instances() {
    let world = world(FleetSpec::new(20)).await;
    let (spot, on_demand) = (desired(&world, SPOT_ASG), desired(&world, ON_DEMAND_ASG));
    let mut agents = start_all(&world, 0..20).await;
    for agent in &agents {
        agent.recommend();
    }
    wait_all(&mut agents).await;
    let summary = world.summary(spot, on_demand);
    println!("{summary}");
    assert_one_each(&world, &summary, 20, 0);
    let lease = world
        .kube
        .lease(NAMESPACE, &asg_lease(SPOT_ASG))
        .expect("the spot ASG's lease exists");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        None,
        "the last agent released the lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_does_not_fit_under_max_size_goes_to_on_demand_per_node() {
    let mut spec = FleetSpec::new(20);
    spec.spot.max = 32;
    let world = world(spec).await;
    let (spot, on_demand) = (desired(&world, SPOT_ASG), desired(&world, ON_DEMAND_ASG));
    let mut agents = start_all(&world, 0..20).await;
    for agent in &agents {
        agent.recommend();
    }
    wait_all(&mut agents).await;
    let summary = world.summary(spot, on_demand);
    assert_one_each(&world, &summary, 12, 8);
    assert_eq!(desired(&world, SPOT_ASG), 32, "spot ASG filled to MaxSize");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_arrival_still_buys_exactly_one_each() {
    let world = world(FleetSpec::new(20)).await;
    let (spot, on_demand) = (desired(&world, SPOT_ASG), desired(&world, ON_DEMAND_ASG));
    let mut agents = start_all(&world, 0..20).await;
    // Each node's IMDS starts serving its recommendation after its own delay.
    let mut arrivals: Vec<(Duration, usize)> = delays(20, 0x5eed, 800)
        .into_iter()
        .enumerate()
        .map(|(index, delay)| (delay, index))
        .collect();
    arrivals.sort();
    let started = tokio::time::Instant::now();
    for (delay, index) in arrivals {
        tokio::time::sleep_until(started + delay).await;
        agents[index].recommend();
    }
    wait_all(&mut agents).await;
    assert_one_each(&world, &world.summary(spot, on_demand), 20, 0);
}

/// Once armed (after the agent's start-up check of the ASGs), describes never answer:
/// the agent hangs while it holds the lease.
#[derive(Clone)]
struct HangsOnDescribe {
    aws: AwsAutoScaling,
    armed: Arc<AtomicBool>,
}

impl AutoScaling for HangsOnDescribe {
    async fn describe(&self, asg: &str) -> Result<AsgState, AsgError> {
        if self.armed.load(Ordering::SeqCst) {
            std::future::pending().await
        } else {
            self.aws.describe(asg).await
        }
    }

    async fn set_desired_capacity(&self, asg: &str, desired: i32) -> Result<(), AsgError> {
        self.aws.set_desired_capacity(asg, desired).await
    }

    async fn scaling_activities(&self, asg: &str) -> Result<Vec<ScalingActivity>, AsgError> {
        self.aws.scaling_activities(asg).await
    }

    async fn terminate_instance(&self, instance_id: &str, decrement: bool) -> Result<(), AsgError> {
        AutoScaling::terminate_instance(&self.aws, instance_id, decrement).await
    }
}

fn spot_lease_spec(world: &FleetWorld) -> Option<LeaseSpec> {
    world
        .kube
        .lease(NAMESPACE, &asg_lease(SPOT_ASG))
        .and_then(|lease| lease.spec)
}

fn holder(world: &FleetWorld) -> Option<String> {
    spot_lease_spec(world).and_then(|spec| spec.holder_identity)
}

/// Reads of the spot ASG's lease the fake API server has answered.
fn spot_lease_reads(world: &FleetWorld) -> usize {
    let path = format!("/leases/{}", asg_lease(SPOT_ASG));
    world
        .kube
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&path))
        .count()
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(LIMIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_holding_the_lease_delays_the_others_only_until_it_expires() {
    let world = world(FleetSpec::new(20)).await;
    let (spot, on_demand) = (desired(&world, SPOT_ASG), desired(&world, ON_DEMAND_ASG));
    // The victim runs in a runtime of its own, so that killing it stops all its tasks.
    let victim_runtime = spot_guard::sim::harness::killable_runtime().expect("runtime");
    let armed = Arc::new(AtomicBool::new(false));
    let hangs = HangsOnDescribe {
        aws: world.aws(),
        armed: Arc::clone(&armed),
    };
    let victim = world
        .start_agent(0, hangs, victim_runtime.handle())
        .await
        .expect("victim starts");
    armed.store(true, Ordering::SeqCst);
    victim.recommend();
    let victim_node = fleet::node_name(0);
    wait_for("the victim takes the lease", || {
        holder(&world).as_deref() == Some(victim_node.as_str())
    })
    .await;

    let mut others = start_all(&world, 1..20).await;
    let polled: Vec<u64> = others
        .iter()
        .map(|agent| agent.imds.gets(REBALANCE_RECOMMENDATION_PATH))
        .collect();
    for agent in &others {
        agent.recommend();
    }
    // Renewed by a live holder, the lease keeps everyone else waiting. Evidence that
    // they are: each one's monitor has passed its recommendation on (a second poll
    // since); the holder renewed the lease after the moment an unrenewed lease would
    // have expired; and the others asked for it again after that renewal.
    wait_for("every other agent has its recommendation", || {
        others
            .iter()
            .zip(&polled)
            .all(|(agent, before)| agent.imds.gets(REBALANCE_RECOMMENDATION_PATH) >= before + 2)
    })
    .await;
    let lapse = Timestamp::now()
        .checked_add(world.spec.lease_duration)
        .expect("timestamp");
    wait_for(
        "the holder renews the lease past its first possible expiry",
        || {
            spot_lease_spec(&world)
                .and_then(|spec| spec.renew_time)
                .is_some_and(|MicroTime(renewed)| renewed > lapse)
        },
    )
    .await;
    let asked = spot_lease_reads(&world);
    wait_for("the others look at the lease again", || {
        spot_lease_reads(&world) >= asked + 2 * others.len()
    })
    .await;
    assert!(
        world.asg.calls_of("SetDesiredCapacity").is_empty(),
        "nobody scales while the holder lives"
    );
    assert_eq!(
        holder(&world).as_deref(),
        Some(victim_node.as_str()),
        "the victim still holds the lease"
    );
    assert!(others.iter().all(|agent| agent.handled() == 0));
    victim_runtime.shutdown_background();
    wait_all(&mut others).await;
    assert_eq!(
        desired(&world, SPOT_ASG),
        spot + 19,
        "the other 19 scaled\n{}",
        world.summary(spot, on_demand)
    );

    // The victim's pod restarts on the same instance, whose IMDS still serves the
    // recommendation (a fresh simulator here, so it is served again): it buys its own.
    drop(victim);
    let mut restarted = world
        .start_agent(0, world.aws(), &Handle::current())
        .await
        .expect("restarted agent starts");
    restarted.recommend();
    assert!(
        restarted.wait_handled(1, LIMIT).await,
        "restarted agent finishes"
    );
    assert_one_each(&world, &world.summary(spot, on_demand), 20, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capacity_failure_sends_later_recommendations_straight_to_on_demand() {
    let mut spec = FleetSpec::new(2);
    spec.spot.behaviour = Behaviour::InsufficientCapacity;
    let world = world(spec).await;
    let mut first = start_all(&world, 0..1).await;
    first[0].recommend();
    wait_all(&mut first).await;
    assert_eq!(
        world.asg.calls_of("SetDesiredCapacity").len(),
        2,
        "spot, then on-demand"
    );
    let note = world
        .kube
        .lease(NAMESPACE, &asg_lease(SPOT_ASG))
        .and_then(|lease| lease.metadata.annotations)
        .and_then(|a| a.get(CAPACITY_FAILURE_ANNOTATION).cloned())
        .expect("the failure is remembered on the spot ASG's lease");
    assert!(note.contains("insufficient-capacity"), "{note}");

    let mut second = start_all(&world, 1..2).await;
    second[0].recommend();
    wait_all(&mut second).await;
    let scaled: Vec<String> = world
        .asg
        .calls_of("SetDesiredCapacity")
        .iter()
        .filter_map(|call| call.group.clone())
        .collect();
    assert_eq!(
        scaled,
        [SPOT_ASG, ON_DEMAND_ASG, ON_DEMAND_ASG],
        "the second node skipped the spot ASG"
    );
    assert!(world.node_drained(0) && world.node_drained(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drained_instances_are_given_back_with_a_decrement() {
    let mut spec = FleetSpec::new(3);
    spec.terminate_after_drain = true;
    let world = world(spec).await;
    let spot = desired(&world, SPOT_ASG);
    let originals: Vec<String> = (0..3)
        .map(|i| world.instance_id(i).expect("instance").to_owned())
        .collect();
    let mut agents = start_all(&world, 0..3).await;
    for agent in &agents {
        agent.recommend();
    }
    wait_all(&mut agents).await;
    let terminations = world.asg.calls_of("TerminateInstanceInAutoScalingGroup");
    let mut terminated: Vec<String> = terminations
        .iter()
        .map(|call| {
            assert_eq!(call.param("ShouldDecrementDesiredCapacity"), Some("true"));
            call.param("InstanceId").unwrap_or_default().to_owned()
        })
        .collect();
    terminated.sort();
    let mut expected = originals.clone();
    expected.sort();
    assert_eq!(
        terminated, expected,
        "each drained node's own instance, once"
    );
    assert_eq!(
        desired(&world, SPOT_ASG),
        spot,
        "the fleet is back to its size"
    );
    let group = world.asg.group(SPOT_ASG).expect("group");
    assert!(originals.iter().all(|id| !group.instance_ids.contains(id)));
    assert_eq!(
        world.asg.calls_of("SetDesiredCapacity").len(),
        3,
        "one scale-up per node"
    );
    assert!(fleet::lost_updates(&world.asg.calls(), 1).is_empty());
}
