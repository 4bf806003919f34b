//! The one composition point: [`start`] turns a [`Config`] and the clients to talk
//! through into a running agent (IMDS monitor, agent, Spot Guard and its own-node tasks,
//! reporters, metrics and probes servers). Production ([`run`]), the simulator, the
//! tests and the benchmarks all start the agent here, so what they run is what ships.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use std::future::Future;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::agent::{Agent, AgentSettings};
use crate::asg::AutoScaling;
use crate::aws::{AwsAutoScaling, AwsSettings};
use crate::config::{self, Args, Config, ConfigError};
use crate::imds::{ImdsClient, ImdsError};
use crate::instance_metadata;
use crate::monitor::{self, MonitorSettings};
use crate::node::{self, NodeClient, NodeError};
use crate::report::{
    self, Liveness, NodeMetadata, ProbeSettings, ReportError, Reporter, ServeError,
};
use crate::spot_guard::SpotGuard;

mod panic_exit;

/// What the agent talks through: the real clients in production, clients pointed at
/// the simulators elsewhere.
pub struct Clients<A> {
    pub kube: kube::Client,
    /// Auto Scaling; only used when Spot Guard is on.
    pub asg: Option<A>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Imds(#[from] ImdsError),
    #[error("{0}; check NODE_NAME (the chart sets it from spec.nodeName)")]
    NodeNotFound(#[source] NodeError),
    #[error("cannot set up reporting: {0}")]
    Report(#[from] ReportError),
    #[error("{0}")]
    Serve(#[from] ServeError),
    #[error("ENABLE_SPOT_GUARD is on but no Auto Scaling client was given")]
    NoAutoScaling,
}

impl StartError {
    /// 2 for what the user configured wrong, 1 for what the world refused.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            StartError::Imds(_) | StartError::Report(_) | StartError::NoAutoScaling => {
                ExitCode::from(2)
            }
            StartError::NodeNotFound(_) | StartError::Serve(_) => ExitCode::FAILURE,
        }
    }
}

/// A core task of the agent, its result flattened to text for the supervisor.
struct CoreTask {
    name: &'static str,
    /// Ending before shutdown is this task's normal completion: the own-node tasks
    /// finish their job (the protection window passes, the node is given back).
    may_finish: bool,
    handle: JoinHandle<Result<(), String>>,
    /// The task the panic hook names as `name` (the spawned one, not the wrapper).
    named: tokio::task::Id,
}

impl CoreTask {
    fn new(
        name: &'static str,
        may_finish: bool,
        named: tokio::task::Id,
        handle: JoinHandle<Result<(), String>>,
    ) -> CoreTask {
        panic_exit::name_task(named, name);
        CoreTask {
            name,
            may_finish,
            handle,
            named,
        }
    }
}

impl Drop for CoreTask {
    fn drop(&mut self) {
        panic_exit::forget_task(self.named);
    }
}

fn core_task<E: std::fmt::Display + Send + 'static>(
    name: &'static str,
    may_finish: bool,
    task: impl Future<Output = Result<(), E>> + Send + 'static,
) -> CoreTask {
    let handle = tokio::spawn(async move { task.await.map_err(|error| error.to_string()) });
    CoreTask::new(name, may_finish, handle.id(), handle)
}

/// A core task ended while the agent should be running: nothing may poll IMDS or drain
/// any more, so the process must exit and be restarted.
#[derive(Debug, thiserror::Error)]
#[error("the {task} {how}")]
pub struct TaskEnded {
    pub task: &'static str,
    pub how: String,
}

fn how_it_ended(outcome: Result<Result<(), String>, tokio::task::JoinError>) -> String {
    match outcome {
        Ok(Ok(())) => "returned".to_owned(),
        Ok(Err(error)) => format!("failed: {error}"),
        // A panic reaches here only without the hook (library use, e.g. the simulator).
        Err(error) => format!("ended: {error}"),
    }
}

/// A started agent: its tasks run until [`RunningAgent::stop`].
pub struct RunningAgent {
    pub shutdown: CancellationToken,
    pub reporter: Reporter,
    handled: watch::Receiver<u32>,
    /// In stopping order: the agent first (it may be finishing a drain), the monitor,
    /// then the servers.
    tasks: Vec<CoreTask>,
}

