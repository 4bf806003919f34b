//! `FakeKube`: a small, stateful Kubernetes API server over real HTTP, serving real JSON of
//! k8s-openapi types, so the kube client can run against it unchanged
//! (`kube::Config::new(url)`, no TLS, no auth).
//!
//! It serves: the node list, `GET`/`PATCH /api/v1/nodes/{name}` (merge patch with the `resourceVersion`
//! precondition; strategic merge patch only for bodies without lists), pod lists (all
//! namespaces or one, filtered by `spec.nodeName`), `GET` of one pod, `POST …/pods/{name}/eviction`
//! (policy/v1, with a simplified PodDisruptionBudget check), `POST …/events` (core/v1) and
//! `coordination.k8s.io/v1` Leases (`GET`, `POST`, `PUT`, merge `PATCH`, 409 on a stale
//! `resourceVersion` or an existing name), which spot-guard's agents coordinate through.
//! Every write bumps a cluster-wide `resourceVersion`. The handle injects faults and latency,
//! records every request, every eviction (with the grace period it asked for) and every event.
//!
//! What it does NOT model, so tests do not lean on it:
//! - no watch, no `PUT` except on Leases, no JSON patch, no server-side apply, no dry-run query parameter;
//! - no authentication, RBAC, admission webhooks or validation beyond JSON shape;
//! - no scheduler or controllers: an evicted pod is not rescheduled unless the test asked for
//!   a StatefulSet-like recreation (same name, new uid, on a node the test picks);
//! - no kubelet: an evicted pod gets `deletionTimestamp` and disappears after a configured
//!   delay (global or per pod, "never" possible), checked whenever the server is touched;
//! - PDB arithmetic is simplified: an eviction of a matching pod is refused while the number of
//!   matching pods already terminating is at least `max_unavailable`; readiness, `minAvailable`,
//!   percentages and a pod matching several budgets are not modelled;
//! - selectors: only the field selector `spec.nodeName=…`; any other field or label selector is
//!   answered 400 so a test cannot silently get unfiltered results.

mod events;
mod http;
mod leases;
mod nodes;
mod pod;
mod pods;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, NodeCondition, NodeSpec, NodeStatus, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use pod::FakePod;

/// How long an evicted pod lingers (with `deletionTimestamp` set) before it disappears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    After(Duration),
    Never,
}

/// One HTTP request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
}

/// What the server did with an eviction request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionOutcome {
    Allowed,
    BlockedByPdb,
    NotFound,
}

/// One eviction request as received (faults injected in front of it are not recorded here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictionRecord {
    pub namespace: String,
    pub name: String,
    /// `deleteOptions.gracePeriodSeconds` exactly as sent (camelCase, as the real server reads it).
    pub grace_period_seconds: Option<i64>,
    pub outcome: EvictionOutcome,
}

struct StoredPod {
    pod: Pod,
    template: FakePod,
    /// When the pod disappears after an eviction; `None` while not terminating or never.
    gone_at: Option<Instant>,
}

struct Pdb {
    namespace: String,
    name: String,
    match_labels: BTreeMap<String, String>,
    max_unavailable: u32,
}

struct Fault {
    method: String,
    path_prefix: String,
    remaining: usize,
    status: StatusCode,
}

struct Cluster {
    nodes: BTreeMap<String, Node>,
    pods: BTreeMap<(String, String), StoredPod>,
    pdbs: Vec<Pdb>,
    evictions: Vec<EvictionRecord>,
    events: Vec<Event>,
    /// By (namespace, name).
    leases: BTreeMap<(String, String), Lease>,
    requests: Vec<RequestRecord>,
    faults: Vec<Fault>,
    latency: Duration,
    termination: Termination,
    resource_version: u64,
    uid_counter: u64,
}

impl Cluster {
    fn next_resource_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn next_uid(&mut self) -> String {
        self.uid_counter += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uid_counter)
    }

    /// Plays the kubelet and the StatefulSet controller: removes pods whose termination delay
    /// has passed, recreating those that asked for it.
    fn reap(&mut self, now: Instant) {
        let due: Vec<(String, String)> = self
            .pods
            .iter()
            .filter(|(_, stored)| stored.gone_at.is_some_and(|at| at <= now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            let Some(stored) = self.pods.remove(&key) else {
                continue;
            };
            if let Some(node) = &stored.template.recreate_on {
                let mut template = stored.template.clone();
                template.node = node.clone();
                self.insert_pod(template);
            }
        }
    }

    fn insert_pod(&mut self, template: FakePod) -> Pod {
        let uid = self.next_uid();
        let resource_version = self.next_resource_version();
        let pod = template.build(uid, resource_version);
        let key = (template.namespace.clone(), template.name.clone());
        self.pods.insert(
            key,
            StoredPod {
                pod: pod.clone(),
                template,
                gone_at: None,
            },
        );
        pod
    }

    fn pods_on_node(&self, node: &str) -> Vec<Pod> {
        self.pods
            .values()
            .filter(|stored| pod_node(&stored.pod) == Some(node))
            .map(|stored| stored.pod.clone())
            .collect()
    }

    fn take_fault(&mut self, method: &str, path: &str) -> Option<StatusCode> {
        let fault = self.faults.iter_mut().find(|fault| {
            fault.remaining > 0 && fault.method == method && path.starts_with(&fault.path_prefix)
        })?;
        fault.remaining -= 1;
        Some(fault.status)
    }
}

