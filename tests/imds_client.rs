//! The IMDS client against the IMDS simulator over real HTTP: tokens, fallback, retries,
//! notices and the errors a user reads in the log.

use std::future::Future;
use std::time::Duration;

use serde_json::json;
use spot_guard::imds::{
    ImdsClient, ImdsError, InstanceAction, REBALANCE_RECOMMENDATION_PATH, RebalanceRecommendation,
    SPOT_INSTANCE_ACTION_PATH, parse_scheduled_event_time,
};
use spot_guard::sim::imds::{ImdsSim, TokenMode};

const TEST_BOUND: Duration = Duration::from_secs(20);

async fn start_sim() -> ImdsSim {
    spot_guard::tls::ensure_crypto_provider();
    ImdsSim::start().await.expect("start IMDS simulator")
}

fn client(sim: &ImdsSim, tries: u32) -> ImdsClient {
    ImdsClient::builder(&sim.url())
        .tries(tries)
        .retry_base_delay(Duration::from_millis(10))
        .request_timeout(Duration::from_millis(500))
        .build()
        .expect("build IMDS client")
}

/// Bounds a test step so a bug fails the test instead of hanging it.
async fn within<T>(step: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_BOUND, step)
        .await
        .expect("step did not finish in time")
}

#[tokio::test]
async fn v2_token_is_sent_on_every_get_and_reused() {
    let sim = start_sim().await;
    sim.set_token_mode(TokenMode::V2Required);
    sim.set_rebalance(Some("2020-10-27T08:22:00Z"));
    let imds = client(&sim, 3);

    within(imds.off_runtime(|imds| {
        imds.instance_id()?;
        imds.rebalance_recommendation()?;
        imds.spot_instance_action()?;
        imds.scheduled_events()?;
        imds.asg_target_lifecycle_state()
    }))
    .await
    .expect("every path read");

    assert_eq!(sim.token_puts(), 1, "one token for many GETs");
    assert_eq!(sim.gets_with_token(), 5);
    assert_eq!(sim.gets_without_token(), 0);
}

#[tokio::test]
async fn token_is_refreshed_when_the_server_grants_a_short_lifetime() {
    let sim = start_sim().await;
    // 10 s is inside NTH's 15 s refresh margin, so every read needs a fresh token.
    sim.set_token_ttl(Some(10));
    let imds = client(&sim, 3);

    within(async {
        imds.off_runtime(ImdsClient::instance_id)
            .await
            .expect("first read");
        imds.off_runtime(ImdsClient::instance_id)
            .await
            .expect("second read");
    })
    .await;

    assert_eq!(sim.token_puts(), 2);
    assert_eq!(sim.gets_with_token(), 2);
}

#[tokio::test]
async fn expired_token_is_replaced_once_and_the_read_succeeds() {
    let sim = start_sim().await;
    sim.set_token_mode(TokenMode::V2Required);
    sim.set_rebalance(Some("2020-10-27T08:22:00Z"));
    let imds = client(&sim, 3);
    within(imds.off_runtime(ImdsClient::instance_id))
        .await
        .expect("first read");

    sim.expire_tokens();
    let recommendation = within(imds.off_runtime(ImdsClient::rebalance_recommendation))
        .await
        .expect("read after expiry");

    assert!(recommendation.is_some());
    assert_eq!(sim.token_puts(), 2, "exactly one new token after the 401");
    assert_eq!(sim.gets(REBALANCE_RECOMMENDATION_PATH), 2, "one retry");
}

#[tokio::test]
async fn refused_token_falls_back_to_imdsv1() {
    let sim = start_sim().await;
    sim.set_token_mode(TokenMode::TokenRefused(405));
    sim.set_rebalance(Some("2020-10-27T08:22:00Z"));
    let imds = client(&sim, 3);

    let first = within(imds.off_runtime(ImdsClient::rebalance_recommendation)).await;
    let second = within(imds.off_runtime(ImdsClient::rebalance_recommendation)).await;

    assert!(first.expect("v1 read").is_some());
    assert!(second.expect("second v1 read").is_some());
    assert_eq!(sim.gets_with_token(), 0);
    assert_eq!(sim.gets_without_token(), 2);
    assert_eq!(
        sim.token_puts(),
        1,
        "no token request on every read while on v1"
    );
}

