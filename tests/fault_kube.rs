//! Kubernetes API faults against the fake API server: 5xx on node reads and writes,
//! conflicts that never stop, errors while listing pods, connections cut mid-drain, a node
//! that does not exist when a notice comes. Each test asserts what the node and its pods end
//! like, and that nothing hangs or panics.
//! (409 retried once, a missing node on a direct write, PDB 429s until the deadline,
//! eviction 5xx, pods that never terminate: tests/node_actions.rs and tests/drain.rs.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use spot_guard::aws::AwsAutoScaling;
use spot_guard::config::TaintEffect;
use spot_guard::drain::{DrainSettings, drain};
use spot_guard::names::SPOT_ITN_TAINT;
use spot_guard::node::{self, NodeClient};
use spot_guard::sim::harness::{self, fast_drain};
use spot_guard::sim::imds::ImdsSim;
use spot_guard::sim::kube::{EvictionOutcome, FakeKube, FakePod};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const NODE: &str = "ip-10-0-4-4.ec2.internal";
const BOUND: Duration = Duration::from_secs(30);

async fn fake() -> FakeKube {
    spot_guard::tls::ensure_crypto_provider();
    let fake = FakeKube::start().await.expect("fake Kubernetes API");
    fake.add_node(NODE);
    fake
}

fn node_path() -> String {
    format!("/api/v1/nodes/{NODE}")
}

fn taint_keys(fake: &FakeKube) -> Vec<String> {
    fake.node(NODE)
        .and_then(|n| n.spec)
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect()
}

fn cordoned(fake: &FakeKube) -> bool {
    fake.node(NODE)
        .and_then(|n| n.spec)
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

async fn bounded<T>(step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, step)
        .await
        .expect("finished within the bound")
}

#[tokio::test]
async fn server_errors_on_the_node_write_are_retried() {
    for status in [500, 503, 504] {
        let fake = fake().await;
        fake.fail_next("PATCH", &node_path(), 2, status);
        let node = NodeClient::new(
            node::client_for_url(&fake.url()).expect("client"),
            NODE,
            false,
        );

        let tainted = bounded(node.taint(SPOT_ITN_TAINT, "id", TaintEffect::NoSchedule)).await;

        assert!(matches!(tainted, Ok(true)), "{status}: {tainted:?}");
        assert_eq!(taint_keys(&fake), [SPOT_ITN_TAINT], "{status}");
    }
}

#[tokio::test]
async fn a_server_error_on_the_node_read_before_a_write_is_retried() {
    let fake = fake().await;
    fake.fail_next("GET", &node_path(), 1, 503);
    let node = NodeClient::new(
        node::client_for_url(&fake.url()).expect("client"),
        NODE,
        false,
    );

    let tainted = bounded(node.taint(SPOT_ITN_TAINT, "id", TaintEffect::NoSchedule)).await;

    assert!(matches!(tainted, Ok(true)), "{tainted:?}");
    assert_eq!(taint_keys(&fake), [SPOT_ITN_TAINT]);
}

#[tokio::test]
async fn conflicts_that_never_stop_end_in_an_error_naming_the_node() {
    let fake = fake().await;
    fake.fail_next("PATCH", &node_path(), 1000, 409);
    let node = NodeClient::new(
        node::client_for_url(&fake.url()).expect("client"),
        NODE,
        false,
    );

    let tainted = bounded(node.taint(SPOT_ITN_TAINT, "id", TaintEffect::NoSchedule)).await;

    let error = tainted
        .expect_err("a write that always conflicts fails")
        .to_string();
    assert!(error.contains(NODE), "{error}");
    assert!(taint_keys(&fake).is_empty());
    let patches = fake
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert!(
        (2..=10).contains(&patches),
        "bounded retries, got {patches}"
    );
}

#[tokio::test]
async fn errors_listing_the_pods_are_retried_and_the_drain_completes() {
    let fake = fake().await;
    // Cordoned first, as the agent does: the replacements cannot land here.
    fake.cordon(NODE);
    for i in 0..3 {
        fake.add_pod(FakePod::new("default", &format!("web-{i}"), NODE));
    }
    fake.fail_next("GET", "/api/v1/pods", 3, 503);
    let client = node::client_for_url(&fake.url()).expect("client");

    let report = bounded(drain(
        &client,
        NODE,
        &fast_drain(Duration::from_secs(10)),
        false,
    ))
    .await
    .expect("the drain runs");

    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.evicted.len(), 3);
    assert!(fake.pods_on_node(NODE).is_empty());
}

