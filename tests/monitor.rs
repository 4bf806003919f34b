//! The IMDS polling loop against the IMDS simulator: each notice delivered once, the most
//! urgent first, through IMDS outages, and a prompt stop.

use std::time::Duration;

use spot_guard::imds::{
    ImdsClient, REBALANCE_RECOMMENDATION_PATH, RebalanceRecommendation, SPOT_INSTANCE_ACTION_PATH,
};
use spot_guard::monitor::{self, MonitorError, MonitorSettings, Notice};
use spot_guard::report::Liveness;
use spot_guard::sim::imds::ImdsSim;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const POLL: Duration = Duration::from_millis(50);
const BOUND: Duration = Duration::from_secs(20);
const NOTICE_TIME: &str = "2020-10-27T08:22:00Z";

struct Running {
    sim: ImdsSim,
    notices: mpsc::Receiver<Notice>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), MonitorError>>,
    liveness: Liveness,
}

async fn start_sim() -> ImdsSim {
    spot_guard::tls::ensure_crypto_provider();
    ImdsSim::start().await.expect("start IMDS simulator")
}

fn start_monitor(sim: ImdsSim, rebalance: bool, spot_interruption: bool) -> Running {
    start_monitor_with(
        sim,
        MonitorSettings {
            interval: POLL,
            rebalance,
            spot_interruption,
            scheduled_events: false,
            asg_lifecycle: false,
        },
    )
}

fn start_monitor_with(sim: ImdsSim, settings: MonitorSettings) -> Running {
    let imds = ImdsClient::builder(&sim.url())
        .tries(2)
        .retry_base_delay(Duration::from_millis(10))
        .request_timeout(Duration::from_millis(500))
        .build()
        .expect("build IMDS client");
    let (sender, notices) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let liveness = Liveness::default();
    let task = tokio::spawn(monitor::run_with_liveness(
        imds,
        settings,
        sender,
        shutdown.clone(),
        liveness.clone(),
    ));
    Running {
        sim,
        notices,
        shutdown,
        task,
        liveness,
    }
}

impl Running {
    async fn next_notice(&mut self) -> Notice {
        tokio::time::timeout(BOUND, self.notices.recv())
            .await
            .expect("no notice in time")
            .expect("monitor closed the channel")
    }

