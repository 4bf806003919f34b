//! The agent process: real clients from the configuration, the monitor and the agent
//! as tasks, and a clean stop on SIGTERM or SIGINT.

use std::process::ExitCode;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::agent::{Agent, AgentSettings};
use crate::aws::{AwsAutoScaling, AwsSettings};
use crate::config::Config;
use crate::imds::ImdsClient;
use crate::monitor::{self, MonitorSettings};
use crate::node::{self, NodeClient, NodeError};
use crate::spot_guard::SpotGuard;

pub async fn run(config: Config) -> ExitCode {
    if let Err(error) = crate::logging::init(&config.log_level, config.json_logging) {
        eprintln!("spot-guard: {error}");
        return ExitCode::from(2);
    }
    info!(
        "spot-guard {} starting: {config}",
        env!("CARGO_PKG_VERSION")
    );

    let imds = match ImdsClient::new(&config.metadata_url, config.metadata_tries) {
        Ok(imds) => imds,
        Err(error) => {
            error!("{error}");
            return ExitCode::from(2);
        }
    };
    match imds.instance_id().await {
        Ok(instance_id) => info!("Running on instance {instance_id}"),
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
        Ok(_) => info!("Acting on node {}", config.node_name),
        Err(error @ NodeError::NotFound { .. }) => {
            error!("{error}; check NODE_NAME (the chart sets it from spec.nodeName)");
            return ExitCode::FAILURE;
        }
        Err(error) => warn!(
            "Cannot read node {} yet ({error}); actions will be attempted when a notice comes",
            config.node_name
        ),
    }

    let spot_guard = match &config.spot_guard {
        Some(spot_guard_config) => {
            let aws = AwsAutoScaling::from_environment(&AwsSettings {
                endpoint_url: None,
                max_attempts: config.aws_api_max_attempts,
            })
            .await;
            let spot_guard = SpotGuard::new(aws, spot_guard_config.clone(), config.dry_run);
            spot_guard.check_setup().await;
            Some(spot_guard)
        }
        None => None,
    };

    let shutdown = CancellationToken::new();
    let (notices_tx, notices_rx) = mpsc::channel(16);
    let monitor = tokio::spawn(monitor::run(
        imds,
        MonitorSettings {
            rebalance: config.enable_rebalance_monitoring,
            spot_interruption: config.enable_spot_interruption_draining,
            ..MonitorSettings::default()
        },
        notices_tx,
        shutdown.clone(),
    ));
    let agent = Agent::new(AgentSettings::from_config(&config), kube, spot_guard);
    let agent = tokio::spawn(agent.run(notices_rx, shutdown.clone()));

    wait_for_signal().await;
    info!("Signal received: stopping");
    shutdown.cancel();
    let _ = agent.await;
    match monitor.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => error!("Monitor stopped with an error: {error}"),
        Err(error) => error!("Monitor task failed: {error}"),
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
