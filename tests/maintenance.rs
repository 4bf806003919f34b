//! NTH's other IMDS monitors through the whole agent: scheduled maintenance (and its
//! cancellation), reboot and restart, ASG lifecycle termination, and acting once per
//! notice across agent restarts. Each agent is configured from the flags a user would
//! set and started by `run::start`, exactly as the binary starts it, against an IMDS
//! simulator and a fake Kubernetes API over HTTP (no Spot Guard).

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use spot_guard::aws::AwsAutoScaling;
use spot_guard::config::Config;
use spot_guard::imds::{
    InstanceAction, REBALANCE_RECOMMENDATION_PATH, RebalanceRecommendation,
    SPOT_INSTANCE_ACTION_PATH,
};
use spot_guard::monitor::{rebalance_event_id, spot_itn_event_id};
use spot_guard::names::{
    ACTION_LABEL, ACTION_TIME_LABEL, ASG_LIFECYCLE_TAINT, CORDONED_BY_ANNOTATION, EVENT_ID_LABEL,
    EXCLUDE_FROM_LB_LABEL, HANDLED_EVENTS_ANNOTATION, OUT_OF_SERVICE_TAINT, REBALANCE_TAINT,
    SCHEDULED_MAINTENANCE_TAINT, SPOT_ITN_TAINT, UNCORDON_AFTER_REBOOT,
};
use spot_guard::report::reason;
use spot_guard::run::RunningAgent;
use spot_guard::sim::harness;
use spot_guard::sim::imds::ImdsSim;
use spot_guard::sim::kube::{FakeKube, FakePod};

const NODE: &str = "ip-10-0-3-3.ec2.internal";
const EVENT: &str = "instance-event-0d59937288b749b32";
const BOUND: Duration = Duration::from_secs(20);
/// The `noticeTime` of the rebalance recommendations served.
const NOTICE_TIME: &str = "2030-01-01T00:00:00Z";
const SPOT_ACTION: (&str, &str) = ("terminate", "2030-01-01T00:02:00Z");

struct World {
    imds: ImdsSim,
    kube: FakeKube,
    uptime: tempfile::NamedTempFile,
}

async fn world() -> World {
    spot_guard::tls::ensure_crypto_provider();
    let imds = ImdsSim::start().await.expect("IMDS simulator");
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    kube.add_node(NODE);
    kube.add_pod(FakePod::new("default", "web-1", NODE));
    kube.add_pod(FakePod::new("kube-system", "agent", NODE).daemon_set());
    let uptime = tempfile::NamedTempFile::new().expect("uptime file");
    std::fs::write(uptime.path(), "100000.00 1.00\n").expect("uptime written");
    World { imds, kube, uptime }
}

/// What `spot-guard` builds from NTH's flags with the node tainted, every IMDS monitor
/// on and a 5 s drain, plus `extra` flags.
fn config(world: &World, extra: &[&str]) -> Config {
    let uptime = format!("--uptime-from-file={}", world.uptime.path().display());
    let mut flags = vec![
        "--taint-node=true",
        "--enable-rebalance-monitoring=true",
        "--enable-spot-interruption-draining=true",
        "--enable-scheduled-event-draining=true",
        "--enable-asg-lifecycle-draining=true",
        "--node-termination-grace-period=5",
        uptime.as_str(),
    ];
    flags.extend_from_slice(extra);
    harness::config(NODE, &world.imds.url(), &flags).expect("the flags are accepted")
}

/// Starts the agent of `config` as `run` wires it, without Spot Guard.
async fn start(world: &World, config: &Config) -> RunningAgent {
    harness::start::<AwsAutoScaling>(config, &world.kube.url(), None)
        .await
        .expect("the agent starts")
}

async fn wait_handled(running: &mut RunningAgent, count: u32) {
    assert!(
        running.wait_handled(count, BOUND).await,
        "the agent finished the actions of {count} notice(s) in time"
    );
}

async fn stop(running: RunningAgent) {
    tokio::time::timeout(BOUND, running.stop())
        .await
        .expect("the agent stops in time");
}

fn scheduled(state: &str) -> serde_json::Value {
    serde_json::json!([{
        "Code": "system-reboot",
        "Description": "scheduled reboot",
        "EventId": EVENT,
        "NotBefore": "21 Jan 2030 09:00:43 GMT",
        "NotAfter": "21 Jan 2030 09:17:23 GMT",
        "NotBeforeDeadline": "",
        "State": state
    }])
}

fn rebalance_id(notice_time: &str) -> String {
    rebalance_event_id(&RebalanceRecommendation {
        notice_time: notice_time.to_owned(),
    })
}

fn node(world: &World) -> Node {
    world.kube.node(NODE).expect("node exists")
}

fn taints(node: &Node) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect()
}

fn cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

