//! Giving capacity back: the drained spot instance after its replacement arrived
//! (SPOT_GUARD_TERMINATE_AFTER_DRAIN) and, through [`terminate_with_decrement`], an
//! on-demand fallback in scale-back.

use tracing::{error, info, warn};

use std::time::SystemTime;

use super::SpotGuard;
use super::decide::{self, LastTarget, ReplacementOutcome};
use crate::asg::AutoScaling;
use crate::lease::Leases;
use crate::names::{self, LAST_TARGET_ANNOTATION};
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
        let mut record = self.load_record(&event.event_id).await;
        if record.give_back_sent {
            info!(
                "Instance {instance_id} of node {node} was already given back before a restart; not sending it again"
            );
            return;
        }
        // Recorded before it is sent: a restart in between never sends it twice.
        record.give_back_sent = true;
        if let Err(error) = self.save(&record).await {
            error!(
                "Recording the give-back of instance {instance_id} on node {node} failed, so it was not sent; the spot ASG stays one bigger: {error}"
            );
            return;
        }
        let spot = self.settings.spot_asg_name.clone();
        let given_back = tokio::time::timeout(
            self.settings.scale_timeout,
            terminate_with_decrement(&self.asg, &self.leases, &spot, instance_id),
        )
        .await
        .unwrap_or_else(|_| {
            Err(GiveBackError {
                message: format!(
                    "not done within SPOT_GUARD_SCALE_TIMEOUT ({}s)",
                    self.settings.scale_timeout.as_secs()
                ),
                may_have_applied: true,
            })
        });
        match given_back {
            Ok(true) => {
                record.gave_back = true;
                self.save_or_warn(&record).await;
            }
            Ok(false) => {}
            Err(error) => error!(
                "Terminating instance {instance_id} of node {node} after its drain failed{}; it is not sent again: {error}",
                if error.may_have_applied {
                    " or got no clean answer"
                } else {
                    "; the spot ASG stays one bigger"
                }
            ),
        }
    }
}

/// A give-back that did not go through cleanly.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct GiveBackError {
    pub message: String,
    /// The termination may have been applied although no clean answer came.
    pub may_have_applied: bool,
}

impl GiveBackError {
    fn before_sending(message: String) -> Self {
        GiveBackError {
            message,
            may_have_applied: false,
        }
    }
}

/// Terminates `instance_id` with ShouldDecrementDesiredCapacity if it is an InService
/// member of `asg`, under the ASG's Lease, since the decrement must not land between
/// another agent's read and write of desired capacity; the desired capacity noted on
/// the Lease goes down with it. Returns whether it sent the termination. Used to give
/// back a drained spot instance and an on-demand fallback; callers record on the Node
/// that it is being sent before calling, so it is never sent twice.
pub async fn terminate_with_decrement<A: AutoScaling>(
    client: &A,
    leases: &Leases,
    asg: &str,
    instance_id: &str,
) -> Result<bool, GiveBackError> {
    let lease = names::asg_lease(asg);
    let held = leases.acquire(&lease).await.map_err(|error| {
        GiveBackError::before_sending(format!("taking the lease for ASG {asg}: {error}"))
    })?;
    let result = async {
        let state = client
            .describe(asg)
            .await
            .map_err(|error| GiveBackError::before_sending(error.to_string()))?;
        let member = state.instances.iter().find(|i| i.instance_id == instance_id);
        match member.map(|i| i.lifecycle_state.as_str()) {
            Some("InService") => {}
            Some(leaving) => {
                info!("Instance {instance_id} is {leaving} in ASG {asg}; nothing to terminate");
                return Ok(false);
            }
            None => {
                info!("Instance {instance_id} is no longer in ASG {asg}; nothing to terminate");
                return Ok(false);
            }
        }
        let now = SystemTime::now();
        let desired = decide::trusted_desired(
            state.desired_capacity,
            held.annotations()
                .get(LAST_TARGET_ANNOTATION)
                .map(String::as_str),
            now,
        );
        info!(
            "Terminating instance {instance_id} in ASG {asg} with ShouldDecrementDesiredCapacity: desired capacity {desired} -> {}",
            desired - 1
        );
        let sent = client.terminate_instance(instance_id, true).await;
        if let Err(error) = &sent
            && !error.may_have_applied()
        {
            return Err(GiveBackError::before_sending(error.to_string()));
        }
        // The next holder's read may predate the decrement: note the smaller target.
        let note = LastTarget {
            desired: desired - 1,
            at: decide::unix_millis(now),
            node: leases.holder().to_owned(),
        };
        if let Err(error) = leases
            .annotate(
                &lease,
                &[(LAST_TARGET_ANNOTATION, Some(note.to_annotation().as_str()))],
            )
            .await
        {
            warn!("Could not note desired {} of ASG {asg} on lease {lease}: {error}", desired - 1);
        }
        sent.map(|()| true).map_err(|error| GiveBackError {
            message: error.to_string(),
            may_have_applied: true,
        })
    }
    .await;
    held.release().await;
    result
}
