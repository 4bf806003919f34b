//! The fake API server against a real client: `kubectl` (v1.32 on the development machine)
//! through a kubeconfig that points at FakeKube, with no TLS and no credentials. What it
//! lists, `cordon`/`uncordon`, `taint` and its removal, and `drain` must behave as against a
//! cluster: DaemonSet and mirror pods left, a PodDisruptionBudget refusal retried (kubectl
//! retries every 5 s) until a replacement is Ready elsewhere, evicted pods gone after their
//! grace period, exit status 0.
//!
//! kubectl asks for: `/version`, `/api`, `/apis` and each group version's resource list
//! (legacy discovery), `GET`/`PATCH` (strategic merge patch) of the node, the node's pods by
//! field selector, `GET` of each DaemonSet owning a pod, `/api/v1` again (for
//! `pods/eviction`), `POST …/eviction` per pod, then `GET` of each pod every second until it
//! is gone; `kubectl get` asks for server-side Tables.
//!
//! kubectl is `$KUBECTL`, else the first on PATH. Without kubectl the tests print "skipped:
//! kubectl not found" and pass, unless the environment variable CI is set: then they fail,
//! saying how to install it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use spot_guard::sim::kube::{EvictionOutcome, FakeKube, FakePod, PdbBudget};

const NODE_A: &str = "ip-10-0-1-23.ec2.internal";
const NODE_B: &str = "ip-10-0-2-42.ec2.internal";
/// Bound of every kubectl command.
const LIMIT: Duration = Duration::from_secs(60);

/// kubectl from `$KUBECTL`, else on PATH (or at /usr/bin/kubectl), checked to run; `None`
/// when absent and CI unset.
fn kubectl() -> Option<PathBuf> {
    let chosen = std::env::var_os("KUBECTL").map(PathBuf::from);
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("kubectl"));
    let found = match chosen {
        Some(path) => Some(path),
        None => candidates.into_iter().find(|path| path.is_file()),
    };
    match found {
        Some(path) => {
            let version = Command::new(&path)
                .args(["version", "--client=true"])
                .output()
                .unwrap_or_else(|error| panic!("{} does not run: {error}", path.display()));
            assert!(
                version.status.success(),
                "{} --client version failed: {}",
                path.display(),
                String::from_utf8_lossy(&version.stderr)
            );
            Some(path)
        }
        None if std::env::var_os("CI").is_some() => panic!(
            "kubectl not found on PATH (nor $KUBECTL), and CI is set: tests/kubectl.rs checks \
             the fake API server against the real client. Install kubectl v1.32, e.g. \
             `curl -LO https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubectl && \
             sudo install -m 0755 kubectl /usr/local/bin/kubectl`, or set KUBECTL to its path"
        ),
        None => {
            eprintln!(
                "skipped: kubectl not found (install kubectl v1.32 to run tests/kubectl.rs; \
                 with CI set these tests fail instead)"
            );
            None
        }
    }
}

