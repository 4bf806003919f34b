//! The agent is killed after each step of the flow and its pod restarts: the restarted
//! agent reads the step from the Node, resumes, never scales a second time for the same
//! recommendation, and still taints, cordons and drains the node.

use spot_guard::imds::RebalanceRecommendation;
use spot_guard::monitor::rebalance_event_id;
use spot_guard::sim::fleet::{KillPoint, RECOMMENDATION_TIME, kill_and_restart};

async fn assert_resumes(point: KillPoint) {
    spot_guard::tls::ensure_crypto_provider();
    let outcome = kill_and_restart(point)
        .await
        .unwrap_or_else(|error| panic!("{}: {error}", point.describe()));
    let step = point.describe();
    assert!(
        outcome.killed_mid_flow,
        "killed before it finished ({step})"
    );
    assert!(
        outcome.restarted_finished,
        "the restarted agent finishes ({step})"
    );
    assert_eq!(outcome.scale_ups, 1, "one scale-up in all ({step})");
    assert_eq!(outcome.spot_growth, 1, "{step}");
    assert!(outcome.drained, "the node ends drained ({step})");
    let served = rebalance_event_id(&RebalanceRecommendation {
        notice_time: RECOMMENDATION_TIME.to_owned(),
    });
    assert_eq!(
        outcome.recorded_event,
        Some(served),
        "the record of the recommendation IMDS served is on the Node ({step})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_right_after_set_desired_capacity() {
    assert_resumes(KillPoint::AfterSetDesiredCapacity).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_wait_for_in_service() {
    assert_resumes(KillPoint::DuringInServiceWait).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_taint() {
    assert_resumes(KillPoint::AfterTaint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_drain() {
    assert_resumes(KillPoint::DuringDrain).await;
}
