//! `spot-guard-sim` (`cargo simulate`): the whole agent, started as production starts
//! it, against in-process simulators of IMDS, both ASGs and the Kubernetes API. Not
//! part of the shipped image: built only with the `sim` feature.

use std::process::ExitCode;

use clap::Parser;
use spot_guard::sim::{fleet, scenarios};

#[derive(Debug, Parser)]
#[command(
    name = "spot-guard-sim",
    version,
    about = "Runs spot-guard against simulators of IMDS, both ASGs and the Kubernetes API and prints the log a user would see in `kubectl logs`"
)]
struct SimulateArgs {
    /// Run only this scenario (see --list).
    #[arg(long)]
    scenario: Option<String>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Log level of the simulated agent.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// One JSON object per log line, as with JSON_LOGGING.
    #[arg(long)]
    json_logging: bool,
    /// Instead of the scenarios: N agents on N nodes get a rebalance recommendation in
    /// the same second and share one spot ASG (exactly N replacements expected).
    #[arg(long, conflicts_with_all = ["scenario", "list"])]
    nodes: Option<usize>,
    /// Instead of the scenarios: a spot shortage buys an on-demand fallback, spot capacity
    /// returns, and the fallback's agent gives it back (exactly one termination expected).
    #[arg(long, conflicts_with_all = ["scenario", "list", "nodes"])]
    scale_back: bool,
    /// Instead of the scenarios: the agent is killed at each step of the flow and
    /// restarted (one scale-up per recommendation and a drained node expected).
    #[arg(long, conflicts_with_all = ["scenario", "list", "nodes", "scale_back"])]
    restarts: bool,
}

fn main() -> ExitCode {
    spot_guard::tls::ensure_crypto_provider();
    let args = SimulateArgs::parse();
    if args.list {
        scenarios::list();
        return ExitCode::SUCCESS;
    }
    if let Err(error) = spot_guard::logging::init(&args.log_level, args.json_logging) {
        eprintln!("spot-guard-sim: {error}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("spot-guard-sim: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        if let Some(nodes) = args.nodes {
            fleet::run(nodes).await
        } else if args.scale_back {
            fleet::run_scale_back().await
        } else if args.restarts {
            fleet::run_restarts().await
        } else {
            scenarios::run(args.scenario.as_deref()).await
        }
    })
}
