//! NTH's webhook against a local receiver that records what it got: the default template,
//! custom templates, headers, template files and proxies, and a broken receiver that is
//! only logged and counted, never raised to the agent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use spot_guard::instance_metadata::InstanceMetadata;
use spot_guard::report::{
    InterruptionEvent, Metrics, NodeAction, NodeMetadata, ReportError, ReportSettings, Reporter,
    SpotGuardStep, Webhook, WebhookError, WebhookSettings,
};
use tokio::net::TcpListener;

const BOUND: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
struct Received {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
}

#[derive(Clone)]
struct ReceiverState {
    received: Arc<Mutex<Vec<Received>>>,
    status: StatusCode,
    delay: Duration,
}

/// A webhook receiver (or HTTP proxy: it records absolute-form requests too).
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(status: StatusCode, delay: Duration) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let state = ReceiverState {
            received: Arc::clone(&received),
            status,
            delay,
        };
        let app = Router::new().fallback(record).with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn record(
    State(state): State<ReceiverState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    state.received.lock().unwrap().push(Received {
        method,
        uri,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    tokio::time::sleep(state.delay).await;
    state.status
}

fn install_crypto() {
    spot_guard::tls::ensure_crypto_provider();
}

fn node() -> NodeMetadata {
    NodeMetadata::new("ip-10-0-1-23.eu-west-1.compute.internal").with_instance(&InstanceMetadata {
        instance_id: "i-0123456789abcdef0".into(),
        availability_zone: "eu-west-1a".into(),
        ..InstanceMetadata::default()
    })
}

fn spot_itn() -> InterruptionEvent {
    InterruptionEvent::spot_interruption("spot-itn-abc123", "2020-10-27T08:22:00Z")
}

fn reporter_with(webhook: WebhookSettings) -> (Reporter, Metrics) {
    let metrics = Metrics::new();
    let webhook = Webhook::new(&webhook).expect("valid webhook settings");
    let reporter = Reporter::with_sinks(node(), Some(webhook), None, Some(metrics.clone()));
    (reporter, metrics)
}

#[tokio::test]
async fn default_template_posts_nth_message_once_after_cordon_and_drain() {
    install_crypto();
    let receiver = Receiver::start(StatusCode::OK, Duration::ZERO).await;
    let (reporter, _) = reporter_with(WebhookSettings::new(format!("{}/hook", receiver.url)));
    let event = spot_itn();

    reporter.node_action(&event, NodeAction::Taint, Ok(()));
    reporter.node_action(&event, NodeAction::CordonAndDrain, Ok(()));
    assert!(reporter.flush(BOUND).await, "webhook queue did not drain");

    let received = receiver.received();
    assert_eq!(
        received.len(),
        1,
        "only cordon-and-drain posts: {received:?}"
    );
    let post = &received[0];
    assert_eq!(post.method, Method::POST);
    assert_eq!(post.uri.path(), "/hook");
    assert_eq!(post.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&post.body).expect("default body is JSON");
    assert_eq!(
        body["text"],
        "[NTH][Instance Interruption] EventID: spot-itn-abc123 - Kind: SPOT_ITN - Instance: i-0123456789abcdef0 - Node: ip-10-0-1-23.eu-west-1.compute.internal - Description: Spot ITN received. Instance will be interrupted at 2020-10-27T08:22:00Z - Start Time: 2020-10-27 08:22:00 +0000 UTC"
    );
}

#[tokio::test]
async fn custom_template_and_headers_carry_spot_guard_fallback() {
    install_crypto();
    let receiver = Receiver::start(StatusCode::NO_CONTENT, Duration::ZERO).await;
    let mut settings = WebhookSettings::new(&receiver.url);
    settings.headers =
        r#"{"Content-type":"application/json","Authorization":"Bearer t0ken"}"#.into();
    settings.template = r#"{"id":"{{ .EventID }}","kind":"{{ .Kind | lower }}","asg":"{{ .AutoScalingGroupName }}","reason":"{{ .Reason }}","node":"{{ .NodeName }}"}"#.into();
    let (reporter, _) = reporter_with(settings);
    let event = InterruptionEvent::rebalance_recommendation(
        "rebalance-recommendation-42",
        "2020-10-27T08:22:00Z",
    );

    reporter.spot_guard(
        &event,
        SpotGuardStep::ScaleUp {
            asg: "spot-asg",
            from: 3,
            to: 4,
        },
    );
    reporter.spot_guard(
        &event,
        SpotGuardStep::Fallback {
            spot_asg: "spot-asg",
            on_demand_asg: "od-asg",
            reason: "insufficient_capacity",
            detail: "InsufficientInstanceCapacity in eu-west-1a",
        },
    );
    reporter.spot_guard(
        &event,
        SpotGuardStep::InService {
            asg: "od-asg",
            on_demand: true,
            since_notice: Some(Duration::from_secs(95)),
        },
    );
    assert!(reporter.flush(BOUND).await);

    let received = receiver.received();
    let bodies: Vec<serde_json::Value> = received
        .iter()
        .map(|post| serde_json::from_str(&post.body).expect("custom body is JSON"))
        .collect();
    assert_eq!(
        bodies.len(),
        2,
        "fallback and InService post, scale-up does not: {bodies:?}"
    );
    assert_eq!(
        bodies[0],
        serde_json::json!({"id": "rebalance-recommendation-42", "kind": "spot_guard_fallback", "asg": "od-asg", "reason": "insufficient_capacity", "node": "ip-10-0-1-23.eu-west-1.compute.internal"})
    );
    assert_eq!(bodies[1]["kind"], "spot_guard_in_service");
    assert_eq!(bodies[1]["asg"], "od-asg");
    for post in &received {
        assert_eq!(post.headers["authorization"], "Bearer t0ken");
        assert_eq!(post.headers["content-type"], "application/json");
    }
}

#[tokio::test]
async fn template_file_replaces_the_template() {
    install_crypto();
    let receiver = Receiver::start(StatusCode::OK, Duration::ZERO).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "node={{ .NodeName }} instance={{ .InstanceID }} zone={{ .AvailabilityZone }}",
    )
    .unwrap();
    let mut settings = WebhookSettings::new(&receiver.url);
    settings.template = "ignored {{ .EventID }}".into();
    settings.template_file = Some(file.path().to_owned());
    let (reporter, _) = reporter_with(settings);

    reporter.node_action(&spot_itn(), NodeAction::Cordon, Ok(()));
    assert!(reporter.flush(BOUND).await);

    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].body,
        "node=ip-10-0-1-23.eu-west-1.compute.internal instance=i-0123456789abcdef0 zone=eu-west-1a"
    );
}

