//! Footprint and speed of spot-guard, measured against the project's simulators on this
//! machine, printed as Markdown tables (docs/PERFORMANCE.md holds a run's figures).
//!
//! `cargo bench --bench footprint` runs every section; `-- idle drain` runs only the
//! sections whose names are given (idle-process, idle-poll, drain-rss, reaction,
//! throughput, pdb-pace, api-calls, size; a prefix matches). Without `--bench` (as under
//! `cargo test --all-targets`) each section runs once at toy sizes, to prove it works.
//! `SPOT_GUARD_BENCH_IDLE_SECS` sets the idle run of the real binary (default 90 s);
//! `SPOT_GUARD_BENCH_BINARY` names the binary the child-process sections run (default: the
//! one cargo built; `target/image/spot-guard` is the shipped one).
//!
//! Processes: the idle and drain-RSS figures are read from the real `spot-guard` binary
//! run as a child process, so the simulators' own memory is not counted; allocations and
//! CPU per poll are read on a thread that runs only the monitor; the reaction and API-call
//! figures run the agent in this process, started as production starts it (`run::start`,
//! through the simulators' harness); throughput runs the library's drain.
//!
//! Layout: [`alloc`] (the counting allocator), [`procfs`] (what the kernel says a process
//! used), [`inflight`] (a tower layer counting kube requests in flight), [`table`] (output),
//! [`world`] (simulators, the child binary, the in-process agent), [`floor`] (this
//! machine's floor for one poll, read beside the idle figures), then one module per
//! section or pair of sections.

mod alloc;
mod api_calls;
mod drain_rss;
mod floor;
mod idle;
mod inflight;
mod pdb_pace;
mod procfs;
mod reaction;
mod scale_back_rss;
mod size;
mod table;
mod throughput;
mod world;

use std::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

/// Full measurement under `cargo bench`, toy sizes otherwise.
struct Mode {
    full: bool,
}

fn wanted(filters: &[String], name: &str) -> bool {
    filters.is_empty() || filters.iter().any(|f| name.starts_with(f.as_str()))
}

fn main() -> Result<()> {
    spot_guard::tls::ensure_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = Mode {
        full: args.iter().any(|a| a == "--bench"),
    };
    let filters: Vec<String> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if !mode.full {
        println!("footprint: smoke run at toy sizes (cargo bench --bench footprint measures)");
    }
    let started = Instant::now();
    runtime.block_on(async {
        if wanted(&filters, "size") {
            size::size(&mode)?.print();
        }
        if wanted(&filters, "idle-poll") {
            idle::idle_poll(&mode).await?.print();
        }
        if wanted(&filters, "idle-process") {
            idle::idle_process(&mode).await?.print();
        }
        if wanted(&filters, "drain-rss") {
            drain_rss::drain_rss(&mode).await?.print();
        }
        if wanted(&filters, "api-calls") {
            api_calls::api_calls(&mode).await?.print();
        }
        if wanted(&filters, "reaction") {
            reaction::reaction(&mode).await?.print();
        }
        if wanted(&filters, "pdb-pace") {
            pdb_pace::pdb_pace(&mode).await?.print();
        }
        if wanted(&filters, "throughput") {
            throughput::throughput(&mode).await?.print();
        }
        if wanted(&filters, "scale-back-rss") {
            scale_back_rss::scale_back_rss(&mode).await?.print();
        }
        Ok::<(), BoxError>(())
    })?;
    println!("\n(total {:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}
