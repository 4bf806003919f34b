//! What the agent needs to act, taken once from the [`Config`].

use std::time::Duration;

use crate::config::Config;
use crate::drain::{DrainSettings, PodRef};
use crate::plan::ActionSettings;

/// What the agent needs to act; built once from [`Config`].
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub node_name: String,
    pub dry_run: bool,
    pub actions: ActionSettings,
    pub drain: DrainSettings,
    pub uptime_file: String,
    /// Between attempts at a drain that did not complete (NTH: every poll, 2 s).
    pub retry_interval: Duration,
}

impl AgentSettings {
    pub fn from_config(config: &Config) -> Self {
        let own_pod = match (&config.pod_namespace, &config.pod_name) {
            (Some(namespace), Some(name)) => Some(PodRef {
                namespace: namespace.clone(),
                name: name.clone(),
            }),
            _ => None,
        };
        AgentSettings {
            node_name: config.node_name.clone(),
            dry_run: config.dry_run,
            actions: ActionSettings {
                spot_guard: config.spot_guard.is_some(),
                taint_node: config.taint_node,
                taint_effect: config.taint_effect,
                cordon_only: config.cordon_only,
                enable_rebalance_draining: config.enable_rebalance_draining,
                exclude_from_load_balancers: config.exclude_from_load_balancers,
                enable_out_of_service_taint: config.enable_out_of_service_taint,
            },
            drain: DrainSettings {
                ignore_daemon_sets: config.ignore_daemon_sets,
                delete_local_data: config.delete_emptydir_data,
                pod_termination_grace_period: config.pod_termination_grace_period,
                timeout: config.node_termination_grace_period,
                max_concurrent_evictions: config.drain_concurrency,
                own_pod,
                eviction_retry_interval: config.tuning.eviction_retry_interval,
                poll_interval: config.tuning.drain_poll_interval,
            },
            uptime_file: config.uptime_from_file.clone(),
            retry_interval: config.tuning.poll_interval,
        }
    }
}
