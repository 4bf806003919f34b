use clap::Parser;

use super::*;

/// The least that turns Spot Guard on.
const SPOT_GUARD_ON: [&str; 5] = [
    "--node-name=n1",
    "--enable-spot-guard=true",
    "--enable-rebalance-monitoring",
    "--spot-asg-name=spot",
    "--on-demand-asg-name=od",
];

fn parse(argv: &[&str]) -> Result<Config, String> {
    let mut full = vec!["spot-guard"];
    full.extend_from_slice(argv);
    let cli = Cli::try_parse_from(full).map_err(|e| e.to_string())?;
    Config::try_from(cli.args).map_err(|e| e.to_string())
}

#[test]
fn defaults_match_nth() {
    let config = parse(&["--node-name=n1"]).unwrap();
    assert_eq!(config.metadata_url, "http://169.254.169.254");
    assert_eq!(config.metadata_tries, 3);
    assert!(!config.dry_run);
    assert!(!config.enable_rebalance_monitoring);
    assert!(!config.enable_rebalance_draining);
    assert!(config.enable_spot_interruption_draining);
    assert!(!config.cordon_only);
    assert!(!config.taint_node);
    assert_eq!(config.taint_effect, TaintEffect::NoSchedule);
    assert!(config.delete_emptydir_data);
    assert!(config.ignore_daemon_sets);
    assert_eq!(config.pod_termination_grace_period, None);
    assert_eq!(
        config.node_termination_grace_period,
        Duration::from_secs(120)
    );
    assert_eq!(config.spot_guard, None);
}

#[test]
fn spot_guard_takes_nth_style_booleans_and_its_defaults() {
    let config = parse(&SPOT_GUARD_ON).unwrap();
    let sg = config.spot_guard.unwrap();
    assert_eq!(sg.spot_asg_name, "spot");
    assert_eq!(sg.on_demand_asg_name, "od");
    assert_eq!(sg.scale_timeout, Duration::from_secs(120));
    assert_eq!(sg.capacity_check_timeout, Duration::from_secs(120));
    assert_eq!(sg.check_interval, Duration::from_secs(10));
}

#[test]
fn spot_guard_without_its_settings_names_each_missing_one() {
    let message = parse(&["--node-name=n1", "--enable-spot-guard=true"]).unwrap_err();
    assert!(message.contains("SPOT_ASG_NAME"), "{message}");
    assert!(message.contains("ON_DEMAND_ASG_NAME"), "{message}");
    assert!(message.contains("ENABLE_REBALANCE_MONITORING"), "{message}");
}

#[test]
fn fleet_flags_have_defaults_and_are_checked() {
    let base = SPOT_GUARD_ON;
    let fleet = parse(&base).unwrap().spot_guard.unwrap();
    assert_eq!(fleet.lease_namespace, "kube-system");
    assert_eq!(fleet.lease_duration, Duration::from_secs(15));
    assert_eq!(fleet.scale_count, 1);
    assert_eq!(fleet.capacity_cool_off, Duration::from_secs(600));
    assert!(!fleet.terminate_after_drain);

    let mut custom = base.to_vec();
    custom.extend([
        "--pod-namespace=spot-guard",
        "--spot-guard-scale-count=2",
        "--spot-guard-terminate-after-drain",
    ]);
    let fleet = parse(&custom).unwrap().spot_guard.unwrap();
    assert_eq!(fleet.lease_namespace, "spot-guard");
    assert_eq!(fleet.scale_count, 2);
    assert!(fleet.terminate_after_drain);

    let mut bad = base.to_vec();
    bad.extend([
        "--spot-guard-scale-count=0",
        "--spot-guard-lease-duration=0",
    ]);
    let message = parse(&bad).unwrap_err();
    assert!(message.contains("SPOT_GUARD_SCALE_COUNT"), "{message}");
    assert!(message.contains("SPOT_GUARD_LEASE_DURATION"), "{message}");
    assert_eq!(parse(&["--node-name=n1"]).unwrap().spot_guard, None);
}

