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
    assert_eq!(spot_health(&spot(2, &both), &nodes), Ok(()));
    let pending = [("i-a", "InService"), ("i-b", "Pending")];
    assert!(spot_health(&spot(2, &pending), &nodes).is_err());
    let unknown = [("i-a", "InService"), ("i-c", "InService")];
    assert!(
        spot_health(&spot(2, &unknown), &nodes)
            .unwrap_err()
            .contains("no node yet")
    );
    let mut not_ready = nodes.clone();
    not_ready[1].ready = false;
    assert!(spot_health(&spot(2, &both), &not_ready).is_err());
    let mut cordoned_by_someone = nodes.clone();
    cordoned_by_someone[0].cordoned_by_agent = false;
    assert!(spot_health(&spot(2, &both), &cordoned_by_someone).is_err());
    assert!(spot_health(&spot(0, &[]), &nodes).is_err());
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
    let load = utilization_without("fallback", &nodes, &pods).unwrap();
    assert_eq!(load.cpu, 50.0);
    assert_eq!(load.memory, 50.0);
    assert!(pods_fit_elsewhere("fallback", &nodes, &pods));
    assert_eq!(utilization_without("a", &[node("a", "i", 1, 1)], &[]), None);
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
    let load = utilization_without("fallback", &nodes, &pods).unwrap();
    assert!(load.cpu < 75.0);
    assert!(!pods_fit_elsewhere("fallback", &nodes, &pods));
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
        spot_requested: false,
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