fn label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(BOUND, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// Waits until the agent's monitor has polled `path` `polls` more times from now.
async fn wait_polls(world: &World, path: &str, polls: u64) {
    let from = world.imds.gets(path);
    wait_until(
        &format!("the monitor polled {path} {polls} more times"),
        || world.imds.gets(path) >= from + polls,
    )
    .await;
}

/// After the rebalance recommendation has left IMDS: two polls of its path, the first
/// of which found it gone, so the monitor has passed its end on to the agent (a poll's
/// notices are sent before the next poll starts).
async fn wait_recommendation_gone(world: &World) {
    wait_polls(world, REBALANCE_RECOMMENDATION_PATH, 2).await;
}

fn workload_left(world: &World) -> bool {
    world
        .kube
        .pods_on_node(NODE)
        .iter()
        .any(|p| p.metadata.name.as_deref() == Some("web-1"))
}

fn events_with_reason(world: &World, wanted: &str) -> usize {
    world
        .kube
        .events()
        .iter()
        .filter(|e| e.reason.as_deref() == Some(wanted))
        .count()
}

#[tokio::test]
async fn scheduled_reboot_drains_and_its_cancellation_undoes_everything() {
    let world = world().await;
    world.imds.set_scheduled_events(scheduled("active"));
    let config = config(&world, &["--exclude-from-load-balancers=true"]);
    let mut running = start(&world, &config).await;
    wait_handled(&mut running, 1).await;
    let prepared = node(&world);
    assert_eq!(taints(&prepared), [SCHEDULED_MAINTENANCE_TAINT]);
    assert!(cordoned(&prepared));
    assert!(!workload_left(&world), "the workload pod was evicted");
    assert_eq!(label(&prepared, EVENT_ID_LABEL), Some(EVENT));
    assert_eq!(label(&prepared, ACTION_LABEL), Some(UNCORDON_AFTER_REBOOT));
    assert!(label(&prepared, ACTION_TIME_LABEL).is_some());
    assert_eq!(
        label(&prepared, EXCLUDE_FROM_LB_LABEL),
        Some("aws-node-termination-handler")
    );
    assert_eq!(annotation(&prepared, CORDONED_BY_ANNOTATION), Some(EVENT));

    world.imds.set_scheduled_events(scheduled("canceled"));
    wait_until("the node is uncordoned", || !cordoned(&node(&world))).await;
    wait_until("the NTH labels are gone", || {
        label(&node(&world), ACTION_LABEL).is_none()
    })
    .await;
    let undone = node(&world);
    assert!(taints(&undone).is_empty(), "{:?}", taints(&undone));
    assert_eq!(label(&undone, EVENT_ID_LABEL), None);
    assert_eq!(label(&undone, EXCLUDE_FROM_LB_LABEL), None);
    assert_eq!(annotation(&undone, CORDONED_BY_ANNOTATION), None);
    stop(running).await;
}

#[tokio::test]
async fn a_cordon_someone_else_set_survives_the_cancellation() {
    let world = world().await;
    world.kube.update_node(NODE, |node| {
        node.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
    });
    world.imds.set_scheduled_events(scheduled("active"));
    let config = config(&world, &[]);
    let mut running = start(&world, &config).await;
    wait_handled(&mut running, 1).await;
    assert_eq!(
        label(&node(&world), ACTION_LABEL),
        None,
        "no uncordon-after-reboot mark on a node someone else cordoned"
    );
    assert_eq!(annotation(&node(&world), CORDONED_BY_ANNOTATION), None);
    world.imds.set_scheduled_events(scheduled("completed"));
    // The undo uncordons (when it does) before it removes the taints.
    wait_until("the agent's taint is removed", || {
        taints(&node(&world)).is_empty()
    })
    .await;
    assert!(cordoned(&node(&world)), "the other cordon stays");
    stop(running).await;
}

#[tokio::test]
async fn after_the_reboot_a_restarted_agent_uncordons_the_node() {
    let world = world().await;
    world.imds.set_scheduled_events(scheduled("active"));
    let config = config(&world, &[]);
    let mut running = start(&world, &config).await;
    wait_handled(&mut running, 1).await;
    stop(running).await;
    assert!(cordoned(&node(&world)));

    // An hour later the instance has rebooted: IMDS no longer lists the event and the
    // uptime is shorter than the mark's age.
    world.kube.update_node(NODE, |node| {
        let hour_ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 3600;
        node.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(ACTION_TIME_LABEL.to_string(), hour_ago.to_string());
    });
    world.imds.set_scheduled_events(serde_json::json!([]));
    std::fs::write(world.uptime.path(), "300.00 1.00\n").unwrap();
    let running = start(&world, &config).await;
    wait_until("the node is uncordoned", || !cordoned(&node(&world))).await;
    wait_until("the NTH labels are gone", || {
        label(&node(&world), ACTION_LABEL).is_none()
    })
    .await;
    assert!(taints(&node(&world)).is_empty());
    assert_eq!(annotation(&node(&world), CORDONED_BY_ANNOTATION), None);
    stop(running).await;
}

#[tokio::test]
async fn a_restart_before_the_reboot_keeps_the_node_cordoned() {
    let world = world().await;
    world.imds.set_scheduled_events(scheduled("active"));
    let config = config(&world, &[]);
    let mut running = start(&world, &config).await;
    wait_handled(&mut running, 1).await;
    stop(running).await;
    assert!(cordoned(&node(&world)));
    assert_eq!(
        annotation(&node(&world), CORDONED_BY_ANNOTATION),
        Some(EVENT)
    );

    // Uptime far longer than the mark's age: the reboot has not happened. The restarted
    // agent checks for a reboot before it takes any notice, so its handling of a
    // rebalance recommendation served from the start shows that check is over.
    world.imds.set_rebalance(Some(NOTICE_TIME));
    let mut running = start(&world, &config).await;
    wait_handled(&mut running, 1).await;
    let kept = node(&world);
    assert!(cordoned(&kept));
    assert_eq!(label(&kept, ACTION_LABEL), Some(UNCORDON_AFTER_REBOOT));
    assert_eq!(label(&kept, EVENT_ID_LABEL), Some(EVENT));
    assert_eq!(
        annotation(&kept, CORDONED_BY_ANNOTATION),
        Some(EVENT),
        "never uncordoned: the recommendation's cordon found the node still cordoned"
    );
    assert_eq!(
        taints(&kept),
        [SCHEDULED_MAINTENANCE_TAINT, REBALANCE_TAINT],
        "the maintenance taint stays"
    );
    stop(running).await;
}

#[tokio::test]
async fn asg_lifecycle_termination_taints_drains_and_marks_out_of_service() {
    let world = world().await;
    world.imds.set_lifecycle_state(Some("Terminated"));
    let config = config(&world, &["--enable-out-of-service-taint=true"]);
    let mut running = start(&world, &config).await;
    wait_handled(&mut running, 1).await;
    let drained = node(&world);
    assert_eq!(
        taints(&drained),
        [ASG_LIFECYCLE_TAINT, OUT_OF_SERVICE_TAINT]
    );
    assert!(cordoned(&drained));
    assert!(!workload_left(&world));
    stop(running).await;
}

#[tokio::test]
async fn a_restarted_agent_does_not_act_twice_on_the_same_notice() {
    let world = world().await;
    world.imds.set_spot_action(Some(SPOT_ACTION));
    let spot_id = spot_itn_event_id(&InstanceAction {
        action: SPOT_ACTION.0.to_owned(),
        time: SPOT_ACTION.1.to_owned(),
    });
    let config = config(&world, &["--emit-kubernetes-events=true"]);
    let mut running = start(&world, &config).await;
    wait_handled(&mut running, 1).await;
    stop(running).await;
    let handled = node(&world);
    assert_eq!(
        annotation(&handled, HANDLED_EVENTS_ANNOTATION),
        Some(spot_id.as_str())
    );
    assert_eq!(taints(&handled), [SPOT_ITN_TAINT]);
    assert!(!workload_left(&world));
    assert_eq!(events_with_reason(&world, reason::SPOT_INTERRUPTION), 1);
    assert_eq!(events_with_reason(&world, reason::CORDON_AND_DRAIN), 1);

    // A pod has landed since, which a second drain would evict. IMDS still serves the
    // spot notice and now also a rebalance recommendation, which the monitor passes on
    // after the spot notice of the same poll: once the recommendation is handled, the
    // restarted agent has been past the spot notice.
    world.kube.add_pod(FakePod::new("default", "web-2", NODE));
    world.imds.set_rebalance(Some(NOTICE_TIME));
    let requests_before = world.kube.requests().len();
    let evictions_before = world.kube.evictions().len();
    let mut running = start(&world, &config).await;
    wait_handled(&mut running, 1).await;
    assert!(
        running.reporter.flush(BOUND).await,
        "the restarted agent's events are written"
    );
    stop(running).await;
    assert!(
        world.imds.gets(SPOT_INSTANCE_ACTION_PATH) >= 2,
        "the spot notice was polled"
    );
    assert_eq!(
        world.kube.evictions().len(),
        evictions_before,
        "no second drain"
    );
    assert!(
        world
            .kube
            .pods_on_node(NODE)
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some("web-2")),
        "the new pod stays"
    );
    let requests = world.kube.requests();
    let writes: Vec<String> = requests[requests_before..]
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        writes
            .iter()
            .all(|w| w == &format!("PATCH /api/v1/nodes/{NODE}") || w.ends_with("/events")),
        "only the recommendation's node writes and events: {writes:?}"
    );
    assert_eq!(
        events_with_reason(&world, reason::SPOT_INTERRUPTION),
        1,
        "the spot notice was not handled again"
    );
    assert_eq!(
        events_with_reason(&world, reason::CORDON_AND_DRAIN),
        1,
        "no second cordon and drain"
    );
    assert_eq!(
        events_with_reason(&world, reason::REBALANCE_RECOMMENDATION),
        1,
        "the recommendation was handled"
    );
    let after = node(&world);
    assert_eq!(taints(&after), [SPOT_ITN_TAINT, REBALANCE_TAINT]);
    let handled_events = annotation(&after, HANDLED_EVENTS_ANNOTATION).unwrap_or_default();
    assert_eq!(
        handled_events.matches(spot_id.as_str()).count(),
        1,
        "{handled_events}"
    );
}

