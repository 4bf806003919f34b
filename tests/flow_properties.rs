//! Bounded, seeded randomized runs. First the pure decisions of `flow` over thousands of
//! generated inputs; then the monitor, the agent and Spot Guard together over generated
//! sequences of IMDS notices, IMDS faults and ASG behaviours: whatever happens, each notice
//! raises desired capacity at most once per ASG and evicts each pod at most once.
//! The seeds are fixed so a failure reproduces; the failing case's seed and script are printed.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use spot_guard::agent::{Agent, AgentSettings};
use spot_guard::asg::{AsgInstance, AsgState, ScalingActivity};
use spot_guard::aws::{AwsAutoScaling, AwsSettings};
use spot_guard::config::SpotGuardConfig;
use spot_guard::drain::DrainSettings;
use spot_guard::flow::{
    ASG_LIFECYCLE_TAINT, ActionSettings, AttemptOutcome, CapacityFailure, CapacityWatch,
    REBALANCE_TAINT, SCHEDULED_MAINTENANCE_TAINT, SPOT_ITN_TAINT, ScalePlan, WatchVerdict,
    judge_capacity, needs_fallback, plan_drain_now, plan_rebalance, plan_scale_up,
};
use spot_guard::imds::ImdsClient;
use spot_guard::monitor::{self, MonitorSettings};
use spot_guard::node::{self, TaintEffect};
use spot_guard::sim::asg::{AsgSim, Behaviour, GroupSpec};
use spot_guard::sim::imds::ImdsSim;
use spot_guard::sim::kube::{EvictionOutcome, FakeKube, FakePod};
use spot_guard::spot_guard::SpotGuard;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// xorshift64*: small, deterministic, good enough to spread cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn range(&mut self, low: i64, high: i64) -> i64 {
        low + i64::try_from(self.below(u64::try_from(high - low + 1).unwrap_or(1))).unwrap_or(0)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.below(items.len() as u64)).unwrap_or(0)]
    }
}

fn asg(desired: i32, max: i32, in_service: i32) -> AsgState {
    AsgState {
        name: "spot".into(),
        min_size: 0,
        max_size: max,
        desired_capacity: desired,
        instances: (0..in_service)
            .map(|i| AsgInstance {
                instance_id: format!("i-{i:04}"),
                lifecycle_state: "InService".into(),
            })
            .collect(),
        capacity_rebalance: false,
    }
}

#[test]
fn scale_up_asks_exactly_one_more_and_never_past_max_size() {
    let mut rng = Rng(0x0005_ca1e_0000_0001);
    for _ in 0..5_000 {
        let max = i32::try_from(rng.range(0, 50)).unwrap_or(0);
        let desired = i32::try_from(rng.range(0, 55)).unwrap_or(0);
        let in_service = i32::try_from(rng.range(0, i64::from(desired))).unwrap_or(0);
        let state = asg(desired, max, in_service);
        match plan_scale_up(&state) {
            ScalePlan::Scale { from, to } => {
                assert_eq!(from, desired, "{state:?}");
                assert_eq!(to, desired + 1, "{state:?}");
                assert!(to <= max, "{state:?}");
            }
            ScalePlan::CannotScale(failure) => {
                assert!(desired >= max, "{state:?}");
                assert_eq!(
                    failure,
                    CapacityFailure::AtMaxSize {
                        desired,
                        max_size: max
                    }
                );
                assert_eq!(failure.reason(), "max-size");
            }
        }
    }
}

const STATUSES: [&str; 6] = [
    "Successful",
    "Failed",
    "Cancelled",
    "InProgress",
    "PreInService",
    "WaitingForSpotInstanceId",
];
const MESSAGES: [&str; 6] = [
    "Launching a new EC2 instance: i-0abc",
    "We currently do not have sufficient m5.large capacity in the Availability Zone you requested. InsufficientInstanceCapacity",
    "There is no Spot capacity available that matches your request.",
    "Instance launch failed: the AMI is deregistered",
    "",
    "MaxSpotInstanceCountExceeded",
];

fn mentions_capacity(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "insufficient",
        "do not have sufficient",
        "no spot capacity",
        "maxspotinstancecountexceeded",
    ]
    .iter()
    .any(|phrase| lower.contains(phrase))
}

