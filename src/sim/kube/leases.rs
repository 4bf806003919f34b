//! `coordination.k8s.io/v1` Leases: `GET`, `POST` (create), `PUT` (replace) and `PATCH`
//! (merge patch), with the API server's optimistic concurrency: a write that carries a
//! `resourceVersion` other than the stored one, or a create of an existing name, is a 409.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::http::{json_response, not_found, status_body};
use super::nodes::merge_patch;
use super::{Cluster, Shared, lock};

fn bad_request(message: String) -> Response {
    status_body(StatusCode::BAD_REQUEST, "BadRequest", &message, None)
}

fn conflict(name: &str) -> Response {
    status_body(
        StatusCode::CONFLICT,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
        Some(json!({"name": name, "group": "coordination.k8s.io", "kind": "leases"})),
    )
}

fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_owned(), name.to_owned())
}

pub(super) async fn get_lease(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    match lock(&shared).leases.get(&key(&namespace, &name)) {
        Some(lease) => json_response(StatusCode::OK, lease),
        None => not_found("leases.coordination.k8s.io", &name),
    }
}

pub(super) async fn create_lease(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    body: Bytes,
) -> Response {
    let mut lease: Lease = match serde_json::from_slice(&body) {
        Ok(lease) => lease,
        Err(error) => {
            return bad_request(format!(
                "body is not a coordination.k8s.io/v1 Lease: {error}"
            ));
        }
    };
    let Some(name) = lease.metadata.name.clone().filter(|n| !n.is_empty()) else {
        return bad_request("Lease.metadata.name is required".to_owned());
    };
    let mut cluster = lock(&shared);
    if cluster.leases.contains_key(&key(&namespace, &name)) {
        return status_body(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("leases.coordination.k8s.io \"{name}\" already exists"),
            Some(json!({"name": name, "group": "coordination.k8s.io", "kind": "leases"})),
        );
    }
    lease.metadata.namespace = Some(namespace.clone());
    lease.metadata.uid = Some(cluster.next_uid());
    lease.metadata.creation_timestamp = Some(Time(Timestamp::now()));
    lease.metadata.resource_version = Some(cluster.next_resource_version());
    cluster.leases.insert(key(&namespace, &name), lease.clone());
    json_response(StatusCode::CREATED, &lease)
}

pub(super) async fn replace_lease(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let lease: Lease = match serde_json::from_slice(&body) {
        Ok(lease) => lease,
        Err(error) => {
            return bad_request(format!(
                "body is not a coordination.k8s.io/v1 Lease: {error}"
            ));
        }
    };
    if lease.metadata.name.as_deref() != Some(name.as_str()) {
        return bad_request(format!(
            "the name of the object ({:?}) does not match the name on the URL ({name:?})",
            lease.metadata.name
        ));
    }
    let wanted = lease.metadata.resource_version.clone();
    store(&mut lock(&shared), &namespace, &name, wanted, lease)
}

pub(super) async fn patch_lease(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(error) => return bad_request(format!("patch body is not JSON: {error}")),
    };
    let mut cluster = lock(&shared);
    let Some(current) = cluster.leases.get(&key(&namespace, &name)) else {
        return not_found("leases.coordination.k8s.io", &name);
    };
    let mut document = match serde_json::to_value(current) {
        Ok(document) => document,
        Err(error) => return bad_request(format!("serializing lease {name}: {error}")),
    };
    let wanted = patch
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    merge_patch(&mut document, &patch);
    let patched: Lease = match serde_json::from_value(document) {
        Ok(lease) => lease,
        Err(error) => {
            return bad_request(format!(
                "patched lease {name} is not a valid Lease: {error}"
            ));
        }
    };
    store(&mut cluster, &namespace, &name, wanted, patched)
}

/// Replaces the stored lease, refusing a write computed from another version.
fn store(
    cluster: &mut Cluster,
    namespace: &str,
    name: &str,
    wanted_version: Option<String>,
    mut lease: Lease,
) -> Response {
    let Some(current) = cluster.leases.get(&key(namespace, name)) else {
        return not_found("leases.coordination.k8s.io", name);
    };
    if wanted_version
        .is_some_and(|wanted| Some(&wanted) != current.metadata.resource_version.as_ref())
    {
        return conflict(name);
    }
    lease.metadata.namespace = Some(namespace.to_owned());
    lease.metadata.uid = current.metadata.uid.clone();
    lease.metadata.creation_timestamp = current.metadata.creation_timestamp.clone();
    lease.metadata.resource_version = Some(cluster.next_resource_version());
    cluster.leases.insert(key(namespace, name), lease.clone());
    json_response(StatusCode::OK, &lease)
}
