//! NTH's node actions, pure: what a notice does to the node (taint, cordon, drain,
//! labels), from the options. [`crate::agent`] carries the plans out.

use crate::config::TaintEffect;
use crate::names::{REBALANCE_TAINT, taint_value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeActionPlan {
    pub taint: Option<Taint>,
    pub cordon: bool,
    pub drain: bool,
    /// Label the node out of external load balancers when cordoning it.
    pub exclude_from_load_balancers: bool,
    /// After a complete drain, taint the node out-of-service (NoExecute).
    pub out_of_service_after_drain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: &'static str,
    pub value: String,
    pub effect: TaintEffect,
}

/// The options that shape node actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionSettings {
    pub spot_guard: bool,
    pub taint_node: bool,
    pub taint_effect: TaintEffect,
    pub cordon_only: bool,
    pub enable_rebalance_draining: bool,
    pub exclude_from_load_balancers: bool,
    pub enable_out_of_service_taint: bool,
}

impl Default for ActionSettings {
    /// NTH's defaults: no Spot Guard, no taint, NoSchedule, rebalance only cordons.
    fn default() -> Self {
        ActionSettings {
            spot_guard: false,
            taint_node: false,
            taint_effect: TaintEffect::NoSchedule,
            cordon_only: false,
            enable_rebalance_draining: false,
            exclude_from_load_balancers: false,
            enable_out_of_service_taint: false,
        }
    }
}

/// NTH's rule: a rebalance recommendation alone only cordons unless rebalance
/// draining is on; Spot Guard always taints, since its flow promises it.
pub fn plan_rebalance(settings: &ActionSettings, event_id: &str) -> NodeActionPlan {
    let drain = settings.enable_rebalance_draining && !settings.cordon_only;
    NodeActionPlan {
        taint: (settings.spot_guard || settings.taint_node).then(|| Taint {
            key: REBALANCE_TAINT,
            value: taint_value(event_id).to_owned(),
            effect: settings.taint_effect,
        }),
        cordon: true,
        drain,
        exclude_from_load_balancers: settings.exclude_from_load_balancers,
        out_of_service_after_drain: drain && settings.enable_out_of_service_taint,
    }
}

/// A spot interruption, scheduled maintenance or ASG termination: cordon and drain
/// at once, tainting with the event's key when TAINT_NODE is on.
pub fn plan_drain_now(
    settings: &ActionSettings,
    taint_key: &'static str,
    event_id: &str,
) -> NodeActionPlan {
    let drain = !settings.cordon_only;
    NodeActionPlan {
        taint: settings.taint_node.then(|| Taint {
            key: taint_key,
            value: taint_value(event_id).to_owned(),
            effect: settings.taint_effect,
        }),
        cordon: true,
        drain,
        exclude_from_load_balancers: settings.exclude_from_load_balancers,
        out_of_service_after_drain: drain && settings.enable_out_of_service_taint,
    }
}

/// Maintenance codes after which the instance comes back: the agent then undoes its cordon.
pub fn is_restart_event(code: &str) -> bool {
    matches!(
        code,
        "instance-stop" | "instance-retirement" | "instance-reboot" | "system-reboot"
    )
}

/// A node marked before a reboot has rebooted when the mark is older than its uptime.
pub fn has_rebooted_since(marked_at_unix: i64, now_unix: i64, uptime_seconds: i64) -> bool {
    now_unix - marked_at_unix >= uptime_seconds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{ASG_LIFECYCLE_TAINT, SPOT_ITN_TAINT};

    fn settings() -> ActionSettings {
        ActionSettings::default()
    }

    #[test]
    fn rebalance_plans_follow_nth_and_spot_guard() {
        let id = "rebalance-recommendation-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let nth_default = plan_rebalance(&settings(), id);
        assert_eq!(
            nth_default,
            NodeActionPlan {
                taint: None,
                cordon: true,
                drain: false,
                exclude_from_load_balancers: false,
                out_of_service_after_drain: false,
            }
        );

        let draining = plan_rebalance(
            &ActionSettings {
                enable_rebalance_draining: true,
                ..settings()
            },
            id,
        );
        assert!(draining.drain);

        let cordon_only = plan_rebalance(
            &ActionSettings {
                enable_rebalance_draining: true,
                cordon_only: true,
                ..settings()
            },
            id,
        );
        assert!(!cordon_only.drain);

        let guarded = plan_rebalance(
            &ActionSettings {
                spot_guard: true,
                ..settings()
            },
            id,
        );
        let taint = guarded.taint.unwrap();
        assert_eq!(taint.key, REBALANCE_TAINT);
        assert_eq!(taint.value.len(), 63);
        assert_eq!(taint.effect, TaintEffect::NoSchedule);
    }

    #[test]
    fn drain_now_events_drain_unless_cordon_only() {
        let plan = plan_drain_now(
            &ActionSettings {
                taint_node: true,
                enable_out_of_service_taint: true,
                exclude_from_load_balancers: true,
                ..settings()
            },
            SPOT_ITN_TAINT,
            "spot-itn-abc",
        );
        assert_eq!(plan.taint.unwrap().key, SPOT_ITN_TAINT);
        assert!(plan.cordon && plan.drain);
        assert!(plan.out_of_service_after_drain && plan.exclude_from_load_balancers);
        let cordon_only = plan_drain_now(
            &ActionSettings {
                cordon_only: true,
                enable_out_of_service_taint: true,
                ..settings()
            },
            ASG_LIFECYCLE_TAINT,
            "x",
        );
        assert!(!cordon_only.drain && cordon_only.taint.is_none());
        assert!(!cordon_only.out_of_service_after_drain);
    }

    #[test]
    fn restart_events_and_reboot_detection() {
        assert!(is_restart_event("system-reboot"));
        assert!(is_restart_event("instance-stop"));
        assert!(!is_restart_event("system-maintenance"));
        // Marked 100 s ago, up for 30 s: rebooted. Up for 300 s: not yet.
        assert!(has_rebooted_since(1_000, 1_100, 30));
        assert!(!has_rebooted_since(1_000, 1_100, 300));
    }
}
