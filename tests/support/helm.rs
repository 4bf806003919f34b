//! Renders and lints charts/spot-guard with real Helm (Helm 4 as a library, from the
//! helm-python-sdk venv that scripts/helm-venv.sh creates), through scripts/helm.py.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

pub const VENV_SCRIPT: &str = "scripts/helm-venv.sh";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs scripts/helm.py with `args` and `values` as a values file; returns (success,
/// stdout, stderr). A missing venv fails the test with the command that makes it: the
/// chart checks are never skipped silently.
fn run(args: &[&str], values: &str) -> (bool, String, String) {
    let python = repo().join("target/helm-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash {VENV_SCRIPT}` (scripts/test.sh does) to install Helm for the chart tests",
        python.display()
    );
    let mut file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("create a values file");
    file.write_all(values.as_bytes())
        .expect("write the values file");
    let output = Command::new(&python)
        .arg(repo().join("scripts/helm.py"))
        .args(args)
        .arg(repo().join("charts/spot-guard"))
        .arg("-f")
        .arg(file.path())
        .output()
        .expect("run scripts/helm.py");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `helm template` (after the schema check `helm install` does): the rendered objects,
/// parsed by Helm's own YAML reader, or Helm's refusal.
pub fn template(values: &str) -> Result<Vec<Value>, String> {
    let (ok, stdout, stderr) = run(&["template", "--json"], values);
    if !ok {
        return Err(stderr);
    }
    match serde_json::from_str(&stdout) {
        Ok(Value::Array(objects)) => Ok(objects),
        other => panic!("scripts/helm.py printed no JSON array: {other:?}\n{stdout}"),
    }
}

/// `helm lint --strict` with a Kubernetes version: Ok(report) or Err(report with the findings).
pub fn lint(values: &str) -> Result<String, String> {
    let (ok, stdout, stderr) = run(&["lint"], values);
    let report = format!("{stdout}{stderr}");
    if ok && stdout.contains("1 chart(s) linted, no failures") {
        Ok(report)
    } else {
        Err(report)
    }
}
