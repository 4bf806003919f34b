//! Renders and lints charts/spot-guard with real Helm (Helm 4 as a library, from the
//! helm-python-sdk venv that scripts/helm-venv.sh creates), through scripts/helm.py.
//! Values come as files of the repository (`files`, merged in order as `helm install -f
//! a -f b` does) followed by `values`, a values file written here.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

pub const VENV_SCRIPT: &str = "scripts/helm-venv.sh";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs scripts/helm.py with `args`, the repository's `files` and `values` as values
/// files; returns (success, stdout, stderr). A missing venv fails the test with the
/// command that makes it: the chart checks are never skipped silently.
fn run(args: &[&str], chart: bool, files: &[&str], values: &str) -> (bool, String, String) {
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
    let mut command = Command::new(&python);
    command.arg(repo().join("scripts/helm.py")).args(args);
    if chart {
        command.arg(repo().join("charts/spot-guard"));
    }
    for path in files {
        command.arg("-f").arg(repo().join(path));
    }
    let output = command
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

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout)
        .unwrap_or_else(|error| panic!("scripts/helm.py printed no JSON ({error}):\n{stdout}"))
}

/// `helm template` (after the schema check `helm install` does): the rendered objects,
/// parsed by Helm's own YAML reader, or Helm's refusal.
pub fn template(values: &str) -> Result<Vec<Value>, String> {
    template_with(&[], values)
}

/// [`template`] with the repository's values `files` first.
pub fn template_with(files: &[&str], values: &str) -> Result<Vec<Value>, String> {
    let (ok, stdout, stderr) = run(&["template", "--json"], true, files, values);
    if !ok {
        return Err(stderr);
    }
    match json(&stdout) {
        Value::Array(objects) => Ok(objects),
        other => panic!("scripts/helm.py printed no JSON array: {other}"),
    }
}

/// The release notes `helm install` would print (templates/NOTES.txt), or Helm's refusal.
pub fn notes_with(files: &[&str], values: &str) -> Result<String, String> {
    let (ok, stdout, stderr) = run(&["template", "--notes"], true, files, values);
    if ok { Ok(stdout) } else { Err(stderr) }
}

/// `helm lint --strict` with a Kubernetes version: Ok(report) or Err(report with the findings).
pub fn lint(values: &str) -> Result<String, String> {
    lint_with(&[], values)
}

/// [`lint`] with the repository's values `files` first.
pub fn lint_with(files: &[&str], values: &str) -> Result<String, String> {
    let (ok, stdout, stderr) = run(&["lint"], true, files, values);
    let report = format!("{stdout}{stderr}");
    if ok && stdout.contains("1 chart(s) linted, no failures") {
        Ok(report)
    } else {
        Err(report)
    }
}

/// The values `files` merged and read by Helm's YAML reader, as JSON.
pub fn values_of(files: &[&str]) -> Value {
    let (ok, stdout, stderr) = run(&["values"], false, files, "{}");
    assert!(ok, "scripts/helm.py values {files:?} failed: {stderr}");
    json(&stdout)
}

/// The kind of a rendered object.
pub fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or("<no kind>")
}

/// The one rendered object of kind `wanted`.
pub fn only<'a>(objects: &'a [Value], wanted: &str) -> &'a Value {
    let matching: Vec<&Value> = objects.iter().filter(|o| kind(o) == wanted).collect();
    assert_eq!(matching.len(), 1, "expected one {wanted}, got {matching:?}");
    matching[0]
}

/// Deserializes into the k8s-openapi type and back: k8s-openapi drops fields it does not
/// know, so a typo (`tolerations` → `toleration`) shows up as a difference.
pub fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) -> T {
    let typed: T = serde_json::from_value(object.clone())
        .unwrap_or_else(|error| panic!("{} is not valid: {error}\n{object:#}", kind(object)));
    let again = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(
        &again,
        object,
        "{} changed in a round trip through k8s-openapi: an unknown or misspelled field",
        kind(object)
    );
    typed
}
