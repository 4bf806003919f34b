//! The real binary, configured only by env vars as in a pod, pointed at the simulators
//! through the standard overrides: INSTANCE_METADATA_URL, AWS_ENDPOINT_URL, KUBECONFIG.
//! It must run the whole flow and stop cleanly on SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

#[path = "support/process.rs"]
mod process;

use process::{node_taints, sigterm, wait_exit, wait_until, write_kubeconfig};
use spot_guard::sim::asg::{AsgSim, Behaviour, GroupSpec};
use spot_guard::sim::imds::ImdsSim;
use spot_guard::sim::kube::{FakeKube, FakePod};
use spot_guard::sim::kubelet;

const NODE: &str = "ip-10-0-9-9.ec2.internal";

struct Sims {
    imds: ImdsSim,
    asg: Arc<AsgSim>,
    kube: Arc<FakeKube>,
}

async fn sims(spot: Behaviour) -> Sims {
    let imds = ImdsSim::start().await.expect("IMDS simulator");
    let asg = AsgSim::start().await.expect("ASG simulator");
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    let group = |behaviour| GroupSpec {
        min: 0,
        max: 10,
        desired: 2,
        behaviour,
        launch_delay: Duration::from_millis(200),
        capacity_rebalance: false,
    };
    asg.add_group("spot", group(spot));
    asg.add_group("on-demand", group(Behaviour::Healthy));
    kube.add_node(NODE);
    kube.add_pod(FakePod::new("default", "web-1", NODE));
    kube.add_pod(FakePod::new("default", "web-2", NODE));
    kube.add_pod(FakePod::new("kube-system", "spot-guard-abcde", NODE).daemon_set());
    // New instances' kubelets register their Nodes, NotReady first, then Ready.
    let (asg, kube) = (Arc::new(asg), Arc::new(kube));
    kubelet::spawn_default(&asg, &kube, &["spot", "on-demand"]);
    Sims { imds, asg, kube }
}

fn start_agent(
    sims: &Sims,
    dir: &Path,
    capacity_check_timeout: &str,
    env: &[(&str, &str)],
) -> Child {
    let kubeconfig = write_kubeconfig(dir, &sims.kube.url());
    let log = std::fs::File::create(dir.join("agent.log")).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_spot-guard"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("NODE_NAME", NODE)
        .env("INSTANCE_METADATA_URL", sims.imds.url())
        .env("KUBECONFIG", kubeconfig)
        .env("AWS_ENDPOINT_URL", sims.asg.url())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("ENABLE_SPOT_GUARD", "true")
        .env("SPOT_ASG_NAME", "spot")
        .env("ON_DEMAND_ASG_NAME", "on-demand")
        .env("ENABLE_REBALANCE_MONITORING", "true")
        .env("ENABLE_REBALANCE_DRAINING", "true")
        .env("SPOT_GUARD_CHECK_INTERVAL", "1")
        .env("SPOT_GUARD_CAPACITY_CHECK_TIMEOUT", capacity_check_timeout)
        .env("NODE_TERMINATION_GRACE_PERIOD", "10")
        .envs(env.iter().copied())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("agent starts")
}

