//! Capacity given back: an on-demand node bought as a fallback drains and terminates
//! itself exactly once after spot capacity returns, never while the spot ASG is short or
//! the cluster would be over the utilization ceiling without it; a replacement's node is
//! protected from Cluster Autoscaler for a bounded window. One ASG simulator, one fake
//! API server, agents as tasks with their own clients, as in a DaemonSet.

use std::time::{Duration, SystemTime};

use spot_guard::config::{PreScaleSettings, ScaleBackSettings};
use spot_guard::imds::SPOT_INSTANCE_ACTION_PATH;
use spot_guard::lease::{LeaseSettings, Leases};
use spot_guard::names::{
    CA_SCALE_DOWN_DISABLED, PROTECTED_UNTIL_ANNOTATION, SCALE_BACK_ANNOTATION, SCALE_BACK_LEASE,
    SCALE_BACK_TAINT, asg_lease,
};
use spot_guard::node::client_for_url;
use spot_guard::sim::asg::Behaviour;
use spot_guard::sim::fleet::{
    self, FleetAgent, FleetSpec, FleetWorld, NAMESPACE, ON_DEMAND_ASG, SPOT_ASG, WORKLOAD_NAMESPACE,
};
use spot_guard::sim::kube::{FakePod, Termination};
use spot_guard::spot_guard::decide::from_unix_millis;
use spot_guard::spot_guard::ledger;
use spot_guard::spot_guard::scale_back::decide::{Phase, ScaleBackRecord};
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

/// Three spot nodes whose fallbacks scale back under `ceiling`, reporting.
fn scale_back_spec(ceiling: u8) -> FleetSpec {
    let mut spec = FleetSpec::new(3);
    spec.scale_back = Some(scale_back_settings(ceiling));
    spec.new_node_protection = Duration::from_secs(120);
    spec.reports = true;
    spec
}

/// [`scale_back_spec`] with its defaults.
async fn world_with_fallback(ceiling: u8) -> (FleetWorld, String, String) {
    with_fallback(scale_back_spec(ceiling)).await
}

/// Spot capacity runs out, so node 0's recommendation buys an on-demand fallback.
/// Returns the world, the fallback's node name and instance id.
async fn with_fallback(spec: FleetSpec) -> (FleetWorld, String, String) {
    spot_guard::tls::ensure_crypto_provider();
    let world = FleetWorld::start(spec).await.expect("simulators start");
    let (node, instance) = world.buy_fallback().await.expect("a fallback is bought");
    assert_eq!(desired(&world, ON_DEMAND_ASG), 1, "one fallback bought");
    (world, node, instance)
}

/// A workload pod on `node` that requests `cpu` and 1 GiB.
fn workload(name: &str, node: &str, cpu: &str) -> FakePod {
    FakePod::new(WORKLOAD_NAMESPACE, name, node).with_requests(cpu, "1Gi")
}

/// Load on the two spot nodes that take pods (1 and 2): a pod `hog-N` requesting `cpu`
/// on each, in `namespace`.
fn load_spot_nodes(world: &FleetWorld, namespace: &str, cpu: &str) {
    for index in [1, 2] {
        world.kube.add_pod(
            FakePod::new(namespace, &format!("hog-{index}"), &fleet::node_name(index))
                .with_requests(cpu, "1Gi"),
        );
    }
}

/// Spot capacity returns and its new node registers, the fallback kept meanwhile.
async fn spot_returns(world: &FleetWorld, node: &str, instance: &str) {
    world.asg.restore_capacity(SPOT_ASG).expect("group exists");
    keep_watching(world, node, instance, "spot returning", || {
        world.kube.nodes().len() == 5
    })
    .await;
}

/// Every successful change of the spot ASG's desired capacity, (before, after).
fn spot_raises(world: &FleetWorld) -> Vec<(Option<i32>, Option<i32>)> {
    world
        .asg
        .calls_of("SetDesiredCapacity")
        .iter()
        .filter(|c| c.group.as_deref() == Some(SPOT_ASG) && c.error_code.is_none())
        .map(|c| (c.desired_before, c.desired_after))
        .collect()
}

