//! API discovery, as clients such as kubectl find their way: `/version`, `/api`, `/apis`,
//! and each group version's resource list. Only what the fake serves is listed, with the
//! verbs it serves; `pods/eviction` is there (group `policy`, version `v1`), which is how
//! `kubectl drain` decides to evict rather than delete. Legacy (unaggregated) discovery: a
//! client that asks for the aggregated form gets this one and falls back to it, as it does
//! with any API server that does not aggregate.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::status::status_body;

/// The Kubernetes version the fake answers as.
pub(super) const SERVER_VERSION: (&str, &str) = ("1", "32");

pub(super) async fn version() -> Response {
    let (major, minor) = SERVER_VERSION;
    axum::Json(json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.4",
        "compiler": "gc",
        "platform": "linux/amd64",
    }))
    .into_response()
}

pub(super) fn core_versions(address: &str) -> Response {
    axum::Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }))
    .into_response()
}

/// (group, version, resources as (name, singular, namespaced, kind, verbs, short names)).
type Resource = (
    &'static str,
    &'static str,
    bool,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

const GROUPS: [(&str, &str); 3] = [
    ("apps", "v1"),
    ("coordination.k8s.io", "v1"),
    ("policy", "v1"),
];

fn resources(group: &str, version: &str) -> Option<Vec<Value>> {
    let list: &[Resource] = match (group, version) {
        ("", "v1") => &[
            (
                "events",
                "event",
                true,
                "Event",
                &["create", "list"],
                &["ev"],
            ),
            (
                "nodes",
                "node",
                false,
                "Node",
                &["get", "list", "patch"],
                &["no"],
            ),
            ("pods", "pod", true, "Pod", &["get", "list"], &["po"]),
            ("pods/eviction", "", true, "Eviction", &["create"], &[]),
        ],
        ("apps", "v1") => &[
            (
                "daemonsets",
                "daemonset",
                true,
                "DaemonSet",
                &["get"],
                &["ds"],
            ),
            (
                "replicasets",
                "replicaset",
                true,
                "ReplicaSet",
                &["get"],
                &["rs"],
            ),
            (
                "statefulsets",
                "statefulset",
                true,
                "StatefulSet",
                &["get"],
                &["sts"],
            ),
        ],
        ("coordination.k8s.io", "v1") => &[(
            "leases",
            "lease",
            true,
            "Lease",
            &["create", "get", "list", "patch", "update"],
            &[],
        )],
        ("policy", "v1") => &[(
            "poddisruptionbudgets",
            "poddisruptionbudget",
            true,
            "PodDisruptionBudget",
            &["get", "list"],
            &["pdb"],
        )],
        _ => return None,
    };
    Some(
        list.iter()
            .map(|(name, singular, namespaced, kind, verbs, short)| {
                let mut resource = json!({
                    "name": name,
                    "singularName": singular,
                    "namespaced": namespaced,
                    "kind": kind,
                    "verbs": verbs,
                });
                if !short.is_empty() {
                    resource["shortNames"] = json!(short);
                }
                if *name == "pods" {
                    resource["categories"] = json!(["all"]);
                }
                if *name == "pods/eviction" {
                    resource["group"] = json!("policy");
                    resource["version"] = json!("v1");
                }
                resource
            })
            .collect(),
    )
}

fn resource_list(group: &str, version: &str) -> Response {
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    match resources(group, version) {
        Some(resources) => axum::Json(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }))
        .into_response(),
        None => status_body(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            None,
        ),
    }
}

pub(super) async fn core_resources() -> Response {
    resource_list("", "v1")
}

pub(super) async fn group_resources(Path((group, version)): Path<(String, String)>) -> Response {
    resource_list(&group, &version)
}

pub(super) async fn groups() -> Response {
    let groups: Vec<Value> = GROUPS
        .iter()
        .map(|(name, version)| {
            let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
            json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        .into_response()
}

pub(super) async fn group(Path(group): Path<String>) -> Response {
    match GROUPS.iter().find(|(name, _)| *name == group) {
        Some((name, version)) => {
            let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
            axum::Json(json!({
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": name,
                "versions": [gv.clone()],
                "preferredVersion": gv,
            }))
            .into_response()
        }
        None => status_body(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            None,
        ),
    }
}
