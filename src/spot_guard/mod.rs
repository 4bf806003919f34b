//! Spot Guard: before a node that got a rebalance recommendation is drained, buy its
//! replacement — spot ASG first, on-demand when spot cannot deliver — safely for many
//! agents at once and across restarts; later give capacity back and keep Cluster
//! Autoscaler off the new nodes.
//!
//! - [`decide`]: every capacity decision, pure, and the Node record of each step.
//! - `replace`: the one replacement workflow (ASG read-modify-write under a Lease).
//! - `give_back`: terminate with decrement, after a drain or a scale-back.
//! - [`ledger`], [`ca_protection`], [`scale_back`]: what runs on a replacement's node
//!   (started by `own_node`).

mod activities;
pub mod ca_protection;
pub mod decide;
mod give_back;
pub mod ledger;
mod node_ready;
mod own_node;
mod replace;
pub mod scale_back;

pub use give_back::{GiveBackError, terminate_with_decrement};

use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::asg::AutoScaling;
use crate::config::SpotGuardSettings;
use crate::lease::{LeaseSettings, Leases};
use crate::node::NodeClient;
use crate::report::{InterruptionEvent, Reporter};
use decide::ReplacementOutcome;

/// The feature as the agent sees it: buy a replacement, give the drained instance back,
/// and look after this node when Spot Guard bought it.
pub struct SpotGuard<A> {
    asg: A,
    settings: SpotGuardSettings,
    dry_run: bool,
    reporter: Reporter,
    leases: Leases,
    kube: kube::Client,
    /// Writes the replacement record: even in dry run nothing else is written, and a
    /// dry run never reaches the record.
    node: NodeClient,
    /// From IMDS; needed to give this instance back and to find it in the ledger.
    instance_id: Option<String>,
}

impl<A: AutoScaling> SpotGuard<A> {
    pub fn new(
        asg: A,
        kube: kube::Client,
        node_name: &str,
        instance_id: Option<String>,
        settings: SpotGuardSettings,
        dry_run: bool,
        reporter: Reporter,
    ) -> Self {
        let leases = Leases::new(
            kube.clone(),
            LeaseSettings {
                namespace: settings.lease_namespace.clone(),
                holder: node_name.to_owned(),
                duration: settings.lease_duration,
                retry_interval: settings.lease_retry_interval,
            },
        );
        SpotGuard {
            asg,
            settings,
            dry_run,
            reporter,
            leases,
            node: NodeClient::new(kube.clone(), node_name, false),
            kube,
            instance_id,
        }
    }

    pub fn settings(&self) -> &SpotGuardSettings {
        &self.settings
    }

    /// Start-up check of both ASGs. Problems are logged, not fatal: the agent must
    /// still protect the node from interruptions, and the flow falls back at run time.
    pub async fn check_setup(&self) {
        let spot = &self.settings.spot_asg_name;
        info!(
            "Spot Guard enabled - Spot ASG: {spot}, On-Demand ASG: {}",
            self.settings.on_demand_asg_name
        );
        for name in [spot, &self.settings.on_demand_asg_name] {
            match self.asg.describe(name).await {
                Ok(state) => {
                    info!(
                        asg = %name,
                        "ASG {name}: desired {}, min {}, max {}, InService {}",
                        state.desired_capacity,
                        state.min_size,
                        state.max_size,
                        state.in_service()
                    );
                    if state.capacity_rebalance && name == spot {
                        warn!(
                            asg = %name,
                            "ASG {name} has Capacity Rebalancing enabled: AWS launches its own replacement on every rebalance recommendation, so with Spot Guard each recommendation buys two instances; turn one of them off"
                        );
                    }
                }
                Err(error) => error!(
                    asg = %name,
                    "Spot Guard cannot read ASG {name} at start-up: {error}; rebalance recommendations will fall back or go straight to taint and drain until this is fixed"
                ),
            }
        }
    }

    /// Buys the replacement: spot first, on-demand when spot cannot deliver. Never
    /// fails: whatever happens, the caller goes on to taint and drain.
    pub async fn secure_replacement(
        &self,
        preempt: &CancellationToken,
        event: &InterruptionEvent,
    ) -> ReplacementOutcome {
        if self.dry_run {
            self.plan_dry_run().await;
            return ReplacementOutcome::DryRun;
        }
        self.replace(preempt, event).await
    }

    /// Dry run: the scale-up each ASG would get, decided as the real run decides it.
    async fn plan_dry_run(&self) {
        for name in [
            &self.settings.spot_asg_name,
            &self.settings.on_demand_asg_name,
        ] {
            let state = match self.asg.describe(name).await {
                Ok(state) => state,
                Err(error) => {
                    warn!(asg = %name, "DRY RUN: cannot read ASG {name}: {error}");
                    continue;
                }
            };
            match decide::plan_target(&state, self.settings.scale_count, &[], SystemTime::now()) {
                Ok(scaled) => info!(
                    asg = %name,
                    "DRY RUN: would scale ASG {name} from {} to {} instances, wait for InService{}",
                    scaled.from,
                    scaled.to,
                    if self.settings.node_ready_timeout.is_zero() {
                        String::new()
                    } else {
                        format!(
                            ", then up to {}s for the new Node to be Ready",
                            self.settings.node_ready_timeout.as_secs()
                        )
                    }
                ),
                Err(failure) => {
                    info!(asg = %name, "DRY RUN: ASG {name} could not be scaled: {failure}")
                }
            }
        }
    }

    /// Called after the node actions of a rebalance recommendation: gives the drained
    /// instance back when configured to (SPOT_GUARD_TERMINATE_AFTER_DRAIN).
    pub async fn after_node_actions(
        &self,
        outcome: &ReplacementOutcome,
        drained: bool,
        event: &InterruptionEvent,
    ) {
        if !self.dry_run {
            self.give_back(outcome, drained, event).await;
        }
    }
}