#[test]
fn capacity_verdicts_hold_their_invariants_for_any_answer() {
    let mut rng = Rng(0x0005_ca1e_0000_0002);
    let requested_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let timeout = Duration::from_secs(120);
    for case in 0..5_000 {
        let baseline = i32::try_from(rng.range(0, 20)).unwrap_or(0);
        let before = asg(baseline + 1, 100, baseline);
        let known_count = rng.below(3);
        let known: Vec<ScalingActivity> = (0..known_count)
            .map(|i| ScalingActivity {
                activity_id: format!("known-{i}"),
                status_code: "Failed".into(),
                status_message: Some(MESSAGES[1].into()),
                description: None,
                start_time: Some(requested_at - Duration::from_secs(60)),
            })
            .collect();
        let watch = CapacityWatch::new(&before, &known, requested_at, timeout);
        // Activities seen now: the known ones again, plus new ones from any time.
        let mut activities = known.clone();
        for i in 0..rng.below(4) {
            let offset = rng.range(-3_600, 600);
            let start = if offset < 0 {
                requested_at - Duration::from_secs(offset.unsigned_abs())
            } else {
                requested_at + Duration::from_secs(offset.unsigned_abs())
            };
            activities.push(ScalingActivity {
                activity_id: format!("new-{case}-{i}"),
                status_code: (*rng.pick(&STATUSES)).into(),
                status_message: Some((*rng.pick(&MESSAGES)).into()),
                description: None,
                start_time: rng.chance(90).then_some(start),
            });
        }
        let in_service = baseline + i32::try_from(rng.range(-1, 2)).unwrap_or(0);
        let elapsed = Duration::from_secs(rng.below(240));
        let verdict = judge_capacity(&watch, in_service, &activities, elapsed);

        let context = format!(
            "case {case}: in_service {in_service} (baseline {baseline}), elapsed {elapsed:?}, {activities:?} → {verdict:?}"
        );
        // One more InService instance always wins, and only that is Ready.
        assert_eq!(
            matches!(verdict, WatchVerdict::Ready { .. }),
            in_service > baseline,
            "{context}"
        );
        if let WatchVerdict::Ready { in_service: seen } = verdict {
            assert_eq!(seen, in_service, "{context}");
        }
        // A timeout only at or past the timeout; never waiting past it.
        match &verdict {
            WatchVerdict::Failed(CapacityFailure::Timeout { waited }) => {
                assert!(*waited >= timeout, "{context}")
            }
            WatchVerdict::Waiting => assert!(elapsed < timeout, "{context}"),
            _ => {}
        }
        // Failures only from activities that are ours: new and not from long before the request.
        let ours: Vec<&ScalingActivity> = activities
            .iter()
            .filter(|a| a.activity_id.starts_with("new-"))
            .filter(|a| {
                a.start_time
                    .is_none_or(|t| t + Duration::from_secs(30) >= requested_at)
            })
            .collect();
        match &verdict {
            WatchVerdict::Failed(CapacityFailure::InsufficientCapacity { message }) => {
                assert!(
                    ours.iter()
                        .any(|a| a.status_message.as_deref() == Some(message.as_str())),
                    "{context}"
                );
                assert!(mentions_capacity(message), "{context}");
            }
            WatchVerdict::Failed(CapacityFailure::ActivityFailed { status, .. }) => {
                assert!(ours.iter().any(|a| &a.status_code == status), "{context}");
                assert!(
                    matches!(status.as_str(), "Failed" | "Cancelled"),
                    "{context}"
                );
            }
            WatchVerdict::Failed(other) if !matches!(other, CapacityFailure::Timeout { .. }) => {
                panic!("judge_capacity cannot produce {other:?}: {context}")
            }
            _ => {}
        }
        let failing_ours = ours.iter().any(|a| {
            matches!(a.status_code.as_str(), "Failed" | "Cancelled")
                || mentions_capacity(a.status_message.as_deref().unwrap_or_default())
        });
        if in_service <= baseline && !failing_ours {
            assert!(
                matches!(
                    verdict,
                    WatchVerdict::Waiting | WatchVerdict::Failed(CapacityFailure::Timeout { .. })
                ),
                "{context}"
            );
        }
        // The fallback follows a failure and nothing else.
        let outcome = match verdict {
            WatchVerdict::Failed(failure) => AttemptOutcome::Failed(failure),
            _ => AttemptOutcome::Ready { from: 1, to: 2 },
        };
        assert_eq!(
            needs_fallback(&outcome),
            matches!(outcome, AttemptOutcome::Failed(_))
        );
    }
}

fn settings_from(bits: u32, effect: TaintEffect) -> ActionSettings {
    ActionSettings {
        spot_guard: bits & 1 != 0,
        taint_node: bits & 2 != 0,
        taint_effect: effect,
        cordon_only: bits & 4 != 0,
        enable_rebalance_draining: bits & 8 != 0,
        exclude_from_load_balancers: bits & 16 != 0,
        enable_out_of_service_taint: bits & 32 != 0,
    }
}

