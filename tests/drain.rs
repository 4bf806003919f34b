//! Draining a node against the fake API server over HTTP: which pods go, PDB waits, deadlines.
//! The node is cordoned first, as the agent (and `kubectl drain`) cordons before it drains,
//! so the replacements the fake's controllers make land on the other node.

use std::error::Error;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use spot_guard::drain::{
    DrainReport, DrainSettings, PAGE_SIZE, PodRef, RefuseReason, SkipReason, drain,
};
use spot_guard::node::client_for_url;
use spot_guard::sim::harness::fast_drain;
use spot_guard::sim::kube::{EvictionOutcome, FakeKube, FakePod, PdbBudget, Termination};

type TestResult = Result<(), Box<dyn Error>>;

const NODE: &str = "ip-10-0-1-23.ec2.internal";
const OTHER_NODE: &str = "ip-10-0-2-42.ec2.internal";

async fn fake_with_node() -> Result<(FakeKube, kube::Client), Box<dyn Error>> {
    spot_guard::tls::ensure_crypto_provider();
    let fake = FakeKube::start().await?;
    fake.add_node(NODE);
    fake.add_node(OTHER_NODE);
    fake.cordon(NODE);
    let client = client_for_url(&fake.url())?;
    Ok((fake, client))
}

/// Runs a drain, failing the test instead of hanging it if the drain ignores its deadline.
async fn run_drain(
    client: &kube::Client,
    settings: &DrainSettings,
    dry_run: bool,
) -> Result<DrainReport, Box<dyn Error>> {
    let bound = settings.timeout + Duration::from_secs(10);
    Ok(tokio::time::timeout(bound, drain(client, NODE, settings, dry_run)).await??)
}

fn pod_ref(namespace: &str, name: &str) -> PodRef {
    PodRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

fn sorted(mut pods: Vec<PodRef>) -> Vec<PodRef> {
    pods.sort();
    pods
}

fn names_on_node(fake: &FakeKube, node: &str) -> Vec<String> {
    let mut names: Vec<String> = fake
        .pods_on_node(node)
        .into_iter()
        .filter_map(|pod| pod.metadata.name)
        .collect();
    names.sort();
    names
}

/// The pods' names with the generated suffix of a ReplicaSet replacement cut off
/// (`web-1-x7k2p` → `web-1*`).
fn replaced_names(fake: &FakeKube, node: &str) -> Vec<String> {
    names_on_node(fake, node)
        .into_iter()
        .map(|name| match name.rsplit_once('-') {
            Some((base, suffix)) if suffix.len() == 5 => format!("{base}*"),
            _ => name,
        })
        .collect()
}

fn evicted_names(fake: &FakeKube) -> Vec<String> {
    let mut names: Vec<String> = fake
        .evictions()
        .into_iter()
        .filter(|eviction| eviction.outcome == EvictionOutcome::Allowed)
        .map(|eviction| eviction.name)
        .collect();
    names.sort();
    names
}

/// Workload, DaemonSet, mirror, emptyDir and finished pods on the node; the workload pods
/// stop `grace` seconds after their eviction.
fn mixed_node(fake: &FakeKube, grace: i64) {
    let workload =
        |name: &str| FakePod::new("default", name, NODE).with_termination_grace_period(grace);
    fake.add_pod(workload("web-1"));
    fake.add_pod(workload("web-2"));
    fake.add_pod(FakePod::new("kube-system", "aws-node-x7k2p", NODE).daemon_set());
    fake.add_pod(FakePod::new("kube-system", "kube-proxy-static", NODE).mirror());
    fake.add_pod(workload("cache").with_empty_dir());
    fake.add_pod(FakePod::new("default", "batch-done", NODE).with_phase("Succeeded"));
    fake.add_pod(FakePod::new("default", "elsewhere", OTHER_NODE));
}

#[tokio::test]
async fn evicts_workload_pods_and_leaves_daemon_set_mirror_and_finished_pods() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    mixed_node(&fake, 1);

    let report = run_drain(&client, &fast_drain(Duration::from_secs(5)), false).await?;

    assert!(report.is_complete(), "{report:?}");
    assert_eq!(
        sorted(report.evicted.clone()),
        [
            pod_ref("default", "cache"),
            pod_ref("default", "web-1"),
            pod_ref("default", "web-2")
        ]
    );
    assert_eq!(evicted_names(&fake), ["cache", "web-1", "web-2"]);
    assert_eq!(
        names_on_node(&fake, NODE),
        ["aws-node-x7k2p", "batch-done", "kube-proxy-static"]
    );
    // Their ReplicaSets replaced them on the node that takes pods.
    assert_eq!(
        replaced_names(&fake, OTHER_NODE),
        ["cache*", "elsewhere", "web-1*", "web-2*"]
    );
    assert_eq!(report.skipped.len(), 3);
    Ok(())
}

