//! Prometheus's own tools for the observability tests: `promtool` and the `prometheus`
//! server from Debian's `prometheus` package (scripts/prometheus.sh installs it), and the
//! series an agent's scrape holds, labelled as Prometheus stores them.
//!
//! Use from a test file with `#[path = "support/prom.rs"] mod prom;`.

#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub const INSTALL_SCRIPT: &str = "scripts/prometheus.sh";

/// `name` from PATH; a missing one fails the test with the command that installs it:
/// these checks are never skipped silently.
pub fn binary(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: run `bash {INSTALL_SCRIPT}` (scripts/test.sh does)")
        })
}

/// Runs promtool with `args`, `stdin` on its standard input.
pub fn promtool(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(binary("promtool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    child.wait_with_output().expect("promtool ends")
}

pub fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One sample line of a scrape: the metric name and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl Series {
    /// In PromQL's series notation (as promtool's input_series takes it).
    pub fn notation(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(key, value)| {
                let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
                format!("{key}=\"{escaped}\"")
            })
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn label(&self, key: &str) -> &str {
        self.labels
            .get(key)
            .unwrap_or_else(|| panic!("{} has no label {key}", self.notation()))
    }
}

/// The samples of a scrape (OpenMetrics or text format). Label values here never hold
/// `,` `"` or `}` unescaped, which keeps this reader short.
pub fn series(scrape: &str) -> Vec<Series> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let key = line.rsplit_once(' ').map_or(line, |(key, _)| key);
            match key.split_once('{') {
                None => Series {
                    name: key.to_owned(),
                    labels: BTreeMap::new(),
                },
                Some((name, rest)) => Series {
                    name: name.to_owned(),
                    labels: rest
                        .trim_end_matches('}')
                        .split(',')
                        .filter_map(|pair| pair.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                        .collect(),
                },
            }
        })
        .collect()
}

/// The labels Prometheus adds to what it scrapes from the agent on `node` through the
/// chart's PodMonitor: its target's, plus `node` (the chart's relabeling). The agent's own
/// `instance` label (an EC2 instance id) clashes with the target's and is stored as
/// `exported_instance`, as Prometheus does without honor_labels.
pub fn as_stored(mut series: Series, node: &str, index: usize) -> Series {
    if let Some(instance) = series.labels.remove("instance") {
        series
            .labels
            .insert("exported_instance".to_owned(), instance);
    }
    for (key, value) in target_labels(node, index) {
        series.labels.insert(key, value);
    }
    series
}

pub fn target_labels(node: &str, index: usize) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("job".to_owned(), "spot-guard".to_owned()),
        ("namespace".to_owned(), "kube-system".to_owned()),
        ("pod".to_owned(), format!("spot-guard-{index:05}")),
        ("instance".to_owned(), format!("10.0.0.{index}:9092")),
        ("node".to_owned(), node.to_owned()),
    ])
}
