//! Pod lists (paged; whole, as a Table or metadata-only), one pod, and the Eviction API
//! (`pkg/registry/core/pod/storage/eviction.go`): the identity checks, the cases that skip
//! the budget, the budget check, and the graceful deletion that follows.

use std::collections::HashMap;
use std::ops::Bound;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::metadata::{self, ListAs};
use super::paging::Paging;
use super::pod;
use super::status::{bad_request, json_response, not_found, status_body};
use super::table::{self, POD_COLUMNS};
use super::{
    Cluster, EvictionOutcome, EvictionRecord, FakePod, Shared, Termination, lock, pod_node,
};

/// The node a list is filtered to; `Err` names a selector the fake does not model.
fn node_filter(query: &HashMap<String, String>) -> Result<Option<String>, String> {
    if let Some(labels) = query
        .get("labelSelector")
        .filter(|labels| !labels.is_empty())
    {
        return Err(format!("labelSelector {labels}"));
    }
    let Some(fields) = query
        .get("fieldSelector")
        .filter(|fields| !fields.is_empty())
    else {
        return Ok(None);
    };
    let mut node = None;
    for term in fields.split(',') {
        let value = term
            .strip_prefix("spec.nodeName==")
            .or_else(|| term.strip_prefix("spec.nodeName="));
        match value {
            Some(value) => node = Some(value.to_owned()),
            None => return Err(format!("fieldSelector {term}")),
        }
    }
    Ok(node)
}

fn pod_list(
    shared: &Shared,
    namespace: Option<&str>,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let list_as = match metadata::list_as(headers, "PodList") {
        Ok(list_as) => list_as,
        Err(refusal) => return refusal.response(),
    };
    let node = match node_filter(query) {
        Ok(node) => node,
        Err(selector) => {
            return bad_request(&format!(
                "FakeKube only supports the field selector spec.nodeName=…, not {selector}"
            ));
        }
    };
    let cluster = lock(shared);
    let paging = match Paging::of(query, cluster.resource_version, cluster.compacted_at) {
        Ok(paging) => paging,
        Err(refusal) => return refusal.response(),
    };
    // Keyed by (namespace, name), as the store's keys order them.
    let after = paging
        .after
        .as_deref()
        .and_then(|key| key.split_once('/'))
        .map(|(ns, name)| (ns.to_owned(), name.to_owned()));
    let stored = match after {
        Some(after) => cluster
            .pods
            .range((Bound::Excluded(after), Bound::Unbounded)),
        None => cluster.pods.range(..),
    };
    let matching = stored
        .map(|(_, stored)| &stored.pod)
        .filter(|pod| namespace.is_none_or(|ns| pod.metadata.namespace.as_deref() == Some(ns)))
        .filter(|pod| {
            node.as_deref()
                .is_none_or(|node| pod_node(pod) == Some(node))
        });
    let key = |pod: &&Pod| {
        format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        )
    };
    let (items, metadata) = paging.cut(matching, key, node.is_some());
    if list_as == ListAs::MetadataList {
        return metadata::list_response(items.iter().map(|pod| &pod.metadata), metadata);
    }
    if table::wants_table(headers) {
        let rows = items.iter().map(|pod| table::pod_row(pod)).collect();
        return table::paged_response(&POD_COLUMNS, rows, metadata);
    }
    let list = json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": metadata,
        "items": items,
    });
    (StatusCode::OK, axum::Json(list)).into_response()
}

pub(super) async fn list_all_pods(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    pod_list(&shared, None, &query, &headers)
}

pub(super) async fn list_namespace_pods(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    pod_list(&shared, Some(&namespace), &query, &headers)
}

pub(super) async fn get_pod(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let cluster = lock(&shared);
    match cluster.pods.get(&(namespace, name.clone())) {
        Some(stored) if table::wants_table(&headers) => table::response(
            &POD_COLUMNS,
            vec![table::pod_row(&stored.pod)],
            cluster.resource_version,
        ),
        Some(stored) => json_response(StatusCode::OK, &stored.pod),
        None => not_found("pods", &name),
    }
}

/// What the eviction handler decided.
enum Verdict {
    Delete,
    /// 429 with the budget's cause.
    Blocked {
        budget: String,
        needs: i32,
        has: i32,
    },
    /// 500: the pod is under more than one budget.
    SeveralBudgets,
}

