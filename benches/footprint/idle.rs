//! Idle: the release binary polling IMDS at its real interval (idle-process), and one poll
//! of the monitor on a thread of its own (idle-poll).

use std::time::{Duration, Instant};

use spot_guard::imds::{ImdsClient, REBALANCE_RECOMMENDATION_PATH, SPOT_INSTANCE_ACTION_PATH};
use spot_guard::monitor::{self, MonitorSettings};
use spot_guard::sim::imds::ImdsSim;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::procfs::{children_cpu, process_cpu, rss_split_kib, status_kib, thread_named, tid_cpu};
use crate::table::{Table, mib, ms};
use crate::world::{agent_binary, spawn_binary, stop_child, wait_until, world};
use crate::{Mode, Result};
use crate::{alloc, floor};

/// The real binary polling IMDS at its real 2 s interval with Spot Guard on.
pub async fn idle_process(mode: &Mode) -> Result<Table> {
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
    let (rss_start, cpu_start, polls_start) =
        (status_kib(pid, "VmRSS")?, process_cpu(pid)?, polls());
    let floor_imds = ImdsSim::start().await?;
    let floor = std::thread::spawn({
        let url = floor_imds.url();
        let polls = u32::try_from(seconds / 2).unwrap_or(u32::MAX).max(1);
        move || floor::cpu_per_poll(&url, Duration::from_secs(2), polls).map_err(|e| e.to_string())
    });
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = started.elapsed();
    let (split_end, rss_end, hwm, cpu_end, polls_end) = (
        rss_split_kib(pid)?,
        status_kib(pid, "VmRSS")?,
        status_kib(pid, "VmHWM")?,
        process_cpu(pid)?,
        polls(),
    );
    stop_child(&mut child).await?;
    let floor = tokio::task::spawn_blocking(move || floor.join())
        .await?
        .map_err(|_| "the floor thread panicked")??;
    let total_cpu = children_cpu().saturating_sub(cpu_before_child);
    let polls = (polls_end - polls_start).max(1);
    let cpu = cpu_end.saturating_sub(cpu_start);
    let growth_per_10_min = (rss_end as f64 - rss_start as f64) * 600.0 / elapsed.as_secs_f64();
    let gets_per_poll = world.imds.gets(SPOT_INSTANCE_ACTION_PATH) as f64 > 0.0;
    let mut table = Table::new(
        &format!(
            "Idle footprint of {}, real 2 s poll, Spot Guard on ({:.0} s measured)",
            agent_binary(),
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
        "≤ 8 MiB".into(),
    ]);
    table.row(vec![
        format!("RSS after {:.0} s", elapsed.as_secs_f64()),
        mib(rss_end),
        "≤ 8 MiB".into(),
    ]);
    let (rss, anonymous) = split_end;
    table.row(vec![
        "of which anonymous (smaps_rollup Anonymous: heap, stacks)".into(),
        mib(anonymous),
        "≤ 2 MiB".into(),
    ]);
    table.row(vec![
        "of which file-backed (Rss − Anonymous: the binary's code and data)".into(),
        mib(rss.saturating_sub(anonymous)),
        String::new(),
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
        "CPU per poll, whole process (process CPU clock over the window)".into(),
        format!("{:.3} ms", cpu.as_secs_f64() * 1000.0 / polls as f64),
        "≤ 0.25 ms".into(),
    ]);
    table.row(vec![
        "this machine's floor: the same 3 GETs every 2 s on a blocking socket, no runtime (thread CPU clock, same window)".into(),
        format!("{:.3} ms", floor.as_secs_f64() * 1000.0),
        String::new(),
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

/// The monitor alone: allocations and CPU per poll of its poll thread.
pub async fn idle_poll(mode: &Mode) -> Result<Table> {
    let polls_wanted: u64 = if mode.full { 1000 } else { 20 };
    let imds = ImdsSim::start().await?;
    let client = ImdsClient::new(&imds.url(), 3)?;
    let shutdown = CancellationToken::new();
    let thread = std::thread::spawn({
        let shutdown = shutdown.clone();
        move || -> Result<(), String> {
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
    let polls = || imds.gets(REBALANCE_RECOMMENDATION_PATH);
    wait_until("warm-up polls", || polls() >= 20).await?;
    let poller = thread_named(monitor::POLL_THREAD_NAME)?.ok_or("no IMDS poll thread")?;
    alloc::count_thread(poller);
    let ((a0, b0), c0, p0) = (alloc::counted(), tid_cpu(poller)?, polls());
    wait_until("measured polls", || polls() >= p0 + polls_wanted).await?;
    let ((a1, b1), c1, p1) = (alloc::counted(), tid_cpu(poller)?, polls());
    shutdown.cancel();
    thread
        .join()
        .map_err(|_| "monitor thread panicked")?
        .map_err(|e| format!("monitor: {e}"))?;
    let n = (p1 - p0).max(1) as f64;
    let floor = tokio::task::spawn_blocking({
        let url = imds.url();
        let polls = u32::try_from(polls_wanted).unwrap_or(u32::MAX);
        move || {
            floor::cpu_per_poll(&url, Duration::from_millis(10), polls).map_err(|e| e.to_string())
        }
    })
    .await??;
    let mut table = Table::new(
        &format!(
            "One poll of the monitor (IMDSv2, 3 paths), {} polls, its poll thread alone",
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
        "≤ 0.25 ms".into(),
    ]);
    table.row(vec![
        "this machine's floor: the same 3 GETs on a blocking socket, no runtime (thread CPU clock)"
            .into(),
        format!("{:.3} ms", floor.as_secs_f64() * 1000.0),
        String::new(),
    ]);
    Ok(table)
}
