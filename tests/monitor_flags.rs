//! Which IMDS monitors run for which flags, as NTH starts them
//! (cmd/node-termination-handler.go): the spot ITN monitor with
//! ENABLE_SPOT_INTERRUPTION_DRAINING, the scheduled-event monitor with
//! ENABLE_SCHEDULED_EVENT_DRAINING, the ASG lifecycle monitor with
//! ENABLE_ASG_LIFECYCLE_DRAINING, and the rebalance monitor when ENABLE_REBALANCE_MONITORING
//! *or* ENABLE_REBALANCE_DRAINING is set. Each agent is configured from flags and started by
//! `run::start` through the harness, against an IMDS simulator and a fake Kubernetes API.
//!
//! A monitor that is off never reads its IMDS path, so "nothing happened" is proven by
//! the simulator's request counts once another monitor has polled several times.

use std::time::Duration;

use spot_guard::aws::AwsAutoScaling;
use spot_guard::imds::{
    ASG_TARGET_LIFECYCLE_STATE_PATH, REBALANCE_RECOMMENDATION_PATH, SCHEDULED_EVENTS_PATH,
    SPOT_INSTANCE_ACTION_PATH,
};
use spot_guard::run::RunningAgent;
use spot_guard::sim::harness;
use spot_guard::sim::imds::ImdsSim;
use spot_guard::sim::kube::{FakeKube, FakePod};

const NODE: &str = "ip-10-0-4-4.ec2.internal";
const BOUND: Duration = Duration::from_secs(20);

struct World {
    imds: ImdsSim,
    kube: FakeKube,
}

async fn world() -> World {
    spot_guard::tls::ensure_crypto_provider();
    let imds = ImdsSim::start().await.expect("IMDS simulator");
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    kube.add_node(NODE);
    kube.add_pod(FakePod::new("default", "web-1", NODE));
    World { imds, kube }
}

/// Starts the agent `spot-guard` builds from exactly these NTH flags (a 5 s drain).
async fn start(world: &World, flags: &[&str]) -> RunningAgent {
    let mut all = vec!["--node-termination-grace-period=5"];
    all.extend_from_slice(flags);
    let config = harness::config(NODE, &world.imds.url(), &all).expect("the flags are accepted");
    harness::start::<AwsAutoScaling>(&config, &world.kube.url(), None)
        .await
        .expect("the agent starts")
}

async fn stop(running: RunningAgent) {
    tokio::time::timeout(BOUND, running.stop())
        .await
        .expect("the agent stops in time");
}

fn cordoned(world: &World) -> bool {
    let node = world.kube.node(NODE).expect("node exists");
    node.spec
        .and_then(|spec| spec.unschedulable)
        .unwrap_or(false)
}

fn workload_on_node(world: &World) -> bool {
    world
        .kube
        .pods_on_node(NODE)
        .iter()
        .any(|pod| pod.metadata.name.as_deref() == Some("web-1"))
}

/// A notice IMDS serves, at the path its monitor polls.
#[derive(Clone, Copy)]
enum Notice {
    Rebalance,
    SpotInterruption,
    ScheduledReboot,
    LifecycleTerminated,
}

impl Notice {
    fn serve(self, world: &World) {
        let imds = &world.imds;
        match self {
            Notice::Rebalance => imds.set_rebalance(Some("2030-01-01T00:00:00Z")),
            Notice::SpotInterruption => {
                imds.set_spot_action(Some(("terminate", "2030-01-01T00:02:00Z")));
            }
            Notice::ScheduledReboot => imds.set_scheduled_events(serde_json::json!([{
                "Code": "system-reboot",
                "Description": "scheduled reboot",
                "EventId": "instance-event-0d59937288b749b32",
                "NotBefore": "21 Jan 2030 09:00:43 GMT",
                "NotAfter": "21 Jan 2030 09:17:23 GMT",
                "NotBeforeDeadline": "",
                "State": "active"
            }])),
            Notice::LifecycleTerminated => imds.set_lifecycle_state(Some("Terminated")),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Notice::Rebalance => REBALANCE_RECOMMENDATION_PATH,
            Notice::SpotInterruption => SPOT_INSTANCE_ACTION_PATH,
            Notice::ScheduledReboot => SCHEDULED_EVENTS_PATH,
            Notice::LifecycleTerminated => ASG_TARGET_LIFECYCLE_STATE_PATH,
        }
    }
}

/// What the node ends as.
enum Outcome {
    Drained,
    CordonedOnly,
    /// The notice's monitor is off: its path is never read while the monitor polling
    /// `running` (another monitor that is on) polls four times, and the node is untouched.
    Unread {
        running: &'static str,
    },
}
use Outcome::{CordonedOnly, Drained, Unread};