impl RunningAgent {
    /// How many notices the agent has fully handled.
    pub fn handled(&self) -> watch::Receiver<u32> {
        self.handled.clone()
    }

    /// Waits (bounded) until the agent has finished `count` notices; false on timeout.
    pub async fn wait_handled(&mut self, count: u32, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.handled.wait_for(|n| *n >= count))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Resolves when a core task ends by itself (returns, fails or panics), except an
    /// own-node task that finished its job; never while all of them run.
    pub async fn task_ended(&mut self) -> TaskEnded {
        loop {
            if self.tasks.is_empty() {
                return std::future::pending().await;
            }
            let (outcome, index, _) =
                futures::future::select_all(self.tasks.iter_mut().map(|task| &mut task.handle))
                    .await;
            let task = self.tasks.remove(index);
            if task.may_finish && matches!(outcome, Ok(Ok(()))) {
                continue;
            }
            return TaskEnded {
                task: task.name,
                how: how_it_ended(outcome),
            };
        }
    }

    /// Stops every task and waits for them; queued reports get a few seconds to go.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for mut task in self.tasks {
            match (&mut task.handle).await {
                Ok(Ok(())) => {}
                outcome => error!("The {} {}", task.name, how_it_ended(outcome)),
            }
        }
        if !self.reporter.flush(Duration::from_secs(5)).await {
            warn!("Some events or webhook posts were still queued at shutdown");
        }
    }
}

/// Runs `agent` until `stop` resolves (a signal) or a core task ends by itself; stops
/// every task either way. Err names the task that ended and how.
pub async fn supervise(
    mut agent: RunningAgent,
    stop: impl Future<Output = ()>,
) -> Result<(), TaskEnded> {
    let ended = tokio::select! {
        () = stop => None,
        ended = agent.task_ended() => Some(ended),
    };
    match ended {
        None => {
            info!("Signal received: stopping");
            agent.stop().await;
            Ok(())
        }
        Some(ended) => {
            error!("{ended}: exiting so that Kubernetes restarts the agent");
            agent.stop().await;
            Err(ended)
        }
    }
}

/// The probe fails only when the monitor has been silent longer than a poll can take
/// with IMDS gone (every attempt timing out, the capped back-off between them, the
/// longest wait after failed polls), plus one interval: a stale probe means a stuck
/// loop, never a slow IMDS, so the pod is not restarted mid-drain for it.
fn probe_staleness(imds: &ImdsClient, monitor: &MonitorSettings) -> Duration {
    monitor::longest_silence(imds, monitor).saturating_add(monitor.interval)
}

/// Flags and env vars → [`Config`], with the reporting settings also tried as start-up
/// would build them (headers JSON, template, proxy), so every problem is named at once.
pub fn configure(args: Args) -> Result<Config, ConfigError> {
    let report_problem = config::report_settings(&args)
        .validate()
        .err()
        .map(|error| error.to_string());
    match (Config::try_from(args), report_problem) {
        (Ok(config), None) => Ok(config),
        (Ok(_), Some(problem)) => Err(ConfigError {
            problems: vec![problem],
        }),
        (Err(mut error), problem) => {
            error.problems.extend(problem);
            Err(error)
        }
    }
}