fn desired(world: &FleetWorld, asg: &str) -> i32 {
    world.asg.group(asg).expect("group exists").desired
}

async fn start_on(world: &FleetWorld, node: &str, instance: &str) -> FleetAgent {
    world
        .start_agent_on(
            node,
            Some(instance.to_owned()),
            world.aws(),
            &Handle::current(),
        )
        .await
        .expect("agent starts")
}

async fn stop(agent: FleetAgent) {
    tokio::time::timeout(LIMIT, agent.stop())
        .await
        .expect("the agent stops in time");
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

/// Scale-back checks made so far: each looks at the on-demand ASG (as the agent's
/// start-up check does once, before `start_on` returns).
fn scale_back_checks(world: &FleetWorld) -> usize {
    world
        .asg
        .calls_of("DescribeAutoScalingGroups")
        .iter()
        .filter(|call| call.group.as_deref() == Some(ON_DEMAND_ASG))
        .count()
}

/// The (node, instance) pairs of the InService instances of `asg` that Spot Guard
/// bought (not the fleet's own), once `count` of them have registered their Nodes.
async fn bought_nodes(world: &FleetWorld, asg: &str, count: usize) -> Vec<(String, String)> {
    let originals: Vec<String> = (0..world.spec.nodes)
        .filter_map(|index| world.instance_id(index).map(str::to_owned))
        .collect();
    let registered = || {
        let nodes = world.kube.nodes();
        let mut found: Vec<(String, String)> = world
            .asg
            .group(asg)
            .map(|group| group.in_service_ids)
            .unwrap_or_default()
            .into_iter()
            .filter(|instance| !originals.contains(instance))
            .filter_map(|instance| {
                let node = nodes.iter().find(|node| {
                    node.spec
                        .as_ref()
                        .and_then(|spec| spec.provider_id.as_deref())
                        .is_some_and(|id| id.ends_with(&format!("/{instance}")))
                })?;
                Some((node.metadata.name.clone()?, instance))
            })
            .collect();
        found.sort();
        found
    };
    wait_for(
        &format!("{count} bought instances of {asg} register"),
        || registered().len() >= count,
    )
    .await;
    let found = registered();
    assert_eq!(found.len(), count, "bought in {asg}: {found:?}");
    found
}

/// The ledger on the lease of `asg`: the instances Spot Guard bought there.
fn ledger_of(world: &FleetWorld, asg: &str) -> std::collections::BTreeMap<String, String> {
    world
        .kube
        .lease(NAMESPACE, &asg_lease(asg))
        .and_then(|lease| lease.metadata.annotations)
        .unwrap_or_default()
}

/// Requests answered since `from` (an index into the log) with `method` on a path
/// ending in `suffix`.
fn requests_since(world: &FleetWorld, from: usize, method: &str, suffix: &str) -> usize {
    world.kube.requests()[from..]
        .iter()
        .filter(|r| r.method == method && r.path.ends_with(suffix))
        .count()
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(LIMIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// Checks that the fallback stays in service until `done` (the simulated kubelets
/// register new instances meanwhile).
async fn keep_watching(
    world: &FleetWorld,
    node: &str,
    instance: &str,
    why: &str,
    mut done: impl FnMut() -> bool,
) {
    let until = tokio::time::Instant::now() + LIMIT;
    loop {
        assert!(
            !cordoned(world, node),
            "{why}: the fallback is not cordoned"
        );
        assert_eq!(terminations_of(world, instance), 0, "{why}: not terminated");
        if done() {
            return;
        }
        assert!(tokio::time::Instant::now() < until, "{why}: timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fallback stays in service for at least two seconds and at least `checks`
/// scale-back checks: evidence that its agent looked again and again and decided to keep it.
async fn assert_kept_for(world: &FleetWorld, node: &str, instance: &str, checks: usize, why: &str) {
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    let from = scale_back_checks(world);
    keep_watching(world, node, instance, why, || {
        tokio::time::Instant::now() >= until && scale_back_checks(world) >= from + checks
    })
    .await;
}

/// Waits until the fallback's record says it was terminated (written just before the
/// termination is sent) and the termination has reached the ASG.
async fn wait_terminated(world: &FleetWorld, node: &str, instance: &str) {
    let until = tokio::time::Instant::now() + LIMIT;
    loop {
        if matches!(
            record(world, node, instance).phase,
            Phase::Terminated { .. }
        ) && terminations_of(world, instance) > 0
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the fallback was given back in time; record: {:?}",
            record(world, node, instance)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fallback_gives_itself_back_once_spot_is_back_and_the_cluster_has_room() {
    let (world, node, instance) = world_with_fallback(50).await;
    let ledger_key = ledger::key(&instance);
    let ledger_entry = ledger_of(&world, ON_DEMAND_ASG)
        .get(&ledger_key)
        .cloned()
        .expect("the ledger lists the fallback");
    world.kube.add_pod(workload("moved-app", &node, "500m"));
    // 7 of the spot nodes' 8 CPUs with the fallback's pod.
    load_spot_nodes(&world, WORKLOAD_NAMESPACE, "3");
    let agent = start_on(&world, &node, &instance).await;

    // Spot is still short (desired 4, 3 InService): kept well past the minimum wait,
    // over many checks.
    assert_kept_for(&world, &node, &instance, 10, "spot short").await;
    assert_eq!(
        annotation(&world, &node, CA_SCALE_DOWN_DISABLED).as_deref(),
        Some("true"),
        "the fallback's node is protected from Cluster Autoscaler meanwhile"
    );

    // Spot capacity returns; its new node takes pods, but without the fallback the
    // cluster would have 7.5 of 12 CPUs (62%) requested, over the 50% ceiling. Kept for
    // well past the stability period after the new node registered, over many checks.
    spot_returns(&world, &node, &instance).await;
    assert_kept_for(&world, &node, &instance, 15, "over the ceiling").await;
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
    wait_for(
        "the scale-back lease is released for the next fallback node",
        || holder().is_none(),
    )
    .await;
    wait_for("the fallback leaves the ledger", || {
        !ledger_of(&world, ON_DEMAND_ASG).contains_key(&ledger_key)
    })
    .await;

    // Reported on the Node and in the metrics, as every Spot Guard step is.
    assert!(agent.agent.reporter.flush(LIMIT).await, "reports delivered");
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
        .agent
        .reporter
        .metrics()
        .expect("metrics on")
        .encode()
        .expect("encode");
    assert!(
        metrics.contains("spot_guard_scale_backs_total{outcome=\"terminated\"} 1"),
        "{metrics}"
    );
    stop(agent).await;

    // A restarted agent does not terminate again. The ledger no longer lists the
    // instance: the restarted agent looks for its entry, finds none and looks again.
    let ledger_lease = format!("/leases/{}", asg_lease(ON_DEMAND_ASG));
    let from = world.kube.requests().len();
    let restarted = start_on(&world, &node, &instance).await;
    wait_for(
        "the restarted agent looked for its ledger entry twice",
        || requests_since(&world, from, "GET", &ledger_lease) >= 2,
    )
    .await;
    assert_eq!(terminations_of(&world, &instance), 1, "still exactly once");
    stop(restarted).await;

    // Had the entry stayed (its removal failed), the record, which says the instance
    // was terminated, stops the restarted agent: it finds its entry, stops looking and
    // makes no scale-back check while its monitor polls IMDS five more times (five
    // check intervals).
    let leases = Leases::new(
        client_for_url(&world.kube.url()).expect("client"),
        LeaseSettings {
            namespace: NAMESPACE.to_owned(),
            holder: "test".to_owned(),
            duration: Duration::from_secs(2),
            retry_interval: Duration::from_millis(20),
        },
    )
    .annotate(
        &asg_lease(ON_DEMAND_ASG),
        &[(ledger_key.as_str(), Some(ledger_entry.as_str()))],
    )
    .await;
    assert!(leases.is_ok(), "entry restored: {leases:?}");
    let from = world.kube.requests().len();
    let restarted = start_on(&world, &node, &instance).await;
    let checks = scale_back_checks(&world);
    wait_for("the restarted agent looked for its ledger entry", || {
        requests_since(&world, from, "GET", &ledger_lease) >= 1
    })
    .await;
    let polls = restarted.imds.gets(SPOT_INSTANCE_ACTION_PATH);
    wait_for("five more IMDS polls", || {
        restarted.imds.gets(SPOT_INSTANCE_ACTION_PATH) >= polls + 5
    })
    .await;
    assert_eq!(
        requests_since(&world, from, "GET", &ledger_lease),
        1,
        "it found its entry at once and stopped looking"
    );
    assert_eq!(
        scale_back_checks(&world),
        checks,
        "no scale-back check: the record says it was given back"
    );
    assert_eq!(terminations_of(&world, &instance), 1, "still exactly once");
    stop(restarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_that_would_not_fit_get_one_more_spot_instance_first() {
    let (world, node, instance) = world_with_fallback(90).await;
    // Each spot node taking pods keeps 1.5 of 4 CPUs free; the fallback's pod needs 2:
    // 9.5 of 12 CPUs (79%) is under the ceiling, but no single node has room.
    world.kube.add_pod(workload("big-app", &node, "2"));
    load_spot_nodes(&world, WORKLOAD_NAMESPACE, "2500m");
    let _agent = start_on(&world, &node, &instance).await;
    world.asg.restore_capacity(SPOT_ASG).expect("group exists");
    // The returned spot instance gets a pod of its own, so only one more makes room.
    wait_for("spot node registers", || world.kube.nodes().len() >= 5).await;
    let returned = world
        .kube
        .nodes()
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .find(|n| n.starts_with("spot-new"))
        .expect("returned spot node");
    world.kube.add_pod(workload("hog-new", &returned, "2500m"));
    wait_terminated(&world, &node, &instance).await;
    assert_eq!(
        spot_raises(&world),
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
    spot_guard::tls::ensure_crypto_provider();
    // Long enough for both replacements' agents to start within it on a loaded machine.
    let window = Duration::from_secs(6);
    let mut spec = FleetSpec::new(2);
    spec.new_node_protection = window;
    let world = FleetWorld::start(spec).await.expect("simulators start");
    // Both spot nodes get a recommendation: two replacements, both in the ledger.
    let mut buyers = Vec::new();
    for index in [0, 1] {
        buyers.push(
            world
                .start_agent(index, world.aws(), &Handle::current())
                .await
                .expect("agent starts"),
        );
    }
    for buyer in &buyers {
        buyer.recommend();
    }
    for buyer in &mut buyers {
        assert!(buyer.wait_handled(1, LIMIT).await, "{} handled", buyer.node);
    }
    let registered = bought_nodes(&world, SPOT_ASG, 2).await;
    let (node, instance) = registered[0].clone();
    let (other_node, other_instance) = registered[1].clone();
    let ledger = ledger_of(&world, SPOT_ASG);
    assert!(ledger::entry_of(&ledger, &instance).is_some());
    let other_entry =
        ledger::entry_of(&ledger, &other_instance).expect("the ledger lists the other one");

    // Someone else disabled scale-down on the other replacement before its agent
    // started: that annotation is never touched.
    world.kube.update_node(&other_node, |n| {
        n.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(CA_SCALE_DOWN_DISABLED.to_owned(), "true".to_owned());
    });
    let other_from = world.kube.requests().len();
    let other = start_on(&world, &other_node, &other_instance).await;
    let other_window_end = from_unix_millis(other_entry.at) + window;
    assert!(
        SystemTime::now() < other_window_end,
        "the other replacement's agent starts within the window it would protect its node"
    );

    let agent = start_on(&world, &node, &instance).await;
    wait_for("protection applied", || {
        annotation(&world, &node, CA_SCALE_DOWN_DISABLED).is_some()
    })
    .await;
    assert!(annotation(&world, &node, PROTECTED_UNTIL_ANNOTATION).is_some());
    // The agent restarts in the middle of the window; the new one removes it on time.
    stop(agent).await;
    assert_eq!(
        annotation(&world, &node, CA_SCALE_DOWN_DISABLED).as_deref(),
        Some("true"),
        "still protected when the agent restarts"
    );
    let _restarted = start_on(&world, &node, &instance).await;
    wait_for("protection removed", || {
        annotation(&world, &node, CA_SCALE_DOWN_DISABLED).is_none()
    })
    .await;
    assert_eq!(annotation(&world, &node, PROTECTED_UNTIL_ANNOTATION), None);

    // The other agent read its node at start-up (with the start and the agent's own
    // read: three GETs); a protection of its own would have ended by now, and its
    // monitor has polled IMDS twice since.
    let node_path = format!("/api/v1/nodes/{other_node}");
    wait_for("the other agent read its node", || {
        requests_since(&world, other_from, "GET", &node_path) >= 3
    })
    .await;
    wait_for("the other replacement's window is over", || {
        SystemTime::now() > other_window_end
    })
    .await;
    let polls = other.imds.gets(SPOT_INSTANCE_ACTION_PATH);
    wait_for("two more IMDS polls of the other agent", || {
        other.imds.gets(SPOT_INSTANCE_ACTION_PATH) >= polls + 2
    })
    .await;
    assert_eq!(
        annotation(&world, &other_node, CA_SCALE_DOWN_DISABLED).as_deref(),
        Some("true")
    );
    assert_eq!(
        annotation(&world, &other_node, PROTECTED_UNTIL_ANNOTATION),
        None
    );
    let writes: Vec<String> = world.kube.requests()[other_from..]
        .iter()
        .filter(|r| r.method != "GET" && r.path == node_path)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(writes.is_empty(), "nothing written on it: {writes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_during_the_scale_back_drain_finishes_it_after_a_restart() {
    let (world, node, instance) = world_with_fallback(75).await;
    // The fallback's pod never finishes terminating by itself, so the drain is still
    // going when the agent dies.
    world
        .kube
        .add_pod(workload("slow-app", &node, "500m").terminating(Termination::Never));
    let runtime = spot_guard::sim::harness::killable_runtime().expect("runtime");
    let victim = world
        .start_agent_on(&node, Some(instance.clone()), world.aws(), runtime.handle())
        .await
        .expect("agent starts");
    world.asg.restore_capacity(SPOT_ASG).expect("group exists");
    wait_for("the drain starts", || {
        matches!(
            record(&world, &node, &instance).phase,
            Phase::Draining { .. }
        ) && cordoned(&world, &node)
    })
    .await;
    runtime.shutdown_background();
    drop(victim);
    assert_eq!(terminations_of(&world, &instance), 0, "killed mid-drain");

    // The pod goes; the restarted agent finishes the drain and terminates, once.
    let _restarted = start_on(&world, &node, &instance).await;
    assert!(world.kube.remove_pod(WORKLOAD_NAMESPACE, "slow-app"));
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
    spot_guard::tls::ensure_crypto_provider();
    let mut spec = FleetSpec::new(3);
    spec.spot.behaviour = Behaviour::InsufficientCapacity;
    spec.scale_back = Some(scale_back_settings(60));
    let world = FleetWorld::start(spec).await.expect("simulators start");
    // Nodes 0 and 1 get recommendations while spot is short: two fallbacks.
    for index in [0, 1] {
        let mut agent = world
            .start_agent(index, world.aws(), &Handle::current())
            .await
            .expect("agent starts");
        agent.recommend();
        assert!(agent.wait_handled(1, LIMIT).await, "node {index} handled");
        stop(agent).await;
    }
    assert_eq!(desired(&world, ON_DEMAND_ASG), 2, "two fallbacks bought");
    let fallbacks = bought_nodes(&world, ON_DEMAND_ASG, 2).await;
    // Node 2 carries 3 of its 4 CPUs; each fallback runs a 1-CPU pod that, once evicted,
    // comes back on node 2 (as a controller would reschedule it).
    world
        .kube
        .add_pod(workload("hog", &fleet::node_name(2), "3"));
    for (node, _) in &fallbacks {
        world.kube.add_pod(
            workload(&format!("app-on-{node}"), node, "1").recreated_on(&fleet::node_name(2)),
        );
    }
    let mut fallback_agents = Vec::new();
    for (node, instance) in &fallbacks {
        fallback_agents.push(start_on(&world, node, instance).await);
    }
    world.asg.restore_capacity(SPOT_ASG).expect("group exists");

    // Without either fallback: 5 of 12 CPUs requested (42%), so the first one goes. Then,
    // without the second: 5 of 8 (62%), over the 60% ceiling, so it stays.
    let gone = |world: &FleetWorld| {
        fallbacks
            .iter()
            .filter(|(_, instance)| terminations_of(world, instance) > 0)
            .count()
    };
    wait_for("one fallback goes", || gone(&world) > 0).await;
    let (kept_node, kept_instance) = fallbacks
        .iter()
        .find(|(_, instance)| terminations_of(&world, instance) == 0)
        .cloned()
        .expect("one fallback left");
    // Its checks (the other agent is done) see spot healthy and the pods moved.
    assert_kept_for(
        &world,
        &kept_node,
        &kept_instance,
        15,
        "the second would breach the ceiling",
    )
    .await;
    assert_eq!(gone(&world), 1, "exactly one fallback given back");
    assert_eq!(desired(&world, ON_DEMAND_ASG), 1);
    for agent in fallback_agents {
        stop(agent).await;
    }
}

/// Scale-back reads a cluster larger than one page in pages (`limit=500` and `continue`,
/// as client-go's pager does) and still counts every pod: the pods that keep the fallback
/// are on the last page.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_larger_than_a_page_is_read_in_pages_and_counted_whole() {
    let (world, node, instance) = world_with_fallback(50).await;
    world.kube.add_pod(workload("moved-app", &node, "500m"));
    // 600 small pods, then two big ones in a namespace that sorts last.
    for index in 0..600 {
        world.kube.add_pod(
            FakePod::new(
                "fillers",
                &format!("filler-{index:04}"),
                &fleet::node_name(1 + index % 2),
            )
            .with_requests("1m", "1Mi"),
        );
    }
    load_spot_nodes(&world, "zz-batch", "3");
    let from = world.kube.requests().len();
    let _agent = start_on(&world, &node, &instance).await;
    spot_returns(&world, &node, &instance).await;
    // Without the fallback: 7.5 of 12 CPUs requested (62%), over the 50% ceiling, but only
    // with the last page's pods counted.
    assert_kept_for(
        &world,
        &node,
        &instance,
        15,
        "over the ceiling, counted across pages",
    )
    .await;
    let pod_lists: Vec<String> = world.kube.requests()[from..]
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/pods")
        .map(|r| r.query.clone().unwrap_or_default())
        .filter(|query| !query.contains("fieldSelector"))
        .collect();
    assert!(
        pod_lists.len() >= 15 * 2,
        "two pages per look: {}",
        pod_lists.len()
    );
    assert!(
        pod_lists.iter().all(|query| query.contains("limit=500")),
        "every pod list is paged: {:?}",
        pod_lists.iter().find(|query| !query.contains("limit=500"))
    );
    assert!(pod_lists.iter().any(|query| query.contains("continue=")));
    let node_lists = world.kube.requests()[from..]
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/nodes")
        .filter(|r| !r.query.as_deref().unwrap_or_default().contains("limit=500"))
        .count();
    assert_eq!(node_lists, 0, "every node list is paged");

    // A big pod goes: 4.5 of 12 CPUs, and the fallback is given back.
    assert!(world.kube.remove_pod("zz-batch", "hog-2"));
    wait_terminated(&world, &node, &instance).await;
    assert_eq!(terminations_of(&world, &instance), 1);
}

/// Before a fallback is given back, every pod it would move must be free to go: a
/// PodDisruptionBudget that allows no disruption now keeps the node in service (not
/// cordoned, not drained) until the budget has room, as the Go fork's pre-drain safety
/// check does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_that_allows_no_disruption_keeps_the_fallback_until_it_has_room() {
    let (world, node, instance) = world_with_fallback(75).await;
    world
        .kube
        .add_pod(workload("guarded-app", &node, "500m").with_label("app", "guarded"));
    world
        .kube
        .add_pdb(WORKLOAD_NAMESPACE, "guarded", &[("app", "guarded")], 0);
    let _agent = start_on(&world, &node, &instance).await;
    spot_returns(&world, &node, &instance).await;
    // Spot is back and the cluster has room: only the budget holds the node.
    assert_kept_for(
        &world,
        &node,
        &instance,
        15,
        "the budget allows no disruption",
    )
    .await;
    assert!(
        !world
            .kube
            .evictions()
            .iter()
            .any(|e| e.name == "guarded-app"),
        "no eviction was tried"
    );
    assert!(
        world
            .kube
            .set_pdb_max_unavailable(WORKLOAD_NAMESPACE, "guarded", 1),
        "budget exists"
    );
    wait_terminated(&world, &node, &instance).await;
    assert_eq!(terminations_of(&world, &instance), 1);
    assert!(
        world
            .kube
            .evictions()
            .iter()
            .any(|e| e.name == "guarded-app"),
        "the pod moved once the budget had room"
    );
}

/// Pre-scale (SPOT_GUARD_PRE_SCALE, the Go fork's ENABLE_PRE_SCALE): a fallback whose
/// departure would leave the cluster over the ceiling buys enough spot nodes to reach the
/// target first, and is drained only once they are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_pre_scale_the_spot_asg_grows_before_the_fallback_is_drained() {
    let mut spec = scale_back_spec(50);
    spec.pre_scale = Some(PreScaleSettings {
        target_utilization: 40,
        safety_buffer: 0,
        timeout: Duration::from_secs(60),
        fallback_threshold: 95,
    });
    let (world, node, instance) = with_fallback(spec).await;
    world.kube.add_pod(workload("moved-app", &node, "500m"));
    load_spot_nodes(&world, WORKLOAD_NAMESPACE, "3");
    let _agent = start_on(&world, &node, &instance).await;
    // Spot returns: without the fallback, 6.5 of 12 CPUs (54%) would be requested, over
    // the 50% ceiling. To reach 40% the cluster needs 16.25 CPUs: two more 4-CPU nodes.
    world.asg.restore_capacity(SPOT_ASG).expect("group exists");
    wait_for("the fallback is cordoned for its drain", || {
        cordoned(&world, &node)
    })
    .await;
    assert_eq!(
        spot_raises(&world),
        [(Some(3), Some(4)), (Some(4), Some(6))],
        "the recommendation's attempt, then the pre-scale's two nodes, before the drain"
    );
    assert_eq!(
        world.kube.nodes().len(),
        7,
        "both pre-scaled nodes registered first"
    );
    assert_eq!(
        record(&world, &node, &instance)
            .pre_scaled
            .map(|(_, nodes)| nodes),
        Some(2),
        "the pre-scale is recorded, so a restart does not buy again"
    );
    wait_terminated(&world, &node, &instance).await;
    assert_eq!(terminations_of(&world, &instance), 1);
    assert_eq!(desired(&world, SPOT_ASG), 6);
}
