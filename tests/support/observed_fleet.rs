//! A simulated fleet run with mixed outcomes whose agents serve their real metrics
//! endpoints, for the observability tests (promtool, Prometheus, `spot-guard status`).
//!
//! Three nodes get a rebalance recommendation one after the other:
//! - node 0: the spot ASG launches its replacement, whose Node turns Ready; its IMDS then
//!   goes down, so its monitor counts errors every poll;
//! - node 1: the spot launch fails for lack of capacity, the on-demand fallback comes up
//!   but its Node never registers (no kubelet on on-demand instances), and its webhook
//!   points at a closed port;
//! - node 2: the spot ASG is in its capacity cool-off, so it goes straight to on-demand
//!   (Node never Ready either), and a PodDisruptionBudget blocks its drain.
//!
//! Then node 2's on-demand fallback registers its Node late, with a pod on it, and the
//! agent on it (scale-back is on fleet-wide, as the chart sets it) gives it back once spot
//! capacity returns: it drains, terminates the instance and leaves the ledger. Its agent
//! ([`GIVEN_BACK`]) still serves its metrics, as between the termination and the instance
//! going away.
//!
//! Use from a test file with `#[path = "support/observed_fleet.rs"] mod observed_fleet;`.

#![allow(dead_code)] // each test file uses its own subset

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use spot_guard::config::{ScaleBackSettings, WebhookSettings};
use spot_guard::names::asg_lease;
use spot_guard::sim::asg::Behaviour;
use spot_guard::sim::fleet::{
    FleetAgent, FleetSpec, FleetWorld, NAMESPACE, NODE_CPU, NODE_MEMORY, ON_DEMAND_ASG, SPOT_ASG,
    WORKLOAD_NAMESPACE, node_name,
};
use spot_guard::sim::harness::eventually;
use spot_guard::sim::kube::FakePod;
use spot_guard::sim::kubelet::{self, KubeletSpec, NodeShape};
use spot_guard::spot_guard::ledger;
use tokio::runtime::Handle;

/// The spot nodes that get a recommendation.
pub const NODES: usize = 3;
/// The index (in `agents`) of the agent on the on-demand fallback it gave back.
pub const GIVEN_BACK: usize = NODES;
const BOUND: Duration = Duration::from_secs(60);

pub struct ObservedFleet {
    pub world: FleetWorld,
    /// The spot nodes' agents, then the given-back fallback's.
    pub agents: Vec<FleetAgent>,
    /// `http://127.0.0.1:PORT/metrics` of each agent, in the order of `agents`.
    pub metrics_urls: Vec<String>,
    /// The node of each agent, in the order of `agents`.
    pub nodes: Vec<String>,
    /// The on-demand instance bought for node 2 and given back.
    pub given_back_instance: String,
}

/// A port nobody listens on right now (the agent binds it a moment later).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// The scrape Prometheus would make (it asks for OpenMetrics first) or, with `accept`
/// `None`, the one `curl` makes.
pub async fn scrape(url: &str, accept: Option<&str>) -> String {
    // reqwest is built as the agent ships it, without a crypto provider of its own: its
    // client builder panics unless one is installed.
    spot_guard::tls::ensure_crypto_provider();
    let client = reqwest::Client::new();
    let mut request = client.get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = tokio::time::timeout(Duration::from_secs(20), request.send())
        .await
        .expect("scrape answered")
        .expect("scrape sent");
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    response.text().await.expect("scrape body")
}

/// The late Node of on-demand `instance`, with a pod on it, and its agent, which gives it
/// back once spot capacity returns; returns once it has (the agent still serves its
/// metrics at the URL returned).
async fn give_back(world: &FleetWorld, instance: &str) -> (FleetAgent, String) {
    let node = format!("on-demand-{instance}");
    world
        .kube
        .add_instance_node(&node, instance, NODE_CPU, NODE_MEMORY);
    world.kube.add_pod(
        FakePod::new(WORKLOAD_NAMESPACE, "landed-002", &node).with_requests("500m", "1Gi"),
    );
    let port = free_port();
    let agent = world
        .start_configured(
            &node,
            Some(instance.to_owned()),
            world.aws(),
            &Handle::current(),
            |config| config.prometheus_port = Some(port),
        )
        .await
        .expect("the fallback's agent starts");
    world
        .asg
        .restore_capacity(SPOT_ASG)
        .expect("spot capacity returns");
    let metrics = agent.agent.reporter.metrics().expect("metrics on");
    eventually("the fallback is given back", BOUND, || {
        metrics.encode().is_ok_and(|text| {
            text.contains("spot_guard_scale_backs_total{outcome=\"terminated\"} 1")
        })
    })
    .await;
    let key = ledger::key(instance);
    eventually("the fallback leaves the ledger", BOUND, || {
        world
            .kube
            .lease(NAMESPACE, &asg_lease(ON_DEMAND_ASG))
            .and_then(|lease| lease.metadata.annotations)
            .is_some_and(|ledger| !ledger.contains_key(&key))
    })
    .await;
    (agent, format!("http://127.0.0.1:{port}/metrics"))
}

