//! PodDisruptionBudgets, with the status the disruption controller computes
//! (`pkg/controller/disruption`): expected pods, desired and current healthy, disruptions
//! allowed; served as `policy/v1` objects (`GET`, lists, Tables) and consulted by the
//! Eviction API.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{
    PodDisruptionBudget, PodDisruptionBudgetSpec, PodDisruptionBudgetStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::pod::{self, OwnerKind};
use super::status::{json_response, not_found};
use super::table::{self, PDB_COLUMNS, Row};
use super::{Cluster, FakeKube, Shared, StoredPod, WorkloadKey, lock};

/// What a budget guarantees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PdbBudget {
    /// `spec.minAvailable`: an integer or a percentage such as `"50%"`.
    MinAvailable(IntOrString),
    /// `spec.maxUnavailable`: an integer or a percentage.
    MaxUnavailable(IntOrString),
}

pub(super) struct Pdb {
    namespace: String,
    name: String,
    uid: String,
    created: Time,
    generation: i64,
    resource_version: String,
    match_labels: BTreeMap<String, String>,
    budget: PdbBudget,
    /// The status last written, as the disruption controller writes it: each change is
    /// a write with a new `resourceVersion`, which is what a watch sees.
    status: Option<Health>,
}

/// How often a watch looks for budgets whose status changed: the disruption controller
/// reacts to pod changes within milliseconds, and so does this.
const WATCH_TICK: Duration = Duration::from_millis(5);

/// A watch's length when the client names none (the API server picks 30–60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// The disruption controller's numbers for one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Health {
    pub(super) expected: i32,
    pub(super) desired_healthy: i32,
    pub(super) current_healthy: i32,
    pub(super) disruptions_allowed: i32,
}

impl Pdb {
    fn matches(&self, pod: &Pod) -> bool {
        pod.metadata.namespace.as_deref() == Some(self.namespace.as_str())
            && self.match_labels.iter().all(|(key, value)| {
                pod.metadata
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get(key))
                    == Some(value)
            })
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }
}

/// `GetScaledValueFromIntOrPercent(…, roundUp=true)`.
fn scaled(value: &IntOrString, total: i32) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(text) => {
            let percent: i64 = text.trim_end_matches('%').parse().unwrap_or(0);
            let total = i64::from(total);
            i32::try_from((percent * total + 99) / 100).unwrap_or(i32::MAX)
        }
    }
}

impl Cluster {
    /// The budgets whose selector matches `pod` (the Eviction API refuses more than one).
    pub(super) fn budgets_of(&self, pod: &Pod) -> Vec<usize> {
        (0..self.pdbs.len())
            .filter(|index| self.pdbs[*index].matches(pod))
            .collect()
    }

    /// `getExpectedPodCount` and `countHealthyPods` for budget `index`.
    pub(super) fn health(&self, index: usize) -> Health {
        let pdb = &self.pdbs[index];
        let pods: Vec<&StoredPod> = self
            .pods
            .values()
            .filter(|stored| pdb.matches(&stored.pod))
            .collect();
        let current_healthy = pods
            .iter()
            .filter(|s| s.pod.metadata.deletion_timestamp.is_none() && pod::is_ready(&s.pod))
            .count();
        let current_healthy = i32::try_from(current_healthy).unwrap_or(i32::MAX);
        let present = i32::try_from(pods.len()).unwrap_or(i32::MAX);
        let from_controllers = || -> Option<i32> {
            if !self.rules.pdb_counts_replicas {
                return Some(present);
            }
            let mut seen: BTreeSet<&WorkloadKey> = BTreeSet::new();
            let mut expected = 0usize;
            for stored in &pods {
                match (&stored.workload, stored.template.owner_kind) {
                    (Some(key), _) if key.1 == OwnerKind::DaemonSet => return None,
                    (Some(key), _) => {
                        if seen.insert(key) {
                            let workload = self.workloads.get(key)?;
                            expected += match key.1 {
                                OwnerKind::ReplicaSet => workload.replicas,
                                _ => workload.members.len(),
                            };
                        }
                    }
                    // No scale to read: the controller gives up on the budget.
                    (None, OwnerKind::Node | OwnerKind::Job) => return None,
                    // Unmanaged pods are left out of the count.
                    (None, _) => {}
                }
            }
            Some(i32::try_from(expected).unwrap_or(i32::MAX))
        };
        let (expected, desired_healthy) = match &pdb.budget {
            PdbBudget::MinAvailable(IntOrString::Int(n)) => (Some(present), *n),
            PdbBudget::MinAvailable(percent) => {
                let expected = from_controllers();
                (expected, scaled(percent, expected.unwrap_or(0)))
            }
            PdbBudget::MaxUnavailable(value) => {
                let expected = from_controllers();
                let total = expected.unwrap_or(0);
                (expected, (total - scaled(value, total)).max(0))
            }
        };
        let Some(expected) = expected else {
            // The controller's fail-safe: no disruption while it cannot count.
            return Health {
                expected: 0,
                desired_healthy: 0,
                current_healthy,
                disruptions_allowed: 0,
            };
        };
        let allowed = current_healthy - desired_healthy;
        Health {
            expected,
            desired_healthy,
            current_healthy,
            disruptions_allowed: if expected <= 0 || allowed <= 0 {
                0
            } else {
                allowed
            },
        }
    }

