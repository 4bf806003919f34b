use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use crate::names::{
    CAPACITY_FAILURE_ANNOTATION, HANDLED_EVENTS_ANNOTATION, LAST_TARGET_ANNOTATION,
    REPLACEMENT_ANNOTATION, SCALE_BACK_ANNOTATION,
};
use crate::spot_guard::ledger::key as ledger_key;

use super::rows::{CoolOffView, GiveBackRow, LastTargetView, NodeRow, Step, status};
use super::table::{age, tables};

/// 2026-01-01T00:10:00Z in Unix milliseconds; records below are minutes before it.
const NOW_MS: u64 = 1_767_226_200_000;
const MINUTE: u64 = 60_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(NOW_MS)
}

fn node(name: &str, instance: &str, annotations: Value) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"providerID": format!("aws:///us-east-1a/{instance}")},
    }))
    .expect("a Node")
}

fn scaled(minutes_ago: u64) -> Value {
    json!({"from": 3, "to": 4, "requestedAt": NOW_MS - minutes_ago * MINUTE,
        "knownInstances": [], "needed": 1, "knownActivities": []})
}

fn replacement(attempts: Value, node_wait: Option<&str>, gave_back: bool) -> String {
    let mut record = json!({"eventId": "rebalance-1", "attempts": attempts, "gaveBack": gave_back});
    if let Some(state) = node_wait {
        record["nodeWait"] = json!({"asg": "od", "instances": ["i-new"],
            "inServiceAt": NOW_MS - MINUTE, "result": {"state": state}});
    }
    record.to_string()
}

fn ready(role: &str, asg: &str, minutes_ago: u64) -> Value {
    json!({"role": role, "asg": asg, "scaled": scaled(minutes_ago), "result": {"state": "ready"}})
}

fn ice(minutes_ago: Option<u64>) -> Value {
    let mut attempt = json!({"role": "spot", "asg": "spot",
        "result": {"state": "failed", "failure": {"reason": "insufficient-capacity", "message": "no capacity"}}});
    if let Some(minutes) = minutes_ago {
        attempt["scaled"] = scaled(minutes);
    }
    attempt
}

fn row(node: &str, instance: &str, step: Step) -> NodeRow {
    NodeRow {
        node: node.to_owned(),
        instance: Some(instance.to_owned()),
        step,
        replacement_asg: None,
        replacement_node: None,
        age_seconds: None,
        fallback_reason: None,
    }
}

#[test]
fn every_node_step_reads_from_what_its_agent_wrote() {
    let nodes = vec![
        node(
            "a-drained",
            "i-a",
            json!({
                REPLACEMENT_ANNOTATION: replacement(json!([ready("spot", "spot", 5)]), Some("ready"), false),
                HANDLED_EVENTS_ANNOTATION: "older,rebalance-1",
            }),
        ),
        node(
            "b-draining-on-demand",
            "i-b",
            json!({REPLACEMENT_ANNOTATION: replacement(json!([ice(Some(4)), ready("on-demand", "od", 3)]), Some("timed-out"), false)}),
        ),
        node(
            "c-waiting-in-service",
            "i-c",
            json!({REPLACEMENT_ANNOTATION: replacement(json!([{"role": "spot", "asg": "spot", "scaled": scaled(1), "result": {"state": "pending"}}]), None, false)}),
        ),
        node(
            "d-waiting-ready",
            "i-d",
            json!({REPLACEMENT_ANNOTATION: replacement(json!([ice(None), ready("on-demand", "od", 2)]), Some("waiting"), false)}),
        ),
        node(
            "e-given-back",
            "i-e",
            json!({REPLACEMENT_ANNOTATION: replacement(json!([ready("spot", "spot", 180)]), Some("ready"), true)}),
        ),
        node(
            "f-no-capacity",
            "i-f",
            json!({REPLACEMENT_ANNOTATION: replacement(json!([ice(Some(3)),
                {"role": "on-demand", "asg": "od", "scaled": scaled(3), "result": {"state": "failed", "failure": {"reason": "timeout", "waited_ms": 120000}}}]), None, false)}),
        ),
        node(
            "g-fallback-watching",
            "i-g",
            json!({SCALE_BACK_ANNOTATION: json!({"instanceId": "i-g", "phase": {"state": "watching"}}).to_string()}),
        ),
        node("h-untouched", "i-h", json!({"unrelated": "x"})),
    ];

    let rows = status(&nodes, &[], now(), Duration::from_secs(600)).nodes;

    assert_eq!(
        rows,
        vec![
            NodeRow {
                replacement_asg: Some("spot".into()),
                replacement_node: Some("ready"),
                age_seconds: Some(300),
                ..row("a-drained", "i-a", Step::Drained)
            },
            NodeRow {
                replacement_asg: Some("od".into()),
                replacement_node: Some("timed-out"),
                age_seconds: Some(240),
                fallback_reason: Some("insufficient-capacity"),
                ..row("b-draining-on-demand", "i-b", Step::Draining)
            },
            NodeRow {
                replacement_asg: Some("spot".into()),
                age_seconds: Some(60),
                ..row("c-waiting-in-service", "i-c", Step::WaitingForInService)
            },
            NodeRow {
                replacement_asg: Some("od".into()),
                replacement_node: Some("waiting"),
                age_seconds: Some(120),
                fallback_reason: Some("insufficient-capacity"),
                ..row("d-waiting-ready", "i-d", Step::WaitingForNodeReady)
            },
            NodeRow {
                replacement_asg: Some("spot".into()),
                replacement_node: Some("ready"),
                age_seconds: Some(10_800),
                ..row("e-given-back", "i-e", Step::GivenBack)
            },
            NodeRow {
                age_seconds: Some(180),
                fallback_reason: Some("insufficient-capacity"),
                ..row("f-no-capacity", "i-f", Step::Draining)
            },
            row("g-fallback-watching", "i-g", Step::ScaleBackPending),
        ]
    );
}

