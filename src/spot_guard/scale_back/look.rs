//! One look at the cluster for scale-back: the Node and Pod lists read in pages of
//! [`PAGE_SIZE`] (as `kubectl` and client-go's pager do) and folded into a
//! [`ClusterView`] page by page, so memory holds one page and one entry per node
//! rather than every Pod of a large cluster.

use std::fmt::Debug;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;

use super::ScaleBackError;
use super::decide::{BudgetView, ClusterView, NodeView, PodView};
use crate::drain::DrainSettings;

/// Objects per list request: client-go's default page, a few MiB of Pods at most.
pub const PAGE_SIZE: u32 = 500;

/// Every node with its pods' requests, `own`'s pods one by one, and the budgets that
/// may cover the pods a drain of `own` would move. Nodes are read first, so each
/// pod's requests count on a node already known.
pub async fn look(
    kube: &kube::Client,
    own: &str,
    drain: &DrainSettings,
) -> Result<(ClusterView, Vec<BudgetView>), ScaleBackError> {
    let mut cluster = ClusterView::new(own);
    each_page(&Api::<Node>::all(kube.clone()), |node| {
        cluster.add_node(NodeView::of(&node));
    })
    .await
    .map_err(|source| ScaleBackError::List {
        what: "nodes",
        source,
    })?;
    each_page(&Api::<Pod>::all(kube.clone()), |pod| {
        if let Some(pod) = PodView::of(&pod, drain, own) {
            cluster.add_pod(pod);
        }
    })
    .await
    .map_err(|source| ScaleBackError::List {
        what: "pods",
        source,
    })?;
    // Every look reads the budgets (all namespaces, a few hundred small objects at
    // most) and keeps those of the namespaces this node's moving pods are in.
    let namespaces: BTreeSet<&str> = cluster
        .own_pods
        .iter()
        .filter(|pod| pod.moves)
        .filter_map(|pod| Some(pod.identity.as_ref()?.namespace.as_str()))
        .collect();
    let mut budgets = Vec::new();
    each_page(&Api::<PodDisruptionBudget>::all(kube.clone()), |budget| {
        let budget = BudgetView::of(&budget);
        if namespaces.contains(budget.namespace.as_str()) {
            budgets.push(budget);
        }
    })
    .await
    .map_err(|source| ScaleBackError::List {
        what: "poddisruptionbudgets",
        source,
    })?;
    Ok((cluster, budgets))
}

/// Lists every object page by page, handing each to `visit` and dropping the page
/// before the next is read. A continue token that expired mid-way (410) fails the look;
/// the next check starts a new list.
async fn each_page<K>(api: &Api<K>, mut visit: impl FnMut(K)) -> Result<(), kube::Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    let mut params = ListParams::default().limit(PAGE_SIZE);
    loop {
        let page = api.list(&params).await?;
        let next = page.metadata.continue_.filter(|token| !token.is_empty());
        page.items.into_iter().for_each(&mut visit);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}