#[tokio::test]
async fn empty_dir_pod_is_refused_without_delete_local_data_but_others_go() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    mixed_node(&fake, 0);
    let settings = DrainSettings {
        delete_local_data: false,
        ..fast_drain(Duration::from_secs(5))
    };

    let report = run_drain(&client, &settings, false).await?;

    assert!(!report.is_complete());
    assert_eq!(
        report.refused,
        [(pod_ref("default", "cache"), RefuseReason::LocalStorage)]
    );
    assert_eq!(evicted_names(&fake), ["web-1", "web-2"]);
    assert!(names_on_node(&fake, NODE).contains(&"cache".to_owned()));
    Ok(())
}

#[tokio::test]
async fn daemon_set_pod_is_refused_when_daemon_sets_are_not_ignored() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    mixed_node(&fake, 0);
    let settings = DrainSettings {
        ignore_daemon_sets: false,
        ..fast_drain(Duration::from_secs(5))
    };

    let report = run_drain(&client, &settings, false).await?;

    assert_eq!(
        report.refused,
        [(
            pod_ref("kube-system", "aws-node-x7k2p"),
            RefuseReason::DaemonSetNotIgnored
        )]
    );
    assert!(!evicted_names(&fake).contains(&"aws-node-x7k2p".to_owned()));
    assert_eq!(evicted_names(&fake), ["cache", "web-1", "web-2"]);
    Ok(())
}

#[tokio::test]
async fn grace_period_override_reaches_the_api_server() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    fake.add_pod(FakePod::new("default", "web-1", NODE).with_termination_grace_period(300));
    let settings = DrainSettings {
        pod_termination_grace_period: Some(1),
        ..fast_drain(Duration::from_secs(5))
    };

    let report = run_drain(&client, &settings, false).await?;

    let grace: Vec<Option<i64>> = fake
        .evictions()
        .iter()
        .map(|eviction| eviction.grace_period_seconds)
        .collect();
    assert_eq!(grace, [Some(1)]);
    // The pod got 1 s instead of its own 300 s, so the drain finished.
    assert!(report.is_complete(), "{report:?}");
    assert!(names_on_node(&fake, NODE).is_empty());
    Ok(())
}

#[tokio::test]
async fn without_override_no_grace_period_is_sent_and_the_pod_keeps_its_own() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    fake.add_pod(FakePod::new("default", "web-1", NODE).with_termination_grace_period(1));
    let started = std::time::Instant::now();

    // POD_TERMINATION_GRACE_PERIOD=-1 maps to None: each pod keeps its own.
    let report = run_drain(&client, &fast_drain(Duration::from_secs(5)), false).await?;

    let evictions = fake.evictions();
    assert_eq!(evictions.len(), 1);
    assert_eq!(evictions[0].grace_period_seconds, None);
    assert_eq!(evictions[0].outcome, EvictionOutcome::Allowed);
    assert!(report.is_complete(), "{report:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the drain waited out the pod's own second"
    );
    Ok(())
}

#[tokio::test]
async fn an_evicted_pod_is_terminating_for_its_grace_period_then_gone() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    fake.add_pod(FakePod::new("default", "web-1", NODE).with_termination_grace_period(1));
    let settings = fast_drain(Duration::from_secs(10));
    let drain_task = tokio::spawn({
        let client = client.clone();
        let settings = settings.clone();
        async move { drain(&client, NODE, &settings, false).await }
    });

    tokio::time::timeout(Duration::from_secs(5), async {
        while fake.evictions().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    let terminating = fake.pod("default", "web-1").ok_or("still there")?;
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(1));
    let report = tokio::time::timeout(Duration::from_secs(20), drain_task).await???;

    assert!(report.is_complete(), "{report:?}");
    assert!(fake.pod("default", "web-1").is_none());
    Ok(())
}

