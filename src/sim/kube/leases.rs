//! `coordination.k8s.io/v1` Leases: `GET` (one, or the namespace's list), `POST` (create), `PUT` (replace) and `PATCH`
//! (merge patch), with the API server's optimistic concurrency (a write that carries a
//! `resourceVersion` other than the stored one, or a create of an existing name, is a 409)
//! and its validation: JSON type errors in a create or replace are a 400 in the decoder's
//! words, in a patch a 422 from the patch handler; an invalid name, a non-positive
//! `leaseDurationSeconds`, malformed labels or annotations are a 422; unknown fields are
//! dropped with a `Warning`.

use axum::body::Bytes;
use std::collections::HashMap;

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::nodes::{merge_patch, patch_invalid};
use super::status::{
    FieldError, FieldValidation, bad_request, conflict, invalid, json_response, not_found, quoted,
    status_body, unknown_fields, with_warnings,
};
use super::validation::{self, LEASE_SPEC_FIELDS};
use super::{Cluster, Shared, lock};

const RESOURCE: &str = "leases.coordination.k8s.io";
const GROUP: &str = "coordination.k8s.io";

fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_owned(), name.to_owned())
}

pub(super) async fn get_lease(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    match lock(&shared).leases.get(&key(&namespace, &name)) {
        Some(lease) => json_response(StatusCode::OK, lease),
        None => not_found(RESOURCE, &name),
    }
}

/// The namespace's Leases, in name order (as the API server lists them); selectors are
/// not modelled and refused.
pub(super) async fn list_leases(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some((selector, value)) = query
        .iter()
        .find(|(key, value)| key.ends_with("Selector") && !value.is_empty())
    {
        return bad_request(&format!(
            "FakeKube does not model lease list selectors ({selector}={value})"
        ));
    }
    let cluster = lock(&shared);
    let items: Vec<&Lease> = cluster
        .leases
        .iter()
        .filter(|((lease_namespace, _), _)| *lease_namespace == namespace)
        .map(|(_, lease)| lease)
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "LeaseList",
            "metadata": {"resourceVersion": cluster.resource_version.to_string()},
            "items": items,
        }),
    )
}

/// A Lease body decoded as the API server decodes a create or replace: 400 on JSON type
/// errors, with the names of the unknown fields it dropped.
fn decode(body: &[u8], strict: bool) -> Result<(Lease, Value, Vec<String>), Box<Response>> {
    let sent: Value = serde_json::from_slice(body).map_err(|error| {
        Box::new(bad_request(&format!(
            "couldn't get version/kind; json parse error: {error}"
        )))
    })?;
    let cannot = |error: &str| {
        Box::new(bad_request(&format!(
            "Lease in version \"v1\" cannot be handled as a Lease: {error}"
        )))
    };
    if strict
        && let Some(error) = validation::type_error(&sent, "spec", "LeaseSpec", &LEASE_SPEC_FIELDS)
    {
        return Err(cannot(&error));
    }
    let lease: Lease =
        serde_json::from_value(sent.clone()).map_err(|error| cannot(&format!("json: {error}")))?;
    let kept = serde_json::to_value(&lease).unwrap_or(Value::Null);
    let dropped = unknown_fields(&sent, &kept);
    Ok((lease, sent, dropped))
}

/// `ValidateLease`: the name (on create), the spec, labels and annotations.
fn lease_errors(lease: &Value, check_name: bool) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = lease
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if check_name {
        for message in validation::subdomain_errors(name) {
            errors.push(FieldError::invalid("metadata.name", name, &message));
        }
    }
    errors.extend(validation::metadata_errors(
        lease.get("metadata").unwrap_or(&Value::Null),
    ));
    errors.extend(validation::lease_spec_errors(
        lease.get("spec").unwrap_or(&Value::Null),
    ));
    errors
}

/// The `Warning`s (or, with `?fieldValidation=Strict`, the 400) for dropped fields.
fn unknown_field_answer(
    query: Option<&str>,
    dropped: &[String],
) -> Result<Vec<String>, Box<Response>> {
    let listed: Vec<String> = dropped
        .iter()
        .map(|field| format!("unknown field {}", quoted(field)))
        .collect();
    match FieldValidation::of(query) {
        FieldValidation::Strict if !listed.is_empty() => Err(Box::new(bad_request(&format!(
            "strict decoding error: {}",
            listed.join(", ")
        )))),
        FieldValidation::Warn => Ok(listed),
        _ => Ok(Vec::new()),
    }
}

