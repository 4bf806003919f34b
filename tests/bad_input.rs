//! Bad input from outside, as property tests: IMDS bodies for every notice kind, the
//! scheduled-events list, instance ids and token TTL headers, webhook templates and env
//! values. Whatever arrives: no panic, a clear error naming what was wrong, and nothing
//! acted on.

use std::sync::LazyLock;
use std::time::Duration;

use clap::Parser;
use proptest::prelude::*;
use spot_guard::config::Cli;
use spot_guard::imds::{
    ASG_TARGET_LIFECYCLE_STATE_PATH, INSTANCE_ID_PATH, ImdsClient, ImdsError,
    REBALANCE_RECOMMENDATION_PATH, SCHEDULED_EVENTS_PATH, SPOT_INSTANCE_ACTION_PATH,
    is_instance_id,
};
use spot_guard::report::{InterruptionEvent, NodeMetadata, WebhookTemplate};
use spot_guard::run;
use spot_guard::sim::harness;
use spot_guard::sim::imds::ImdsSim;
use spot_guard::sim::kube::FakeKube;
use tokio::runtime::Runtime;

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
});

/// One IMDS simulator for every case of this file, and a client with one try each.
static IMDS: LazyLock<(ImdsSim, ImdsClient)> = LazyLock::new(|| {
    RUNTIME.block_on(async {
        let sim = ImdsSim::start().await.expect("IMDS simulator");
        let client = ImdsClient::builder(&sim.url())
            .tries(1)
            .build()
            .expect("client");
        (sim, client)
    })
});