/// StatefulSet `db` pods of namespace `data` on the node behind a PodDisruptionBudget that
/// lets one be away at a time; each stops 150 ms after its eviction, so the budget refuses
/// the next until the evicted one is back on the other node.
fn db_pods_behind_a_budget_of_one(fake: &FakeKube, names: &[&str]) {
    for name in names {
        fake.add_pod(
            FakePod::new("data", name, NODE)
                .with_label("app", "db")
                .stateful_set("db"),
        );
    }
    fake.add_pdb("data", "db-pdb", &[("app", "db")], 1);
    fake.set_termination(Termination::After(Duration::from_millis(150)));
}

#[tokio::test]
async fn pdb_with_max_unavailable_one_releases_pods_one_by_one() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    db_pods_behind_a_budget_of_one(&fake, &["db-0", "db-1", "db-2"]);

    let report = run_drain(&client, &fast_drain(Duration::from_secs(10)), false).await?;

    assert!(report.is_complete(), "{report:?}");
    assert_eq!(evicted_names(&fake), ["db-0", "db-1", "db-2"]);
    let refusals = fake
        .evictions()
        .iter()
        .filter(|eviction| eviction.outcome == EvictionOutcome::BlockedByPdb)
        .count();
    assert!(
        refusals >= 2,
        "the budget should have refused while a member was away"
    );
    assert!(names_on_node(&fake, NODE).is_empty());
    // Each member came back, same name, on the node that takes pods.
    assert_eq!(names_on_node(&fake, OTHER_NODE), ["db-0", "db-1", "db-2"]);
    Ok(())
}

#[tokio::test]
async fn a_budget_frees_only_once_the_replacement_is_ready_somewhere() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    // Nowhere to go: the other node is cordoned too.
    fake.cordon(OTHER_NODE);
    for name in ["web-1", "web-2"] {
        fake.add_pod(
            FakePod::new("default", name, NODE)
                .with_label("app", "web")
                .replica_set("web-7d4b9c"),
        );
    }
    fake.add_pdb_with(
        "default",
        "web",
        &[("app", "web")],
        PdbBudget::MinAvailable(IntOrString::Int(1)),
    );

    let report = run_drain(&client, &fast_drain(Duration::from_secs(1)), false).await?;

    // One went; its replacement is Pending, so the other stays.
    assert_eq!(report.evicted.len(), 1, "{report:?}");
    assert_eq!(report.blocked_by_pdb.len(), 1, "{report:?}");
    let pending: Vec<String> = fake
        .pods()
        .into_iter()
        .filter(|pod| pod.spec.as_ref().is_some_and(|s| s.node_name.is_none()))
        .filter_map(|pod| pod.metadata.name)
        .collect();
    assert_eq!(pending.len(), 1, "one replacement waits: {pending:?}");
    assert!(pending[0].starts_with("web-7d4b9c-"));
    let status = fake.pdb("default", "web").and_then(|pdb| pdb.status);
    assert_eq!(status.map(|s| s.disruptions_allowed), Some(0));

    // Room appears: the replacement starts there, then the other pod may go.
    fake.update_node(OTHER_NODE, |node| {
        if let Some(spec) = node.spec.as_mut() {
            spec.unschedulable = None;
        }
    });
    let report = run_drain(&client, &fast_drain(Duration::from_secs(10)), false).await?;

    assert!(report.is_complete(), "{report:?}");
    assert!(names_on_node(&fake, NODE).is_empty());
    assert_eq!(
        replaced_names(&fake, OTHER_NODE),
        ["web-7d4b9c*", "web-7d4b9c*"]
    );
    Ok(())
}

#[tokio::test]
async fn a_pod_already_terminating_when_the_drain_starts_is_waited_for() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    fake.add_pod(
        FakePod::new("default", "leaving", NODE)
            .with_label("app", "guarded")
            .already_terminating(),
    );
    // A budget that refuses everything does not hold a pod already being deleted.
    fake.add_pdb("default", "guarded", &[("app", "guarded")], 0);
    let started = std::time::Instant::now();

    let report = run_drain(&client, &fast_drain(Duration::from_secs(10)), false).await?;

    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.evicted, [pod_ref("default", "leaving")]);
    assert_eq!(fake.evictions()[0].outcome, EvictionOutcome::Allowed);
    assert!(fake.pod("default", "leaving").is_none());
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the drain waited for the deletion already under way"
    );
    Ok(())
}

