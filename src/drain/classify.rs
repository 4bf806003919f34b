//! Which pods a drain evicts: pure policy, no I/O.

use k8s_openapi::api::core::v1::Pod;

use super::DrainSettings;
use crate::names::MIRROR_POD_ANNOTATION;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The agent's own pod (POD_NAME/NAMESPACE): it must keep running to finish the drain.
    OwnPod,
    DaemonSet,
    Mirror,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// An emptyDir volume and DELETE_LOCAL_DATA is off.
    LocalStorage,
    /// A DaemonSet pod and IGNORE_DAEMON_SETS is off (kubectl drain refuses too).
    DaemonSetNotIgnored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodDisposition {
    Evict,
    Skip { reason: SkipReason },
    Refuse { reason: RefuseReason },
}

/// What to do with one pod on the node being drained.
pub fn classify(pod: &Pod, settings: &DrainSettings) -> PodDisposition {
    if let Some(own) = &settings.own_pod
        && pod.metadata.name.as_deref() == Some(own.name.as_str())
        && pod.metadata.namespace.as_deref() == Some(own.namespace.as_str())
    {
        return PodDisposition::Skip {
            reason: SkipReason::OwnPod,
        };
    }
    let is_mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|annotations| annotations.contains_key(MIRROR_POD_ANNOTATION));
    if is_mirror {
        return PodDisposition::Skip {
            reason: SkipReason::Mirror,
        };
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|status| status.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return PodDisposition::Skip {
            reason: SkipReason::Completed,
        };
    }
    let is_daemon_set = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| owner.controller == Some(true) && owner.kind == "DaemonSet");
    if is_daemon_set {
        return if settings.ignore_daemon_sets {
            PodDisposition::Skip {
                reason: SkipReason::DaemonSet,
            }
        } else {
            PodDisposition::Refuse {
                reason: RefuseReason::DaemonSetNotIgnored,
            }
        };
    }
    let has_empty_dir = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.volumes.as_ref())
        .is_some_and(|volumes| volumes.iter().any(|volume| volume.empty_dir.is_some()));
    if has_empty_dir && !settings.delete_local_data {
        return PodDisposition::Refuse {
            reason: RefuseReason::LocalStorage,
        };
    }
    PodDisposition::Evict
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, PodSpec, PodStatus, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(owner_kind: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".to_owned()),
                namespace: Some("ns".to_owned()),
                owner_references: Some(vec![OwnerReference {
                    kind: owner_kind.to_owned(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Running".to_owned()),
                ..PodStatus::default()
            }),
        }
    }

    fn with_empty_dir(mut pod: Pod) -> Pod {
        if let Some(spec) = pod.spec.as_mut() {
            spec.volumes = Some(vec![Volume {
                name: "scratch".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]);
        }
        pod
    }

    fn no_local_data() -> DrainSettings {
        DrainSettings {
            delete_local_data: false,
            ..DrainSettings::default()
        }
    }

    #[test]
    fn replica_set_pods_are_evicted() {
        assert_eq!(
            classify(&pod("ReplicaSet"), &DrainSettings::default()),
            PodDisposition::Evict
        );
    }

    #[test]
    fn the_agents_own_pod_is_skipped_even_when_daemon_sets_are_not_ignored() {
        let settings = DrainSettings {
            ignore_daemon_sets: false,
            own_pod: Some(crate::drain::PodRef {
                namespace: "ns".to_owned(),
                name: "p".to_owned(),
            }),
            ..DrainSettings::default()
        };
        assert_eq!(
            classify(&pod("DaemonSet"), &settings),
            PodDisposition::Skip {
                reason: SkipReason::OwnPod
            }
        );
    }

    #[test]
    fn mirror_pods_are_always_skipped() {
        let mut mirror = pod("Node");
        mirror.metadata.annotations =
            Some([(MIRROR_POD_ANNOTATION.to_owned(), "hash".to_owned())].into());
        for settings in [DrainSettings::default(), no_local_data()] {
            assert_eq!(
                classify(&mirror, &settings),
                PodDisposition::Skip {
                    reason: SkipReason::Mirror
                }
            );
        }
    }

    #[test]
    fn daemon_set_pods_are_skipped_or_refused() {
        let ds = pod("DaemonSet");
        assert_eq!(
            classify(&ds, &DrainSettings::default()),
            PodDisposition::Skip {
                reason: SkipReason::DaemonSet
            }
        );
        let strict = DrainSettings {
            ignore_daemon_sets: false,
            ..DrainSettings::default()
        };
        assert_eq!(
            classify(&ds, &strict),
            PodDisposition::Refuse {
                reason: RefuseReason::DaemonSetNotIgnored
            }
        );
    }

    #[test]
    fn empty_dir_pods_need_delete_local_data() {
        let local = with_empty_dir(pod("ReplicaSet"));
        assert_eq!(
            classify(&local, &DrainSettings::default()),
            PodDisposition::Evict
        );
        assert_eq!(
            classify(&local, &no_local_data()),
            PodDisposition::Refuse {
                reason: RefuseReason::LocalStorage
            }
        );
    }

    #[test]
    fn finished_pods_are_skipped_even_with_local_data() {
        for phase in ["Succeeded", "Failed"] {
            let mut done = with_empty_dir(pod("Job"));
            done.status = Some(PodStatus {
                phase: Some(phase.to_owned()),
                ..PodStatus::default()
            });
            assert_eq!(
                classify(&done, &no_local_data()),
                PodDisposition::Skip {
                    reason: SkipReason::Completed
                }
            );
        }
    }
}
