//! NTH's other IMDS monitors through the whole agent: scheduled maintenance (and its
//! cancellation), reboot and restart, ASG lifecycle termination, and acting once per
//! notice across agent restarts. IMDS simulator and fake Kubernetes API over HTTP.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use spot_guard::agent::{Agent, AgentSettings};
use spot_guard::aws::AwsAutoScaling;
use spot_guard::drain::DrainSettings;
use spot_guard::flow::{
    ASG_LIFECYCLE_TAINT, ActionSettings, EXCLUDE_FROM_LB_LABEL, OUT_OF_SERVICE_TAINT,
    SCHEDULED_MAINTENANCE_TAINT,
};
use spot_guard::imds::ImdsClient;
use spot_guard::monitor::{self, MonitorSettings};
use spot_guard::node;
use spot_guard::record::{
    ACTION_LABEL, ACTION_TIME_LABEL, CORDONED_BY_ANNOTATION, EVENT_ID_LABEL,
    HANDLED_EVENTS_ANNOTATION, UNCORDON_AFTER_REBOOT,
};
use spot_guard::sim::imds::ImdsSim;
use spot_guard::sim::kube::{FakeKube, FakePod};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const NODE: &str = "ip-10-0-3-3.ec2.internal";
const EVENT: &str = "instance-event-0d59937288b749b32";
const BOUND: Duration = Duration::from_secs(20);

struct World {
    imds: ImdsSim,
    kube: FakeKube,
    uptime: tempfile::NamedTempFile,
}

async fn world() -> World {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let imds = ImdsSim::start().await.expect("IMDS simulator");
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    kube.add_node(NODE);
    kube.add_pod(FakePod::new("default", "web-1", NODE));
    kube.add_pod(FakePod::new("kube-system", "agent", NODE).daemon_set());
    let uptime = tempfile::NamedTempFile::new().expect("uptime file");
    std::fs::write(uptime.path(), "100000.00 1.00\n").expect("uptime written");
    World { imds, kube, uptime }
}

fn settings(world: &World, actions: ActionSettings) -> AgentSettings {
    AgentSettings {
        node_name: NODE.into(),
        dry_run: false,
        actions,
        drain: DrainSettings {
            timeout: Duration::from_secs(5),
            eviction_retry_interval: Duration::from_millis(50),
            poll_interval: Duration::from_millis(50),
            ..DrainSettings::default()
        },
        uptime_file: world.uptime.path().to_string_lossy().into_owned(),
    }
}

fn nth_actions() -> ActionSettings {
    ActionSettings {
        taint_node: true,
        ..ActionSettings::default()
    }
}

struct Running {
    shutdown: CancellationToken,
    handled: tokio::sync::watch::Receiver<u32>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    async fn wait_handled(&mut self, count: u32) {
        tokio::time::timeout(BOUND, self.handled.wait_for(|n| *n >= count))
            .await
            .expect("the agent finished its actions in time")
            .expect("agent alive");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(BOUND, task).await;
        }
    }
}

fn start(world: &World, actions: ActionSettings) -> Running {
    start_with_window(world, actions, None)
}

fn start_with_window(
    world: &World,
    actions: ActionSettings,
    rebalance_uncordon_window: Option<Duration>,
) -> Running {
    let imds = ImdsClient::builder(&world.imds.url())
        .tries(2)
        .retry_base_delay(Duration::from_millis(10))
        .build()
        .expect("IMDS client");
    let kube = node::client_for_url(&world.kube.url()).expect("kube client");
    let agent = Agent::<AwsAutoScaling>::new(settings(world, actions), kube, None)
        .with_rebalance_uncordon_window(rebalance_uncordon_window);
    let handled = agent.handled();
    let shutdown = CancellationToken::new();
    let (tx, rx) = mpsc::channel(16);
    let monitor = tokio::spawn({
        let shutdown = shutdown.clone();
        let imds = imds.clone();
        async move {
            let _ = monitor::run(
                imds,
                MonitorSettings {
                    interval: Duration::from_millis(50),
                    rebalance: true,
                    spot_interruption: true,
                    scheduled_events: true,
                    asg_lifecycle: true,
                },
                tx,
                shutdown,
            )
            .await;
        }
    });
    let agent = tokio::spawn(agent.run(rx, shutdown.clone()));
    Running {
        shutdown,
        handled,
        tasks: vec![monitor, agent],
    }
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
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

fn workload_left(world: &World) -> bool {
    world
        .kube
        .pods_on_node(NODE)
        .iter()
        .any(|p| p.metadata.name.as_deref() == Some("web-1"))
}

#[tokio::test]
async fn scheduled_reboot_drains_and_its_cancellation_undoes_everything() {
    let world = world().await;
    world.imds.set_scheduled_events(scheduled("active"));
    let mut running = start(
        &world,
        ActionSettings {
            exclude_from_load_balancers: true,
            ..nth_actions()
        },
    );
    running.wait_handled(1).await;
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
    running.stop().await;
}

#[tokio::test]
async fn a_cordon_someone_else_set_survives_the_cancellation() {
    let world = world().await;
    world.kube.update_node(NODE, |node| {
        node.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
    });
    world.imds.set_scheduled_events(scheduled("active"));
    let mut running = start(&world, nth_actions());
    running.wait_handled(1).await;
    assert_eq!(
        label(&node(&world), ACTION_LABEL),
        None,
        "no uncordon-after-reboot mark on a node someone else cordoned"
    );
    world.imds.set_scheduled_events(scheduled("completed"));
    wait_until("the agent's taint is removed", || {
        taints(&node(&world)).is_empty()
    })
    .await;
    assert!(cordoned(&node(&world)), "the other cordon stays");
    running.stop().await;
}

#[tokio::test]
async fn after_the_reboot_a_restarted_agent_uncordons_the_node() {
    let world = world().await;
    world.imds.set_scheduled_events(scheduled("active"));
    let mut running = start(&world, nth_actions());
    running.wait_handled(1).await;
    running.stop().await;
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
    let running = start(&world, nth_actions());
    wait_until("the node is uncordoned", || !cordoned(&node(&world))).await;
    wait_until("the NTH labels are gone", || {
        label(&node(&world), ACTION_LABEL).is_none()
    })
    .await;
    assert!(taints(&node(&world)).is_empty());
    running.stop().await;
}

#[tokio::test]
async fn a_restart_before_the_reboot_keeps_the_node_cordoned() {
    let world = world().await;
    world.imds.set_scheduled_events(scheduled("active"));
    let mut running = start(&world, nth_actions());
    running.wait_handled(1).await;
    running.stop().await;
    // Uptime far longer than the mark's age: the reboot has not happened.
    let running = start(&world, nth_actions());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cordoned(&node(&world)));
    assert_eq!(
        label(&node(&world), ACTION_LABEL),
        Some(UNCORDON_AFTER_REBOOT)
    );
    running.stop().await;
}

