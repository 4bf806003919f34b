//! A replacement counts when its Node is Ready in the cluster, not when EC2 says
//! InService: the agent taints and drains only after the Node of the instance it bought
//! is Ready and schedulable, or after SPOT_GUARD_NODE_READY_TIMEOUT with a warning, an
//! event and a metric. Production path: agents started by `run::start`.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use spot_guard::names;
use spot_guard::record;
use spot_guard::sim::fleet::{FleetAgent, FleetSpec, FleetWorld, SPOT_ASG, node_name};
use spot_guard::sim::harness::eventually;
use spot_guard::sim::kubelet::KubeletSpec;
use spot_guard::spot_guard::decide::{NodeWaitResult, ReplacementRecord};
use tokio::runtime::Handle;

const LIMIT: Duration = Duration::from_secs(60);

fn install_crypto() {
    spot_guard::tls::ensure_crypto_provider();
}

async fn start(world: &FleetWorld, index: usize) -> FleetAgent {
    world
        .start_agent(index, world.aws(), &Handle::current())
        .await
        .expect("agent starts")
}

fn replacement_record(world: &FleetWorld, index: usize) -> Option<ReplacementRecord> {
    let node = world.kube.node(&node_name(index))?;
    ReplacementRecord::parse(record::annotation(&node, names::REPLACEMENT_ANNOTATION))
}

fn tainted(node: &Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|taint| taint.key == key))
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        && !tainted(node, "node.kubernetes.io/not-ready")
}

