//! Prometheus metrics scraped from the real endpoint: NTH's names and labels, Spot Guard's
//! counters and histograms, 404 elsewhere, a clear bind error, and a clean stop.

use std::net::SocketAddr;
use std::time::Duration;

use spot_guard::report::{
    InterruptionEvent, NodeAction, NodeMetadata, ReportSettings, Reporter, ServeError,
    SpotGuardStep, bind, monitor_kind, serve_metrics,
};
use spot_guard::spot_guard::decide::CapacityFailure;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(20);
const NODE: &str = "node-a";

struct Server {
    url: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

async fn start(reporter: &Reporter) -> Server {
    let listener = bind("metrics", SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let metrics = reporter.metrics().expect("metrics are enabled");
    let task = tokio::spawn(serve_metrics(listener, metrics, shutdown.clone()));
    Server {
        url,
        shutdown,
        task,
    }
}

fn reporter() -> Reporter {
    let settings = ReportSettings {
        metrics: true,
        ..ReportSettings::default()
    };
    Reporter::start(&settings, NodeMetadata::new(NODE), None).unwrap()
}

async fn scrape(url: &str) -> (u16, String, String) {
    // Prometheus asks for OpenMetrics first (other clients get the text format).
    let request = reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,*/*;q=0.1",
        )
        .send();
    let response = tokio::time::timeout(BOUND, request)
        .await
        .expect("scrape answered")
        .expect("scrape sent");
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (status, content_type, response.text().await.unwrap())
}

fn assert_line(text: &str, line: &str) {
    assert!(
        text.lines().any(|candidate| candidate == line),
        "missing line {line}\n--- scrape ---\n{text}"
    );
}

#[tokio::test]
async fn scrape_shows_nth_and_spot_guard_metrics() {
    spot_guard::tls::ensure_crypto_provider();
    let reporter = reporter();
    let server = start(&reporter).await;
    let spot = InterruptionEvent::spot_interruption("spot-itn-1", "2020-10-27T08:24:00Z");
    let rebalance = InterruptionEvent::rebalance_recommendation(
        "rebalance-recommendation-1",
        "2020-10-27T08:22:00Z",
    );

    reporter.node_action(&spot, NodeAction::Taint, Ok(()));
    reporter.node_action(&spot, NodeAction::CordonAndDrain, Ok(()));
    reporter.node_action(&rebalance, NodeAction::CordonAndDrain, Ok(()));
    reporter.node_action(&rebalance, NodeAction::Cordon, Err("forbidden"));
    reporter.monitor_error(monitor_kind::SPOT_ITN);
    reporter.spot_guard(
        &rebalance,
        SpotGuardStep::Fallback {
            spot_asg: "spot-asg",
            on_demand_asg: "od-asg",
            // What the agent reports for EC2's InsufficientInstanceCapacity.
            reason: CapacityFailure::InsufficientCapacity {
                message: "InsufficientInstanceCapacity".to_owned(),
            }
            .reason(),
            detail: "InsufficientInstanceCapacity",
        },
    );
    reporter.spot_guard(
        &rebalance,
        SpotGuardStep::InService {
            asg: "od-asg",
            on_demand: true,
            since_notice: Some(Duration::from_secs(100)),
        },
    );
    reporter.drain_finished("complete", Duration::from_secs(12));
    reporter.pdb_eviction_retries(3);

    let (status, content_type, text) = scrape(&server.url).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert_line(
        &text,
        r#"actions_total{node_action="cordon-and-drain",node_status="success",otel_scope_name="aws.node.termination.handler",otel_scope_version=""} 2"#,
    );
    assert_line(
        &text,
        r#"actions_total{node_action="pre-drain",node_status="success",otel_scope_name="aws.node.termination.handler",otel_scope_version=""} 1"#,
    );
    assert_line(
        &text,
        r#"actions_total{node_action="cordon",node_status="error",otel_scope_name="aws.node.termination.handler",otel_scope_version=""} 1"#,
    );
    assert_line(
        &text,
        r#"actions_node_total{node_action="cordon-and-drain",node_event_id="spot-itn-1",node_name="node-a",node_status="success",otel_scope_name="aws.node.termination.handler",otel_scope_version=""} 1"#,
    );
    assert_line(
        &text,
        r#"events_error_total{event_error_where="SPOT_ITN_MONITOR",otel_scope_name="aws.node.termination.handler",otel_scope_version=""} 1"#,
    );
    assert_line(
        &text,
        r#"spot_guard_scale_attempts_total{asg="spot-asg",outcome="failed"} 1"#,
    );
    assert_line(
        &text,
        r#"spot_guard_scale_attempts_total{asg="od-asg",outcome="in_service"} 1"#,
    );
    assert_line(
        &text,
        r#"spot_guard_fallbacks_total{reason="insufficient-capacity"} 1"#,
    );
    assert_line(
        &text,
        r#"spot_guard_replacement_in_service_seconds_count{asg="od-asg"} 1"#,
    );
    assert_line(
        &text,
        r#"spot_guard_replacement_in_service_seconds_bucket{le="90.0",asg="od-asg"} 0"#,
    );
    assert_line(
        &text,
        r#"spot_guard_replacement_in_service_seconds_bucket{le="120.0",asg="od-asg"} 1"#,
    );
    assert_line(
        &text,
        r#"spot_guard_drain_duration_seconds_sum{outcome="complete"} 12.0"#,
    );
    assert_line(&text, "spot_guard_pdb_eviction_retries_total 3");
    assert_nth_e2e_query_matches(&text);

    server.shutdown.cancel();
    tokio::time::timeout(BOUND, server.task)
        .await
        .expect("server stops on shutdown")
        .unwrap()
        .expect("clean stop");
}

/// NTH's test/e2e/prometheus-metrics-test, as a user's scripts copy it: the scrape must
/// contain `cordon-and-drain` and `pre-drain`, and for each of them a line that the
/// query below matches, followed by whitespace and a count.
fn assert_nth_e2e_query_matches(text: &str) {
    for action in ["cordon-and-drain", "pre-drain"] {
        assert!(text.contains(action), "{action} missing from the scrape");
        let query = format!(
            r#"actions_total{{node_action="{action}",node_status="success",otel_scope_name="aws.node.termination.handler",otel_scope_version=""}}"#
        );
        let count = text.lines().find_map(|line| {
            let rest = line.strip_prefix(&query)?;
            let trimmed = rest.trim_start();
            (trimmed.len() < rest.len()).then(|| trimmed.parse::<u64>().ok())?
        });
        assert!(
            count.is_some_and(|count| count >= 1),
            "no line matches NTH's e2e query {query}\n{text}"
        );
    }
}

#[tokio::test]
async fn other_paths_are_not_found_and_disabled_metrics_record_nothing() {
    spot_guard::tls::ensure_crypto_provider();
    let server = start(&reporter()).await;
    let response = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);

    let disabled =
        Reporter::start(&ReportSettings::default(), NodeMetadata::new(NODE), None).unwrap();
    assert!(disabled.metrics().is_none());
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_bind_error() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let error = bind("metrics", addr).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, ServeError::Bind { .. }));
    assert!(
        message.contains("metrics") && message.contains(&addr.to_string()),
        "{message}"
    );
}