#[test]
fn scale_back_is_opt_in_with_nth_style_defaults_and_checked_values() {
    let base = SPOT_GUARD_ON;
    let fleet = parse(&base).unwrap().spot_guard.unwrap();
    assert_eq!(fleet.scale_back, None);
    assert_eq!(fleet.new_node_protection, Duration::from_secs(900));

    let mut on = base.to_vec();
    on.extend([
        "--spot-guard-scale-back",
        "--spot-guard-new-node-protection=0",
    ]);
    let fleet = parse(&on).unwrap().spot_guard.unwrap();
    assert_eq!(fleet.scale_back, Some(ScaleBackSettings::default()));
    assert_eq!(fleet.new_node_protection, Duration::ZERO);

    let mut bad = on.clone();
    bad.extend([
        "--spot-guard-scale-back-utilization-ceiling=0",
        "--spot-guard-scale-back-check-interval=0",
    ]);
    let message = parse(&bad).unwrap_err();
    assert!(
        message.contains("SPOT_GUARD_SCALE_BACK_UTILIZATION_CEILING"),
        "{message}"
    );
    assert!(
        message.contains("SPOT_GUARD_SCALE_BACK_CHECK_INTERVAL"),
        "{message}"
    );
    let mut over = on.clone();
    over.push("--spot-guard-scale-back-utilization-ceiling=101");
    assert!(parse(&over).unwrap_err().contains("1 to 100"));

    let message = parse(&[
        "--node-name=n1",
        "--spot-guard-scale-back=true",
        "--spot-guard-terminate-after-drain=true",
    ])
    .unwrap_err();
    assert!(
        message.contains("SPOT_GUARD_SCALE_BACK is true but ENABLE_SPOT_GUARD is false"),
        "{message}"
    );
    assert!(
        message.contains("SPOT_GUARD_TERMINATE_AFTER_DRAIN is true"),
        "{message}"
    );
}

#[test]
fn same_asg_for_both_is_refused() {
    let message = parse(&[
        "--node-name=n1",
        "--enable-spot-guard=true",
        "--enable-rebalance-monitoring=true",
        "--spot-asg-name=a",
        "--on-demand-asg-name=a",
    ])
    .unwrap_err();
    assert!(message.contains("both 'a'"), "{message}");
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let message = parse(&[
        "--taint-effect=Sometimes",
        "--pod-termination-grace-period=-5",
        "--node-termination-grace-period=0",
        "--log-level=loud",
    ])
    .unwrap_err();
    for setting in [
        "NODE_NAME",
        "TAINT_EFFECT",
        "POD_TERMINATION_GRACE_PERIOD",
        "NODE_TERMINATION_GRACE_PERIOD",
        "LOG_LEVEL",
    ] {
        assert!(
            message.contains(setting),
            "{setting} missing from: {message}"
        );
    }
}

#[test]
fn go_booleans_parse_like_strconv() {
    for yes in ["1", "t", "T", "TRUE", "true", "True"] {
        assert_eq!(parse_go_bool(yes), Ok(true));
    }
    for no in ["0", "f", "F", "FALSE", "false", "False"] {
        assert_eq!(parse_go_bool(no), Ok(false));
    }
    assert!(parse_go_bool("yes").is_err());
    assert!(parse(&["--node-name=n1", "--dry-run=maybe"]).is_err());
}

#[test]
fn deprecated_delete_local_data_false_keeps_emptydir_pods() {
    let config = parse(&["--node-name=n1", "--delete-local-data=false"]).unwrap();
    assert!(!config.delete_emptydir_data);
}

#[test]
fn queue_processor_mode_is_refused_not_ignored() {
    let message = parse(&[
        "--node-name=n1",
        "--enable-sqs-termination-draining=true",
        "--queue-url=https://sqs.example/q",
    ])
    .unwrap_err();
    assert!(
        message.contains("ENABLE_SQS_TERMINATION_DRAINING"),
        "{message}"
    );
    assert!(message.contains("QUEUE_URL"), "{message}");
}

