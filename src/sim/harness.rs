//! One way to start an agent against the simulators, used by `spot-guard-sim`, the
//! tests and the benchmarks: the configuration is parsed from flags exactly as the
//! agent binary parses them, and the agent is started by [`crate::run::start`], the
//! composition point production uses. Only the clients' endpoints and the fixed pauses
//! ([`Tuning`]) differ.

use std::time::Duration;

use clap::Parser;
use tokio::runtime::Handle;

use crate::aws::{AwsAutoScaling, AwsSettings};
use crate::config::{Cli, Config, SpotGuardSettings, Tuning};
use crate::drain::DrainSettings;
use crate::node;
use crate::run::{self, Clients, RunningAgent};
use crate::sim::asg::AsgSim;

/// Where the agents' Leases live in the simulations.
pub const LEASE_NAMESPACE: &str = "kube-system";

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("the flags {flags:?} are refused: {reason}")]
    Flags { flags: Vec<String>, reason: String },
    #[error("building the Kubernetes client: {0}")]
    Client(String),
    #[error("starting the agent: {0}")]
    Start(#[from] run::StartError),
    #[error("the agent's runtime dropped its start-up task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Pauses short enough for a simulation to run in seconds.
pub fn fast_tuning() -> Tuning {
    Tuning {
        poll_interval: Duration::from_millis(100),
        eviction_retry_interval: Duration::from_millis(100),
        drain_poll_interval: Duration::from_millis(50),
    }
}

/// The configuration `spot-guard` builds from `--node-name NODE --metadata-url IMDS`
/// plus `flags` (and NTH's defaults for the rest), with [`fast_tuning`].
pub fn config(node: &str, imds_url: &str, flags: &[&str]) -> Result<Config, HarnessError> {
    let mut argv = vec![
        "spot-guard".to_owned(),
        format!("--node-name={node}"),
        format!("--metadata-url={imds_url}"),
    ];
    argv.extend(flags.iter().map(|flag| (*flag).to_owned()));
    let refused = |reason: String| HarnessError::Flags {
        flags: argv[1..].to_vec(),
        reason,
    };
    let cli = Cli::try_parse_from(&argv).map_err(|error| refused(error.to_string()))?;
    let mut config = run::configure(cli.args).map_err(|error| refused(error.to_string()))?;
    config.tuning = fast_tuning();
    Ok(config)
}

/// The flags that turn Spot Guard on for these two ASGs, draining on rebalance.
pub fn spot_guard_flags(spot_asg: &str, on_demand_asg: &str) -> Vec<String> {
    vec![
        "--enable-rebalance-monitoring=true".to_owned(),
        "--enable-rebalance-draining=true".to_owned(),
        "--enable-spot-guard=true".to_owned(),
        format!("--spot-asg-name={spot_asg}"),
        format!("--on-demand-asg-name={on_demand_asg}"),
        format!("--pod-namespace={LEASE_NAMESPACE}"),
    ]
}

/// Spot Guard's settings shortened for simulation: checks every 100 ms, Leases of 2 s,
/// and no wait for the replacement's Node, which only worlds with a kubelet
/// ([`crate::sim::kubelet`]) register: those set SPOT_GUARD_NODE_READY_TIMEOUT themselves.
pub fn fast_spot_guard(settings: &mut SpotGuardSettings) {
    settings.check_interval = Duration::from_millis(100);
    settings.node_ready_timeout = Duration::ZERO;
    settings.capacity_check_timeout = Duration::from_secs(10);
    settings.scale_timeout = Duration::from_secs(60);
    settings.lease_duration = Duration::from_secs(2);
    settings.lease_retry_interval = Duration::from_millis(20);
}

/// NTH's drain defaults with [`fast_tuning`]'s pauses and a whole-drain `timeout`:
/// what the agent would drain with, for tests of the drain on its own.
pub fn fast_drain(timeout: Duration) -> DrainSettings {
    let tuning = fast_tuning();
    DrainSettings {
        timeout,
        eviction_retry_interval: tuning.eviction_retry_interval,
        poll_interval: tuning.drain_poll_interval,
        ..DrainSettings::default()
    }
}

/// A runtime of its own for one agent: shutting it down kills every task of the agent
/// at once, as a pod kill would.
pub fn killable_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

/// Polls `check` every 10 ms until it holds; panics naming `what` after `limit`. For
/// tests: a wait for evidence, never a fixed sleep.
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An SDK client for the ASG simulator, as each agent pod has its own.
pub fn aws(asg: &AsgSim) -> AwsAutoScaling {
    AwsAutoScaling::for_endpoint(asg.url(), "us-east-1", &AwsSettings::default())
}

/// Starts the agent of `config` on the current runtime, talking to the fake Kubernetes
/// API at `kube_url` and to Auto Scaling through `asg`.
pub async fn start<A: crate::asg::AutoScaling + Clone + Send + Sync + 'static>(
    config: &Config,
    kube_url: &str,
    asg: Option<A>,
) -> Result<RunningAgent, HarnessError> {
    start_on(config, kube_url, asg, &Handle::current()).await
}

/// [`start`] on `runtime`: every task of the agent runs there, so shutting that runtime
/// down kills the agent as a pod kill would.
pub async fn start_on<A: crate::asg::AutoScaling + Clone + Send + Sync + 'static>(
    config: &Config,
    kube_url: &str,
    asg: Option<A>,
    runtime: &Handle,
) -> Result<RunningAgent, HarnessError> {
    let kube = {
        let _entered = runtime.enter();
        node::client_for_url(kube_url).map_err(|error| HarnessError::Client(error.to_string()))?
    };
    let config = config.clone();
    let agent = runtime
        .spawn(async move { run::start(&config, Clients { kube, asg }).await })
        .await??;
    Ok(agent)
}