/// Prometheus 2.42's Accept header.
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

impl ObservedFleet {
    /// Runs the scenario above; returns with every agent still running (and serving).
    pub async fn run() -> ObservedFleet {
        let mut spec = FleetSpec::new(NODES);
        spec.reports = true;
        spec.kubelet = None;
        spec.node_ready_timeout = Duration::from_secs(1);
        spec.scale_back = Some(ScaleBackSettings {
            min_wait: Duration::from_millis(300),
            stability_period: Duration::from_millis(300),
            utilization_ceiling: 75,
            check_interval: Duration::from_millis(100),
        });
        let world = FleetWorld::start(spec).await.expect("fleet world");
        // Only spot instances get a kubelet: on-demand fallbacks never become Ready (node
        // 2's registers late, in `give_back`).
        kubelet::spawn(
            &world.asg,
            &world.kube,
            vec![(SPOT_ASG.to_owned(), "spot-new".to_owned())],
            KubeletSpec::default(),
            NodeShape {
                cpu: NODE_CPU.to_owned(),
                memory: NODE_MEMORY.to_owned(),
            },
        );
        world
            .asg
            .set_launch_plan(
                SPOT_ASG,
                &[Behaviour::Healthy, Behaviour::InsufficientCapacity],
            )
            .expect("spot ASG");
        world.kube.add_pod(
            FakePod::new(WORKLOAD_NAMESPACE, "guarded-002", &node_name(2))
                .with_label("app", "guarded"),
        );
        world
            .kube
            .add_pdb(WORKLOAD_NAMESPACE, "guarded", &[("app", "guarded")], 0);

        let closed_port = free_port();
        let mut agents = Vec::new();
        let mut metrics_urls = Vec::new();
        for index in 0..NODES {
            let port = free_port();
            metrics_urls.push(format!("http://127.0.0.1:{port}/metrics"));
            let instance_id = world.instance_id(index).map(str::to_owned);
            let agent = world
                .start_configured(
                    &node_name(index),
                    instance_id,
                    world.aws(),
                    &Handle::current(),
                    |config| {
                        config.prometheus_port = Some(port);
                        if index == 1 {
                            config.report.webhook = Some(WebhookSettings {
                                timeout: Duration::from_secs(1),
                                ..WebhookSettings::new(format!(
                                    "http://127.0.0.1:{closed_port}/hook"
                                ))
                            });
                        }
                        if index == 2 {
                            // The PDB never gives way: end the drain attempt soon.
                            config.node_termination_grace_period = Duration::from_secs(2);
                        }
                    },
                )
                .await
                .expect("agent starts");
            agents.push(agent);
        }
        for (index, agent) in agents.iter_mut().enumerate().take(2) {
            agent.recommend();
            assert!(
                agent.wait_handled(1, BOUND).await,
                "node {index} finished its recommendation"
            );
        }
        agents[0].imds.set_down(true);
        let on_demand = || {
            world
                .asg
                .group(ON_DEMAND_ASG)
                .map(|group| group.in_service_ids)
                .unwrap_or_default()
        };
        let bought_before = on_demand();
        agents[2].recommend();
        let metrics = agents[2].agent.reporter.metrics().expect("metrics on");
        eventually("node 2's drain ends incomplete", BOUND, || {
            metrics.encode().is_ok_and(|text| {
                text.contains("spot_guard_drain_duration_seconds_count{outcome=\"incomplete\"}")
            })
        })
        .await;
        let webhook = agents[1].agent.reporter.metrics().expect("metrics on");
        eventually("node 1's webhook post fails", BOUND, || {
            webhook
                .encode()
                .is_ok_and(|text| text.contains("spot_guard_report_errors_total{sink=\"webhook\"}"))
        })
        .await;
        let monitor = agents[0].agent.reporter.metrics().expect("metrics on");
        eventually("node 0's monitor counts IMDS errors", BOUND, || {
            monitor
                .encode()
                .is_ok_and(|text| text.contains("events_error_total{"))
        })
        .await;
        let given_back_instance = on_demand()
            .into_iter()
            .find(|instance| !bought_before.contains(instance))
            .expect("node 2's on-demand fallback");
        let (agent, url) = give_back(&world, &given_back_instance).await;
        agents.push(agent);
        metrics_urls.push(url);
        let nodes = agents.iter().map(|agent| agent.node.clone()).collect();
        ObservedFleet {
            world,
            agents,
            metrics_urls,
            nodes,
            given_back_instance,
        }
    }

    /// Every agent's endpoint as Prometheus scrapes it.
    pub async fn scrape_all(&self) -> Vec<String> {
        let mut scrapes = Vec::new();
        for url in &self.metrics_urls {
            scrapes.push(scrape(url, Some(PROMETHEUS_ACCEPT)).await);
        }
        scrapes
    }

    /// The given-back fallback's agent stops, as its instance goes away.
    pub async fn stop_given_back(&mut self) {
        self.agents.remove(GIVEN_BACK).stop().await;
    }

    pub async fn stop(self) {
        for agent in self.agents {
            agent.stop().await;
        }
    }
}
