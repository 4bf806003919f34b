//! `GET /api/v1/nodes` (no selectors; paged) and `GET`/`PATCH /api/v1/nodes/{name}`: merge patch
//! with the `resourceVersion` precondition, strategic merge patch where it means the same
//! (lists only at `spec.taints`, which is atomic), the API server's validation of taints,
//! labels and annotations, and unknown fields dropped with a warning.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::paging::Paging;
use super::status::{
    FieldError, FieldValidation, bad_request, conflict, invalid, json_response, not_found, quoted,
    status_body, unknown_fields, with_warnings,
};
use super::table::{self, NODE_COLUMNS};
use super::validation::{self, NODE_SPEC_FIELDS};
use super::{FakeKube, Shared, lock};

impl FakeKube {
    /// Adds a Ready node with an AWS providerID (`aws:///us-east-1a/i-…`), as its kubelet
    /// registers it (an `ip-10-0-1-23…` name gives InternalIP 10.0.1.23).
    pub fn add_node(&self, name: &str) -> Node {
        let mut cluster = self.cluster();
        let uid = cluster.next_uid();
        let resource_version = cluster.next_resource_version();
        let instance_id = format!("i-{:017x}", cluster.uid_counter);
        let now = Some(Time(Timestamp::now()));
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                uid: Some(uid),
                resource_version: Some(resource_version),
                creation_timestamp: now.clone(),
                labels: Some(BTreeMap::from([
                    ("kubernetes.io/hostname".to_owned(), name.to_owned()),
                    ("kubernetes.io/os".to_owned(), "linux".to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                provider_id: Some(format!("aws:///us-east-1a/{instance_id}")),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".to_owned(),
                    status: "True".to_owned(),
                    reason: Some("KubeletReady".to_owned()),
                    message: Some("kubelet is posting ready status".to_owned()),
                    last_heartbeat_time: now.clone(),
                    last_transition_time: now,
                }]),
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".to_owned(),
                        address: internal_ip(name, cluster.uid_counter),
                    },
                    NodeAddress {
                        type_: "Hostname".to_owned(),
                        address: name.to_owned(),
                    },
                ]),
                node_info: Some(NodeSystemInfo {
                    kubelet_version: "v1.32.3-eks-473151a".to_owned(),
                    kube_proxy_version: "v1.32.3-eks-473151a".to_owned(),
                    os_image: "Amazon Linux 2023.7.20250414".to_owned(),
                    kernel_version: "6.1.132-147.221.amzn2023.x86_64".to_owned(),
                    container_runtime_version: "containerd://1.7.27".to_owned(),
                    operating_system: "linux".to_owned(),
                    architecture: "amd64".to_owned(),
                    ..NodeSystemInfo::default()
                }),
                ..NodeStatus::default()
            }),
        };
        cluster.nodes.insert(name.to_owned(), node.clone());
        cluster.heartbeats.insert(name.to_owned(), Instant::now());
        node
    }

    /// Adds a Ready node running `instance_id` with this much allocatable CPU and memory
    /// (Kubernetes quantities), as the kubelet of a new instance registers it.
    pub fn add_instance_node(&self, name: &str, instance_id: &str, cpu: &str, memory: &str) {
        self.add_node(name);
        self.update_node(name, |node| {
            if let Some(spec) = node.spec.as_mut() {
                spec.provider_id = Some(format!("aws:///us-east-1a/{instance_id}"));
            }
            if let Some(status) = node.status.as_mut() {
                let resources = BTreeMap::from([
                    ("cpu".to_owned(), Quantity(cpu.to_owned())),
                    ("memory".to_owned(), Quantity(memory.to_owned())),
                    ("pods".to_owned(), Quantity("110".to_owned())),
                ]);
                status.capacity = Some(resources.clone());
                status.allocatable = Some(resources);
            }
        });
    }

    pub fn nodes(&self) -> Vec<Node> {
        self.cluster().nodes.values().cloned().collect()
    }

    /// Changes a node as another writer would (bumping its `resourceVersion`); returns whether
    /// it exists.
    pub fn update_node(&self, name: &str, change: impl FnOnce(&mut Node)) -> bool {
        let mut cluster = self.cluster();
        let resource_version = cluster.next_resource_version();
        let Some(node) = cluster.nodes.get_mut(name) else {
            return false;
        };
        change(node);
        node.metadata.resource_version = Some(resource_version);
        true
    }

    /// Cordons a node as `kubectl cordon` would; returns whether it exists.
    pub fn cordon(&self, name: &str) -> bool {
        self.update_node(name, |node| {
            node.spec
                .get_or_insert_with(NodeSpec::default)
                .unschedulable = Some(true);
        })
    }

    pub fn node(&self, name: &str) -> Option<Node> {
        self.cluster().nodes.get(name).cloned()
    }

    /// Deletes a node as `kubectl delete node` would; returns whether it existed.
    pub fn remove_node(&self, name: &str) -> bool {
        let mut cluster = self.cluster();
        cluster.heartbeats.remove(name);
        cluster.nodes.remove(name).is_some()
    }
}

/// `ip-10-0-1-23.ec2.internal` → `10.0.1.23`; other names get an address from `n`.
fn internal_ip(name: &str, n: u64) -> String {
    let parsed: Option<Vec<u8>> = name
        .strip_prefix("ip-")
        .and_then(|rest| rest.split('.').next())
        .map(|dashed| dashed.split('-').filter_map(|p| p.parse().ok()).collect());
    match parsed {
        Some(octets) if octets.len() == 4 => octets
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join("."),
        _ => format!("10.0.{}.{}", (n / 250) % 250, n % 250 + 2),
    }
}

