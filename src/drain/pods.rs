//! Reading the node's pods in pages ([`crate::paged_list`]), keeping of each only what the
//! drain needs, so memory holds one page at a time rather than every pod of a full node.
//! Where only names and uids matter (seeing evicted pods go, the names for reports) the
//! list is metadata-only (`PartialObjectMetadataList`): no specs and statuses on the wire
//! or in memory.

use std::future::Future;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, ObjectList, PartialObjectMeta};
use tokio::time::Instant;

use super::{ATTEMPT_TIMEOUT, PodRef, attempt_deadline};
use crate::paged_list::{self, ListError, OnExpired};

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

impl ListError for ListFailure {
    fn is_expired(&self) -> bool {
        matches!(self, ListFailure::Api(error) if error.is_expired())
    }
}

fn on_node(node_name: &str) -> ListParams {
    ListParams::default().fields(&format!("spec.nodeName={node_name}"))
}

/// One page's request, cut at [`attempt_deadline`] of `deadline`: a connection that died
/// silently costs one attempt, not the drain's whole window.
async fn within<K: Clone>(
    deadline: Instant,
    request: impl Future<Output = Result<ObjectList<K>, kube::Error>>,
) -> Result<ObjectList<K>, ListFailure> {
    match tokio::time::timeout_at(attempt_deadline(deadline), request).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(ListFailure::TimedOut),
    }
}

/// The node's pods, each turned by `keep` into what the drain holds of it. A continue
/// token that expired mid-list starts the list again while the drain has time: the drain
/// needs the node's pods now, and there is no next check.
pub(super) async fn each_pod<T>(
    client: &kube::Client,
    node_name: &str,
    deadline: Instant,
    keep: impl FnMut(Pod) -> Option<T>,
) -> Result<Vec<T>, ListFailure> {
    let api = &Api::<Pod>::all(client.clone());
    paged_list::collect(
        move |params| async move { within(deadline, api.list(&params)).await },
        on_node(node_name),
        PAGE_SIZE,
        OnExpired::RestartUntil(deadline),
        keep,
    )
    .await
}

/// The node's pods by name and uid, from metadata-only pages; restarted on an expired
/// continue token as [`each_pod`] is.
pub(super) async fn present(
    client: &kube::Client,
    node_name: &str,
    deadline: Instant,
) -> Result<Vec<(PodRef, Option<String>)>, ListFailure> {
    let api = &Api::<Pod>::all(client.clone());
    paged_list::collect(
        move |params| async move { within(deadline, api.list_metadata(&params)).await },
        on_node(node_name),
        METADATA_PAGE_SIZE,
        OnExpired::RestartUntil(deadline),
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