#[tokio::test]
async fn v1_fallback_is_left_when_tokens_are_granted_again() {
    let sim = start_sim().await;
    sim.set_token_mode(TokenMode::TokenRefused(403));
    let imds = ImdsClient::builder(&sim.url())
        .retry_base_delay(Duration::from_millis(10))
        .v2_retry_after(Duration::ZERO)
        .build()
        .expect("build IMDS client");
    within(imds.off_runtime(ImdsClient::instance_id))
        .await
        .expect("v1 read");
    assert_eq!(sim.gets_without_token(), 1);

    sim.set_token_mode(TokenMode::V2Optional);
    within(imds.off_runtime(ImdsClient::instance_id))
        .await
        .expect("v2 read");

    assert_eq!(sim.gets_with_token(), 1);
}

#[tokio::test]
async fn required_token_that_cannot_be_had_is_a_clear_error() {
    let sim = start_sim().await;
    sim.set_token_mode(TokenMode::V2RequiredTokenRefused(403));
    let imds = client(&sim, 3);

    let error = within(imds.off_runtime(ImdsClient::rebalance_recommendation))
        .await
        .expect_err("no token, no data");

    assert!(
        matches!(&error, ImdsError::TokenUnavailable { path, .. } if path == REBALANCE_RECOMMENDATION_PATH),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("401"), "{message}");
    assert!(message.contains("hop limit"), "{message}");
}

#[tokio::test]
async fn absent_notices_are_none() {
    let sim = start_sim().await;
    let imds = client(&sim, 3);

    assert_eq!(
        within(imds.off_runtime(ImdsClient::rebalance_recommendation))
            .await
            .expect("rebalance"),
        None
    );
    assert_eq!(
        within(imds.off_runtime(ImdsClient::spot_instance_action))
            .await
            .expect("spot"),
        None
    );
    assert_eq!(
        within(imds.off_runtime(ImdsClient::asg_target_lifecycle_state))
            .await
            .expect("lifecycle"),
        None
    );
    assert!(
        within(imds.off_runtime(ImdsClient::scheduled_events))
            .await
            .expect("scheduled")
            .is_empty()
    );
}

#[tokio::test]
async fn rebalance_recommendation_is_parsed() {
    let sim = start_sim().await;
    sim.set_rebalance(Some("2020-10-27T08:22:00Z"));
    let imds = client(&sim, 3);

    let recommendation = within(imds.off_runtime(ImdsClient::rebalance_recommendation))
        .await
        .expect("read");

    assert_eq!(
        recommendation,
        Some(RebalanceRecommendation {
            notice_time: "2020-10-27T08:22:00Z".to_string()
        })
    );
}

#[tokio::test]
async fn spot_instance_action_is_parsed() {
    let sim = start_sim().await;
    sim.set_spot_action(Some(("terminate", "2017-09-18T08:22:00Z")));
    let imds = client(&sim, 3);

    let action = within(imds.off_runtime(ImdsClient::spot_instance_action))
        .await
        .expect("read");

    assert_eq!(
        action,
        Some(InstanceAction {
            action: "terminate".to_string(),
            time: "2017-09-18T08:22:00Z".to_string()
        })
    );
}

#[tokio::test]
async fn garbage_json_is_malformed_and_names_the_path() {
    let sim = start_sim().await;
    sim.set_garbage(SPOT_INSTANCE_ACTION_PATH, Some("{\"action\": termin"));
    let imds = client(&sim, 3);

    let error = within(imds.off_runtime(ImdsClient::spot_instance_action))
        .await
        .expect_err("garbage is not a notice");

    assert!(
        matches!(&error, ImdsError::Malformed { path, body_excerpt, .. }
            if path == SPOT_INSTANCE_ACTION_PATH && body_excerpt.contains("termin")),
        "{error:?}"
    );
    assert!(error.to_string().contains(SPOT_INSTANCE_ACTION_PATH));
}