#[tokio::test]
async fn asg_lifecycle_termination_taints_drains_and_marks_out_of_service() {
    let world = world().await;
    world.imds.set_lifecycle_state(Some("Terminated"));
    let mut running = start(
        &world,
        ActionSettings {
            enable_out_of_service_taint: true,
            ..nth_actions()
        },
    );
    running.wait_handled(1).await;
    let drained = node(&world);
    assert_eq!(
        taints(&drained),
        [ASG_LIFECYCLE_TAINT, OUT_OF_SERVICE_TAINT]
    );
    assert!(cordoned(&drained));
    assert!(!workload_left(&world));
    running.stop().await;
}

#[tokio::test]
async fn a_restarted_agent_does_not_act_twice_on_the_same_notice() {
    let world = world().await;
    world
        .imds
        .set_spot_action(Some(("terminate", "2030-01-01T00:00:00Z")));
    let mut running = start(&world, nth_actions());
    running.wait_handled(1).await;
    running.stop().await;
    let handled = node(&world);
    assert!(
        annotation(&handled, HANDLED_EVENTS_ANNOTATION).is_some_and(|v| v.starts_with("spot-itn-"))
    );
    let writes_before = world
        .kube
        .requests()
        .iter()
        .filter(|r| r.method != "GET")
        .count();

    let running = start(&world, nth_actions());
    // Long enough for many polls: the notice is still served by IMDS.
    tokio::time::sleep(Duration::from_millis(600)).await;
    running.stop().await;
    let writes_after = world
        .kube
        .requests()
        .iter()
        .filter(|r| r.method != "GET")
        .count();
    assert_eq!(
        writes_before, writes_after,
        "no second taint, cordon or drain"
    );
}

const REBALANCE_TAINT: &str = "aws-node-termination-handler/rebalance-recommendation";

#[tokio::test]
async fn a_rebalance_that_passes_without_interruption_is_undone_when_asked() {
    let world = world().await;
    world.imds.set_rebalance(Some("2030-01-01T00:00:00Z"));
    let mut running = start_with_window(&world, nth_actions(), Some(Duration::from_millis(400)));
    running.wait_handled(1).await;
    assert!(cordoned(&node(&world)));
    assert_eq!(taints(&node(&world)), [REBALANCE_TAINT]);
    assert!(workload_left(&world), "a rebalance alone only cordons");

    world.imds.set_rebalance(None);
    wait_until("the node is uncordoned", || !cordoned(&node(&world))).await;
    wait_until("the rebalance taint is gone", || {
        taints(&node(&world)).is_empty()
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn without_the_window_a_rebalance_cordon_stays_as_in_nth() {
    let world = world().await;
    world.imds.set_rebalance(Some("2030-01-01T00:00:00Z"));
    let mut running = start(&world, nth_actions());
    running.wait_handled(1).await;
    world.imds.set_rebalance(None);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(cordoned(&node(&world)));
    assert_eq!(taints(&node(&world)), [REBALANCE_TAINT]);
    running.stop().await;
}

#[tokio::test]
async fn an_interruption_within_the_window_keeps_the_node_cordoned_and_drains_it() {
    let world = world().await;
    world.imds.set_rebalance(Some("2030-01-01T00:00:00Z"));
    let mut running = start_with_window(&world, nth_actions(), Some(Duration::from_secs(2)));
    running.wait_handled(1).await;
    world.imds.set_rebalance(None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    world
        .imds
        .set_spot_action(Some(("terminate", "2030-01-01T00:02:00Z")));
    running.wait_handled(2).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        cordoned(&node(&world)),
        "the undo was cancelled by the interruption"
    );
    assert!(!workload_left(&world));
    running.stop().await;
}
