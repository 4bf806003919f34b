//! The chart's ValidatingAdmissionPolicy, rendered by real Helm and its CEL evaluated by a
//! CEL evaluator (cel-python, scripts/cel_eval.py): the agent may change its own Node's
//! taints, labels, annotations and cordon (every name it writes, from src/names.rs),
//! and nothing of another Node or of what others own.

#[path = "support/helm.rs"]
mod helm;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use serde_json::{Value, json};
use spot_guard::names::{
    AGENT_TAINTS, CA_SCALE_DOWN_DISABLED, CORDONED_BY_ANNOTATION, EXCLUDE_FROM_LB_LABEL,
    EXCLUDE_FROM_LB_VALUE, HANDLED_EVENTS_ANNOTATION, NTH_LABELS, OUT_OF_SERVICE_TAINT,
    OUT_OF_SERVICE_VALUE, PROTECTED_UNTIL_ANNOTATION, REPLACEMENT_ANNOTATION,
    SCALE_BACK_ANNOTATION,
};

const AGENT: &str = "system:serviceaccount:kube-system:spot-guard";
const NODE_CLAIM: &str = "authentication.kubernetes.io/node-name";

fn policy() -> Value {
    helm::lint("").unwrap_or_else(|report| panic!("lint failed:\n{report}"));
    let objects = helm::template("").expect("renders");
    let policy = objects
        .iter()
        .find(|o| o["kind"] == "ValidatingAdmissionPolicy")
        .expect("a ValidatingAdmissionPolicy by default")
        .clone();
    let binding = objects
        .iter()
        .find(|o| o["kind"] == "ValidatingAdmissionPolicyBinding")
        .expect("its binding");
    let typed: ValidatingAdmissionPolicy = serde_json::from_value(policy.clone()).expect("valid");
    let bound: ValidatingAdmissionPolicyBinding =
        serde_json::from_value(binding.clone()).expect("valid");
    let spec = bound.spec.expect("spec");
    assert_eq!(spec.policy_name, typed.metadata.name);
    assert_eq!(spec.validation_actions, Some(vec!["Deny".to_owned()]));
    policy
}

/// A Node as the API server holds it, with what others own on it.
fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "team": "a"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"}
        },
        "spec": {
            "providerID": "aws:///eu-west-1a/i-0123456789abcdef0",
            "podCIDR": "10.0.1.0/24",
            "taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
        }
    })
}

/// The Node after everything the agent writes on it (names from src/names.rs).
fn node_after_agent(name: &str) -> Value {
    let mut after = node(name);
    let taints = after["spec"]["taints"].as_array_mut().unwrap();
    for key in AGENT_TAINTS {
        taints.push(json!({"key": key, "value": "spot-itn-1", "effect": "NoSchedule"}));
    }
    taints.push(
        json!({"key": OUT_OF_SERVICE_TAINT, "value": OUT_OF_SERVICE_VALUE, "effect": "NoExecute"}),
    );
    after["spec"]["unschedulable"] = json!(true);
    let labels = after["metadata"]["labels"].as_object_mut().unwrap();
    for label in NTH_LABELS {
        labels.insert(label.to_owned(), json!("x"));
    }
    labels.insert(
        EXCLUDE_FROM_LB_LABEL.to_owned(),
        json!(EXCLUDE_FROM_LB_VALUE),
    );
    let annotations = after["metadata"]["annotations"].as_object_mut().unwrap();
    for annotation in [
        HANDLED_EVENTS_ANNOTATION,
        CORDONED_BY_ANNOTATION,
        REPLACEMENT_ANNOTATION,
        SCALE_BACK_ANNOTATION,
        PROTECTED_UNTIL_ANNOTATION,
        CA_SCALE_DOWN_DISABLED,
    ] {
        annotations.insert(annotation.to_owned(), json!("x"));
    }
    after
}

fn request(user: &str, node_claim: Option<&str>) -> Value {
    let mut user_info = json!({"username": user, "groups": ["system:serviceaccounts"]});
    if let Some(claim) = node_claim {
        user_info["extra"] = json!({ NODE_CLAIM: [claim] });
    }
    json!({"operation": "UPDATE", "userInfo": user_info})
}

struct Case {
    name: &'static str,
    request: Value,
    old: Value,
    new: Value,
}