/// Starts every part of the agent from `config`, talking through `clients`.
pub async fn start<A: AutoScaling + Clone + 'static>(
    config: &Config,
    clients: Clients<A>,
) -> Result<RunningAgent, StartError> {
    info!(
        "spot-guard {} starting: {config}",
        env!("CARGO_PKG_VERSION")
    );
    for setting in &config.ignored_settings {
        warn!("{setting} is set but has no effect in spot-guard");
    }
    for note in &config.fork_notes {
        warn!("{note}");
    }
    let Clients { kube, asg } = clients;

    let imds = ImdsClient::new(&config.metadata_url, config.metadata_tries)?;
    let mut node_metadata = NodeMetadata::new(&config.node_name);
    let instance = instance_metadata::read(&imds).await;
    match &instance {
        Ok(instance) => {
            info!(
                "Running on instance {} ({} {} in {})",
                instance.instance_id,
                instance.instance_life_cycle,
                instance.instance_type,
                instance.availability_zone
            );
            node_metadata = node_metadata.with_instance(instance);
        }
        Err(error) => warn!(
            "Cannot read this instance's metadata from IMDS at {} ({error}); is this an EC2 instance? Polling goes on, will report notices once IMDS answers, and reads the metadata again until it does",
            config.metadata_url
        ),
    }
    match NodeClient::new(kube.clone(), &config.node_name, config.dry_run)
        .get()
        .await
    {
        Ok(node) => {
            info!("Acting on node {}", config.node_name);
            node_metadata.node_uid = node.metadata.uid;
        }
        Err(error @ NodeError::NotFound { .. }) => return Err(StartError::NodeNotFound(error)),
        Err(error) => warn!(
            "Cannot read node {} yet ({error}); actions will be attempted when a notice comes",
            config.node_name
        ),
    }
    let instance_id = (!node_metadata.instance.instance_id.is_empty())
        .then(|| node_metadata.instance.instance_id.clone());
    let reporter = Reporter::start(&config.report, node_metadata, Some(kube.clone()))?;

    let shutdown = CancellationToken::new();
    let liveness = Liveness::default();
    let monitor_settings = MonitorSettings::from_config(config);
    let mut servers = Vec::new();
    if let Some(port) = config.prometheus_port {
        let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let listener = report::bind("metrics", address).await?;
        info!("Serving Prometheus metrics on {address}/metrics");
        servers.push(core_task(
            "metrics server",
            false,
            report::serve_metrics(
                listener,
                reporter.metrics().unwrap_or_default(),
                shutdown.clone(),
            ),
        ));
    }
    if let Some(probes) = &config.probes {
        let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, probes.port));
        let listener = report::bind("probes", address).await?;
        info!("Serving the liveness probe on {address}{}", probes.endpoint);
        servers.push(core_task(
            "probes server",
            false,
            report::serve_probes(
                listener,
                ProbeSettings {
                    endpoint: probes.endpoint.clone(),
                    max_staleness: probe_staleness(&imds, &monitor_settings),
                },
                liveness.clone(),
                shutdown.clone(),
            ),
        ));
    }

    let agent_settings = AgentSettings::from_config(config);
    let mut own_node_tasks = Vec::new();
    let spot_guard = match &config.spot_guard {
        Some(settings) => {
            let asg = asg.ok_or(StartError::NoAutoScaling)?;
            let spot_guard = SpotGuard::new(
                asg,
                kube.clone(),
                &config.node_name,
                instance_id,
                settings.clone(),
                config.dry_run,
                reporter.clone(),
            );
            own_node_tasks =
                spot_guard.own_node_tasks(kube.clone(), agent_settings.drain.clone(), &shutdown);
            spot_guard.check_setup().await;
            Some(spot_guard)
        }
        None => None,
    };
    if instance.is_err() {
        let (imds, reporter, shutdown) = (imds.clone(), reporter.clone(), shutdown.clone());
        let first_wait = config.tuning.poll_interval;
        own_node_tasks.push(tokio::spawn(async move {
            let read = instance_metadata::read_until_answered(&imds, first_wait, &shutdown);
            if let Some(instance) = read.await {
                reporter.set_instance(&instance);
            }
        }));
    }

    let (notices_tx, notices_rx) = mpsc::channel(16);
    let monitor = core_task(
        "IMDS monitor",
        false,
        monitor::run_reporting(
            imds,
            monitor_settings,
            notices_tx,
            shutdown.clone(),
            liveness,
            reporter.clone(),
        ),
    );
    let agent = Agent::new(agent_settings, kube, spot_guard)
        .with_reporter(reporter.clone())
        .with_rebalance_uncordon_window(config.rebalance_uncordon_window);
    let handled = agent.handled();
    let shutdown_agent = shutdown.clone();
    let agent = core_task("agent", false, async move {
        agent.run(notices_rx, shutdown_agent).await;
        Ok::<(), std::convert::Infallible>(())
    });
    let mut tasks = vec![agent];
    // Cluster Autoscaler protection and scale-back end by design once their job is done.
    tasks.extend(own_node_tasks.into_iter().map(|task| {
        let named = task.id();
        let handle = tokio::spawn(async move { task.await.map_err(|error| error.to_string()) });
        CoreTask::new("Spot Guard own-node task", true, named, handle)
    }));
    tasks.push(monitor);
    tasks.extend(servers);
    Ok(RunningAgent {
        shutdown,
        reporter,
        handled,
        tasks,
    })
}