/// Text that is often almost JSON: fragments of the real payloads, cut and mixed.
fn body() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just(r#"{"action": "terminate", "time": "2026-11-24T10:02:00Z"}"#.to_owned()),
        Just(r#"{"noticeTime": "2020-10-27T08:22:00Z"}"#.to_owned()),
        Just(
            r#"[{"Code": "system-reboot", "EventId": "instance-event-1", "State": "active"}]"#
                .to_owned()
        ),
        Just("null".to_owned()),
        Just("{}".to_owned()),
        Just("[]".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        "\\PC{0,40}",
    ];
    prop::collection::vec(fragment, 1..4).prop_map(|parts| {
        let joined = parts.concat();
        // Cut anywhere (on a character boundary): truncated answers happen.
        let cut = joined.len() * 3 / 4;
        let mut end = cut;
        while !joined.is_char_boundary(end) {
            end -= 1;
        }
        if joined.len() % 2 == 0 {
            joined
        } else {
            joined[..end].to_owned()
        }
    })
}

fn is_clear(error: &ImdsError, path: &str) -> bool {
    let text = error.to_string();
    text.contains(path) && !text.is_empty()
}

fn json_object(body: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(body) {
        Ok(serde_json::Value::Object(object)) => Some(object),
        _ => None,
    }
}

fn string_field(object: &serde_json::Map<String, serde_json::Value>, name: &str) -> bool {
    object.get(name).is_some_and(serde_json::Value::is_string)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A spot interruption is acted on only for an object with string action and time.
    #[test]
    fn spot_instance_action_bodies(body in body()) {
        let (sim, imds) = &*IMDS;
        sim.set_garbage(SPOT_INSTANCE_ACTION_PATH, Some(&body));
        let outcome = RUNTIME.block_on(imds.off_runtime(ImdsClient::spot_instance_action));
        let shaped = json_object(&body)
            .is_some_and(|o| string_field(&o, "action") && string_field(&o, "time"));
        match outcome {
            Ok(Some(_)) => prop_assert!(shaped, "acted on {body:?}"),
            Ok(None) => prop_assert!(false, "a 200 answer read as no notice: {body:?}"),
            Err(error) => {
                prop_assert!(!shaped, "refused a good notice {body:?}: {error}");
                prop_assert!(is_clear(&error, SPOT_INSTANCE_ACTION_PATH), "{error}");
            }
        }
    }

    #[test]
    fn rebalance_recommendation_bodies(body in body()) {
        let (sim, imds) = &*IMDS;
        sim.set_garbage(REBALANCE_RECOMMENDATION_PATH, Some(&body));
        let outcome = RUNTIME.block_on(imds.off_runtime(ImdsClient::rebalance_recommendation));
        let shaped = json_object(&body).is_some_and(|o| string_field(&o, "noticeTime"));
        match outcome {
            Ok(Some(_)) => prop_assert!(shaped, "acted on {body:?}"),
            Ok(None) => prop_assert!(false, "a 200 answer read as no notice: {body:?}"),
            Err(error) => {
                prop_assert!(!shaped, "refused a good notice {body:?}: {error}");
                prop_assert!(is_clear(&error, REBALANCE_RECOMMENDATION_PATH), "{error}");
            }
        }
    }

    /// The list is all or nothing: one bad entry refuses the answer, naming the path.
    #[test]
    fn scheduled_events_lists(body in body()) {
        let (sim, imds) = &*IMDS;
        sim.set_garbage(SCHEDULED_EVENTS_PATH, Some(&body));
        let outcome = RUNTIME.block_on(imds.off_runtime(ImdsClient::scheduled_events));
        let list = matches!(serde_json::from_str(&body), Ok(serde_json::Value::Array(_)));
        match outcome {
            Ok(events) => prop_assert!(list || events.is_empty(), "read {events:?} from {body:?}"),
            Err(error) => prop_assert!(is_clear(&error, SCHEDULED_EVENTS_PATH), "{error}"),
        }
    }

    #[test]
    fn asg_lifecycle_state_bodies(body in body()) {
        let (sim, imds) = &*IMDS;
        sim.set_garbage(ASG_TARGET_LIFECYCLE_STATE_PATH, Some(&body));
        let outcome = RUNTIME.block_on(imds.off_runtime(ImdsClient::asg_target_lifecycle_state));
        if let Err(error) = outcome {
            prop_assert!(is_clear(&error, ASG_TARGET_LIFECYCLE_STATE_PATH), "{error}");
        }
    }

    /// Only `i-` and 8 or 17 lowercase hex digits go into API calls.
    #[test]
    fn instance_ids_from_imds(body in prop_oneof![
        "i-[0-9a-f]{8}",
        "i-[0-9a-f]{17}",
        "i-[0-9a-fA-Z]{0,20}",
        "\\PC{0,30}",
        "i-[0-9a-f]{17}/\\.\\./[a-z]{1,5}",
    ]) {
        let (sim, imds) = &*IMDS;
        sim.set_garbage(INSTANCE_ID_PATH, Some(&body));
        let outcome = RUNTIME.block_on(imds.off_runtime(ImdsClient::instance_id));
        let trimmed = body.trim();
        let hex = trimmed.strip_prefix("i-").unwrap_or("");
        let valid = trimmed.starts_with("i-")
            && (hex.len() == 8 || hex.len() == 17)
            && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
        prop_assert_eq!(is_instance_id(trimmed), valid, "{:?}", body);
        match outcome {
            Ok(id) => prop_assert!(valid && id == trimmed, "{body:?} accepted as {id}"),
            Err(error) => {
                prop_assert!(!valid, "{body:?} refused: {error}");
                prop_assert!(is_clear(&error, INSTANCE_ID_PATH), "{error}");
            }
        }
    }

    /// Any template text: parsed or refused, and a parsed one renders or is refused.
    #[test]
    fn webhook_templates(text in prop_oneof![
        "\\PC{0,60}",
        "\\{\\{ ?\\.?[A-Za-z]{0,12} ?(\\| ?[a-z]{0,8})? ?\\}?\\}?",
        "\\{\\{ (if|range|with|end|template|define) [^}]{0,20}\\}\\}",
    ]) {
        if let Ok(template) = WebhookTemplate::parse(&text) {
            let node = NodeMetadata::new("ip-10-0-0-1.ec2.internal");
            let event = InterruptionEvent::spot_interruption("spot-itn-1", "2026-11-24T10:02:00Z");
            let _ = template.render(&node, &event, "spot interruption");
        }
    }

    /// Any text in a numeric or duration setting: accepted within its bounds, or
    /// refused naming the setting.
    #[test]
    fn env_values(value in prop_oneof![
        "\\PC{0,12}",
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..1_000_000).prop_map(|n| n.to_string()),
    ], setting in 0usize..SETTINGS.len()) {
        let (env, flag) = SETTINGS[setting];
        let argv = ["spot-guard".to_owned(), "--node-name=n1".to_owned(), format!("{flag}={value}")];
        match Cli::try_parse_from(&argv) {
            Err(error) => prop_assert!(error.to_string().contains(flag), "{error}"),
            Ok(cli) => {
                if let Err(error) = run::configure(cli.args) {
                    prop_assert!(error.to_string().contains(env), "{value:?} for {env}: {error}");
                }
            }
        }
    }
}

/// Numeric and duration settings: (env var, flag).
const SETTINGS: [(&str, &str); 16] = [
    ("METADATA_TRIES", "--metadata-tries"),
    (
        "NODE_TERMINATION_GRACE_PERIOD",
        "--node-termination-grace-period",
    ),
    (
        "POD_TERMINATION_GRACE_PERIOD",
        "--pod-termination-grace-period",
    ),
    ("SPOT_GUARD_SCALE_TIMEOUT", "--spot-guard-scale-timeout"),
    (
        "SPOT_GUARD_CAPACITY_CHECK_TIMEOUT",
        "--spot-guard-capacity-check-timeout",
    ),
    ("SPOT_GUARD_CHECK_INTERVAL", "--spot-guard-check-interval"),
    (
        "SPOT_GUARD_NODE_READY_TIMEOUT",
        "--spot-guard-node-ready-timeout",
    ),
    ("SPOT_GUARD_LEASE_DURATION", "--spot-guard-lease-duration"),
    (
        "SPOT_GUARD_CAPACITY_COOL_OFF",
        "--spot-guard-capacity-cool-off",
    ),
    (
        "SPOT_GUARD_NEW_NODE_PROTECTION",
        "--spot-guard-new-node-protection",
    ),
    (
        "SPOT_GUARD_SCALE_BACK_MIN_WAIT",
        "--spot-guard-scale-back-min-wait",
    ),
    (
        "SPOT_GUARD_SCALE_BACK_STABILITY_PERIOD",
        "--spot-guard-scale-back-stability-period",
    ),
    (
        "SPOT_GUARD_SCALE_BACK_CHECK_INTERVAL",
        "--spot-guard-scale-back-check-interval",
    ),
    ("REBALANCE_UNCORDON_WINDOW", "--rebalance-uncordon-window"),
    ("DRAIN_CONCURRENCY", "--drain-concurrency"),
    ("AWS_API_MAX_ATTEMPTS", "--aws-api-max-attempts"),
];