/// The Node whose providerID names `instance`.
fn node_of(world: &FleetWorld, instance: &str) -> Option<Node> {
    world.kube.nodes().into_iter().find(|node| {
        node.spec
            .as_ref()
            .and_then(|spec| spec.provider_id.as_deref())
            .is_some_and(|id| id.ends_with(&format!("/{instance}")))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_taint_comes_only_after_the_replacement_node_is_ready() {
    install_crypto();
    let mut spec = FleetSpec::new(1);
    // The kubelet registers 1 s after InService, NotReady, and turns Ready 1 s later.
    spec.kubelet = Some(KubeletSpec {
        join_delay: Duration::from_secs(1),
        ready_delay: Duration::from_secs(1),
    });
    let world = FleetWorld::start(spec).await.expect("world");
    let before: BTreeSet<String> = world
        .asg
        .group(SPOT_ASG)
        .expect("spot")
        .instance_ids
        .into_iter()
        .collect();
    let mut agent = start(&world, 0).await;
    agent.recommend();

    // The moment the rebalance taint first shows, the replacement's Node is Ready.
    let mut seen_at_taint = None;
    eventually("the node is tainted", LIMIT, || {
        let Some(node) = world.kube.node(&node_name(0)) else {
            return false;
        };
        if !tainted(&node, names::REBALANCE_TAINT) {
            return false;
        }
        let new: Vec<String> = world
            .asg
            .group(SPOT_ASG)
            .expect("spot")
            .in_service_ids
            .into_iter()
            .filter(|id| !before.contains(id))
            .collect();
        seen_at_taint = Some(
            new.iter()
                .map(|id| node_of(&world, id).is_some_and(|n| is_ready(&n)))
                .collect::<Vec<bool>>(),
        );
        true
    })
    .await;
    assert_eq!(
        seen_at_taint,
        Some(vec![true]),
        "one new instance, its Node Ready before the taint"
    );
    assert!(agent.wait_handled(1, LIMIT).await);
    let record = replacement_record(&world, 0).expect("record");
    let wait = record.node_wait.expect("the Node wait is recorded");
    assert_eq!(wait.result, NodeWaitResult::Ready);
    assert!(world.node_drained(0));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_joins_ends_the_wait_with_a_warning_event_and_metric_and_still_drains() {
    install_crypto();
    let mut spec = FleetSpec::new(1);
    spec.kubelet = None;
    spec.reports = true;
    spec.node_ready_timeout = Duration::from_secs(1);
    let world = FleetWorld::start(spec).await.expect("world");
    let mut agent = start(&world, 0).await;
    agent.recommend();

    assert!(agent.wait_handled(1, LIMIT).await);

    let record = replacement_record(&world, 0).expect("record");
    let wait = record.node_wait.expect("the Node wait is recorded");
    assert_eq!(wait.result, NodeWaitResult::TimedOut);
    let instance = wait
        .instances
        .first()
        .expect("the claimed instance")
        .clone();
    assert!(world.node_drained(0), "drained anyway");
    assert_eq!(
        world.asg.calls_of("SetDesiredCapacity").len(),
        1,
        "no second purchase for a Node that does not join"
    );
    eventually("the warning event is written", LIMIT, || {
        world.kube.events().iter().any(|event| {
            event.reason.as_deref() == Some("SpotGuardNodeNotReady")
                && event
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains(&instance))
        })
    })
    .await;
    let metrics = agent
        .agent
        .reporter
        .metrics()
        .expect("metrics on")
        .encode()
        .expect("encode");
    let line = format!(
        "spot_guard_replacement_node_not_ready_total{{asg=\"{SPOT_ASG}\",instance=\"{instance}\"}} 1"
    );
    assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_recommendations_wait_for_distinct_nodes() {
    install_crypto();
    let mut spec = FleetSpec::new(3);
    spec.kubelet = Some(KubeletSpec {
        join_delay: Duration::from_millis(500),
        ready_delay: Duration::from_millis(500),
    });
    let world = FleetWorld::start(spec).await.expect("world");
    let mut agents = Vec::new();
    for index in 0..3 {
        agents.push(start(&world, index).await);
    }
    for agent in &agents {
        agent.recommend();
    }
    for agent in &mut agents {
        assert!(agent.wait_handled(1, LIMIT).await);
    }
    let mut waited_for = BTreeSet::new();
    for index in 0..3 {
        let wait = replacement_record(&world, index)
            .and_then(|record| record.node_wait)
            .expect("each node recorded its wait");
        assert_eq!(wait.result, NodeWaitResult::Ready, "node {index}");
        assert_eq!(wait.instances.len(), 1, "node {index}");
        waited_for.extend(wait.instances);
    }
    assert_eq!(
        waited_for.len(),
        3,
        "three distinct replacements: {waited_for:?}"
    );
    for agent in agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_interruption_during_the_wait_drains_at_once() {
    install_crypto();
    let mut spec = FleetSpec::new(1);
    spec.kubelet = None;
    spec.node_ready_timeout = Duration::from_secs(120);
    let world = FleetWorld::start(spec).await.expect("world");
    let agent = start(&world, 0).await;
    agent.recommend();
    eventually("the agent waits for the replacement's Node", LIMIT, || {
        replacement_record(&world, 0)
            .and_then(|record| record.node_wait)
            .is_some_and(|wait| wait.result == NodeWaitResult::Waiting)
    })
    .await;

    agent
        .imds
        .set_spot_action(Some(("terminate", "2026-11-24T08:24:00Z")));
    eventually(
        "the interruption drains the node",
        Duration::from_secs(10),
        || {
            world.kube.node(&node_name(0)).is_some_and(|node| {
                tainted(&node, names::SPOT_ITN_TAINT) || record::is_unschedulable(&node)
            }) && world.kube.pods_on_node(&node_name(0)).is_empty()
        },
    )
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_the_wait_resumes_it_without_buying_again() {
    install_crypto();
    let mut spec = FleetSpec::new(1);
    spec.kubelet = None;
    spec.node_ready_timeout = Duration::from_secs(60);
    let world = FleetWorld::start(spec).await.expect("world");
    let runtime = spot_guard::sim::harness::killable_runtime().expect("agent runtime");
    let first = world
        .start_agent(0, world.aws(), runtime.handle())
        .await
        .expect("agent starts");
    first.recommend();
    eventually("the agent waits for the replacement's Node", LIMIT, || {
        replacement_record(&world, 0)
            .and_then(|record| record.node_wait)
            .is_some_and(|wait| wait.result == NodeWaitResult::Waiting)
    })
    .await;
    runtime.shutdown_background();

    // The replacement's kubelet registers while the agent is down.
    world.run_kubelets();
    let mut restarted = start(&world, 0).await;
    restarted.recommend();
    assert!(restarted.wait_handled(1, LIMIT).await);

    let wait = replacement_record(&world, 0)
        .and_then(|record| record.node_wait)
        .expect("the wait is recorded");
    assert_eq!(wait.result, NodeWaitResult::Ready);
    assert_eq!(world.asg.calls_of("SetDesiredCapacity").len(), 1);
    assert!(world.node_drained(0));
    restarted.stop().await;
}