/// `canIgnorePDB`, then the budget, as `EvictionREST.Create` decides.
fn verdict(cluster: &Cluster, pod: &Pod) -> Verdict {
    let terminating = pod.metadata.deletion_timestamp.is_some();
    if terminating || matches!(pod::phase(pod), "Succeeded" | "Failed" | "Pending") {
        return Verdict::Delete;
    }
    let budgets = cluster.budgets_of(pod);
    let index = match budgets.as_slice() {
        [] => return Verdict::Delete,
        [one] => *one,
        _ => return Verdict::SeveralBudgets,
    };
    let health = cluster.health(index);
    // An unready pod goes without using the budget when the budget is met without it.
    if !pod::is_ready(pod)
        && health.current_healthy >= health.desired_healthy
        && health.desired_healthy > 0
    {
        return Verdict::Delete;
    }
    if health.disruptions_allowed == 0 {
        return Verdict::Blocked {
            budget: cluster.pdbs[index].name().to_owned(),
            needs: health.desired_healthy,
            has: health.current_healthy,
        };
    }
    Verdict::Delete
}

/// The Eviction's identity against the URL, as the handler checks it before anything else.
fn identity_error(eviction: &Value, namespace: &str, name: &str) -> Option<Response> {
    if let Some(kind) = eviction.get("kind").and_then(Value::as_str)
        && kind != "Eviction"
    {
        return Some(bad_request(&format!(
            "not a Eviction object: {kind} cannot be handled as a Eviction"
        )));
    }
    let body_name = eviction
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if body_name != name {
        return Some(bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let body_namespace = eviction
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !body_namespace.is_empty() && body_namespace != namespace {
        return Some(bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    None
}

pub(super) async fn evict_pod(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let eviction: Value = match serde_json::from_slice(&body) {
        Ok(eviction) => eviction,
        Err(error) => {
            return bad_request(&format!(
                "couldn't get version/kind; json parse error: {error}"
            ));
        }
    };
    let grace_value = eviction.pointer("/deleteOptions/gracePeriodSeconds");
    let grace_period_seconds = grace_value.and_then(Value::as_i64);
    let mut cluster = lock(&shared);
    let mut record = EvictionRecord {
        namespace: namespace.clone(),
        name: name.clone(),
        grace_period_seconds,
        outcome: EvictionOutcome::NotFound,
    };
    if cluster.rules.validation {
        let wrong_grace = grace_value.is_some_and(|v| !v.is_null() && v.as_i64().is_none());
        let refusal = identity_error(&eviction, &namespace, &name).or_else(|| {
            wrong_grace.then(|| {
                bad_request(&format!(
                    "Eviction in version \"v1\" cannot be handled as a Eviction: json: cannot \
                     unmarshal {} into Go struct field DeleteOptions.deleteOptions.gracePeriodSeconds of type int64",
                    if grace_value.is_some_and(Value::is_number) { "number" } else { "string" }
                ))
            })
        });
        if let Some(refusal) = refusal {
            record.outcome = EvictionOutcome::Rejected(refusal.status().as_u16());
            cluster.evictions.push(record);
            return refusal;
        }
    }
    let key = (namespace, name.clone());
    let Some(stored) = cluster.pods.get(&key) else {
        cluster.evictions.push(record);
        return not_found("pods", &name);
    };
    match verdict(&cluster, &stored.pod) {
        Verdict::Delete => {}
        Verdict::Blocked { budget, needs, has } => {
            record.outcome = EvictionOutcome::BlockedByPdb;
            cluster.evictions.push(record);
            return status_body(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
                Some(json!({"causes": [{
                    "reason": "DisruptionBudget",
                    "message": format!(
                        "The disruption budget {budget} needs {needs} healthy pods and has {has} currently"
                    ),
                }]})),
            );
        }
        Verdict::SeveralBudgets => {
            record.outcome = EvictionOutcome::Rejected(500);
            cluster.evictions.push(record);
            return status_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                "",
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                None,
            );
        }
    }
    cluster.delete_pod(&key, grace_period_seconds, Instant::now());
    record.outcome = EvictionOutcome::Allowed;
    cluster.evictions.push(record);
    status_body(StatusCode::CREATED, "", "", None)
}

impl Cluster {
    /// The API server's graceful deletion (`CheckGracefulDelete`, `BeforeDelete`): sets
    /// `deletionTimestamp` and `deletionGracePeriodSeconds` and returns when the pod goes,
    /// `Some(now)` for at once. `grace` is what the request asked for, else the pod's own.
    pub(super) fn mark_deleted(
        &mut self,
        pod: &mut Pod,
        template: &FakePod,
        grace: i64,
        now: Instant,
    ) -> Option<Instant> {
        let unscheduled = pod
            .spec
            .as_ref()
            .is_none_or(|spec| spec.node_name.is_none());
        let finished = matches!(pod::phase(pod), "Succeeded" | "Failed");
        let grace = if unscheduled || finished {
            0
        } else {
            grace.max(0)
        };
        let deadline = Timestamp::now()
            .checked_add(Duration::from_secs(grace.unsigned_abs()))
            .unwrap_or_else(|_| Timestamp::now());
        pod.metadata.deletion_timestamp = Some(Time(deadline));
        pod.metadata.deletion_grace_period_seconds = Some(grace);
        pod.metadata.resource_version = Some(self.next_resource_version());
        if grace == 0 {
            return Some(now);
        }
        match template.termination.unwrap_or(self.rules.termination) {
            Termination::GracePeriod => Some(now + Duration::from_secs(grace.unsigned_abs())),
            Termination::After(delay) => Some(now + delay),
            Termination::Never => None,
        }
    }

    /// A graceful deletion of the pod at `key` with the grace period asked for (else its
    /// own); on an already terminating pod it may only shorten what is left.
    pub(super) fn delete_pod(&mut self, key: &(String, String), asked: Option<i64>, now: Instant) {
        let Some(stored) = self.pods.get(key) else {
            return;
        };
        let own = stored.template.grace_period_seconds();
        let mut pod = stored.pod.clone();
        let template = stored.template.clone();
        if let Some(current) = pod.metadata.deletion_grace_period_seconds {
            // Only a shorter grace period than the one running may be given.
            let Some(shorter) = asked.filter(|asked| *asked < current) else {
                return;
            };
            let gone_at = self.mark_deleted(&mut pod, &template, shorter, now);
            if let Some(stored) = self.pods.get_mut(key) {
                stored.pod = pod;
                stored.gone_at = match (stored.gone_at, gone_at) {
                    (Some(old), Some(new)) => Some(old.min(new)),
                    (old, new) => old.or(new),
                };
            }
            self.settle(now);
            return;
        }
        pod::set_condition(
            &mut pod,
            PodCondition {
                type_: "DisruptionTarget".to_owned(),
                status: "True".to_owned(),
                reason: Some("EvictionByEvictionAPI".to_owned()),
                message: Some("Eviction API: evicting".to_owned()),
                last_transition_time: Some(Time(Timestamp::now())),
                ..PodCondition::default()
            },
        );
        let gone_at = self.mark_deleted(&mut pod, &template, asked.unwrap_or(own), now);
        if let Some(stored) = self.pods.get_mut(key) {
            stored.pod = pod;
            stored.gone_at = gone_at;
        }
        self.settle(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_filter_accepts_only_node_name() {
        let by_node = HashMap::from([("fieldSelector".to_owned(), "spec.nodeName=n1".to_owned())]);
        assert_eq!(node_filter(&by_node), Ok(Some("n1".to_owned())));
        let by_phase = HashMap::from([(
            "fieldSelector".to_owned(),
            "status.phase=Running".to_owned(),
        )]);
        assert!(node_filter(&by_phase).is_err());
        let by_label = HashMap::from([("labelSelector".to_owned(), "app=web".to_owned())]);
        assert!(node_filter(&by_label).is_err());
    }

    #[test]
    fn an_eviction_must_name_the_pod_of_its_url() {
        let named = |name: &str| json!({"kind": "Eviction", "metadata": {"name": name}});
        assert!(identity_error(&named("web-1"), "default", "web-1").is_none());
        let other = identity_error(&named("web-2"), "default", "web-1");
        assert_eq!(other.map(|r| r.status()), Some(StatusCode::BAD_REQUEST));
        let unnamed = identity_error(&json!({"kind": "Eviction"}), "default", "web-1");
        assert_eq!(unnamed.map(|r| r.status()), Some(StatusCode::BAD_REQUEST));
    }
}