/// Every duration setting has an upper bound: one second past it is refused by name.
#[test]
fn durations_past_their_bound_are_refused_by_name() {
    for (env, flag, max) in [
        (
            "NODE_TERMINATION_GRACE_PERIOD",
            "--node-termination-grace-period",
            86_400u64,
        ),
        (
            "SPOT_GUARD_SCALE_TIMEOUT",
            "--spot-guard-scale-timeout",
            86_400,
        ),
        (
            "SPOT_GUARD_CHECK_INTERVAL",
            "--spot-guard-check-interval",
            3_600,
        ),
        (
            "SPOT_GUARD_LEASE_DURATION",
            "--spot-guard-lease-duration",
            3_600,
        ),
        (
            "SPOT_GUARD_NEW_NODE_PROTECTION",
            "--spot-guard-new-node-protection",
            604_800,
        ),
        (
            "REBALANCE_UNCORDON_WINDOW",
            "--rebalance-uncordon-window",
            604_800,
        ),
        ("METADATA_TRIES", "--metadata-tries", 5),
    ] {
        // A refusal by clap (out of the type's range) or by validation names the setting.
        let configure = |value: u64| -> Result<(), String> {
            let cli =
                Cli::try_parse_from(["spot-guard", "--node-name=n1", &format!("{flag}={value}")])
                    .map_err(|error| error.to_string())?;
            run::configure(cli.args)
                .map(drop)
                .map_err(|error| error.to_string())
        };
        assert!(configure(max).is_ok(), "{env}={max} refused");
        let refusal = configure(max + 1).expect_err("past the bound");
        assert!(refusal.contains(env), "{refusal}");
        // The value that overflowed a deadline before: refused, not a panic mid-drain.
        let refusal = configure(u64::MAX).expect_err("absurd");
        assert!(refusal.contains(env) || refusal.contains(flag), "{refusal}");
    }
}

/// A token TTL header far beyond what was asked cannot overflow the clock.
#[test]
fn an_absurd_token_ttl_header_is_survived() {
    RUNTIME.block_on(async {
        let sim = ImdsSim::start().await.expect("IMDS simulator");
        sim.set_token_ttl(Some(u64::MAX));
        let imds = ImdsClient::new(&sim.url(), 1).expect("client");
        imds.off_runtime(|imds| {
            imds.instance_id()?;
            imds.instance_id() // with the cached token
        })
        .await
        .expect("read twice with the token");
        assert_eq!(sim.tokens_issued(), 1, "the token is reused");
    });
}

/// Garbage on every notice path of a running agent: the node is never touched.
#[test]
fn an_agent_fed_garbage_acts_on_nothing() {
    RUNTIME.block_on(async {
        let sim = ImdsSim::start().await.expect("IMDS simulator");
        let kube = FakeKube::start().await.expect("fake Kubernetes API");
        kube.add_node("n1");
        let config = harness::config(
            "n1",
            &sim.url(),
            &[
                "--enable-rebalance-monitoring=true",
                "--enable-asg-lifecycle-draining=true",
                "--metadata-tries=1",
            ],
        )
        .expect("flags");
        let agent = harness::start::<spot_guard::aws::AwsAutoScaling>(&config, &kube.url(), None)
            .await
            .expect("agent starts");
        for body in [
            r#"{"action": 3}"#,
            "<html>",
            r#"[{"Code": 1}]"#,
            "{\"noticeTime\"",
        ] {
            for path in [
                SPOT_INSTANCE_ACTION_PATH,
                REBALANCE_RECOMMENDATION_PATH,
                SCHEDULED_EVENTS_PATH,
            ] {
                sim.set_garbage(path, Some(body));
            }
            // Evidence the agent read it: two more polls of the last path.
            let seen = sim.gets(SCHEDULED_EVENTS_PATH);
            harness::eventually("two more polls", Duration::from_secs(20), || {
                sim.gets(SCHEDULED_EVENTS_PATH) >= seen + 2
            })
            .await;
        }
        let node = kube.node("n1").expect("node");
        assert!(
            node.spec
                .and_then(|s| s.taints)
                .unwrap_or_default()
                .is_empty()
        );
        assert_eq!(
            kube.node("n1")
                .and_then(|n| n.spec)
                .and_then(|s| s.unschedulable),
            None
        );
        agent.stop().await;
    });
}
