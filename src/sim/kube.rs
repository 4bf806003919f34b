//! `FakeKube`: a small, stateful Kubernetes API server over real HTTP, serving real JSON of
//! k8s-openapi types, that follows the real API server's rules wherever spot-guard (or
//! `kubectl`) can notice them. The kube client runs against it unchanged
//! (`kube::Config::new(url)`, no TLS, no auth), and so does `kubectl` v1.32
//! (`tests/kubectl.rs`: `get`, `cordon`, `uncordon`, `taint`, `drain`).
//!
//! # What it serves
//!
//! - Nodes: list, `GET`, `PATCH` as JSON merge patch (with the `resourceVersion`
//!   precondition) or as strategic merge patch where that means the same (see below).
//! - Pods: lists of all namespaces or one (filtered by `spec.nodeName`), `GET` of one, and
//!   `POST …/pods/{name}/eviction` (policy/v1, `EvictionREST.Create`'s order of checks).
//! - `policy/v1` PodDisruptionBudgets: `GET`, lists and watches, status included; `GET` of the
//!   DaemonSets, ReplicaSets and StatefulSets that own pods (`kubectl drain` reads each
//!   DaemonSet); core/v1 Events (`POST`, list); `coordination.k8s.io/v1` Leases (`GET`,
//!   `POST`, `PUT`, merge `PATCH`; 409 on a stale `resourceVersion` or an existing name).
//! - Lists in pages (`limit`, `continue`) as the API server cuts them (see `paging`).
//! - Discovery as clients need it: `/version`, `/api`, `/apis`, `/apis/{group}`, and each
//!   group version's resource list (listing `pods/eviction` in group `policy`, which is how
//!   `kubectl drain` chooses eviction over deletion); server-side printing: a
//!   `meta.k8s.io/v1` `Table` with the real server's columns and cells for nodes, pods and
//!   budgets when the client asks for one (`Accept: …;as=Table`, as `kubectl get` does).
//!
//! Every write bumps a cluster-wide `resourceVersion`. The handle injects faults and
//! latency, and records every request, every eviction (with the grace period it asked for)
//! and every event.
//!
//! # What it models (each switchable per test; strict by default)
//!
//! - **Graceful termination** ([`FakeKube::set_termination`]): an evicted pod gets
//!   `deletionTimestamp` (now + its grace period), `deletionGracePeriodSeconds` and the
//!   `DisruptionTarget` condition, and is gone once the grace period has passed, as when its
//!   process ignores SIGTERM. The grace period is the Eviction's
//!   `deleteOptions.gracePeriodSeconds` when given, else the pod's
//!   `terminationGracePeriodSeconds` (which the API server defaults to 30 s); 0 (gone at once)
//!   for a pod never scheduled or already finished; a later eviction may only shorten it.
//!   [`FakePod::new`] writes `terminationGracePeriodSeconds: 1` into its pods
//!   ([`TEST_GRACE_PERIOD_SECONDS`]), as a manifest may, so suites stay fast; tests set
//!   other values on the pods they create. [`Termination::After`] and [`Termination::Never`]
//!   override the delay, server-wide or per pod ([`FakePod::terminating`]).
//! - **Controllers and a scheduler** ([`FakeKube::set_controllers`],
//!   [`FakeKube::set_pod_startup`]): a ReplicaSet replaces a pod that is terminating or gone
//!   at once with a new Pending pod (`<replicaset>-xxxxx`); a StatefulSet member comes back
//!   with the same name once the old one is gone; a DaemonSet pod comes back on its node. The
//!   scheduler binds a Pending pod to a Ready node that is schedulable (not cordoned, unless
//!   the pod tolerates it), whose `NoSchedule`/`NoExecute` taints the pod tolerates, with
//!   room for its CPU and memory requests (when the node has allocatable), preferring the node
//!   with the fewest pods. With nowhere to go the pod stays Pending (`PodScheduled=False`,
//!   `Unschedulable`, with the scheduler's "0/N nodes are available" message). A bound pod is
//!   Running and Ready after the pod start-up delay (200 ms by default).
//! - **PodDisruptionBudgets as the disruption controller computes them**
//!   ([`FakeKube::set_pdb_counts_replicas`]): `minAvailable` or `maxUnavailable`, integers or
//!   percentages (rounded up); expected pods = the replicas of the matching pods' controllers
//!   (the matching pods themselves for an integer `minAvailable`); healthy = Ready and not
//!   terminating; `disruptionsAllowed = healthy − desiredHealthy`, at least 0, and 0 when a
//!   matching pod's controller has no scale (a DaemonSet's, a Node's mirror). An eviction is
//!   refused with the API server's 429 ("Cannot evict pod as it would violate the pod's
//!   disruption budget.", cause "The disruption budget … needs … healthy pods and has …
//!   currently") while it is 0, so a budget frees only once a replacement is Ready
//!   somewhere. As in the API server, pods Pending, finished or already terminating are
//!   evicted without a budget check, a pod that is not Ready goes when its budget is
//!   otherwise met, and a pod under two budgets is a 500.
//! - **Kubelet heartbeats** ([`FakeKube::set_node_heartbeat`], every second by default):
//!   each Ready node's status is written (`lastHeartbeatTime`, a new `resourceVersion`), so a
//!   client that writes a Node with a `resourceVersion` read earlier meets the real 409.
//! - **Validation** ([`FakeKube::set_validation`]), with the API server's codes, reasons and
//!   messages (`field.Error` wording): a Node write with a malformed taint (effect, key, a
//!   value over 63 characters, two with one key and effect) or malformed labels or
//!   annotations is a 422 `Invalid`; an Eviction whose `metadata.name` is not the pod in
//!   the URL, or whose namespace differs, is a 400; a Lease created or replaced with fields
//!   of the wrong JSON type (or a `MicroTime` without six fractional digits) is a 400 in the
//!   decoder's words, and the same made through a merge patch is the patch handler's 422; an
//!   invalid Lease name or a non-positive `leaseDurationSeconds` is a 422; an Event whose
//!   involved object's namespace does not match its own is a 422. Unknown fields are dropped,
//!   each named in a `Warning` header (field validation `Warn`, the server's default);
//!   `?fieldValidation=Strict` refuses them (kubectl taint sends it).
//! - **Pods already terminating when a drain starts**: [`FakePod::already_terminating`].
//!
//! # What it does NOT model, and why each leniency remains
//!
//! - No watch except on PodDisruptionBudgets (each status change is a write with a new
//!   `resourceVersion`, seen by a watch within 5 ms; no bookmarks, no 410 Gone), no
//!   `DELETE`, no `PUT` except on Leases, no JSON patch, no server-side apply, no `dryRun`,
//!   no creation of nodes, pods or budgets over HTTP (tests add them through the handle):
//!   neither spot-guard nor the `kubectl` commands the tests run send any of these
//!   (`kubectl drain --disable-eviction` would delete, and is not used).
//! - Strategic merge patch only where it equals a merge patch: lists only at `spec.taints`
//!   (atomic in the Node schema), no `$`-directives. Anything else is a 415, so a test never
//!   silently gets merge-patch semantics where the real server merges list items by key.
//! - JSON only: a client asking for protobuf gets JSON, as from a server or resource that
//!   lacks protobuf. No aggregated discovery (kubectl falls back to the legacy form, as with
//!   any server that does not aggregate) and no OpenAPI documents (`kubectl apply` and
//!   `explain` would need them; the commands tested do not ask).
//! - No authentication, RBAC, admission webhooks, quotas or Namespace objects (every
//!   namespace exists): tests/chart.rs checks the ClusterRole against the requests instead.
//! - Validation covers the fields clients here write (taints, labels, annotations, object
//!   names of Leases and Events, Lease spec, Eviction identity, Event namespaces); the rest
//!   of an object is only type-checked by decoding it, with serde's wording where the Go
//!   decoder's is not reproduced.
//! - Controllers, kubelets and the scheduler act when the server is next touched, at once:
//!   the real ones lag by milliseconds, and the budget's `observedGeneration` lag (a 429
//!   "still being processed") is not modelled. Heartbeats likewise: one write however many
//!   beats were missed, which a client cannot tell from a kubelet writing in the background.
//! - No Deployments (a ReplicaSet's replicas are the pods added with it), no Jobs beyond
//!   owning finished pods, no DaemonSet pods for nodes added later, no preemption, no
//!   affinity beyond a StatefulSet member pinned with [`FakePod::recreated_on`], no
//!   topology spread, no resources but CPU and memory: enough for where evicted pods go.
//! - A terminating pod takes its whole grace period (a process that exits at SIGTERM leaves
//!   sooner in a real cluster); containers never crash or restart.
//! - Selectors: only the field selector `spec.nodeName=…`; any other field or label selector
//!   is answered 400 so a test cannot silently get unfiltered results.