pub(super) async fn list_nodes(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some((selector, value)) = query
        .iter()
        .find(|(key, value)| key.ends_with("Selector") && !value.is_empty())
    {
        return bad_request(&format!(
            "FakeKube does not model node list selectors ({selector}={value})"
        ));
    }
    let cluster = lock(&shared);
    let paging = match Paging::of(&query, cluster.resource_version, cluster.compacted_at) {
        Ok(paging) => paging,
        Err(refusal) => return refusal.response(),
    };
    let after = paging.after.clone();
    let nodes = match &after {
        Some(after) => cluster
            .nodes
            .range::<str, _>((Bound::Excluded(after.as_str()), Bound::Unbounded)),
        None => cluster.nodes.range::<str, _>(..),
    };
    let (items, metadata) = paging.cut(nodes, |(name, _)| (*name).clone(), false);
    if table::wants_table(&headers) {
        let rows = items
            .into_iter()
            .map(|(_, node)| table::node_row(node))
            .collect();
        return table::paged_response(&NODE_COLUMNS, rows, metadata);
    }
    let items: Vec<&Node> = items.into_iter().map(|(_, node)| node).collect();
    let list = json!({
        "apiVersion": "v1",
        "kind": "NodeList",
        "metadata": metadata,
        "items": items,
    });
    (StatusCode::OK, axum::Json(list)).into_response()
}

pub(super) async fn get_node(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let cluster = lock(&shared);
    match cluster.nodes.get(&name) {
        Some(node) if table::wants_table(&headers) => table::response(
            &NODE_COLUMNS,
            vec![table::node_row(node)],
            cluster.resource_version,
        ),
        Some(node) => json_response(StatusCode::OK, node),
        None => not_found("nodes", &name),
    }
}

/// The paths of the lists in a strategic merge patch that the fake cannot merge as the
/// real server would (it can only replace `spec.taints`, an atomic list), and its
/// `$`-directives.
fn unmodelled_strategic_parts(value: &Value, path: &str, found: &mut Vec<String>) {
    match value {
        Value::Array(_) if path != "spec.taints" => found.push(path.to_owned()),
        Value::Object(map) => {
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if key.starts_with('$') {
                    found.push(child_path);
                } else {
                    unmodelled_strategic_parts(child, &child_path, found);
                }
            }
        }
        _ => {}
    }
}

/// `PATCH`: the patched Node is checked as the API server checks an update.
pub(super) async fn patch_node(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(error) => return bad_request(&format!("error decoding patch: {error}")),
    };
    let mut unmodelled = Vec::new();
    if content_type == "application/strategic-merge-patch+json" {
        unmodelled_strategic_parts(&patch, "", &mut unmodelled);
    }
    let supported = matches!(
        content_type,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    );
    if !supported || !unmodelled.is_empty() {
        return status_body(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!(
                "FakeKube does not model patch type {content_type:?} with this body ({unmodelled:?})"
            ),
            None,
        );
    }
    let mut cluster = lock(&shared);
    let strict = cluster.rules.validation;
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
        return conflict("nodes", &name);
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
    if strict
        && let Some(error) =
            validation::type_error(&document, "spec", "NodeSpec", &NODE_SPEC_FIELDS)
    {
        return patch_invalid(&document, &error);
    }
    let mut patched: Node = match serde_json::from_value(document.clone()) {
        Ok(node) => node,
        Err(error) => return patch_invalid(&document, &format!("json: {error}")),
    };
    patched.metadata.name = Some(name.clone());
    if strict {
        let mut errors =
            validation::metadata_errors(document.get("metadata").unwrap_or(&Value::Null));
        let taints = patched
            .spec
            .as_ref()
            .and_then(|spec| spec.taints.clone())
            .unwrap_or_default();
        errors.extend(validation::taint_errors(&taints));
        if !errors.is_empty() {
            return invalid("", "Node", &name, &errors);
        }
    }
    let kept = serde_json::to_value(&patched).unwrap_or(Value::Null);
    let dropped = unknown_fields(&document, &kept);
    let directive = FieldValidation::of(query.as_deref());
    if directive == FieldValidation::Strict && !dropped.is_empty() {
        let listed: Vec<String> = dropped
            .iter()
            .map(|field| format!("unknown field {}", quoted(field)))
            .collect();
        return patch_invalid(
            &document,
            &format!("strict decoding error: {}", listed.join(", ")),
        );
    }
    patched.metadata.resource_version = Some(cluster.next_resource_version());
    cluster.nodes.insert(name, patched.clone());
    let warnings: Vec<String> = if directive == FieldValidation::Warn {
        dropped
            .iter()
            .map(|field| format!("unknown field {}", quoted(field)))
            .collect()
    } else {
        Vec::new()
    };
    with_warnings(json_response(StatusCode::OK, &patched), &warnings)
}

/// The patch handler's answer when the patched object does not decode:
/// ` "" is invalid: patch: Invalid value: "<the patched object>": <decoder error>` (422).
pub(super) fn patch_invalid(document: &Value, error: &str) -> Response {
    let printed = serde_json::to_string(document).unwrap_or_default();
    invalid("", "", "", &[FieldError::invalid("patch", &printed, error)])
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

    #[test]
    fn strategic_patches_may_only_replace_the_taint_list() {
        let mut found = Vec::new();
        unmodelled_strategic_parts(
            &json!({"spec": {"taints": [{"key": "k"}], "unschedulable": true}}),
            "",
            &mut found,
        );
        assert!(found.is_empty(), "{found:?}");
        unmodelled_strategic_parts(
            &json!({"status": {"conditions": []}, "$setElementOrder/x": []}),
            "",
            &mut found,
        );
        assert_eq!(found, ["$setElementOrder/x", "status.conditions"]);
    }
}