#[tokio::test]
async fn a_rebalance_that_passes_without_interruption_is_undone_when_asked() {
    let world = world().await;
    world.imds.set_rebalance(Some(NOTICE_TIME));
    let mut config = config(&world, &[]);
    config.rebalance_uncordon_window = Some(Duration::from_millis(400));
    let mut running = start(&world, &config).await;
    wait_handled(&mut running, 1).await;
    assert!(cordoned(&node(&world)));
    assert_eq!(taints(&node(&world)), [REBALANCE_TAINT]);
    assert_eq!(
        annotation(&node(&world), CORDONED_BY_ANNOTATION),
        Some(rebalance_id(NOTICE_TIME).as_str())
    );
    assert!(workload_left(&world), "a rebalance alone only cordons");

    world.imds.set_rebalance(None);
    wait_until("the node is uncordoned", || !cordoned(&node(&world))).await;
    wait_until("the rebalance taint is gone", || {
        taints(&node(&world)).is_empty()
    })
    .await;
    assert_eq!(annotation(&node(&world), CORDONED_BY_ANNOTATION), None);
    stop(running).await;
}

#[tokio::test]
async fn without_the_window_a_rebalance_cordon_stays_as_in_nth() {
    let world = world().await;
    world.imds.set_rebalance(Some(NOTICE_TIME));
    let config = config(&world, &[]);
    assert_eq!(config.rebalance_uncordon_window, None);
    let mut running = start(&world, &config).await;
    wait_handled(&mut running, 1).await;
    world.imds.set_rebalance(None);
    wait_recommendation_gone(&world).await;
    // A later recommendation is taken only after the end of the first one: its
    // handling shows the agent has been past the point where a window would have
    // started the undo. (Unlike an interruption, it cancels no pending undo.)
    let later = "2030-01-01T00:05:00Z";
    world.imds.set_rebalance(Some(later));
    wait_handled(&mut running, 2).await;
    let kept = node(&world);
    assert!(cordoned(&kept));
    assert_eq!(taints(&kept), [REBALANCE_TAINT]);
    assert_eq!(
        annotation(&kept, CORDONED_BY_ANNOTATION),
        Some(rebalance_id(NOTICE_TIME).as_str()),
        "the first recommendation's cordon was never undone"
    );
    assert!(workload_left(&world));
    stop(running).await;
}