/// Given IMDS serving `notice`, an agent started with `flags` leaves the node as `outcome`.
async fn check(notice: Notice, flags: &[&str], outcome: Outcome) {
    let world = world().await;
    notice.serve(&world);
    check_agent(&world, notice, flags, outcome).await;
}

async fn check_agent(world: &World, notice: Notice, flags: &[&str], outcome: Outcome) {
    let mut agent = start(world, flags).await;
    match outcome {
        Drained | CordonedOnly => {
            assert!(
                agent.wait_handled(1, BOUND).await,
                "the agent finished acting on the notice in time"
            );
            assert!(cordoned(world), "the node is cordoned");
            if matches!(outcome, Drained) {
                assert!(!workload_on_node(world), "the node is drained");
            } else {
                assert!(workload_on_node(world), "the node is not drained");
            }
        }
        Unread { running } => {
            harness::eventually(
                &format!("the monitor polled {running} 4 times"),
                BOUND,
                || world.imds.gets(running) >= 4,
            )
            .await;
            assert_eq!(world.imds.gets(notice.path()), 0);
            assert!(!cordoned(world), "the notice is ignored");
        }
    }
    stop(agent).await;
}

#[tokio::test]
async fn rebalance_draining_alone_starts_the_rebalance_monitor_and_drains() {
    let flags = [
        "--enable-rebalance-draining=true",
        "--enable-spot-interruption-draining=false",
        "--enable-scheduled-event-draining=false",
    ];
    check(Notice::Rebalance, &flags, Drained).await;
}

#[tokio::test]
async fn rebalance_monitoring_alone_cordons_without_draining() {
    let flags = ["--enable-rebalance-monitoring=true"];
    check(Notice::Rebalance, &flags, CordonedOnly).await;
}

#[tokio::test]
async fn rebalance_monitoring_and_draining_drain() {
    let flags = [
        "--enable-rebalance-monitoring=true",
        "--enable-rebalance-draining=true",
    ];
    check(Notice::Rebalance, &flags, Drained).await;
}

#[tokio::test]
async fn neither_rebalance_flag_leaves_recommendations_unread() {
    // NTH's defaults: spot ITN and scheduled events on, rebalance off.
    let running = SPOT_INSTANCE_ACTION_PATH;
    check(Notice::Rebalance, &[], Unread { running }).await;
}

#[tokio::test]
async fn spot_interruption_draining_is_on_by_default_and_drains() {
    check(Notice::SpotInterruption, &[], Drained).await;
}

#[tokio::test]
async fn spot_interruption_draining_off_leaves_notices_unread() {
    let flags = [
        "--enable-spot-interruption-draining=false",
        "--enable-rebalance-monitoring=true",
    ];
    let running = REBALANCE_RECOMMENDATION_PATH;
    check(Notice::SpotInterruption, &flags, Unread { running }).await;
}

#[tokio::test]
async fn scheduled_event_draining_is_on_by_default_and_drains() {
    check(Notice::ScheduledReboot, &[], Drained).await;
}

#[tokio::test]
async fn scheduled_event_draining_off_leaves_events_unread() {
    let flags = ["--enable-scheduled-event-draining=false"];
    let running = SPOT_INSTANCE_ACTION_PATH;
    check(Notice::ScheduledReboot, &flags, Unread { running }).await;
}

#[tokio::test]
async fn asg_lifecycle_draining_is_off_by_default_and_on_when_asked() {
    let world = world().await;
    let notice = Notice::LifecycleTerminated;
    notice.serve(&world);
    let running = SPOT_INSTANCE_ACTION_PATH;
    check_agent(&world, notice, &[], Unread { running }).await;
    let flags = ["--enable-asg-lifecycle-draining=true"];
    check_agent(&world, notice, &flags, Drained).await;
}

#[tokio::test]
async fn spot_guard_accepts_rebalance_draining_alone() {
    let config = harness::config(
        NODE,
        "http://127.0.0.1:1",
        &[
            "--enable-rebalance-draining=true",
            "--enable-spot-guard=true",
            "--spot-asg-name=spot",
            "--on-demand-asg-name=od",
        ],
    )
    .expect("Spot Guard with ENABLE_REBALANCE_DRAINING alone is accepted, as NTH watches rebalance recommendations then");
    assert!(config.spot_guard.is_some());
    let refused = harness::config(
        NODE,
        "http://127.0.0.1:1",
        &[
            "--enable-spot-guard=true",
            "--spot-asg-name=spot",
            "--on-demand-asg-name=od",
        ],
    )
    .expect_err("without either rebalance flag Spot Guard would never act");
    assert!(
        refused.to_string().contains("ENABLE_REBALANCE_DRAINING"),
        "{refused}"
    );
}
