//! Asking one ASG for the replacement under the ASG's Lease: read the ASG, record the
//! intent on the Node, set desired capacity, all while the Lease is held, so agents
//! on other nodes never count from the same read. The notes left on the Lease for the
//! next holder live here too (the target just set, a spot capacity shortage), beside
//! the reads that trust them.

use std::time::SystemTime;

use tracing::{info, warn};

use crate::asg::{AsgState, AutoScaling};
use crate::lease::HeldLease;
use crate::names::{self, CAPACITY_FAILURE_ANNOTATION, LAST_TARGET_ANNOTATION};
use crate::report::{InterruptionEvent, SpotGuardStep};
use crate::spot_guard::SpotGuard;
use crate::spot_guard::decide::{
    self, AttemptRecord, AttemptResult, CapacityFailure, CapacityFailureNote, LastTarget,
    ReplacementRecord, Role, Scaled,
};

impl<A: AutoScaling> SpotGuard<A> {
    pub(super) async fn request_under_lease(
        &self,
        role: Role,
        name: &str,
        record: &mut ReplacementRecord,
        event: &InterruptionEvent,
    ) -> Result<Scaled, CapacityFailure> {
        let limit = self.settings.scale_timeout;
        // Queueing behind other nodes' agents has its own bound, not the request's.
        let held = tokio::time::timeout(limit, self.acquire(name))
            .await
            .map_err(|_| CapacityFailure::Api {
                error: format!(
                    "waited SPOT_GUARD_SCALE_TIMEOUT ({}s) for lease {} of ASG {name}, which other nodes' agents kept",
                    limit.as_secs(),
                    names::asg_lease(name)
                ),
            })??;
        let result = tokio::time::timeout(
            limit,
            self.request_while_held(&held, role, name, record, event),
        )
        .await;
        held.release().await;
        match result {
            Ok(result) => result,
            Err(_) => match record.attempt(role) {
                // Cut off after the intent was recorded: SetDesiredCapacity may be out.
                Some(AttemptRecord {
                    result: AttemptResult::Pending,
                    scaled: Some(scaled),
                    ..
                }) => {
                    warn!(
                        "Scaling ASG {name} to {} did not finish within SPOT_GUARD_SCALE_TIMEOUT ({}s); it may have gone through, so it counts as sent: waiting for its instance",
                        scaled.to,
                        limit.as_secs()
                    );
                    Ok(scaled.clone())
                }
                _ => Err(CapacityFailure::Api {
                    error: format!(
                        "reading ASG {name} did not finish within SPOT_GUARD_SCALE_TIMEOUT ({}s)",
                        limit.as_secs()
                    ),
                }),
            },
        }
    }

