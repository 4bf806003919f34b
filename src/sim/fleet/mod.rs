//! Many spot nodes at once: one agent per node (each with its own clients, as in a
//! DaemonSet) against one ASG simulator and one fake Kubernetes API, all getting a
//! rebalance recommendation together. Used by `spot-guard simulate --nodes N` ([`run`])
//! and by the fleet tests.

use std::collections::BTreeMap;
use std::fmt;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::asg::AutoScaling;
use crate::aws::AwsAutoScaling;
use crate::config::Config;
use crate::names::REBALANCE_TAINT;
use crate::run::RunningAgent;
use crate::sim::asg::{AsgSim, AsgSimError, Behaviour, Call, GroupSpec};
use crate::sim::harness::{self, HarnessError};
use crate::sim::imds::{ImdsSim, ImdsSimError};
use crate::sim::kube::{FakeKube, FakePod};
use crate::sim::kubelet::{self, KubeletSpec, NodeShape};

mod restarts;
mod scale_back;

pub use restarts::{KillPoint, RestartOutcome, kill_and_restart, run_restarts};
pub use scale_back::run_scale_back;

pub const SPOT_ASG: &str = "spot-asg";
pub const ON_DEMAND_ASG: &str = "on-demand-asg";
/// Where the agents' Leases live.
pub const NAMESPACE: &str = harness::LEASE_NAMESPACE;
/// The workload namespace: one pod per node, evicted by the drain.
pub const WORKLOAD_NAMESPACE: &str = "default";
/// Allocatable of every simulated node.
pub const NODE_CPU: &str = "4";
pub const NODE_MEMORY: &str = "16Gi";

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("starting the ASG simulator: {0}")]
    Asg(#[from] AsgSimError),
    #[error("starting the fake Kubernetes API: {0}")]
    Kube(#[source] std::io::Error),
    #[error("starting an IMDS simulator: {0}")]
    Imds(#[from] ImdsSimError),
    #[error(transparent)]
    Agent(#[from] HarnessError),
    #[error("the spot ASG has {instances} instances for {nodes} nodes")]
    TooFewInstances { instances: usize, nodes: usize },
    #[error("{0}")]
    Unexpected(String),
}

/// The world to build.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub nodes: usize,
    /// Its desired capacity is raised to at least `nodes`: node i runs on instance i.
    pub spot: GroupSpec,
    pub on_demand: GroupSpec,
    pub lease_duration: Duration,
    pub lease_retry_interval: Duration,
    pub check_interval: Duration,
    pub capacity_check_timeout: Duration,
    pub capacity_cool_off: Duration,
    pub terminate_after_drain: bool,
    /// Zero: no Cluster Autoscaler protection task.
    pub new_node_protection: Duration,
    pub scale_back: Option<crate::config::ScaleBackSettings>,
    /// Scale-back's pre-scale, for agents with `scale_back`.
    pub pre_scale: Option<crate::config::PreScaleSettings>,
    /// Agents write Kubernetes events (EMIT_KUBERNETES_EVENTS) and keep metrics.
    pub reports: bool,
    /// The kubelets of new instances register their Nodes; `None`: nobody does, and
    /// tests register them with [`FleetWorld::run_kubelets`].
    pub kubelet: Option<KubeletSpec>,
    /// SPOT_GUARD_NODE_READY_TIMEOUT; zero does not wait for the replacement's Node.
    pub node_ready_timeout: Duration,
}

impl FleetSpec {
    /// `nodes` nodes, both ASGs healthy with room for all, short intervals.
    pub fn new(nodes: usize) -> Self {
        let size = i32::try_from(nodes).unwrap_or(i32::MAX);
        FleetSpec {
            nodes,
            spot: GroupSpec {
                min: 0,
                max: size.saturating_mul(3),
                desired: size,
                behaviour: Behaviour::Healthy,
                launch_delay: Duration::from_millis(300),
                capacity_rebalance: false,
            },
            on_demand: GroupSpec {
                min: 0,
                max: size.saturating_mul(2),
                desired: 0,
                behaviour: Behaviour::Healthy,
                launch_delay: Duration::from_millis(300),
                capacity_rebalance: false,
            },
            lease_duration: Duration::from_secs(2),
            lease_retry_interval: Duration::from_millis(20),
            check_interval: Duration::from_millis(100),
            capacity_check_timeout: Duration::from_secs(10),
            capacity_cool_off: Duration::from_secs(600),
            terminate_after_drain: false,
            new_node_protection: Duration::ZERO,
            scale_back: None,
            pre_scale: None,
            reports: false,
            kubelet: Some(KubeletSpec::default()),
            node_ready_timeout: Duration::from_secs(10),
        }
    }
}

/// The simulators, with one node and one workload pod per agent.
pub struct FleetWorld {
    pub asg: Arc<AsgSim>,
    pub kube: Arc<FakeKube>,
    pub spec: FleetSpec,
    instance_ids: Vec<String>,
}

/// One node's agent, started by [`harness::start_on`] with an IMDS simulator of its
/// own (as each instance has its own IMDS); kill it by shutting its runtime down.
pub struct FleetAgent {
    pub node: String,
    pub imds: ImdsSim,
    pub agent: RunningAgent,
}

impl FleetAgent {
    /// IMDS starts serving a rebalance recommendation to this node.
    pub fn recommend(&self) {
        self.imds.set_rebalance(Some(RECOMMENDATION_TIME));
    }

    /// Waits (bounded) until the agent has finished `count` notices; false on timeout.
    pub async fn wait_handled(&mut self, count: u32, limit: Duration) -> bool {
        self.agent.wait_handled(count, limit).await
    }

    pub fn handled(&self) -> u32 {
        *self.agent.handled().borrow()
    }

    pub async fn stop(self) {
        self.agent.stop().await;
    }
}

/// The `noticeTime` IMDS serves with every simulated recommendation.
pub const RECOMMENDATION_TIME: &str = "2026-01-01T00:00:00Z";

pub fn node_name(index: usize) -> String {
    format!("spot-node-{index:03}")
}

impl FleetWorld {
    pub async fn start(spec: FleetSpec) -> Result<FleetWorld, FleetError> {
        let asg = AsgSim::start().await?;
        let size = i32::try_from(spec.nodes).unwrap_or(i32::MAX);
        asg.add_group(
            SPOT_ASG,
            GroupSpec {
                desired: spec.spot.desired.max(size),
                ..spec.spot.clone()
            },
        );
        asg.add_group(ON_DEMAND_ASG, spec.on_demand.clone());
        let instance_ids = asg
            .group(SPOT_ASG)
            .map(|group| group.instance_ids)
            .unwrap_or_default();
        if instance_ids.len() < spec.nodes {
            return Err(FleetError::TooFewInstances {
                instances: instance_ids.len(),
                nodes: spec.nodes,
            });
        }
        let kube = FakeKube::start().await.map_err(FleetError::Kube)?;
        for (index, instance_id) in instance_ids.iter().enumerate().take(spec.nodes) {
            let node = node_name(index);
            kube.add_instance_node(&node, instance_id, NODE_CPU, NODE_MEMORY);
            kube.add_pod(FakePod::new(
                WORKLOAD_NAMESPACE,
                &format!("app-{index:03}"),
                &node,
            ));
        }
        let (asg, kube) = (Arc::new(asg), Arc::new(kube));
        if let Some(kubelet) = spec.kubelet {
            kubelet::spawn(
                &asg,
                &kube,
                vec![
                    (SPOT_ASG.to_owned(), "spot-new".to_owned()),
                    (ON_DEMAND_ASG.to_owned(), "on-demand".to_owned()),
                ],
                kubelet,
                NodeShape {
                    cpu: NODE_CPU.to_owned(),
                    memory: NODE_MEMORY.to_owned(),
                },
            );
        }
        Ok(FleetWorld {
            asg,
            kube,
            spec,
            instance_ids,
        })
    }

    /// The instance node `index` runs on.
    pub fn instance_id(&self, index: usize) -> Option<&str> {
        self.instance_ids.get(index).map(String::as_str)
    }

    /// A fresh SDK client for the simulator, as each agent pod has its own.
    pub fn aws(&self) -> AwsAutoScaling {
        harness::aws(&self.asg)
    }

    /// Starts the agent of node `index` on `runtime`, over `asg`.
    pub async fn start_agent<A: AutoScaling + Clone + 'static>(
        &self,
        index: usize,
        asg: A,
        runtime: &Handle,
    ) -> Result<FleetAgent, FleetError> {
        let instance_id = self.instance_id(index).map(str::to_owned);
        self.start_agent_on(&node_name(index), instance_id, asg, runtime)
            .await
    }

    /// Starts the agent of every node of the world on the current runtime.
    pub async fn start_all(&self) -> Result<Vec<FleetAgent>, FleetError> {
        let mut agents = Vec::with_capacity(self.spec.nodes);
        for index in 0..self.spec.nodes {
            agents.push(
                self.start_agent(index, self.aws(), &Handle::current())
                    .await?,
            );
        }
        Ok(agents)
    }

    /// Spot capacity has run out: node 0's agent gets a recommendation and buys an
    /// on-demand fallback, whose node then registers. Returns that node and instance.
    pub async fn buy_fallback(&self) -> Result<(String, String), FleetError> {
        self.asg
            .set_behaviour(SPOT_ASG, Behaviour::InsufficientCapacity)?;
        let mut agent = self.start_agent(0, self.aws(), &Handle::current()).await?;
        agent.recommend();
        let handled = agent.wait_handled(1, Duration::from_secs(60)).await;
        agent.stop().await;
        if !handled || !self.node_drained(0) {
            return Err(FleetError::Unexpected(
                "node 0 did not finish its rebalance recommendation".to_owned(),
            ));
        }
        // Its kubelet has registered it (or the test does it now, without one).
        self.run_kubelets();
        let fallback = self
            .asg
            .group(ON_DEMAND_ASG)
            .map(|group| group.in_service_ids)
            .unwrap_or_default();
        match fallback.as_slice() {
            [instance] => Ok((format!("on-demand-{instance}"), instance.clone())),
            other => Err(FleetError::Unexpected(format!(
                "expected one on-demand fallback instance, found {other:?}"
            ))),
        }
    }

    /// Registers a Ready node for every InService instance of either ASG that has none
    /// yet, as the kubelets of new instances do; returns the new (node, instance) pairs.
    /// Nodes of instances that left are kept (as cordoned leftovers the tests can read).
    pub fn run_kubelets(&self) -> Vec<(String, String)> {
        let nodes = self.kube.nodes();
        let node_of = |instance: &str| {
            nodes.iter().find(|node| {
                node.spec
                    .as_ref()
                    .and_then(|spec| spec.provider_id.as_deref())
                    .is_some_and(|id| id.ends_with(&format!("/{instance}")))
            })
        };
        let mut added = Vec::new();
        for (asg, prefix) in [(SPOT_ASG, "spot-new"), (ON_DEMAND_ASG, "on-demand")] {
            let Some(group) = self.asg.group(asg) else {
                continue;
            };
            for instance in group.in_service_ids {
                if node_of(&instance).is_none() {
                    let node = format!("{prefix}-{instance}");
                    self.kube
                        .add_instance_node(&node, &instance, NODE_CPU, NODE_MEMORY);
                    added.push((node, instance));
                }
            }
        }
        added
    }

    /// The configuration of the agent on `node`, from the flags the chart would set.
    pub fn config(&self, node: &str, imds_url: &str) -> Result<Config, FleetError> {
        let mut flags = harness::spot_guard_flags(SPOT_ASG, ON_DEMAND_ASG);
        flags.push(format!(
            "--spot-guard-terminate-after-drain={}",
            self.spec.terminate_after_drain
        ));
        flags.push(format!(
            "--spot-guard-scale-back={}",
            self.spec.scale_back.is_some()
        ));
        if self.spec.reports {
            flags.push("--emit-kubernetes-events=true".to_owned());
            flags.push("--enable-prometheus-server=true".to_owned());
            flags.push("--prometheus-server-port=0".to_owned());
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut config = harness::config(node, imds_url, &flags)?;
        config.node_termination_grace_period = Duration::from_secs(30);
        if let Some(settings) = config.spot_guard.as_mut() {
            harness::fast_spot_guard(settings);
            settings.lease_duration = self.spec.lease_duration;
            settings.lease_retry_interval = self.spec.lease_retry_interval;
            settings.check_interval = self.spec.check_interval;
            settings.capacity_check_timeout = self.spec.capacity_check_timeout;
            settings.capacity_cool_off = self.spec.capacity_cool_off;
            settings.new_node_protection = self.spec.new_node_protection;
            settings.scale_back = self.spec.scale_back.clone();
            settings.pre_scale = self.spec.pre_scale.clone();
            settings.node_ready_timeout = self.spec.node_ready_timeout;
        }
        Ok(config)
    }

    /// Starts an agent on `node` (running `instance_id`, as its IMDS says) on `runtime`,
    /// over `asg`.
    pub async fn start_agent_on<A: AutoScaling + Clone + 'static>(
        &self,
        node: &str,
        instance_id: Option<String>,
        asg: A,
        runtime: &Handle,
    ) -> Result<FleetAgent, FleetError> {
        self.start_configured(node, instance_id, asg, runtime, |_| {})
            .await
    }

    /// [`FleetWorld::start_agent_on`] with the configuration changed by `edit` first,
    /// as a user would set other flags.
    pub async fn start_configured<A: AutoScaling + Clone + 'static>(
        &self,
        node: &str,
        instance_id: Option<String>,
        asg: A,
        runtime: &Handle,
        edit: impl FnOnce(&mut Config),
    ) -> Result<FleetAgent, FleetError> {
        let imds = ImdsSim::start().await?;
        match &instance_id {
            Some(id) => imds.set_instance_id(id),
            None => imds.set_instance_id(""),
        }
        let mut config = self.config(node, &imds.url())?;
        edit(&mut config);
        let agent = harness::start_on(&config, &self.kube.url(), Some(asg), runtime).await?;
        Ok(FleetAgent {
            node: node.to_owned(),
            imds,
            agent,
        })
    }

    /// Whether node `index` is tainted, cordoned and has no workload pod left.
    pub fn node_drained(&self, index: usize) -> bool {
        let node = node_name(index);
        let Some(stored) = self.kube.node(&node) else {
            return false;
        };
        let spec = stored.spec.unwrap_or_default();
        let tainted = spec
            .taints
            .unwrap_or_default()
            .iter()
            .any(|taint| taint.key == REBALANCE_TAINT);
        tainted && spec.unschedulable == Some(true) && self.kube.pods_on_node(&node).is_empty()
    }

    pub fn summary(&self, spot_desired_before: i32, on_demand_desired_before: i32) -> FleetSummary {
        let calls = self.asg.calls();
        let requests = self.kube.requests();
        let desired = |name: &str| self.asg.group(name).map_or(0, |group| group.desired);
        let mut per_action = BTreeMap::new();
        for call in &calls {
            *per_action.entry(call.action.clone()).or_insert(0) += 1;
        }
        FleetSummary {
            nodes: self.spec.nodes,
            spot_desired: (spot_desired_before, desired(SPOT_ASG)),
            on_demand_desired: (on_demand_desired_before, desired(ON_DEMAND_ASG)),
            scale_ups: calls
                .iter()
                .filter(|c| c.action == "SetDesiredCapacity" && c.error_code.is_none())
                .count(),
            lost_updates: lost_updates(&calls, 1),
            drained: (0..self.spec.nodes)
                .filter(|i| self.node_drained(*i))
                .count(),
            calls: calls.len(),
            per_action,
            kube_requests: requests.len(),
            lease_requests: requests
                .iter()
                .filter(|r| r.path.contains("/leases"))
                .count(),
        }
    }
}

