//! The agent is killed after each step of the flow and its pod restarts: the restarted
//! agent reads the step from the Node, resumes, never scales a second time for the same
//! recommendation, and still taints, cordons and drains the node.

use std::time::Duration;

use spot_guard::fleet_flow::{REPLACEMENT_ANNOTATION, ReplacementRecord};
use spot_guard::flow::REBALANCE_TAINT;
use spot_guard::sim::fleet::{self, FleetSpec, FleetWorld, SPOT_ASG};
use spot_guard::sim::kube::Termination;
use tokio::runtime::Handle;

const LIMIT: Duration = Duration::from_secs(60);
const EVENT: &str = "rebalance-recommendation-restart";

async fn world() -> FleetWorld {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut spec = FleetSpec::new(1);
    // Slow enough that each step can be caught while it is in progress.
    spec.spot.launch_delay = Duration::from_millis(1500);
    let world = FleetWorld::start(spec).await.expect("simulators start");
    world
        .kube
        .set_termination(Termination::After(Duration::from_millis(1500)));
    world
}

fn tainted(world: &FleetWorld) -> bool {
    world
        .kube
        .node(&fleet::node_name(0))
        .and_then(|node| node.spec)
        .and_then(|spec| spec.taints)
        .is_some_and(|taints| taints.iter().any(|t| t.key == REBALANCE_TAINT))
}

/// Runs the agent in a runtime of its own and kills it (every task, as a pod kill
/// would) as soon as `step_reached` holds; then a fresh agent handles the same
/// recommendation to the end.
async fn kill_and_restart(step: &str, step_reached: impl Fn(&FleetWorld) -> bool) {
    let world = world().await;
    let spot = world.asg.group(SPOT_ASG).expect("group").desired;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let first = world
        .start_agent(0, world.aws(), runtime.handle())
        .expect("agent starts");
    first
        .notices
        .send(fleet::recommendation(EVENT))
        .await
        .expect("agent is running");
    tokio::time::timeout(LIMIT, async {
        while !step_reached(&world) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the agent reaches the step {step}"));
    runtime.shutdown_background();
    assert_eq!(
        *first.handled.borrow(),
        0,
        "killed before it finished ({step})"
    );

    let mut restarted = world
        .start_agent(0, world.aws(), &Handle::current())
        .expect("restarted agent starts");
    restarted
        .notices
        .send(fleet::recommendation(EVENT))
        .await
        .expect("agent is running");
    assert!(
        restarted.wait_handled(1, LIMIT).await,
        "the restarted agent finishes ({step})"
    );

    let scale_ups = world.asg.calls_of("SetDesiredCapacity");
    assert_eq!(scale_ups.len(), 1, "one scale-up in all ({step})");
    assert_eq!(
        world.asg.group(SPOT_ASG).expect("group").desired,
        spot + 1,
        "{step}"
    );
    assert!(world.node_drained(0), "the node ends drained ({step})");
    let record = world
        .kube
        .node(&fleet::node_name(0))
        .and_then(|node| node.metadata.annotations)
        .and_then(|a| a.get(REPLACEMENT_ANNOTATION).cloned());
    let record = ReplacementRecord::parse(record.as_deref()).expect("the record is on the Node");
    assert_eq!(record.event_id, EVENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_right_after_set_desired_capacity() {
    kill_and_restart("after SetDesiredCapacity", |world| {
        !world.asg.calls_of("SetDesiredCapacity").is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_wait_for_in_service() {
    kill_and_restart("during the InService wait", |world| {
        !world.asg.calls_of("SetDesiredCapacity").is_empty()
            && world.asg.calls_of("DescribeAutoScalingGroups").len() >= 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_taint() {
    kill_and_restart("after the taint", tainted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_drain() {
    kill_and_restart("during the drain", |world| {
        !world.kube.evictions().is_empty()
    })
    .await;
}
