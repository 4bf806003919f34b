//! API calls per event, one node (api-calls), with the agent in this process as production
//! starts it.

use std::collections::BTreeMap;
use std::time::Duration;

use spot_guard::imds::REBALANCE_RECOMMENDATION_PATH;

use crate::table::Table;
use crate::world::{BOUND, NODE, start_agent, stop_agent, wait_until, world};
use crate::{Mode, Result};

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
        } else if request.path.contains("/leases") {
            "leases"
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

pub async fn api_calls(_mode: &Mode) -> Result<Table> {
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
        let mut running = start_agent(
            &world,
            Duration::from_millis(100),
            spot_guard.then_some(Duration::from_millis(250)),
            true,
        )
        .await?;
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
        // The notice is recorded as handled on the Node after the drain: the event's last request.
        if !running.wait_handled(1, BOUND).await {
            return Err(format!("{name}: the agent did not finish the notice").into());
        }
        stop_agent(running).await?;
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