#[test]
fn node_action_plans_are_consistent_for_every_setting_and_event_id() {
    let mut rng = Rng(0x0005_ca1e_0000_0003);
    let effects = [
        TaintEffect::NoSchedule,
        TaintEffect::PreferNoSchedule,
        TaintEffect::NoExecute,
    ];
    for bits in 0..64 {
        for effect in effects {
            let settings = settings_from(bits, effect);
            for _ in 0..20 {
                let length = usize::try_from(rng.below(130)).unwrap_or(0);
                let event_id: String = (0..length)
                    .map(|_| {
                        char::from(
                            b"abcdef0123456789-"[usize::try_from(rng.below(17)).unwrap_or(0)],
                        )
                    })
                    .collect();
                let rebalance = plan_rebalance(&settings, &event_id);
                let key = *rng.pick(&[
                    SPOT_ITN_TAINT,
                    SCHEDULED_MAINTENANCE_TAINT,
                    ASG_LIFECYCLE_TAINT,
                ]);
                let drain_now = plan_drain_now(&settings, key, &event_id);
                let context = format!("{settings:?} {event_id:?}: {rebalance:?} / {drain_now:?}");
                for plan in [&rebalance, &drain_now] {
                    assert!(plan.cordon, "every notice cordons: {context}");
                    assert!(!(plan.drain && settings.cordon_only), "{context}");
                    assert!(!plan.out_of_service_after_drain || plan.drain, "{context}");
                    assert_eq!(
                        plan.out_of_service_after_drain,
                        plan.drain && settings.enable_out_of_service_taint,
                        "{context}"
                    );
                    assert_eq!(
                        plan.exclude_from_load_balancers, settings.exclude_from_load_balancers,
                        "{context}"
                    );
                    if let Some(taint) = &plan.taint {
                        assert!(taint.value.chars().count() <= 63, "{context}");
                        assert!(event_id.starts_with(&taint.value), "{context}");
                        assert_eq!(taint.value.len(), event_id.len().min(63), "{context}");
                        assert_eq!(taint.effect, effect, "{context}");
                    }
                }
                assert_eq!(
                    rebalance.drain,
                    settings.enable_rebalance_draining && !settings.cordon_only,
                    "{context}"
                );
                assert_eq!(
                    rebalance.taint.as_ref().map(|t| t.key),
                    (settings.spot_guard || settings.taint_node).then_some(REBALANCE_TAINT),
                    "{context}"
                );
                assert_eq!(drain_now.drain, !settings.cordon_only, "{context}");
                assert_eq!(
                    drain_now.taint.as_ref().map(|t| t.key),
                    settings.taint_node.then_some(key),
                    "{context}"
                );
            }
        }
    }
}

// --- The whole loop over generated notice sequences ---------------------------------------

const NODE: &str = "ip-10-0-6-6.ec2.internal";
const POLL: Duration = Duration::from_millis(30);
const PODS: usize = 4;

