//! `spot-guard-sim --restarts` and the restart tests: the agent is killed at each step
//! of the flow (its whole runtime, as a pod kill would) and started again.

use std::process::ExitCode;
use std::time::Duration;

use tokio::runtime::Handle;

use super::{FleetError, FleetSpec, FleetWorld, SPOT_ASG, node_name};
use crate::names::{REBALANCE_TAINT, REPLACEMENT_ANNOTATION};
use crate::record;
use crate::sim::kube::Termination;
use crate::spot_guard::decide::ReplacementRecord;

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
    let limit = Duration::from_secs(60);
    let mut spec = FleetSpec::new(1);
    spec.spot.launch_delay = Duration::from_millis(1500);
    let world = FleetWorld::start(spec).await?;
    world
        .kube
        .set_termination(Termination::After(Duration::from_millis(1500)));
    let spot_before = world.asg.group(SPOT_ASG).map_or(0, |g| g.desired);
    let runtime = crate::sim::harness::killable_runtime()
        .map_err(|error| FleetError::Unexpected(format!("agent runtime: {error}")))?;
    let first = world.start_agent(0, world.aws(), runtime.handle()).await?;
    first.recommend();
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
    let killed_mid_flow = first.handled() == 0;
    // The IMDS simulator outlives the killed agent: the restarted one finds the
    // recommendation still served, as it would on the same instance.
    let restarted = world
        .start_agent_on(
            &node_name(0),
            world.instance_id(0).map(str::to_owned),
            world.aws(),
            &Handle::current(),
        )
        .await?;
    restarted.recommend();
    let mut restarted = restarted;
    let restarted_finished = restarted.wait_handled(1, limit).await;
    restarted.stop().await;
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
