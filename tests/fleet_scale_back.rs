//! Capacity given back: an on-demand node bought as a fallback drains and terminates
//! itself exactly once after spot capacity returns, never while the spot ASG is short or
//! the cluster would be over the utilization ceiling without it; a replacement's node is
//! protected from Cluster Autoscaler for a bounded window. One ASG simulator, one fake
//! API server, agents as tasks with their own clients, as in a DaemonSet.

use std::time::Duration;

use spot_guard::ca_protection::{CA_SCALE_DOWN_DISABLED, PROTECTED_UNTIL_ANNOTATION};
use spot_guard::flow::SCALE_BACK_TAINT;
use spot_guard::scale_back_flow::{
    Phase, SCALE_BACK_ANNOTATION, SCALE_BACK_LEASE, ScaleBackRecord, ScaleBackSettings,
};
use spot_guard::sim::asg::Behaviour;
use spot_guard::sim::fleet::{
    self, FleetSpec, FleetWorld, NAMESPACE, ON_DEMAND_ASG, RunningAgent, SPOT_ASG,
    WORKLOAD_NAMESPACE,
};
use spot_guard::sim::kube::FakePod;
use tokio::runtime::Handle;

const LIMIT: Duration = Duration::from_secs(60);

fn scale_back_settings(ceiling: u8) -> ScaleBackSettings {
    ScaleBackSettings {
        min_wait: Duration::from_millis(500),
        stability_period: Duration::from_millis(500),
        utilization_ceiling: ceiling,
        check_interval: Duration::from_millis(100),
    }
}

/// Three spot nodes; spot capacity runs out, so node 0's recommendation buys an
/// on-demand fallback. Returns the world, the fallback's node name and instance id.
async fn world_with_fallback(ceiling: u8) -> (FleetWorld, String, String) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut spec = FleetSpec::new(3);
    spec.scale_back = Some(scale_back_settings(ceiling));
    spec.new_node_protection = Duration::from_secs(120);
    spec.reports = true;
    let world = FleetWorld::start(spec).await.expect("simulators start");
    let (node, instance) = world.buy_fallback().await.expect("a fallback is bought");
    assert_eq!(desired(&world, ON_DEMAND_ASG), 1, "one fallback bought");
    (world, node, instance)
}

fn desired(world: &FleetWorld, asg: &str) -> i32 {
    world.asg.group(asg).expect("group exists").desired
}

fn start_on(world: &FleetWorld, node: &str, instance: &str) -> RunningAgent {
    world
        .start_agent_on(
            node,
            Some(instance.to_owned()),
            world.aws(),
            &Handle::current(),
        )
        .expect("agent starts")
}

fn annotation(world: &FleetWorld, node: &str, key: &str) -> Option<String> {
    world
        .kube
        .node(node)?
        .metadata
        .annotations?
        .get(key)
        .cloned()
}

fn record(world: &FleetWorld, node: &str, instance: &str) -> ScaleBackRecord {
    ScaleBackRecord::parse(
        annotation(world, node, SCALE_BACK_ANNOTATION).as_deref(),
        instance,
    )
}