#[derive(Debug, Clone)]
enum Step {
    Rebalance(Option<&'static str>),
    SpotItn(bool),
    ImdsErrors(u32),
    ImdsDown(bool),
    SpotBehaviour(Behaviour),
    SpotAtMax(bool),
    Wait(u32),
}

fn script(rng: &mut Rng) -> Vec<Step> {
    let notice_times = ["2026-11-24T10:00:00Z", "2026-11-24T11:30:00Z"];
    let behaviours = [
        Behaviour::Healthy,
        Behaviour::InsufficientCapacity,
        Behaviour::NeverInService,
        Behaviour::Cancelled,
    ];
    let length = 3 + rng.below(6);
    (0..length)
        .map(|_| match rng.below(10) {
            0..=2 => Step::Rebalance(rng.chance(75).then(|| *rng.pick(&notice_times))),
            3 => Step::SpotItn(rng.chance(50)),
            4 => Step::ImdsErrors(u32::try_from(rng.range(1, 8)).unwrap_or(1)),
            5 => Step::ImdsDown(rng.chance(50)),
            6 => Step::SpotBehaviour(*rng.pick(&behaviours)),
            7 => Step::SpotAtMax(rng.chance(50)),
            _ => Step::Wait(u32::try_from(rng.range(1, 8)).unwrap_or(1)),
        })
        .collect()
}

async fn run_script(seed: u64, steps: &[Step]) {
    let imds = ImdsSim::start().await.expect("IMDS simulator");
    let asg = AsgSim::start().await.expect("ASG simulator");
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    for name in ["spot", "on-demand"] {
        asg.add_group(
            name,
            GroupSpec {
                desired: 2,
                max: 10,
                launch_delay: Duration::from_millis(60),
                ..GroupSpec::default()
            },
        );
    }
    kube.add_node(NODE);
    for i in 0..PODS {
        kube.add_pod(FakePod::new("default", &format!("web-{i}"), NODE));
    }
    let guard = SpotGuard::new(
        AwsAutoScaling::for_endpoint(
            asg.url(),
            "us-east-1",
            &AwsSettings {
                endpoint_url: None,
                max_attempts: 1,
            },
        ),
        SpotGuardConfig {
            spot_asg_name: "spot".into(),
            on_demand_asg_name: "on-demand".into(),
            scale_timeout: Duration::from_secs(5),
            capacity_check_timeout: Duration::from_millis(400),
            check_interval: Duration::from_millis(30),
        },
        false,
    );
    let settings = AgentSettings {
        node_name: NODE.into(),
        dry_run: false,
        actions: ActionSettings {
            spot_guard: true,
            taint_node: true,
            enable_rebalance_draining: true,
            ..ActionSettings::default()
        },
        drain: DrainSettings {
            timeout: Duration::from_secs(1),
            eviction_retry_interval: Duration::from_millis(30),
            poll_interval: Duration::from_millis(20),
            ..DrainSettings::default()
        },
        uptime_file: "/proc/uptime".into(),
    };
    let agent = Agent::new(
        settings,
        node::client_for_url(&kube.url()).expect("kube client"),
        Some(guard),
    );
    let imds_client = ImdsClient::builder(&imds.url())
        .tries(1)
        .request_timeout(Duration::from_millis(300))
        .build()
        .expect("IMDS client");
    let shutdown = CancellationToken::new();
    let (tx, rx) = mpsc::channel(16);
    let monitor = tokio::spawn(monitor::run(
        imds_client,
        MonitorSettings {
            interval: POLL,
            ..MonitorSettings::default()
        },
        tx,
        shutdown.clone(),
    ));
    let agent = tokio::spawn(agent.run(rx, shutdown.clone()));

    let mut rebalance_ids = BTreeSet::new();
    for step in steps {
        match step {
            Step::Rebalance(time) => {
                imds.set_rebalance(*time);
                if let Some(time) = time {
                    rebalance_ids.insert(*time);
                }
            }
            Step::SpotItn(on) => {
                imds.set_spot_action(on.then_some(("terminate", "2026-11-24T12:00:00Z")))
            }
            Step::ImdsErrors(count) => imds.fail_next_gets(*count, 500),
            Step::ImdsDown(down) => imds.set_down(*down),
            Step::SpotBehaviour(behaviour) => {
                asg.set_behaviour("spot", *behaviour).expect("spot group");
            }
            Step::SpotAtMax(at_max) => {
                let desired = asg.group("spot").expect("spot group").desired;
                asg.set_max_size("spot", if *at_max { desired } else { 10 })
                    .expect("spot group");
            }
            Step::Wait(polls) => tokio::time::sleep(POLL * *polls).await,
        }
        tokio::time::sleep(POLL).await;
    }
    imds.set_down(false);
    // Every flow started ends within a capacity timeout per ASG plus a drain.
    tokio::time::sleep(Duration::from_millis(400 * 2 + 1_000 + 500)).await;

    let context = format!("seed {seed:#x}, script {steps:?}");
    assert!(!agent.is_finished(), "the agent stopped: {context}");
    assert!(!monitor.is_finished(), "the monitor stopped: {context}");
    let notices = rebalance_ids.len();
    for group in ["spot", "on-demand"] {
        let raised = asg
            .calls_of("SetDesiredCapacity")
            .iter()
            .filter(|call| call.group.as_deref() == Some(group) && call.error_code.is_none())
            .count();
        assert!(
            raised <= notices,
            "{group} raised {raised} times for {notices} recommendations: {context}"
        );
    }
    let mut evicted = BTreeSet::new();
    for eviction in kube.evictions() {
        if eviction.outcome == EvictionOutcome::Allowed {
            assert!(
                evicted.insert(eviction.name.clone()),
                "{} evicted twice: {context}",
                eviction.name
            );
        }
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("the agent stops")
        .expect("the agent did not panic");
    let _ = tokio::time::timeout(Duration::from_secs(10), monitor)
        .await
        .expect("the monitor stops")
        .expect("the monitor did not panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_notice_sequence_scales_each_asg_at_most_once_per_notice_and_evicts_once() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut rng = Rng(0x0005_ca1e_0000_0004);
    for _ in 0..8 {
        let seed = rng.next();
        let steps = script(&mut Rng(seed | 1));
        run_script(seed, &steps).await;
    }
}
