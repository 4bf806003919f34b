//! Node actions (taint, cordon, annotations, labels) against the fake API server over HTTP.

use std::error::Error;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};
use spot_guard::config::TaintEffect;
use spot_guard::node::{NodeClient, NodeError, client_for_url};
use spot_guard::sim::kube::FakeKube;

type TestResult = Result<(), Box<dyn Error>>;

const NODE: &str = "ip-10-0-1-23.ec2.internal";
const REBALANCE_TAINT: &str = "aws-node-termination-handler/rebalance-recommendation";

async fn fake_with_node() -> Result<(FakeKube, kube::Client), Box<dyn Error>> {
    spot_guard::tls::ensure_crypto_provider();
    let fake = FakeKube::start().await?;
    fake.add_node(NODE);
    let client = client_for_url(&fake.url())?;
    Ok((fake, client))
}

/// Fails the test instead of hanging it if an action never returns.
async fn bounded<T>(action: impl Future<Output = T>) -> Result<T, Box<dyn Error>> {
    Ok(tokio::time::timeout(Duration::from_secs(20), action).await?)
}

fn taints(node: Option<Node>) -> Vec<Taint> {
    node.and_then(|node| node.spec)
        .and_then(|spec| spec.taints)
        .unwrap_or_default()
}

fn unschedulable(node: Option<Node>) -> bool {
    node.and_then(|node| node.spec)
        .and_then(|spec| spec.unschedulable)
        .unwrap_or(false)
}

fn patches(fake: &FakeKube) -> Vec<u16> {
    fake.requests()
        .into_iter()
        .filter(|request| request.method == "PATCH")
        .map(|request| request.status)
        .collect()
}

#[tokio::test]
async fn taint_appears_on_the_node_with_key_value_and_effect() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    let node = NodeClient::new(client, NODE, false);

    let changed = bounded(node.taint(
        REBALANCE_TAINT,
        "rebalance-recommendation-abc",
        TaintEffect::NoSchedule,
    ))
    .await??;

    assert!(changed);
    let taints = taints(fake.node(NODE));
    assert_eq!(taints.len(), 1);
    assert_eq!(taints[0].key, REBALANCE_TAINT);
    assert_eq!(
        taints[0].value.as_deref(),
        Some("rebalance-recommendation-abc")
    );
    assert_eq!(taints[0].effect, "NoSchedule");
    Ok(())
}

#[tokio::test]
async fn taint_keeps_other_taints_and_updates_our_own() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    fake.update_node(NODE, |node| {
        if let Some(spec) = node.spec.as_mut() {
            spec.taints = Some(vec![Taint {
                key: "dedicated".to_owned(),
                value: Some("gpu".to_owned()),
                effect: "NoExecute".to_owned(),
                time_added: None,
            }]);
        }
    });
    let node = NodeClient::new(client, NODE, false);

    bounded(node.taint(REBALANCE_TAINT, "first", TaintEffect::NoSchedule)).await??;
    bounded(node.taint(REBALANCE_TAINT, "second", TaintEffect::PreferNoSchedule)).await??;

    let taints = taints(fake.node(NODE));
    let keys: Vec<&str> = taints.iter().map(|taint| taint.key.as_str()).collect();
    assert_eq!(keys, ["dedicated", REBALANCE_TAINT]);
    assert_eq!(taints[0].value.as_deref(), Some("gpu"));
    assert_eq!(taints[1].value.as_deref(), Some("second"));
    assert_eq!(taints[1].effect, "PreferNoSchedule");
    Ok(())
}

#[tokio::test]
async fn tainting_twice_sends_one_write() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    let node = NodeClient::new(client, NODE, false);

    let first = bounded(node.taint(REBALANCE_TAINT, "id", TaintEffect::NoSchedule)).await??;
    let second = bounded(node.taint(REBALANCE_TAINT, "id", TaintEffect::NoSchedule)).await??;

    assert!(first);
    assert!(!second);
    assert_eq!(patches(&fake), [200]);
    Ok(())
}

#[tokio::test]
async fn conflict_on_the_first_write_is_retried() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    fake.fail_next("PATCH", &format!("/api/v1/nodes/{NODE}"), 1, 409);
    let node = NodeClient::new(client, NODE, false);

    let changed = bounded(node.taint(REBALANCE_TAINT, "id", TaintEffect::NoSchedule)).await??;

    assert!(changed);
    assert_eq!(patches(&fake), [409, 200]);
    assert_eq!(taints(fake.node(NODE)).len(), 1);
    Ok(())
}