/// The whole rebalance flow of the binary, stopped by SIGTERM once the node is drained:
/// its exit status and everything it logged.
async fn rebalance_flow(sims: &Sims, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut agent = start_agent(sims, dir.path(), "30", env);
    // Let it start and poll once without a notice.
    wait_until("the agent polls IMDS", Duration::from_secs(20), || {
        sims.imds
            .gets("/latest/meta-data/events/recommendations/rebalance")
            > 0
    })
    .await;
    sims.imds.set_rebalance(Some("2026-11-24T10:00:00Z"));

    wait_until("the node is drained", Duration::from_secs(40), || {
        sims.kube
            .pods_on_node(NODE)
            .iter()
            .all(|p| p.metadata.name.as_deref() == Some("spot-guard-abcde"))
    })
    .await;
    sigterm(&agent);
    let status = wait_exit(&mut agent, Duration::from_secs(10)).await;
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    (status, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_scales_taints_cordons_drains_and_stops_on_sigterm() {
    let sims = sims(Behaviour::Healthy).await;
    let (status, log) = rebalance_flow(&sims, &[]).await;
    assert_eq!(sims.asg.group("spot").unwrap().desired, 3);
    assert_eq!(sims.asg.group("on-demand").unwrap().desired, 2);
    assert_eq!(
        node_taints(&sims.kube, NODE),
        ["aws-node-termination-handler/rebalance-recommendation"]
    );
    let node = sims.kube.node(NODE).unwrap();
    assert_eq!(node.spec.unwrap().unschedulable, Some(true));
    assert_eq!(status.code(), Some(0), "{log}");
    for line in [
        "Spot Guard enabled - Spot ASG: spot, On-Demand ASG: on-demand",
        "Scaling ASG spot from 2 to 3 instances",
        "New instance reached InService in ASG spot",
        "to be Ready before tainting and draining",
        "spot-guard stopped",
    ] {
        assert!(log.contains(line), "'{line}' missing from:\n{log}");
    }
}

/// `kubectl logs` of a whole rebalance flow reads as a story: the node named once at start,
/// short event ids, no field twice on a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_log_of_a_rebalance_flow_names_the_node_once_and_shortens_event_ids() {
    let sims = sims(Behaviour::Healthy).await;
    let (status, log) = rebalance_flow(&sims, &[]).await;
    assert_eq!(status.code(), Some(0), "{log}");
    // The node is named at start-up (the configuration, "Acting on node …"), then never.
    let flow_starts = log
        .lines()
        .position(|line| line.contains("Handling rebalance recommendation"))
        .unwrap_or_else(|| panic!("no rebalance flow in:\n{log}"));
    assert!(
        log.lines()
            .take(flow_starts)
            .any(|line| line.contains("Acting on node")),
        "{log}"
    );
    let naming_the_node: Vec<&str> = log
        .lines()
        .skip(flow_starts)
        .filter(|line| line.contains(NODE))
        .collect();
    assert!(naming_the_node.is_empty(), "{naming_the_node:#?}");
    // NTH's rebalance id ends in a 64-digit hash (instance ids have 17 hex digits).
    let long_hex = |line: &str| {
        line.split(|c: char| !c.is_ascii_hexdigit())
            .any(|run| run.len() > 20)
    };
    for line in log.lines() {
        assert!(!long_hex(line), "a long id in: {line}");
        let mut keys: Vec<&str> = line
            .split_whitespace()
            .filter_map(|word| word.split_once('=').map(|(key, _)| key))
            .filter(|key| key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .collect();
        let all = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), all, "a field twice in: {line}");
    }
    assert!(log.contains("event_id=rebalance-recommendation-"), "{log}");
}

/// JSON logs keep every field in full: the node and the whole event id on the flow's lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_log_keeps_the_node_and_the_whole_event_id() {
    let sims = sims(Behaviour::Healthy).await;
    let (status, log) = rebalance_flow(&sims, &[("JSON_LOGGING", "true")]).await;
    assert_eq!(status.code(), Some(0), "{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let in_flow = lines
        .iter()
        .find(|line| line["span"]["name"] == "rebalance")
        .unwrap_or_else(|| panic!("no line of the rebalance flow in:\n{log}"));
    assert_eq!(in_flow["span"]["node"], NODE, "{in_flow}");
    let event_id = in_flow["span"]["event_id"].as_str().unwrap_or_default();
    let hash = event_id.trim_start_matches("rebalance-recommendation-");
    assert_eq!(hash.len(), 64, "{event_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_capacity_wait_stops_at_once_without_touching_the_node() {
    let sims = sims(Behaviour::NeverInService).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut agent = start_agent(&sims, dir.path(), "600", &[]);
    sims.imds.set_rebalance(Some("2026-11-24T10:00:00Z"));
    wait_until("the spot ASG is scaled", Duration::from_secs(30), || {
        !sims.asg.calls_of("SetDesiredCapacity").is_empty()
    })
    .await;

    sigterm(&agent);
    let status = wait_exit(&mut agent, Duration::from_secs(10)).await;
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("abandoning the rebalance flow"), "{log}");
    assert!(node_taints(&sims.kube, NODE).is_empty());
    assert_eq!(sims.asg.group("on-demand").unwrap().desired, 2);
}
