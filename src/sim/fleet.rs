//! Many spot nodes at once: one agent per node (each with its own clients, as in a
//! DaemonSet) against one ASG simulator and one fake Kubernetes API, all getting a
//! rebalance recommendation together. Used by `spot-guard simulate --nodes N` ([`run`])
//! and by the fleet tests.

use std::collections::BTreeMap;
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentSettings};
use crate::asg::AutoScaling;
use crate::aws::{AwsAutoScaling, AwsSettings};
use crate::config::SpotGuardSettings;
use crate::drain::DrainSettings;
use crate::spot_guard::decide::{REPLACEMENT_ANNOTATION, ReplacementRecord};
use crate::flow::{ActionSettings, REBALANCE_TAINT};
use crate::monitor::Notice;
use crate::node;
use crate::record;
use crate::report::{NodeMetadata, ReportSettings, Reporter};
use crate::spot_guard::scale_back::decide::ScaleBackSettings;
use crate::sim::asg::{AsgSim, AsgSimError, Behaviour, Call, GroupSpec};
use crate::sim::kube::{FakeKube, FakePod, Termination};
use crate::spot_guard::{Fleet, FleetSettings, SpotGuard};

pub const SPOT_ASG: &str = "spot-asg";
pub const ON_DEMAND_ASG: &str = "on-demand-asg";
/// Where the agents' Leases live.
pub const NAMESPACE: &str = "kube-system";
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
    #[error("building the Kubernetes client of agent {node}: {detail}")]
    Client { node: String, detail: String },
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
    pub scale_back: Option<ScaleBackSettings>,
    /// Agents write Kubernetes events (EMIT_KUBERNETES_EVENTS) and keep metrics.
    pub reports: bool,
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
            reports: false,
        }
    }
}

/// The simulators, with one node and one workload pod per agent.
pub struct FleetWorld {
    pub asg: AsgSim,
    pub kube: FakeKube,
    pub spec: FleetSpec,
    instance_ids: Vec<String>,
}

/// An agent running on some runtime; kill it by shutting that runtime down, or stop it.
pub struct RunningAgent {
    pub node: String,
    pub notices: mpsc::Sender<Notice>,
    pub handled: watch::Receiver<u32>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
    /// Cluster Autoscaler protection and scale-back of the agent's own node.
    pub own_node_tasks: Vec<JoinHandle<()>>,
    /// With [`FleetSpec::reports`], its metrics are readable here.
    pub reporter: Reporter,
}

