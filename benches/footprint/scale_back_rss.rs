//! Peak RSS of the release binary while scale-back looks at a large cluster
//! (scale-back-rss): the agent on an on-demand fallback lists every Node and Pod on each
//! check, in pages, against the fake API serving 5,000 nodes and 150,000 pods.

use std::time::{Duration, Instant};

use spot_guard::lease::{LeaseSettings, Leases};
use spot_guard::names::asg_lease;
use spot_guard::node::client_for_url;
use spot_guard::sim::asg::{AsgSim, Behaviour, GroupSpec};
use spot_guard::sim::harness::LEASE_NAMESPACE;
use spot_guard::sim::imds::ImdsSim;
use spot_guard::sim::kube::{FakeKube, FakePod};
use spot_guard::spot_guard::decide::{Role, unix_millis};
use spot_guard::spot_guard::ledger::{self, LedgerEntry};

use crate::procfs::status_kib;
use crate::table::{Table, mib, secs};
use crate::world::{BOUND, NODE, ON_DEMAND_ASG, SPOT_ASG, World, spawn_binary, stop_child};
use crate::{Mode, Result};

/// Looks measured after the first.
const LOOKS: usize = 3;
/// Nodes of the spot ASG (the rest of the cluster's nodes belong to no ASG here).
const SPOT_NODES: i32 = 50;

/// Whether a request is the first page of scale-back's Pod list (no selector, no token).
fn first_pod_page(path: &str, query: Option<&str>) -> bool {
    path == "/api/v1/pods"
        && query.is_some_and(|q| q.contains("limit=") && !q.contains("continue="))
        && !query.is_some_and(|q| q.contains("fieldSelector"))
}

