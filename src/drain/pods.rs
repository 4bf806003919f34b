//! Reading the node's pods in pages (`limit`/`continue`, as kubectl and client-go's pager do),
//! keeping of each only what the drain needs, so memory holds one page at a time rather
//! than every pod of a full node at once, twice over (kube reads each answer into one
//! buffer, then into objects). Where only names and uids matter (seeing evicted pods go,
//! the names for reports) the list is metadata-only (`PartialObjectMetadataList`): no
//! specs and statuses on the wire or in memory.

use std::future::Future;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, ObjectList, PartialObjectMeta};
use tokio::time::Instant;

use super::{ATTEMPT_TIMEOUT, PodRef, attempt_deadline};

/// Pods per list request: a full node (~110 pods) in one or two requests; a node of 1000
/// pods in ten, each holding a tenth of what the whole list held at once (its answer,
/// copied twice by kube, and its objects were most of such a drain's peak memory).
pub const PAGE_SIZE: u32 = 100;

/// Pods per metadata-only list request: a pod's metadata is a small part of it, and the
/// wait for evicted pods to go lists them every poll, where each round trip counts.
pub const METADATA_PAGE_SIZE: u32 = 500;

/// Why a paged list did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ListFailure {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer within {ATTEMPT_TIMEOUT:?}")]
    TimedOut,
}

fn on_node(node_name: &str, page_size: u32) -> ListParams {
    ListParams::default()
        .fields(&format!("spec.nodeName={node_name}"))
        .limit(page_size)
}

/// Every page of a list, each item handed to `keep` as it arrives and the page dropped
/// before the next is read; each request is cut at [`attempt_deadline`] of `deadline`.
/// A continue token the server no longer honours (410 `Expired`: the list took longer
/// than etcd keeps history) starts the list again from its first page.
async fn each_page<K, T, Fut>(
    fetch: impl Fn(ListParams) -> Fut,
    first: ListParams,
    deadline: Instant,
    mut keep: impl FnMut(K) -> Option<T>,
) -> Result<Vec<T>, ListFailure>
where
    Fut: Future<Output = Result<ObjectList<K>, kube::Error>>,
    K: Clone,
{
    let mut kept = Vec::new();
    let mut params = first.clone();
    loop {
        let page = match tokio::time::timeout_at(attempt_deadline(deadline), fetch(params)).await {
            Ok(Ok(page)) => page,
            Ok(Err(kube::Error::Api(status)))
                if status.code == 410 && Instant::now() < deadline =>
            {
                kept.clear();
                params = first.clone();
                continue;
            }
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => return Err(ListFailure::TimedOut),
        };
        let next = page.metadata.continue_.filter(|token| !token.is_empty());
        kept.extend(page.items.into_iter().filter_map(&mut keep));
        match next {
            Some(token) => params = first.clone().continue_token(&token),
            None => return Ok(kept),
        }
    }
}

/// The node's pods, each turned by `keep` into what the drain holds of it.
pub(super) async fn each_pod<T>(
    client: &kube::Client,
    node_name: &str,
    deadline: Instant,
    keep: impl FnMut(Pod) -> Option<T>,
) -> Result<Vec<T>, ListFailure> {
    let api: Api<Pod> = Api::all(client.clone());
    let fetch = |params: ListParams| {
        let api = api.clone();
        async move { api.list(&params).await }
    };
    each_page(fetch, on_node(node_name, PAGE_SIZE), deadline, keep).await
}

/// The node's pods by name and uid, from metadata-only pages.
pub(super) async fn present(
    client: &kube::Client,
    node_name: &str,
    deadline: Instant,
) -> Result<Vec<(PodRef, Option<String>)>, ListFailure> {
    let api: Api<Pod> = Api::all(client.clone());
    let fetch = |params: ListParams| {
        let api = api.clone();
        async move { api.list_metadata(&params).await }
    };
    each_page(
        fetch,
        on_node(node_name, METADATA_PAGE_SIZE),
        deadline,
        |pod: PartialObjectMeta<Pod>| {
            let metadata = pod.metadata;
            let pod_ref = PodRef {
                namespace: metadata.namespace.unwrap_or_default(),
                name: metadata.name.unwrap_or_default(),
            };
            Some((pod_ref, metadata.uid))
        },
    )
    .await
}

/// The names of the pods on `node_name` (NTH's `.Pods` in reports), read metadata-only in
/// pages; every request cut at `deadline`.
pub async fn pod_names_on_node(
    client: &kube::Client,
    node_name: &str,
    deadline: Instant,
) -> Result<Vec<String>, ListFailure> {
    let pods = present(client, node_name, deadline).await?;
    Ok(pods.into_iter().map(|(pod_ref, _)| pod_ref.name).collect())
}