/// The agent process: real clients from the environment, every part started by
/// [`start`], and a clean stop on SIGTERM or SIGINT.
pub async fn run(config: Config) -> ExitCode {
    if let Err(error) = crate::logging::init(&config.log_level, config.json_logging) {
        eprintln!("spot-guard: {error}");
        return ExitCode::from(2);
    }
    panic_exit::exit_on_panic();
    let kube = match node::connect().await {
        Ok(client) => client,
        Err(error) => {
            error!("Cannot build a Kubernetes client: {error}");
            return ExitCode::FAILURE;
        }
    };
    let asg = match &config.spot_guard {
        Some(_) => Some(
            AwsAutoScaling::from_environment(&AwsSettings {
                endpoint_url: None,
                max_attempts: config.aws_api_max_attempts,
            })
            .await,
        ),
        None => None,
    };
    let agent = match start(&config, Clients { kube, asg }).await {
        Ok(agent) => agent,
        Err(error) => {
            error!("{error}");
            return error.exit_code();
        }
    };
    match supervise(agent, wait_for_signal()).await {
        Ok(()) => {
            info!("spot-guard stopped");
            ExitCode::SUCCESS
        }
        Err(_) => ExitCode::FAILURE,
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                tokio::select! {
                    _ = sigterm.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                warn!("Cannot listen for SIGTERM ({error}); only SIGINT stops the agent");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Cli;

    #[test]
    fn the_probe_allows_a_whole_poll_with_imds_gone() {
        let every_path = MonitorSettings {
            interval: Duration::from_secs(2),
            rebalance: true,
            spot_interruption: true,
            scheduled_events: true,
            asg_lifecycle: true,
        };
        // By hand, from NTH's policy (2 s per attempt, sleeps of 2 s then 4 s for 3 tries)
        // and the caps (5 tries; sleeps 2, 4, 8, 8 s): a token request that times out (2 s),
        // four paths of all their attempts, then the longest back-off (8 intervals, 16 s).
        for (tries, poll_with_imds_gone) in [
            (3, 2 + 4 * (3 * 2 + 2 + 4) + 16),
            (5, 2 + 4 * (5 * 2 + 2 + 4 + 8 + 8) + 16),
        ] {
            let imds = ImdsClient::new("http://127.0.0.1:1", tries).expect("client");
            let staleness = probe_staleness(&imds, &every_path);
            assert!(
                staleness >= Duration::from_secs(poll_with_imds_gone),
                "{tries} tries: the probe fails after {staleness:?}, a poll can take {poll_with_imds_gone} s"
            );
            // Still a bound: a stuck loop is caught within minutes.
            assert!(staleness <= Duration::from_secs(180), "{staleness:?}");
        }
    }

    #[test]
    fn how_a_task_ended_is_named() {
        assert_eq!(how_it_ended(Ok(Ok(()))), "returned");
        assert_eq!(how_it_ended(Ok(Err("boom".to_owned()))), "failed: boom");
    }

    #[test]
    fn the_webhook_settings_debug_shows_no_credential() {
        let mut settings =
            crate::config::WebhookSettings::new("https://hooks.example.com/T1/B2/SECRETPATH");
        settings.headers = r#"{"Authorization":"Bearer SECRETHEADER"}"#.to_owned();
        settings.proxy = Some("http://user:SECRETPROXY@proxy:3128".to_owned());
        let shown = format!("{settings:?}");
        for secret in ["SECRETPATH", "SECRETHEADER", "SECRETPROXY"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn bad_webhook_headers_and_probe_path_are_refused_together_at_start() {
        let cli = Cli::try_parse_from([
            "spot-guard",
            "--node-name=n1",
            "--webhook-url=http://127.0.0.1:1/hook",
            "--webhook-headers=not json",
            "--enable-probes-server=true",
            "--probes-server-endpoint=healthz",
        ])
        .expect("flags parse");
        let message = configure(cli.args).expect_err("refused").to_string();
        assert!(message.contains("WEBHOOK_HEADERS"), "{message}");
        assert!(message.contains("PROBES_SERVER_ENDPOINT"), "{message}");
    }
}