#[tokio::test]
async fn pdb_that_never_relents_ends_the_drain_at_the_deadline_naming_the_pod() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    fake.add_pod(FakePod::new("data", "db-0", NODE).with_label("app", "db"));
    // Killed at once when evicted, so only the budget can hold the drain.
    fake.add_pod(FakePod::new("default", "web-1", NODE).with_termination_grace_period(0));
    fake.add_pdb("data", "db-pdb", &[("app", "db")], 0);

    let report = run_drain(&client, &fast_drain(Duration::from_secs(1)), false).await?;

    assert!(!report.is_complete());
    assert_eq!(report.blocked_by_pdb, [pod_ref("data", "db-0")]);
    assert_eq!(report.evicted, [pod_ref("default", "web-1")]);
    assert!(report.not_terminated.is_empty());
    assert_eq!(names_on_node(&fake, NODE), ["db-0"]);
    Ok(())
}

#[tokio::test]
async fn relaxing_the_pdb_during_the_drain_lets_the_pod_go() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    fake.add_pod(
        FakePod::new("data", "db-0", NODE)
            .with_label("app", "db")
            .with_termination_grace_period(0),
    );
    fake.add_pdb("data", "db-pdb", &[("app", "db")], 0);
    let settings = fast_drain(Duration::from_secs(10));
    let drain_task = tokio::spawn({
        let client = client.clone();
        let settings = settings.clone();
        async move { drain(&client, NODE, &settings, false).await }
    });

    tokio::time::timeout(Duration::from_secs(5), async {
        while fake.evictions().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    assert!(fake.set_pdb_max_unavailable("data", "db-pdb", 1));
    let report = tokio::time::timeout(Duration::from_secs(20), drain_task).await???;

    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.evicted, [pod_ref("data", "db-0")]);
    assert_eq!(fake.evictions()[0].outcome, EvictionOutcome::BlockedByPdb);
    Ok(())
}

#[tokio::test]
async fn pod_that_never_terminates_is_reported() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    fake.add_pod(FakePod::new("default", "stuck", NODE).terminating(Termination::Never));
    fake.add_pod(FakePod::new("default", "web-1", NODE).with_termination_grace_period(0));

    let report = run_drain(&client, &fast_drain(Duration::from_secs(1)), false).await?;

    assert!(!report.is_complete());
    assert_eq!(report.not_terminated, [pod_ref("default", "stuck")]);
    assert_eq!(
        sorted(report.evicted),
        [pod_ref("default", "stuck"), pod_ref("default", "web-1")]
    );
    let stuck = fake.pod("default", "stuck");
    assert!(stuck.is_some_and(|pod| pod.metadata.deletion_timestamp.is_some()));
    Ok(())
}

#[tokio::test]
async fn pod_recreated_with_the_same_name_counts_as_gone() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    // Pinned to this node (a local volume) and tolerating the cordon: it comes back here.
    let original = fake.add_pod(
        FakePod::new("data", "kafka-0", NODE)
            .recreated_on(NODE)
            .tolerating("node.kubernetes.io/unschedulable"),
    );
    // Lingers for a few polls so the drain sees it terminating before the replacement appears.
    fake.set_termination(Termination::After(Duration::from_millis(100)));

    let report = run_drain(&client, &fast_drain(Duration::from_secs(5)), false).await?;

    assert!(report.is_complete(), "{report:?}");
    let replacement = fake
        .pod("data", "kafka-0")
        .ok_or("the pod should have been recreated")?;
    assert_ne!(replacement.metadata.uid, original.metadata.uid);
    assert_eq!(
        replacement.spec.and_then(|spec| spec.node_name).as_deref(),
        Some(NODE)
    );
    assert_eq!(evicted_names(&fake), ["kafka-0"]);
    Ok(())
}

