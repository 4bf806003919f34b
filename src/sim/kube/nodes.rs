//! `GET /api/v1/nodes` (no selectors) and `GET`/`PATCH /api/v1/nodes/{name}`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Node;
use serde_json::{Map, Value, json};

use super::http::{json_response, not_found, status_body};
use super::{Shared, lock};

pub(super) async fn list_nodes(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some((selector, value)) = query
        .iter()
        .find(|(key, value)| key.ends_with("Selector") && !value.is_empty())
    {
        return status_body(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("FakeKube does not model node list selectors ({selector}={value})"),
            None,
        );
    }
    let cluster = lock(&shared);
    let items: Vec<&Node> = cluster.nodes.values().collect();
    let list = json!({
        "apiVersion": "v1",
        "kind": "NodeList",
        "metadata": {"resourceVersion": cluster.resource_version.to_string()},
        "items": items,
    });
    (StatusCode::OK, axum::Json(list)).into_response()
}

pub(super) async fn get_node(State(shared): State<Shared>, Path(name): Path<String>) -> Response {
    match lock(&shared).nodes.get(&name) {
        Some(node) => json_response(StatusCode::OK, node),
        None => not_found("nodes", &name),
    }
}

pub(super) async fn patch_node(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(error) => {
            return status_body(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("patch body is not JSON: {error}"),
                None,
            );
        }
    };
    match content_type {
        "application/merge-patch+json" => {}
        // Without lists a strategic merge patch means the same as a merge patch.
        "application/strategic-merge-patch+json" if !contains_array(&patch) => {}
        other => {
            return status_body(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                &format!("FakeKube does not model patch type {other:?} with this body"),
                None,
            );
        }
    }
    let mut cluster = lock(&shared);
    let Some(current) = cluster.nodes.get(&name) else {
        return not_found("nodes", &name);
    };
    let current_version = current
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    if let Some(wanted) = patch
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        && wanted != current_version
    {
        return status_body(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on nodes \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
            Some(json!({"name": name, "kind": "nodes"})),
        );
    }
    let mut document = match serde_json::to_value(current) {
        Ok(document) => document,
        Err(error) => {
            return status_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("serializing node {name}: {error}"),
                None,
            );
        }
    };
    merge_patch(&mut document, &patch);
    let mut patched: Node = match serde_json::from_value(document) {
        Ok(node) => node,
        Err(error) => {
            return status_body(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("patched node {name} is not a valid Node: {error}"),
                None,
            );
        }
    };
    patched.metadata.name = Some(name.clone());
    patched.metadata.resource_version = Some(cluster.next_resource_version());
    cluster.nodes.insert(name, patched.clone());
    json_response(StatusCode::OK, &patched)
}

fn contains_array(value: &Value) -> bool {
    match value {
        Value::Array(_) => true,
        Value::Object(map) => map.values().any(contains_array),
        _ => false,
    }
}

/// RFC 7386 JSON merge patch.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                target_map.remove(key);
            } else {
                merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_replaces_lists_and_removes_nulls() {
        let mut target = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        merge_patch(&mut target, &json!({"a": {"c": [3], "e": true}, "d": null}));
        assert_eq!(target, json!({"a": {"b": 1, "c": [3], "e": true}}));
    }
}
