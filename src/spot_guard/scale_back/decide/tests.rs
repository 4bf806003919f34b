use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::*;
use crate::asg::AsgInstance;
use crate::spot_guard::decide::instance_id_of_provider_id;

fn node(name: &str, instance: &str, cpu: i64, memory_gib: i64) -> NodeView {
    NodeView {
        name: name.into(),
        instance_id: Some(instance.into()),
        ready: true,
        schedulable: true,
        cordoned_by_agent: false,
        allocatable: Resources {
            cpu_millis: cpu,
            memory_bytes: memory_gib << 30,
        },
        requested: Resources::default(),
    }
}

fn pod(node: &str, cpu: i64, memory_gib: i64, moves: bool) -> PodView {
    PodView {
        node: node.into(),
        requests: Resources {
            cpu_millis: cpu,
            memory_bytes: memory_gib << 30,
        },
        moves,
        identity: None,
    }
}

fn spot(desired: i32, instances: &[(&str, &str)]) -> AsgState {
    AsgState {
        name: "spot".into(),
        min_size: 0,
        max_size: 10,
        desired_capacity: desired,
        instances: instances
            .iter()
            .map(|(id, state)| AsgInstance {
                instance_id: (*id).into(),
                lifecycle_state: (*state).into(),
            })
            .collect(),
        capacity_rebalance: false,
    }
}

#[test]
fn quantities_parse_as_kubernetes_writes_them() {
    let cases = [
        ("250m", Some(0.25)),
        ("2", Some(2.0)),
        ("1.5", Some(1.5)),
        ("512Mi", Some(512.0 * 1024.0 * 1024.0)),
        ("1Gi", Some(1024f64.powi(3))),
        ("1G", Some(1e9)),
        ("1e3", Some(1000.0)),
        ("100k", Some(1e5)),
        ("1x", None),
        ("", None),
        ("-1", None),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_quantity(text), expected, "{text}");
    }
    assert_eq!(
        instance_id_of_provider_id("aws:///us-east-1a/i-0abc"),
        Some("i-0abc".to_owned())
    );
    assert_eq!(instance_id_of_provider_id("gce://p/z/n"), None);
}

#[test]
fn spot_is_healthy_only_with_every_instance_in_service_on_a_usable_node() {
    let mut drained = node("a", "i-a", 1000, 1);
    drained.schedulable = false;
    drained.cordoned_by_agent = true;
    let nodes = vec![drained.clone(), node("b", "i-b", 1000, 1)];
    let both = [("i-a", "InService"), ("i-b", "InService")];
    assert_eq!(spot_health(&spot(2, &both), &nodes, 0), Ok(()));
    let pending = [("i-a", "InService"), ("i-b", "Pending")];
    assert!(spot_health(&spot(2, &pending), &nodes, 0).is_err());
    let unknown = [("i-a", "InService"), ("i-c", "InService")];
    assert!(
        spot_health(&spot(2, &unknown), &nodes, 0)
            .unwrap_err()
            .contains("no node yet")
    );
    let mut not_ready = nodes.clone();
    not_ready[1].ready = false;
    assert!(spot_health(&spot(2, &both), &not_ready, 0).is_err());
    let mut cordoned_by_someone = nodes.clone();
    cordoned_by_someone[0].cordoned_by_agent = false;
    assert!(spot_health(&spot(2, &both), &cordoned_by_someone, 0).is_err());
    assert!(spot_health(&spot(0, &[]), &nodes, 0).is_err());
}

#[test]
fn utilization_counts_this_nodes_moving_pods_on_the_rest() {
    let nodes = vec![
        node("fallback", "i-f", 2000, 8),
        node("a", "i-a", 2000, 8),
        node("b", "i-b", 2000, 8),
    ];
    let pods = vec![
        pod("a", 1000, 2, true),
        pod("b", 500, 2, true),
        pod("fallback", 500, 4, true),
        // A DaemonSet pod of the fallback stays with it.
        pod("fallback", 1000, 4, false),
    ];
    let cluster = ClusterView::of("fallback", nodes, pods);
    let load = utilization_without(&cluster).unwrap();
    assert_eq!(load.cpu, 50.0);
    assert_eq!(load.memory, 50.0);
    assert!(pods_fit_elsewhere(&cluster));
    let alone = ClusterView::of("a", vec![node("a", "i", 1, 1)], vec![]);
    assert_eq!(utilization_without(&alone), None);
}

