//! IMDS faults seen by the monitor, the agent and the binary: an IMDS that is not there at
//! start, refused tokens, 500s, answers slower than the client timeout, a notice that
//! disappears and comes back. Each ends with the notice delivered (or acted on) once and
//! nothing stopped or panicked. (Client-level retries, garbage JSON and the monitor's outage
//! recovery are in tests/imds_client.rs and tests/monitor.rs.)

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spot_guard::imds::{ImdsClient, REBALANCE_RECOMMENDATION_PATH, SPOT_INSTANCE_ACTION_PATH};
use spot_guard::monitor::{self, MonitorError, MonitorSettings, Notice};
use spot_guard::report::reason;
use spot_guard::sim::asg::{AsgSim, Behaviour, GroupSpec};
use spot_guard::sim::harness;
use spot_guard::sim::imds::{ImdsSim, TokenMode};
use spot_guard::sim::kube::{EvictionOutcome, FakeKube, FakePod};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const POLL: Duration = Duration::from_millis(50);
const BOUND: Duration = Duration::from_secs(20);
const NOTICE_TIME: &str = "2026-11-24T10:00:00Z";
const NODE: &str = "ip-10-0-5-5.ec2.internal";

struct Monitor {
    notices: mpsc::Receiver<Notice>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), MonitorError>>,
}

fn start_monitor(sim: &ImdsSim, request_timeout: Duration) -> Monitor {
    let imds = ImdsClient::builder(&sim.url())
        .tries(2)
        .retry_base_delay(Duration::from_millis(10))
        .request_timeout(request_timeout)
        .build()
        .expect("IMDS client");
    let (sender, notices) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(monitor::run(
        imds,
        MonitorSettings {
            interval: POLL,
            ..MonitorSettings::default()
        },
        sender,
        shutdown.clone(),
    ));
    Monitor {
        notices,
        shutdown,
        task,
    }
}

impl Monitor {
    async fn next_notice(&mut self) -> Notice {
        tokio::time::timeout(BOUND, self.notices.recv())
            .await
            .expect("a notice in time")
            .expect("the monitor is still running")
    }

