//! A dead core task ends the process, and SIGTERM does not abandon a drain for an
//! interruption: the agent finishes it (bounded by NODE_TERMINATION_GRACE_PERIOD) before
//! it exits.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

#[path = "support/process.rs"]
mod process;

use process::{sigterm, wait_exit, wait_until, write_kubeconfig};
use spot_guard::names::HANDLED_EVENTS_ANNOTATION;
use spot_guard::run;
use spot_guard::sim::harness;
use spot_guard::sim::imds::ImdsSim;
use spot_guard::sim::kube::{FakeKube, FakePod};

const NODE: &str = "ip-10-0-8-8.ec2.internal";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_interruption_drain_finishes_it_before_exiting() {
    let imds = ImdsSim::start().await.expect("IMDS simulator");
    let kube = Arc::new(FakeKube::start().await.expect("fake Kubernetes API"));
    kube.add_node(NODE);
    // Evicted, it takes 4 s to go: SIGTERM lands while the drain waits for it.
    kube.add_pod(FakePod::new("default", "slow", NODE).with_termination_grace_period(4));
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_spot-guard"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("NODE_NAME", NODE)
        .env("INSTANCE_METADATA_URL", imds.url())
        .env("KUBECONFIG", write_kubeconfig(dir.path(), &kube.url()))
        .env("NODE_TERMINATION_GRACE_PERIOD", "60")
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("agent starts");
    imds.set_spot_action(Some(("terminate", "2026-11-24T10:02:00Z")));
    wait_until("the pod is evicted", Duration::from_secs(30), || {
        kube.pod("default", "slow")
            .is_some_and(|pod| pod.metadata.deletion_timestamp.is_some())
    })
    .await;

    sigterm(&agent);
    let status = wait_exit(&mut agent, Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        kube.pod("default", "slow").is_none(),
        "the agent exited before the drain finished:\n{log}"
    );
    let handled = kube
        .node(NODE)
        .and_then(|node| node.metadata.annotations)
        .and_then(|a| a.get(HANDLED_EVENTS_ANNOTATION).cloned())
        .unwrap_or_default();
    assert!(handled.contains("spot-itn-"), "not recorded handled: {log}");
}

#[tokio::test]
async fn a_monitor_that_stops_ends_the_agent_with_its_name_and_reason() {
    let imds = ImdsSim::start().await.expect("IMDS simulator");
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    kube.add_node(NODE);
    let mut config = harness::config(NODE, &imds.url(), &[]).expect("flags");
    // The monitor refuses a zero interval and returns: nothing would poll IMDS.
    config.tuning.poll_interval = Duration::ZERO;
    let agent = harness::start::<spot_guard::aws::AwsAutoScaling>(&config, &kube.url(), None)
        .await
        .expect("agent starts");
    let ended = tokio::time::timeout(
        Duration::from_secs(20),
        run::supervise(agent, std::future::pending()),
    )
    .await
    .expect("the supervisor notices the end")
    .expect_err("a core task ended");
    assert_eq!(ended.task, "IMDS monitor");
    assert!(
        ended
            .to_string()
            .contains("poll interval must be above zero"),
        "{ended}"
    );
}