mod controllers;
mod discovery;
mod disruption;
mod events;
mod http;
mod leases;
mod metadata;
mod nodes;
mod paging;
mod pod;
mod pods;
mod status;
mod table;
mod validation;
mod workloads;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use disruption::PdbBudget;
pub use pod::{FakePod, TEST_GRACE_PERIOD_SECONDS};

use pod::{OwnerKind, PodIds};

/// How long an evicted (or otherwise deleted) pod lingers, `deletionTimestamp` set, before
/// it disappears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// As the kubelet does with a process that ignores SIGTERM: the deletion grace period.
    GracePeriod,
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
    /// Refused before any budget was looked at (400: the Eviction names another pod; 500:
    /// the pod is under several budgets).
    Rejected(u16),
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
    /// When the kubelet removes it, once it is terminating; `None` otherwise or never.
    gone_at: Option<Instant>,
    /// When its containers run, once it is bound and not yet started.
    starts_at: Option<Instant>,
    /// Its controller, if one recreates it.
    workload: Option<WorkloadKey>,
}

/// A controller by namespace, kind and name.
type WorkloadKey = (String, OwnerKind, String);

/// A ReplicaSet, StatefulSet or DaemonSet, as far as its pods tell.
struct Workload {
    uid: String,
    created: Time,
    /// ReplicaSet: the pods it keeps.
    replicas: usize,
    /// StatefulSet: its members by name; DaemonSet: its pods by node; each with the template
    /// its replacement is made from.
    members: BTreeMap<String, FakePod>,
    /// The pod template a ReplicaSet's replacements are made from.
    template: FakePod,
}

