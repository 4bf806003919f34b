//! The fake API server refuses what the real one refuses, with its status codes and
//! messages, so a client bug shows in the tests as it would in a cluster: malformed taints
//! (422), an Eviction naming another pod (400), Leases with fields of the wrong JSON type
//! (400 on create, 422 through a patch), unknown fields (dropped with a warning, refused
//! under `fieldValidation=Strict`), writes computed before a kubelet heartbeat (409), pods
//! under two budgets (500), an Event about a Node filed in another namespace (422); and it
//! serves PodDisruptionBudgets with the disruption
//! controller's status. Raw HTTP, as any client sends it.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use spot_guard::sim::kube::{EvictionOutcome, FakeKube, FakePod, PdbBudget};

const NODE: &str = "ip-10-0-3-3.ec2.internal";
const OTHER: &str = "ip-10-0-3-4.ec2.internal";
const MERGE: &str = "application/merge-patch+json";

async fn fake() -> FakeKube {
    let fake = FakeKube::start().await.expect("fake API server");
    fake.add_node(NODE);
    fake
}

/// A response's status, body and `Warning` headers.
struct Answer {
    status: u16,
    body: Value,
    warnings: Vec<String>,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("the fake answers");
    let status = response.status().as_u16();
    let warnings = response
        .headers()
        .get_all("Warning")
        .iter()
        .map(|value| value.to_str().unwrap_or_default().to_owned())
        .collect();
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        body,
        warnings,
    }
}

fn http() -> reqwest::Client {
    // reqwest is built as the agent ships it, without a crypto provider of its own: its
    // client builder panics unless one is installed.
    spot_guard::tls::ensure_crypto_provider();
    reqwest::Client::new()
}

async fn patch(fake: &FakeKube, path: &str, content_type: &str, body: Value) -> Answer {
    send(
        http()
            .patch(format!("{}{path}", fake.url()))
            .header(CONTENT_TYPE, content_type)
            .body(body.to_string()),
    )
    .await
}

async fn post(fake: &FakeKube, path: &str, body: Value) -> Answer {
    send(
        http()
            .post(format!("{}{path}", fake.url()))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string()),
    )
    .await
}

async fn get(fake: &FakeKube, path: &str) -> Answer {
    send(http().get(format!("{}{path}", fake.url()))).await
}