#[test]
fn pods_that_fit_in_total_may_not_fit_any_one_node() {
    let nodes = vec![
        node("fallback", "i-f", 4000, 8),
        node("a", "i-a", 2000, 8),
        node("b", "i-b", 2000, 8),
    ];
    // 1.5 CPU free on each of a and b, one 1.6-CPU pod to move: 65% in total.
    let pods = vec![
        pod("a", 500, 1, true),
        pod("b", 500, 1, true),
        pod("fallback", 1600, 1, true),
    ];
    let cluster = ClusterView::of("fallback", nodes, pods);
    let load = utilization_without(&cluster).unwrap();
    assert!(load.cpu < 75.0);
    assert!(!pods_fit_elsewhere(&cluster));
}

fn ready_to_go() -> Observation {
    Observation {
        bought_ago: Duration::from_secs(700),
        aborted_ago: None,
        on_demand: Ok(()),
        spot_health: Ok(()),
        healthy_for: Duration::from_secs(130),
        utilization: Some(Utilization {
            cpu: 40.0,
            memory: 50.0,
        }),
        pods_fit: true,
        budgets: Ok(()),
        spot_requested: false,
        pre_scale: PreScale::Off,
    }
}

#[test]
fn each_condition_holds_scale_back_until_it_is_met() {
    let settings = ScaleBackSettings::default();
    assert_eq!(
        decide(&ready_to_go(), &settings),
        Decision::DrainAndTerminate
    );
    let over = Utilization {
        cpu: 40.0,
        memory: 75.0,
    };
    let waits: Vec<(&str, Observation)> = vec![
        (
            "too soon",
            Observation {
                bought_ago: Duration::from_secs(599),
                ..ready_to_go()
            },
        ),
        (
            "aborted recently",
            Observation {
                aborted_ago: Some(Duration::from_secs(10)),
                ..ready_to_go()
            },
        ),
        (
            "on-demand ASG at MinSize",
            Observation {
                on_demand: Err("at MinSize".into()),
                ..ready_to_go()
            },
        ),
        (
            "spot unhealthy",
            Observation {
                spot_health: Err("1 of 2 InService".into()),
                ..ready_to_go()
            },
        ),
        (
            "not stable long enough",
            Observation {
                healthy_for: Duration::from_secs(119),
                ..ready_to_go()
            },
        ),
        (
            "memory at the ceiling",
            Observation {
                utilization: Some(over),
                ..ready_to_go()
            },
        ),
        (
            "nowhere to go",
            Observation {
                utilization: None,
                ..ready_to_go()
            },
        ),
        (
            "a budget keeps a pod in place",
            Observation {
                budgets: Err("pod a/b cannot move now".into()),
                ..ready_to_go()
            },
        ),
        (
            "extra spot instance asked for, pods still do not fit",
            Observation {
                pods_fit: false,
                spot_requested: true,
                ..ready_to_go()
            },
        ),
    ];
    for (name, seen) in waits {
        assert!(
            matches!(decide(&seen, &settings), Decision::Wait(_)),
            "case: {name}"
        );
    }
    let no_fit = Observation {
        pods_fit: false,
        ..ready_to_go()
    };
    assert_eq!(decide(&no_fit, &settings), Decision::ScaleSpotFirst);
}

#[test]
fn the_record_says_where_a_restarted_agent_goes_on() {
    let mut record = ScaleBackRecord::new("i-f");
    assert_eq!(resume(&record), Resume::Watch);
    record.phase = Phase::Draining { since: 1 };
    let read = ScaleBackRecord::parse(Some(&record.to_annotation()), "i-f");
    assert_eq!(read, record);
    assert_eq!(resume(&read), Resume::FinishDrain);
    record.phase = Phase::Terminated { at: 2 };
    assert_eq!(resume(&record), Resume::Done);
    // A record of another instance that had the same node name does not count.
    let other = ScaleBackRecord::parse(Some(&record.to_annotation()), "i-g");
    assert_eq!(other, ScaleBackRecord::new("i-g"));
    assert_eq!(
        ScaleBackRecord::parse(Some("{"), "i-f"),
        ScaleBackRecord::new("i-f")
    );
}

