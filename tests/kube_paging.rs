//! The fake API server cuts lists into pages as the real one does (`limit`, `continue`):
//! at most `limit` items, a token while more remain, `remainingItemCount` on unfiltered
//! lists, every item exactly once across the pages; and it refuses what the real one
//! refuses (a `resourceVersion` beside a token, a token that does not decode: 400; a token
//! from before a compaction: 410 `Expired`). Raw HTTP, as any client sends it. Metadata-only
//! lists (`Accept: application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`) come as
//! the apiserver's `asPartialObjectMetadataList` builds them, paged the same way, and decode
//! with kube's `Api::list_metadata`.

use serde_json::Value;
use spot_guard::sim::kube::{FakeKube, FakePod};

const NODE: &str = "ip-10-0-5-5.ec2.internal";
const OTHER: &str = "ip-10-0-5-6.ec2.internal";

async fn fake() -> FakeKube {
    let fake = FakeKube::start().await.expect("fake API server");
    fake.add_node(NODE);
    fake.add_node(OTHER);
    for (namespace, name, node) in [
        ("default", "web-1", NODE),
        ("default", "web-2", OTHER),
        ("default", "web-3", NODE),
        ("jobs", "batch-1", NODE),
        ("jobs", "batch-2", OTHER),
        ("kube-system", "dns-1", NODE),
        ("kube-system", "dns-2", OTHER),
    ] {
        fake.add_pod(FakePod::new(namespace, name, node));
    }
    fake
}

async fn get(fake: &FakeKube, path_and_query: &str, table: bool) -> (u16, Value) {
    // reqwest is built as the agent ships it, without a crypto provider of its own: its
    // client builder panics unless one is installed.
    spot_guard::tls::ensure_crypto_provider();
    let mut request = reqwest::Client::new().get(format!("{}{path_and_query}", fake.url()));
    if table {
        request = request.header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        );
    }
    let response = request.send().await.expect("the fake answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

const METADATA_LIST: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";

async fn get_accepting(fake: &FakeKube, path_and_query: &str, accept: &str) -> (u16, Value) {
    spot_guard::tls::ensure_crypto_provider();
    let response = reqwest::Client::new()
        .get(format!("{}{path_and_query}", fake.url()))
        .header("Accept", accept)
        .send()
        .await
        .expect("the fake answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            format!(
                "{}/{}",
                item["metadata"]["namespace"].as_str().unwrap_or_default(),
                item["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// Every page of `path` at `limit`, following the tokens: (names per page, last metadata).
async fn all_pages(fake: &FakeKube, path: &str, limit: usize) -> (Vec<Vec<String>>, Vec<Value>) {
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut url = format!("{path}{separator}limit={limit}");
    let (mut pages, mut metadata) = (Vec::new(), Vec::new());
    loop {
        let (status, list) = get(fake, &url, false).await;
        assert_eq!(status, 200, "{list}");
        pages.push(names(&list));
        metadata.push(list["metadata"].clone());
        match list["metadata"]["continue"].as_str() {
            Some(token) => {
                url = format!("{path}{separator}limit={limit}&continue={token}");
            }
            None => return (pages, metadata),
        }
        assert!(pages.len() < 20, "the pages end");
    }
}

#[tokio::test]
async fn lists_come_in_pages_that_hold_every_item_once() {
    let fake = fake().await;
    let (whole_status, whole) = get(&fake, "/api/v1/pods", false).await;
    assert_eq!(whole_status, 200);
    let everything = names(&whole);
    assert_eq!(everything.len(), 7, "no limit: the whole list");
    assert_eq!(whole["metadata"].get("continue"), None);

    let (pages, metadata) = all_pages(&fake, "/api/v1/pods", 3).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [3, 3, 1],
        "{pages:?}"
    );
    assert_eq!(
        pages.concat(),
        everything,
        "each pod once, in the same order"
    );
    assert_eq!(metadata[0]["remainingItemCount"], 4);
    assert_eq!(metadata[1]["remainingItemCount"], 1);
    assert_eq!(
        metadata[2].get("continue"),
        None,
        "the last page has no token"
    );
    assert_eq!(
        metadata[1]["resourceVersion"], metadata[0]["resourceVersion"],
        "later pages carry the list's resourceVersion"
    );

    // A filtered list counts only what matches and gives no remaining count.
    let filtered = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}");
    let (pages, metadata) = all_pages(&fake, &filtered, 3).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 1]);
    assert_eq!(metadata[0].get("remainingItemCount"), None);
    assert!(metadata[0]["continue"].is_string());

    // One namespace, and nodes, page the same way.
    let (pages, _) = all_pages(&fake, "/api/v1/namespaces/default/pods", 2).await;
    assert_eq!(
        pages.concat(),
        ["default/web-1", "default/web-2", "default/web-3"]
    );
    let (status, nodes) = get(&fake, "/api/v1/nodes?limit=1", false).await;
    assert_eq!(status, 200);
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(nodes["metadata"]["remainingItemCount"], 1);
    let token = nodes["metadata"]["continue"].as_str().expect("token");
    let (_, rest) = get(
        &fake,
        &format!("/api/v1/nodes?limit=1&continue={token}"),
        false,
    )
    .await;
    assert_eq!(rest["items"][0]["metadata"]["name"], OTHER);

    // Tables (kubectl get sends limit=500) page too.
    let (status, table) = get(&fake, "/api/v1/pods?limit=2", true).await;
    assert_eq!(status, 200);
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["rows"].as_array().map(Vec::len), Some(2));
    assert!(table["metadata"]["continue"].is_string(), "{table}");
}