#[tokio::test]
async fn a_pod_list_that_keeps_failing_ends_the_drain_at_its_deadline_with_an_error() {
    let fake = fake().await;
    fake.add_pod(FakePod::new("default", "web-0", NODE));
    fake.fail_next("GET", "/api/v1/pods", 10_000, 500);
    let client = node::client_for_url(&fake.url()).expect("client");

    let outcome = bounded(drain(
        &client,
        NODE,
        &fast_drain(Duration::from_secs(1)),
        false,
    ))
    .await;

    let error = outcome.expect_err("no list, no drain").to_string();
    assert!(error.contains(NODE), "{error}");
    assert_eq!(fake.pods_on_node(NODE).len(), 1);
}

// --- Connections cut mid-drain ----------------------------------------------------------------

/// A TCP relay in front of the fake API that can cut every open connection and refuse new
/// ones for a while, as a restarting API server or a flapping network does.
struct Relay {
    url: String,
    refusing: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay port");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let refusing = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let refusing = refusing.clone();
            let connections = connections.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if refusing.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection closed
                    }
                    let upstream = upstream.clone();
                    let relay = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(relay);
                }
            }
        });
        Relay {
            url,
            refusing,
            connections,
            accept,
        }
    }

    fn cut(&self, refuse_new: bool) {
        self.refusing.store(refuse_new, Ordering::SeqCst);
        for connection in self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            connection.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut(true);
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_mid_drain_are_survived_and_every_pod_goes() {
    let fake = fake().await;
    fake.cordon(NODE);
    for i in 0..40 {
        fake.add_pod(FakePod::new("default", &format!("web-{i:02}"), NODE));
    }
    fake.set_latency(Duration::from_millis(20));
    let relay = Relay::start(fake.url().trim_start_matches("http://").to_owned()).await;
    let client = node::client_for_url(&relay.url).expect("client");
    let settings = DrainSettings {
        max_concurrent_evictions: 4,
        ..fast_drain(Duration::from_secs(20))
    };
    let drain_task = tokio::spawn(async move { drain(&client, NODE, &settings, false).await });

    bounded(async {
        while fake.evictions().len() < 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    relay.cut(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.cut(false);
    let report = bounded(drain_task)
        .await
        .expect("the drain did not panic")
        .expect("the drain runs");

    assert!(report.is_complete(), "{report:?}");
    assert!(fake.pods_on_node(NODE).is_empty());
    let allowed = fake
        .evictions()
        .iter()
        .filter(|e| e.outcome == EvictionOutcome::Allowed)
        .count();
    assert!(allowed >= 40, "every pod evicted: {allowed}");
}

// --- Through the agent ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_missing_when_a_notice_comes_is_reported_and_the_agent_goes_on() {
    let fake = fake().await;
    let imds = ImdsSim::start().await.expect("IMDS simulator");
    let config = harness::config(NODE, &imds.url(), &["--taint-node=true"]).expect("flags");
    let mut agent = harness::start::<AwsAutoScaling>(&config, &fake.url(), None)
        .await
        .expect("agent starts");
    // The node object is deleted under the running agent; a pod still claims it.
    assert!(fake.remove_node(NODE));
    fake.add_pod(FakePod::new("default", "web-0", NODE));

    imds.set_spot_action(Some(("terminate", "2026-11-24T10:02:00Z")));
    assert!(
        agent.wait_handled(1, BOUND).await,
        "the notice for a missing node was not handled"
    );

    // The node comes back (e.g. it re-registered) and the next notice is acted on.
    fake.add_node(NODE);
    imds.set_spot_action(Some(("terminate", "2026-11-24T10:04:00Z")));
    assert!(
        agent.wait_handled(2, BOUND).await,
        "the agent stopped acting after the missing node"
    );

    assert_eq!(taint_keys(&fake), [SPOT_ITN_TAINT]);
    assert!(cordoned(&fake));
    bounded(agent.stop()).await;
}