fn own_pod(name: &str, labels: &[(&str, &str)], ready: bool, moves: bool) -> PodView {
    PodView {
        identity: Some(PodIdentity {
            namespace: "shop".into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ready,
        }),
        ..pod("fallback", 100, 1, moves)
    }
}

fn budget(name: &str, app: &str, allowed: i32, healthy: i32, desired: i32) -> BudgetView {
    BudgetView {
        namespace: "shop".into(),
        name: name.into(),
        selector: Some(LabelSelector {
            match_labels: Some([("app".to_owned(), app.to_owned())].into()),
            match_expressions: None,
        }),
        disruptions_allowed: allowed,
        current_healthy: healthy,
        desired_healthy: desired,
        always_allow_unhealthy: false,
    }
}

#[test]
fn budgets_hold_a_pod_as_the_eviction_api_would() {
    let cluster = |pods: Vec<PodView>| {
        ClusterView::of("fallback", vec![node("fallback", "i-f", 4000, 8)], pods)
    };
    let web = || own_pod("web-1", &[("app", "web")], true, true);
    // (case, pods, budgets, allowed)
    let cases: Vec<(&str, Vec<PodView>, Vec<BudgetView>, bool)> = vec![
        ("no budget", vec![web()], vec![], true),
        (
            "budget with room",
            vec![web()],
            vec![budget("web", "web", 1, 3, 2)],
            true,
        ),
        (
            "budget at its minimum",
            vec![web()],
            vec![budget("web", "web", 0, 2, 2)],
            false,
        ),
        (
            "another app's budget",
            vec![web()],
            vec![budget("db", "db", 0, 1, 1)],
            true,
        ),
        (
            "a budget in another namespace",
            vec![web()],
            vec![BudgetView {
                namespace: "other".into(),
                ..budget("web", "web", 0, 2, 2)
            }],
            true,
        ),
        (
            "two budgets on one pod",
            vec![web()],
            vec![
                budget("web", "web", 1, 3, 2),
                budget("web-too", "web", 1, 3, 2),
            ],
            false,
        ),
        (
            "a pod that does not move (DaemonSet)",
            vec![own_pod("agent", &[("app", "web")], true, false)],
            vec![budget("web", "web", 0, 2, 2)],
            true,
        ),
        (
            "a pod not Ready while the budget is met",
            vec![own_pod("web-2", &[("app", "web")], false, true)],
            vec![budget("web", "web", 0, 2, 2)],
            true,
        ),
        (
            "a pod not Ready while the budget is short",
            vec![own_pod("web-2", &[("app", "web")], false, true)],
            vec![budget("web", "web", 0, 1, 2)],
            false,
        ),
        (
            "a pod not Ready under AlwaysAllow",
            vec![own_pod("web-2", &[("app", "web")], false, true)],
            vec![BudgetView {
                always_allow_unhealthy: true,
                ..budget("web", "web", 0, 1, 2)
            }],
            true,
        ),
        (
            "a budget without a selector selects nothing",
            vec![web()],
            vec![BudgetView {
                selector: None,
                ..budget("web", "web", 0, 2, 2)
            }],
            true,
        ),
    ];
    for (case, pods, budgets, allowed) in cases {
        let verdict = budgets_allow(&cluster(pods), &budgets);
        assert_eq!(verdict.is_ok(), allowed, "{case}: {verdict:?}");
    }
    let why = budgets_allow(&cluster(vec![web()]), &[budget("web", "web", 0, 2, 2)]).unwrap_err();
    assert!(
        why.contains("shop/web-1") && why.contains("shop/web"),
        "{why}"
    );
}

#[test]
fn selectors_match_labels_and_expressions_as_kubernetes_does() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let expression = |op: &str, values: &[&str]| LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        }]),
    };
    assert!(
        matches(&LabelSelector::default(), &labels),
        "empty selects all"
    );
    assert!(matches(&expression("In", &["front", "back"]), &labels));
    assert!(!matches(&expression("In", &["back"]), &labels));
    assert!(matches(&expression("NotIn", &["back"]), &labels));
    assert!(!matches(&expression("NotIn", &["front"]), &labels));
    assert!(matches(&expression("Exists", &[]), &labels));
    assert!(!matches(&expression("DoesNotExist", &[]), &labels));
    assert!(
        !matches(&expression("Gt", &["1"]), &labels),
        "unknown operator"
    );
}

