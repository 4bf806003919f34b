//! The liveness probe over HTTP: healthy while the IMDS monitor loop polls, unhealthy once it
//! stops, on the configured path only.

use std::net::SocketAddr;
use std::time::Duration;

use spot_guard::imds::ImdsClient;
use spot_guard::monitor::{self, MonitorSettings};
use spot_guard::report::Liveness;
use spot_guard::report::{ProbeSettings, bind, serve_probes};
use spot_guard::sim::imds::ImdsSim;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(20);

async fn start_probes(endpoint: &str, liveness: Liveness, max_staleness: Duration) -> String {
    spot_guard::tls::ensure_crypto_provider();
    let listener = bind("probes", SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let settings = ProbeSettings {
        endpoint: endpoint.to_owned(),
        max_staleness,
    };
    tokio::spawn(serve_probes(
        listener,
        settings,
        liveness,
        CancellationToken::new(),
    ));
    url
}

async fn get(url: &str) -> (u16, serde_json::Value) {
    let response = tokio::time::timeout(BOUND, reqwest::get(url))
        .await
        .expect("probe answered")
        .expect("probe sent");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// Polls the probe until it answers `status`, or fails at the bound.
async fn wait_for(url: &str, status: u16) -> serde_json::Value {
    tokio::time::timeout(BOUND, async {
        loop {
            let (got, body) = get(url).await;
            if got == status {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("probe {url} never answered {status}"))
}

#[tokio::test]
async fn healthy_while_the_monitor_polls_and_unhealthy_once_it_stops() {
    spot_guard::tls::ensure_crypto_provider();
    let imds = ImdsSim::start().await.unwrap();
    let client = ImdsClient::new(&imds.url(), 1).unwrap();
    let liveness = Liveness::default();
    let (notices, _keep) = mpsc::channel(8);
    let stop_monitor = CancellationToken::new();
    let settings = MonitorSettings {
        interval: Duration::from_millis(50),
        ..MonitorSettings::default()
    };
    let monitor = tokio::spawn(monitor::run_with_liveness(
        client,
        settings,
        notices,
        stop_monitor.clone(),
        liveness.clone(),
    ));
    let url = format!(
        "{}/healthz",
        start_probes("/healthz", liveness, Duration::from_millis(600)).await
    );

    tokio::time::timeout(BOUND, async {
        while get(&url).await.1["health"] != "OK" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("probe reports OK once the monitor has polled");

    stop_monitor.cancel();
    tokio::time::timeout(BOUND, monitor)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let body = wait_for(&url, 503).await;
    assert_eq!(body["health"], "STALE");
    assert!(body["lastPollSecondsAgo"].as_f64().unwrap() > 0.6, "{body}");
}

#[tokio::test]
async fn a_monitor_that_never_polls_turns_unhealthy() {
    let url = start_probes("/healthz", Liveness::default(), Duration::from_millis(300)).await;
    let body = wait_for(&format!("{url}/healthz"), 503).await;
    assert_eq!(body["health"], "STALE");
    assert!(body["lastPollSecondsAgo"].is_null());
}

#[tokio::test]
async fn custom_endpoint_is_served_and_other_paths_are_not_found() {
    let url = start_probes("/alive", Liveness::default(), Duration::from_secs(3600)).await;
    let (status, body) = get(&format!("{url}/alive")).await;
    assert_eq!(status, 200, "starting up, within the allowed staleness");
    assert_eq!(body["health"], "STARTING");
    assert_eq!(get(&format!("{url}/healthz")).await.0, 404);
    assert_eq!(get(&format!("{url}/metrics")).await.0, 404);
}

#[test]
fn endpoint_must_be_a_path() {
    let settings = |endpoint: &str| ProbeSettings {
        endpoint: endpoint.to_owned(),
        max_staleness: Duration::from_secs(30),
    };
    assert!(settings("/healthz").validate().is_ok());
    let error = settings("healthz").validate().unwrap_err();
    assert!(
        error.to_string().contains("PROBES_SERVER_ENDPOINT"),
        "{error}"
    );
}