/// Successful SetDesiredCapacity calls that did not raise desired by exactly `step`:
/// the trace of a read-modify-write that raced another.
pub fn lost_updates(calls: &[Call], step: i32) -> Vec<String> {
    calls
        .iter()
        .filter(|call| call.action == "SetDesiredCapacity" && call.error_code.is_none())
        .filter(|call| match (call.desired_before, call.desired_after) {
            (Some(before), Some(after)) => after != before + step,
            _ => true,
        })
        .map(|call| {
            format!(
                "SetDesiredCapacity on {}: {:?} -> {:?}",
                call.group.as_deref().unwrap_or("?"),
                call.desired_before,
                call.desired_after
            )
        })
        .collect()
}

/// What a fleet run did, for `simulate` and test messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSummary {
    pub nodes: usize,
    pub spot_desired: (i32, i32),
    pub on_demand_desired: (i32, i32),
    pub scale_ups: usize,
    pub lost_updates: Vec<String>,
    pub drained: usize,
    pub calls: usize,
    pub per_action: BTreeMap<String, usize>,
    /// Every request the fake API server answered, and those on Leases.
    pub kube_requests: usize,
    pub lease_requests: usize,
}

impl fmt::Display for FleetSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes = self.nodes.max(1);
        writeln!(f, "nodes with a rebalance recommendation: {}", self.nodes)?;
        writeln!(
            f,
            "spot ASG desired: {} -> {}; on-demand ASG desired: {} -> {}",
            self.spot_desired.0,
            self.spot_desired.1,
            self.on_demand_desired.0,
            self.on_demand_desired.1
        )?;
        writeln!(
            f,
            "SetDesiredCapacity calls: {}; lost updates: {}",
            self.scale_ups,
            self.lost_updates.len()
        )?;
        writeln!(f, "nodes drained: {}", self.drained)?;
        write!(
            f,
            "ASG API calls: {} ({:.1} per node:",
            self.calls,
            self.calls as f64 / nodes as f64
        )?;
        for (action, count) in &self.per_action {
            write!(f, " {action} {:.1}", *count as f64 / nodes as f64)?;
        }
        writeln!(f, ")")?;
        write!(
            f,
            "Kubernetes API requests: {} ({:.1} per node, of which {:.1} on Leases)",
            self.kube_requests,
            self.kube_requests as f64 / nodes as f64,
            self.lease_requests as f64 / nodes as f64
        )
    }
}