#[test]
fn pre_scale_buys_spot_nodes_over_the_ceiling_then_falls_back_to_its_threshold() {
    let settings = ScaleBackSettings::default();
    let over = |highest: f64| Observation {
        utilization: Some(Utilization {
            cpu: highest,
            memory: 10.0,
        }),
        ..ready_to_go()
    };
    let asked = |ago: u64| PreScale::Asked {
        ago: Duration::from_secs(ago),
        timeout: Duration::from_secs(300),
        fallback_threshold: 95,
    };
    // (case, observation, expected)
    let rows: Vec<(&str, Observation, Option<Decision>)> = vec![
        ("off: over the ceiling waits", over(80.0), None),
        (
            "not yet asked: buys",
            Observation {
                pre_scale: PreScale::NotYet { nodes: Some(3) },
                ..over(80.0)
            },
            Some(Decision::PreScale(3)),
        ),
        (
            "no spot node to size on: waits",
            Observation {
                pre_scale: PreScale::NotYet { nodes: None },
                ..over(80.0)
            },
            None,
        ),
        (
            "asked, within the timeout: waits",
            Observation {
                pre_scale: asked(299),
                ..over(80.0)
            },
            None,
        ),
        (
            "asked, timed out, under the fallback threshold: goes",
            Observation {
                pre_scale: asked(300),
                ..over(80.0)
            },
            Some(Decision::DrainAndTerminate),
        ),
        (
            "asked, timed out, over the fallback threshold: waits",
            Observation {
                pre_scale: asked(300),
                ..over(96.0)
            },
            None,
        ),
        (
            "fallback threshold 0 keeps the node",
            Observation {
                pre_scale: PreScale::Asked {
                    ago: Duration::from_secs(900),
                    timeout: Duration::from_secs(300),
                    fallback_threshold: 0,
                },
                ..over(76.0)
            },
            None,
        ),
        (
            "under the ceiling, pre-scale plays no part",
            Observation {
                pre_scale: PreScale::NotYet { nodes: Some(3) },
                ..ready_to_go()
            },
            Some(Decision::DrainAndTerminate),
        ),
    ];
    for (case, seen, expected) in rows {
        let decision = decide(&seen, &settings);
        match expected {
            Some(expected) => assert_eq!(decision, expected, "{case}"),
            None => assert!(
                matches!(decision, Decision::Wait(_)),
                "{case}: {decision:?}"
            ),
        }
    }
}

#[test]
fn pre_scale_counts_the_spot_nodes_that_reach_the_target() {
    // Without the fallback: 2 nodes of 4 CPUs / 16 GiB, 6 CPUs and 8 GiB requested (75%).
    let nodes = vec![
        node("fallback", "i-f", 4000, 16),
        node("a", "i-a", 4000, 16),
        node("b", "i-b", 4000, 16),
    ];
    let pods = vec![
        pod("a", 2500, 2, true),
        pod("b", 2500, 2, true),
        pod("fallback", 1000, 4, true),
    ];
    let cluster = ClusterView::of("fallback", nodes.clone(), pods);
    let size = spot_node_size(
        &spot(2, &[("i-a", "InService"), ("i-b", "InService")]),
        &nodes,
    )
    .unwrap();
    assert_eq!(size.cpu_millis, 4000);
    // 6 CPUs at 50% need 12 CPUs: one more node of 4 short by 4 CPUs → 1; memory is fine.
    assert_eq!(pre_scale_nodes(&cluster, size, 50, 0), Some(1));
    // At 40%: 15 CPUs, 7 short → 2 nodes; +10% buffer → 2.2 → 3.
    assert_eq!(pre_scale_nodes(&cluster, size, 40, 0), Some(2));
    assert_eq!(pre_scale_nodes(&cluster, size, 40, 10), Some(3));
    // Already under the target: still one (it is only asked for over the ceiling).
    assert_eq!(pre_scale_nodes(&cluster, size, 90, 0), Some(1));
    assert_eq!(
        spot_node_size(&spot(1, &[("i-x", "InService")]), &nodes),
        None
    );
}