/// (matched, denied messages) per case, from the CEL evaluator.
fn evaluate(policy: &Value, cases: &[Case]) -> Vec<(bool, Vec<String>)> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = repo.join("target/cel-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/cel-venv.sh` (scripts/test.sh does)",
        python.display()
    );
    let input = json!({
        "policy": policy,
        "cases": cases.iter().map(|c| json!({
            "name": c.name, "request": c.request, "object": c.new, "oldObject": c.old
        })).collect::<Vec<_>>(),
    });
    let mut child = Command::new(python)
        .arg(repo.join("scripts/cel_eval.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cel_eval.py runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    results
        .iter()
        .map(|r| {
            let denied = r["denied"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap().to_owned())
                .collect();
            (r["matched"].as_bool().unwrap(), denied)
        })
        .collect()
}

#[test]
fn the_agent_may_change_only_what_it_owns_on_its_own_node() {
    let policy = policy();
    let own = || request(AGENT, Some("n1"));
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut after = node_after_agent("n1");
        edit(&mut after);
        after
    };
    let allowed = [
        Case {
            name: "everything the agent writes",
            request: own(),
            old: node("n1"),
            new: node_after_agent("n1"),
        },
        Case {
            name: "undo: uncordon and remove its own marks",
            request: own(),
            old: node_after_agent("n1"),
            new: node("n1"),
        },
    ];
    let forbidden = [
        (
            Case {
                name: "another node",
                request: request(AGENT, Some("n2")),
                old: node("n1"),
                new: node_after_agent("n1"),
            },
            "only the Node it runs on",
        ),
        (
            Case {
                name: "a token without the node claim",
                request: request(AGENT, None),
                old: node("n1"),
                new: node_after_agent("n1"),
            },
            "only the Node it runs on",
        ),
        (
            Case {
                name: "a foreign taint removed",
                request: own(),
                old: node("n1"),
                new: with(&|n| {
                    n["spec"]["taints"].as_array_mut().unwrap().remove(0);
                }),
            },
            "its own taints",
        ),
        (
            Case {
                name: "a foreign taint added",
                request: own(),
                old: node("n1"),
                new: with(&|n| {
                    n["spec"]["taints"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"key": "evil", "effect": "NoExecute"}));
                }),
            },
            "its own taints",
        ),
        (
            Case {
                name: "a foreign label changed",
                request: own(),
                old: node("n1"),
                new: with(&|n| {
                    n["metadata"]["labels"]["team"] = json!("b");
                }),
            },
            "its own labels",
        ),
        (
            Case {
                name: "a foreign label removed",
                request: own(),
                old: node("n1"),
                new: with(&|n| {
                    n["metadata"]["labels"]
                        .as_object_mut()
                        .unwrap()
                        .remove("kubernetes.io/hostname");
                }),
            },
            "its own labels",
        ),
        (
            Case {
                name: "a foreign annotation added",
                request: own(),
                old: node("n1"),
                new: with(&|n| {
                    n["metadata"]["annotations"]["example.com/owner"] = json!("me");
                }),
            },
            "its own annotations",
        ),
        (
            Case {
                name: "the providerID changed",
                request: own(),
                old: node("n1"),
                new: with(&|n| {
                    n["spec"]["providerID"] = json!("aws:///eu-west-1a/i-0fffffffffffffff0");
                }),
            },
            "taints and spec.unschedulable",
        ),
    ];
    let mut cases: Vec<Case> = allowed.into_iter().collect();
    let expected: Vec<&str> = forbidden.iter().map(|(_, why)| *why).collect();
    cases.extend(forbidden.into_iter().map(|(case, _)| case));
    // Someone else (the kubelet) is not this policy's business.
    cases.push(Case {
        name: "the kubelet",
        request: request("system:node:n1", None),
        old: node("n1"),
        new: with(&|n| n["metadata"]["labels"]["team"] = json!("b")),
    });

    let results = evaluate(&policy, &cases);
    for (case, (matched, denied)) in cases.iter().zip(&results).take(2) {
        assert!(
            *matched && denied.is_empty(),
            "{}: denied {denied:?}",
            case.name
        );
    }
    for ((case, (matched, denied)), why) in cases.iter().zip(&results).skip(2).zip(&expected) {
        assert!(*matched, "{}: not matched", case.name);
        assert!(
            denied.iter().any(|m| m.contains(why)),
            "{}: expected a denial saying '{why}', got {denied:?}",
            case.name
        );
    }
    let (matched, _) = results.last().unwrap();
    assert!(
        !matched,
        "the policy must match only the agent's ServiceAccount"
    );
}

#[test]
fn the_policy_can_be_switched_off() {
    let objects = helm::template("admissionPolicy:\n  enabled: false\n").expect("renders");
    assert!(
        objects
            .iter()
            .all(|o| o["kind"] != "ValidatingAdmissionPolicy")
    );
}
