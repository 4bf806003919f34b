//! Footprint and speed of spot-guard, measured against the project's simulators on this
//! machine, printed as Markdown tables (docs/PERFORMANCE.md holds a run's figures).
//!
//! `cargo bench --bench footprint` runs every section; `-- idle drain` runs only the
//! sections whose names are given (idle-process, idle-poll, drain-rss, reaction,
//! throughput, api-calls, size; a prefix matches). Without `--bench` (as under
//! `cargo test --all-targets`) each section runs once at toy sizes, to prove it works.
//! `SPOT_GUARD_BENCH_IDLE_SECS` sets the idle run of the real binary (default 90 s).
//!
//! Processes: the idle and drain-RSS figures are read from the real `spot-guard` binary
//! run as a child process, so the simulators' own memory is not counted; allocations and
//! CPU per poll are read on a thread that runs only the monitor; the other figures run the
//! library's agent, drain and Spot Guard in this process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, EvictParams};
use spot_guard::agent::{Agent, AgentSettings};
use spot_guard::aws::{AwsAutoScaling, AwsSettings};
use spot_guard::config::SpotGuardConfig;
use spot_guard::drain::{self, DrainSettings};
use spot_guard::flow::{ActionSettings, REBALANCE_TAINT, SPOT_ITN_TAINT};
use spot_guard::imds::{ImdsClient, REBALANCE_RECOMMENDATION_PATH, SPOT_INSTANCE_ACTION_PATH};
use spot_guard::monitor::{self, MonitorSettings};
use spot_guard::node::TaintEffect;
use spot_guard::sim::asg::{AsgSim, Behaviour, GroupSpec};
use spot_guard::sim::imds::ImdsSim;
use spot_guard::sim::kube::{FakeKube, FakePod, Termination};
use spot_guard::spot_guard::SpotGuard;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

const NODE: &str = "ip-10-0-1-1.ec2.internal";
const BOUND: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------
// Allocation counting: only on threads that opted in (the monitor's thread).

struct CountingAllocator;

