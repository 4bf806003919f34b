//! Peak RSS of the release binary while it drains many pods (drain-rss).

use std::time::{Duration, Instant};

use spot_guard::imds::SPOT_INSTANCE_ACTION_PATH;

use crate::procfs::{rss_split_kib, status_kib};
use crate::table::{Table, mib, secs};
use crate::world::{BOUND, NODE, agent_binary, spawn_binary, stop_child, wait_until, world};
use crate::{Mode, Result};

/// Peak RSS of the release binary while it drains 1000 pods for a spot interruption.
pub async fn drain_rss(mode: &Mode) -> Result<Table> {
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
    let (rss_split, anonymous_after) = rss_split_kib(pid)?;
    let rss_after = status_kib(pid, "VmRSS")?;
    stop_child(&mut child).await?;
    let mut table = Table::new(
        &format!(
            "{} draining {pods} pods (spot interruption, fake API at 5 ms)",
            agent_binary()
        ),
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
        "≤ 16 MiB".into(),
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
        "of which anonymous, 0.5 s after (smaps_rollup)".into(),
        format!("{} (of {})", mib(anonymous_after), mib(rss_split)),
        String::new(),
    ]);
    table.row(vec![
        "notice set → last pod gone".into(),
        secs(drained_in),
        String::new(),
    ]);
    Ok(table)
}
