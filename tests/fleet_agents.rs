//! Many nodes get a rebalance recommendation at once: given one spot ASG, one on-demand
//! ASG and one agent per node (each with its own clients, coordinating through Leases on
//! the fake API server), desired capacity grows by exactly one per node, with no lost
//! update in the simulator's log, and every node ends drained.

use std::time::Duration;

use spot_guard::asg::{AsgError, AsgState, AutoScaling, ScalingActivity};
use spot_guard::aws::AwsAutoScaling;
use spot_guard::fleet_flow::CAPACITY_FAILURE_ANNOTATION;
use spot_guard::sim::asg::Behaviour;
use spot_guard::sim::fleet::{
    self, FleetSpec, FleetSummary, FleetWorld, NAMESPACE, ON_DEMAND_ASG, RunningAgent, SPOT_ASG,
};
use spot_guard::spot_guard::Fleet;
use tokio::runtime::Handle;

const LIMIT: Duration = Duration::from_secs(90);

async fn world(spec: FleetSpec) -> FleetWorld {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    FleetWorld::start(spec).await.expect("simulators start")
}

fn desired(world: &FleetWorld, asg: &str) -> i32 {
    world.asg.group(asg).expect("group exists").desired
}

fn event(index: usize) -> String {
    format!("rebalance-recommendation-{index:03}")
}

async fn start_all(world: &FleetWorld, indices: std::ops::Range<usize>) -> Vec<RunningAgent> {
    indices
        .map(|i| {
            world
                .start_agent(i, world.aws(), &Handle::current())
                .expect("agent starts")
        })
        .collect()
}

async fn recommend(agent: &RunningAgent, index: usize) {
    agent
        .notices
        .send(fleet::recommendation(&event(index)))
        .await
        .expect("agent is running");
}

async fn wait_all(agents: &mut [RunningAgent]) {
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
    for (index, agent) in agents.iter().enumerate() {
        recommend(agent, index).await;
    }
    wait_all(&mut agents).await;
    let summary = world.summary(spot, on_demand);
    println!("{summary}");
    assert_one_each(&world, &summary, 20, 0);
    let lease = world
        .kube
        .lease(NAMESPACE, &Fleet::lease_name(SPOT_ASG))
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
    for (index, agent) in agents.iter().enumerate() {
        recommend(agent, index).await;
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
    let senders: Vec<_> = agents
        .iter()
        .zip(delays(20, 0x5eed, 800))
        .enumerate()
        .map(|(index, (agent, delay))| {
            let notices = agent.notices.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                notices
                    .send(fleet::recommendation(&event(index)))
                    .await
                    .expect("agent is running");
            })
        })
        .collect();
    for sender in senders {
        sender.await.expect("sender task");
    }
    wait_all(&mut agents).await;
    assert_one_each(&world, &world.summary(spot, on_demand), 20, 0);
}

/// Describes never answer: the agent hangs while it holds the lease.
struct HangsOnDescribe(AwsAutoScaling);

impl AutoScaling for HangsOnDescribe {
    async fn describe(&self, _asg: &str) -> Result<AsgState, AsgError> {
        std::future::pending().await
    }

    async fn set_desired_capacity(&self, asg: &str, desired: i32) -> Result<(), AsgError> {
        self.0.set_desired_capacity(asg, desired).await
    }

    async fn scaling_activities(&self, asg: &str) -> Result<Vec<ScalingActivity>, AsgError> {
        self.0.scaling_activities(asg).await
    }

    async fn terminate_instance(&self, instance_id: &str, decrement: bool) -> Result<(), AsgError> {
        AutoScaling::terminate_instance(&self.0, instance_id, decrement).await
    }
}

fn holder(world: &FleetWorld) -> Option<String> {
    world
        .kube
        .lease(NAMESPACE, &Fleet::lease_name(SPOT_ASG))
        .and_then(|lease| lease.spec)
        .and_then(|spec| spec.holder_identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_holding_the_lease_delays_the_others_only_until_it_expires() {
    let world = world(FleetSpec::new(20)).await;
    let (spot, on_demand) = (desired(&world, SPOT_ASG), desired(&world, ON_DEMAND_ASG));
    // The victim runs in a runtime of its own, so that killing it stops all its tasks.
    let victim_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let victim = world
        .start_agent(0, HangsOnDescribe(world.aws()), victim_runtime.handle())
        .expect("victim starts");
    recommend(&victim, 0).await;
    let victim_node = fleet::node_name(0);
    tokio::time::timeout(LIMIT, async {
        while holder(&world).as_deref() != Some(victim_node.as_str()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the victim takes the lease");

    let mut others = start_all(&world, 1..20).await;
    for (offset, agent) in others.iter().enumerate() {
        recommend(agent, offset + 1).await;
    }
    // Renewed by a live holder, the lease keeps everyone else waiting.
    tokio::time::sleep(world.spec.lease_duration * 2).await;
    assert!(
        world.asg.calls_of("SetDesiredCapacity").is_empty(),
        "nobody scales while the holder lives"
    );
    victim_runtime.shutdown_background();
    wait_all(&mut others).await;
    assert_eq!(desired(&world, SPOT_ASG), spot + 19, "the other 19 scaled");

    // The victim's pod restarts: its recommendation is still served and it buys its own.
    let mut restarted = world
        .start_agent(0, world.aws(), &Handle::current())
        .expect("restarted agent starts");
    recommend(&restarted, 0).await;
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
    recommend(&first[0], 0).await;
    wait_all(&mut first).await;
    assert_eq!(
        world.asg.calls_of("SetDesiredCapacity").len(),
        2,
        "spot, then on-demand"
    );
    let note = world
        .kube
        .lease(NAMESPACE, &Fleet::lease_name(SPOT_ASG))
        .and_then(|lease| lease.metadata.annotations)
        .and_then(|a| a.get(CAPACITY_FAILURE_ANNOTATION).cloned())
        .expect("the failure is remembered on the spot ASG's lease");
    assert!(note.contains("insufficient-capacity"), "{note}");

    let mut second = start_all(&world, 1..2).await;
    recommend(&second[0], 1).await;
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
    for (index, agent) in agents.iter().enumerate() {
        recommend(agent, index).await;
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
