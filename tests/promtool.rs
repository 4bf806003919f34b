//! Prometheus's own tool judges what operators get: the agents' metrics endpoints pass
//! `promtool check metrics`, and the chart's alert rules (rendered by real Helm) pass
//! `promtool check rules` and `promtool test rules` — each alert firing and not firing —
//! over input series whose names and labels come from scraping agents during a simulated
//! fleet run, so a renamed metric or label breaks these tests.

#[path = "support/helm.rs"]
mod helm;
#[path = "support/observed_fleet.rs"]
mod observed_fleet;
#[path = "support/prom.rs"]
mod prom;

use observed_fleet::{ObservedFleet, scrape};
use prom::{Series, as_stored, output_text, promtool, series};
use serde_json::{Value, json};
use spot_guard::sim::fleet::{ON_DEMAND_ASG, SPOT_ASG, node_name};

const RULE_VALUES: &str = r#"
enableRebalanceMonitoring: true
enablePrometheusServer: true
spotGuard:
  enabled: true
  spotAsgName: spot-asg
  onDemandAsgName: on-demand-asg
prometheusRule:
  create: true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_endpoint_passes_promtool_check_metrics() {
    spot_guard::tls::ensure_crypto_provider();
    let fleet = ObservedFleet::run().await;
    for url in &fleet.metrics_urls {
        // What `curl URL | promtool check metrics` sees.
        let text = scrape(url, None).await;
        let output = promtool(&["check", "metrics"], &text);
        assert!(
            output.status.success(),
            "promtool check metrics on {url}:\n{}\n--- scrape ---\n{text}",
            output_text(&output)
        );
        assert!(text.contains("# HELP actions_total "), "{text}");
    }
    fleet.stop().await;
}

/// The chart's PrometheusRule, as a Prometheus rule file.
fn rendered_rules(values: &str) -> Value {
    let objects = helm::template(values).expect("the chart renders");
    let rule = objects
        .into_iter()
        .find(|object| object["kind"] == "PrometheusRule")
        .expect("a PrometheusRule with prometheusRule.create");
    rule["spec"].clone()
}

/// Runs `promtool test rules` on `tests` over the chart's rules; fails with promtool's
/// report.
fn promtool_test(rules: &Value, tests: Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules_path = dir.path().join("rules.json");
    std::fs::write(&rules_path, rules.to_string()).expect("write rules");
    let check = promtool(
        &["check", "rules", rules_path.to_str().expect("utf-8 path")],
        "",
    );
    assert!(
        check.status.success(),
        "promtool check rules:\n{}",
        output_text(&check)
    );
    let test_path = dir.path().join("test.json");
    let file = json!({
        "rule_files": ["rules.json"],
        "evaluation_interval": "1m",
        "tests": tests,
    });
    std::fs::write(&test_path, file.to_string()).expect("write tests");
    let output = promtool(
        &["test", "rules", test_path.to_str().expect("utf-8 path")],
        "",
    );
    assert!(
        output.status.success(),
        "promtool test rules:\n{}\n--- tests ---\n{}",
        output_text(&output),
        serde_json::to_string_pretty(&file).unwrap_or_default()
    );
}

/// What the agents exposed, per node, labelled as Prometheus stores it.
struct Scraped(Vec<Vec<Series>>);

