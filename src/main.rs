use std::process::ExitCode;

use clap::Parser;
use spot_guard::config::{Cli, Command, Config};

fn main() -> ExitCode {
    // kube, reqwest and the AWS SDK all use rustls; one process-wide provider avoids
    // the start-up panic when more than one could be picked.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    for name in spot_guard::config::empty_option_env_vars() {
        // SAFETY: no other thread exists yet; the runtime starts below.
        unsafe { std::env::remove_var(name) };
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("spot-guard: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Simulate(args)) => runtime.block_on(spot_guard::sim::scenarios::run(args)),
        None => match Config::try_from(cli.args) {
            Ok(config) => runtime.block_on(spot_guard::run::run(config)),
            Err(error) => {
                eprintln!("spot-guard: {error}");
                ExitCode::from(2)
            }
        },
    }
}