    fn assert_nothing_sent(&mut self) {
        if let Ok(notice) = self.notices.try_recv() {
            panic!("unexpected notice {notice:?}");
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let outcome = tokio::time::timeout(BOUND, self.task)
            .await
            .expect("the monitor stops")
            .expect("the monitor did not panic");
        assert!(outcome.is_ok(), "{outcome:?}");
    }
}

async fn wait_for_gets(sim: &ImdsSim, path: &str, more: u64) {
    let target = sim.gets(path) + more;
    tokio::time::timeout(BOUND, async {
        while sim.gets(path) < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the monitor keeps polling");
}

fn is_rebalance(notice: &Notice) -> bool {
    matches!(notice, Notice::RebalanceRecommendation { notice_time, .. } if notice_time == NOTICE_TIME)
}

async fn sim() -> ImdsSim {
    spot_guard::tls::ensure_crypto_provider();
    ImdsSim::start().await.expect("IMDS simulator")
}

#[tokio::test]
async fn token_refused_with_403_or_405_falls_back_to_v1_and_the_notice_arrives() {
    for status in [403, 405] {
        let sim = sim().await;
        sim.set_token_mode(TokenMode::TokenRefused(status));
        sim.set_rebalance(Some(NOTICE_TIME));
        let mut monitor = start_monitor(&sim, Duration::from_millis(500));

        let notice = monitor.next_notice().await;

        assert!(is_rebalance(&notice), "token {status}: {notice:?}");
        assert_eq!(sim.gets_with_token(), 0, "token {status}");
        monitor.stop().await;
    }
}

#[tokio::test]
async fn server_errors_delay_the_notice_but_never_lose_or_repeat_it() {
    let sim = sim().await;
    sim.set_rebalance(Some(NOTICE_TIME));
    // Enough 500s for several whole polls to fail (two tries per path).
    sim.fail_next_gets(12, 500);
    let mut monitor = start_monitor(&sim, Duration::from_millis(500));

    let notice = monitor.next_notice().await;
    assert!(is_rebalance(&notice), "{notice:?}");
    wait_for_gets(&sim, REBALANCE_RECOMMENDATION_PATH, 3).await;
    monitor.assert_nothing_sent();
    assert!(!monitor.task.is_finished(), "the monitor gave up");
    monitor.stop().await;
}

#[tokio::test]
async fn answers_slower_than_the_timeout_are_polled_through_then_the_notice_arrives() {
    let sim = sim().await;
    sim.set_rebalance(Some(NOTICE_TIME));
    sim.set_delay(Duration::from_millis(800));
    let mut monitor = start_monitor(&sim, Duration::from_millis(200));
    // Two whole polls cut by the timeout, nothing delivered from them.
    wait_for_gets(&sim, REBALANCE_RECOMMENDATION_PATH, 2).await;
    monitor.assert_nothing_sent();
    assert!(!monitor.task.is_finished(), "the monitor gave up");

    sim.set_delay(Duration::ZERO);
    let notice = monitor.next_notice().await;

    assert!(is_rebalance(&notice), "{notice:?}");
    monitor.stop().await;
}

#[tokio::test]
async fn an_imds_outage_mid_run_does_not_resend_a_notice_already_delivered() {
    let sim = sim().await;
    sim.set_spot_action(Some(("terminate", "2026-11-24T10:02:00Z")));
    let mut monitor = start_monitor(&sim, Duration::from_millis(300));
    let first = monitor.next_notice().await;
    assert!(
        matches!(first, Notice::SpotInterruption { .. }),
        "{first:?}"
    );

    sim.set_down(true);
    wait_for_gets(&sim, SPOT_INSTANCE_ACTION_PATH, 3).await;
    sim.set_down(false);
    wait_for_gets(&sim, SPOT_INSTANCE_ACTION_PATH, 3).await;

    monitor.assert_nothing_sent();
    monitor.stop().await;
}

// --- Through the agent, started as production starts it ------------------------------------

const SPOT_ASG: &str = "spot";
const ON_DEMAND_ASG: &str = "on-demand";
const INTERRUPTION_TIME: &str = "2026-11-24T10:02:00Z";

fn events_with_reason(kube: &FakeKube, wanted: &str) -> usize {
    kube.events()
        .iter()
        .filter(|event| event.reason.as_deref() == Some(wanted))
        .count()
}

fn successful_scale_ups(asg: &AsgSim) -> usize {
    asg.calls_of("SetDesiredCapacity")
        .iter()
        .filter(|call| call.error_code.is_none())
        .count()
}

/// Allowed evictions per pod name.
fn evictions_per_pod(kube: &FakeKube) -> BTreeMap<String, usize> {
    let mut evicted = BTreeMap::new();
    for eviction in kube.evictions() {
        if eviction.outcome == EvictionOutcome::Allowed {
            *evicted.entry(eviction.name.clone()).or_insert(0) += 1;
        }
    }
    evicted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recommendation_that_flaps_with_imds_errors_buys_one_instance_and_drains_once() {
    let imds = sim().await;
    let asg = AsgSim::start().await.expect("ASG simulator");
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    for name in [SPOT_ASG, ON_DEMAND_ASG] {
        asg.add_group(
            name,
            GroupSpec {
                desired: 2,
                launch_delay: Duration::from_millis(100),
                behaviour: Behaviour::Healthy,
                ..GroupSpec::default()
            },
        );
    }
    kube.add_node(NODE);
    let pods: Vec<String> = (0..3).map(|i| format!("web-{i}")).collect();
    for pod in &pods {
        kube.add_pod(FakePod::new("default", pod, NODE));
    }
    // The flags the chart sets for Spot Guard, parsed as the binary parses them; events on,
    // so that every notice the agent starts acting on leaves a trace in the fake API.
    let mut flags = harness::spot_guard_flags(SPOT_ASG, ON_DEMAND_ASG);
    flags.push("--metadata-tries=2".to_owned());
    flags.push("--emit-kubernetes-events=true".to_owned());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut config = harness::config(NODE, &imds.url(), &flags).expect("the flags are accepted");
    config.tuning.poll_interval = POLL;
    config.node_termination_grace_period = Duration::from_secs(5);
    let settings = config.spot_guard.as_mut().expect("Spot Guard is on");
    harness::fast_spot_guard(settings);
    settings.check_interval = Duration::from_millis(50);
    let mut agent = harness::start(&config, &kube.url(), Some(harness::aws(&asg)))
        .await
        .expect("the agent starts");

    // The recommendation comes through a burst of 500s.
    imds.fail_next_gets(6, 500);
    imds.set_rebalance(Some(NOTICE_TIME));
    assert!(
        agent.wait_handled(1, BOUND).await,
        "the recommendation is handled within {BOUND:?}"
    );
    assert_eq!(successful_scale_ups(&asg), 1, "{:?}", asg.calls());
    assert_eq!(asg.group(SPOT_ASG).expect("spot").desired, 3);
    let expected: BTreeMap<String, usize> = pods.iter().map(|pod| (pod.clone(), 1)).collect();
    assert_eq!(evictions_per_pod(&kube), expected, "each pod evicted once");

    // Once acted on, the recommendation goes, IMDS drops out, and the same recommendation
    // comes back through a few 503s.
    imds.set_rebalance(None);
    wait_for_gets(&imds, REBALANCE_RECOMMENDATION_PATH, 3).await;
    imds.set_down(true);
    wait_for_gets(&imds, REBALANCE_RECOMMENDATION_PATH, 2).await;
    imds.set_down(false);
    imds.fail_next_gets(3, 503);
    imds.set_rebalance(Some(NOTICE_TIME));
    // At most 3 of these 5 reads fail: the monitor has read the recommendation again.
    wait_for_gets(&imds, REBALANCE_RECOMMENDATION_PATH, 5).await;

    // Evidence that the agent is past the returned recommendation: a spot interruption
    // served only now reaches the agent after anything the monitor sent for it, and the
    // agent takes notices in order; handling it also shows the monitor and the agent alive.
    imds.set_spot_action(Some(("terminate", INTERRUPTION_TIME)));
    assert!(
        agent.wait_handled(2, BOUND).await,
        "the interruption served after the flapping is handled within {BOUND:?}"
    );
    assert!(
        agent.reporter.flush(BOUND).await,
        "the agent's events are written"
    );
    assert_eq!(
        events_with_reason(&kube, reason::REBALANCE_RECOMMENDATION),
        1,
        "the agent started acting on the recommendation once: {:?}",
        kube.events()
    );
    assert_eq!(
        events_with_reason(&kube, reason::SPOT_INTERRUPTION),
        1,
        "{:?}",
        kube.events()
    );
    assert_eq!(
        successful_scale_ups(&asg),
        1,
        "one SetDesiredCapacity in all: {:?}",
        asg.calls()
    );
    assert_eq!(asg.group(SPOT_ASG).expect("spot").desired, 3);
    assert_eq!(asg.group(ON_DEMAND_ASG).expect("on-demand").desired, 2);
    assert_eq!(
        evictions_per_pod(&kube),
        expected,
        "each pod evicted once, none again for the interruption"
    );
    tokio::time::timeout(BOUND, agent.stop())
        .await
        .expect("the agent stops");
}

// --- The binary with no IMDS at all ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_on_ec2_the_binary_says_so_keeps_running_and_backs_off() {
    spot_guard::tls::ensure_crypto_provider();
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    kube.add_node(NODE);
    // A port nobody listens on: connection refused, as off EC2 (or with IMDS disabled).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let dead_url = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
            kube.url()
        ),
    )
    .expect("kubeconfig");
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_spot-guard"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NODE_NAME", NODE)
        .env("INSTANCE_METADATA_URL", &dead_url)
        .env("METADATA_TRIES", "1")
        .env("KUBECONFIG", &kubeconfig)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("agent starts");

    // 2 s polls would make 5 polls (10 failure lines for its 2 paths) in these 9 s.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(9) {
        assert!(
            agent.try_wait().expect("wait").is_none(),
            "the agent exited without IMDS:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = agent.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = agent.kill();
            panic!("the agent did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(
        log.matches("is this an EC2 instance?").count(),
        1,
        "one clear start-up line:\n{log}"
    );
    let failure_lines = log.matches("Polling IMDS failed").count();
    assert!(
        (1..=6).contains(&failure_lines),
        "failed polls must back off, not spam ({failure_lines} lines):\n{log}"
    );
}