fn cordoned(world: &FleetWorld, node: &str) -> bool {
    world
        .kube
        .node(node)
        .and_then(|n| n.spec)
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

fn terminations_of(world: &FleetWorld, instance: &str) -> usize {
    world
        .asg
        .calls_of("TerminateInstanceInAutoScalingGroup")
        .iter()
        .filter(|call| call.param("InstanceId") == Some(instance))
        .filter(|call| call.param("ShouldDecrementDesiredCapacity") == Some("true"))
        .count()
}

/// Watches for `window`, registering new nodes as they come: the fallback must stay
/// in service all along.
async fn assert_kept_for(
    world: &FleetWorld,
    node: &str,
    instance: &str,
    window: Duration,
    why: &str,
) {
    let until = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < until {
        world.run_kubelets();
        assert!(
            !cordoned(world, node),
            "{why}: the fallback is not cordoned"
        );
        assert_eq!(terminations_of(world, instance), 0, "{why}: not terminated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the fallback's record says it was terminated, registering new nodes
/// until then.
async fn wait_terminated(world: &FleetWorld, node: &str, instance: &str) {
    let until = tokio::time::Instant::now() + LIMIT;
    loop {
        if matches!(
            record(world, node, instance).phase,
            Phase::Terminated { .. }
        ) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the fallback was given back in time; record: {:?}",
            record(world, node, instance)
        );
        world.run_kubelets();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fallback_gives_itself_back_once_spot_is_back_and_the_cluster_has_room() {
    let (world, node, instance) = world_with_fallback(50).await;
    world
        .kube
        .add_pod(FakePod::new(WORKLOAD_NAMESPACE, "moved-app", &node).with_requests("500m", "1Gi"));
    // Load on the two spot nodes that take pods: 7 of 8 CPUs with the fallback's pod.
    for (index, name) in [(1, "hog-1"), (2, "hog-2")] {
        world.kube.add_pod(
            FakePod::new(WORKLOAD_NAMESPACE, name, &fleet::node_name(index))
                .with_requests("3", "1Gi"),
        );
    }
    let mut agent = start_on(&world, &node, &instance);

    // Spot is still short (desired 4, 3 InService): kept well past the minimum wait.
    assert_kept_for(
        &world,
        &node,
        &instance,
        Duration::from_secs(2),
        "spot short",
    )
    .await;
    assert_eq!(
        annotation(&world, &node, CA_SCALE_DOWN_DISABLED).as_deref(),
        Some("true"),
        "the fallback's node is protected from Cluster Autoscaler meanwhile"
    );

    // Spot capacity returns; its new node takes pods, but without the fallback the
    // cluster would have 7.5 of 12 CPUs (62%) requested, over the 50% ceiling.
    world.asg.restore_capacity(SPOT_ASG).expect("group exists");
    assert_kept_for(
        &world,
        &node,
        &instance,
        Duration::from_secs(2),
        "over the ceiling",
    )
    .await;
    assert_eq!(world.kube.nodes().len(), 5, "the new spot node registered");

    // Load drops to 4.5 of 12 CPUs: the fallback goes, once.
    assert!(world.kube.remove_pod(WORKLOAD_NAMESPACE, "hog-2"));
    wait_terminated(&world, &node, &instance).await;
    assert_eq!(
        terminations_of(&world, &instance),
        1,
        "terminated exactly once"
    );
    assert_eq!(
        desired(&world, ON_DEMAND_ASG),
        0,
        "the on-demand ASG shrank back"
    );
    assert_eq!(desired(&world, SPOT_ASG), 4, "spot keeps the replacement");
    let evicted: Vec<String> = world
        .kube
        .evictions()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert!(evicted.contains(&"moved-app".to_owned()), "{evicted:?}");
    let taints = world
        .kube
        .node(&node)
        .and_then(|n| n.spec)
        .and_then(|s| s.taints)
        .unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t.key == SCALE_BACK_TAINT && t.effect == "NoSchedule")
    );
    let holder = || {
        world
            .kube
            .lease(NAMESPACE, SCALE_BACK_LEASE)
            .expect("scale-back lease exists")
            .spec
            .and_then(|s| s.holder_identity)
    };
    let until = tokio::time::Instant::now() + LIMIT;
    while holder().is_some() {
        assert!(
            tokio::time::Instant::now() < until,
            "the scale-back lease is released for the next fallback node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Reported on the Node and in the metrics, as every Spot Guard step is.
    assert!(agent.reporter.flush(LIMIT).await, "reports delivered");
    let scale_back_events: Vec<String> = world
        .kube
        .events()
        .iter()
        .filter(|e| e.reason.as_deref() == Some("SpotGuardScaleBack"))
        .filter_map(|e| e.message.clone())
        .collect();
    assert_eq!(scale_back_events.len(), 1, "{scale_back_events:?}");
    assert!(scale_back_events[0].contains(&instance));
    let metrics = agent
        .reporter
        .metrics()
        .expect("metrics on")
        .encode()
        .expect("encode");
    assert!(
        metrics.contains("spot_guard_scale_backs_total{outcome=\"terminated\"} 1"),
        "{metrics}"
    );

    // A restarted agent reads the record and does not terminate again.
    agent.shutdown.cancel();
    let _ = (&mut agent.task).await;
    let restarted = start_on(&world, &node, &instance);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(terminations_of(&world, &instance), 1, "still exactly once");
    restarted.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_that_would_not_fit_get_one_more_spot_instance_first() {
    let (world, node, instance) = world_with_fallback(90).await;
    // Each spot node taking pods keeps 1.5 of 4 CPUs free; the fallback's pod needs 2:
    // 9.5 of 12 CPUs (79%) is under the ceiling, but no single node has room.
    world
        .kube
        .add_pod(FakePod::new(WORKLOAD_NAMESPACE, "big-app", &node).with_requests("2", "1Gi"));
    for index in [1, 2] {
        world.kube.add_pod(
            FakePod::new(
                WORKLOAD_NAMESPACE,
                &format!("hog-{index}"),
                &fleet::node_name(index),
            )
            .with_requests("2500m", "1Gi"),
        );
    }
    let _agent = start_on(&world, &node, &instance);
    world.asg.restore_capacity(SPOT_ASG).expect("group exists");
    // The returned spot instance gets a pod of its own, so only one more makes room.
    let until = tokio::time::Instant::now() + LIMIT;
    while world.kube.nodes().len() < 5 {
        world.run_kubelets();
        assert!(tokio::time::Instant::now() < until, "spot node registers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let returned = world
        .kube
        .nodes()
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .find(|n| n.starts_with("spot-new"))
        .expect("returned spot node");
    world.kube.add_pod(
        FakePod::new(WORKLOAD_NAMESPACE, "hog-new", &returned).with_requests("2500m", "1Gi"),
    );
    wait_terminated(&world, &node, &instance).await;
    let spot_scale_ups: Vec<(Option<i32>, Option<i32>)> = world
        .asg
        .calls_of("SetDesiredCapacity")
        .iter()
        .filter(|c| c.group.as_deref() == Some(SPOT_ASG) && c.error_code.is_none())
        .map(|c| (c.desired_before, c.desired_after))
        .collect();
    assert_eq!(
        spot_scale_ups,
        [(Some(3), Some(4)), (Some(4), Some(5))],
        "the recommendation's attempt, then exactly one more for the fallback's pods"
    );
    assert!(
        record(&world, &node, &instance).spot_requested_at.is_some(),
        "the extra spot instance is recorded, so a restart does not buy another"
    );
    assert_eq!(terminations_of(&world, &instance), 1);
    assert_eq!(desired(&world, ON_DEMAND_ASG), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_autoscaler_protection_ends_after_its_window_even_across_a_restart() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut spec = FleetSpec::new(1);
    spec.new_node_protection = Duration::from_secs(3);
    let world = FleetWorld::start(spec).await.expect("simulators start");
    let mut first = world
        .start_agent(0, world.aws(), &Handle::current())
        .expect("agent starts");
    first
        .notices
        .send(fleet::recommendation("rebalance-recommendation-000"))
        .await
        .expect("agent runs");
    assert!(first.wait_handled(1, LIMIT).await);
    let registered = world.run_kubelets();
    assert_eq!(registered.len(), 1, "the spot replacement registers");
    let (node, instance) = registered[0].clone();
    let mut agent = start_on(&world, &node, &instance);
    let until = tokio::time::Instant::now() + LIMIT;
    while annotation(&world, &node, CA_SCALE_DOWN_DISABLED).is_none() {
        assert!(tokio::time::Instant::now() < until, "protection applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(annotation(&world, &node, PROTECTED_UNTIL_ANNOTATION).is_some());
    // The agent restarts in the middle of the window; the new one removes it on time.
    agent.shutdown.cancel();
    let _ = (&mut agent.task).await;
    let _restarted = start_on(&world, &node, &instance);
    while annotation(&world, &node, CA_SCALE_DOWN_DISABLED).is_some() {
        assert!(tokio::time::Instant::now() < until, "protection removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(annotation(&world, &node, PROTECTED_UNTIL_ANNOTATION), None);

    // An annotation someone else set is never touched.
    let (other_node, other_instance) = ("spot-node-000", world.instance_id(0).expect("id"));
    world.kube.update_node(other_node, |n| {
        n.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(CA_SCALE_DOWN_DISABLED.to_owned(), "true".to_owned());
    });
    let _other = start_on(&world, other_node, other_instance);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        annotation(&world, other_node, CA_SCALE_DOWN_DISABLED).as_deref(),
        Some("true")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_during_the_scale_back_drain_finishes_it_after_a_restart() {
    let (world, node, instance) = world_with_fallback(75).await;
    // A budget holds the fallback's pod, so the drain is still going when the agent dies.
    world.kube.add_pod(
        FakePod::new(WORKLOAD_NAMESPACE, "guarded-app", &node)
            .with_label("app", "guarded")
            .with_requests("500m", "1Gi"),
    );
    world
        .kube
        .add_pdb(WORKLOAD_NAMESPACE, "guarded", &[("app", "guarded")], 0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let _victim = world
        .start_agent_on(&node, Some(instance.clone()), world.aws(), runtime.handle())
        .expect("agent starts");
    world.asg.restore_capacity(SPOT_ASG).expect("group exists");
    let until = tokio::time::Instant::now() + LIMIT;
    while !matches!(
        record(&world, &node, &instance).phase,
        Phase::Draining { .. }
    ) || !cordoned(&world, &node)
    {
        world.run_kubelets();
        assert!(tokio::time::Instant::now() < until, "the drain starts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runtime.shutdown_background();

    // The budget lifts; the restarted agent finishes the drain and terminates, once.
    assert!(
        world
            .kube
            .set_pdb_max_unavailable(WORKLOAD_NAMESPACE, "guarded", 1),
        "budget exists"
    );
    let _restarted = start_on(&world, &node, &instance);
    wait_terminated(&world, &node, &instance).await;
    assert_eq!(
        terminations_of(&world, &instance),
        1,
        "terminated exactly once"
    );
    assert_eq!(desired(&world, ON_DEMAND_ASG), 0);
    assert!(
        world.kube.pods_on_node(&node).is_empty(),
        "the node ends drained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fallback_nodes_go_one_at_a_time_and_stop_at_the_ceiling() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut spec = FleetSpec::new(3);
    spec.spot.behaviour = Behaviour::InsufficientCapacity;
    spec.scale_back = Some(scale_back_settings(60));
    let world = FleetWorld::start(spec).await.expect("simulators start");
    // Nodes 0 and 1 get recommendations while spot is short: two fallbacks.
    for index in [0, 1] {
        let mut agent = world
            .start_agent(index, world.aws(), &Handle::current())
            .expect("agent starts");
        agent
            .notices
            .send(fleet::recommendation(&format!("rebalance-{index}")))
            .await
            .expect("agent runs");
        assert!(agent.wait_handled(1, LIMIT).await, "node {index} handled");
    }
    assert_eq!(desired(&world, ON_DEMAND_ASG), 2, "two fallbacks bought");
    let fallbacks = world.run_kubelets();
    assert_eq!(fallbacks.len(), 2);
    // Node 2 carries 3 of its 4 CPUs; each fallback runs a 1-CPU pod that, once evicted,
    // comes back on node 2 (as a controller would reschedule it).
    world.kube.add_pod(
        FakePod::new(WORKLOAD_NAMESPACE, "hog", &fleet::node_name(2)).with_requests("3", "1Gi"),
    );
    for (node, _) in &fallbacks {
        world.kube.add_pod(
            FakePod::new(WORKLOAD_NAMESPACE, &format!("app-on-{node}"), node)
                .with_requests("1", "1Gi")
                .recreated_on(&fleet::node_name(2)),
        );
    }
    let _agents: Vec<RunningAgent> = fallbacks
        .iter()
        .map(|(node, instance)| start_on(&world, node, instance))
        .collect();
    world.asg.restore_capacity(SPOT_ASG).expect("group exists");

    // Without either fallback: 5 of 12 CPUs requested (42%), so the first one goes. Then,
    // without the second: 5 of 8 (62%), over the 60% ceiling, so it stays.
    let gone = |world: &FleetWorld| {
        fallbacks
            .iter()
            .filter(|(_, instance)| terminations_of(world, instance) > 0)
            .count()
    };
    let until = tokio::time::Instant::now() + LIMIT;
    while gone(&world) == 0 {
        world.run_kubelets();
        assert!(tokio::time::Instant::now() < until, "one fallback goes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (kept_node, kept_instance) = fallbacks
        .iter()
        .find(|(_, instance)| terminations_of(&world, instance) == 0)
        .cloned()
        .expect("one fallback left");
    assert_kept_for(
        &world,
        &kept_node,
        &kept_instance,
        Duration::from_secs(2),
        "the second would breach the ceiling",
    )
    .await;
    assert_eq!(gone(&world), 1, "exactly one fallback given back");
    assert_eq!(desired(&world, ON_DEMAND_ASG), 1);
}
