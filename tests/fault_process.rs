//! Process faults on the real binary, configured by env vars as in a pod and pointed at the
//! simulators (INSTANCE_METADATA_URL, AWS_ENDPOINT_URL, KUBECONFIG): SIGTERM at each step of
//! the flow stops it promptly and leaves the node in a state a restarted agent resumes from;
//! every kind of bad configuration value is refused with the setting named.
//! (SIGTERM while idle and during the capacity wait: tests/agent_process.rs.)

use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

#[path = "support/process.rs"]
mod process;

use process::{cordoned, node_taints, sigterm, wait_exit, wait_until, write_kubeconfig};
use spot_guard::sim::asg::{AsgSim, Behaviour, Fault, GroupSpec};
use spot_guard::sim::imds::ImdsSim;
use spot_guard::sim::kube::{EvictionOutcome, FakeKube, FakePod};
use spot_guard::sim::kubelet;

const NODE: &str = "ip-10-0-7-7.ec2.internal";
const SPOT_ITN_PATH: &str = "/latest/meta-data/spot/instance-action";
const STOP_BOUND: Duration = Duration::from_secs(10);

struct Sims {
    imds: ImdsSim,
    asg: Arc<AsgSim>,
    kube: Arc<FakeKube>,
    dir: tempfile::TempDir,
}

