//! `spot-guard status`: the fleet at a glance, from what the agents write (Node
//! annotations, the Leases in their namespace) and nothing else, read with the user's
//! kubeconfig as kubectl does. [`rows`] turns the objects into rows (pure), [`table`]
//! prints them; `-o json` prints the rows for scripts; `--watch` redraws.

pub mod rows;
pub mod table;

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::SpotGuardSettings;
pub use rows::{Status, Step, status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "spot-guard status",
    about = "Shows what Spot Guard is doing on every node, each ASG's Lease and the on-demand instances it would give back, from the Node annotations and Leases the agents write"
)]
pub struct StatusArgs {
    /// The agents' namespace (where their Leases are): the chart's release namespace.
    #[arg(short, long, default_value = "kube-system")]
    pub namespace: String,
    /// The kubeconfig context to use (default: the current one).
    #[arg(long)]
    pub context: Option<String>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// Redraw every --interval seconds until interrupted.
    #[arg(short, long)]
    pub watch: bool,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: u64,
    /// The agents' SPOT_GUARD_CAPACITY_COOL_OFF in seconds, to show how long it has left.
    #[arg(long)]
    pub capacity_cool_off: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("reading the kubeconfig: {0}")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    #[error("building the Kubernetes client: {0}")]
    Config(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("listing {what}: {source}")]
    List {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("printing JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Runs `spot-guard status` with `argv` (its first item is `status`).
pub fn main(argv: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = match StatusArgs::try_parse_from(argv) {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("spot-guard status: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spot-guard status: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn client(args: &StatusArgs) -> Result<kube::Client, StatusError> {
    let config = match &args.context {
        None => kube::Config::infer().await.map_err(StatusError::Config)?,
        Some(context) => {
            let options = KubeConfigOptions {
                context: Some(context.clone()),
                ..KubeConfigOptions::default()
            };
            let kubeconfig = Kubeconfig::read().map_err(StatusError::Kubeconfig)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(StatusError::Kubeconfig)?
        }
    };
    crate::tls::ensure_crypto_provider();
    kube::Client::try_from(config).map_err(StatusError::Client)
}

/// The Nodes and the namespace's Leases, as the agents left them.
pub async fn read(
    client: &kube::Client,
    namespace: &str,
) -> Result<(Vec<Node>, Vec<Lease>), StatusError> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| StatusError::List {
            what: "Nodes".to_owned(),
            source,
        })?;
    let leases = Api::<Lease>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|source| StatusError::List {
            what: format!("Leases in namespace {namespace}"),
            source,
        })?;
    Ok((nodes.items, leases.items))
}

fn print(status: &Status, output: Output) -> Result<(), StatusError> {
    match output {
        Output::Table => print!("{}", table::tables(status)),
        Output::Json => println!("{}", serde_json::to_string_pretty(status)?),
    }
    Ok(())
}

async fn run(args: &StatusArgs) -> Result<(), StatusError> {
    let client = client(args).await?;
    let cool_off = args.capacity_cool_off.map_or_else(
        || SpotGuardSettings::new("", "").capacity_cool_off,
        Duration::from_secs,
    );
    loop {
        let (nodes, leases) = read(&client, &args.namespace).await?;
        let status = status(&nodes, &leases, SystemTime::now(), cool_off);
        if args.watch && args.output == Output::Table {
            // Clear the screen and go home, as `watch` does.
            print!("\x1b[2J\x1b[H");
        }
        print(&status, args.output)?;
        if !args.watch {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(args.interval)) => {}
        }
    }
}
