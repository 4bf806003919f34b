//! Giving capacity back: the drained spot instance after its replacement arrived
//! (SPOT_GUARD_TERMINATE_AFTER_DRAIN) and, through [`terminate_with_decrement`], an
//! on-demand fallback in scale-back.

use tracing::{error, info, warn};

use super::SpotGuard;
use super::decide::{self, ReplacementOutcome};
use crate::asg::AutoScaling;
use crate::lease::Leases;
use crate::names;
use crate::report::InterruptionEvent;

impl<A: AutoScaling> SpotGuard<A> {
    /// After the node actions: with SPOT_GUARD_TERMINATE_AFTER_DRAIN, a drained spot
    /// instance whose replacement arrived is terminated with ShouldDecrementDesiredCapacity,
    /// so the group returns to its size with the replacement in place.
    pub(super) async fn give_back(
        &self,
        outcome: &ReplacementOutcome,
        drained: bool,
        event: &InterruptionEvent,
    ) {
        if !self.settings.terminate_after_drain {
            return;
        }
        let node = self.node.name();
        if !decide::may_give_back(outcome, drained) {
            info!(
                "Not terminating the instance of node {node}: {}",
                if drained {
                    "no replacement arrived"
                } else {
                    "its drain did not complete"
                }
            );
            return;
        }
        let Some(instance_id) = self.instance_id.as_deref() else {
            warn!(
                "SPOT_GUARD_TERMINATE_AFTER_DRAIN is on but this instance's id could not be read from IMDS; node {node} stays, drained, and the ASG stays one bigger"
            );
            return;
        };
        let spot = self.settings.spot_asg_name.clone();
        let given_back = tokio::time::timeout(
            self.settings.scale_timeout,
            terminate_with_decrement(&self.asg, &self.leases, &spot, instance_id),
        )
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "not done within SPOT_GUARD_SCALE_TIMEOUT ({}s)",
                self.settings.scale_timeout.as_secs()
            ))
        });
        match given_back {
            Ok(true) => {
                let mut record = self.load_record(&event.event_id).await;
                record.gave_back = true;
                self.save_or_warn(&record).await;
            }
            Ok(false) => {}
            Err(error) => error!(
                "Terminating instance {instance_id} of node {node} after its drain failed; the spot ASG stays one bigger: {error}"
            ),
        }
    }
}

/// Terminates `instance_id` with ShouldDecrementDesiredCapacity if it is still a member of
/// `asg`, under the ASG's Lease, since the decrement must not land between another
/// agent's read and write of desired capacity. Returns whether it terminated. Used to
/// give back a drained spot instance and an on-demand fallback.
pub async fn terminate_with_decrement<A: AutoScaling>(
    client: &A,
    leases: &Leases,
    asg: &str,
    instance_id: &str,
) -> Result<bool, String> {
    let held = leases
        .acquire(&names::asg_lease(asg))
        .await
        .map_err(|error| format!("taking the lease for ASG {asg}: {error}"))?;
    let result = async {
        let state = client.describe(asg).await.map_err(|e| e.to_string())?;
        if !state.instances.iter().any(|i| i.instance_id == instance_id) {
            info!("Instance {instance_id} is no longer in ASG {asg}; nothing to terminate");
            return Ok(false);
        }
        info!(
            "Terminating instance {instance_id} in ASG {asg} with ShouldDecrementDesiredCapacity: desired capacity {} -> {}",
            state.desired_capacity,
            state.desired_capacity - 1
        );
        client
            .terminate_instance(instance_id, true)
            .await
            .map_err(|e| e.to_string())?;
        Ok(true)
    }
    .await;
    held.release().await;
    result
}