#[tokio::test]
async fn dry_run_evicts_nothing() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    mixed_node(&fake, 0);

    let report = run_drain(&client, &fast_drain(Duration::from_secs(5)), true).await?;

    assert!(report.dry_run);
    assert_eq!(report.evicted.len(), 3);
    assert!(fake.evictions().is_empty());
    assert!(
        fake.requests()
            .iter()
            .all(|request| request.method == "GET")
    );
    assert_eq!(names_on_node(&fake, NODE).len(), 6);
    Ok(())
}

#[tokio::test]
async fn server_error_on_the_first_eviction_is_retried() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    fake.add_pod(FakePod::new("default", "web-1", NODE).with_termination_grace_period(0));
    let eviction_path = "/api/v1/namespaces/default/pods/web-1/eviction";
    fake.fail_next("POST", eviction_path, 1, 500);

    let report = run_drain(&client, &fast_drain(Duration::from_secs(5)), false).await?;

    assert!(report.is_complete(), "{report:?}");
    let statuses: Vec<u16> = fake
        .requests()
        .into_iter()
        .filter(|request| request.path == eviction_path)
        .map(|request| request.status)
        .collect();
    assert_eq!(statuses, [500, 201]);
    assert!(names_on_node(&fake, NODE).is_empty());
    Ok(())
}

#[tokio::test]
async fn eviction_failing_until_the_deadline_is_reported_with_its_error() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    fake.add_pod(FakePod::new("default", "web-1", NODE));
    fake.fail_next(
        "POST",
        "/api/v1/namespaces/default/pods/web-1/eviction",
        usize::MAX,
        503,
    );

    let report = run_drain(&client, &fast_drain(Duration::from_millis(500)), false).await?;

    assert!(!report.is_complete());
    assert_eq!(report.eviction_failed.len(), 1);
    assert_eq!(report.eviction_failed[0].0, pod_ref("default", "web-1"));
    assert!(report.blocked_by_pdb.is_empty());
    Ok(())
}

/// Settings whose retry timer alone could not finish the drain before its deadline.
fn slow_timer_drain(timeout: Duration) -> DrainSettings {
    DrainSettings {
        eviction_retry_interval: Duration::from_secs(60),
        ..fast_drain(timeout)
    }
}

#[tokio::test]
async fn a_budget_that_frees_lets_the_next_pod_go_without_waiting_for_the_retry_timer() -> TestResult
{
    let (fake, client) = fake_with_node().await?;
    db_pods_behind_a_budget_of_one(&fake, &["db-0", "db-1", "db-2"]);
    // Another budget in the namespace, always free, must not wake the drain for db's pods.
    fake.add_pod(FakePod::new("data", "cache-0", OTHER_NODE).with_label("app", "cache"));
    fake.add_pdb("data", "cache-pdb", &[("app", "cache")], 1);

    // A 60 s retry interval and a 20 s deadline: only the budget's own news can finish it.
    let report = run_drain(&client, &slow_timer_drain(Duration::from_secs(20)), false).await?;

    assert!(report.is_complete(), "{report:?}");
    assert_eq!(evicted_names(&fake), ["db-0", "db-1", "db-2"]);
    assert!(report.pdb_refusals >= 2, "{report:?}");
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.path == "/apis/policy/v1/poddisruptionbudgets"
                && r.query.as_deref().is_some_and(|q| q.contains("watch=true"))),
        "the drain watches the budgets"
    );
    Ok(())
}

#[tokio::test]
async fn without_a_budget_watch_refused_pods_are_retried_on_the_timer() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    // As with a chart whose ClusterRole lacks `watch` on poddisruptionbudgets.
    fake.fail_next("GET", "/apis/policy/v1/poddisruptionbudgets", 100, 403);
    db_pods_behind_a_budget_of_one(&fake, &["db-0", "db-1"]);

    let report = run_drain(&client, &fast_drain(Duration::from_secs(10)), false).await?;

    assert!(report.is_complete(), "{report:?}");
    assert_eq!(evicted_names(&fake), ["db-0", "db-1"]);
    Ok(())
}