#[tokio::test]
async fn taint_removal_keeps_other_taints() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    let node = NodeClient::new(client, NODE, false);
    bounded(node.taint("other/taint", "", TaintEffect::NoExecute)).await??;
    bounded(node.taint(REBALANCE_TAINT, "id", TaintEffect::NoSchedule)).await??;

    let removed = bounded(node.remove_taint(REBALANCE_TAINT)).await??;
    let removed_again = bounded(node.remove_taint(REBALANCE_TAINT)).await??;

    assert!(removed);
    assert!(!removed_again);
    let keys: Vec<String> = taints(fake.node(NODE))
        .into_iter()
        .map(|taint| taint.key)
        .collect();
    assert_eq!(keys, ["other/taint"]);
    Ok(())
}

#[tokio::test]
async fn cordon_and_uncordon_set_unschedulable() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    let node = NodeClient::new(client, NODE, false);

    assert!(bounded(node.cordon()).await??);
    assert!(unschedulable(fake.node(NODE)));
    assert!(!bounded(node.cordon()).await??);

    assert!(bounded(node.uncordon()).await??);
    assert!(!unschedulable(fake.node(NODE)));
    assert_eq!(patches(&fake), [200, 200]);
    Ok(())
}

#[tokio::test]
async fn missing_node_gives_a_clear_error() -> TestResult {
    let (_fake, client) = fake_with_node().await?;
    let node = NodeClient::new(client, "no-such-node", false);

    let result = bounded(node.taint(REBALANCE_TAINT, "id", TaintEffect::NoSchedule)).await?;

    match result {
        Err(error @ NodeError::NotFound { .. }) => {
            assert!(
                error
                    .to_string()
                    .contains("node no-such-node does not exist"),
                "{error}"
            );
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn dry_run_sends_no_write() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    let node = NodeClient::new(client, NODE, true);

    assert!(bounded(node.taint(REBALANCE_TAINT, "id", TaintEffect::NoSchedule)).await??);
    assert!(bounded(node.cordon()).await??);
    assert!(bounded(node.set_annotations(&[("spot-guard/state", "scaling")])).await??);
    assert!(bounded(node.add_label("spot-guard/action", "drain")).await??);

    assert_eq!(patches(&fake), Vec::<u16>::new());
    assert!(
        fake.requests()
            .iter()
            .any(|request| request.method == "GET")
    );
    assert!(taints(fake.node(NODE)).is_empty());
    assert!(!unschedulable(fake.node(NODE)));
    Ok(())
}

#[tokio::test]
async fn long_taint_value_is_cut_to_63_characters() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    let node = NodeClient::new(client, NODE, false);
    let long_id = format!("rebalance-recommendation-{}", "f".repeat(80));

    bounded(node.taint(REBALANCE_TAINT, &long_id, TaintEffect::NoSchedule)).await??;

    let taints = taints(fake.node(NODE));
    assert_eq!(taints[0].value.as_deref(), Some(&long_id[..63]));
    Ok(())
}

#[tokio::test]
async fn annotations_and_labels_are_set_and_removed() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    let node = NodeClient::new(client, NODE, false);

    bounded(node.set_annotations(&[
        ("spot-guard/state", "scaling"),
        ("spot-guard/asg", "spot-asg"),
    ]))
    .await??;
    bounded(node.add_label("spot-guard/action", "drain")).await??;
    let annotated = fake
        .node(NODE)
        .map(|node| node.metadata)
        .unwrap_or_default();
    let annotations = annotated.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("spot-guard/state").map(String::as_str),
        Some("scaling")
    );
    assert_eq!(
        annotations.get("spot-guard/asg").map(String::as_str),
        Some("spot-asg")
    );
    let labels = annotated.labels.unwrap_or_default();
    assert_eq!(
        labels.get("spot-guard/action").map(String::as_str),
        Some("drain")
    );
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some(NODE)
    );

    bounded(node.remove_annotations(&["spot-guard/state"])).await??;
    bounded(node.remove_label("spot-guard/action")).await??;
    let cleaned = fake
        .node(NODE)
        .map(|node| node.metadata)
        .unwrap_or_default();
    let annotations = cleaned.annotations.unwrap_or_default();
    assert!(!annotations.contains_key("spot-guard/state"));
    assert!(annotations.contains_key("spot-guard/asg"));
    let labels = cleaned.labels.unwrap_or_default();
    assert!(!labels.contains_key("spot-guard/action"));
    assert!(labels.contains_key("kubernetes.io/hostname"));
    Ok(())
}