#[tokio::test]
async fn an_interruption_within_the_window_keeps_the_node_cordoned_and_drains_it() {
    let world = world().await;
    world.imds.set_rebalance(Some(NOTICE_TIME));
    let window = Duration::from_secs(2);
    let mut config = config(&world, &[]);
    config.rebalance_uncordon_window = Some(window);
    let mut running = start(&world, &config).await;
    wait_handled(&mut running, 1).await;
    // The recommendation was received before this: the undo would come by then.
    let undo_due = tokio::time::Instant::now() + window;
    world.imds.set_rebalance(None);
    // The agent has the recommendation's end (and an undo pending) before the
    // interruption arrives.
    wait_recommendation_gone(&world).await;
    world.imds.set_spot_action(Some(SPOT_ACTION));
    wait_handled(&mut running, 2).await;
    assert!(!workload_left(&world), "the interruption drained the node");
    // Past the moment the cancelled undo was due, with the agent still polling.
    tokio::time::timeout(BOUND, tokio::time::sleep_until(undo_due))
        .await
        .expect("bounded");
    wait_polls(&world, SPOT_INSTANCE_ACTION_PATH, 3).await;
    let kept = node(&world);
    assert!(
        cordoned(&kept),
        "the undo was cancelled by the interruption"
    );
    assert_eq!(
        annotation(&kept, CORDONED_BY_ANNOTATION),
        Some(rebalance_id(NOTICE_TIME).as_str())
    );
    assert_eq!(taints(&kept), [REBALANCE_TAINT, SPOT_ITN_TAINT]);
    assert!(!workload_left(&world));
    stop(running).await;
}