impl RunningAgent {
    /// Waits (bounded) until the agent has finished `count` notices; false on timeout.
    pub async fn wait_handled(&mut self, count: u32, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.handled.wait_for(|n| *n >= count))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// A rebalance recommendation as the monitor delivers it.
pub fn recommendation(event_id: &str) -> Notice {
    Notice::RebalanceRecommendation {
        event_id: event_id.to_owned(),
        notice_time: "2026-01-01T00:00:00Z".to_owned(),
    }
}

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
        AwsAutoScaling::for_endpoint(self.asg.url(), "us-east-1", &AwsSettings::default())
    }

    /// Starts the agent of node `index` on `runtime`, over `asg`.
    pub fn start_agent<A: AutoScaling + 'static>(
        &self,
        index: usize,
        asg: A,
        runtime: &Handle,
    ) -> Result<RunningAgent, FleetError> {
        let instance_id = self.instance_id(index).map(str::to_owned);
        self.start_agent_on(&node_name(index), instance_id, asg, runtime)
    }

    /// Spot capacity has run out: node 0's agent gets a recommendation and buys an
    /// on-demand fallback, whose node then registers. Returns that node and instance.
    pub async fn buy_fallback(&self) -> Result<(String, String), FleetError> {
        self.asg
            .set_behaviour(SPOT_ASG, Behaviour::InsufficientCapacity)?;
        let mut agent = self.start_agent(0, self.aws(), &Handle::current())?;
        let _ = agent
            .notices
            .send(recommendation("rebalance-recommendation-000"))
            .await;
        let handled = agent.wait_handled(1, Duration::from_secs(60)).await;
        agent.shutdown.cancel();
        if !handled || !self.node_drained(0) {
            return Err(FleetError::Unexpected(
                "node 0 did not finish its rebalance recommendation".to_owned(),
            ));
        }
        match self.run_kubelets().as_slice() {
            [(node, instance)] => Ok((node.clone(), instance.clone())),
            other => Err(FleetError::Unexpected(format!(
                "expected one on-demand fallback node, found {other:?}"
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

    /// Starts an agent on `node` (running `instance_id`) on `runtime`, over `asg`.
    pub fn start_agent_on<A: AutoScaling + 'static>(
        &self,
        node: &str,
        instance_id: Option<String>,
        asg: A,
        runtime: &Handle,
    ) -> Result<RunningAgent, FleetError> {
        let node = node.to_owned();
        let kube = node::client_for_url(&self.kube.url()).map_err(|error| FleetError::Client {
            node: node.clone(),
            detail: error.to_string(),
        })?;
        let config = SpotGuardSettings {
            spot_asg_name: SPOT_ASG.to_owned(),
            on_demand_asg_name: ON_DEMAND_ASG.to_owned(),
            scale_timeout: Duration::from_secs(60),
            capacity_check_timeout: self.spec.capacity_check_timeout,
            check_interval: self.spec.check_interval,
        };
        let fleet = Fleet::new(
            kube.clone(),
            &node,
            instance_id,
            FleetSettings {
                lease_namespace: NAMESPACE.to_owned(),
                lease_duration: self.spec.lease_duration,
                lease_retry_interval: self.spec.lease_retry_interval,
                scale_count: 1,
                capacity_cool_off: self.spec.capacity_cool_off,
                terminate_after_drain: self.spec.terminate_after_drain,
                new_node_protection: self.spec.new_node_protection,
                scale_back: self.spec.scale_back.clone(),
            },
        );
        let drain = DrainSettings {
            timeout: Duration::from_secs(30),
            eviction_retry_interval: Duration::from_millis(100),
            poll_interval: Duration::from_millis(50),
            ..DrainSettings::default()
        };
        let reporter = if self.spec.reports {
            let settings = ReportSettings {
                emit_kubernetes_events: true,
                metrics: true,
                ..ReportSettings::default()
            };
            let _entered = runtime.enter();
            Reporter::start(&settings, NodeMetadata::new(&node), Some(kube.clone())).map_err(
                |error| FleetError::Client {
                    node: node.clone(),
                    detail: error.to_string(),
                },
            )?
        } else {
            Reporter::default()
        };
        let shutdown = CancellationToken::new();
        let own_node_tasks = {
            // The tasks run on the agent's runtime, so killing it kills them too.
            let _entered = runtime.enter();
            fleet.own_node_tasks(
                self.aws(),
                kube.clone(),
                &config,
                drain.clone(),
                false,
                reporter.clone(),
                &shutdown,
            )
        };
        let spot_guard = SpotGuard::new(asg, config, false)
            .with_reporter(reporter.clone())
            .with_fleet(fleet);
        let settings = AgentSettings {
            node_name: node.clone(),
            dry_run: false,
            actions: ActionSettings {
                spot_guard: true,
                enable_rebalance_draining: true,
                ..ActionSettings::default()
            },
            drain,
            uptime_file: "/proc/uptime".to_owned(),
        };
        let agent = Agent::new(settings, kube, Some(spot_guard)).with_reporter(reporter.clone());
        let handled = agent.handled();
        let (notices, notices_rx) = mpsc::channel(4);
        let task = runtime.spawn(agent.run(notices_rx, shutdown.clone()));
        Ok(RunningAgent {
            node,
            notices,
            handled,
            shutdown,
            task,
            own_node_tasks,
            reporter,
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
        agents.push(world.start_agent(index, world.aws(), &Handle::current())?);
    }
    for (index, agent) in agents.iter().enumerate() {
        // A closed channel means the agent stopped; the summary then shows it undrained.
        let _ = agent
            .notices
            .send(recommendation(&format!(
                "rebalance-recommendation-{index:03}"
            )))
            .await;
    }
    for agent in &mut agents {
        agent.wait_handled(1, Duration::from_secs(120)).await;
    }
    for agent in &agents {
        agent.shutdown.cancel();
    }
    Ok(world.summary(spot_before, on_demand_before))
}

/// `spot-guard simulate --scale-back`: three spot nodes, a spot shortage, one on-demand
/// fallback; spot capacity returns and the fallback's agent gives it back. Fails unless
/// the fallback drained and terminated exactly once and the on-demand ASG shrank back.
pub async fn run_scale_back() -> ExitCode {
    match simulate_scale_back().await {
        Ok(()) => {
            println!(
                "PASS: the fallback was given back exactly once, after spot capacity returned"
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("FAIL: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn simulate_scale_back() -> Result<(), FleetError> {
    let mut spec = FleetSpec::new(3);
    spec.new_node_protection = Duration::from_secs(60);
    spec.scale_back = Some(ScaleBackSettings {
        min_wait: Duration::from_secs(1),
        stability_period: Duration::from_secs(1),
        utilization_ceiling: 75,
        check_interval: Duration::from_millis(200),
    });
    let world = FleetWorld::start(spec).await?;
    let (node, instance) = world.buy_fallback().await?;
    let desired = |name: &str| world.asg.group(name).map_or(0, |group| group.desired);
    println!(
        "spot capacity ran out: node {} was drained and on-demand instance {instance} (node {node}) bought; spot ASG desired {}, on-demand ASG desired {}",
        node_name(0),
        desired(SPOT_ASG),
        desired(ON_DEMAND_ASG)
    );
    world.kube.add_pod(
        FakePod::new(WORKLOAD_NAMESPACE, "landed-app", &node).with_requests("500m", "1Gi"),
    );
    let agent = world.start_agent_on(
        &node,
        Some(instance.clone()),
        world.aws(),
        &Handle::current(),
    )?;
    let terminations = || {
        world
            .asg
            .calls_of("TerminateInstanceInAutoScalingGroup")
            .iter()
            .filter(|call| call.param("InstanceId") == Some(instance.as_str()))
            .count()
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    if terminations() > 0 {
        return Err(FleetError::Unexpected(
            "the fallback was given back while spot capacity was still short".to_owned(),
        ));
    }
    println!("3 s later, spot still short: the fallback stays (no termination)");
    world.asg.restore_capacity(SPOT_ASG)?;
    println!("spot capacity returns: the spot ASG launches what it was short of");
    let started = tokio::time::Instant::now();
    while terminations() == 0 {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(FleetError::Unexpected(
                "the fallback was not given back within 60 s of spot capacity returning".to_owned(),
            ));
        }
        for (new_node, new_instance) in world.run_kubelets() {
            println!("node {new_node} registered for spot instance {new_instance}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let a restarted check see the record: no second termination.
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.shutdown.cancel();
    let evicted = world
        .kube
        .evictions()
        .iter()
        .any(|eviction| eviction.name == "landed-app");
    println!(
        "given back {:.1} s after spot capacity returned: TerminateInstanceInAutoScalingGroup({instance}, ShouldDecrementDesiredCapacity=true) x{}; on-demand ASG desired {}, spot ASG desired {}; its pod evicted: {evicted}",
        started.elapsed().as_secs_f64(),
        terminations(),
        desired(ON_DEMAND_ASG),
        desired(SPOT_ASG)
    );
    if terminations() == 1 && desired(ON_DEMAND_ASG) == 0 && evicted {
        Ok(())
    } else {
        Err(FleetError::Unexpected(
            "expected one termination, the on-demand ASG back at 0 and the pod evicted".to_owned(),
        ))
    }
}

/// Where `simulate --restarts` and the restart tests kill an agent mid-flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillPoint {
    AfterSetDesiredCapacity,
    DuringInServiceWait,
    AfterTaint,
    DuringDrain,
}

impl KillPoint {
    pub const ALL: [KillPoint; 4] = [
        KillPoint::AfterSetDesiredCapacity,
        KillPoint::DuringInServiceWait,
        KillPoint::AfterTaint,
        KillPoint::DuringDrain,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            KillPoint::AfterSetDesiredCapacity => "right after SetDesiredCapacity",
            KillPoint::DuringInServiceWait => "during the wait for InService",
            KillPoint::AfterTaint => "after the taint",
            KillPoint::DuringDrain => "during the drain",
        }
    }

    fn reached(self, world: &FleetWorld) -> bool {
        let scaled = !world.asg.calls_of("SetDesiredCapacity").is_empty();
        match self {
            KillPoint::AfterSetDesiredCapacity => scaled,
            KillPoint::DuringInServiceWait => {
                scaled && world.asg.calls_of("DescribeAutoScalingGroups").len() >= 2
            }
            KillPoint::AfterTaint => world
                .kube
                .node(&node_name(0))
                .and_then(|node| node.spec)
                .and_then(|spec| spec.taints)
                .is_some_and(|taints| taints.iter().any(|t| t.key == REBALANCE_TAINT)),
            KillPoint::DuringDrain => !world.kube.evictions().is_empty(),
        }
    }
}

/// What came of one kill-and-restart run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOutcome {
    /// The killed agent had not finished (it was killed mid-flow).
    pub killed_mid_flow: bool,
    pub restarted_finished: bool,
    pub scale_ups: usize,
    pub spot_growth: i32,
    pub drained: bool,
    /// The event id of the replacement record left on the Node.
    pub recorded_event: Option<String>,
}

impl RestartOutcome {
    /// One scale-up in all, the node drained by the restarted agent.
    pub fn as_expected(&self) -> bool {
        self.killed_mid_flow
            && self.restarted_finished
            && self.scale_ups == 1
            && self.spot_growth == 1
            && self.drained
    }
}

/// One node, launches and pod terminations slow enough to catch each step: the agent
/// runs in a runtime of its own and is killed (every task, as a pod kill would) at
/// `point`; then a fresh agent handles the same recommendation to the end.
pub async fn kill_and_restart(point: KillPoint) -> Result<RestartOutcome, FleetError> {
    const EVENT: &str = "rebalance-recommendation-restart";
    let limit = Duration::from_secs(60);
    let mut spec = FleetSpec::new(1);
    spec.spot.launch_delay = Duration::from_millis(1500);
    let world = FleetWorld::start(spec).await?;
    world
        .kube
        .set_termination(Termination::After(Duration::from_millis(1500)));
    let spot_before = world.asg.group(SPOT_ASG).map_or(0, |g| g.desired);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|error| FleetError::Unexpected(format!("agent runtime: {error}")))?;
    let first = world.start_agent(0, world.aws(), runtime.handle())?;
    let _ = first.notices.send(recommendation(EVENT)).await;
    let reached = tokio::time::timeout(limit, async {
        while !point.reached(&world) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    runtime.shutdown_background();
    if reached.is_err() {
        return Err(FleetError::Unexpected(format!(
            "the agent did not reach the point {}",
            point.describe()
        )));
    }
    let killed_mid_flow = *first.handled.borrow() == 0;

    let mut restarted = world.start_agent(0, world.aws(), &Handle::current())?;
    let _ = restarted.notices.send(recommendation(EVENT)).await;
    let restarted_finished = restarted.wait_handled(1, limit).await;
    restarted.shutdown.cancel();
    let recorded_event = world
        .kube
        .node(&node_name(0))
        .and_then(|node| {
            ReplacementRecord::parse(record::annotation(&node, REPLACEMENT_ANNOTATION))
        })
        .map(|record| record.event_id);
    Ok(RestartOutcome {
        killed_mid_flow,
        restarted_finished,
        scale_ups: world.asg.calls_of("SetDesiredCapacity").len(),
        spot_growth: world.asg.group(SPOT_ASG).map_or(0, |g| g.desired) - spot_before,
        drained: world.node_drained(0),
        recorded_event,
    })
}

/// `spot-guard simulate --restarts`: the agent is killed at each step of the flow and
/// restarted; fails unless every run scales once and ends with the node drained.
pub async fn run_restarts() -> ExitCode {
    let mut failed = false;
    for point in KillPoint::ALL {
        match kill_and_restart(point).await {
            Ok(outcome) => {
                println!(
                    "killed {}: restarted agent finished: {}; SetDesiredCapacity calls in all: {}; spot desired {:+}; node drained: {}",
                    point.describe(),
                    outcome.restarted_finished,
                    outcome.scale_ups,
                    outcome.spot_growth,
                    outcome.drained
                );
                failed |= !outcome.as_expected();
            }
            Err(error) => {
                println!("killed {}: {error}", point.describe());
                failed = true;
            }
        }
    }
    if failed {
        println!(
            "FAIL: expected one scale-up per recommendation and a drained node after every restart"
        );
        ExitCode::FAILURE
    } else {
        println!(
            "PASS: one scale-up per recommendation, node drained, whatever step the agent was killed at"
        );
        ExitCode::SUCCESS
    }
}
