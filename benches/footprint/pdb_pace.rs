//! Drains paced by a PodDisruptionBudget (pdb-pace): `drain::drain` against the fake API,
//! one ReplicaSet behind a budget of `maxUnavailable: 1`. The budget frees once the evicted
//! pod's replacement is Ready on another node (the fake's scheduler and its 200 ms pod
//! start-up), so its own pace is one eviction per replacement start-up. A probe reads the
//! budget's `status.disruptionsAllowed` and the accepted evictions every millisecond.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use spot_guard::drain::{self, DrainSettings};
use spot_guard::node::client_for_url;
use spot_guard::sim::kube::{EvictionOutcome, FakeKube, FakePod};

use crate::table::{Table, ms, secs};
use crate::world::NODE;
use crate::{Mode, Result};

const OTHER_NODE: &str = "ip-10-0-9-9.ec2.internal";

/// What the probe saw: when the budget turned from 0 to > 0 allowed, and when each
/// accepted eviction was first seen.
#[derive(Default)]
struct Seen {
    allowed_at: Vec<Instant>,
    evicted_at: Vec<Instant>,
}

async fn probe(kube: &FakeKube, seen: &mut Seen) -> Infallible {
    let mut was_allowed = true;
    loop {
        let allowed = kube
            .pdb("default", "web")
            .and_then(|pdb| pdb.status)
            .is_some_and(|status| status.disruptions_allowed > 0);
        let now = Instant::now();
        if allowed && !was_allowed {
            seen.allowed_at.push(now);
        }
        was_allowed = allowed;
        let evicted = kube
            .evictions()
            .iter()
            .filter(|e| e.outcome == EvictionOutcome::Allowed)
            .count();
        while seen.evicted_at.len() < evicted {
            seen.evicted_at.push(now);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub async fn pdb_pace(mode: &Mode) -> Result<Table> {
    let sizes: &[usize] = if mode.full { &[10, 50] } else { &[3] };
    let latency = Duration::from_millis(5);
    let mut table = Table::new(
        "Drain behind a PodDisruptionBudget (maxUnavailable 1, replacement Ready 200 ms after it is scheduled, API at 5 ms, retry timer 5 s)",
        &[
            "pods",
            "first → last eviction",
            "budget's own pace",
            "ratio",
            "allowed → next eviction (mean / max)",
            "refusals",
            "notice → drained",
            "goal",
        ],
    );
    for &pods in sizes {
        let kube = FakeKube::start().await?;
        kube.add_node(NODE);
        kube.add_node(OTHER_NODE);
        kube.cordon(NODE);
        for i in 0..pods {
            kube.add_pod(
                FakePod::new("default", &format!("web-{i:04}"), NODE)
                    .with_label("app", "web")
                    .replica_set("web-7d4b9c"),
            );
        }
        kube.add_pdb("default", "web", &[("app", "web")], 1);
        kube.set_latency(latency);
        let client = client_for_url(&kube.url())?;
        let settings = DrainSettings {
            timeout: Duration::from_secs(600),
            poll_interval: Duration::from_millis(10),
            ..DrainSettings::default()
        };
        let mut seen = Seen::default();
        let started = Instant::now();
        let report = tokio::select! {
            report = drain::drain(&client, NODE, &settings, false) => report?,
            never = probe(&kube, &mut seen) => match never {},
        };
        let took = started.elapsed();
        if !report.is_complete() || report.evicted.len() != pods {
            return Err(format!("drain incomplete: {report:?}").into());
        }
        let (Some(first), Some(last)) = (seen.evicted_at.first(), seen.evicted_at.last()) else {
            return Err("the probe saw no eviction".into());
        };
        // Each freeing of the budget, paired with the first eviction seen after it.
        let waits: Vec<Duration> = seen
            .allowed_at
            .iter()
            .filter_map(|allowed| {
                seen.evicted_at
                    .iter()
                    .find(|evicted| *evicted >= allowed)
                    .map(|evicted| evicted.duration_since(*allowed))
            })
            .collect();
        let phase = last.duration_since(*first);
        // The budget's pace: the same evictions, each sent the moment the budget allowed it.
        let pace = phase.saturating_sub(waits.iter().sum());
        let mean = waits.iter().sum::<Duration>() / u32::try_from(waits.len().max(1))?;
        let max = waits.iter().max().copied().unwrap_or_default();
        table.row(vec![
            pods.to_string(),
            secs(phase),
            secs(pace),
            format!("{:.2}×", phase.as_secs_f64() / pace.as_secs_f64().max(1e-9)),
            format!("{} / {} ({} frees)", ms(mean), ms(max), waits.len()),
            report.pdb_refusals.to_string(),
            secs(took),
            "≤ 1.1×; ≤ 100 ms + one round trip".into(),
        ]);
    }
    Ok(table)
}
