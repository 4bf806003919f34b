//! The scenarios `spot-guard-sim` runs, each with what a user should see at the end.

use std::time::Duration;

use crate::names::{ASG_LIFECYCLE_TAINT, REBALANCE_TAINT, SPOT_ITN_TAINT};

/// How an ASG of the scenario behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsgSetup {
    Healthy,
    InsufficientCapacity,
    NeverInService,
    AtMaxSize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
    pub spot: AsgSetup,
    pub on_demand: AsgSetup,
    /// A PodDisruptionBudget that forbids evicting `web` pods until it is relaxed.
    pub pdb_holds_for: Option<Duration>,
    pub dry_run: bool,
    /// A spot interruption notice this long after the rebalance recommendation.
    pub interruption_after: Option<Duration>,
    pub trigger: Trigger,
    pub expect: Expectation,
}

/// What IMDS serves to start the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    RebalanceRecommendation,
    /// A scheduled system-reboot; then the instance reboots and the agent starts again.
    ScheduledRebootThenRestart,
    /// The ASG's target lifecycle state turns Terminated.
    AsgLifecycleTermination,
}

/// What the user should see once the scenario has run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub spot_desired_change: i32,
    pub on_demand_desired_change: i32,
    pub taint: Option<&'static str>,
    pub cordoned: bool,
    pub drained: bool,
    /// Whether anything may be written to the Kubernetes API (false for dry runs).
    pub writes: bool,
}

/// What the scenario ended with, read from the simulators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub spot_desired_change: i32,
    pub on_demand_desired_change: i32,
    pub taints: Vec<String>,
    pub cordoned: bool,
    /// Workload pods still on the node (DaemonSet and mirror pods are expected to stay).
    pub workload_left: Vec<String>,
    /// Requests other than GET that reached the Kubernetes API.
    pub kube_writes: usize,
}

impl Outcome {
    /// Every way the outcome differs from the expectation.
    pub fn mismatches(&self, expect: &Expectation) -> Vec<String> {
        let mut problems = Vec::new();
        if self.spot_desired_change != expect.spot_desired_change {
            problems.push(format!(
                "spot ASG desired changed by {}, expected {}",
                self.spot_desired_change, expect.spot_desired_change
            ));
        }
        if self.on_demand_desired_change != expect.on_demand_desired_change {
            problems.push(format!(
                "on-demand ASG desired changed by {}, expected {}",
                self.on_demand_desired_change, expect.on_demand_desired_change
            ));
        }
        let expected_taints: Vec<String> = expect.taint.iter().map(|t| t.to_string()).collect();
        if self.taints != expected_taints {
            problems.push(format!(
                "taints {:?}, expected {:?}",
                self.taints, expected_taints
            ));
        }
        if self.cordoned != expect.cordoned {
            problems.push(format!(
                "cordoned {}, expected {}",
                self.cordoned, expect.cordoned
            ));
        }
        let drained = self.workload_left.is_empty();
        if drained != expect.drained {
            problems.push(format!(
                "workload pods left {:?}, expected drained={}",
                self.workload_left, expect.drained
            ));
        }
        if !expect.writes && self.kube_writes > 0 {
            problems.push(format!(
                "{} writes reached the Kubernetes API, expected none",
                self.kube_writes
            ));
        }
        problems
    }
}

const fn drained(spot: i32, on_demand: i32, taint: &'static str) -> Expectation {
    Expectation {
        spot_desired_change: spot,
        on_demand_desired_change: on_demand,
        taint: Some(taint),
        cordoned: true,
        drained: true,
        writes: true,
    }
}

const fn scenario(
    name: &'static str,
    description: &'static str,
    spot: AsgSetup,
    on_demand: AsgSetup,
    expect: Expectation,
) -> Scenario {
    Scenario {
        name,
        description,
        spot,
        on_demand,
        pdb_holds_for: None,
        dry_run: false,
        interruption_after: None,
        trigger: Trigger::RebalanceRecommendation,
        expect,
    }
}

pub fn scenarios() -> Vec<Scenario> {
    use AsgSetup::*;
    vec![
        scenario(
            "spot-success",
            "the spot ASG delivers the replacement",
            Healthy,
            Healthy,
            drained(1, 0, REBALANCE_TAINT),
        ),
        scenario(
            "spot-insufficient-capacity",
            "EC2 has no spot capacity: the launch fails with InsufficientInstanceCapacity, on-demand delivers",
            InsufficientCapacity,
            Healthy,
            // AWS keeps the raised desired capacity and retries the launch; see docs.
            drained(1, 1, REBALANCE_TAINT),
        ),
        scenario(
            "spot-timeout",
            "the spot instance never reaches InService: the wait times out, on-demand delivers",
            NeverInService,
            Healthy,
            drained(1, 1, REBALANCE_TAINT),
        ),
        scenario(
            "spot-at-max-size",
            "the spot ASG is at MaxSize: no scale-up is sent, on-demand delivers",
            AtMaxSize,
            Healthy,
            drained(0, 1, REBALANCE_TAINT),
        ),
        scenario(
            "both-fail",
            "no capacity anywhere: the node is still tainted, cordoned and drained",
            InsufficientCapacity,
            AtMaxSize,
            drained(1, 0, REBALANCE_TAINT),
        ),
        Scenario {
            pdb_holds_for: Some(Duration::from_secs(2)),
            ..scenario(
                "pdb-holds-a-pod",
                "a PodDisruptionBudget refuses evictions for 2 s, then allows one at a time",
                Healthy,
                Healthy,
                drained(1, 0, REBALANCE_TAINT),
            )
        },
        Scenario {
            dry_run: true,
            ..scenario(
                "dry-run",
                "DRY_RUN=true: every step is logged, nothing changes",
                Healthy,
                Healthy,
                Expectation {
                    spot_desired_change: 0,
                    on_demand_desired_change: 0,
                    taint: None,
                    cordoned: false,
                    drained: false,
                    writes: false,
                },
            )
        },
        Scenario {
            interruption_after: Some(Duration::from_secs(2)),
            ..scenario(
                "spot-itn-during-wait",
                "a spot interruption notice arrives while Spot Guard waits for InService: it stops waiting and drains now",
                NeverInService,
                Healthy,
                drained(1, 0, SPOT_ITN_TAINT),
            )
        },
        Scenario {
            trigger: Trigger::ScheduledRebootThenRestart,
            ..scenario(
                "scheduled-reboot-then-restart",
                "a scheduled system-reboot drains the node; after the reboot the restarted agent uncordons it",
                Healthy,
                Healthy,
                Expectation {
                    spot_desired_change: 0,
                    on_demand_desired_change: 0,
                    taint: None,
                    cordoned: false,
                    drained: true,
                    writes: true,
                },
            )
        },
        Scenario {
            trigger: Trigger::AsgLifecycleTermination,
            ..scenario(
                "asg-lifecycle-termination",
                "the ASG terminates the instance (target lifecycle state Terminated): taint, cordon, drain",
                Healthy,
                Healthy,
                drained(0, 0, ASG_LIFECYCLE_TAINT),
            )
        },
    ]
}