pub(super) async fn create_lease(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let mut cluster = lock(&shared);
    let strict = cluster.rules.validation;
    let (mut lease, sent, dropped) = match decode(&body, strict) {
        Ok(decoded) => decoded,
        Err(refusal) => return *refusal,
    };
    let warnings = match unknown_field_answer(query.as_deref(), &dropped) {
        Ok(warnings) => warnings,
        Err(refusal) => return *refusal,
    };
    let Some(name) = lease.metadata.name.clone().filter(|n| !n.is_empty()) else {
        return invalid(GROUP, "Lease", "", &[FieldError::required("metadata.name")]);
    };
    if strict {
        let errors = lease_errors(&sent, true);
        if !errors.is_empty() {
            return invalid(GROUP, "Lease", &name, &errors);
        }
    }
    if cluster.leases.contains_key(&key(&namespace, &name)) {
        return status_body(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{RESOURCE} \"{name}\" already exists"),
            Some(json!({"name": name, "group": GROUP, "kind": "leases"})),
        );
    }
    lease.metadata.namespace = Some(namespace.clone());
    lease.metadata.uid = Some(cluster.next_uid());
    lease.metadata.creation_timestamp = Some(Time(Timestamp::now()));
    lease.metadata.resource_version = Some(cluster.next_resource_version());
    cluster.leases.insert(key(&namespace, &name), lease.clone());
    with_warnings(json_response(StatusCode::CREATED, &lease), &warnings)
}

pub(super) async fn replace_lease(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let mut cluster = lock(&shared);
    let strict = cluster.rules.validation;
    let (lease, sent, dropped) = match decode(&body, strict) {
        Ok(decoded) => decoded,
        Err(refusal) => return *refusal,
    };
    let warnings = match unknown_field_answer(query.as_deref(), &dropped) {
        Ok(warnings) => warnings,
        Err(refusal) => return *refusal,
    };
    if lease.metadata.name.as_deref() != Some(name.as_str()) {
        return bad_request(&format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            lease.metadata.name.as_deref().unwrap_or_default()
        ));
    }
    if strict {
        let errors = lease_errors(&sent, false);
        if !errors.is_empty() {
            return invalid(GROUP, "Lease", &name, &errors);
        }
    }
    let wanted = lease.metadata.resource_version.clone();
    let stored = store(&mut cluster, &namespace, &name, wanted, lease);
    with_warnings(stored, &warnings)
}

pub(super) async fn patch_lease(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(error) => return bad_request(&format!("error decoding patch: {error}")),
    };
    let mut cluster = lock(&shared);
    let strict = cluster.rules.validation;
    let Some(current) = cluster.leases.get(&key(&namespace, &name)) else {
        return not_found(RESOURCE, &name);
    };
    let mut document = match serde_json::to_value(current) {
        Ok(document) => document,
        Err(error) => return bad_request(&format!("serializing lease {name}: {error}")),
    };
    let wanted = patch
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    merge_patch(&mut document, &patch);
    if strict
        && let Some(error) =
            validation::type_error(&document, "spec", "LeaseSpec", &LEASE_SPEC_FIELDS)
    {
        return patch_invalid(&document, &error);
    }
    let patched: Lease = match serde_json::from_value(document.clone()) {
        Ok(lease) => lease,
        Err(error) => return patch_invalid(&document, &format!("json: {error}")),
    };
    if strict {
        let errors = lease_errors(&document, false);
        if !errors.is_empty() {
            return invalid(GROUP, "Lease", &name, &errors);
        }
    }
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
        return not_found(RESOURCE, name);
    };
    if wanted_version
        .is_some_and(|wanted| Some(&wanted) != current.metadata.resource_version.as_ref())
    {
        return conflict(RESOURCE, name);
    }
    lease.metadata.namespace = Some(namespace.to_owned());
    lease.metadata.uid = current.metadata.uid.clone();
    lease.metadata.creation_timestamp = current.metadata.creation_timestamp.clone();
    lease.metadata.resource_version = Some(cluster.next_resource_version());
    cluster.leases.insert(key(namespace, name), lease.clone());
    json_response(StatusCode::OK, &lease)
}