type Shared = Arc<Mutex<Cluster>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Cluster> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Handle to a running fake API server; dropping it stops the server.
pub struct FakeKube {
    url: String,
    shared: Shared,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl FakeKube {
    /// Binds 127.0.0.1 on an ephemeral port and serves until the handle is dropped.
    pub async fn start() -> std::io::Result<FakeKube> {
        let shared: Shared = Arc::new(Mutex::new(Cluster {
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            pdbs: Vec::new(),
            evictions: Vec::new(),
            events: Vec::new(),
            leases: BTreeMap::new(),
            requests: Vec::new(),
            faults: Vec::new(),
            latency: Duration::ZERO,
            termination: Termination::After(Duration::ZERO),
            resource_version: 1000,
            uid_counter: 0,
        }));
        let app = http::router(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(error) = server.await {
                tracing::error!(%error, "fake Kubernetes API server stopped");
            }
        });
        Ok(FakeKube {
            url,
            shared,
            stop: Some(stop),
            task,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Stops the server (dropping the handle does the same).
    pub fn shutdown(self) {}

    fn cluster(&self) -> MutexGuard<'_, Cluster> {
        let mut cluster = lock(&self.shared);
        cluster.reap(Instant::now());
        cluster
    }

    /// Adds a Ready node with an AWS providerID (`aws:///us-east-1a/i-…`).
    pub fn add_node(&self, name: &str) -> Node {
        let mut cluster = self.cluster();
        let uid = cluster.next_uid();
        let resource_version = cluster.next_resource_version();
        let instance_id = format!("i-{:017x}", cluster.uid_counter);
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                uid: Some(uid),
                resource_version: Some(resource_version),
                creation_timestamp: Some(Time(Timestamp::now())),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/hostname".to_owned(),
                    name.to_owned(),
                )])),
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
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
        };
        cluster.nodes.insert(name.to_owned(), node.clone());
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

    pub fn node(&self, name: &str) -> Option<Node> {
        self.cluster().nodes.get(name).cloned()
    }

    /// Deletes a node as `kubectl delete node` would; returns whether it existed.
    pub fn remove_node(&self, name: &str) -> bool {
        self.cluster().nodes.remove(name).is_some()
    }

    /// Adds (or replaces) a pod and returns it as the server stores it.
    pub fn add_pod(&self, pod: FakePod) -> Pod {
        self.cluster().insert_pod(pod)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.cluster()
            .pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|stored| stored.pod.clone())
    }

    pub fn pods_on_node(&self, node: &str) -> Vec<Pod> {
        self.cluster().pods_on_node(node)
    }

    /// Removes a pod at once, as if its deletion had completed; returns whether it existed.
    pub fn remove_pod(&self, namespace: &str, name: &str) -> bool {
        self.cluster()
            .pods
            .remove(&(namespace.to_owned(), name.to_owned()))
            .is_some()
    }

    /// Server-wide delay between an eviction and the pod's disappearance (default: at once).
    pub fn set_termination(&self, termination: Termination) {
        self.cluster().termination = termination;
    }

    pub fn add_pdb(
        &self,
        namespace: &str,
        name: &str,
        match_labels: &[(&str, &str)],
        max_unavailable: u32,
    ) {
        self.cluster().pdbs.push(Pdb {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            match_labels: match_labels
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            max_unavailable,
        });
    }

    /// Returns whether the budget exists.
    pub fn set_pdb_max_unavailable(
        &self,
        namespace: &str,
        name: &str,
        max_unavailable: u32,
    ) -> bool {
        let mut cluster = self.cluster();
        let pdb = cluster
            .pdbs
            .iter_mut()
            .find(|pdb| pdb.namespace == namespace && pdb.name == name);
        match pdb {
            Some(pdb) => {
                pdb.max_unavailable = max_unavailable;
                true
            }
            None => false,
        }
    }

    /// Delay added before answering every request.
    pub fn set_latency(&self, latency: Duration) {
        self.cluster().latency = latency;
    }

    /// The next `count` requests with `method` whose path starts with `path_prefix` are answered
    /// `status` (a `Status` JSON body) without touching the state.
    pub fn fail_next(&self, method: &str, path_prefix: &str, count: usize, status: u16) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.cluster().faults.push(Fault {
            method: method.to_ascii_uppercase(),
            path_prefix: path_prefix.to_owned(),
            remaining: count,
            status,
        });
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.cluster().requests.clone()
    }

    pub fn evictions(&self) -> Vec<EvictionRecord> {
        self.cluster().evictions.clone()
    }

    pub fn events(&self) -> Vec<Event> {
        self.cluster().events.clone()
    }

    pub fn lease(&self, namespace: &str, name: &str) -> Option<Lease> {
        self.cluster()
            .leases
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every Lease, ordered by namespace and name.
    pub fn leases(&self) -> Vec<Lease> {
        self.cluster().leases.values().cloned().collect()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown waits for idle keep-alive connections; nothing needs them any more.
        self.task.abort();
    }
}

fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}
