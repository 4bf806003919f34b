//! The eviction rounds of a drain: each pending pod's Eviction sent with bounded
//! concurrency, every answer sorted (accepted, already gone, refused by a budget, failed,
//! cut at the deadline), and the next round started when a budget allows it or the retry
//! interval has passed, until every pod is out or the drain's deadline.

use std::collections::{BTreeMap, BTreeSet};

use futures::stream::{self, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tracing::{info, warn};

use super::budgets::{Budgets, Wake};
use super::{DrainReport, DrainSettings, PodRef, attempt_deadline};

enum Attempt {
    Evicted,
    AlreadyGone,
    BlockedByPdb(String),
    Failed(String),
    /// Cut at the deadline: says nothing new about why the pod is still there.
    TimedOut,
}

/// The eviction as the API server reads it: `deleteOptions.gracePeriodSeconds`, camelCase.
fn eviction_for(pod_ref: &PodRef, grace_period_seconds: Option<i64>) -> Eviction {
    Eviction {
        metadata: ObjectMeta {
            name: Some(pod_ref.name.clone()),
            namespace: Some(pod_ref.namespace.clone()),
            ..ObjectMeta::default()
        },
        delete_options: grace_period_seconds.map(|seconds| DeleteOptions {
            grace_period_seconds: Some(seconds),
            ..DeleteOptions::default()
        }),
    }
}

async fn evict_once(
    client: &kube::Client,
    pod_ref: &PodRef,
    grace_period_seconds: Option<i64>,
    deadline: Instant,
) -> Attempt {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod_ref.namespace);
    let eviction = eviction_for(pod_ref, grace_period_seconds);
    let params = PostParams::default();
    let request = api.create_subresource::<_, serde_json::Value>(
        "eviction",
        &pod_ref.name,
        &params,
        &eviction,
    );
    match tokio::time::timeout_at(attempt_deadline(deadline), request).await {
        Ok(Ok(_)) => Attempt::Evicted,
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => Attempt::AlreadyGone,
        Ok(Err(kube::Error::Api(status))) if status.code == 429 => {
            let causes: Vec<&str> = status
                .details
                .iter()
                .flat_map(|details| &details.causes)
                .map(|cause| cause.message.as_str())
                .filter(|message| !message.is_empty())
                .collect();
            let why = if causes.is_empty() {
                status.message.clone()
            } else {
                causes.join("; ")
            };
            Attempt::BlockedByPdb(why)
        }
        Ok(Err(error)) => Attempt::Failed(error.to_string()),
        Err(_) => Attempt::TimedOut,
    }
}

/// Rounds of evictions until every pod was accepted or the deadline passed: a pod blocked by a
/// PDB never holds a concurrency slot while others wait. A budget that allows a disruption
/// again starts a round of the pods it covers at once (as many as it allows); every
/// pending pod is retried each retry interval. Returns the evicted pods with uids.
pub(super) async fn evict_all(
    client: &kube::Client,
    settings: &DrainSettings,
    deadline: Instant,
    mut pending: Vec<(PodRef, Option<String>)>,
    mut budgets: Budgets,
    report: &mut DrainReport,
) -> Vec<(PodRef, Option<String>)> {
    let mut evicted = Vec::new();
    let mut announced_pdb_wait = BTreeSet::new();
    // Why each pending pod is still pending: `None` for a PDB, else the last error.
    let mut blockers: BTreeMap<PodRef, Option<String>> = BTreeMap::new();
    let concurrency = settings.max_concurrent_evictions.max(1);
    let mut round = std::mem::take(&mut pending);
    let mut next_full_round = Instant::now() + settings.eviction_retry_interval;
    loop {
        let grace = settings.pod_termination_grace_period;
        let attempts: Vec<((PodRef, Option<String>), Attempt)> = stream::iter(round)
            .map(|(pod_ref, uid)| async move {
                let attempt = evict_once(client, &pod_ref, grace, deadline).await;
                ((pod_ref, uid), attempt)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for ((pod_ref, uid), attempt) in attempts {
            match attempt {
                Attempt::Evicted => {
                    info!(pod = %pod_ref, "Evicted pod {pod_ref}");
                    blockers.remove(&pod_ref);
                    evicted.push((pod_ref, uid));
                }
                Attempt::AlreadyGone => {
                    info!(pod = %pod_ref, "Pod {pod_ref} was already gone");
                    blockers.remove(&pod_ref);
                }
                Attempt::BlockedByPdb(why) => {
                    report.pdb_refusals += 1;
                    if announced_pdb_wait.insert(pod_ref.clone()) {
                        warn!(pod = %pod_ref,
                            "Pod {pod_ref} is protected by a PodDisruptionBudget ({why}); retrying when the budget allows it (at the latest every {:?})",
                            settings.eviction_retry_interval);
                    }
                    blockers.insert(pod_ref.clone(), None);
                    pending.push((pod_ref, uid));
                }
                Attempt::Failed(why) => {
                    warn!(pod = %pod_ref, "Evicting pod {pod_ref} failed, will retry: {why}");
                    blockers.insert(pod_ref.clone(), Some(why));
                    pending.push((pod_ref, uid));
                }
                Attempt::TimedOut => {
                    warn!(pod = %pod_ref, "Evicting pod {pod_ref} got no answer in time, will retry");
                    blockers
                        .entry(pod_ref.clone())
                        .or_insert_with(|| Some("no answer from the API server".to_owned()));
                    pending.push((pod_ref, uid));
                }
            }
        }
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        let blocked: Vec<PodRef> = pending
            .iter()
            .filter(|(pod_ref, _)| blockers.get(pod_ref).is_some_and(Option::is_none))
            .map(|(pod_ref, _)| pod_ref.clone())
            .collect();
        round = match budgets.wait(&blocked, deadline.min(next_full_round)).await {
            Wake::Timer => {
                next_full_round = Instant::now() + settings.eviction_retry_interval;
                std::mem::take(&mut pending)
            }
            Wake::Allowed { pods, allowed } => {
                let chosen: BTreeSet<PodRef> = pods.into_iter().take(allowed).collect();
                let (now, later) = std::mem::take(&mut pending)
                    .into_iter()
                    .partition(|(pod_ref, _)| chosen.contains(pod_ref));
                pending = later;
                now
            }
        };
        if Instant::now() >= deadline {
            pending.append(&mut round);
            break;
        }
    }
    for (pod_ref, _) in pending {
        match blockers.remove(&pod_ref).flatten() {
            Some(why) => report.eviction_failed.push((pod_ref, why)),
            None => report.blocked_by_pdb.push(pod_ref),
        }
    }
    report.evicted = evicted.iter().map(|(pod_ref, _)| pod_ref.clone()).collect();
    evicted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_body_carries_grace_period_in_camel_case() -> Result<(), serde_json::Error> {
        let pod_ref = PodRef {
            namespace: "ns".to_owned(),
            name: "p".to_owned(),
        };
        let body = serde_json::to_value(eviction_for(&pod_ref, Some(7)))?;
        assert_eq!(
            body.pointer("/deleteOptions/gracePeriodSeconds"),
            Some(&serde_json::json!(7))
        );
        assert_eq!(
            body.pointer("/apiVersion"),
            Some(&serde_json::json!("policy/v1"))
        );
        let body = serde_json::to_value(eviction_for(&pod_ref, None))?;
        assert_eq!(body.get("deleteOptions"), None);
        Ok(())
    }
}
