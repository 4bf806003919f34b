#!/usr/bin/env python3
"""Generates charts/spot-guard/dashboards/spot-guard.json, the Grafana dashboard the chart
ships (grafanaDashboard.create), with Grafana's grafana-foundation-sdk (installed into
target/dashboard-venv by scripts/dashboard-venv.sh).

    target/dashboard-venv/bin/python scripts/dashboard.py > charts/spot-guard/dashboards/spot-guard.json

tests/dashboard.rs checks that the committed file is this script's output and runs every
panel's query against a Prometheus that scraped agents during a simulated fleet run.

Each agent's counters start at its first event (the label set is new then), which rate()
and increase() cannot see; and an agent often goes away with its node soon after it acted
(a drained spot node, a fallback given back), when Prometheus marks its series stale and
an instant selector no longer returns them. Panels that count events over the dashboard's
range therefore take each series' last sample in the range, less its last one before the
range, or all of it for a series that began in the range.
"""

import json
import sys

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
NODE = 'node=~"$node"'
IN_SERVICE = 'outcome="in_service"'
TERMINATED = 'outcome="terminated"'


def windowed(selector: str) -> str:
    """Events of `selector` in the dashboard's time range, first events and those of agents
    gone since included."""
    last = f"last_over_time({selector}[$__range])"
    before = f"last_over_time({selector}[$__range] offset $__range)"
    return f"(({last} - {before}) or {last})"


def with_node(metric: str, matchers: str = "") -> str:
    inner = ",".join(m for m in (NODE, matchers) if m)
    return f"{metric}{{{inner}}}"


def query(expr: str, legend: str, ref: str = "A", instant: bool = False):
    target = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    return target.instant() if instant else target.range()


def place(panel, x: int, y: int, w: int = 12, h: int = 8):
    return panel.datasource(DATASOURCE).grid_pos(GridPos(x=x, y=y, w=w, h=h))


def quantiles(metric: str, by: str, unit: str = "s"):
    buckets = windowed(with_node(f"{metric}_bucket"))
    return [
        query(f"histogram_quantile({q}, sum by (le, {by}) ({buckets}))", f"p{int(q * 100)} {{{{{by}}}}}", ref)
        for q, ref in ((0.5, "A"), (0.9, "B"))
    ]


def build():
    panels = [
        place(
            bargauge.Panel()
            .title("Replacements by ASG and outcome")
            .description("Scale-up attempts in the time range: in_service (bought), failed (fell back or none), preempted (an interruption came first).")
            .with_target(query(
                f"sum by (asg, outcome) ({windowed(with_node('spot_guard_scale_attempts_total'))})",
                "{{asg}} {{outcome}}", instant=True)),
            0, 0),
        place(
            bargauge.Panel()
            .title("Fallback reasons")
            .description("Why replacements came from the on-demand ASG instead of the spot ASG.")
            .with_target(query(
                f"sum by (reason) ({windowed(with_node('spot_guard_fallbacks_total'))})",
                "{{reason}}", instant=True)),
            12, 0),
        place(
            timeseries.Panel()
            .title("Rebalance recommendation → replacement InService")
            .unit("s")
            .targets(quantiles("spot_guard_replacement_in_service_seconds", "asg")),
            0, 8),
        place(
            timeseries.Panel()
            .title("Replacement InService → Node Ready")
            .unit("s")
            .targets(quantiles("spot_guard_replacement_node_ready_seconds", "asg")),
            12, 8),
        place(
            timeseries.Panel()
            .title("Drain duration by outcome")
            .unit("s")
            .targets(quantiles("spot_guard_drain_duration_seconds", "outcome")),
            0, 16),
        place(
            bargauge.Panel()
            .title("Drains and blocked pods")
            .description("Drains by outcome (incomplete: pods left) and evictions refused by a PodDisruptionBudget.")
            .targets([
                query(f"sum by (outcome) ({windowed(with_node('spot_guard_drain_duration_seconds_count'))})",
                      "drains {{outcome}}", "A", instant=True),
                query(f"sum({windowed(with_node('spot_guard_pdb_eviction_retries_total'))})",
                      "evictions refused by a PDB", "B", instant=True),
            ]),
            12, 16),
        place(
            timeseries.Panel()
            .title("IMDS monitor errors")
            .unit("ops")
            .description("Failed IMDS polls per second, by node and monitor.")
            .with_target(query(
                f"sum by (node, event_error_where) (rate({with_node('events_error_total')}[$__rate_interval]))",
                "{{node}} {{event_error_where}}")),
            0, 24),
        place(
            stat.Panel()
            .title("Capacity bought and given back")
            .description("Instances bought per ASG, on-demand fallbacks given back by scale-back, and replacements whose Node never became Ready.")
            .no_value("0")
            .targets([
                query(f"sum by (asg) ({windowed(with_node('spot_guard_scale_attempts_total', IN_SERVICE))})",
                      "bought in {{asg}}", "A", instant=True),
                query(f"sum({windowed(with_node('spot_guard_scale_backs_total', TERMINATED))})",
                      "given back", "B", instant=True),
                query(f"sum({windowed(with_node('spot_guard_replacement_node_not_ready_total'))})",
                      "never Ready", "C", instant=True),
            ]),
            12, 24),
    ]
    builder = (
        dashboard.Dashboard("Spot Guard")
        .uid("spot-guard")
        .tags(["spot-guard", "kubernetes", "spot"])
        .description("spot-guard agents: replacements, fallbacks, waits, drains, IMDS monitor errors and capacity (docs/OBSERVABILITY.md).")
        .time("now-24h", "now")
        .refresh("1m")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("node")
            .label("Node")
            .datasource(DATASOURCE)
            .query("label_values(spot_guard_pdb_eviction_retries_total, node)")
            .include_all(True)
            .multi(True)
            .all_value(".*")
        )
    )
    for panel in panels:
        builder = builder.with_panel(panel)
    return builder.build()


if __name__ == "__main__":
    json.dump(build(), sys.stdout, cls=JSONEncoder, indent=2, sort_keys=True)
    sys.stdout.write("\n")