#[tokio::test]
async fn bad_and_expired_tokens_are_refused_as_the_api_server_refuses_them() {
    let fake = fake().await;
    let (_, first) = get(&fake, "/api/v1/pods?limit=2", false).await;
    let token = first["metadata"]["continue"]
        .as_str()
        .expect("token")
        .to_owned();

    let (status, body) = get(
        &fake,
        &format!("/api/v1/pods?limit=2&continue={token}&resourceVersion=5"),
        false,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["reason"], "BadRequest");
    assert_eq!(
        body["message"],
        "specifying resource version is not allowed when using continue"
    );

    let (status, body) = get(
        &fake,
        "/api/v1/pods?limit=2&continue=bm90LWEtdG9rZW4",
        false,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("invalid continue token: continue key is not valid")),
        "{body}"
    );

    // The token still works until the store is compacted; then it is 410 Expired.
    let (status, _) = get(
        &fake,
        &format!("/api/v1/pods?limit=2&continue={token}"),
        false,
    )
    .await;
    assert_eq!(status, 200);
    fake.compact();
    let (status, body) = get(
        &fake,
        &format!("/api/v1/pods?limit=2&continue={token}"),
        false,
    )
    .await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["reason"], "Expired");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("The provided continue parameter is too old")),
        "{body}"
    );
    // A new list works after a compaction.
    let (status, _) = get(&fake, "/api/v1/pods?limit=2", false).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn metadata_only_lists_carry_each_pods_metadata_and_nothing_else() {
    let fake = fake().await;
    let filtered = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}");
    let (_, whole) = get(&fake, &filtered, false).await;

    let (status, first) = get_accepting(&fake, &format!("{filtered}&limit=3"), METADATA_LIST).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["kind"], "PartialObjectMetadataList");
    assert_eq!(first["apiVersion"], "meta.k8s.io/v1");
    let items = first["items"].as_array().expect("items");
    assert_eq!(items.len(), 3);
    for (item, full) in items.iter().zip(whole["items"].as_array().expect("items")) {
        assert_eq!(item["kind"], "PartialObjectMetadata");
        assert_eq!(item["apiVersion"], "meta.k8s.io/v1");
        let mut keys: Vec<&str> = item
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["apiVersion", "kind", "metadata"],
            "no spec, no status"
        );
        assert_eq!(item["metadata"], full["metadata"], "the whole metadata");
    }
    assert_eq!(
        first["metadata"].get("remainingItemCount"),
        None,
        "filtered"
    );
    let token = first["metadata"]["continue"].as_str().expect("token");
    let (status, rest) = get_accepting(
        &fake,
        &format!("{filtered}&limit=3&continue={token}"),
        METADATA_LIST,
    )
    .await;
    assert_eq!(status, 200, "{rest}");
    let mut paged = names(&first);
    paged.extend(names(&rest));
    assert_eq!(paged, names(&whole), "the same pods, each once");
    assert_eq!(rest["metadata"].get("continue"), None);

    // One object's representation asked of a list is the server's 406.
    let (status, body) = get_accepting(
        &fake,
        "/api/v1/pods",
        "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
    )
    .await;
    assert_eq!(status, 406, "{body}");
    assert_eq!(body["reason"], "NotAcceptable");
}

#[tokio::test]
async fn kube_reads_metadata_only_pages_of_the_fake() {
    spot_guard::tls::ensure_crypto_provider();
    let fake = fake().await;
    let client = spot_guard::node::client_for_url(&fake.url()).expect("client");
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(client);
    let params = kube::api::ListParams::default().limit(4);
    let first = api.list_metadata(&params).await.expect("first page");
    assert_eq!(first.items.len(), 4);
    let token = first.metadata.continue_.clone().expect("a token");
    let rest = api
        .list_metadata(&params.continue_token(&token))
        .await
        .expect("second page");
    let listed: Vec<String> = first
        .items
        .iter()
        .chain(&rest.items)
        .map(|pod| pod.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(listed.len(), 7);
    assert!(first.items.iter().all(|pod| pod.metadata.uid.is_some()));
    assert_eq!(
        first.items[0].types.as_ref().map(|t| t.kind.as_str()),
        Some("PartialObjectMetadata")
    );
}
