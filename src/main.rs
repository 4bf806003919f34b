use std::process::ExitCode;

use clap::Parser;
use spot_guard::config::{Cli, empty_option_env_vars};

fn main() -> ExitCode {
    spot_guard::tls::ensure_crypto_provider();
    // `spot-guard status` reads the fleet with the user's kubeconfig; anything else runs
    // the agent.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|first| first == "status")
    {
        return spot_guard::status::main(std::env::args_os().skip(1));
    }
    for name in empty_option_env_vars() {
        // SAFETY: no other thread exists yet; the runtime starts below.
        unsafe { std::env::remove_var(name) };
    }
    let cli = Cli::parse();
    let config = match spot_guard::run::configure(cli.args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("spot-guard: {error}");
            return ExitCode::from(2);
        }
    };
    // One thread: the agent's work is a poll every 2 s and, at most, a few hundred
    // concurrent requests in a drain, all waiting on the network. Fewer threads, fewer
    // stacks and malloc arenas (docs/PERFORMANCE.md).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(spot_guard::run::run(config)),
        Err(error) => {
            eprintln!("spot-guard: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}
