//! The simulators, the real binary as a child process, and the agent started in this
//! process as production starts it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use spot_guard::config::Tuning;
use spot_guard::run::RunningAgent;
use spot_guard::sim::asg::{AsgSim, Behaviour, GroupSpec};
use spot_guard::sim::harness;
use spot_guard::sim::imds::ImdsSim;
use spot_guard::sim::kube::{FakeKube, FakePod};

use crate::Result;

pub const NODE: &str = "ip-10-0-1-1.ec2.internal";
pub const SPOT_ASG: &str = "spot";
pub const ON_DEMAND_ASG: &str = "on-demand";
pub const BOUND: Duration = Duration::from_secs(180);

pub struct World {
    pub imds: ImdsSim,
    pub asg: AsgSim,
    pub kube: FakeKube,
    pub dir: tempfile::TempDir,
}

/// Both ASGs healthy with room to spare, and the node with `pods` workload pods and the
/// agent's own DaemonSet pod. The node has been up for a day, as a node that gets a notice
/// usually has: a young node would also have Spot Guard look for it among the
/// replacements it bought (for Cluster Autoscaler protection) during its first minutes.
pub async fn world(pods: usize, launch_delay: Duration) -> Result<World> {
    let imds = ImdsSim::start().await?;
    let asg = AsgSim::start().await?;
    let kube = FakeKube::start().await?;
    for name in [SPOT_ASG, ON_DEMAND_ASG] {
        asg.add_group(
            name,
            GroupSpec {
                min: 0,
                max: 100,
                desired: 2,
                behaviour: Behaviour::Healthy,
                launch_delay,
                capacity_rebalance: false,
            },
        );
    }
    kube.add_node(NODE);
    let a_day_ago = Timestamp::now().checked_sub(SignedDuration::from_hours(24))?;
    kube.update_node(NODE, |node| {
        node.metadata.creation_timestamp = Some(Time(a_day_ago));
    });
    add_pods(&kube, pods);
    kube.add_pod(FakePod::new("kube-system", "spot-guard-agent", NODE).daemon_set());
    Ok(World {
        imds,
        asg,
        kube,
        dir: tempfile::tempdir()?,
    })
}

pub fn add_pods(kube: &FakeKube, pods: usize) {
    for i in 0..pods {
        kube.add_pod(
            FakePod::new("default", &format!("web-{i:04}"), NODE).with_label("app", "web"),
        );
    }
}

/// The binary the child-process sections run: `SPOT_GUARD_BENCH_BINARY` (the shipped one,
/// `target/image/spot-guard` from scripts/build-static.sh), else the one cargo built.
pub fn agent_binary() -> String {
    std::env::var("SPOT_GUARD_BENCH_BINARY")
        .ok()
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_spot-guard").to_owned())
}

/// The agent binary as a pod runs it, configured by env vars, against the simulators.
pub fn spawn_binary(world: &World, extra_env: &[(&str, &str)]) -> Result<Child> {
    let kubeconfig = world.dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
            world.kube.url()
        ),
    )?;
    let log = std::fs::File::create(world.dir.path().join("agent.log"))?;
    let mut command = Command::new(agent_binary());
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", world.dir.path())
        .env("NODE_NAME", NODE)
        .env("INSTANCE_METADATA_URL", world.imds.url())
        .env("KUBECONFIG", kubeconfig)
        .env("AWS_ENDPOINT_URL", world.asg.url())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (key, value) in extra_env {
        command.env(key, value);
    }
    Ok(command
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()?)
}

pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > BOUND {
            return Err(format!("timed out waiting until {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

pub async fn stop_child(child: &mut Child) -> Result<()> {
    // SAFETY: kill(2) with a pid we spawned.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            child.kill()?;
            child.wait()?;
            return Err("the agent did not stop within 20 s of SIGTERM".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the agent on the world's node in this process, as production starts it
/// (`run::start`, through the simulators' harness): the flags parsed as the binary parses
/// them (rebalance monitoring and draining on, TAINT_NODE as given, a 60 s drain, Spot
/// Guard on both ASGs checking every `spot_guard` when given, every other setting at its
/// default), production's pauses except the IMDS poll `interval`.
pub async fn start_agent(
    world: &World,
    interval: Duration,
    spot_guard: Option<Duration>,
    taint_node: bool,
) -> Result<RunningAgent> {
    let mut flags = match spot_guard {
        Some(_) => harness::spot_guard_flags(SPOT_ASG, ON_DEMAND_ASG),
        None => vec![
            "--enable-rebalance-monitoring=true".to_owned(),
            "--enable-rebalance-draining=true".to_owned(),
        ],
    };
    flags.push(format!("--taint-node={taint_node}"));
    flags.push("--node-termination-grace-period=60".to_owned());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut config = harness::config(NODE, &world.imds.url(), &flags)?;
    config.tuning = Tuning {
        poll_interval: interval,
        ..Tuning::default()
    };
    if let (Some(check_interval), Some(settings)) = (spot_guard, config.spot_guard.as_mut()) {
        settings.check_interval = check_interval;
        // No kubelet registers the bench's new instances: the figures here stop at
        // InService (docs/PERFORMANCE.md measures InService → Node Ready separately).
        settings.node_ready_timeout = Duration::ZERO;
    }
    let asg = spot_guard.map(|_| harness::aws(&world.asg));
    Ok(harness::start(&config, &world.kube.url(), asg).await?)
}

/// Stops an agent started by [`start_agent`], bounded.
pub async fn stop_agent(agent: RunningAgent) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(20), agent.stop())
        .await
        .map_err(|_| "the agent did not stop within 20 s")?;
    Ok(())
}

pub fn has_taint(kube: &FakeKube, key: &str) -> bool {
    kube.node(NODE)
        .and_then(|node| node.spec)
        .and_then(|spec| spec.taints)
        .is_some_and(|taints| taints.iter().any(|taint| taint.key == key))
}