#[test]
fn queue_only_settings_are_reported_as_ignored() {
    let config = parse(&["--node-name=n1", "--managed-tag=x", "--workers=3"]).unwrap();
    assert!(
        config
            .ignored_settings
            .iter()
            .any(|s| s.starts_with("MANAGED_TAG"))
    );
    assert!(
        config
            .ignored_settings
            .iter()
            .any(|s| s.starts_with("WORKERS"))
    );
}

#[test]
fn deprecated_grace_period_applies_only_without_the_new_name() {
    let old = parse(&["--node-name=n1", "--grace-period=20"]).unwrap();
    assert_eq!(old.pod_termination_grace_period, Some(20));
    let both = parse(&[
        "--node-name=n1",
        "--grace-period=20",
        "--pod-termination-grace-period=40",
    ])
    .unwrap();
    assert_eq!(both.pod_termination_grace_period, Some(40));
}

#[test]
fn webhook_url_is_never_in_the_start_up_line() {
    let config = parse(&[
        "--node-name=n1",
        "--webhook-url=https://hooks.example/T0KEN",
    ])
    .unwrap();
    assert!(config.report.webhook.is_some());
    assert!(!config.to_string().contains("T0KEN"));
}

#[test]
fn nth_scheduled_event_default_is_on() {
    let config = parse(&["--node-name=n1"]).unwrap();
    assert!(config.enable_scheduled_event_draining);
    assert!(!config.enable_asg_lifecycle_draining);
}

#[test]
fn grace_period_minus_one_means_the_pods_own() {
    let config = parse(&["--node-name=n1", "--pod-termination-grace-period=30"]).unwrap();
    assert_eq!(config.pod_termination_grace_period, Some(30));
}

#[test]
fn pre_scale_is_opt_in_under_scale_back_with_the_forks_defaults_and_checked_values() {
    let mut on = SPOT_GUARD_ON.to_vec();
    on.push("--spot-guard-scale-back");
    assert_eq!(parse(&on).unwrap().spot_guard.unwrap().pre_scale, None);
    on.push("--spot-guard-pre-scale");
    let settings = parse(&on).unwrap().spot_guard.unwrap().pre_scale;
    assert_eq!(settings, Some(PreScaleSettings::default()));
    let defaults = PreScaleSettings::default();
    assert_eq!(
        (
            defaults.target_utilization,
            defaults.safety_buffer,
            defaults.timeout,
            defaults.fallback_threshold
        ),
        (65, 10, Duration::from_secs(300), 95),
        "the Go fork's PRE_SCALE_* defaults"
    );
    // (flags added, what the refusal names)
    let refused: [(&[&str], &str); 4] = [
        (
            &["--spot-guard-pre-scale-target-utilization=75"],
            "SPOT_GUARD_PRE_SCALE_TARGET_UTILIZATION",
        ),
        (
            &["--spot-guard-pre-scale-target-utilization=0"],
            "SPOT_GUARD_PRE_SCALE_TARGET_UTILIZATION",
        ),
        (
            &["--spot-guard-pre-scale-fallback-threshold=70"],
            "SPOT_GUARD_PRE_SCALE_FALLBACK_THRESHOLD",
        ),
        (
            &["--spot-guard-pre-scale-fallback-threshold=101"],
            "SPOT_GUARD_PRE_SCALE_FALLBACK_THRESHOLD",
        ),
    ];
    for (flags, named) in refused {
        let mut bad = on.clone();
        bad.extend_from_slice(flags);
        let message = parse(&bad).unwrap_err();
        assert!(message.contains(named), "{flags:?}: {message}");
    }
    let mut keep = on.clone();
    keep.push("--spot-guard-pre-scale-fallback-threshold=0");
    assert_eq!(
        parse(&keep)
            .unwrap()
            .spot_guard
            .unwrap()
            .pre_scale
            .map(|p| p.fallback_threshold),
        Some(0),
        "0 keeps the fallback"
    );
    let mut alone = SPOT_GUARD_ON.to_vec();
    alone.push("--spot-guard-pre-scale");
    assert!(
        parse(&alone)
            .unwrap_err()
            .contains("SPOT_GUARD_PRE_SCALE is true but SPOT_GUARD_SCALE_BACK is false")
    );
}
