//! Server-side printing: the `meta.k8s.io/v1` `Table` the API server answers when a client
//! asks for one (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`, as `kubectl get`
//! does), with the columns and cells of `pkg/printers/internalversion` for nodes, pods and
//! PodDisruptionBudgets. Each row carries the object's metadata
//! (`PartialObjectMetadata`, `includeObject=Metadata`, the default), from which kubectl
//! takes the namespace of `-A`.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// Whether the client asked for a Table (it may also accept plain JSON after it).
pub(super) fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .and_then(|accept| accept.split(',').next())
        .is_some_and(|first| first.contains("as=Table"))
}

/// One column: name, type, and whether only `-o wide` shows it (priority 1).
pub(super) struct Column {
    pub(super) name: &'static str,
    pub(super) description: &'static str,
    pub(super) wide: bool,
}

const fn column(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        description,
        wide: false,
    }
}

const fn wide(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        description,
        wide: true,
    }
}

/// One printed object: its cells and its metadata.
pub(super) struct Row {
    pub(super) cells: Vec<Value>,
    pub(super) metadata: ObjectMeta,
}

pub(super) fn response(columns: &[Column], rows: Vec<Row>, resource_version: u64) -> Response {
    paged_response(
        columns,
        rows,
        json!({"resourceVersion": resource_version.to_string()}),
    )
}

/// A `Table` with the list metadata of a page (`continue` when more rows remain).
pub(super) fn paged_response(columns: &[Column], rows: Vec<Row>, metadata: Value) -> Response {
    let definitions: Vec<Value> = columns
        .iter()
        .enumerate()
        .map(|(index, column)| {
            let mut definition = json!({
                "name": column.name,
                "type": "string",
                "format": "",
                "description": column.description,
                "priority": i32::from(column.wide),
            });
            if index == 0 {
                definition["format"] = json!("name");
            }
            definition
        })
        .collect();
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|row| {
            json!({
                "cells": row.cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": row.metadata,
                },
            })
        })
        .collect();
    let table = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    });
    (StatusCode::OK, axum::Json(table)).into_response()
}

/// `duration.HumanDuration` of the time since `time` (`translateTimestampSince`).
pub(super) fn age(time: Option<&Time>) -> String {
    let Some(Time(then)) = time else {
        return "<unknown>".to_owned();
    };
    let seconds = Timestamp::now().as_second() - then.as_second();
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    let seconds = seconds.max(0);
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    format!("{}d", hours / 24)
}

pub(super) const NODE_COLUMNS: [Column; 10] = [
    column("Name", "Name must be unique within a namespace."),
    column("Status", "The status of the node"),
    column("Roles", "The roles of the node"),
    column(
        "Age",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    ),
    column("Version", "Kubelet Version reported by the node."),
    wide("Internal-IP", "List of addresses reachable to the node."),
    wide("External-IP", "List of addresses reachable to the node."),
    wide(
        "OS-Image",
        "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
    ),
    wide(
        "Kernel-Version",
        "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
    ),
    wide(
        "Container-Runtime",
        "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
    ),
];

/// `printNode`.
pub(super) fn node_row(node: &Node) -> Row {
    let status = node.status.clone().unwrap_or_default();
    let mut state: Vec<String> = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.type_ == "Ready")
        .map(|c| {
            if c.status == "True" {
                "Ready".to_owned()
            } else {
                "NotReady".to_owned()
            }
        })
        .collect();
    if state.is_empty() {
        state.push("Unknown".to_owned());
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        state.push("SchedulingDisabled".to_owned());
    }
    let mut roles: Vec<String> = node
        .metadata
        .labels
        .iter()
        .flatten()
        .filter_map(|(key, value)| {
            key.strip_prefix("node-role.kubernetes.io/")
                .filter(|role| !role.is_empty())
                .map(str::to_owned)
                .or_else(|| {
                    (key == "kubernetes.io/role" && !value.is_empty()).then(|| value.clone())
                })
        })
        .collect();
    roles.sort();
    roles.dedup();
    let address = |kind: &str| {
        status
            .addresses
            .iter()
            .flatten()
            .find(|a| a.type_ == kind)
            .map_or_else(|| "<none>".to_owned(), |a| a.address.clone())
    };
    let info = status.node_info.clone().unwrap_or_default();
    let known = |value: String| {
        if value.is_empty() {
            "<unknown>".to_owned()
        } else {
            value
        }
    };
    Row {
        cells: vec![
            json!(node.metadata.name.clone().unwrap_or_default()),
            json!(state.join(",")),
            json!(if roles.is_empty() {
                "<none>".to_owned()
            } else {
                roles.join(",")
            }),
            json!(age(node.metadata.creation_timestamp.as_ref())),
            json!(info.kubelet_version),
            json!(address("InternalIP")),
            json!(address("ExternalIP")),
            json!(known(info.os_image)),
            json!(known(info.kernel_version)),
            json!(known(info.container_runtime_version)),
        ],
        metadata: node.metadata.clone(),
    }
}