impl Scraped {
    /// The series `name` of node `index` with these label values; fails naming what the
    /// agent did expose under that name.
    fn find(&self, index: usize, name: &str, with: &[(&str, &str)]) -> Series {
        let candidates: Vec<&Series> = self.0[index].iter().filter(|s| s.name == name).collect();
        candidates
            .iter()
            .find(|s| {
                with.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| as_stored((*s).clone(), &node_name(index), index))
            .unwrap_or_else(|| {
                panic!(
                    "node {index}'s agent exposes no {name} with {with:?}; it has {:?}",
                    candidates
                )
            })
    }
}

fn input(series: &Series, values: &str) -> Value {
    json!({"series": series.notation(), "values": values})
}

fn alert(name: &str, at: &str, expected: Value) -> Value {
    json!({"eval_time": at, "alertname": name, "exp_alerts": expected})
}

fn runbook(anchor: &str) -> String {
    format!("docs/TROUBLESHOOTING.md#{anchor}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_fires_on_what_agents_expose_and_stays_quiet_otherwise() {
    spot_guard::tls::ensure_crypto_provider();
    let fleet = ObservedFleet::run().await;
    let scraped = Scraped(fleet.scrape_all().await.iter().map(|s| series(s)).collect());
    let replacement_of_node_1 = fleet
        .world
        .asg
        .group(ON_DEMAND_ASG)
        .map(|group| group.in_service_ids)
        .unwrap_or_default();
    fleet.stop().await;
    let rules = rendered_rules(RULE_VALUES);
    let node = |i: usize| node_name(i);

    // Node 1 fell back for lack of spot capacity; four such fallbacks in an hour page.
    let fallback = scraped.find(1, "spot_guard_fallbacks_total", &[]);
    assert_eq!(fallback.label("reason"), "insufficient-capacity");
    let fallbacks_of = |nodes: usize| -> Vec<Value> {
        (0..nodes)
            .map(|i| {
                let series = fallback.clone().with("node", &format!("other-node-{i}"));
                // Each agent's counter appears at its first fallback, already at 1.
                input(&series, &format!("_x{} 1x60", 10 + i * 5))
            })
            .collect()
    };
    let old_fallbacks: Vec<Value> = (0..5)
        .map(|i| input(&fallback.clone().with("node", &format!("old-{i}")), "1x130"))
        .collect();
    let fallbacks_high = json!([{
        "exp_labels": {"severity": "warning", "reason": "insufficient-capacity"},
        "exp_annotations": {
            "summary": "Spot replacements keep falling back to on-demand",
            "description": format!("4 replacements in the last hour came from {ON_DEMAND_ASG} instead of {SPOT_ASG} (insufficient-capacity)."),
            "runbook_url": runbook("spotguardfallbackshigh"),
        },
    }]);

    // Node 1's on-demand attempt succeeded; the same series with outcome failed is a node
    // left without a replacement.
    let on_demand_ok = scraped.find(
        1,
        "spot_guard_scale_attempts_total",
        &[("asg", ON_DEMAND_ASG), ("outcome", "in_service")],
    );
    let on_demand_failed = on_demand_ok.clone().with("outcome", "failed");
    let no_replacement = json!([{
        "exp_labels": {"severity": "critical", "node": node(1), "asg": ON_DEMAND_ASG},
        "exp_annotations": {
            "summary": "A replacement never became InService in either ASG",
            "description": format!("Node {} was drained without a replacement: its on-demand fallback in {ON_DEMAND_ASG} never became InService.", node(1)),
            "runbook_url": runbook("spotguardnoreplacement"),
        },
    }]);

    // Nodes 1 and 2's on-demand replacements never got a kubelet.
    let not_ready = scraped.find(1, "spot_guard_replacement_node_not_ready_total", &[]);
    let not_ready_instance = not_ready.label("exported_instance").to_owned();
    assert!(
        replacement_of_node_1.contains(&not_ready_instance),
        "{not_ready_instance} is one of {replacement_of_node_1:?}"
    );
    let replacement_not_ready = json!([{
        "exp_labels": {"severity": "warning", "node": node(1), "asg": ON_DEMAND_ASG, "exported_instance": not_ready_instance},
        "exp_annotations": {
            "summary": "A replacement instance never became a Ready Node",
            "description": format!("Replacement {not_ready_instance} from {ON_DEMAND_ASG}, bought for node {}, was not a Ready Node within SPOT_GUARD_NODE_READY_TIMEOUT.", node(1)),
            "runbook_url": runbook("spotguardreplacementnotready"),
        },
    }]);

    // Node 2's drain was blocked by a PodDisruptionBudget; node 0's completed.
    let drain_incomplete = scraped.find(
        2,
        "spot_guard_drain_duration_seconds_count",
        &[("outcome", "incomplete")],
    );
    let drain_complete = scraped.find(
        0,
        "spot_guard_drain_duration_seconds_count",
        &[("outcome", "complete")],
    );
    let drain_alert = json!([{
        "exp_labels": {"severity": "warning", "node": node(2), "outcome": "incomplete"},
        "exp_annotations": {
            "summary": "A drain ended with pods left on the node",
            "description": format!("The drain of node {} ({SPOT_ASG}) ended incomplete: pods were left, blocked by a PodDisruptionBudget or not terminated.", node(2)),
            "runbook_url": runbook("spotguarddrainincomplete"),
        },
    }]);

    // Node 0's IMDS went down.
    let monitor_errors = scraped.find(0, "events_error_total", &[]);
    let monitor = monitor_errors.label("event_error_where").to_owned();
    let monitor_alert = json!([{
        "exp_labels": {"severity": "warning", "node": node(0), "event_error_where": monitor},
        "exp_annotations": {
            "summary": "The IMDS monitor keeps failing",
            "description": format!("The {monitor} monitor of node {} ({SPOT_ASG}) has failed for 10 minutes: notices for this instance may be missed.", node(0)),
            "runbook_url": runbook("spotguardmonitorfailing"),
        },
    }]);

    // The scrape target of node 0's agent.
    let up = Series {
        name: "up".to_owned(),
        labels: prom::target_labels(&node(0), 0),
    };
    let mut down_labels = json!({"severity": "warning"});
    for (key, value) in &up.labels {
        down_labels[key] = json!(value);
    }
    let agent_down = json!([{
        "exp_labels": down_labels,
        "exp_annotations": {
            "summary": "A spot-guard agent stopped reporting",
            "description": format!("The agent on node {} ({SPOT_ASG}) has not answered a scrape for 5 minutes: its node is unprotected.", node(0)),
            "runbook_url": runbook("spotguardagentdown"),
        },
    }]);

    // Node 1's webhook pointed at a closed port.
    let webhook = scraped.find(1, "spot_guard_report_errors_total", &[("sink", "webhook")]);
    let webhook_alert = json!([{
        "exp_labels": {"severity": "info", "node": node(1)},
        "exp_annotations": {
            "summary": "Webhook notifications are not delivered",
            "description": format!("The agent on node {} ({SPOT_ASG}) could not deliver webhook posts in the last 15 minutes.", node(1)),
            "runbook_url": runbook("spotguardwebhookfailing"),
        },
    }]);

    let tests = json!([
        {
            "interval": "1m",
            "input_series": fallbacks_of(4),
            "alert_rule_test": [
                alert("SpotGuardFallbacksHigh", "20m", json!([])),
                alert("SpotGuardFallbacksHigh", "30m", fallbacks_high),
                // An hour after the first, only three remain in the window.
                alert("SpotGuardFallbacksHigh", "71m", json!([])),
            ],
        },
        {
            "interval": "1m",
            "input_series": fallbacks_of(3).into_iter().chain(old_fallbacks).collect::<Vec<_>>(),
            "alert_rule_test": [alert("SpotGuardFallbacksHigh", "125m", json!([]))],
        },
        {
            "interval": "1m",
            "input_series": [input(&on_demand_failed, "_x5 1x60")],
            "alert_rule_test": [
                alert("SpotGuardNoReplacement", "10m", no_replacement),
                alert("SpotGuardNoReplacement", "50m", json!([])),
            ],
        },
        {
            "interval": "1m",
            "input_series": [input(&on_demand_ok, "_x5 1x60")],
            "alert_rule_test": [alert("SpotGuardNoReplacement", "10m", json!([]))],
        },
        {
            "interval": "1m",
            "input_series": [input(&not_ready, "_x5 1x60")],
            "alert_rule_test": [
                alert("SpotGuardReplacementNotReady", "10m", replacement_not_ready),
                alert("SpotGuardReplacementNotReady", "50m", json!([])),
            ],
        },
        {
            "interval": "1m",
            "input_series": [input(&drain_incomplete, "_x5 1x60"), input(&drain_complete, "_x5 1x60")],
            "alert_rule_test": [
                alert("SpotGuardDrainIncomplete", "10m", drain_alert),
                alert("SpotGuardDrainIncomplete", "50m", json!([])),
            ],
        },
        {
            "interval": "1m",
            "input_series": [input(&monitor_errors, "0+5x40")],
            "alert_rule_test": [
                // Pending until it has failed for 10 minutes.
                alert("SpotGuardMonitorFailing", "8m", json!([])),
                alert("SpotGuardMonitorFailing", "20m", monitor_alert),
            ],
        },
        {
            "interval": "1m",
            "input_series": [input(&monitor_errors, "3x40")],
            "alert_rule_test": [alert("SpotGuardMonitorFailing", "20m", json!([]))],
        },
        {
            "interval": "1m",
            "input_series": [input(&up, "1x5 0x30")],
            "alert_rule_test": [
                alert("SpotGuardAgentDown", "8m", json!([])),
                alert("SpotGuardAgentDown", "15m", agent_down),
            ],
        },
        {
            "interval": "1m",
            "input_series": [input(&up, "1x40")],
            "alert_rule_test": [alert("SpotGuardAgentDown", "15m", json!([]))],
        },
        {
            "interval": "1m",
            "input_series": [input(&webhook, "_x5 1x60")],
            "alert_rule_test": [
                alert("SpotGuardWebhookFailing", "10m", webhook_alert),
                alert("SpotGuardWebhookFailing", "25m", json!([])),
            ],
        },
    ]);
    promtool_test(&rules, tests);
}

#[test]
fn additional_rules_join_the_group_and_pass_promtool() {
    let values = format!(
        "{RULE_VALUES}  labels:\n    release: kube-prometheus-stack\n  additionalRules:\n    - alert: SpotGuardTooManyDrains\n      expr: sum(spot_guard_drain_duration_seconds_count) > 100\n"
    );
    let rules = rendered_rules(&values);
    let names: Vec<&str> = rules["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|rule| rule["alert"].as_str())
        .collect();
    assert_eq!(names.last(), Some(&"SpotGuardTooManyDrains"), "{names:?}");
    promtool_test(&rules, json!([]));
}