fn lease(name: &str, holder: Option<(&str, u64)>, annotations: Value) -> Lease {
    let mut spec = json!({"leaseDurationSeconds": 15});
    if let Some((holder, renewed_seconds_ago)) = holder {
        let renewed = NOW_MS / 1000 - renewed_seconds_ago;
        spec["holderIdentity"] = json!(holder);
        spec["renewTime"] = json!(
            k8s_openapi::jiff::Timestamp::from_second(i64::try_from(renewed).unwrap())
                .unwrap()
                .to_string()
        );
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "kube-system", "annotations": annotations},
        "spec": spec,
    }))
    .expect("a Lease")
}

fn entry(role: &str, asg: &str, for_node: &str, minutes_ago: u64) -> String {
    json!({"role": role, "asg": asg, "forNode": for_node, "at": NOW_MS - minutes_ago * MINUTE})
        .to_string()
}

#[test]
fn leases_show_holder_last_target_cool_off_and_what_the_ledger_gives_back() {
    let leases = vec![
        lease(
            "spot-guard-spot",
            Some(("node-x", 3)),
            json!({
                LAST_TARGET_ANNOTATION: json!({"desired": 7, "at": NOW_MS - 2 * MINUTE, "node": "node-x"}).to_string(),
                CAPACITY_FAILURE_ANNOTATION: json!({"at": NOW_MS - 4 * MINUTE, "reason": "insufficient-capacity", "node": "node-y"}).to_string(),
                ledger_key("i-spot"): entry("spot", "spot", "node-x", 2),
            }),
        ),
        lease(
            "spot-guard-od",
            // Renewed 20 s ago with a 15 s duration: free again.
            Some(("node-y", 20)),
            json!({
                // A capacity failure older than the cool-off no longer counts.
                CAPACITY_FAILURE_ANNOTATION: json!({"at": NOW_MS - 11 * MINUTE, "reason": "max-size", "node": "node-y"}).to_string(),
                ledger_key("i-od1"): entry("on-demand", "od", "node-y", 4),
                ledger_key("i-od2"): entry("on-demand", "od", "node-z", 30),
                ledger_key("i-gone"): entry("on-demand", "od", "node-w", 300),
            }),
        ),
        lease("spot-guard-scale-back", Some(("node-z", 1)), json!({})),
        lease("someone-elses", Some(("x", 1)), json!({})),
    ];
    let nodes = vec![node(
        "on-demand-i-gone",
        "i-gone",
        json!({SCALE_BACK_ANNOTATION: json!({"instanceId": "i-gone", "phase": {"state": "terminated", "at": NOW_MS - MINUTE}}).to_string()}),
    )];

    let status = status(&nodes, &leases, now(), Duration::from_secs(600));

    assert_eq!(status.leases.len(), 2, "{:?}", status.leases);
    let od = &status.leases[0];
    assert_eq!(
        (od.lease.as_str(), &od.holder, &od.last_target, &od.cool_off),
        ("spot-guard-od", &None, &None, &None)
    );
    let spot = &status.leases[1];
    assert_eq!(spot.holder.as_deref(), Some("node-x"));
    assert_eq!(
        spot.last_target,
        Some(LastTargetView {
            desired: 7,
            node: "node-x".into(),
            age_seconds: 120
        })
    );
    assert_eq!(
        spot.cool_off,
        Some(CoolOffView {
            reason: "insufficient-capacity".into(),
            node: "node-y".into(),
            remaining_seconds: 360
        })
    );
    assert_eq!(
        status.give_back,
        vec![
            GiveBackRow {
                instance: "i-od1".into(),
                asg: "od".into(),
                for_node: "node-y".into(),
                age_seconds: 240
            },
            GiveBackRow {
                instance: "i-od2".into(),
                asg: "od".into(),
                for_node: "node-z".into(),
                age_seconds: 1800
            },
        ]
    );
    let printed = tables(&status);
    for line in [
        "spot-guard-spot   node-x   7 by node-x, 2m ago   6m left (insufficient-capacity on node-y)",
        "i-od2                    od    node-z       30m",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line:?} in\n{printed}");
    }
}

#[test]
fn ages_read_like_kubectl() {
    for (seconds, text) in [
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (7_199, "119m"),
        (7_200, "2h"),
        (172_800, "2d"),
    ] {
        assert_eq!(age(seconds), text);
    }
}

#[test]
fn an_empty_cluster_says_so() {
    let printed = tables(&status(&[], &[], now(), Duration::from_secs(600)));
    assert_eq!(
        printed,
        "No node carries Spot Guard state.\n\nNo Spot Guard Lease in this namespace.\n\nNo on-demand fallback to give back.\n"
    );
}
