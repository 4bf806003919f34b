//! Every name the agent writes into the cluster: taints, labels and annotations on its
//! Node, and the Leases it shares with the other nodes' agents. "What does the agent
//! write on my Node?" is answered here. NTH's names are kept so NTH users' tooling
//! (alerts, kubectl selectors) keeps working.

// --- Taints -------------------------------------------------------------------------

pub const REBALANCE_TAINT: &str = "aws-node-termination-handler/rebalance-recommendation";
pub const SPOT_ITN_TAINT: &str = "aws-node-termination-handler/spot-itn";
pub const SCHEDULED_MAINTENANCE_TAINT: &str = "aws-node-termination-handler/scheduled-maintenance";
pub const ASG_LIFECYCLE_TAINT: &str = "aws-node-termination-handler/asg-lifecycle-termination";
/// Spot Guard's own: an on-demand fallback node giving itself back (NoSchedule).
pub const SCALE_BACK_TAINT: &str = "spot-guard/scale-back";
/// Every taint key this agent may set, removed again when an event is undone.
pub const AGENT_TAINTS: [&str; 5] = [
    REBALANCE_TAINT,
    SPOT_ITN_TAINT,
    SCHEDULED_MAINTENANCE_TAINT,
    ASG_LIFECYCLE_TAINT,
    SCALE_BACK_TAINT,
];
/// Tells Kubernetes to force-evict pods and detach volumes of a node that is gone.
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";
pub const OUT_OF_SERVICE_VALUE: &str = "nodeshutdown";

/// Kubernetes label values (and so NTH's taint values) hold at most 63 characters.
pub const MAX_TAINT_VALUE_LENGTH: usize = 63;

/// A taint value from an event id, cut to 63 characters as NTH does.
pub fn taint_value(value: &str) -> &str {
    match value.char_indices().nth(MAX_TAINT_VALUE_LENGTH) {
        Some((cut, _)) => &value[..cut],
        None => value,
    }
}

// --- Labels -------------------------------------------------------------------------

pub const EXCLUDE_FROM_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// NTH's value, so that only a label this agent (or NTH) set is removed again.
pub const EXCLUDE_FROM_LB_VALUE: &str = "aws-node-termination-handler";
/// NTH: the action to take after a reboot, with the time it was set.
pub const ACTION_LABEL: &str = "aws-node-termination-handler/action";
pub const ACTION_TIME_LABEL: &str = "aws-node-termination-handler/action-time";
/// NTH: the scheduled event the node was prepared for.
pub const EVENT_ID_LABEL: &str = "aws-node-termination-handler/event-id";
/// The value of [`ACTION_LABEL`] before a reboot.
pub const UNCORDON_AFTER_REBOOT: &str = "UncordonAfterReboot";
/// NTH's labels, removed when what they describe is over.
pub const NTH_LABELS: [&str; 3] = [EVENT_ID_LABEL, ACTION_LABEL, ACTION_TIME_LABEL];

// --- Node annotations ---------------------------------------------------------------

/// Event ids whose node actions finished, newest last, so a restart does not redo them.
pub const HANDLED_EVENTS_ANNOTATION: &str = "spot-guard/handled-events";
/// The event whose cordon this agent set: only that cordon is ever undone by it.
pub const CORDONED_BY_ANNOTATION: &str = "spot-guard/cordoned-by";
/// Each step of the replacement workflow, written before it is taken.
pub const REPLACEMENT_ANNOTATION: &str = "spot-guard/replacement";
/// The scale-back of an on-demand fallback node, step by step.
pub const SCALE_BACK_ANNOTATION: &str = "spot-guard/scale-back";
/// Cluster Autoscaler's own annotation: it never scales this node down while set.
pub const CA_SCALE_DOWN_DISABLED: &str = "cluster-autoscaler.kubernetes.io/scale-down-disabled";
/// When this agent removes [`CA_SCALE_DOWN_DISABLED`]; marks the annotation as ours.
pub const PROTECTED_UNTIL_ANNOTATION: &str = "spot-guard/scale-down-disabled-until";
/// Pods of a static manifest (kubelet mirror pods): never evicted.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

// --- Leases (in the agent's namespace) ----------------------------------------------

/// On the spot ASG's Lease: the last capacity failure, read by every agent.
pub const CAPACITY_FAILURE_ANNOTATION: &str = "spot-guard/capacity-failure";
/// On an ASG's Lease: the desired capacity last set under it, and when. Describe calls
/// may answer from before that change for a while; the next holder trusts the larger.
pub const LAST_TARGET_ANNOTATION: &str = "spot-guard/last-target";
/// On an ASG's Lease, one key per instance Spot Guard bought: the ledger.
pub const LEDGER_KEY_PREFIX: &str = "replacement.spot-guard/";
/// Taken by a fallback node while it gives itself back: one at a time.
pub const SCALE_BACK_LEASE: &str = "spot-guard-scale-back";

/// The Lease that serializes every change of `asg`'s desired capacity:
/// `spot-guard-<asg>`, cut to a valid object name.
pub fn asg_lease(asg: &str) -> String {
    let cleaned: String = format!("spot-guard-{asg}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(253)
        .collect();
    cleaned.trim_end_matches(['-', '.']).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taint_values_are_cut_to_63_characters_on_a_character_boundary() {
        let long = "é".repeat(70);
        assert_eq!(taint_value(&long).chars().count(), 63);
        assert_eq!(taint_value("spot-itn-abc"), "spot-itn-abc");
    }

    #[test]
    fn asg_lease_names_are_valid_object_names() {
        assert_eq!(asg_lease("My_Spot ASG"), "spot-guard-my-spot-asg");
        assert_eq!(asg_lease("eks-ng-1234"), "spot-guard-eks-ng-1234");
        assert_eq!(asg_lease("asg_"), "spot-guard-asg");
        assert!(asg_lease(&"a".repeat(400)).len() <= 253);
    }
}