fn message(answer: &Answer) -> &str {
    answer.body["message"].as_str().unwrap_or_default()
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

#[tokio::test]
async fn a_malformed_taint_is_refused_422_with_the_api_servers_field_errors() {
    let fake = fake().await;
    let node_path = format!("/api/v1/nodes/{NODE}");
    let taint = |key: &str, value: &str, effect: &str| json!({"spec": {"taints": [{"key": key, "value": value, "effect": effect}]}});

    let effect = patch(
        &fake,
        &node_path,
        MERGE,
        taint("example.com/k", "v", "Sometimes"),
    )
    .await;
    assert_eq!(effect.status, 422);
    assert_eq!(effect.body["reason"], "Invalid");
    assert_eq!(
        message(&effect),
        format!(
            "Node \"{NODE}\" is invalid: spec.taints[0].effect: Unsupported value: \"Sometimes\": \
             supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
        )
    );
    assert_eq!(
        effect.body["details"]["causes"][0]["field"],
        "spec.taints[0].effect"
    );

    let key = patch(
        &fake,
        &node_path,
        MERGE,
        taint("bad key", "v", "NoSchedule"),
    )
    .await;
    assert_eq!(key.status, 422);
    assert!(
        message(&key).starts_with(&format!(
            "Node \"{NODE}\" is invalid: spec.taints[0].key: Invalid value: \"bad key\": name part \
             must consist of alphanumeric characters"
        )),
        "{}",
        message(&key)
    );

    let long = "x".repeat(64);
    let value = patch(
        &fake,
        &node_path,
        MERGE,
        taint("example.com/k", &long, "NoSchedule"),
    )
    .await;
    assert_eq!(value.status, 422);
    assert_eq!(
        message(&value),
        format!(
            "Node \"{NODE}\" is invalid: spec.taints[0].value: Invalid value: \"{long}\": must be \
             no more than 63 characters"
        )
    );

    // None of them was stored; a well-formed taint is.
    assert!(taint_keys(&fake).is_empty());
    let fine = patch(
        &fake,
        &node_path,
        MERGE,
        taint("example.com/k", "v", "NoSchedule"),
    )
    .await;
    assert_eq!(fine.status, 200);
    assert_eq!(taint_keys(&fake), ["example.com/k"]);

    // Switched off, the fake stores what decodes.
    fake.set_validation(false);
    let lenient = patch(
        &fake,
        &node_path,
        MERGE,
        taint("example.com/k", "v", "Sometimes"),
    )
    .await;
    assert_eq!(lenient.status, 200);
}

#[tokio::test]
async fn an_eviction_naming_another_pod_is_a_bad_request_and_evicts_nothing() {
    let fake = fake().await;
    fake.add_pod(FakePod::new("default", "web-1", NODE));
    fake.add_pod(FakePod::new("default", "web-2", NODE));
    let eviction = |name: &str| {
        json!({"apiVersion": "policy/v1", "kind": "Eviction",
               "metadata": {"name": name, "namespace": "default"}})
    };

    let other = post(
        &fake,
        "/api/v1/namespaces/default/pods/web-1/eviction",
        eviction("web-2"),
    )
    .await;

    assert_eq!(other.status, 400);
    assert_eq!(other.body["reason"], "BadRequest");
    assert_eq!(
        message(&other),
        "name in URL does not match name in Eviction object"
    );
    assert_eq!(fake.evictions()[0].outcome, EvictionOutcome::Rejected(400));
    for name in ["web-1", "web-2"] {
        let pod = fake.pod("default", name).expect("still there");
        assert!(pod.metadata.deletion_timestamp.is_none(), "{name}");
    }
    let right = post(
        &fake,
        "/api/v1/namespaces/default/pods/web-1/eviction",
        eviction("web-1"),
    )
    .await;
    assert_eq!(right.status, 201);
    assert_eq!(right.body["status"], "Success");
}

#[tokio::test]
async fn a_lease_with_fields_of_the_wrong_type_is_refused_as_the_decoder_refuses_it() {
    let fake = fake().await;
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
    let lease = |spec: Value| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "spot-guard-asg"}, "spec": spec})
    };

    let holder = post(&fake, leases, lease(json!({"holderIdentity": 5}))).await;
    assert_eq!(holder.status, 400);
    assert_eq!(
        message(&holder),
        "Lease in version \"v1\" cannot be handled as a Lease: json: cannot unmarshal number \
         into Go struct field LeaseSpec.spec.holderIdentity of type string"
    );
    let duration = post(
        &fake,
        leases,
        lease(json!({"holderIdentity": "node-a", "leaseDurationSeconds": "15"})),
    )
    .await;
    assert_eq!(duration.status, 400);
    assert_eq!(
        message(&duration),
        "Lease in version \"v1\" cannot be handled as a Lease: json: cannot unmarshal string \
         into Go struct field LeaseSpec.spec.leaseDurationSeconds of type int32"
    );
    assert!(fake.leases().is_empty(), "nothing was created");

    // A patch that makes a field wrong is the patch handler's 422.
    let created = post(
        &fake,
        leases,
        lease(json!({"holderIdentity": "node-a", "leaseDurationSeconds": 15})),
    )
    .await;
    assert_eq!(created.status, 201);
    let patched = patch(
        &fake,
        &format!("{leases}/spot-guard-asg"),
        MERGE,
        json!({"spec": {"leaseDurationSeconds": 1.5}}),
    )
    .await;
    assert_eq!(patched.status, 422);
    assert!(
        message(&patched).ends_with(
            "json: cannot unmarshal number 1.5 into Go struct field \
             LeaseSpec.spec.leaseDurationSeconds of type int32"
        ),
        "{}",
        message(&patched)
    );
    let zero = patch(
        &fake,
        &format!("{leases}/spot-guard-asg"),
        MERGE,
        json!({"spec": {"leaseDurationSeconds": 0}}),
    )
    .await;
    assert_eq!(zero.status, 422);
    assert_eq!(
        message(&zero),
        "Lease.coordination.k8s.io \"spot-guard-asg\" is invalid: spec.leaseDurationSeconds: \
         Invalid value: 0: must be greater than 0"
    );
    let stored = fake.lease("kube-system", "spot-guard-asg").expect("lease");
    assert_eq!(stored.spec.and_then(|s| s.lease_duration_seconds), Some(15));
}

#[tokio::test]
async fn unknown_fields_are_dropped_with_a_warning_or_refused_when_strict() {
    let fake = fake().await;
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
    let lease = |name: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": name},
               "spec": {"holderIdentity": "node-a", "colour": "red"}})
    };

    let created = post(&fake, leases, lease("warned")).await;
    assert_eq!(created.status, 201);
    assert_eq!(
        created.warnings,
        ["299 - \"unknown field \\\"spec.colour\\\"\""]
    );
    assert_eq!(created.body["spec"], json!({"holderIdentity": "node-a"}));

    let strict = post(
        &fake,
        &format!("{leases}?fieldValidation=Strict"),
        lease("strict"),
    )
    .await;
    assert_eq!(strict.status, 400);
    assert_eq!(
        message(&strict),
        "strict decoding error: unknown field \"spec.colour\""
    );
    assert!(fake.lease("kube-system", "strict").is_none());
}