pub(super) const POD_COLUMNS: [Column; 9] = [
    column("Name", "Name must be unique within a namespace."),
    column(
        "Ready",
        "The aggregate readiness state of this pod for accepting traffic.",
    ),
    column(
        "Status",
        "The aggregate status of the containers in this pod.",
    ),
    column(
        "Restarts",
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
    ),
    column(
        "Age",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    ),
    wide("IP", "podIP address allocated to the pod."),
    wide(
        "Node",
        "NodeName indicates in which node this pod is scheduled.",
    ),
    wide(
        "Nominated Node",
        "nominatedNodeName is set only when this pod preempts other pods on the node.",
    ),
    wide(
        "Readiness Gates",
        "If specified, all readiness gates will be evaluated for pod readiness.",
    ),
];

/// `printPod`, for the states the fake's pods take.
pub(super) fn pod_row(pod: &Pod) -> Row {
    let status = pod.status.clone().unwrap_or_default();
    let containers = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    let mut reason = status.phase.clone().unwrap_or_default();
    let mut ready = 0;
    let mut restarts = 0;
    for container in status.container_statuses.iter().flatten().rev() {
        restarts += container.restart_count;
        let state = container.state.clone().unwrap_or_default();
        if let Some(waiting) = state.waiting.and_then(|w| w.reason) {
            reason = waiting;
        } else if let Some(terminated) = state.terminated.and_then(|t| t.reason) {
            reason = terminated;
        } else if container.ready && state.running.is_some() {
            ready += 1;
        }
    }
    let terminal = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    if pod.metadata.deletion_timestamp.is_some() && !terminal {
        reason = "Terminating".to_owned();
    }
    let or_none = |value: Option<String>| {
        value
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "<none>".to_owned())
    };
    Row {
        cells: vec![
            json!(pod.metadata.name.clone().unwrap_or_default()),
            json!(format!("{ready}/{containers}")),
            json!(reason),
            json!(restarts.to_string()),
            json!(age(pod.metadata.creation_timestamp.as_ref())),
            json!(or_none(status.pod_ip.clone())),
            json!(or_none(pod.spec.as_ref().and_then(|s| s.node_name.clone()))),
            json!(or_none(status.nominated_node_name.clone())),
            json!("<none>"),
        ],
        metadata: pod.metadata.clone(),
    }
}

pub(super) const PDB_COLUMNS: [Column; 5] = [
    column("Name", "Name must be unique within a namespace."),
    column(
        "Min Available",
        "The minimum number of pods that must be available simultaneously.  This can be either an integer or a string specifying a percentage, e.g. \"28%\".",
    ),
    column(
        "Max Unavailable",
        "The maximum number of pods that may be unavailable simultaneously.  This can be either an integer or a string specifying a percentage, e.g. \"28%\".",
    ),
    column(
        "Allowed Disruptions",
        "Number of pod disruptions that are currently allowed.",
    ),
    column(
        "Age",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let ago = |seconds: i64| {
            let then = Timestamp::now()
                .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
                .expect("in range");
            age(Some(&Time(then)))
        };
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(150), "2m30s");
        assert_eq!(ago(3600 * 3), "3h");
        assert_eq!(ago(86400 * 3), "3d");
    }
}