#[tokio::test]
async fn unreachable_imds_is_reported_after_the_configured_tries() {
    let sim = start_sim().await;
    sim.set_down(true);
    let imds = client(&sim, 3);

    let error = within(imds.off_runtime(ImdsClient::rebalance_recommendation))
        .await
        .expect_err("IMDS is down");

    assert!(matches!(error, ImdsError::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains(REBALANCE_RECOMMENDATION_PATH));
    assert_eq!(sim.gets(REBALANCE_RECOMMENDATION_PATH), 3);
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let sim = start_sim().await;
    sim.set_rebalance(Some("2020-10-27T08:22:00Z"));
    sim.fail_next_gets(2, 500);
    let imds = client(&sim, 3);

    let recommendation = within(imds.off_runtime(ImdsClient::rebalance_recommendation))
        .await
        .expect("third try succeeds");

    assert!(recommendation.is_some());
    assert_eq!(sim.gets(REBALANCE_RECOMMENDATION_PATH), 3);
}

#[tokio::test]
async fn server_errors_beyond_the_tries_are_a_status_error() {
    let sim = start_sim().await;
    sim.fail_next_gets(2, 503);
    let imds = client(&sim, 2);

    let error = within(imds.off_runtime(ImdsClient::rebalance_recommendation))
        .await
        .expect_err("two tries, two failures");

    assert!(
        matches!(&error, ImdsError::Status { path, status: 503 } if path == REBALANCE_RECOMMENDATION_PATH),
        "{error:?}"
    );
}

#[tokio::test]
async fn slow_answer_past_the_timeout_is_an_error_not_a_hang() {
    let sim = start_sim().await;
    sim.set_delay(Duration::from_secs(30));
    let imds = ImdsClient::builder(&sim.url())
        .tries(1)
        .request_timeout(Duration::from_millis(200))
        .build()
        .expect("build IMDS client");

    let error = within(imds.off_runtime(ImdsClient::instance_id))
        .await
        .expect_err("too slow");

    assert!(matches!(error, ImdsError::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("timed out"), "{error}");
}

#[tokio::test]
async fn instance_id_is_read() {
    let sim = start_sim().await;
    sim.set_instance_id("i-0abc1234def567890");
    let imds = client(&sim, 3);

    assert_eq!(
        within(imds.off_runtime(ImdsClient::instance_id))
            .await
            .expect("read"),
        "i-0abc1234def567890"
    );
}

#[tokio::test]
async fn lifecycle_state_is_read() {
    let sim = start_sim().await;
    sim.set_lifecycle_state(Some("Terminated"));
    let imds = client(&sim, 3);

    assert_eq!(
        within(imds.off_runtime(ImdsClient::asg_target_lifecycle_state))
            .await
            .expect("read"),
        Some("Terminated".to_string())
    );
}

#[tokio::test]
async fn scheduled_events_in_imds_format_are_parsed() {
    let sim = start_sim().await;
    sim.set_scheduled_events(json!([{
        "NotBefore": "21 Jan 2019 09:00:43 GMT",
        "Code": "system-reboot",
        "Description": "scheduled reboot",
        "EventId": "instance-event-0d59937288b749b32",
        "NotAfter": "21 Jan 2019 09:17:23 GMT",
        "NotBeforeDeadline": "25 Jan 2019 09:00:43 GMT",
        "State": "active"
    }]));
    let imds = client(&sim, 3);

    let events = within(imds.off_runtime(ImdsClient::scheduled_events))
        .await
        .expect("read");

    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.code, "system-reboot");
    assert_eq!(event.event_id, "instance-event-0d59937288b749b32");
    assert_eq!(event.state, "active");
    assert_eq!(event.description, "scheduled reboot");
    assert_eq!(
        parse_scheduled_event_time(&event.not_before),
        Some(1_548_061_243)
    );
    assert_eq!(
        parse_scheduled_event_time(&event.not_after),
        Some(1_548_062_243)
    );
    assert_eq!(
        parse_scheduled_event_time(&event.not_before_deadline),
        Some(1_548_406_843)
    );
}

#[tokio::test]
async fn bad_base_url_is_rejected() {
    spot_guard::tls::ensure_crypto_provider();
    for url in ["not a url", "169.254.169.254", "ftp://169.254.169.254", ""] {
        let error = ImdsClient::new(url, 3).expect_err(url);
        assert!(
            matches!(error, ImdsError::InvalidUrl { .. }),
            "{url}: {error:?}"
        );
    }
    let imds = ImdsClient::new("http://169.254.169.254/", 3).expect("trailing slash is fine");
    assert_eq!(imds.base_url(), "http://169.254.169.254");
}

#[tokio::test]
async fn a_token_request_that_never_answers_falls_back_to_v1_after_the_request_timeout() {
    // A pod without host networking behind a hop limit of 1: the PUT's answer is dropped.
    let sim = start_sim().await;
    sim.set_token_mode(TokenMode::TokenHangs);
    sim.set_rebalance(Some("2020-10-27T08:22:00Z"));
    let imds = client(&sim, 3);

    let recommendation = within(imds.off_runtime(ImdsClient::rebalance_recommendation))
        .await
        .expect("read over IMDSv1");

    assert!(recommendation.is_some(), "the recommendation is read");
    assert_eq!(sim.token_puts(), 1, "the hung PUT is not repeated at once");
    assert!(sim.gets_without_token() >= 1, "the read went over IMDSv1");
}

#[tokio::test]
async fn a_slow_path_delays_only_its_own_answers() {
    let sim = start_sim().await;
    sim.set_path_delay(SPOT_INSTANCE_ACTION_PATH, Duration::from_secs(5));
    sim.set_rebalance(Some("2020-10-27T08:22:00Z"));
    let imds = client(&sim, 1);

    // The slow path times out (request timeout 500 ms); the others answer.
    let spot = within(imds.off_runtime(ImdsClient::spot_instance_action)).await;
    assert!(spot.is_err(), "the slow path timed out: {spot:?}");
    let rebalance = within(imds.off_runtime(ImdsClient::rebalance_recommendation)).await;
    assert!(rebalance.expect("rebalance read").is_some());
    // The timed-out answer may still come on the first connection: never read it as the
    // answer to another path.
    assert_eq!(sim.connections(), 2, "a new connection after the timeout");
}

#[tokio::test]
async fn polls_reuse_one_connection_and_one_token() {
    let sim = start_sim().await;
    sim.set_token_mode(TokenMode::V2Required);
    let imds = client(&sim, 3);

    within(imds.off_runtime(|imds| {
        for _ in 0..20 {
            assert_eq!(imds.spot_instance_action()?, None);
            assert!(imds.scheduled_events()?.is_empty());
            assert_eq!(imds.rebalance_recommendation()?, None);
        }
        Ok(())
    }))
    .await
    .expect("every poll read");

    assert_eq!(sim.gets_with_token(), 60);
    assert_eq!(sim.token_puts(), 1, "one token for every poll");
    assert_eq!(
        sim.connections(),
        1,
        "one kept-alive connection for every poll"
    );
}

#[tokio::test]
async fn a_connection_broken_mid_answer_is_replaced_by_a_new_one() {
    let sim = start_sim().await;
    sim.set_rebalance(Some("2020-10-27T08:22:00Z"));
    // One attempt each: no retry hides a read that went to the broken connection.
    let imds = client(&sim, 1);
    within(imds.off_runtime(ImdsClient::rebalance_recommendation))
        .await
        .expect("first read");
    // The server cuts every connection before a complete answer.
    sim.set_down(true);
    assert!(
        within(imds.off_runtime(ImdsClient::rebalance_recommendation))
            .await
            .is_err()
    );
    sim.set_down(false);
    let before = sim.connections();

    let recommendation = within(imds.off_runtime(ImdsClient::rebalance_recommendation)).await;

    assert!(recommendation.expect("read on a new connection").is_some());
    assert_eq!(
        sim.connections(),
        before + 1,
        "a cut connection is not used again"
    );
}