/// Peak RSS of the release binary on a fallback node over [`LOOKS`] scale-back checks
/// of a cluster of 5,000 nodes and 150,000 pods (toy: 40 nodes, 1,200 pods).
pub async fn scale_back_rss(mode: &Mode) -> Result<Table> {
    let (nodes, pods) = if mode.full {
        (5_000usize, 150_000usize)
    } else {
        (40, 1_200)
    };
    let world = fallback_world(nodes, pods).await?;
    let page_bytes = {
        let url = format!("{}/api/v1/pods?limit=500", world.kube.url());
        reqwest::get(url).await?.bytes().await?.len()
    };
    let from = world.kube.requests().len();
    let check_interval = "2";
    let mut child = spawn_binary(
        &world,
        &[
            ("ENABLE_REBALANCE_MONITORING", "true"),
            ("ENABLE_REBALANCE_DRAINING", "true"),
            ("ENABLE_SPOT_GUARD", "true"),
            ("SPOT_ASG_NAME", SPOT_ASG),
            ("ON_DEMAND_ASG_NAME", ON_DEMAND_ASG),
            ("NAMESPACE", LEASE_NAMESPACE),
            ("SPOT_GUARD_SCALE_BACK", "true"),
            // Never due: every check looks at the whole cluster and keeps the node.
            ("SPOT_GUARD_SCALE_BACK_MIN_WAIT", "86400"),
            ("SPOT_GUARD_SCALE_BACK_CHECK_INTERVAL", check_interval),
        ],
    )?;
    let pid = child.id();
    let looks_started = || {
        world.kube.requests()[from..]
            .iter()
            .filter(|r| r.method == "GET" && first_pod_page(&r.path, r.query.as_deref()))
            .count()
    };
    let started = Instant::now();
    let mut before = None;
    // The first look has started: what the agent held until then is the baseline.
    while looks_started() == 0 {
        if child.try_wait()?.is_some() {
            let log = std::fs::read_to_string(world.dir.path().join("agent.log"))?;
            return Err(format!("the agent exited before its first check:\n{log}").into());
        }
        if started.elapsed() > BOUND {
            stop_child(&mut child).await?;
            return Err("the fallback's agent made no scale-back check".into());
        }
        let rss = status_kib(pid, "VmRSS").map_err(|error| {
            let log = std::fs::read_to_string(world.dir.path().join("agent.log"));
            format!("{error}; the agent's log:\n{}", log.unwrap_or_default())
        })?;
        before = Some((rss, status_kib(pid, "VmHWM")?));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (rss_before, hwm_before) = before.ok_or("the agent's first check came at once")?;
    let measured_from = Instant::now();
    let mut sampled_peak = rss_before;
    // The look after the last measured one has started: those are complete.
    while looks_started() < LOOKS + 1 {
        if measured_from.elapsed() > BOUND * 4 {
            stop_child(&mut child).await?;
            return Err(format!("{LOOKS} scale-back checks did not finish").into());
        }
        sampled_peak = sampled_peak.max(status_kib(pid, "VmRSS")?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = measured_from.elapsed();
    let hwm = status_kib(pid, "VmHWM")?;
    let requests = world.kube.requests().split_off(from);
    let pod_pages = requests
        .iter()
        .filter(|r| {
            r.path == "/api/v1/pods" && !r.query.as_deref().unwrap_or("").contains("fieldSelector")
        })
        .count();
    let unpaged = requests
        .iter()
        .filter(|r| r.path == "/api/v1/pods" || r.path == "/api/v1/nodes")
        .filter(|r| !r.query.as_deref().unwrap_or("").contains("limit="))
        .count();
    // Mid-check, the agent may take long to stop (it finishes the list it is reading);
    // the figures are taken, so a slow stop ends in a kill rather than a failed bench.
    let stopped = stop_child(&mut child).await;
    if stopped.is_err() {
        child.kill()?;
        child.wait()?;
    }
    let mut table = Table::new(
        &format!(
            "Release binary on an on-demand fallback: {LOOKS} scale-back checks of {nodes} nodes and {pods} pods (paged lists)"
        ),
        &["figure", "value", "goal"],
    );
    table.row(vec![
        "RSS before the first check".into(),
        mib(rss_before),
        String::new(),
    ]);
    table.row(vec![
        "peak RSS before the first check (VmHWM)".into(),
        mib(hwm_before),
        String::new(),
    ]);
    table.row(vec![
        format!("peak RSS over {LOOKS} checks (VmHWM)"),
        mib(hwm),
        "≤ 64 MiB (chart memory limit)".into(),
    ]);
    table.row(vec![
        "highest RSS sampled every 20 ms".into(),
        mib(sampled_peak),
        String::new(),
    ]);
    table.row(vec![
        "one 500-pod page as served".into(),
        format!("{:.2} MiB", page_bytes as f64 / (1024.0 * 1024.0)),
        String::new(),
    ]);
    table.row(vec![
        format!("Pod list requests (all checks; {LOOKS} measured)"),
        pod_pages.to_string(),
        String::new(),
    ]);
    table.row(vec![
        "Node or Pod lists without a limit".into(),
        unpaged.to_string(),
        "0".into(),
    ]);
    table.row(vec![
        "stopped within 20 s of SIGTERM".into(),
        if stopped.is_ok() {
            "yes"
        } else {
            "no (killed)"
        }
        .into(),
        String::new(),
    ]);
    table.row(vec![
        format!("{LOOKS} checks, {check_interval} s pauses included"),
        secs(elapsed),
        String::new(),
    ]);
    Ok(table)
}

/// Both ASGs, `nodes` Nodes (the spot ASG's among them) with `pods` pods spread over
/// them, and the agent's node an on-demand fallback in the ledger.
async fn fallback_world(nodes: usize, pods: usize) -> Result<World> {
    let imds = ImdsSim::start().await?;
    let asg = AsgSim::start().await?;
    let kube = FakeKube::start().await?;
    // Nothing here is evicted or rescheduled; the controllers' passes over 150,000 pods
    // on every request would only slow the fake down.
    kube.set_controllers(false);
    for (name, desired) in [(SPOT_ASG, SPOT_NODES), (ON_DEMAND_ASG, 1)] {
        asg.add_group(
            name,
            GroupSpec {
                min: 0,
                max: 100,
                desired,
                behaviour: Behaviour::Healthy,
                launch_delay: Duration::ZERO,
                capacity_rebalance: false,
            },
        );
    }
    let group = |name: &str| {
        asg.group(name)
            .map(|g| g.in_service_ids)
            .ok_or_else(|| format!("group {name} missing"))
    };
    let fallback = group(ON_DEMAND_ASG)?
        .first()
        .cloned()
        .ok_or("no on-demand instance")?;
    imds.set_instance_id(&fallback);
    kube.add_instance_node(NODE, &fallback, "4", "16Gi");
    let spot = group(SPOT_ASG)?;
    let names: Vec<String> = (1..nodes).map(|i| format!("node-{i:05}")).collect();
    for (index, name) in names.iter().enumerate() {
        let instance = spot
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("i-{:017x}", 0xb000_0000u64 + index as u64));
        kube.add_instance_node(name, &instance, "4", "16Gi");
    }
    // Pods as a Deployment's: a ReplicaSet owner, a few labels, requests.
    kube.add_pods((0..pods).map(|i| {
        let node = if i % nodes == 0 {
            NODE
        } else {
            names[i % nodes - 1].as_str()
        };
        FakePod::new(&format!("team-{}", i % 40), &format!("app-{i:06}"), node)
            .replica_set(&format!("app-{}-7d9c8b6f5", i % 3000))
            .with_label("app.kubernetes.io/name", &format!("app-{}", i % 3000))
            .with_label("app.kubernetes.io/part-of", &format!("team-{}", i % 40))
            .with_label("pod-template-hash", "7d9c8b6f5")
            .with_requests("100m", "256Mi")
    }));
    let leases = Leases::new(
        client_for_url(&kube.url())?,
        LeaseSettings {
            namespace: LEASE_NAMESPACE.to_owned(),
            holder: "bench".to_owned(),
            duration: Duration::from_secs(15),
            retry_interval: Duration::from_millis(50),
        },
    );
    let entry = serde_json::to_string(&LedgerEntry {
        role: Role::OnDemand,
        asg: ON_DEMAND_ASG.to_owned(),
        for_node: "ip-10-0-0-9.ec2.internal".to_owned(),
        at: unix_millis(std::time::SystemTime::now()),
    })?;
    leases
        .annotate(
            &asg_lease(ON_DEMAND_ASG),
            &[(ledger::key(&fallback).as_str(), Some(entry.as_str()))],
        )
        .await?;
    Ok(World {
        imds,
        asg,
        kube,
        dir: tempfile::tempdir()?,
    })
}
