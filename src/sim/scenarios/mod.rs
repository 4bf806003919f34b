//! `spot-guard simulate`: the whole agent (monitor, Spot Guard, node actions) against
//! the simulators of IMDS, both ASGs and the Kubernetes API, with the real clients over
//! loopback HTTP and timeouts scaled down to seconds. Each scenario states what a user
//! should see at the end and is checked against it, so the simulation is also a test.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::config::{Config, Tuning};
use crate::names::ACTION_TIME_LABEL;
use crate::run::RunningAgent;
use crate::sim::asg::{AsgSim, Behaviour, GroupSpec};
use crate::sim::harness;
use crate::sim::imds::ImdsSim;
use crate::sim::kube::{FakeKube, FakePod, Termination};
use crate::sim::kubelet::{self, KubeletSpec, NodeShape};

pub const NODE: &str = "ip-10-0-1-23.ec2.internal";
pub const SPOT_ASG: &str = "spot-asg";
pub const ON_DEMAND_ASG: &str = "on-demand-asg";
const WORKLOAD_PODS: [&str; 3] = ["web-7d4b9c-abcde", "web-7d4b9c-fghij", "api-5f6c7d-klmno"];

mod catalogue;

pub use catalogue::{AsgSetup, Expectation, Outcome, Scenario, Trigger, scenarios};

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("starting the {what} simulator: {detail}")]
    Simulator { what: &'static str, detail: String },
    #[error("building a client for the {what} simulator: {detail}")]
    Client { what: &'static str, detail: String },
    #[error("scenario {name} did not finish within {seconds}s")]
    Stuck { name: &'static str, seconds: u64 },
}

/// Timings scaled down from production so a scenario takes seconds.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
const CAPACITY_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
const LAUNCH_DELAY: Duration = Duration::from_millis(1200);
const SCENARIO_DEADLINE: Duration = Duration::from_secs(60);

fn group_spec(setup: AsgSetup) -> GroupSpec {
    let behaviour = match setup {
        AsgSetup::Healthy | AsgSetup::AtMaxSize => Behaviour::Healthy,
        AsgSetup::InsufficientCapacity => Behaviour::InsufficientCapacity,
        AsgSetup::NeverInService => Behaviour::NeverInService,
    };
    GroupSpec {
        min: 1,
        max: if setup == AsgSetup::AtMaxSize { 3 } else { 10 },
        desired: 3,
        behaviour,
        launch_delay: LAUNCH_DELAY,
        capacity_rebalance: false,
    }
}

/// Runs one scenario end to end and reads what it left behind.
pub async fn run_scenario(scenario: &Scenario) -> Result<Outcome, ScenarioError> {
    let simulator = |what: &'static str| {
        move |error: &dyn std::fmt::Display| ScenarioError::Simulator {
            what,
            detail: error.to_string(),
        }
    };
    let imds = ImdsSim::start().await.map_err(|e| simulator("IMDS")(&e))?;
    let asg = AsgSim::start().await.map_err(|e| simulator("ASG")(&e))?;
    let kube = FakeKube::start()
        .await
        .map_err(|e| simulator("Kubernetes API")(&e))?;

    imds.set_instance_id("i-0123456789abcdef0");
    asg.add_group(SPOT_ASG, group_spec(scenario.spot));
    asg.add_group(ON_DEMAND_ASG, group_spec(scenario.on_demand));
    kube.add_node(NODE);
    for name in WORKLOAD_PODS {
        let app = name.split('-').next().unwrap_or(name);
        kube.add_pod(FakePod::new("default", name, NODE).with_label("app", app));
    }
    kube.add_pod(FakePod::new("kube-system", "aws-node-x7k2p", NODE).daemon_set());
    kube.add_pod(FakePod::new("kube-system", "spot-guard-q9z4m", NODE).daemon_set());
    kube.set_termination(Termination::After(Duration::from_millis(300)));
    if scenario.pdb_holds_for.is_some() {
        kube.add_pdb("default", "web", &[("app", "web")], 0);
    }
    // The kubelets of the groups' instances register their Nodes, new ones a while
    // after InService, NotReady first.
    let (asg, kube) = (Arc::new(asg), Arc::new(kube));
    kubelet::spawn(
        &asg,
        &kube,
        vec![
            (SPOT_ASG.to_owned(), "spot".to_owned()),
            (ON_DEMAND_ASG.to_owned(), "on-demand".to_owned()),
        ],
        KubeletSpec {
            join_delay: Duration::from_millis(600),
            ready_delay: Duration::from_millis(600),
        },
        NodeShape {
            cpu: "4".to_owned(),
            memory: "16Gi".to_owned(),
        },
    );

    let uptime_file = std::env::temp_dir().join(format!(
        "spot-guard-simulate-{}-{}.uptime",
        std::process::id(),
        scenario.name
    ));
    let write_uptime = |seconds: u64| {
        std::fs::write(&uptime_file, format!("{seconds}.00 1.00\n")).map_err(|e| {
            ScenarioError::Simulator {
                what: "uptime file",
                detail: e.to_string(),
            }
        })
    };
    write_uptime(100_000)?;
    let sims = Sims {
        imds: &imds,
        asg: &asg,
        kube: &kube,
        uptime_file: uptime_file.to_string_lossy().into_owned(),
    };
    let agent = start_agent(scenario, &sims).await?;

    match scenario.trigger {
        Trigger::RebalanceRecommendation => {
            let notice_time = "2026-11-24T08:22:00Z";
            info!(
                "[simulator] IMDS now serves a rebalance recommendation (noticeTime={notice_time})"
            );
            imds.set_rebalance(Some(notice_time));
        }
        Trigger::ScheduledRebootThenRestart => {
            info!("[simulator] IMDS now serves a scheduled system-reboot (instance-event-0abc)");
            imds.set_scheduled_events(scheduled_reboot("active"));
        }
        Trigger::AsgLifecycleTermination => {
            info!("[simulator] IMDS now serves target-lifecycle-state Terminated");
            imds.set_lifecycle_state(Some("Terminated"));
        }
    }
    if let Some(after) = scenario.interruption_after {
        tokio::time::sleep(after).await;
        info!("[simulator] IMDS now serves a spot interruption notice (action=terminate)");
        imds.set_spot_action(Some(("terminate", "2026-11-24T08:24:00Z")));
    }
    if let Some(hold) = scenario.pdb_holds_for {
        tokio::time::sleep(hold).await;
        info!("[simulator] PodDisruptionBudget default/web now allows 1 disruption");
        kube.set_pdb_max_unavailable("default", "web", 1);
    }
    let finished = agent.finish(scenario).await;

    if finished.is_ok() && scenario.trigger == Trigger::ScheduledRebootThenRestart {
        info!(
            "[simulator] an hour later the instance has rebooted: the event is completed and the agent starts again"
        );
        let hour_ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(3600);
        kube.update_node(NODE, |node| {
            node.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(ACTION_TIME_LABEL.to_string(), hour_ago.to_string());
        });
        imds.set_scheduled_events(scheduled_reboot("completed"));
        write_uptime(60)?;
        let agent = start_agent(scenario, &sims).await?;
        let uncordoned = async {
            loop {
                let cordoned = kube
                    .node(NODE)
                    .and_then(|n| n.spec)
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false);
                if !cordoned {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let back = tokio::time::timeout(SCENARIO_DEADLINE, uncordoned).await;
        agent.stop().await;
        if back.is_err() {
            let _ = std::fs::remove_file(&uptime_file);
            return Err(ScenarioError::Stuck {
                name: scenario.name,
                seconds: SCENARIO_DEADLINE.as_secs(),
            });
        }
    }
    let _ = std::fs::remove_file(&uptime_file);
    finished?;

    let desired = |name: &str| asg.group(name).map(|g| g.desired).unwrap_or_default();
    let node = kube.node(NODE);
    let spec = node.and_then(|n| n.spec);
    Ok(Outcome {
        spot_desired_change: desired(SPOT_ASG) - 3,
        on_demand_desired_change: desired(ON_DEMAND_ASG) - 3,
        taints: spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.key)
            .collect(),
        cordoned: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        workload_left: kube
            .pods_on_node(NODE)
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .filter(|name| WORKLOAD_PODS.contains(&name.as_str()))
            .collect(),
        kube_writes: kube
            .requests()
            .iter()
            .filter(|request| request.method != "GET")
            .count(),
    })
}

struct Sims<'a> {
    imds: &'a ImdsSim,
    asg: &'a AsgSim,
    kube: &'a FakeKube,
    uptime_file: String,
}

/// The agent of a scenario, started as production starts it.
struct ScenarioAgent(RunningAgent);

impl ScenarioAgent {
    /// Waits until the first notice is handled, then stops the agent.
    async fn finish(mut self, scenario: &Scenario) -> Result<(), ScenarioError> {
        let finished = self.0.wait_handled(1, SCENARIO_DEADLINE).await;
        self.stop().await;
        if finished {
            Ok(())
        } else {
            Err(ScenarioError::Stuck {
                name: scenario.name,
                seconds: SCENARIO_DEADLINE.as_secs(),
            })
        }
    }

    async fn stop(self) {
        self.0.stop().await;
    }
}

fn scheduled_reboot(state: &str) -> serde_json::Value {
    serde_json::json!([{
        "Code": "system-reboot",
        "Description": "scheduled reboot",
        "EventId": "instance-event-0abc",
        "NotBefore": "24 Nov 2026 09:00:00 GMT",
        "NotAfter": "24 Nov 2026 11:00:00 GMT",
        "NotBeforeDeadline": "",
        "State": state
    }])
}

/// The flags the scenario's user would set, parsed as the agent parses them.
fn scenario_config(scenario: &Scenario, sims: &Sims<'_>) -> Result<Config, ScenarioError> {
    let mut flags = harness::spot_guard_flags(SPOT_ASG, ON_DEMAND_ASG);
    flags.extend([
        "--enable-scheduled-event-draining=true".to_owned(),
        "--enable-asg-lifecycle-draining=true".to_owned(),
        format!("--dry-run={}", scenario.dry_run),
        format!(
            "--taint-node={}",
            scenario.interruption_after.is_some()
                || scenario.trigger == Trigger::AsgLifecycleTermination
        ),
        "--node-termination-grace-period=20".to_owned(),
        "--spot-guard-scale-timeout=5".to_owned(),
        format!("--uptime-from-file={}", sims.uptime_file),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut config =
        harness::config(NODE, &sims.imds.url(), &flags).map_err(|error| ScenarioError::Client {
            what: "agent",
            detail: error.to_string(),
        })?;
    config.tuning = Tuning {
        poll_interval: POLL_INTERVAL,
        eviction_retry_interval: Duration::from_millis(500),
        drain_poll_interval: Duration::from_millis(200),
    };
    if let Some(settings) = config.spot_guard.as_mut() {
        harness::fast_spot_guard(settings);
        settings.scale_timeout = Duration::from_secs(5);
        settings.check_interval = CHECK_INTERVAL;
        settings.node_ready_timeout = Duration::from_secs(10);
        settings.capacity_check_timeout = if scenario.interruption_after.is_some() {
            Duration::from_secs(30)
        } else {
            CAPACITY_CHECK_TIMEOUT
        };
    }
    Ok(config)
}

async fn start_agent(scenario: &Scenario, sims: &Sims<'_>) -> Result<ScenarioAgent, ScenarioError> {
    let config = scenario_config(scenario, sims)?;
    let agent = harness::start(&config, &sims.kube.url(), Some(harness::aws(sims.asg)))
        .await
        .map_err(|error| ScenarioError::Client {
            what: "agent",
            detail: error.to_string(),
        })?;
    Ok(ScenarioAgent(agent))
}

/// `spot-guard-sim --list`.
pub fn list() {
    for scenario in scenarios() {
        println!("{:<28} {}", scenario.name, scenario.description);
    }
}

/// Runs the scenario named `only`, or all of them; fails unless each ends as expected.
pub async fn run(only: Option<&str>) -> ExitCode {
    let all = scenarios();
    let selected: Vec<&Scenario> = match only {
        Some(name) => match all.iter().find(|s| s.name == name) {
            Some(scenario) => vec![scenario],
            None => {
                eprintln!("spot-guard-sim: no scenario named '{name}'; use --list to see them");
                return ExitCode::from(2);
            }
        },
        None => all.iter().collect(),
    };
    let mut failed = Vec::new();
    for scenario in selected {
        println!("\n=== scenario {}: {}", scenario.name, scenario.description);
        match run_scenario(scenario).await {
            Ok(outcome) => {
                println!(
                    "--- result: spot ASG desired {:+}, on-demand ASG desired {:+}, taints {:?}, cordoned {}, workload pods left {:?}",
                    outcome.spot_desired_change,
                    outcome.on_demand_desired_change,
                    outcome.taints,
                    outcome.cordoned,
                    outcome.workload_left
                );
                let problems = outcome.mismatches(&scenario.expect);
                if problems.is_empty() {
                    println!("--- as expected");
                } else {
                    println!("--- NOT as expected: {}", problems.join("; "));
                    failed.push(scenario.name);
                }
            }
            Err(error) => {
                println!("--- failed: {error}");
                failed.push(scenario.name);
            }
        }
    }
    if failed.is_empty() {
        println!("\nAll scenarios ended as expected.");
        ExitCode::SUCCESS
    } else {
        println!(
            "\nScenarios that did not end as expected: {}",
            failed.join(", ")
        );
        ExitCode::FAILURE
    }
}