    fn pdb_object(&self, index: usize) -> PodDisruptionBudget {
        let pdb = &self.pdbs[index];
        let health = self.health(index);
        let (min_available, max_unavailable) = match &pdb.budget {
            PdbBudget::MinAvailable(value) => (Some(value.clone()), None),
            PdbBudget::MaxUnavailable(value) => (None, Some(value.clone())),
        };
        let allowed = health.disruptions_allowed > 0;
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some(pdb.name.clone()),
                namespace: Some(pdb.namespace.clone()),
                uid: Some(pdb.uid.clone()),
                generation: Some(pdb.generation),
                resource_version: Some(pdb.resource_version.clone()),
                creation_timestamp: Some(pdb.created.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                min_available,
                max_unavailable,
                selector: Some(LabelSelector {
                    match_labels: Some(pdb.match_labels.clone()),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            status: Some(PodDisruptionBudgetStatus {
                observed_generation: Some(pdb.generation),
                current_healthy: health.current_healthy,
                desired_healthy: health.desired_healthy,
                expected_pods: health.expected,
                disruptions_allowed: health.disruptions_allowed,
                conditions: Some(vec![Condition {
                    type_: "DisruptionAllowed".to_owned(),
                    status: if allowed { "True" } else { "False" }.to_owned(),
                    reason: if allowed {
                        "SufficientPods"
                    } else {
                        "InsufficientPods"
                    }
                    .to_owned(),
                    message: String::new(),
                    observed_generation: Some(pdb.generation),
                    last_transition_time: Time(Timestamp::now()),
                }]),
                ..PodDisruptionBudgetStatus::default()
            }),
        }
    }

    fn pdb_row(&self, index: usize) -> Row {
        let object = self.pdb_object(index);
        let spec = object.spec.clone().unwrap_or_default();
        let print = |value: Option<IntOrString>| match value {
            Some(IntOrString::Int(n)) => n.to_string(),
            Some(IntOrString::String(text)) => text,
            None => "N/A".to_owned(),
        };
        let allowed = object.status.as_ref().map_or(0, |s| s.disruptions_allowed);
        Row {
            cells: vec![
                json!(self.pdbs[index].name),
                json!(print(spec.min_available)),
                json!(print(spec.max_unavailable)),
                json!(allowed),
                json!(table::age(object.metadata.creation_timestamp.as_ref())),
            ],
            metadata: object.metadata,
        }
    }

    /// The disruption controller's status writes: every budget whose numbers changed gets
    /// them, with a new `resourceVersion`.
    pub(super) fn write_pdb_status(&mut self) {
        for index in 0..self.pdbs.len() {
            let health = self.health(index);
            if self.pdbs[index].status != Some(health) {
                let resource_version = self.next_resource_version();
                let pdb = &mut self.pdbs[index];
                pdb.status = Some(health);
                pdb.resource_version = resource_version;
            }
        }
    }

    /// One line per budget of `namespace` (all when `None`) written after
    /// `resourceVersion` `since`: `ADDED` for the watch's first look when it starts from
    /// "any" (`0`), `MODIFIED` afterwards.
    fn pdb_watch_lines(&self, namespace: Option<&str>, since: u64, initial: bool) -> String {
        let mut lines = String::new();
        for (index, pdb) in self.pdbs.iter().enumerate() {
            let written: u64 = pdb.resource_version.parse().unwrap_or(0);
            if namespace.is_some_and(|ns| pdb.namespace != ns) || written <= since && !initial {
                continue;
            }
            let kind = if initial { "ADDED" } else { "MODIFIED" };
            let event = json!({"type": kind, "object": self.pdb_object(index)});
            lines.push_str(&event.to_string());
            lines.push('\n');
        }
        lines
    }

    fn set_budget(&mut self, namespace: &str, name: &str, budget: PdbBudget) -> bool {
        let resource_version = self.next_resource_version();
        let Some(pdb) = self
            .pdbs
            .iter_mut()
            .find(|pdb| pdb.namespace == namespace && pdb.name == name)
        else {
            return false;
        };
        pdb.budget = budget;
        pdb.generation += 1;
        pdb.resource_version = resource_version;
        true
    }
}

impl FakeKube {
    /// A budget with an integer `maxUnavailable` over the pods with these labels.
    pub fn add_pdb(
        &self,
        namespace: &str,
        name: &str,
        match_labels: &[(&str, &str)],
        max_unavailable: u32,
    ) {
        let value = i32::try_from(max_unavailable).unwrap_or(i32::MAX);
        self.add_pdb_with(
            namespace,
            name,
            match_labels,
            PdbBudget::MaxUnavailable(IntOrString::Int(value)),
        );
    }

    /// A budget over the pods with these labels (an empty list selects every pod of the
    /// namespace, as in policy/v1).
    pub fn add_pdb_with(
        &self,
        namespace: &str,
        name: &str,
        match_labels: &[(&str, &str)],
        budget: PdbBudget,
    ) {
        let mut cluster = self.cluster();
        let uid = cluster.next_uid();
        let resource_version = cluster.next_resource_version();
        cluster.pdbs.push(Pdb {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid,
            created: Time(Timestamp::now()),
            generation: 1,
            resource_version,
            match_labels: match_labels
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            budget,
            status: None,
        });
        cluster.write_pdb_status();
    }

    /// Sets an integer `maxUnavailable` (replacing `minAvailable`); returns whether the budget
    /// exists.
    pub fn set_pdb_max_unavailable(
        &self,
        namespace: &str,
        name: &str,
        max_unavailable: u32,
    ) -> bool {
        let value = i32::try_from(max_unavailable).unwrap_or(i32::MAX);
        self.set_pdb_budget(
            namespace,
            name,
            PdbBudget::MaxUnavailable(IntOrString::Int(value)),
        )
    }

    /// Replaces the budget's guarantee; returns whether it exists.
    pub fn set_pdb_budget(&self, namespace: &str, name: &str, budget: PdbBudget) -> bool {
        self.cluster().set_budget(namespace, name, budget)
    }

    /// The budget as `kubectl get pdb -o yaml` shows it, status included.
    pub fn pdb(&self, namespace: &str, name: &str) -> Option<PodDisruptionBudget> {
        let cluster = self.cluster();
        let index = cluster
            .pdbs
            .iter()
            .position(|pdb| pdb.namespace == namespace && pdb.name == name)?;
        Some(cluster.pdb_object(index))
    }

    /// Whether the disruption controller would count budgets by their pods' controllers'
    /// replicas (default: yes). Off, a budget's expected pods are the matching pods that
    /// exist, as if each evicted pod's controller had been scaled down with it.
    pub fn set_pdb_counts_replicas(&self, on: bool) {
        self.cluster().rules.pdb_counts_replicas = on;
    }
}

fn pdb_list(shared: &Shared, namespace: Option<&str>, headers: &HeaderMap) -> Response {
    let cluster = lock(shared);
    let indices: Vec<usize> = (0..cluster.pdbs.len())
        .filter(|i| namespace.is_none_or(|ns| cluster.pdbs[*i].namespace == ns))
        .collect();
    if table::wants_table(headers) {
        let rows = indices.iter().map(|i| cluster.pdb_row(*i)).collect();
        return table::response(&PDB_COLUMNS, rows, cluster.resource_version);
    }
    let items: Vec<PodDisruptionBudget> = indices.iter().map(|i| cluster.pdb_object(*i)).collect();
    let list = json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudgetList",
        "metadata": {"resourceVersion": cluster.resource_version.to_string()},
        "items": items,
    });
    (StatusCode::OK, axum::Json(list)).into_response()
}

