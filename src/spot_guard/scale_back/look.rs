//! One look at the cluster for scale-back: the Node and Pod lists read in pages of
//! [`PAGE_SIZE`] ([`crate::paged_list`]) and folded into a [`ClusterView`] page by page,
//! so memory holds one page and one entry per node rather than every Pod of a large
//! cluster. A continue token that expired mid-list (410) fails the look: what was folded
//! cannot be taken back, and the next check starts a new list.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;

use super::ScaleBackError;
use super::decide::{BudgetView, ClusterView, NodeView, PodView};
use crate::drain::DrainSettings;
use crate::paged_list;

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

/// Every object of `api`'s kind, each handed to `visit` as its page arrives.
async fn each_page<K>(api: &Api<K>, visit: impl FnMut(K)) -> Result<(), kube::Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    paged_list::for_each(
        |params| async move { api.list(&params).await },
        ListParams::default(),
        PAGE_SIZE,
        visit,
    )
    .await
}
