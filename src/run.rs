//! The agent process: real clients from the configuration, the monitor, the agent and
//! the metrics and probes servers as tasks, and a clean stop on SIGTERM or SIGINT.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::agent::{Agent, AgentSettings};
use crate::aws::{AwsAutoScaling, AwsSettings};
use crate::config::Config;
use crate::imds::ImdsClient;
use crate::monitor::{self, DEFAULT_POLL_INTERVAL, Liveness, MonitorSettings};
use crate::node::{self, NodeClient, NodeError};
use crate::report::{self, NodeMetadata, ProbeSettings, Reporter};
use crate::spot_guard::{Fleet, SpotGuard};

/// IMDS answers within 2 s per try, and failed polls back off up to 8 intervals: a
/// probe older than this means the loop is stuck, not just IMDS being slow.
fn probe_staleness(metadata_tries: u32) -> Duration {
    DEFAULT_POLL_INTERVAL * 3 + Duration::from_secs(2) * metadata_tries + DEFAULT_POLL_INTERVAL * 8
}

pub async fn run(config: Config) -> ExitCode {
    if let Err(error) = crate::logging::init(&config.log_level, config.json_logging) {
        eprintln!("spot-guard: {error}");
        return ExitCode::from(2);
    }
    info!(
        "spot-guard {} starting: {config}",
        env!("CARGO_PKG_VERSION")
    );
    for setting in &config.ignored_settings {
        warn!("{setting} is set but has no effect in spot-guard");
    }

    let imds = match ImdsClient::new(&config.metadata_url, config.metadata_tries) {
        Ok(imds) => imds,
        Err(error) => {
            error!("{error}");
            return ExitCode::from(2);
        }
    };
    let mut node_metadata = NodeMetadata::new(&config.node_name);
    match imds.instance_id().await {
        Ok(instance_id) => {
            info!("Running on instance {instance_id}");
            node_metadata.instance_id = instance_id;
        }
        Err(error) => warn!(
            "Cannot read this instance's id from IMDS at {} ({error}); is this an EC2 instance? Polling goes on and will report notices once IMDS answers",
            config.metadata_url
        ),
    }

    let kube = match node::connect().await {
        Ok(client) => client,
        Err(error) => {
            error!("Cannot build a Kubernetes client: {error}");
            return ExitCode::FAILURE;
        }
    };
    match NodeClient::new(kube.clone(), &config.node_name, config.dry_run)
        .get()
        .await
    {
        Ok(node) => {
            info!("Acting on node {}", config.node_name);
            node_metadata.node_uid = node.metadata.uid;
        }
        Err(error @ NodeError::NotFound { .. }) => {
            error!("{error}; check NODE_NAME (the chart sets it from spec.nodeName)");
            return ExitCode::FAILURE;
        }
        Err(error) => warn!(
            "Cannot read node {} yet ({error}); actions will be attempted when a notice comes",
            config.node_name
        ),
    }

    let instance_id =
        (!node_metadata.instance_id.is_empty()).then(|| node_metadata.instance_id.clone());
    let reporter = match Reporter::start(&config.report, node_metadata, Some(kube.clone())) {
        Ok(reporter) => reporter,
        Err(error) => {
            error!("Cannot set up reporting: {error}");
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    let liveness = Liveness::default();
    let mut servers = Vec::new();
    if let Some(port) = config.prometheus_port {
        let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        match report::bind("metrics", address).await {
            Ok(listener) => {
                info!("Serving Prometheus metrics on {address}/metrics");
                servers.push(tokio::spawn(report::serve_metrics(
                    listener,
                    reporter.metrics().unwrap_or_default(),
                    shutdown.clone(),
                )));
            }
            Err(error) => {
                error!("{error}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(probes) = &config.probes {
        let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, probes.port));
        match report::bind("probes", address).await {
            Ok(listener) => {
                info!("Serving the liveness probe on {address}{}", probes.endpoint);
                servers.push(tokio::spawn(report::serve_probes(
                    listener,
                    ProbeSettings {
                        endpoint: probes.endpoint.clone(),
                        max_staleness: probe_staleness(config.metadata_tries),
                    },
                    liveness.clone(),
                    shutdown.clone(),
                )));
            }
            Err(error) => {
                error!("{error}");
                return ExitCode::FAILURE;
            }
        }
    }

    let agent_settings = AgentSettings::from_config(&config);
    let mut own_node_tasks = Vec::new();
    let spot_guard = match &config.spot_guard {
        Some(spot_guard_config) => {
            let aws = AwsAutoScaling::from_environment(&AwsSettings {
                endpoint_url: None,
                max_attempts: config.aws_api_max_attempts,
            })
            .await;
            let mut spot_guard =
                SpotGuard::new(aws.clone(), spot_guard_config.clone(), config.dry_run)
                    .with_reporter(reporter.clone());
            if let Some(fleet) = &config.spot_guard_fleet {
                let fleet = Fleet::new(kube.clone(), &config.node_name, instance_id, fleet.clone());
                own_node_tasks = fleet.own_node_tasks(
                    aws.clone(),
                    kube.clone(),
                    spot_guard_config,
                    agent_settings.drain.clone(),
                    config.dry_run,
                    reporter.clone(),
                    &shutdown,
                );
                spot_guard = spot_guard.with_fleet(fleet);
            }
            spot_guard.check_setup().await;
            Some(spot_guard)
        }
        None => None,
    };

    let (notices_tx, notices_rx) = mpsc::channel(16);
    let monitor = tokio::spawn(monitor::run_reporting(
        imds,
        MonitorSettings {
            rebalance: config.enable_rebalance_monitoring,
            spot_interruption: config.enable_spot_interruption_draining,
            scheduled_events: config.enable_scheduled_event_draining,
            asg_lifecycle: config.enable_asg_lifecycle_draining,
            ..MonitorSettings::default()
        },
        notices_tx,
        shutdown.clone(),
        liveness,
        reporter.clone(),
    ));
    let agent = Agent::new(agent_settings, kube, spot_guard)
        .with_reporter(reporter.clone())
        .with_rebalance_uncordon_window(config.rebalance_uncordon_window);
    let agent = tokio::spawn(agent.run(notices_rx, shutdown.clone()));

    wait_for_signal().await;
    info!("Signal received: stopping");
    shutdown.cancel();
    let _ = agent.await;
    for task in own_node_tasks {
        let _ = task.await;
    }
    match monitor.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => error!("Monitor stopped with an error: {error}"),
        Err(error) => error!("Monitor task failed: {error}"),
    }
    for server in servers {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => error!("{error}"),
            Err(error) => error!("Server task failed: {error}"),
        }
    }
    if !reporter.flush(Duration::from_secs(5)).await {
        warn!("Some events or webhook posts were still queued at shutdown");
    }
    info!("spot-guard stopped");
    ExitCode::SUCCESS
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