/// `?watch=true`: a stream of watch events, one JSON object a line, until
/// `timeoutSeconds`. From `resourceVersion` 0 (or none) it starts with every budget as
/// `ADDED`; from a later one, with the budgets written since. No bookmarks, and no 410 for
/// a `resourceVersion` too old (the server keeps all history).
fn pdb_watch(
    shared: Shared,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Response {
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let until = Instant::now() + timeout;
    let lines = futures::stream::unfold((since, since == 0), move |(mut seen, mut initial)| {
        let shared = shared.clone();
        let namespace = namespace.clone();
        async move {
            loop {
                if !initial {
                    tokio::time::sleep(WATCH_TICK).await;
                }
                if Instant::now() >= until {
                    return None;
                }
                let cluster = lock(&shared);
                let lines = cluster.pdb_watch_lines(namespace.as_deref(), seen, initial);
                seen = cluster.resource_version;
                initial = false;
                if !lines.is_empty() {
                    return Some((Ok::<_, Infallible>(lines), (seen, initial)));
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn is_watch(query: &HashMap<String, String>) -> bool {
    query.get("watch").is_some_and(|v| v == "true" || v == "1")
}

pub(super) async fn list_all_pdbs(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if is_watch(&query) {
        return pdb_watch(shared, None, &query);
    }
    pdb_list(&shared, None, &headers)
}

pub(super) async fn list_namespace_pdbs(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if is_watch(&query) {
        return pdb_watch(shared, Some(namespace), &query);
    }
    pdb_list(&shared, Some(&namespace), &headers)
}

pub(super) async fn get_pdb(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let cluster = lock(&shared);
    let Some(index) = cluster
        .pdbs
        .iter()
        .position(|pdb| pdb.namespace == namespace && pdb.name == name)
    else {
        return not_found("poddisruptionbudgets.policy", &name);
    };
    if table::wants_table(&headers) {
        let rows = vec![cluster.pdb_row(index)];
        return table::response(&PDB_COLUMNS, rows, cluster.resource_version);
    }
    json_response(StatusCode::OK, &cluster.pdb_object(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_up() {
        assert_eq!(scaled(&IntOrString::String("50%".to_owned()), 3), 2);
        assert_eq!(scaled(&IntOrString::String("10%".to_owned()), 3), 1);
        assert_eq!(scaled(&IntOrString::Int(2), 3), 2);
    }
}
