//! Spot Guard's guarantees under AWS's real rules, on the production path (agents
//! started by `run::start`): Describe calls lag a change, a change can apply and its
//! answer be lost, terminated instances linger as `Terminating`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use spot_guard::names;
use spot_guard::sim::asg::Fault;
use spot_guard::sim::fleet::{FleetAgent, FleetSpec, FleetWorld, NAMESPACE, SPOT_ASG};
use spot_guard::spot_guard::ledger;
use tokio::runtime::Handle;

const LIMIT: Duration = Duration::from_secs(60);

fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

async fn start_all(world: &FleetWorld) -> Vec<FleetAgent> {
    let mut agents = Vec::new();
    for index in 0..world.spec.nodes {
        agents.push(
            world
                .start_agent(index, world.aws(), &Handle::current())
                .await
                .expect("agent starts"),
        );
    }
    agents
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