/// kubectl with a kubeconfig, home and cache of its own, pointed at `fake`.
struct Kubectl {
    binary: PathBuf,
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn for_fake(binary: PathBuf, fake: &FakeKube) -> Kubectl {
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    \
             insecure-skip-tls-verify: true\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
             user: nobody\ncurrent-context: fake\nusers:\n- name: nobody\n  user: {{}}\n",
            fake.url()
        );
        std::fs::write(dir.path().join("config"), kubeconfig).expect("kubeconfig");
        Kubectl { binary, dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let home: &Path = self.dir.path();
        let mut command = Command::new(&self.binary);
        command
            .env("KUBECONFIG", home.join("config"))
            .env("HOME", home)
            .arg(format!("--cache-dir={}", home.join("cache").display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs kubectl to its end, within [`LIMIT`], off the async runtime.
    async fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command(args);
        let shown = args.join(" ");
        tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().expect("kubectl starts");
            let deadline = Instant::now() + LIMIT;
            while child.try_wait().expect("kubectl status").is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("kubectl {shown} did not finish within {LIMIT:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            child.wait_with_output().expect("kubectl output")
        })
        .await
        .expect("kubectl ran")
    }

    /// Runs kubectl and insists it succeeds; returns its standard output.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            output.status.success(),
            "kubectl {} failed ({}):\n{}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// kubectl's table output as rows of cells (columns are two or more spaces apart).
fn rows(printed: &str) -> Vec<Vec<String>> {
    printed
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// The cells of column `name` in `table`, by row.
fn column(table: &[Vec<String>], name: &str) -> Vec<String> {
    let at = table[0]
        .iter()
        .position(|header| header == name)
        .unwrap_or_else(|| panic!("no column {name} in {:?}", table[0]));
    table[1..].iter().map(|row| row[at].clone()).collect()
}

async fn fake() -> FakeKube {
    let fake = FakeKube::start().await.expect("fake API server");
    fake.add_node(NODE_A);
    fake.add_node(NODE_B);
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_lists_the_nodes_and_pods_the_fake_holds() {
    let Some(binary) = kubectl() else { return };
    let fake = fake().await;
    fake.update_node(NODE_B, |node| {
        for condition in node
            .status
            .iter_mut()
            .flat_map(|s| s.conditions.iter_mut())
            .flatten()
        {
            condition.status = "False".to_owned();
        }
    });
    fake.add_pod(FakePod::new("default", "web-1", NODE_A));
    fake.add_pod(FakePod::new("kube-system", "aws-node-x7k2p", NODE_A).daemon_set());
    fake.add_pod(
        FakePod::new("default", "leaving", NODE_A)
            .with_termination_grace_period(30)
            .already_terminating(),
    );
    let kubectl = Kubectl::for_fake(binary, &fake);

    let nodes = rows(&kubectl.ok(&["get", "nodes"]).await);
    assert_eq!(nodes[0], ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    assert_eq!(column(&nodes, "NAME"), [NODE_A, NODE_B]);
    assert_eq!(column(&nodes, "STATUS"), ["Ready", "NotReady"]);
    assert_eq!(column(&nodes, "ROLES"), ["<none>", "<none>"]);

    let pods = rows(&kubectl.ok(&["get", "pods", "-A", "-o", "wide"]).await);
    assert_eq!(
        pods[0],
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES"
        ]
    );
    // Every pod the fake holds, as the fake holds it: the terminating one's ReplicaSet
    // has already made its replacement, which is Pending or starting on node B.
    let held: Vec<(String, String)> = fake
        .pods()
        .into_iter()
        .map(|pod| {
            (
                pod.metadata.namespace.unwrap_or_default(),
                pod.metadata.name.unwrap_or_default(),
            )
        })
        .collect();
    let listed: Vec<(String, String)> = column(&pods, "NAMESPACE")
        .into_iter()
        .zip(column(&pods, "NAME"))
        .collect();
    assert_eq!(listed, held);
    let by_name = |name: &str| {
        pods.iter()
            .find(|row| row[1] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {pods:?}"))
            .clone()
    };
    let web = by_name("web-1");
    assert_eq!(web[2..4], ["1/1", "Running"]);
    assert_eq!(web[7], NODE_A);
    assert_eq!(by_name("leaving")[3], "Terminating");
    assert_eq!(by_name("aws-node-x7k2p")[0], "kube-system");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_cordons_uncordons_taints_and_untaints_a_node() {
    let Some(binary) = kubectl() else { return };
    let fake = fake().await;
    let kubectl = Kubectl::for_fake(binary, &fake);
    let unschedulable = |fake: &FakeKube| {
        fake.node(NODE_A)
            .and_then(|n| n.spec)
            .and_then(|s| s.unschedulable)
    };
    let taints = |fake: &FakeKube| -> Vec<String> {
        fake.node(NODE_A)
            .and_then(|n| n.spec)
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .into_iter()
            .map(|t| format!("{}={}:{}", t.key, t.value.unwrap_or_default(), t.effect))
            .collect()
    };

    let said = kubectl.ok(&["cordon", NODE_A]).await;
    assert_eq!(said.trim(), format!("node/{NODE_A} cordoned"));
    assert_eq!(unschedulable(&fake), Some(true));
    let nodes = rows(&kubectl.ok(&["get", "nodes"]).await);
    assert_eq!(
        column(&nodes, "STATUS"),
        ["Ready,SchedulingDisabled", "Ready"]
    );

    let said = kubectl.ok(&["uncordon", NODE_A]).await;
    assert_eq!(said.trim(), format!("node/{NODE_A} uncordoned"));
    assert_eq!(unschedulable(&fake), None);

    let said = kubectl
        .ok(&[
            "taint",
            "nodes",
            NODE_A,
            "example.com/maintenance=soon:NoSchedule",
        ])
        .await;
    assert_eq!(said.trim(), format!("node/{NODE_A} tainted"));
    assert_eq!(taints(&fake), ["example.com/maintenance=soon:NoSchedule"]);

    let said = kubectl
        .ok(&[
            "taint",
            "nodes",
            NODE_A,
            "example.com/maintenance:NoSchedule-",
        ])
        .await;
    assert_eq!(said.trim(), format!("node/{NODE_A} untainted"));
    assert!(taints(&fake).is_empty(), "{:?}", taints(&fake));

    // The writes were kubectl's own: strategic merge patches, the taint one validated strictly.
    let patches: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| format!("{} {}", r.status, r.query.unwrap_or_default()))
        .collect();
    assert_eq!(
        patches,
        [
            "200 ",
            "200 ",
            "200 fieldManager=kubectl-taint&fieldValidation=Strict",
            "200 fieldManager=kubectl-taint&fieldValidation=Strict"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_leaves_daemon_set_and_mirror_pods_and_waits_out_the_budget() {
    let Some(binary) = kubectl() else { return };
    let fake = fake().await;
    for name in ["web-7d4b9c-abcde", "web-7d4b9c-fghij"] {
        fake.add_pod(
            FakePod::new("default", name, NODE_A)
                .with_label("app", "web")
                .replica_set("web-7d4b9c"),
        );
    }
    fake.add_pod(FakePod::new("default", "cache-1", NODE_A).with_empty_dir());
    fake.add_pod(FakePod::new("kube-system", "aws-node-x7k2p", NODE_A).daemon_set());
    fake.add_pod(FakePod::new("kube-system", "kube-proxy-node-a", NODE_A).mirror());
    fake.add_pod(
        FakePod::new("default", "leaving", NODE_A)
            .with_termination_grace_period(2)
            .already_terminating(),
    );
    fake.add_pdb_with(
        "default",
        "web",
        &[("app", "web")],
        PdbBudget::MinAvailable(IntOrString::Int(1)),
    );
    let kubectl = Kubectl::for_fake(binary, &fake);
    let budgets = rows(&kubectl.ok(&["get", "pdb", "-n", "default"]).await);
    assert_eq!(
        budgets[0],
        [
            "NAME",
            "MIN AVAILABLE",
            "MAX UNAVAILABLE",
            "ALLOWED DISRUPTIONS",
            "AGE"
        ]
    );
    assert_eq!(budgets[1][..4], ["web", "1", "N/A", "1"]);

    let drained = kubectl
        .run(&[
            "drain",
            NODE_A,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=40s",
        ])
        .await;
    let stdout = String::from_utf8_lossy(&drained.stdout);
    let stderr = String::from_utf8_lossy(&drained.stderr);

    assert!(
        drained.status.success(),
        "kubectl drain failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("node/{NODE_A} cordoned")),
        "{stdout}"
    );
    assert!(
        stdout
            .trim_end()
            .ends_with(&format!("node/{NODE_A} drained")),
        "{stdout}"
    );
    assert!(
        stderr.contains("Warning: ignoring DaemonSet-managed Pods: kube-system/aws-node-x7k2p"),
        "{stderr}"
    );
    for pod in ["web-7d4b9c-abcde", "web-7d4b9c-fghij", "cache-1", "leaving"] {
        assert!(
            stdout.contains(&format!("pod/{pod} evicted")),
            "{pod}: {stdout}"
        );
    }
    // One web pod went; the budget refused the other until the first one's replacement was
    // Ready on node B, and kubectl tried again 5 s later.
    assert!(
        stderr.contains(
            "(will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget."
        ),
        "{stderr}"
    );
    let web_evictions: Vec<(String, EvictionOutcome)> = fake
        .evictions()
        .into_iter()
        .filter(|e| e.name.starts_with("web-"))
        .map(|e| (e.name, e.outcome))
        .collect();
    let refused: Vec<&String> = web_evictions
        .iter()
        .filter(|(_, outcome)| *outcome == EvictionOutcome::BlockedByPdb)
        .map(|(name, _)| name)
        .collect();
    assert!(!refused.is_empty(), "{web_evictions:?}");
    assert!(
        refused.iter().all(|name| *name == refused[0]),
        "only one pod was held: {web_evictions:?}"
    );
    assert_eq!(
        web_evictions.last().map(|(name, outcome)| (name, *outcome)),
        Some((refused[0], EvictionOutcome::Allowed)),
        "the held pod went in the end: {web_evictions:?}"
    );
    assert!(
        fake.evictions()
            .iter()
            .all(|e| !e.name.starts_with("aws-node") && !e.name.starts_with("kube-proxy")),
        "DaemonSet and mirror pods are never evicted"
    );

    // As `kubectl get pods -A -o wide` shows it: node A keeps the DaemonSet and mirror pods,
    // the workload runs again on node B (new names), the evicted pods are gone.
    let pods = rows(&kubectl.ok(&["get", "pods", "-A", "-o", "wide"]).await);
    let placed: Vec<(String, String, String)> = pods[1..]
        .iter()
        .map(|row| (row[1].clone(), row[3].clone(), row[7].clone()))
        .collect();
    let on = |node: &str| -> Vec<String> {
        placed
            .iter()
            .filter(|(_, _, n)| n == node)
            .map(|(name, _, _)| name.clone())
            .collect()
    };
    assert_eq!(
        on(NODE_A),
        ["aws-node-x7k2p", "kube-proxy-node-a"],
        "{placed:?}"
    );
    let moved = on(NODE_B);
    assert_eq!(moved.len(), 4, "{placed:?}");
    for prefix in ["cache-1-", "leaving-", "web-7d4b9c-", "web-7d4b9c-"] {
        assert!(
            moved.iter().any(|name| name.starts_with(prefix)),
            "{prefix}… on node B: {placed:?}"
        );
    }
    for gone in ["web-7d4b9c-abcde", "web-7d4b9c-fghij", "cache-1", "leaving"] {
        assert!(fake.pod("default", gone).is_none(), "{gone} is gone");
    }
    let nodes = rows(&kubectl.ok(&["get", "nodes"]).await);
    assert_eq!(
        column(&nodes, "STATUS"),
        ["Ready,SchedulingDisabled", "Ready"]
    );
}

/// kubectl pages its lists (`--chunk-size`, 500 by default) and follows the fake's continue
/// tokens as it follows the API server's: a node's pods read two at a time come out as
/// the whole list does, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_follows_the_fakes_continue_tokens_page_by_page() {
    let Some(binary) = kubectl() else { return };
    let fake = fake().await;
    for (namespace, name, node) in [
        ("default", "web-1", NODE_A),
        ("default", "web-2", NODE_B),
        ("default", "web-3", NODE_A),
        ("jobs", "batch-1", NODE_A),
        ("kube-system", "dns-1", NODE_A),
        ("kube-system", "dns-2", NODE_B),
        ("monitoring", "agent-1", NODE_A),
    ] {
        fake.add_pod(FakePod::new(namespace, name, node));
    }
    let kubectl = Kubectl::for_fake(binary, &fake);
    let on_a = format!("spec.nodeName={NODE_A}");
    let listed = |printed: &str| {
        let table = rows(printed);
        column(&table, "NAMESPACE")
            .into_iter()
            .zip(column(&table, "NAME"))
            .map(|(namespace, name)| format!("{namespace}/{name}"))
            .collect::<Vec<_>>()
    };

    let whole = listed(
        &kubectl
            .ok(&["get", "pods", "-A", "--field-selector", &on_a])
            .await,
    );
    let paged = listed(
        &kubectl
            .ok(&[
                "get",
                "pods",
                "-A",
                "--field-selector",
                &on_a,
                "--chunk-size=2",
            ])
            .await,
    );

    assert_eq!(
        whole,
        [
            "default/web-1",
            "default/web-3",
            "jobs/batch-1",
            "kube-system/dns-1",
            "monitoring/agent-1"
        ]
    );
    assert_eq!(paged, whole);
    let continued = fake
        .requests()
        .iter()
        .filter(|request| request.path == "/api/v1/pods")
        .filter(|request| {
            request
                .query
                .as_deref()
                .is_some_and(|query| query.contains("limit=2") && query.contains("continue="))
        })
        .count();
    assert_eq!(continued, 2, "three pages of two, two of them by token");
}