    /// Reads the ASG, records the intent on the Node, then sets desired capacity.
    async fn request_while_held(
        &self,
        held: &HeldLease,
        role: Role,
        name: &str,
        record: &mut ReplacementRecord,
        event: &InterruptionEvent,
    ) -> Result<Scaled, CapacityFailure> {
        if role == Role::Spot
            && let Some(note) = decide::cool_off(
                held.annotations()
                    .get(CAPACITY_FAILURE_ANNOTATION)
                    .map(String::as_str),
                SystemTime::now(),
                self.settings.capacity_cool_off,
            )
        {
            let ago = decide::millis_ago(note.at, SystemTime::now());
            return Err(CapacityFailure::InsufficientCapacity {
                message: format!(
                    "spot ASG {name} failed for lack of capacity {}s ago ({}, seen by node {}); within SPOT_GUARD_CAPACITY_COOL_OFF ({}s) recommendations go straight to on-demand",
                    ago.as_secs(),
                    note.reason,
                    note.node,
                    self.settings.capacity_cool_off.as_secs()
                ),
            });
        }
        let before = self
            .asg
            .describe(name)
            .await
            .map_err(|error| CapacityFailure::from_api_error(&error))?;
        let activities = self.activities_before(name, &before).await;
        let now = SystemTime::now();
        let last_target = held
            .annotations()
            .get(LAST_TARGET_ANNOTATION)
            .map(String::as_str);
        let trusted = decide::trusted_desired(before.desired_capacity, last_target, now);
        if trusted != before.desired_capacity {
            info!(
                "ASG {name} reads desired {} but {trusted} was set under lease {} moments ago (AWS's reads lag its changes); counting from {trusted}",
                before.desired_capacity,
                held.name()
            );
        }
        let counted = AsgState {
            desired_capacity: trusted,
            ..before
        };
        let scaled = decide::plan_target(&counted, self.settings.scale_count, &activities, now)?;
        if !held.is_held() {
            return Err(lost_lease(held, name));
        }
        let intent = record.with_attempt(AttemptRecord {
            role,
            asg: name.to_owned(),
            scaled: Some(scaled.clone()),
            result: AttemptResult::Pending,
        });
        self.save(&intent).await.map_err(|error| CapacityFailure::Api {
            error: format!(
                "recording the scale-up of ASG {name} on node {} failed, so it was not sent (a restart could otherwise scale twice): {error}",
                self.node.name()
            ),
        })?;
        *record = intent;
        // The record write took time: the turn must still be ours for the write to AWS.
        if !held.is_held() {
            return Err(lost_lease(held, name));
        }
        info!(
            "Scaling ASG {name} from {} to {} instances",
            scaled.from, scaled.to
        );
        match self.asg.set_desired_capacity(name, scaled.to).await {
            Ok(()) => {}
            Err(error) if error.may_have_applied() => warn!(
                "SetDesiredCapacity({}) on ASG {name} got no clean answer ({error}); it may have gone through, so it counts as sent: waiting for its instance, never buying a second",
                scaled.to
            ),
            Err(error) => return Err(CapacityFailure::from_api_error(&error)),
        }
        self.remember_target(held, name, scaled.to).await;
        self.reporter.spot_guard(
            event,
            SpotGuardStep::ScaleUp {
                asg: name,
                from: scaled.from,
                to: scaled.to,
            },
        );
        Ok(scaled)
    }

    /// Writes the target just set on the ASG's Lease, for the next holder whose read
    /// may predate it.
    async fn remember_target(&self, held: &HeldLease, name: &str, desired: i32) {
        let note = LastTarget {
            desired,
            at: decide::unix_millis(SystemTime::now()),
            node: self.node.name().to_owned(),
        };
        if let Err(error) = self
            .leases
            .annotate(
                held.name(),
                &[(LAST_TARGET_ANNOTATION, Some(note.to_annotation().as_str()))],
            )
            .await
        {
            warn!(
                "Could not note desired {desired} of ASG {name} on lease {}; an agent scaling next may count from a stale read: {error}",
                held.name()
            );
        }
    }

    pub(super) async fn remember_capacity_failure(&self, name: &str, failure: &CapacityFailure) {
        if self.settings.capacity_cool_off.is_zero() {
            return;
        }
        let note = CapacityFailureNote {
            at: decide::unix_millis(SystemTime::now()),
            reason: failure.reason().to_owned(),
            node: self.node.name().to_owned(),
        };
        let lease = names::asg_lease(name);
        match self
            .leases
            .annotate(
                &lease,
                &[(
                    CAPACITY_FAILURE_ANNOTATION,
                    Some(note.to_annotation().as_str()),
                )],
            )
            .await
        {
            Ok(()) => info!(
                "Remembered on lease {lease}: spot ASG {name} is short of capacity; recommendations in the next {}s go straight to on-demand",
                self.settings.capacity_cool_off.as_secs()
            ),
            Err(error) => warn!("Could not share the capacity failure of ASG {name}: {error}"),
        }
    }

    async fn acquire(&self, asg: &str) -> Result<HeldLease, CapacityFailure> {
        self.leases
            .acquire(&names::asg_lease(asg))
            .await
            .map_err(|error| CapacityFailure::Api {
                error: format!("taking the lease for ASG {asg}: {error}"),
            })
    }
}

fn lost_lease(held: &HeldLease, name: &str) -> CapacityFailure {
    CapacityFailure::Api {
        error: format!(
            "lost lease {} before scaling ASG {name}; not scaling on a stale read",
            held.name()
        ),
    }
}
