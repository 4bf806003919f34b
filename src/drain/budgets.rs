//! Paces PDB-refused evictions by the budgets themselves: a watch on PodDisruptionBudgets
//! says when one covering a refused pod allows a disruption again (its
//! `status.disruptionsAllowed`, written by the disruption controller once a replacement is
//! Ready), so the next eviction goes out then instead of at the next retry tick. The retry
//! interval stays the fallback: when the watch cannot be opened (no RBAC `watch` on
//! poddisruptionbudgets, an old chart), ends, or a budget's selector cannot be read.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::core::{Selector, SelectorExt};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::PodRef;

/// Longer than any drain (NODE_TERMINATION_GRACE_PERIOD is minutes): one watch per drain
/// unless the server ends it sooner (then it is reopened at the next wait).
const WATCH_SECONDS: u32 = 290;

/// How long opening the watch may take before the timer alone paces the retries.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

type Labels = BTreeMap<String, String>;

enum Watch {
    NotOpen,
    Open(BoxStream<'static, Result<WatchEvent<PodDisruptionBudget>, kube::Error>>),
    /// Opening failed; retries go by the timer for the rest of the drain.
    Unavailable,
}

/// What ended a wait.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wake {
    /// The retry interval passed (or the deadline came): retry every pending pod.
    Timer,
    /// A budget allows this many more disruptions; these blocked pods are under it.
    Allowed { pods: Vec<PodRef>, allowed: usize },
}

pub(super) struct Budgets {
    client: kube::Client,
    labels: BTreeMap<PodRef, Labels>,
    watch: Watch,
}

impl Budgets {
    /// `pods`: the pods to evict with their labels, to tell which budget covers which.
    pub(super) fn new(client: &kube::Client, pods: BTreeMap<PodRef, Labels>) -> Budgets {
        Budgets {
            client: client.clone(),
            labels: pods,
            watch: Watch::NotOpen,
        }
    }

    /// Waits until a budget covering one of `blocked` allows a disruption, or until
    /// `until`. The watch opens at the first wait and starts with every budget's current
    /// status, so a budget that freed between the refusal and the wait wakes it at once.
    pub(super) async fn wait(&mut self, blocked: &[PodRef], until: Instant) -> Wake {
        if blocked.is_empty() {
            tokio::time::sleep_until(until).await;
            return Wake::Timer;
        }
        if matches!(self.watch, Watch::NotOpen) {
            self.open().await;
        }
        let timer = tokio::time::sleep_until(until);
        tokio::pin!(timer);
        loop {
            let Watch::Open(stream) = &mut self.watch else {
                timer.await;
                return Wake::Timer;
            };
            let event = tokio::select! {
                () = &mut timer => return Wake::Timer,
                event = stream.next() => event,
            };
            match event {
                Some(Ok(WatchEvent::Added(budget) | WatchEvent::Modified(budget))) => {
                    let allowed = budget.status.as_ref().map_or(0, |s| s.disruptions_allowed);
                    let allowed = usize::try_from(allowed).unwrap_or(0);
                    if allowed > 0 {
                        let pods = covered(&self.labels, &budget, blocked);
                        if !pods.is_empty() {
                            return Wake::Allowed { pods, allowed };
                        }
                    }
                }
                Some(Ok(WatchEvent::Deleted(budget))) => {
                    let pods = covered(&self.labels, &budget, blocked);
                    if !pods.is_empty() {
                        let allowed = pods.len();
                        return Wake::Allowed { pods, allowed };
                    }
                }
                Some(Ok(WatchEvent::Bookmark(_))) => {}
                Some(Ok(WatchEvent::Error(status))) => {
                    debug!(
                        "The PodDisruptionBudget watch ended ({}); reopening it at the next wait",
                        status.message
                    );
                    self.watch = Watch::NotOpen;
                }
                Some(Err(error)) => {
                    debug!(
                        "The PodDisruptionBudget watch broke ({error}); reopening it at the next wait"
                    );
                    self.watch = Watch::NotOpen;
                }
                None => self.watch = Watch::NotOpen,
            }
        }
    }

    async fn open(&mut self) {
        let api: Api<PodDisruptionBudget> = Api::all(self.client.clone());
        let params = WatchParams::default().timeout(WATCH_SECONDS);
        // "0": start from any state, each budget sent first as it is now.
        let opened = tokio::time::timeout(OPEN_TIMEOUT, api.watch(&params, "0")).await;
        self.watch = match opened {
            Ok(Ok(stream)) => Watch::Open(stream.boxed()),
            Ok(Err(error)) => {
                warn!(
                    "Cannot watch PodDisruptionBudgets ({error}); refused evictions are retried on the timer only"
                );
                Watch::Unavailable
            }
            Err(_) => {
                warn!(
                    "Watching PodDisruptionBudgets got no answer within {OPEN_TIMEOUT:?}; refused evictions are retried on the timer only"
                );
                Watch::Unavailable
            }
        };
    }
}

/// The blocked pods `budget` selects. A selector that cannot be read covers them all: a
/// needless retry costs one refusal, a missed one a whole retry interval.
fn covered(
    labels: &BTreeMap<PodRef, Labels>,
    budget: &PodDisruptionBudget,
    blocked: &[PodRef],
) -> Vec<PodRef> {
    let namespace = budget.metadata.namespace.as_deref().unwrap_or_default();
    // policy/v1: a budget without a selector selects nothing.
    let Some(selector) = budget.spec.as_ref().and_then(|s| s.selector.clone()) else {
        return Vec::new();
    };
    let selector = Selector::try_from(selector).ok();
    let none = Labels::new();
    blocked
        .iter()
        .filter(|pod| pod.namespace == namespace)
        .filter(|pod| {
            selector
                .as_ref()
                .is_none_or(|selector| selector.matches(labels.get(*pod).unwrap_or(&none)))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    use super::*;

    fn pod(namespace: &str, name: &str) -> PodRef {
        PodRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    fn budget(namespace: &str, selector: Option<LabelSelector>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                selector,
                ..PodDisruptionBudgetSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn a_budget_covers_the_pods_its_selector_matches_in_its_namespace() {
        let labels = BTreeMap::from([
            (
                pod("a", "web-1"),
                Labels::from([("app".to_owned(), "web".to_owned())]),
            ),
            (
                pod("a", "db-1"),
                Labels::from([("app".to_owned(), "db".to_owned())]),
            ),
            (
                pod("b", "web-2"),
                Labels::from([("app".to_owned(), "web".to_owned())]),
            ),
        ]);
        let blocked: Vec<PodRef> = labels.keys().cloned().collect();
        let web = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
            ..LabelSelector::default()
        };
        assert_eq!(
            covered(&labels, &budget("a", Some(web)), &blocked),
            vec![pod("a", "web-1")]
        );
        // An empty selector selects the whole namespace; none selects nothing.
        assert_eq!(
            covered(
                &labels,
                &budget("a", Some(LabelSelector::default())),
                &blocked
            ),
            vec![pod("a", "db-1"), pod("a", "web-1")]
        );
        assert!(covered(&labels, &budget("a", None), &blocked).is_empty());
    }
}