    /// Waits until the monitor has read `path` `more` more times, so absence can be asserted.
    async fn wait_for_polls(&self, path: &str, more: u64) {
        let target = self.sim.gets(path) + more;
        tokio::time::timeout(BOUND, async {
            while self.sim.gets(path) < target {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("monitor stopped polling");
    }

    fn assert_nothing_sent(&mut self) {
        if let Ok(notice) = self.notices.try_recv() {
            panic!("unexpected notice {notice:?}");
        }
    }

    async fn stop(self) -> Result<(), MonitorError> {
        self.shutdown.cancel();
        tokio::time::timeout(BOUND, self.task)
            .await
            .expect("monitor did not stop after cancellation")
            .expect("monitor task panicked")
    }
}

fn rebalance_notice(notice_time: &str) -> Notice {
    Notice::rebalance(&RebalanceRecommendation {
        notice_time: notice_time.to_string(),
    })
}

#[tokio::test]
async fn rebalance_set_mid_run_is_sent_exactly_once() {
    let mut running = start_monitor(start_sim().await, true, true);
    running
        .wait_for_polls(REBALANCE_RECOMMENDATION_PATH, 3)
        .await;
    running.assert_nothing_sent();

    running.sim.set_rebalance(Some(NOTICE_TIME));
    let notice = running.next_notice().await;
    running
        .wait_for_polls(REBALANCE_RECOMMENDATION_PATH, 10)
        .await;

    assert_eq!(notice, rebalance_notice(NOTICE_TIME));
    running.assert_nothing_sent();
    running.stop().await.expect("clean stop");
}

#[tokio::test]
async fn reappearing_notice_is_not_resent_but_a_new_notice_time_is() {
    let mut running = start_monitor(start_sim().await, true, false);
    running.sim.set_rebalance(Some(NOTICE_TIME));
    let first = running.next_notice().await;

    running.sim.set_rebalance(None);
    assert_eq!(
        running.next_notice().await,
        Notice::RebalanceRecommendationCleared {
            event_id: first.event_id().to_string()
        },
        "its disappearance is told once"
    );
    running
        .wait_for_polls(REBALANCE_RECOMMENDATION_PATH, 3)
        .await;
    running.assert_nothing_sent();
    running.sim.set_rebalance(Some(NOTICE_TIME));
    running
        .wait_for_polls(REBALANCE_RECOMMENDATION_PATH, 3)
        .await;
    running.assert_nothing_sent();

    running.sim.set_rebalance(Some("2020-10-27T09:00:00Z"));
    let second = running.next_notice().await;

    assert_eq!(second, rebalance_notice("2020-10-27T09:00:00Z"));
    assert_ne!(first.event_id(), second.event_id());
    running.stop().await.expect("clean stop");
}

#[tokio::test]
async fn spot_interruption_is_sent() {
    let mut running = start_monitor(start_sim().await, true, true);
    running
        .sim
        .set_spot_action(Some(("terminate", "2017-09-18T08:22:00Z")));

    let notice = running.next_notice().await;

    let Notice::SpotInterruption {
        event_id,
        action,
        time,
    } = notice
    else {
        panic!("expected a spot interruption, got {notice:?}");
    };
    assert_eq!(action, "terminate");
    assert_eq!(time, "2017-09-18T08:22:00Z");
    assert_nth_event_id(&event_id, "spot-itn-");
    running.stop().await.expect("clean stop");
}

#[tokio::test]
async fn spot_interruption_comes_before_rebalance_in_the_same_poll() {
    let sim = start_sim().await;
    sim.set_rebalance(Some(NOTICE_TIME));
    sim.set_spot_action(Some(("stop", "2017-09-18T08:22:00Z")));
    let mut running = start_monitor(sim, true, true);

    let first = running.next_notice().await;
    let second = running.next_notice().await;

    assert!(
        matches!(first, Notice::SpotInterruption { .. }),
        "{first:?}"
    );
    assert_eq!(second, rebalance_notice(NOTICE_TIME));
    running.stop().await.expect("clean stop");
}

#[tokio::test]
async fn disabled_spot_monitor_neither_reads_nor_sends_interruptions() {
    let sim = start_sim().await;
    sim.set_spot_action(Some(("terminate", "2017-09-18T08:22:00Z")));
    let mut running = start_monitor(sim, true, false);
    running
        .wait_for_polls(REBALANCE_RECOMMENDATION_PATH, 3)
        .await;
    running.sim.set_rebalance(Some(NOTICE_TIME));

    let notice = running.next_notice().await;

    assert_eq!(notice, rebalance_notice(NOTICE_TIME));
    assert_eq!(running.sim.gets(SPOT_INSTANCE_ACTION_PATH), 0);
    running.stop().await.expect("clean stop");
}

#[tokio::test]
async fn disabled_rebalance_monitor_neither_reads_nor_sends_recommendations() {
    let sim = start_sim().await;
    sim.set_rebalance(Some(NOTICE_TIME));
    let mut running = start_monitor(sim, false, true);
    running.wait_for_polls(SPOT_INSTANCE_ACTION_PATH, 3).await;
    running.assert_nothing_sent();
    running
        .sim
        .set_spot_action(Some(("terminate", "2017-09-18T08:22:00Z")));

    let notice = running.next_notice().await;

    assert!(
        matches!(notice, Notice::SpotInterruption { .. }),
        "{notice:?}"
    );
    assert_eq!(running.sim.gets(REBALANCE_RECOMMENDATION_PATH), 0);
    running.stop().await.expect("clean stop");
}

#[tokio::test]
async fn with_every_monitor_disabled_nothing_is_read_or_sent() {
    let sim = start_sim().await;
    sim.set_rebalance(Some(NOTICE_TIME));
    sim.set_spot_action(Some(("terminate", "2017-09-18T08:22:00Z")));
    let mut running = start_monitor(sim, false, false);

    tokio::time::sleep(POLL * 6).await;

    running.assert_nothing_sent();
    assert_eq!(running.sim.gets(REBALANCE_RECOMMENDATION_PATH), 0);
    assert_eq!(running.sim.gets(SPOT_INSTANCE_ACTION_PATH), 0);
    running.stop().await.expect("clean stop");
}

#[tokio::test]
async fn monitor_survives_an_imds_outage_and_then_delivers() {
    let sim = start_sim().await;
    sim.set_down(true);
    sim.set_rebalance(Some(NOTICE_TIME));
    let mut running = start_monitor(sim, true, true);
    running
        .wait_for_polls(REBALANCE_RECOMMENDATION_PATH, 6)
        .await;
    running.assert_nothing_sent();
    assert!(!running.task.is_finished(), "monitor gave up on IMDS");

    running.sim.set_down(false);
    let notice = running.next_notice().await;

    assert_eq!(notice, rebalance_notice(NOTICE_TIME));
    running.stop().await.expect("clean stop");
}

#[tokio::test]
async fn monitor_survives_garbage_and_then_delivers() {
    let sim = start_sim().await;
    sim.set_garbage(
        REBALANCE_RECOMMENDATION_PATH,
        Some("<html>proxy error</html>"),
    );
    let mut running = start_monitor(sim, true, true);
    running
        .wait_for_polls(REBALANCE_RECOMMENDATION_PATH, 3)
        .await;
    running.assert_nothing_sent();

    running.sim.set_garbage(REBALANCE_RECOMMENDATION_PATH, None);
    running.sim.set_rebalance(Some(NOTICE_TIME));
    let notice = running.next_notice().await;

    assert_eq!(notice, rebalance_notice(NOTICE_TIME));
    running.stop().await.expect("clean stop");
}

#[tokio::test]
async fn cancellation_stops_the_loop_even_while_imds_hangs() {
    let sim = start_sim().await;
    sim.set_delay(Duration::from_secs(60));
    let running = start_monitor(sim, true, true);
    running.wait_for_polls(SPOT_INSTANCE_ACTION_PATH, 1).await;

    let outcome = running.stop().await;

    assert!(outcome.is_ok(), "{outcome:?}");
}

#[tokio::test]
async fn dropped_receiver_ends_the_loop() {
    let sim = start_sim().await;
    let running = start_monitor(sim, true, true);
    drop(running.notices);

    let outcome = tokio::time::timeout(BOUND, running.task)
        .await
        .expect("monitor kept running without a receiver")
        .expect("monitor task panicked");

    assert!(outcome.is_ok(), "{outcome:?}");
}

#[tokio::test]
async fn event_id_has_nths_format() {
    let mut running = start_monitor(start_sim().await, true, true);
    running.sim.set_rebalance(Some(NOTICE_TIME));

    let notice = running.next_notice().await;

    assert_nth_event_id(notice.event_id(), "rebalance-recommendation-");
    // sha256 of "&{2020-10-27T08:22:00Z}", the text NTH hashes for this payload.
    assert_eq!(
        notice.event_id(),
        "rebalance-recommendation-ec1be3373b11adcde417bd7778350fbddba81ef5bffed1426b407e667d05bca9"
    );
    running.stop().await.expect("clean stop");
}

#[tokio::test]
async fn liveness_records_completed_polls() {
    let running = start_monitor(start_sim().await, true, true);

    running
        .wait_for_polls(REBALANCE_RECOMMENDATION_PATH, 2)
        .await;
    let first = running.liveness.last_poll().expect("a poll completed");
    running
        .wait_for_polls(REBALANCE_RECOMMENDATION_PATH, 3)
        .await;
    let later = running.liveness.last_poll().expect("polls completed");

    assert!(later > first, "liveness did not advance");
    running.stop().await.expect("clean stop");
}

#[tokio::test]
async fn zero_interval_is_refused() {
    let sim = start_sim().await;
    let imds = ImdsClient::new(&sim.url(), 1).expect("build IMDS client");
    let (sender, _notices) = mpsc::channel(1);
    let settings = MonitorSettings {
        interval: Duration::ZERO,
        ..MonitorSettings::default()
    };

    let outcome = tokio::time::timeout(
        BOUND,
        monitor::run(imds, settings, sender, CancellationToken::new()),
    )
    .await
    .expect("run returned");

    assert!(
        matches!(outcome, Err(MonitorError::ZeroInterval)),
        "{outcome:?}"
    );
}

fn assert_nth_event_id(event_id: &str, prefix: &str) {
    let hash = event_id
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{event_id} does not start with {prefix}"));
    assert_eq!(hash.len(), 64, "{event_id}");
    assert!(
        hash.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{event_id}"
    );
}

fn maintenance_only() -> MonitorSettings {
    MonitorSettings {
        interval: POLL,
        rebalance: false,
        spot_interruption: false,
        scheduled_events: true,
        asg_lifecycle: true,
    }
}

fn scheduled(state: &str, not_before: &str) -> serde_json::Value {
    serde_json::json!([{
        "Code": "system-reboot",
        "Description": "scheduled reboot",
        "EventId": "instance-event-0d59937288b749b32",
        "NotAfter": "21 Jan 2019 09:17:23 GMT",
        "NotBefore": not_before,
        "NotBeforeDeadline": "",
        "State": state
    }])
}

#[tokio::test]
async fn scheduled_event_is_sent_once_then_its_cancellation_once() {
    let sim = start_sim().await;
    sim.set_scheduled_events(scheduled("active", "21 Jan 2019 09:00:43 GMT"));
    let mut running = start_monitor_with(sim, maintenance_only());
    match running.next_notice().await {
        Notice::ScheduledEvent { event_id, code, .. } => {
            assert_eq!(event_id, "instance-event-0d59937288b749b32");
            assert_eq!(code, "system-reboot");
        }
        other => panic!("expected a scheduled event, got {other:?}"),
    }
    running
        .sim
        .set_scheduled_events(scheduled("canceled", "21 Jan 2019 09:00:43 GMT"));
    assert_eq!(
        running.next_notice().await,
        Notice::ScheduledEventEnded {
            event_id: "instance-event-0d59937288b749b32".into(),
            state: "canceled".into()
        }
    );
    running
        .wait_for_polls("/latest/meta-data/events/maintenance/scheduled", 5)
        .await;
    assert!(
        running.notices.try_recv().is_err(),
        "each state is sent once"
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn scheduled_event_with_a_garbled_date_is_skipped_and_polling_goes_on() {
    let sim = start_sim().await;
    sim.set_scheduled_events(scheduled("active", "next tuesday"));
    let mut running = start_monitor_with(sim, maintenance_only());
    running
        .wait_for_polls("/latest/meta-data/events/maintenance/scheduled", 3)
        .await;
    assert!(running.notices.try_recv().is_err());
    running
        .sim
        .set_scheduled_events(scheduled("active", "21 Jan 2019 09:00:43 GMT"));
    assert!(matches!(
        running.next_notice().await,
        Notice::ScheduledEvent { .. }
    ));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn asg_lifecycle_terminated_is_sent_once_and_other_states_are_not() {
    let sim = start_sim().await;
    sim.set_lifecycle_state(Some("InService"));
    let mut running = start_monitor_with(sim, maintenance_only());
    running
        .wait_for_polls("/latest/meta-data/autoscaling/target-lifecycle-state", 3)
        .await;
    assert!(running.notices.try_recv().is_err());
    running.sim.set_lifecycle_state(Some("Terminated"));
    let notice = running.next_notice().await;
    assert!(matches!(notice, Notice::AsgLifecycleTermination { .. }));
    assert!(
        notice
            .event_id()
            .starts_with("target-lifecycle-state-terminated-")
    );
    running
        .wait_for_polls("/latest/meta-data/autoscaling/target-lifecycle-state", 5)
        .await;
    assert!(running.notices.try_recv().is_err());
    running.stop().await.unwrap();
}

#[tokio::test]
async fn an_imds_outage_is_one_monitor_error_event_and_counted_every_poll() {
    use spot_guard::report::{NodeMetadata, ReportSettings, Reporter};
    use spot_guard::sim::kube::FakeKube;

    let sim = start_sim().await;
    sim.set_down(true);
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    kube.add_node("n1");
    let client = spot_guard::node::client_for_url(&kube.url()).expect("kube client");
    let reporter = Reporter::start(
        &ReportSettings {
            emit_kubernetes_events: true,
            metrics: true,
            ..ReportSettings::default()
        },
        NodeMetadata::new("n1"),
        Some(client),
    )
    .expect("reporter");
    let imds = ImdsClient::builder(&sim.url())
        .tries(1)
        .request_timeout(Duration::from_millis(200))
        .build()
        .expect("IMDS client");
    let (sender, _notices) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(monitor::run_reporting(
        imds,
        MonitorSettings {
            interval: Duration::from_millis(10),
            rebalance: true,
            spot_interruption: false,
            scheduled_events: false,
            asg_lifecycle: false,
        },
        sender,
        shutdown.clone(),
        Liveness::default(),
        reporter.clone(),
    ));
    tokio::time::timeout(BOUND, async {
        while sim.gets(REBALANCE_RECOMMENDATION_PATH) < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the monitor polls through the outage");
    shutdown.cancel();
    task.await.expect("task").expect("clean stop");
    assert!(reporter.flush(Duration::from_secs(5)).await);

    let monitor_errors = kube
        .events()
        .iter()
        .filter(|e| e.reason.as_deref() == Some("MonitorError"))
        .count();
    assert_eq!(monitor_errors, 1, "one event for the whole failure streak");
    let scrape = reporter
        .metrics()
        .expect("metrics")
        .encode()
        .expect("encode");
    let counted: f64 = scrape
        .lines()
        .find(|l| l.starts_with("events_error_total{") && l.contains("REBALANCE_RECOMMENDATION"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("events_error_total for the rebalance monitor");
    assert!(counted >= 4.0, "every failed poll counted: {scrape}");
}
