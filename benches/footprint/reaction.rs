//! Reaction latency: a notice set in IMDS until the taint is on the node (reaction), with
//! the agent in this process as production starts it.

use std::time::{Duration, Instant, SystemTime};

use spot_guard::imds::{REBALANCE_RECOMMENDATION_PATH, SPOT_INSTANCE_ACTION_PATH};
use spot_guard::names::{REBALANCE_TAINT, SPOT_ITN_TAINT};

use crate::table::{Table, ms};
use crate::world::{BOUND, has_taint, start_agent, stop_agent, wait_until, world};
use crate::{Mode, Result};

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
    let running = start_agent(&world, interval, spot_guard.map(|(_, check)| check), true).await?;
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
    stop_agent(running).await?;
    Ok(Latency {
        to_poll: to_poll.unwrap_or(to_taint),
        to_taint,
        in_service_to_taint,
    })
}

pub async fn reaction(mode: &Mode) -> Result<Table> {
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