/// `spot-guard simulate --nodes N`: N agents get a recommendation in the same second;
/// prints what happened and fails unless desired grew by exactly N with every node drained.
pub async fn run(nodes: usize) -> ExitCode {
    match simulate(nodes).await {
        Ok(summary) => {
            println!("{summary}");
            let grown = (summary.spot_desired.1 - summary.spot_desired.0)
                + (summary.on_demand_desired.1 - summary.on_demand_desired.0);
            let expected = i32::try_from(nodes).unwrap_or(i32::MAX);
            if grown == expected && summary.lost_updates.is_empty() && summary.drained == nodes {
                println!("PASS: exactly one replacement per node, no lost update");
                ExitCode::SUCCESS
            } else {
                println!(
                    "FAIL: expected +{expected} capacity, no lost update and {nodes} drained nodes"
                );
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("spot-guard simulate: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn simulate(nodes: usize) -> Result<FleetSummary, FleetError> {
    let world = FleetWorld::start(FleetSpec::new(nodes)).await?;
    let spot_before = world.asg.group(SPOT_ASG).map_or(0, |g| g.desired);
    let on_demand_before = world.asg.group(ON_DEMAND_ASG).map_or(0, |g| g.desired);
    let mut agents = Vec::with_capacity(nodes);
    for index in 0..nodes {
        agents.push(
            world
                .start_agent(index, world.aws(), &Handle::current())
                .await?,
        );
    }
    for agent in &agents {
        agent.recommend();
    }
    for agent in &mut agents {
        agent.wait_handled(1, Duration::from_secs(120)).await;
    }
    for agent in agents {
        agent.stop().await;
    }
    Ok(world.summary(spot_before, on_demand_before))
}