thread_local! {
    static COUNT_HERE: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

fn count(size: usize) {
    if COUNT_HERE.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

// ---------------------------------------------------------------------------------------
// Output.

#[derive(Default)]
struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(title: &str, header: &[&str]) -> Table {
        Table {
            title: title.to_owned(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn print(&self) {
        println!("\n### {}\n", self.title);
        println!("| {} |", self.header.join(" | "));
        println!("|{}", "---|".repeat(self.header.len()));
        for row in &self.rows {
            println!("| {} |", row.join(" | "));
        }
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// /proc readers.

/// A `kB` field of /proc/<pid>/status (VmRSS, VmHWM …), in KiB.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text
        .lines()
        .find(|line| line.starts_with(&format!("{field}:")))
        .ok_or_else(|| format!("{field} missing from /proc/{pid}/status"))?;
    let value = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| format!("no value in {line:?}"))?;
    Ok(value.parse()?)
}

/// utime + stime of a process from /proc/<pid>/stat, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11).ok_or("no utime")?.parse()?;
    let stime: u64 = fields.get(12).ok_or("no stime")?.parse()?;
    Ok(utime + stime)
}

fn tick() -> Duration {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Duration::from_secs_f64(1.0 / per_second.max(1) as f64)
}

/// CPU time of every waited-for child process, at microsecond resolution.
fn children_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// CPU time a thread has used, at nanosecond resolution.
fn thread_cpu(thread: libc::pthread_t) -> Result<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the thread is alive (joined only after the last reading).
    let found = unsafe { libc::pthread_getcpuclockid(thread, &mut clock) };
    if found != 0 {
        return Err(format!("pthread_getcpuclockid failed: {found}").into());
    }
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock is a valid clock id and time is ours.
    if unsafe { libc::clock_gettime(clock, &mut time) } != 0 {
        return Err("clock_gettime failed".into());
    }
    Ok(Duration::new(time.tv_sec as u64, time.tv_nsec as u32))
}

// ---------------------------------------------------------------------------------------
// Simulators and the real binary.

struct World {
    imds: ImdsSim,
    asg: AsgSim,
    kube: FakeKube,
    dir: tempfile::TempDir,
}

async fn world(pods: usize, launch_delay: Duration) -> Result<World> {
    let imds = ImdsSim::start().await?;
    let asg = AsgSim::start().await?;
    let kube = FakeKube::start().await?;
    for name in ["spot", "on-demand"] {
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
    add_pods(&kube, pods);
    kube.add_pod(FakePod::new("kube-system", "spot-guard-agent", NODE).daemon_set());
    Ok(World {
        imds,
        asg,
        kube,
        dir: tempfile::tempdir()?,
    })
}

fn add_pods(kube: &FakeKube, pods: usize) {
    for i in 0..pods {
        kube.add_pod(
            FakePod::new("default", &format!("web-{i:04}"), NODE).with_label("app", "web"),
        );
    }
}

fn spawn_binary(world: &World, extra_env: &[(&str, &str)]) -> Result<Child> {
    let kubeconfig = world.dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
            world.kube.url()
        ),
    )?;
    let log = std::fs::File::create(world.dir.path().join("agent.log"))?;
    let mut command = Command::new(env!("CARGO_BIN_EXE_spot-guard"));
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

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > BOUND {
            return Err(format!("timed out waiting until {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn stop_child(child: &mut Child) -> Result<()> {
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

// ---------------------------------------------------------------------------------------
// Sections.

struct Mode {
    full: bool,
}

/// The real binary polling IMDS at its real 2 s interval with Spot Guard on.
async fn idle_process(mode: &Mode) -> Result<Table> {
    let seconds: u64 = if mode.full {
        std::env::var("SPOT_GUARD_BENCH_IDLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(90)
    } else {
        2
    };
    let world = world(0, Duration::from_millis(100)).await?;
    let cpu_before_child = children_cpu();
    let mut child = spawn_binary(
        &world,
        &[
            ("ENABLE_SPOT_GUARD", "true"),
            ("SPOT_ASG_NAME", "spot"),
            ("ON_DEMAND_ASG_NAME", "on-demand"),
            ("ENABLE_REBALANCE_MONITORING", "true"),
            ("ENABLE_REBALANCE_DRAINING", "true"),
        ],
    )?;
    let pid = child.id();
    let polls = || world.imds.gets(REBALANCE_RECOMMENDATION_PATH);
    wait_until("the agent polls IMDS", || polls() >= 2).await?;
    let (rss_start, ticks_start, polls_start) =
        (status_kib(pid, "VmRSS")?, cpu_ticks(pid)?, polls());
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = started.elapsed();
    let (rss_end, hwm, ticks_end, polls_end) = (
        status_kib(pid, "VmRSS")?,
        status_kib(pid, "VmHWM")?,
        cpu_ticks(pid)?,
        polls(),
    );
    stop_child(&mut child).await?;
    let total_cpu = children_cpu().saturating_sub(cpu_before_child);
    let polls = (polls_end - polls_start).max(1);
    let cpu = tick() * u32::try_from(ticks_end - ticks_start)?;
    let growth_per_10_min = (rss_end as f64 - rss_start as f64) * 600.0 / elapsed.as_secs_f64();
    let gets_per_poll = world.imds.gets(SPOT_INSTANCE_ACTION_PATH) as f64 > 0.0;
    let mut table = Table::new(
        &format!(
            "Idle footprint of the release binary, real 2 s poll, Spot Guard on ({:.0} s measured)",
            elapsed.as_secs_f64()
        ),
        &["figure", "value", "goal"],
    );
    table.row(vec![
        "polls measured".into(),
        polls.to_string(),
        String::new(),
    ]);
    table.row(vec![
        "RSS after the first polls".into(),
        mib(rss_start),
        "≤ 10 MiB".into(),
    ]);
    table.row(vec![
        format!("RSS after {:.0} s", elapsed.as_secs_f64()),
        mib(rss_end),
        "≤ 10 MiB".into(),
    ]);
    table.row(vec![
        "peak RSS (VmHWM, start-up included)".into(),
        mib(hwm),
        String::new(),
    ]);
    table.row(vec![
        "RSS growth, extrapolated to 10 min".into(),
        format!("{:+.0} KiB", growth_per_10_min),
        String::new(),
    ]);
    table.row(vec![
        "CPU per poll (/proc ticks over the window)".into(),
        format!("{:.3} ms", cpu.as_secs_f64() * 1000.0 / polls as f64),
        "≤ 0.5 ms".into(),
    ]);
    table.row(vec![
        "CPU for the whole run, start-up and shutdown included (getrusage)".into(),
        ms(total_cpu),
        String::new(),
    ]);
    table.row(vec![
        "IMDS paths read per poll".into(),
        if gets_per_poll {
            "3 (spot ITN, scheduled events, rebalance)"
        } else {
            "?"
        }
        .into(),
        String::new(),
    ]);
    Ok(table)
}

/// The monitor alone on its own thread: allocations and CPU per poll.
async fn idle_poll(mode: &Mode) -> Result<Table> {
    let polls_wanted: u64 = if mode.full { 1000 } else { 20 };
    let imds = ImdsSim::start().await?;
    let client = ImdsClient::new(&imds.url(), 3)?;
    let shutdown = CancellationToken::new();
    let thread = std::thread::spawn({
        let shutdown = shutdown.clone();
        move || -> Result<(), String> {
            COUNT_HERE.with(|c| c.set(true));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let (tx, mut rx) = mpsc::channel(16);
            runtime.block_on(async move {
                let drain_notices = tokio::spawn(async move { while rx.recv().await.is_some() {} });
                let outcome = monitor::run(
                    client,
                    MonitorSettings {
                        interval: Duration::from_millis(10),
                        rebalance: true,
                        spot_interruption: true,
                        scheduled_events: true,
                        asg_lifecycle: false,
                    },
                    tx,
                    shutdown,
                )
                .await;
                drain_notices.abort();
                outcome.map_err(|e| e.to_string())
            })
        }
    });
    let pthread = std::os::unix::thread::JoinHandleExt::as_pthread_t(&thread);
    let polls = || imds.gets(REBALANCE_RECOMMENDATION_PATH);
    wait_until("warm-up polls", || polls() >= 20).await?;
    let (a0, b0, c0, p0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATED_BYTES.load(Ordering::Relaxed),
        thread_cpu(pthread)?,
        polls(),
    );
    wait_until("measured polls", || polls() >= p0 + polls_wanted).await?;
    let (a1, b1, c1, p1) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATED_BYTES.load(Ordering::Relaxed),
        thread_cpu(pthread)?,
        polls(),
    );
    shutdown.cancel();
    thread
        .join()
        .map_err(|_| "monitor thread panicked")?
        .map_err(|e| format!("monitor: {e}"))?;
    let n = (p1 - p0).max(1) as f64;
    let mut table = Table::new(
        &format!(
            "One poll of the monitor (IMDSv2, 3 paths), {} polls on a thread of its own",
            p1 - p0
        ),
        &["figure", "value", "goal"],
    );
    table.row(vec![
        "allocations per poll".into(),
        format!("{:.0}", (a1 - a0) as f64 / n),
        "(none set)".into(),
    ]);
    table.row(vec![
        "bytes allocated per poll".into(),
        format!("{:.0}", (b1 - b0) as f64 / n),
        String::new(),
    ]);
    table.row(vec![
        "CPU per poll (thread CPU clock)".into(),
        format!("{:.3} ms", (c1 - c0).as_secs_f64() * 1000.0 / n),
        "≤ 0.5 ms".into(),
    ]);
    Ok(table)
}

/// Peak RSS of the release binary while it drains 1000 pods for a spot interruption.
async fn drain_rss(mode: &Mode) -> Result<Table> {
    let pods = if mode.full { 1000 } else { 20 };
    let world = world(pods, Duration::from_millis(100)).await?;
    world.kube.set_latency(Duration::from_millis(5));
    let mut child = spawn_binary(&world, &[("TAINT_NODE", "true")])?;
    let pid = child.id();
    wait_until("the agent polls IMDS", || {
        world.imds.gets(SPOT_INSTANCE_ACTION_PATH) >= 2
    })
    .await?;
    let rss_before = status_kib(pid, "VmRSS")?;
    let hwm_before = status_kib(pid, "VmHWM")?;
    world
        .imds
        .set_spot_action(Some(("terminate", "2026-11-24T10:02:00Z")));
    let started = Instant::now();
    let mut sampled_peak = rss_before;
    let only_agent_left = || world.kube.pods_on_node(NODE).len() == 1;
    while !only_agent_left() {
        if started.elapsed() > BOUND {
            return Err("the drain did not finish".into());
        }
        sampled_peak = sampled_peak.max(status_kib(pid, "VmRSS")?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained_in = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hwm = status_kib(pid, "VmHWM")?;
    let rss_after = status_kib(pid, "VmRSS")?;
    stop_child(&mut child).await?;
    let mut table = Table::new(
        &format!("Release binary draining {pods} pods (spot interruption, fake API at 5 ms)"),
        &["figure", "value", "goal"],
    );
    table.row(vec![
        "RSS before the notice".into(),
        mib(rss_before),
        String::new(),
    ]);
    table.row(vec![
        "peak RSS before the notice (VmHWM)".into(),
        mib(hwm_before),
        String::new(),
    ]);
    table.row(vec![
        "peak RSS, drain included (VmHWM)".into(),
        mib(hwm),
        "≤ 24 MiB".into(),
    ]);
    table.row(vec![
        "highest RSS sampled every 20 ms during the drain".into(),
        mib(sampled_peak),
        String::new(),
    ]);
    table.row(vec![
        "RSS 0.5 s after the drain".into(),
        mib(rss_after),
        String::new(),
    ]);
    table.row(vec![
        "notice set → last pod gone".into(),
        secs(drained_in),
        String::new(),
    ]);
    Ok(table)
}

fn agent_settings(drain_timeout: Duration, spot_guard: bool, taint_node: bool) -> AgentSettings {
    AgentSettings {
        node_name: NODE.into(),
        dry_run: false,
        actions: ActionSettings {
            spot_guard,
            taint_node,
            taint_effect: TaintEffect::NoSchedule,
            cordon_only: false,
            enable_rebalance_draining: true,
            exclude_from_load_balancers: false,
            enable_out_of_service_taint: false,
        },
        drain: DrainSettings {
            timeout: drain_timeout,
            ..DrainSettings::default()
        },
        uptime_file: "/proc/uptime".into(),
    }
}

struct RunningAgent {
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningAgent {
    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

fn start_agent(
    world: &World,
    interval: Duration,
    spot_guard: Option<Duration>,
    taint_node: bool,
) -> Result<RunningAgent> {
    let imds = ImdsClient::new(&world.imds.url(), 3)?;
    let kube = spot_guard::node::client_for_url(&world.kube.url())?;
    let guard = spot_guard.map(|check_interval| {
        SpotGuard::new(
            AwsAutoScaling::for_endpoint(
                world.asg.url(),
                "us-east-1",
                &AwsSettings {
                    endpoint_url: None,
                    max_attempts: 3,
                },
            ),
            SpotGuardConfig {
                spot_asg_name: "spot".into(),
                on_demand_asg_name: "on-demand".into(),
                scale_timeout: Duration::from_secs(120),
                capacity_check_timeout: Duration::from_secs(120),
                check_interval,
            },
            false,
        )
    });
    let settings = agent_settings(Duration::from_secs(60), guard.is_some(), taint_node);
    let agent = Agent::new(settings, kube, guard);
    let shutdown = CancellationToken::new();
    let (tx, rx) = mpsc::channel(16);
    let monitor = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let _ = monitor::run(
                imds,
                MonitorSettings {
                    interval,
                    ..MonitorSettings::default()
                },
                tx,
                shutdown,
            )
            .await;
        }
    });
    let agent = tokio::spawn(agent.run(rx, shutdown.clone()));
    Ok(RunningAgent {
        shutdown,
        tasks: vec![monitor, agent],
    })
}

fn has_taint(kube: &FakeKube, key: &str) -> bool {
    kube.node(NODE)
        .and_then(|node| node.spec)
        .and_then(|spec| spec.taints)
        .is_some_and(|taints| taints.iter().any(|taint| taint.key == key))
}

/// A small deterministic generator, so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fraction(&mut self) -> f64 {
        (self.next() % 10_000) as f64 / 10_000.0
    }
}

/// Name, samples, and with Spot Guard on: (launch delay, check interval).
type ReactionCase = (String, usize, Option<(Duration, Duration)>);

struct Latency {
    to_poll: Duration,
    to_taint: Duration,
    in_service_to_taint: Option<Duration>,
}

async fn one_reaction(
    interval: Duration,
    spot_guard: Option<(Duration, Duration)>,
    rng: &mut Rng,
) -> Result<Latency> {
    let launch_delay = spot_guard.map_or(Duration::from_millis(100), |(delay, _)| delay);
    let world = world(3, launch_delay).await?;
    let running = start_agent(&world, interval, spot_guard.map(|(_, check)| check), true)?;
    let path = if spot_guard.is_some() {
        REBALANCE_RECOMMENDATION_PATH
    } else {
        SPOT_INSTANCE_ACTION_PATH
    };
    wait_until("the first poll", || world.imds.gets(path) >= 1).await?;
    // A notice lands anywhere in the poll cycle.
    tokio::time::sleep(interval.mul_f64(rng.fraction())).await;
    let polls_before = world.imds.gets(path);
    let set_at = Instant::now();
    let taint = if spot_guard.is_some() {
        world.imds.set_rebalance(Some("2026-11-24T10:00:00Z"));
        REBALANCE_TAINT
    } else {
        world
            .imds
            .set_spot_action(Some(("terminate", "2026-11-24T10:02:00Z")));
        SPOT_ITN_TAINT
    };
    let mut to_poll = None;
    while !has_taint(&world.kube, taint) {
        if to_poll.is_none() && world.imds.gets(path) > polls_before {
            to_poll = Some(set_at.elapsed());
        }
        if set_at.elapsed() > BOUND {
            return Err("no taint".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let to_taint = set_at.elapsed();
    let tainted_wall = SystemTime::now();
    let in_service_to_taint = match spot_guard {
        Some((delay, _)) => {
            let scaled = world
                .asg
                .calls_of("SetDesiredCapacity")
                .first()
                .map(|call| call.at)
                .ok_or("no scale-up")?;
            Some(tainted_wall.duration_since(scaled + delay)?)
        }
        None => None,
    };
    running.stop().await;
    Ok(Latency {
        to_poll: to_poll.unwrap_or(to_taint),
        to_taint,
        in_service_to_taint,
    })
}

async fn reaction(mode: &Mode) -> Result<Table> {
    let interval = if mode.full {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(200)
    };
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut table = Table::new(
        &format!(
            "Reaction latency: notice set in IMDS → taint on the node in the fake API (poll interval {})",
            ms(interval)
        ),
        &[
            "case",
            "samples",
            "notice → next poll (mean / max)",
            "notice → taint (mean / max)",
            "InService → taint (mean / max)",
            "goal",
        ],
    );
    let cases: Vec<ReactionCase> = if mode.full {
        vec![
            ("spot ITN, Spot Guard off".into(), 6, None),
            (
                "rebalance, Spot Guard on, launch 3 s, check every 1 s".into(),
                3,
                Some((Duration::from_secs(3), Duration::from_secs(1))),
            ),
            (
                "rebalance, Spot Guard on, launch 3 s, check every 10 s (default)".into(),
                2,
                Some((Duration::from_secs(3), Duration::from_secs(10))),
            ),
        ]
    } else {
        vec![
            ("spot ITN, Spot Guard off".into(), 1, None),
            (
                "rebalance, Spot Guard on".into(),
                1,
                Some((Duration::from_millis(200), Duration::from_millis(100))),
            ),
        ]
    };
    for (name, samples, spot_guard) in cases {
        let mut runs = Vec::new();
        for _ in 0..samples {
            runs.push(one_reaction(interval, spot_guard, &mut rng).await?);
        }
        let stats = |values: Vec<Duration>| {
            let max = values.iter().max().copied().unwrap_or_default();
            let mean =
                values.iter().sum::<Duration>() / u32::try_from(values.len().max(1)).unwrap_or(1);
            format!("{} / {}", ms(mean), ms(max))
        };
        let in_service: Vec<Duration> = runs.iter().filter_map(|r| r.in_service_to_taint).collect();
        table.row(vec![
            name,
            samples.to_string(),
            stats(runs.iter().map(|r| r.to_poll).collect()),
            stats(runs.iter().map(|r| r.to_taint).collect()),
            if in_service.is_empty() {
                "–".into()
            } else {
                stats(in_service)
            },
            if spot_guard.is_some() {
                "InService → taint ≤ interval + 100 ms".into()
            } else {
                "≤ interval + 100 ms".into()
            },
        ]);
    }
    Ok(table)
}

// --- Drain throughput ---------------------------------------------------------------------

/// Counts requests in flight through the kube client, and the most seen at once.
#[derive(Clone, Default)]
struct InFlight {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl<S> tower::Layer<S> for InFlight {
    type Service = InFlightService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InFlightService {
            inner,
            counter: self.clone(),
        }
    }
}

#[derive(Clone)]
struct InFlightService<S> {
    inner: S,
    counter: InFlight,
}

impl<S, R> tower::Service<R> for InFlightService<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let now = self.counter.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.counter.max.fetch_max(now, Ordering::SeqCst);
        let counter = self.counter.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let answer = response.await;
            counter.now.fetch_sub(1, Ordering::SeqCst);
            answer
        })
    }
}

/// A client like the agent's (kube's own retries off, same timeouts) that counts in-flight requests.
fn counting_client(url: &str, counter: &InFlight) -> Result<kube::Client> {
    let mut config = kube::Config::new(url.parse()?);
    config.default_retry = false;
    config.read_timeout = Some(Duration::from_secs(20));
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(counter)
        .build())
}

struct DrainCase {
    pods: usize,
    latency: Duration,
    pdb: bool,
}

const PDB_TERMINATION: Duration = Duration::from_millis(200);
const PDB_RETRY: Duration = Duration::from_secs(1);

async fn drain_fixture(case: &DrainCase, pods: usize) -> Result<FakeKube> {
    let kube = FakeKube::start().await?;
    kube.add_node(NODE);
    add_pods(&kube, pods);
    if case.pdb {
        // Budget of a fifth of the pods; each evicted pod takes 200 ms to terminate.
        kube.add_pdb(
            "default",
            "web",
            &[("app", "web")],
            (case.pods / 5).max(1) as u32,
        );
        kube.set_termination(Termination::After(PDB_TERMINATION));
    }
    kube.set_latency(case.latency);
    Ok(kube)
}

async fn concurrent_drain(
    case: &DrainCase,
    concurrency: usize,
) -> Result<(Duration, usize, usize)> {
    let kube = drain_fixture(case, case.pods).await?;
    let counter = InFlight::default();
    let client = counting_client(&kube.url(), &counter)?;
    let settings = DrainSettings {
        timeout: Duration::from_secs(600),
        max_concurrent_evictions: concurrency,
        eviction_retry_interval: if case.pdb {
            PDB_RETRY
        } else {
            DrainSettings::default().eviction_retry_interval
        },
        ..DrainSettings::default()
    };
    let started = Instant::now();
    let report = drain::drain(&client, NODE, &settings, false).await?;
    let took = started.elapsed();
    if !report.is_complete() || report.evicted.len() != case.pods {
        return Err(format!("drain incomplete: {report:?}").into());
    }
    Ok((
        took,
        counter.max.load(Ordering::SeqCst),
        kube.requests().len(),
    ))
}

/// What a naive agent does: evict one pod, wait until it is gone, then the next.
async fn serial_drain(case: &DrainCase, pods: usize) -> Result<Duration> {
    let kube = drain_fixture(case, pods).await?;
    let client = spot_guard::node::client_for_url(&kube.url())?;
    let api: Api<Pod> = Api::namespaced(client, "default");
    let started = Instant::now();
    for i in 0..pods {
        let name = format!("web-{i:04}");
        loop {
            match api.evict(&name, &EvictParams::default()).await {
                Ok(_) => break,
                Err(kube::Error::Api(status)) if status.code == 429 => {
                    tokio::time::sleep(PDB_RETRY).await
                }
                Err(error) => return Err(error.into()),
            }
        }
        while api.get_opt(&name).await?.is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(started.elapsed())
}

async fn throughput(mode: &Mode) -> Result<Table> {
    let sizes: &[usize] = if mode.full { &[10, 100, 1000] } else { &[10] };
    let latencies: &[u64] = if mode.full { &[5, 50] } else { &[5] };
    let serial_cap = if mode.full { 50 } else { 10 };
    let mut table = Table::new(
        "Drain throughput: time to drained, concurrent (16 in flight) vs serial evict-and-wait",
        &[
            "pods",
            "API latency",
            "PDB",
            "concurrent",
            "max in flight",
            "requests",
            "serial",
            "speed-up",
            "goal",
        ],
    );
    for &latency in latencies {
        for pdb in [false, true] {
            // Per-pod cost of the serial baseline, measured once on `serial_cap` pods.
            let probe = DrainCase {
                pods: serial_cap,
                latency: Duration::from_millis(latency),
                pdb,
            };
            let serial_probe = serial_drain(&probe, serial_cap).await?;
            for &pods in sizes {
                let case = DrainCase {
                    pods,
                    latency: Duration::from_millis(latency),
                    pdb,
                };
                let (took, max_in_flight, requests) = concurrent_drain(&case, 16).await?;
                let (serial, extrapolated) = if pods <= serial_cap {
                    (serial_drain(&case, pods).await?, false)
                } else {
                    (serial_probe.mul_f64(pods as f64 / serial_cap as f64), true)
                };
                table.row(vec![
                    pods.to_string(),
                    format!("{latency} ms"),
                    if pdb {
                        format!("maxUnavailable {}, 200 ms termination", (pods / 5).max(1))
                    } else {
                        "none".into()
                    },
                    secs(took),
                    max_in_flight.to_string(),
                    requests.to_string(),
                    format!(
                        "{}{}",
                        secs(serial),
                        if extrapolated {
                            format!(" (extrapolated from {serial_cap} pods)")
                        } else {
                            String::new()
                        }
                    ),
                    format!("{:.1}×", serial.as_secs_f64() / took.as_secs_f64()),
                    if pods == 1000 {
                        "≥ 10×".into()
                    } else {
                        String::new()
                    },
                ]);
            }
        }
    }
    // The bound is the setting: show it holds for another value.
    let case = DrainCase {
        pods: if mode.full { 200 } else { 10 },
        latency: Duration::from_millis(5),
        pdb: false,
    };
    for concurrency in [1, 4, 64] {
        let (took, max_in_flight, requests) = concurrent_drain(&case, concurrency).await?;
        table.row(vec![
            case.pods.to_string(),
            "5 ms".into(),
            format!("none; DRAIN_CONCURRENCY={concurrency}"),
            secs(took),
            max_in_flight.to_string(),
            requests.to_string(),
            String::new(),
            String::new(),
            "in flight ≤ setting".into(),
        ]);
    }
    Ok(table)
}

// --- API economy -----------------------------------------------------------------------------

fn summarize_kube(requests: &[spot_guard::sim::kube::RequestRecord]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for request in requests {
        let kind = if request.path.ends_with("/eviction") {
            "pods/eviction"
        } else if request.path.contains("/events") {
            "events"
        } else if request.path.contains("/pods") {
            "pods"
        } else if request.path.contains("/nodes") {
            "nodes"
        } else {
            "other"
        };
        *counts
            .entry(format!("{} {kind}", request.method))
            .or_default() += 1;
    }
    counts
        .iter()
        .map(|(what, n)| format!("{n} {what}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn summarize_asg(calls: &[spot_guard::sim::asg::Call]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for call in calls {
        *counts.entry(call.action.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(what, n)| format!("{n} {what}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn api_calls(_mode: &Mode) -> Result<Table> {
    let mut table = Table::new(
        "API calls per event, one node (10 workload pods + 1 DaemonSet pod, no faults)",
        &["event", "Kubernetes requests", "ASG calls"],
    );
    for (name, spot_guard) in [
        (
            "rebalance, Spot Guard on (launch 1 s, check every 250 ms), drain on",
            true,
        ),
        ("spot interruption, TAINT_NODE=true", false),
    ] {
        let world = world(10, Duration::from_secs(1)).await?;
        let running = start_agent(
            &world,
            Duration::from_millis(100),
            spot_guard.then_some(Duration::from_millis(250)),
            true,
        )?;
        wait_until("the first poll", || {
            world.imds.gets(REBALANCE_RECOMMENDATION_PATH) >= 1
        })
        .await?;
        let kube_before = world.kube.requests().len();
        let asg_before = world.asg.calls().len();
        if spot_guard {
            world.imds.set_rebalance(Some("2026-11-24T10:00:00Z"));
        } else {
            world
                .imds
                .set_spot_action(Some(("terminate", "2026-11-24T10:02:00Z")));
        }
        wait_until("the node is drained", || {
            world.kube.pods_on_node(NODE).len() == 1
        })
        .await?;
        // The record annotation is written after the drain.
        tokio::time::sleep(Duration::from_millis(500)).await;
        running.stop().await;
        let requests = world.kube.requests();
        let calls = world.asg.calls();
        table.row(vec![
            name.into(),
            format!(
                "{} in all: {}",
                requests.len() - kube_before,
                summarize_kube(&requests[kube_before..])
            ),
            if calls.len() > asg_before {
                format!(
                    "{} in all: {}",
                    calls.len() - asg_before,
                    summarize_asg(&calls[asg_before..])
                )
            } else {
                "0".into()
            },
        ]);
    }
    Ok(table)
}

fn size(_mode: &Mode) -> Result<Table> {
    let mut table = Table::new("Binary size", &["binary", "bytes", "MiB"]);
    let mut paths = vec![env!("CARGO_BIN_EXE_spot-guard").to_owned()];
    for candidate in [
        "target/release/spot-guard",
        "target/x86_64-unknown-linux-musl/release/spot-guard",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(candidate);
        if path.exists() {
            paths.push(path.to_string_lossy().into_owned());
        }
    }
    paths.dedup();
    for path in paths {
        let bytes = std::fs::metadata(&path)?.len();
        table.row(vec![
            path,
            bytes.to_string(),
            format!("{:.1}", bytes as f64 / (1024.0 * 1024.0)),
        ]);
    }
    Ok(table)
}

// ---------------------------------------------------------------------------------------

fn wanted(filters: &[String], name: &str) -> bool {
    filters.is_empty() || filters.iter().any(|f| name.starts_with(f.as_str()))
}

fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
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
            size(&mode)?.print();
        }
        if wanted(&filters, "idle-poll") {
            idle_poll(&mode).await?.print();
        }
        if wanted(&filters, "idle-process") {
            idle_process(&mode).await?.print();
        }
        if wanted(&filters, "drain-rss") {
            drain_rss(&mode).await?.print();
        }
        if wanted(&filters, "api-calls") {
            api_calls(&mode).await?.print();
        }
        if wanted(&filters, "reaction") {
            reaction(&mode).await?.print();
        }
        if wanted(&filters, "throughput") {
            throughput(&mode).await?.print();
        }
        Ok::<(), BoxError>(())
    })?;
    println!("\n(total {:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}
