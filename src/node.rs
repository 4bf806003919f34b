//! Actions on the agent's own Node: taints, cordon, annotations, labels.
//!
//! Every write is a JSON merge patch computed from a fresh read, so other writers' taints,
//! labels and annotations are kept. Taint lists are replaced whole, so that patch carries the
//! read's `resourceVersion` and the API server refuses it (409) if the node changed meanwhile;
//! we then read again and retry, a bounded number of times. Every action is idempotent and
//! reports whether it changed anything; in dry run it reads, logs "DRY RUN: would …" and
//! writes nothing.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::config::TaintEffect;
use crate::logging::short_event_id;
use crate::names::taint_value;

/// Attempts per write, the first included; NTH retries conflicts for about 5 s.
const WRITE_ATTEMPTS: u32 = 5;
const WRITE_RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// A hung API server must not hold the agent past a two-minute spot notice.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("loading the Kubernetes client configuration (KUBECONFIG or in-cluster): {0}")]
    Config(#[source] kube::config::InferConfigError),
    #[error("invalid Kubernetes API URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("node {node} does not exist in the cluster (check NODE_NAME)")]
    NotFound { node: String },
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
}

/// The client for the cluster the agent runs in: KUBECONFIG if set, else in-cluster.
pub async fn connect() -> Result<kube::Client, NodeError> {
    let config = kube::Config::infer().await.map_err(NodeError::Config)?;
    build_client(config)
}

/// A client for a plain-HTTP API server such as [`crate::sim::kube::FakeKube`].
pub fn client_for_url(url: &str) -> Result<kube::Client, NodeError> {
    let cluster_url = url.parse().map_err(|error| NodeError::InvalidUrl {
        url: url.to_owned(),
        reason: format!("{error}"),
    })?;
    build_client(kube::Config::new(cluster_url))
}

fn build_client(mut config: kube::Config) -> Result<kube::Client, NodeError> {
    crate::tls::ensure_crypto_provider();
    // kube's own retry backs off for minutes on 429, e.g. on a PDB-blocked eviction: every
    // retry must be ours, bounded by our deadlines.
    config.default_retry = false;
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.reset_reader_on_write = true;
    kube::Client::try_from(config).map_err(NodeError::Client)
}

/// Errors worth another attempt: conflicts, throttling, server trouble, broken connections.
pub(crate) fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 409 | 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// The taint list with our taint set, or `None` if it is already there as wanted.
/// Any other taint with our key (another effect) is replaced: the key is ours.
fn with_taint(
    current: &[Taint],
    key: &str,
    value: &str,
    effect: TaintEffect,
) -> Option<Vec<Taint>> {
    let ours: Vec<&Taint> = current.iter().filter(|taint| taint.key == key).collect();
    let already = matches!(ours.as_slice(), [taint]
        if taint.value.as_deref().unwrap_or_default() == value && taint.effect == effect.as_str());
    if already {
        return None;
    }
    let mut taints: Vec<Taint> = current
        .iter()
        .filter(|taint| taint.key != key)
        .cloned()
        .collect();
    taints.push(Taint {
        key: key.to_owned(),
        value: (!value.is_empty()).then(|| value.to_owned()),
        effect: effect.as_str().to_owned(),
        time_added: None,
    });
    Some(taints)
}

/// The taint list without our key, or `None` if it was not there.
fn without_taint(current: &[Taint], key: &str) -> Option<Vec<Taint>> {
    current.iter().any(|taint| taint.key == key).then(|| {
        current
            .iter()
            .filter(|taint| taint.key != key)
            .cloned()
            .collect()
    })
}

fn taints_of(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|spec| spec.taints.as_deref())
        .unwrap_or_default()
}

fn is_unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|spec| spec.unschedulable)
        .unwrap_or(false)
}

/// A merge patch that replaces the taint list, guarded by the version it was computed from.
fn taints_patch(node: &Node, taints: &[Taint]) -> Value {
    json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "spec": {"taints": taints},
    })
}

