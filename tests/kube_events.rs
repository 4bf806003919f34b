//! Kubernetes events about the node, written to the fake API server: NTH's reasons and
//! annotations, Spot Guard's new reasons, and an events API that fails without harm.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use spot_guard::instance_metadata::InstanceMetadata;
use spot_guard::node::client_for_url;
use spot_guard::report::{
    InterruptionEvent, KubeEventError, KubeEvents, Metrics, NodeAction, NodeMetadata,
    ReasonedEvent, ReportError, ReportSettings, Reporter, SpotGuardStep, reason,
};
use spot_guard::sim::kube::FakeKube;

const BOUND: Duration = Duration::from_secs(20);
const NODE: &str = "ip-10-0-1-23.eu-west-1.compute.internal";
const EVENTS_PATH: &str = "/api/v1/namespaces/default/events";

async fn fake_kube() -> (FakeKube, kube::Client) {
    spot_guard::tls::ensure_crypto_provider();
    let kube = FakeKube::start().await.expect("start fake API server");
    kube.add_node(NODE);
    let client = client_for_url(&kube.url()).expect("client for the fake API");
    (kube, client)
}

fn node() -> NodeMetadata {
    NodeMetadata::new(NODE).with_instance(&InstanceMetadata {
        instance_id: "i-0123456789abcdef0".into(),
        region: "eu-west-1".into(),
        ..InstanceMetadata::default()
    })
}

fn settings(extra_annotations: &str) -> ReportSettings {
    ReportSettings {
        emit_kubernetes_events: true,
        kubernetes_events_extra_annotations: extra_annotations.into(),
        ..ReportSettings::default()
    }
}

fn summary(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|event| {
            (
                event.reason.clone().unwrap_or_default(),
                event.type_.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(reason, kind)| (reason.to_string(), kind.to_string()))
        .collect()
}

#[tokio::test]
async fn notices_and_node_actions_become_events_with_nth_reasons() {
    let (kube, client) = fake_kube().await;
    let reporter = Reporter::start(&settings("team=infra,pager=on"), node(), Some(client)).unwrap();
    let event = InterruptionEvent::rebalance_recommendation(
        "rebalance-recommendation-1",
        "2020-10-27T08:22:00Z",
    );

    reporter.notice_received(&event);
    reporter.node_action(&event, NodeAction::Taint, Ok(()));
    reporter.node_action(
        &event,
        NodeAction::Cordon,
        Err("the API server refused: forbidden"),
    );
    reporter.node_action(&event, NodeAction::CordonAndDrain, Ok(()));
    reporter.node_action(&event, NodeAction::Uncordon, Ok(()));
    assert!(reporter.flush(BOUND).await, "events queue did not drain");

    let events = kube.events();
    assert_eq!(
        summary(&events),
        pairs(&[
            ("RebalanceRecommendation", "Normal"),
            ("PreDrain", "Normal"),
            ("CordonError", "Warning"),
            ("CordonAndDrain", "Normal"),
            ("Uncordon", "Normal"),
        ])
    );
    // NTH's messages (pkg/observability/k8s-events.go and the rebalance monitor's
    // description), so `kubectl get events` reads as it did with NTH.
    let messages: Vec<&str> = events
        .iter()
        .map(|event| event.message.as_deref().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "Rebalance recommendation received. Instance will be cordoned at 2020-10-27T08:22:00Z",
            "Pre-drain task successfully executed",
            "There was a problem while trying to cordon the node: the API server refused: forbidden",
            "Node successfully cordoned and drained",
            "Node successfully uncordoned",
        ]
    );
    for written in &events {
        assert_eq!(written.metadata.namespace.as_deref(), Some("default"));
        let object = &written.involved_object;
        assert_eq!(object.kind.as_deref(), Some("Node"));
        assert_eq!(object.name.as_deref(), Some(NODE));
        assert_eq!(
            object.uid.as_deref(),
            Some(NODE),
            "kubelet-style uid when the real one is unknown"
        );
        let source = written.source.as_ref().unwrap();
        // NTH's docs: `kubectl get events --field-selector source=aws-node-termination-handler`.
        assert_eq!(
            source.component.as_deref(),
            Some("aws-node-termination-handler")
        );
        assert_eq!(source.host.as_deref(), Some(NODE));
        let annotations = written.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["team"], "infra");
        assert_eq!(annotations["pager"], "on");
        assert_eq!(annotations["instance-id"], "i-0123456789abcdef0");
        assert_eq!(annotations["region"], "eu-west-1");
        // NTH writes its ten IMDS annotations even when IMDS had no value.
        for key in [
            "account-id",
            "availability-zone",
            "instance-id",
            "instance-life-cycle",
            "instance-type",
            "local-hostname",
            "local-ipv4",
            "public-hostname",
            "public-ipv4",
            "region",
        ] {
            assert!(annotations.contains_key(key), "{key} missing");
        }
    }
}