struct Fault {
    method: String,
    path_prefix: String,
    remaining: usize,
    status: StatusCode,
}

/// The switches of the rules the fake follows.
struct Rules {
    termination: Termination,
    controllers: bool,
    pod_startup: Duration,
    heartbeat: Option<Duration>,
    validation: bool,
    pdb_counts_replicas: bool,
}

struct Cluster {
    nodes: BTreeMap<String, Node>,
    /// When each node's kubelet last wrote its status.
    heartbeats: BTreeMap<String, Instant>,
    pods: BTreeMap<(String, String), StoredPod>,
    workloads: BTreeMap<WorkloadKey, Workload>,
    pdbs: Vec<disruption::Pdb>,
    evictions: Vec<EvictionRecord>,
    events: Vec<Event>,
    /// By (namespace, name).
    leases: BTreeMap<(String, String), Lease>,
    requests: Vec<RequestRecord>,
    faults: Vec<Fault>,
    latency: Duration,
    rules: Rules,
    resource_version: u64,
    uid_counter: u64,
    /// The `resourceVersion` the scheduler last looked at the cluster in.
    scheduled_at: Option<u64>,
    /// Continue tokens from before this `resourceVersion` are expired ([`FakeKube::compact`]).
    compacted_at: u64,
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

    /// The five characters Kubernetes appends to a generated name.
    fn next_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        self.uid_counter += 1;
        let mut n = self.uid_counter.wrapping_mul(2_654_435_761) % 27u64.pow(5);
        (0..5)
            .map(|_| {
                let c = ALPHABET[(n % 27) as usize] as char;
                n /= 27;
                c
            })
            .collect()
    }

    fn node_ip(&self, node: &str) -> String {
        self.nodes
            .get(node)
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map_or_else(|| "10.0.0.1".to_owned(), |a| a.address.clone())
    }

    fn pod_ids(&mut self, owner_uid: String, node: &str) -> PodIds {
        let uid = self.next_uid();
        let n = self.uid_counter;
        PodIds {
            uid,
            resource_version: self.next_resource_version(),
            owner_uid,
            pod_ip: format!("10.1.{}.{}", (n / 250) % 250, n % 250 + 2),
            host_ip: self.node_ip(node),
        }
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

/// The cluster, brought up to date: what the kubelets, controllers and scheduler would
/// have done by now is done first.
fn lock(shared: &Shared) -> MutexGuard<'_, Cluster> {
    let mut cluster = shared.lock().unwrap_or_else(PoisonError::into_inner);
    cluster.settle(Instant::now());
    cluster
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
            heartbeats: BTreeMap::new(),
            pods: BTreeMap::new(),
            workloads: BTreeMap::new(),
            pdbs: Vec::new(),
            evictions: Vec::new(),
            events: Vec::new(),
            leases: BTreeMap::new(),
            requests: Vec::new(),
            faults: Vec::new(),
            latency: Duration::ZERO,
            rules: Rules {
                termination: Termination::GracePeriod,
                controllers: true,
                pod_startup: controllers::DEFAULT_POD_STARTUP,
                heartbeat: Some(controllers::DEFAULT_HEARTBEAT),
                validation: true,
                pdb_counts_replicas: true,
            },
            resource_version: 1000,
            uid_counter: 0,
            scheduled_at: None,
            compacted_at: 0,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let app = http::router(shared.clone(), address.to_string());
        let url = format!("http://{address}");
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
        lock(&self.shared)
    }

    /// Adds (or replaces) a pod and returns it as the server stores it. Its controller keeps
    /// it from now on (see [`FakePod`] for which controller that is).
    pub fn add_pod(&self, pod: FakePod) -> Pod {
        let now = Instant::now();
        let mut cluster = self.cluster();
        let stored = cluster.add_pod(pod, now);
        cluster.settle(now);
        stored
    }

    /// Adds many pods at once, as [`FakeKube::add_pod`] each, with one settling pass:
    /// how a bench fills a cluster of 150,000 pods.
    pub fn add_pods(&self, pods: impl IntoIterator<Item = FakePod>) {
        let now = Instant::now();
        let mut cluster = self.cluster();
        for pod in pods {
            cluster.add_pod(pod, now);
        }
        cluster.settle(now);
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

    /// Every pod, bound or Pending, ordered by namespace and name.
    pub fn pods(&self) -> Vec<Pod> {
        self.cluster()
            .pods
            .values()
            .map(|stored| stored.pod.clone())
            .collect()
    }

    /// Removes a pod at once, its controller scaled down by one so that nothing replaces
    /// it (as `kubectl scale` would); returns whether it existed.
    pub fn remove_pod(&self, namespace: &str, name: &str) -> bool {
        let mut cluster = self.cluster();
        let Some(stored) = cluster
            .pods
            .remove(&(namespace.to_owned(), name.to_owned()))
        else {
            return false;
        };
        if let Some(key) = &stored.workload {
            cluster.forget(key, &stored.template);
        }
        true
    }

    /// How long deleted pods linger: [`Termination::GracePeriod`] (the default, as a kubelet
    /// does), a fixed delay, or never.
    pub fn set_termination(&self, termination: Termination) {
        self.cluster().rules.termination = termination;
    }

    /// Validation of Node, Lease and Eviction bodies as the API server validates them
    /// (default: on). Off, anything that decodes is stored.
    pub fn set_validation(&self, on: bool) {
        self.cluster().rules.validation = on;
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