async fn sims() -> Sims {
    let imds = ImdsSim::start().await.expect("IMDS simulator");
    let asg = AsgSim::start().await.expect("ASG simulator");
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    for name in ["spot", "on-demand"] {
        asg.add_group(
            name,
            GroupSpec {
                min: 0,
                max: 10,
                desired: 2,
                behaviour: Behaviour::Healthy,
                launch_delay: Duration::from_millis(200),
                capacity_rebalance: false,
            },
        );
    }
    kube.add_node(NODE);
    kube.add_pod(FakePod::new("default", "web-1", NODE).with_label("app", "web"));
    kube.add_pod(FakePod::new("default", "web-2", NODE).with_label("app", "web"));
    kube.add_pod(FakePod::new("kube-system", "spot-guard-abcde", NODE).daemon_set());
    // New instances' kubelets register their Nodes, NotReady first, then Ready.
    let (asg, kube) = (Arc::new(asg), Arc::new(kube));
    kubelet::spawn_default(&asg, &kube, &["spot", "on-demand"]);
    Sims {
        imds,
        asg,
        kube,
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

/// The agent with NTH's defaults plus `env`; its log goes to `<dir>/<log>`.
fn start_agent(sims: &Sims, log: &str, env: &[(&str, &str)]) -> Child {
    let dir = sims.dir.path();
    let kubeconfig = write_kubeconfig(dir, &sims.kube.url());
    let log = std::fs::File::create(dir.join(log)).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_spot-guard"));
    command
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
        .env("SPOT_GUARD_CHECK_INTERVAL", "1");
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("agent starts")
}

const SPOT_GUARD_ON: [(&str, &str); 5] = [
    ("ENABLE_SPOT_GUARD", "true"),
    ("SPOT_ASG_NAME", "spot"),
    ("ON_DEMAND_ASG_NAME", "on-demand"),
    ("ENABLE_REBALANCE_MONITORING", "true"),
    ("ENABLE_REBALANCE_DRAINING", "true"),
];

fn read_log(sims: &Sims, log: &str) -> String {
    std::fs::read_to_string(sims.dir.path().join(log)).unwrap_or_default()
}

fn assert_no_panic(log: &str) {
    assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
}

fn workload_left(kube: &FakeKube) -> usize {
    kube.pods_on_node(NODE)
        .iter()
        .filter(|p| p.metadata.name.as_deref() != Some("spot-guard-abcde"))
        .count()
}

fn pdb_refusals(kube: &FakeKube) -> usize {
    kube.evictions()
        .iter()
        .filter(|e| e.outcome == EvictionOutcome::BlockedByPdb)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_start_up_while_imds_is_unreachable_stops_the_agent() {
    let sims = sims().await;
    sims.imds.set_down(true);
    let mut agent = start_agent(&sims, "agent.log", &[]);
    // The start-up read of the instance id is retrying against the dead IMDS.
    wait_until("the agent asks IMDS", Duration::from_secs(20), || {
        sims.imds.gets("/latest/meta-data/instance-id") > 0
    })
    .await;

    sigterm(&agent);
    let status = wait_exit(&mut agent, STOP_BOUND).await;

    let log = read_log(&sims, "agent.log");
    assert_no_panic(&log);
    // Before its signal handler is installed the process dies of the signal (143);
    // after, it stops cleanly (0). Either way it is gone and has touched nothing.
    assert!(
        status.code() == Some(0) || status.code().is_none(),
        "{status:?}\n{log}"
    );
    assert!(node_taints(&sims.kube, NODE).is_empty());
    assert!(!cordoned(&sims.kube, NODE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_scale_up_is_being_retried_stops_without_scaling_or_tainting() {
    let sims = sims().await;
    // Throttled again and again: the SDK backs off between attempts.
    sims.asg
        .fail_next("SetDesiredCapacity", 100, Fault::Throttling);
    let mut env = SPOT_GUARD_ON.to_vec();
    env.push(("AWS_API_MAX_ATTEMPTS", "20"));
    let mut agent = start_agent(&sims, "agent.log", &env);
    sims.imds.set_rebalance(Some("2026-11-24T10:00:00Z"));
    wait_until("the scale-up is throttled", Duration::from_secs(30), || {
        !sims.asg.calls_of("SetDesiredCapacity").is_empty()
    })
    .await;

    sigterm(&agent);
    let status = wait_exit(&mut agent, STOP_BOUND).await;

    let log = read_log(&sims, "agent.log");
    assert_no_panic(&log);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("abandoning the rebalance flow"), "{log}");
    assert_eq!(sims.asg.group("spot").unwrap().desired, 2);
    assert_eq!(sims.asg.group("on-demand").unwrap().desired, 2);
    assert!(node_taints(&sims.kube, NODE).is_empty());
    assert!(!cordoned(&sims.kube, NODE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_node_writes_are_slow_finishes_the_drain_within_its_bound() {
    let sims = sims().await;
    // The drain goes on after SIGTERM, bounded by NODE_TERMINATION_GRACE_PERIOD.
    let env = [
        ("TAINT_NODE", "true"),
        ("NODE_TERMINATION_GRACE_PERIOD", "5"),
    ];
    let mut agent = start_agent(&sims, "agent.log", &env);
    wait_until("the agent polls IMDS", Duration::from_secs(20), || {
        sims.imds.gets(SPOT_ITN_PATH) > 0
    })
    .await;
    // Every Kubernetes request now takes 3 s: the agent is inside a node read or write.
    sims.kube.set_latency(Duration::from_secs(3));
    let polls = sims.imds.gets(SPOT_ITN_PATH);
    sims.imds
        .set_spot_action(Some(("terminate", "2026-11-24T10:02:00Z")));
    wait_until("the notice is read", Duration::from_secs(20), || {
        sims.imds.gets(SPOT_ITN_PATH) > polls
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    sigterm(&agent);
    let status = wait_exit(&mut agent, STOP_BOUND + Duration::from_secs(5)).await;

    let log = read_log(&sims, "agent.log");
    assert_no_panic(&log);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("finishing it first"), "{log}");
    assert!(log.contains("spot-guard stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_a_pdb_blocked_drain_waits_its_deadline_then_a_restart_finishes_it() {
    let sims = sims().await;
    sims.kube.add_pdb("default", "web", &[("app", "web")], 0);
    let env = [
        ("TAINT_NODE", "true"),
        ("NODE_TERMINATION_GRACE_PERIOD", "5"),
    ];
    let mut agent = start_agent(&sims, "first.log", &env);
    sims.imds
        .set_spot_action(Some(("terminate", "2026-11-24T10:02:00Z")));
    wait_until("a PDB refuses an eviction", Duration::from_secs(30), || {
        pdb_refusals(&sims.kube) > 0
    })
    .await;

    sigterm(&agent);
    // The drain goes on after SIGTERM until its NODE_TERMINATION_GRACE_PERIOD deadline.
    let status = wait_exit(&mut agent, STOP_BOUND + Duration::from_secs(5)).await;

    let log = read_log(&sims, "first.log");
    assert_no_panic(&log);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("a restarted agent takes it over"), "{log}");
    // Left protected: tainted and cordoned, the workload still there.
    assert_eq!(
        node_taints(&sims.kube, NODE),
        ["aws-node-termination-handler/spot-itn"]
    );
    assert!(cordoned(&sims.kube, NODE));
    assert_eq!(workload_left(&sims.kube), 2);

    // The budget relents; the restarted agent sees the notice again and drains.
    sims.kube.set_pdb_max_unavailable("default", "web", 2);
    let mut restarted = start_agent(&sims, "second.log", &env);
    wait_until(
        "the restarted agent drains",
        Duration::from_secs(30),
        || workload_left(&sims.kube) == 0,
    )
    .await;
    sigterm(&restarted);
    let status = wait_exit(&mut restarted, STOP_BOUND).await;
    let log = read_log(&sims, "second.log");
    assert_no_panic(&log);
    assert_eq!(status.code(), Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_spot_guard_drain_then_restart_scales_only_once() {
    let sims = sims().await;
    sims.kube.add_pdb("default", "web", &[("app", "web")], 0);
    let mut env = SPOT_GUARD_ON.to_vec();
    env.push(("NODE_TERMINATION_GRACE_PERIOD", "120"));
    let mut agent = start_agent(&sims, "first.log", &env);
    sims.imds.set_rebalance(Some("2026-11-24T10:00:00Z"));
    wait_until("a PDB refuses an eviction", Duration::from_secs(30), || {
        pdb_refusals(&sims.kube) > 0
    })
    .await;
    assert_eq!(sims.asg.group("spot").unwrap().desired, 3);

    sigterm(&agent);
    let status = wait_exit(&mut agent, STOP_BOUND).await;
    let log = read_log(&sims, "first.log");
    assert_no_panic(&log);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("abandoning the rebalance flow"), "{log}");
    assert_eq!(
        node_taints(&sims.kube, NODE),
        ["aws-node-termination-handler/rebalance-recommendation"]
    );

    sims.kube.set_pdb_max_unavailable("default", "web", 2);
    let mut restarted = start_agent(&sims, "second.log", &env);
    wait_until(
        "the restarted agent drains",
        Duration::from_secs(40),
        || workload_left(&sims.kube) == 0,
    )
    .await;
    sigterm(&restarted);
    let _ = wait_exit(&mut restarted, STOP_BOUND).await;
    let log = read_log(&sims, "second.log");
    assert_no_panic(&log);
    assert_eq!(
        sims.asg.group("spot").unwrap().desired,
        3,
        "one rebalance recommendation bought two instances:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_rebalance_drain_stops_and_leaves_the_node_cordoned() {
    let sims = sims().await;
    sims.kube.add_pdb("default", "web", &[("app", "web")], 0);
    let mut env = SPOT_GUARD_ON.to_vec();
    env.push(("NODE_TERMINATION_GRACE_PERIOD", "120"));
    let mut agent = start_agent(&sims, "agent.log", &env);
    sims.imds.set_rebalance(Some("2026-11-24T10:00:00Z"));
    wait_until("a PDB refuses an eviction", Duration::from_secs(30), || {
        pdb_refusals(&sims.kube) > 0
    })
    .await;

    sigterm(&agent);
    let status = wait_exit(&mut agent, STOP_BOUND).await;

    let log = read_log(&sims, "agent.log");
    assert_no_panic(&log);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("abandoning the rebalance flow"), "{log}");
    assert!(cordoned(&sims.kube, NODE));
    assert_eq!(workload_left(&sims.kube), 2);
    assert_eq!(sims.asg.group("on-demand").unwrap().desired, 2);
}

// --- Bad configuration ---------------------------------------------------------------------

fn run_with_env(env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spot-guard"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // Nothing listens here: a configuration accepted by mistake fails fast elsewhere.
        .env("INSTANCE_METADATA_URL", "http://127.0.0.1:9")
        .env("KUBECONFIG", "/nonexistent/kubeconfig");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the binary runs")
}

#[test]
fn every_kind_of_bad_value_is_refused_naming_the_setting() {
    let spot_guard = [
        ("ENABLE_SPOT_GUARD", "true"),
        ("ENABLE_REBALANCE_MONITORING", "true"),
        ("SPOT_ASG_NAME", "spot"),
        ("ON_DEMAND_ASG_NAME", "on-demand"),
    ];
    // (what is wrong, the bad setting, its value, whether Spot Guard is on)
    let cases: &[(&str, &str, &str, bool)] = &[
        (
            "negative timeout",
            "NODE_TERMINATION_GRACE_PERIOD",
            "-5",
            false,
        ),
        (
            "negative timeout",
            "SPOT_GUARD_CAPACITY_CHECK_TIMEOUT",
            "-1",
            true,
        ),
        ("negative timeout", "SPOT_GUARD_SCALE_TIMEOUT", "-30", true),
        (
            "negative interval",
            "SPOT_GUARD_CHECK_INTERVAL",
            "-10",
            true,
        ),
        ("zero timeout", "SPOT_GUARD_SCALE_TIMEOUT", "0", true),
        (
            "negative grace period",
            "POD_TERMINATION_GRACE_PERIOD",
            "-7",
            false,
        ),
        ("negative grace period", "GRACE_PERIOD", "-3", false),
        ("non-number", "METADATA_TRIES", "three", false),
        ("non-number", "DRAIN_CONCURRENCY", "many", false),
        (
            "number with a unit",
            "SPOT_GUARD_CHECK_INTERVAL",
            "10s",
            true,
        ),
        (
            "number with a unit",
            "NODE_TERMINATION_GRACE_PERIOD",
            "2m",
            false,
        ),
        ("fraction", "AWS_API_MAX_ATTEMPTS", "2.5", true),
        ("zero", "DRAIN_CONCURRENCY", "0", false),
        ("zero", "METADATA_TRIES", "0", false),
        ("out of range", "PROMETHEUS_SERVER_PORT", "70000", false),
        ("non-number", "KUBE_API_QPS", "fast", false),
        ("unknown taint effect", "TAINT_EFFECT", "NoWay", false),
        (
            "taint effect in the wrong case",
            "TAINT_EFFECT",
            "noschedule",
            false,
        ),
        ("unknown log level", "LOG_LEVEL", "verbose", false),
        ("empty name", "NODE_NAME", "   ", false),
        ("empty name", "SPOT_ASG_NAME", " ", true),
        ("empty name", "ON_DEMAND_ASG_NAME", "\t", true),
        ("bad boolean", "ENABLE_SPOT_GUARD", "yes please", false),
    ];
    let mut failures = Vec::new();
    for (kind, setting, value, with_spot_guard) in cases {
        let mut env: Vec<(&str, &str)> = vec![("NODE_NAME", "n1")];
        if *with_spot_guard {
            env.extend(spot_guard);
        }
        env.retain(|(key, _)| key != setting);
        env.push((setting, value));
        let output = run_with_env(&env);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let flag = format!("--{}", setting.to_ascii_lowercase().replace('_', "-"));
        let named = stderr.contains(setting) || stderr.contains(&flag);
        if output.status.code() != Some(2) || !named || stderr.contains("panicked") {
            failures.push(format!(
                "{kind}: {setting}={value:?} → exit {:?}, stderr: {stderr}",
                output.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn several_bad_settings_are_all_named_in_one_message() {
    let output = run_with_env(&[
        ("NODE_NAME", "n1"),
        ("TAINT_EFFECT", "Sometimes"),
        ("LOG_LEVEL", "loud"),
        ("DRAIN_CONCURRENCY", "0"),
        ("POD_TERMINATION_GRACE_PERIOD", "-9"),
        ("ENABLE_SPOT_GUARD", "true"),
        ("ENABLE_REBALANCE_MONITORING", "true"),
        ("SPOT_ASG_NAME", ""),
        ("ON_DEMAND_ASG_NAME", " "),
        ("SPOT_GUARD_CAPACITY_CHECK_TIMEOUT", "0"),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for setting in [
        "TAINT_EFFECT",
        "LOG_LEVEL",
        "DRAIN_CONCURRENCY",
        "POD_TERMINATION_GRACE_PERIOD",
        "SPOT_ASG_NAME",
        "ON_DEMAND_ASG_NAME",
        "SPOT_GUARD_CAPACITY_CHECK_TIMEOUT",
    ] {
        assert!(stderr.contains(setting), "{setting} not named in: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_name_that_does_not_exist_exits_with_a_clear_error() {
    let sims = sims().await;
    let mut agent = start_agent(&sims, "agent.log", &[("NODE_NAME", "no-such-node")]);
    let status = wait_exit(&mut agent, Duration::from_secs(30)).await;
    let log = read_log(&sims, "agent.log");
    assert_no_panic(&log);
    assert_ne!(status.code(), Some(0), "{log}");
    assert!(log.contains("no-such-node"), "{log}");
    assert!(log.contains("NODE_NAME"), "{log}");
}