/// A node with more pods than a page: the drain reads them a page at a time (memory holds
/// one page, not the node's every pod twice over) and still skips, refuses and evicts each
/// as before, and sees every evicted pod go.
#[tokio::test]
async fn a_node_with_more_pods_than_a_page_is_read_a_page_at_a_time() -> TestResult {
    let (fake, client) = fake_with_node().await?;
    let workloads = usize::try_from(PAGE_SIZE)? * 2 + 5;
    fake.add_pods((0..workloads).map(|i| {
        FakePod::new("default", &format!("web-{i:03}"), NODE).with_termination_grace_period(0)
    }));
    // Later namespaces, so on the last page.
    fake.add_pod(FakePod::new("kube-system", "aws-node-x7k2p", NODE).daemon_set());
    fake.add_pod(FakePod::new("work", "cache", NODE).with_empty_dir());
    let settings = DrainSettings {
        delete_local_data: false,
        ..fast_drain(Duration::from_secs(20))
    };

    let report = run_drain(&client, &settings, false).await?;

    assert_eq!(report.evicted.len(), workloads, "{report:?}");
    assert_eq!(
        report.skipped,
        [(
            pod_ref("kube-system", "aws-node-x7k2p"),
            SkipReason::DaemonSet
        )]
    );
    assert_eq!(
        report.refused,
        [(pod_ref("work", "cache"), RefuseReason::LocalStorage)]
    );
    assert!(report.not_terminated.is_empty(), "{report:?}");
    assert_eq!(names_on_node(&fake, NODE), ["aws-node-x7k2p", "cache"]);
    let lists: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|request| request.method == "GET" && request.path == "/api/v1/pods")
        .map(|request| request.query.unwrap_or_default())
        .collect();
    assert!(
        lists.iter().all(|query| query.contains("limit=")),
        "every list is cut into pages: {lists:?}"
    );
    let limit = format!("limit={PAGE_SIZE}");
    assert!(
        lists.iter().any(|query| query.contains(&limit)),
        "the pods to classify come {PAGE_SIZE} at a time: {lists:?}"
    );
    assert!(
        lists
            .iter()
            .filter(|query| query.contains("continue="))
            .count()
            >= 2,
        "the pages are followed: {lists:?}"
    );
    Ok(())
}

/// A pod list whose continue token expires between two pages (etcd compacted its history,
/// as it does every few minutes) is read again from its first page while the drain has
/// time: every pod is evicted exactly once, none missed and none twice.
#[tokio::test]
async fn a_continue_token_that_expires_mid_list_restarts_the_list_and_evicts_each_pod_once()
-> TestResult {
    let (fake, client) = fake_with_node().await?;
    let workloads = usize::try_from(PAGE_SIZE)? + 5;
    fake.add_pods((0..workloads).map(|i| {
        FakePod::new("default", &format!("web-{i:03}"), NODE).with_termination_grace_period(0)
    }));
    // Every answer comes late, so the compaction below lands after the first page is
    // answered and before the request for the second is read.
    fake.set_latency(Duration::from_millis(500));
    let settings = fast_drain(Duration::from_secs(20));
    let drain_task = tokio::spawn({
        let client = client.clone();
        async move { drain(&client, NODE, &settings, false).await }
    });
    let pod_lists = |fake: &FakeKube| -> Vec<(bool, u16)> {
        fake.requests()
            .into_iter()
            .filter(|request| request.method == "GET" && request.path == "/api/v1/pods")
            .map(|request| {
                let query = request.query.unwrap_or_default();
                (query.contains("continue="), request.status)
            })
            .collect()
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while pod_lists(&fake).is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    fake.compact();
    fake.set_latency(Duration::ZERO);
    let report = tokio::time::timeout(Duration::from_secs(30), drain_task).await???;

    assert!(report.is_complete(), "{report:?}");
    let lists = pod_lists(&fake);
    let expired = lists
        .iter()
        .position(|list| *list == (true, 410))
        .ok_or(format!(
            "the second page's token should have expired: {lists:?}"
        ))?;
    assert_eq!(
        lists.get(expired + 1),
        Some(&(false, 200)),
        "the list starts again from its first page: {lists:?}"
    );
    let eviction_requests = fake
        .requests()
        .iter()
        .filter(|request| request.method == "POST" && request.path.ends_with("/eviction"))
        .count();
    assert_eq!(eviction_requests, workloads, "each pod evicted once");
    assert_eq!(report.evicted.len(), workloads, "{report:?}");
    assert!(names_on_node(&fake, NODE).is_empty());
    Ok(())
}
