//! `GET` of the controllers the pods name as owners: DaemonSets (which `kubectl drain` reads
//! to tell a DaemonSet pod from an orphan), ReplicaSets and StatefulSets, built from what
//! the fake knows of them (name, uid, replicas, pod template).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::pod::OwnerKind;
use super::status::{json_response, not_found};
use super::{Cluster, Shared, WorkloadKey, lock};

impl Cluster {
    fn workload_object(&self, key: &WorkloadKey) -> Option<Value> {
        let workload = self.workloads.get(key)?;
        let (namespace, kind, name) = key;
        let wanted = match kind {
            OwnerKind::ReplicaSet => workload.replicas,
            _ => workload.members.len(),
        };
        let owned: Vec<_> = self
            .pods
            .values()
            .filter(|stored| stored.workload.as_ref() == Some(key))
            .collect();
        let ready = owned
            .iter()
            .filter(|stored| super::pod::is_ready(&stored.pod))
            .count();
        let labels = workload.template.labels();
        let selector = json!({"matchLabels": labels});
        let template = json!({
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
        });
        let status = match kind {
            OwnerKind::DaemonSet => json!({
                "currentNumberScheduled": owned.len(),
                "desiredNumberScheduled": wanted,
                "numberAvailable": ready,
                "numberMisscheduled": 0,
                "numberReady": ready,
                "observedGeneration": 1,
                "updatedNumberScheduled": owned.len(),
            }),
            _ => json!({
                "replicas": owned.len(),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "observedGeneration": 1,
            }),
        };
        let mut spec = json!({"selector": selector, "template": template});
        if *kind != OwnerKind::DaemonSet {
            spec["replicas"] = json!(wanted);
        }
        Some(json!({
            "apiVersion": "apps/v1",
            "kind": kind.as_str(),
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": workload.uid,
                "generation": 1,
                "resourceVersion": self.resource_version.to_string(),
                "creationTimestamp": workload.created,
            },
            "spec": spec,
            "status": status,
        }))
    }
}

fn get(
    shared: &Shared,
    kind: OwnerKind,
    resource: &str,
    namespace: String,
    name: String,
) -> Response {
    let cluster = lock(shared);
    match cluster.workload_object(&(namespace, kind, name.clone())) {
        Some(object) => json_response(StatusCode::OK, &object),
        None => not_found(resource, &name),
    }
}

pub(super) async fn get_daemon_set(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    get(
        &shared,
        OwnerKind::DaemonSet,
        "daemonsets.apps",
        namespace,
        name,
    )
}

pub(super) async fn get_replica_set(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    get(
        &shared,
        OwnerKind::ReplicaSet,
        "replicasets.apps",
        namespace,
        name,
    )
}

pub(super) async fn get_stateful_set(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    get(
        &shared,
        OwnerKind::StatefulSet,
        "statefulsets.apps",
        namespace,
        name,
    )
}