/// A merge patch setting (`Some`) or removing (`None`) entries of a string map in metadata.
fn metadata_map_patch(
    field: &str,
    current: Option<&std::collections::BTreeMap<String, String>>,
    wanted: &[(&str, Option<&str>)],
) -> Option<Value> {
    let changes: serde_json::Map<String, Value> = wanted
        .iter()
        .filter(|(key, value)| current.and_then(|map| map.get(*key)).map(String::as_str) != *value)
        .map(|(key, value)| ((*key).to_owned(), value.map_or(Value::Null, Value::from)))
        .collect();
    (!changes.is_empty()).then(|| json!({"metadata": {field: changes}}))
}

/// Actions on one node.
#[derive(Clone)]
pub struct NodeClient {
    api: Api<Node>,
    name: String,
    dry_run: bool,
}

impl NodeClient {
    pub fn new(client: kube::Client, node_name: impl Into<String>, dry_run: bool) -> Self {
        NodeClient {
            api: Api::all(client),
            name: node_name.into(),
            dry_run,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn get(&self) -> Result<Node, NodeError> {
        match self.api.get(&self.name).await {
            Ok(node) => Ok(node),
            Err(kube::Error::Api(status)) if status.is_not_found() => Err(NodeError::NotFound {
                node: self.name.clone(),
            }),
            Err(source) => Err(NodeError::Api {
                action: format!("reading node {}", self.name),
                source,
            }),
        }
    }

    /// Adds the taint, or updates its value and effect if the key is already on the node.
    /// The value is cut to 63 characters.
    pub async fn taint(
        &self,
        key: &str,
        value: &str,
        effect: TaintEffect,
    ) -> Result<bool, NodeError> {
        let value = taint_value(value);
        let what = format!(
            "taint the node with {key}={}:{effect}",
            short_event_id(value)
        );
        self.write(&what, |node| {
            with_taint(taints_of(node), key, value, effect)
                .map(|taints| taints_patch(node, &taints))
        })
        .await
    }

    pub async fn remove_taint(&self, key: &str) -> Result<bool, NodeError> {
        let what = format!("remove taint {key} from the node");
        self.write(&what, |node| {
            without_taint(taints_of(node), key).map(|taints| taints_patch(node, &taints))
        })
        .await
    }

    pub async fn cordon(&self) -> Result<bool, NodeError> {
        let what = "cordon the node".to_owned();
        self.write(&what, |node| {
            (!is_unschedulable(node)).then(|| json!({"spec": {"unschedulable": true}}))
        })
        .await
    }

    pub async fn uncordon(&self) -> Result<bool, NodeError> {
        let what = "uncordon the node".to_owned();
        self.write(&what, |node| {
            is_unschedulable(node).then(|| json!({"spec": {"unschedulable": null}}))
        })
        .await
    }

    pub async fn set_annotations(&self, annotations: &[(&str, &str)]) -> Result<bool, NodeError> {
        let wanted: Vec<(&str, Option<&str>)> = annotations
            .iter()
            .map(|(key, value)| (*key, Some(*value)))
            .collect();
        // The values are Spot Guard's records (kubectl get node -o yaml, spot-guard status).
        let what = format!("annotate the node with {}", keys_of(annotations));
        self.write(&what, |node| {
            metadata_map_patch("annotations", node.metadata.annotations.as_ref(), &wanted)
        })
        .await
    }

    pub async fn remove_annotations(&self, keys: &[&str]) -> Result<bool, NodeError> {
        let wanted: Vec<(&str, Option<&str>)> = keys.iter().map(|key| (*key, None)).collect();
        let what = format!("remove annotations {} from the node", keys.join(", "));
        self.write(&what, |node| {
            metadata_map_patch("annotations", node.metadata.annotations.as_ref(), &wanted)
        })
        .await
    }

    pub async fn add_label(&self, key: &str, value: &str) -> Result<bool, NodeError> {
        let wanted = [(key, Some(value))];
        let what = format!("label the node with {key}={value}");
        self.write(&what, |node| {
            metadata_map_patch("labels", node.metadata.labels.as_ref(), &wanted)
        })
        .await
    }

    pub async fn remove_label(&self, key: &str) -> Result<bool, NodeError> {
        let wanted = [(key, None)];
        let what = format!("remove label {key} from the node");
        self.write(&what, |node| {
            metadata_map_patch("labels", node.metadata.labels.as_ref(), &wanted)
        })
        .await
    }

    /// Reads the node, asks `patch_for` what to change, and merge-patches it; a conflict or a
    /// transient error starts over from a fresh read, up to `WRITE_ATTEMPTS` times.
    async fn write(
        &self,
        what: &str,
        patch_for: impl Fn(&Node) -> Option<Value>,
    ) -> Result<bool, NodeError> {
        let mut attempt = 1;
        loop {
            let node = match self.get().await {
                Ok(node) => node,
                // The read before every write is retried like the write itself.
                Err(NodeError::Api { source, .. })
                    if attempt < WRITE_ATTEMPTS && is_transient(&source) =>
                {
                    warn!(
                        attempt,
                        "Retrying to {what}: reading the node failed: {source}"
                    );
                    attempt += 1;
                    tokio::time::sleep(WRITE_RETRY_INTERVAL).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let Some(patch) = patch_for(&node) else {
                debug!("Nothing to do to {what}: already done");
                return Ok(false);
            };
            if self.dry_run {
                info!("DRY RUN: would {what}");
                return Ok(true);
            }
            match self
                .api
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    info!("Done: {what}");
                    return Ok(true);
                }
                Err(error) if attempt < WRITE_ATTEMPTS && is_transient(&error) => {
                    warn!(attempt, "Retrying to {what}: {error}");
                    attempt += 1;
                    tokio::time::sleep(WRITE_RETRY_INTERVAL).await;
                }
                Err(source) => {
                    return Err(NodeError::Api {
                        action: what.to_owned(),
                        source,
                    });
                }
            }
        }
    }
}

fn keys_of(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(key, _)| *key)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.to_owned(),
            value: Some(value.to_owned()),
            effect: effect.to_owned(),
            time_added: None,
        }
    }

    #[test]
    fn taint_effect_round_trips_and_names_allowed_values() {
        for effect in [
            TaintEffect::NoSchedule,
            TaintEffect::PreferNoSchedule,
            TaintEffect::NoExecute,
        ] {
            assert_eq!(effect.to_string().parse::<TaintEffect>(), Ok(effect));
        }
        let error = "noschedule"
            .parse::<TaintEffect>()
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(
                "invalid taint effect \"noschedule\": expected one of NoSchedule, PreferNoSchedule, NoExecute"
            )
        );
    }

    #[test]
    fn with_taint_keeps_others_and_replaces_ours() {
        let current = vec![
            taint("other", "x", "NoExecute"),
            taint("ours", "old", "NoSchedule"),
        ];
        let updated = with_taint(&current, "ours", "new", TaintEffect::PreferNoSchedule);
        assert_eq!(
            updated,
            Some(vec![
                taint("other", "x", "NoExecute"),
                taint("ours", "new", "PreferNoSchedule")
            ])
        );
        let same = vec![taint("ours", "new", "NoSchedule")];
        assert_eq!(
            with_taint(&same, "ours", "new", TaintEffect::NoSchedule),
            None
        );
    }

    #[test]
    fn without_taint_is_none_when_absent() {
        let current = vec![
            taint("other", "x", "NoExecute"),
            taint("ours", "v", "NoSchedule"),
        ];
        assert_eq!(
            without_taint(&current, "ours"),
            Some(vec![taint("other", "x", "NoExecute")])
        );
        assert_eq!(without_taint(&current, "missing"), None);
    }

    #[test]
    fn metadata_patch_only_carries_changes() {
        let current = std::collections::BTreeMap::from([("a".to_owned(), "1".to_owned())]);
        assert_eq!(
            metadata_map_patch("labels", Some(&current), &[("a", Some("1"))]),
            None
        );
        assert_eq!(
            metadata_map_patch("labels", Some(&current), &[("a", None), ("b", Some("2"))]),
            Some(json!({"metadata": {"labels": {"a": null, "b": "2"}}}))
        );
        assert_eq!(metadata_map_patch("labels", None, &[("a", None)]), None);
    }
}
