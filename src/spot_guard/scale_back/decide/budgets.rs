//! Whether PodDisruptionBudgets would let a drain move this node's pods now, as the
//! Eviction API decides (`pkg/registry/core/pod/storage/eviction.go`): a pod under two
//! budgets is never evicted; a Ready pod needs its budget's `disruptionsAllowed` above
//! zero; a pod that is not Ready goes when the budget is otherwise met (`currentHealthy`
//! at least `desiredHealthy`), or always under `unhealthyPodEvictionPolicy: AlwaysAllow`.
//! Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::ClusterView;

/// A budget as the check needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetView {
    pub namespace: String,
    pub name: String,
    /// `None` selects no pod (policy/v1: an empty selector selects every pod).
    pub selector: Option<LabelSelector>,
    pub disruptions_allowed: i32,
    pub current_healthy: i32,
    pub desired_healthy: i32,
    pub always_allow_unhealthy: bool,
}

impl BudgetView {
    pub fn of(budget: &PodDisruptionBudget) -> BudgetView {
        let status = budget.status.as_ref();
        BudgetView {
            namespace: budget.metadata.namespace.clone().unwrap_or_default(),
            name: budget.metadata.name.clone().unwrap_or_default(),
            selector: budget.spec.as_ref().and_then(|spec| spec.selector.clone()),
            disruptions_allowed: status.map_or(0, |s| s.disruptions_allowed),
            current_healthy: status.map_or(0, |s| s.current_healthy),
            desired_healthy: status.map_or(0, |s| s.desired_healthy),
            always_allow_unhealthy: budget
                .spec
                .as_ref()
                .and_then(|spec| spec.unhealthy_pod_eviction_policy.as_deref())
                == Some("AlwaysAllow"),
        }
    }

    fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespace == namespace && self.selector.as_ref().is_some_and(|s| matches(s, labels))
    }
}

/// `metav1.LabelSelectorAsSelector(…).Matches(labels)`; an operator it does not know
/// (which the API server would have refused) matches nothing.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let listed = |v: &String| e.values.iter().flatten().any(|listed| listed == v);
        match e.operator.as_str() {
            "In" => value.is_some_and(listed),
            "NotIn" => !value.is_some_and(listed),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// `Err` names the first pod of this node a drain would move that its budget keeps in
/// place now, and why.
pub fn budgets_allow(cluster: &ClusterView, budgets: &[BudgetView]) -> Result<(), String> {
    for pod in cluster.own_pods.iter().filter(|p| p.moves) {
        let Some(who) = &pod.identity else { continue };
        let covering: Vec<&BudgetView> = budgets
            .iter()
            .filter(|b| b.selects(&who.namespace, &who.labels))
            .collect();
        let pod_name = format!("{}/{}", who.namespace, who.name);
        match covering.as_slice() {
            [] => {}
            [budget] if who.ready && budget.disruptions_allowed < 1 => {
                return Err(format!(
                    "pod {pod_name} cannot move now: PodDisruptionBudget {}/{} allows no disruption ({} healthy, {} needed)",
                    budget.namespace, budget.name, budget.current_healthy, budget.desired_healthy
                ));
            }
            [budget]
                if !who.ready
                    && !budget.always_allow_unhealthy
                    && budget.current_healthy < budget.desired_healthy =>
            {
                return Err(format!(
                    "pod {pod_name} cannot move now: PodDisruptionBudget {}/{} is not met ({} healthy, {} needed)",
                    budget.namespace, budget.name, budget.current_healthy, budget.desired_healthy
                ));
            }
            [_] => {}
            several => {
                let names: Vec<String> = several
                    .iter()
                    .map(|b| format!("{}/{}", b.namespace, b.name))
                    .collect();
                return Err(format!(
                    "pod {pod_name} cannot move: it is covered by several PodDisruptionBudgets ({}), and the API server refuses to evict such a pod",
                    names.join(", ")
                ));
            }
        }
    }
    Ok(())
}