#[tokio::test]
async fn a_node_write_with_a_version_read_before_a_kubelet_heartbeat_is_a_conflict() {
    let fake = fake().await;
    fake.set_node_heartbeat(Some(Duration::from_millis(50)));
    let node_path = format!("/api/v1/nodes/{NODE}");
    let read = get(&fake, &node_path).await;
    let version = read.body["metadata"]["resourceVersion"]
        .as_str()
        .expect("a resourceVersion")
        .to_owned();
    // The kubelet writes the node's status meanwhile.
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let now = get(&fake, &node_path).await;
            if now.body["metadata"]["resourceVersion"] != version.as_str() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a heartbeat within 5 s");

    let stale = patch(
        &fake,
        &node_path,
        MERGE,
        json!({"metadata": {"resourceVersion": version},
               "spec": {"taints": [{"key": "example.com/k", "effect": "NoSchedule"}]}}),
    )
    .await;

    assert_eq!(stale.status, 409);
    assert_eq!(stale.body["reason"], "Conflict");
    assert_eq!(
        message(&stale),
        format!(
            "Operation cannot be fulfilled on nodes \"{NODE}\": the object has been modified; \
             please apply your changes to the latest version and try again"
        )
    );
    assert!(taint_keys(&fake).is_empty());
}

#[tokio::test]
async fn budgets_are_served_with_the_disruption_controllers_status() {
    let fake = fake().await;
    fake.add_node(OTHER);
    fake.cordon(NODE);
    for name in ["db-0", "db-1", "db-2"] {
        fake.add_pod(
            FakePod::new("data", name, NODE)
                .with_label("app", "db")
                .stateful_set("db"),
        );
    }
    fake.add_pdb("data", "db", &[("app", "db")], 1);
    let budget = "/apis/policy/v1/namespaces/data/poddisruptionbudgets/db";
    let status = |answer: &Answer| {
        let s = &answer.body["status"];
        (
            s["expectedPods"].as_i64(),
            s["desiredHealthy"].as_i64(),
            s["currentHealthy"].as_i64(),
            s["disruptionsAllowed"].as_i64(),
        )
    };
    assert_eq!(
        status(&get(&fake, budget).await),
        (Some(3), Some(2), Some(3), Some(1))
    );

    let evicted = post(
        &fake,
        "/api/v1/namespaces/data/pods/db-0/eviction",
        json!({"kind": "Eviction", "metadata": {"name": "db-0"}}),
    )
    .await;
    assert_eq!(evicted.status, 201);
    // db-0 is terminating: one fewer healthy, no disruption left.
    assert_eq!(
        status(&get(&fake, budget).await),
        (Some(3), Some(2), Some(2), Some(0))
    );
    let refused = post(
        &fake,
        "/api/v1/namespaces/data/pods/db-1/eviction",
        json!({"kind": "Eviction", "metadata": {"name": "db-1"}}),
    )
    .await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        message(&refused),
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert_eq!(
        refused.body["details"]["causes"][0]["message"],
        "The disruption budget db needs 2 healthy pods and has 2 currently"
    );

    // db-0 comes back on the other node and turns Ready: the budget allows one again.
    tokio::time::timeout(Duration::from_secs(10), async {
        while status(&get(&fake, budget).await).3 != Some(1) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the budget frees within 10 s");
    let back = fake.pod("data", "db-0").expect("db-0 is back");
    assert_eq!(back.spec.and_then(|s| s.node_name).as_deref(), Some(OTHER));

    // A second budget over the same pods: the Eviction API gives up on them.
    fake.add_pdb_with(
        "data",
        "db-too",
        &[("app", "db")],
        PdbBudget::MinAvailable(IntOrString::String("50%".to_owned())),
    );
    let both = post(
        &fake,
        "/api/v1/namespaces/data/pods/db-1/eviction",
        json!({"kind": "Eviction", "metadata": {"name": "db-1"}}),
    )
    .await;
    assert_eq!(both.status, 500);
    assert_eq!(
        message(&both),
        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
    );
}

#[tokio::test]
async fn an_event_about_a_node_filed_outside_default_is_invalid() {
    let fake = fake().await;
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{NODE}.1")},
        "involvedObject": {"kind": "Node", "name": NODE},
        "reason": "Cordon", "message": "Node cordoned", "type": "Normal",
    });

    let elsewhere = post(
        &fake,
        "/api/v1/namespaces/kube-system/events",
        event.clone(),
    )
    .await;

    assert_eq!(elsewhere.status, 422);
    assert_eq!(
        message(&elsewhere),
        format!(
            "Event \"{NODE}.1\" is invalid: involvedObject.namespace: Invalid value: \"\": does \
             not match event.namespace"
        )
    );
    assert!(fake.events().is_empty());
    let filed = post(&fake, "/api/v1/namespaces/default/events", event).await;
    assert_eq!(filed.status, 201);
    assert_eq!(fake.events().len(), 1);
}