#[tokio::test]
async fn spot_guard_steps_have_their_own_reasons() {
    let (kube, client) = fake_kube().await;
    let node = NodeMetadata {
        node_uid: Some("5f0c6a2e-0000-4000-8000-000000000001".into()),
        ..node()
    };
    let reporter = Reporter::start(&settings(""), node, Some(client)).unwrap();
    let event = InterruptionEvent::rebalance_recommendation(
        "rebalance-recommendation-2",
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
            reason: "timeout",
            detail: "no new InService instance within 5m",
        },
    );
    reporter.spot_guard(
        &event,
        SpotGuardStep::Failed {
            on_demand_asg: "od-asg",
            reason: "max_size",
            detail: "ASG od-asg is at MaxSize 10",
        },
    );
    reporter.spot_guard(
        &event,
        SpotGuardStep::InService {
            asg: "spot-asg",
            on_demand: false,
            since_notice: None,
        },
    );
    reporter.spot_guard(&event, SpotGuardStep::Preempted { asg: "spot-asg" });
    assert!(reporter.flush(BOUND).await);

    let events = kube.events();
    assert_eq!(
        summary(&events),
        pairs(&[
            ("SpotGuardScaleUp", "Normal"),
            ("SpotGuardFallback", "Warning"),
            ("SpotGuardFailed", "Warning"),
            ("SpotGuardInService", "Normal"),
            ("SpotGuardPreempted", "Warning"),
        ])
    );
    assert!(
        events[0]
            .message
            .as_deref()
            .unwrap()
            .contains("from 3 to 4")
    );
    assert!(
        events[1]
            .message
            .as_deref()
            .unwrap()
            .contains("no new InService instance within 5m")
    );
    assert!(events[2].message.as_deref().unwrap().contains("MaxSize 10"));
    assert_eq!(
        events[0].involved_object.uid.as_deref(),
        Some("5f0c6a2e-0000-4000-8000-000000000001")
    );
    assert!(
        events[0].metadata.annotations.is_some(),
        "instance metadata annotations are present without extra ones"
    );
}

#[tokio::test]
async fn a_failing_events_api_is_logged_counted_and_passed_over() {
    let (kube, client) = fake_kube().await;
    let metrics = Metrics::new();
    let events = KubeEvents::new(client, node(), "").unwrap();
    let reporter = Reporter::with_sinks(node(), None, Some(events), Some(metrics.clone()));
    kube.fail_next("POST", EVENTS_PATH, 1, 500);
    let event = InterruptionEvent::spot_interruption("spot-itn-1", "2020-10-27T08:24:00Z");

    reporter.notice_received(&event);
    reporter.node_action(&event, NodeAction::CordonAndDrain, Ok(()));
    assert!(reporter.flush(BOUND).await);

    assert_eq!(
        summary(&kube.events()),
        pairs(&[("CordonAndDrain", "Normal")])
    );
    let text = metrics.encode().unwrap();
    assert!(
        text.contains(r#"spot_guard_report_errors_total{sink="kubernetes_events"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_slow_events_api_is_cut_off_by_the_timeout() {
    let (kube, client) = fake_kube().await;
    kube.set_latency(Duration::from_secs(3600));
    let events = KubeEvents::new(client, node(), "")
        .unwrap()
        .with_timeout(Duration::from_millis(200));

    let result = tokio::time::timeout(
        BOUND,
        events.emit(&ReasonedEvent::normal(reason::CORDON, "Node cordoned")),
    )
    .await
    .expect("the event's own timeout ends it");
    assert!(
        matches!(result, Err(KubeEventError::TimedOut { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn bad_extra_annotations_and_a_missing_client_are_refused() {
    let (_kube, client) = fake_kube().await;
    let error = Reporter::start(&settings("team"), node(), Some(client))
        .expect_err("annotation without '=' is refused");
    assert!(
        matches!(error, ReportError::ExtraAnnotations { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("KUBERNETES_EVENTS_EXTRA_ANNOTATIONS")
    );
    assert!(settings("a=b,c").validate().is_err());
    assert!(matches!(
        Reporter::start(&settings(""), node(), None).err(),
        Some(ReportError::NoKubeClient)
    ));
}
