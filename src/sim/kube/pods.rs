//! Pod lists, one pod, and the Eviction API with its simplified PodDisruptionBudget check.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::http::{json_response, not_found, status_body};
use super::{Cluster, EvictionOutcome, EvictionRecord, Shared, Termination, lock, pod_node};

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

fn pod_list(shared: &Shared, namespace: Option<&str>, query: &HashMap<String, String>) -> Response {
    let node = match node_filter(query) {
        Ok(node) => node,
        Err(selector) => {
            return status_body(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "FakeKube only supports the field selector spec.nodeName=…, not {selector}"
                ),
                None,
            );
        }
    };
    let cluster = lock(shared);
    let items: Vec<&Pod> = cluster
        .pods
        .values()
        .map(|stored| &stored.pod)
        .filter(|pod| namespace.is_none_or(|ns| pod.metadata.namespace.as_deref() == Some(ns)))
        .filter(|pod| {
            node.as_deref()
                .is_none_or(|node| pod_node(pod) == Some(node))
        })
        .collect();
    let list = json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {"resourceVersion": cluster.resource_version.to_string()},
        "items": items,
    });
    (StatusCode::OK, axum::Json(list)).into_response()
}

pub(super) async fn list_all_pods(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    pod_list(&shared, None, &query)
}

pub(super) async fn list_namespace_pods(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    pod_list(&shared, Some(&namespace), &query)
}

pub(super) async fn get_pod(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    match lock(&shared).pods.get(&(namespace, name.clone())) {
        Some(stored) => json_response(StatusCode::OK, &stored.pod),
        None => not_found("pods", &name),
    }
}

/// The budget that forbids evicting `pod` now, with its message, if any.
fn blocking_pdb(cluster: &Cluster, pod: &Pod) -> Option<String> {
    let namespace = pod.metadata.namespace.as_deref()?;
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    cluster
        .pdbs
        .iter()
        .filter(|pdb| pdb.namespace == namespace)
        .filter(|pdb| {
            pdb.match_labels
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
        })
        .find_map(|pdb| {
            let matching: Vec<&Pod> = cluster
                .pods
                .values()
                .map(|stored| &stored.pod)
                .filter(|other| other.metadata.namespace.as_deref() == Some(namespace))
                .filter(|other| {
                    let other_labels = other.metadata.labels.as_ref().unwrap_or(&empty);
                    pdb.match_labels
                        .iter()
                        .all(|(key, value)| other_labels.get(key) == Some(value))
                })
                .collect();
            let terminating = matching
                .iter()
                .filter(|other| other.metadata.deletion_timestamp.is_some())
                .count();
            let max_unavailable = usize::try_from(pdb.max_unavailable).unwrap_or(usize::MAX);
            (terminating >= max_unavailable).then(|| {
                format!(
                    "The disruption budget {} needs {} healthy pods and has {} currently",
                    pdb.name,
                    matching.len().saturating_sub(max_unavailable),
                    matching.len() - terminating
                )
            })
        })
}

pub(super) async fn evict_pod(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let eviction: Value = match serde_json::from_slice(&body) {
        Ok(eviction) => eviction,
        Err(error) => {
            return status_body(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("eviction body is not JSON: {error}"),
                None,
            );
        }
    };
    let grace_period_seconds = eviction
        .pointer("/deleteOptions/gracePeriodSeconds")
        .and_then(Value::as_i64);
    let mut cluster = lock(&shared);
    let key = (namespace.clone(), name.clone());
    let mut record = EvictionRecord {
        namespace,
        name: name.clone(),
        grace_period_seconds,
        outcome: EvictionOutcome::NotFound,
    };
    let Some(stored) = cluster.pods.get(&key) else {
        cluster.evictions.push(record);
        return not_found("pods", &name);
    };
    // The real server lets an eviction of an already terminating pod through untouched.
    if stored.pod.metadata.deletion_timestamp.is_some() {
        record.outcome = EvictionOutcome::Allowed;
        cluster.evictions.push(record);
        return status_body(StatusCode::CREATED, "", "", None);
    }
    if let Some(message) = blocking_pdb(&cluster, &stored.pod) {
        record.outcome = EvictionOutcome::BlockedByPdb;
        cluster.evictions.push(record);
        return status_body(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Cannot evict pod as it would violate the pod's disruption budget.",
            Some(json!({"causes": [{"reason": "DisruptionBudget", "message": message}]})),
        );
    }
    let termination = stored.template.termination.unwrap_or(cluster.termination);
    let pod_grace = stored
        .pod
        .spec
        .as_ref()
        .and_then(|spec| spec.termination_grace_period_seconds);
    let resource_version = cluster.next_resource_version();
    if let Some(stored) = cluster.pods.get_mut(&key) {
        stored.gone_at = match termination {
            Termination::After(delay) => Some(Instant::now() + delay),
            Termination::Never => None,
        };
        stored.pod.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        stored.pod.metadata.deletion_grace_period_seconds =
            Some(grace_period_seconds.or(pod_grace).unwrap_or(30));
        stored.pod.metadata.resource_version = Some(resource_version);
    }
    record.outcome = EvictionOutcome::Allowed;
    cluster.evictions.push(record);
    status_body(StatusCode::CREATED, "", "", None)
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
}
