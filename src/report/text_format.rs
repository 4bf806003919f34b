//! The Prometheus text format (version 0.0.4) for scrapers that do not ask for
//! OpenMetrics: `curl`, `promtool check metrics`, older agents. Prometheus itself asks
//! for OpenMetrics and gets it unchanged.
//!
//! The registry only encodes OpenMetrics, where a counter family `actions` has samples
//! `actions_total`; the text format names the family after its samples, so without this
//! `promtool check metrics` reads `actions_total` as a family with no HELP or TYPE.

/// The content type of [`from_openmetrics`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (as Prometheus's scrapes do).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| accept.contains("application/openmetrics-text"))
}

/// `openmetrics` (as the registry encodes it: counters, histograms and gauges, no units or
/// exemplars) in the text format: counter families take their samples' `_total` name,
/// and `# EOF` goes.
pub fn from_openmetrics(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len() + counters.len() * 16);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        text.push_str(&renamed_family(line, &counters).unwrap_or_else(|| line.to_owned()));
        text.push('\n');
    }
    text
}

/// A `# HELP`/`# TYPE` line of a counter family with the family renamed `<name>_total`.
fn renamed_family(line: &str, counters: &[&str]) -> Option<String> {
    ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
        let rest = line.strip_prefix(prefix)?;
        let (name, tail) = rest.split_once(' ')?;
        counters
            .contains(&name)
            .then(|| format!("{prefix}{name}_total {tail}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_families_are_named_after_their_samples() {
        let openmetrics = "# HELP actions Number of actions.\n# TYPE actions counter\n\
            actions_total{node_action=\"cordon\"} 2\n\
            # HELP drain Duration.\n# TYPE drain histogram\n\
            drain_sum 1.5\ndrain_count 1\ndrain_bucket{le=\"+Inf\"} 1\n# EOF\n";
        assert_eq!(
            from_openmetrics(openmetrics),
            "# HELP actions_total Number of actions.\n# TYPE actions_total counter\n\
            actions_total{node_action=\"cordon\"} 2\n\
            # HELP drain Duration.\n# TYPE drain histogram\n\
            drain_sum 1.5\ndrain_count 1\ndrain_bucket{le=\"+Inf\"} 1\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_curl_gets_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
    }
}