#[tokio::test]
async fn proxy_carries_the_post() {
    install_crypto();
    let proxy = Receiver::start(StatusCode::OK, Duration::ZERO).await;
    let mut settings = WebhookSettings::new("http://hooks.example.invalid/notify");
    settings.proxy = Some(proxy.url.clone());
    let webhook = Webhook::new(&settings).unwrap();

    webhook
        .post(&node(), &spot_itn(), "")
        .await
        .expect("posted through the proxy");

    let received = proxy.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].uri.host(), Some("hooks.example.invalid"));
    assert_eq!(received[0].uri.path(), "/notify");
}

#[tokio::test]
async fn failing_webhooks_are_errors_to_log_not_to_raise() {
    install_crypto();
    let failing = Receiver::start(StatusCode::INTERNAL_SERVER_ERROR, Duration::ZERO).await;
    let webhook = Webhook::new(&WebhookSettings::new(&failing.url)).unwrap();
    let error = webhook.post(&node(), &spot_itn(), "").await.unwrap_err();
    assert!(
        matches!(error, WebhookError::Status { status: 500, .. }),
        "{error}"
    );

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let webhook = Webhook::new(&WebhookSettings::new(&closed_url)).unwrap();
    let error = webhook.post(&node(), &spot_itn(), "").await.unwrap_err();
    assert!(matches!(error, WebhookError::Send { .. }), "{error}");

    let hanging = Receiver::start(StatusCode::OK, Duration::from_secs(3600)).await;
    let mut settings = WebhookSettings::new(&hanging.url);
    settings.timeout = Duration::from_millis(200);
    let webhook = Webhook::new(&settings).unwrap();
    let error = tokio::time::timeout(BOUND, webhook.post(&node(), &spot_itn(), ""))
        .await
        .expect("the post's own timeout ends it")
        .unwrap_err();
    assert!(matches!(error, WebhookError::Send { .. }), "{error}");
}

#[tokio::test]
async fn reporter_survives_a_broken_webhook_and_counts_it() {
    install_crypto();
    let failing = Receiver::start(StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO).await;
    let (reporter, metrics) = reporter_with(WebhookSettings::new(&failing.url));

    reporter.node_action(&spot_itn(), NodeAction::CordonAndDrain, Ok(()));
    reporter.node_action(&spot_itn(), NodeAction::Cordon, Err("node not found"));
    assert!(reporter.flush(BOUND).await);

    assert_eq!(failing.received().len(), 2, "both posts were tried");
    let text = metrics.encode().unwrap();
    assert!(
        text.contains(r#"spot_guard_report_errors_total{sink="webhook"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn bad_webhook_settings_are_refused_at_start_up() {
    install_crypto();
    let with = |change: fn(&mut WebhookSettings)| {
        let mut webhook = WebhookSettings::new("http://127.0.0.1:9/hook");
        change(&mut webhook);
        ReportSettings {
            webhook: Some(webhook),
            ..ReportSettings::default()
        }
        .validate()
    };
    assert!(with(|_| {}).is_ok());
    assert!(matches!(
        with(|w| w.headers = "{not json".into()),
        Err(ReportError::WebhookHeaders { .. })
    ));
    assert!(matches!(
        with(|w| w.template_file = Some("/nonexistent/webhook.tmpl".into())),
        Err(ReportError::WebhookTemplateFile { .. })
    ));
    assert!(matches!(
        with(|w| w.template = "{{ .EventID ".into()),
        Err(ReportError::WebhookTemplateParse { .. })
    ));
    assert!(matches!(
        with(|w| w.template = "{{ .NoSuchField }}".into()),
        Err(ReportError::WebhookTemplateRender { .. })
    ));
    assert!(matches!(
        with(|w| w.proxy = Some("not a url".into())),
        Err(ReportError::WebhookProxy { .. })
    ));
}
