//! The one replacement workflow. Each ASG's read-modify-write happens under its Lease,
//! each step is recorded on the Node before it is taken (so a restarted agent resumes
//! and never scales twice), and capacity failures are remembered on the spot ASG's
//! Lease for every agent. The decisions are [`super::decide`]'s; the scale-up under the
//! ASG's Lease is [`scale_up`]'s.

mod scale_up;

use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use super::SpotGuard;
use super::decide::{
    self, AttemptRecord, AttemptResult, CapacityFailure, NextStep, NodeWait, NodeWaitResult,
    ReplacementOutcome, ReplacementRecord, Role, Scaled, WatchVerdict,
};
use super::ledger;
use crate::asg::AutoScaling;
use crate::names::{self, REPLACEMENT_ANNOTATION};
use crate::node::NodeError;
use crate::record;
use crate::report::{InterruptionEvent, SpotGuardStep};

/// A spot interruption notice cut the wait short.
pub(super) struct Preempted;

/// How one ASG's attempt ended.
enum AttemptOutcome {
    Ready,
    Failed(CapacityFailure),
}

impl<A: AutoScaling> SpotGuard<A> {
    fn asg_name(&self, role: Role) -> String {
        match role {
            Role::Spot => self.settings.spot_asg_name.clone(),
            Role::OnDemand => self.settings.on_demand_asg_name.clone(),
        }
    }

    /// The replacement workflow, resumed from the Node record when there is one.
    pub(super) async fn replace(
        &self,
        preempt: &CancellationToken,
        event: &InterruptionEvent,
    ) -> ReplacementOutcome {
        let noticed = Instant::now();
        let mut record = self.load_record(&event.event_id).await;
        loop {
            let (role, resume) = match decide::next_step(Some(&record), &event.event_id) {
                NextStep::Finished(outcome) => {
                    return self
                        .after_in_service(outcome, &mut record, preempt, event)
                        .await;
                }
                NextStep::Start(role) => (role, None),
                NextStep::Resume { role, scaled } => {
                    info!(
                        "Resuming after a restart: ASG {} was already asked to go from {} to {} for this recommendation; waiting for it again, not scaling again",
                        self.asg_name(role),
                        scaled.from,
                        scaled.to
                    );
                    (role, Some(scaled))
                }
            };
            let name = self.asg_name(role);
            let attempt = self
                .attempt(role, &name, resume, &mut record, preempt, event)
                .instrument(info_span!("scale", asg = %name))
                .await;
            let outcome = match attempt {
                Ok(outcome) => outcome,
                Err(Preempted) => return self.preempted(event, &name),
            };
            let since_notice = Some(noticed.elapsed());
            match (role, outcome) {
                (Role::Spot, AttemptOutcome::Ready) => {
                    info!(asg = %name, "Spot Guard: replacement ready in spot ASG {name}");
                    self.reporter.spot_guard(
                        event,
                        SpotGuardStep::InService {
                            asg: &name,
                            on_demand: false,
                            since_notice,
                        },
                    );
                }
                (Role::Spot, AttemptOutcome::Failed(failure)) => {
                    let on_demand = self.asg_name(Role::OnDemand);
                    self.report_fallback(event, &name, &on_demand, &failure);
                }
                (Role::OnDemand, AttemptOutcome::Ready) => {
                    info!(
                        asg = %name,
                        "Spot Guard: replacement ready in on-demand ASG {name} (fallback)"
                    );
                    self.reporter.spot_guard(
                        event,
                        SpotGuardStep::InService {
                            asg: &name,
                            on_demand: true,
                            since_notice,
                        },
                    );
                }
                (Role::OnDemand, AttemptOutcome::Failed(failure)) => {
                    error!(
                        on_demand_asg = %name,
                        "Spot Guard could not get replacement capacity: on-demand ASG {name}: {failure}; the node is tainted and drained anyway"
                    );
                    self.reporter.spot_guard(
                        event,
                        SpotGuardStep::Failed {
                            on_demand_asg: &name,
                            reason: failure.reason(),
                            detail: &failure.to_string(),
                        },
                    );
                }
            }
        }
    }

    /// One ASG: request (unless resuming) and wait; the result is in `record` too.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        role: Role,
        name: &str,
        resume: Option<Scaled>,
        record: &mut ReplacementRecord,
        preempt: &CancellationToken,
        event: &InterruptionEvent,
    ) -> Result<AttemptOutcome, Preempted> {
        let scaled = match resume {
            Some(scaled) => scaled,
            None => {
                let request = self.request_under_lease(role, name, record, event);
                let requested = tokio::select! {
                    _ = preempt.cancelled() => return Err(Preempted),
                    requested = request => requested,
                };
                match requested {
                    Ok(scaled) => scaled,
                    Err(failure) => {
                        *record = record.with_attempt(AttemptRecord {
                            role,
                            asg: name.to_owned(),
                            scaled: None,
                            result: decide::failed(&failure),
                        });
                        self.save_or_warn(record).await;
                        return Ok(AttemptOutcome::Failed(failure));
                    }
                }
            }
        };
        let verdict = self
            .wait_for_new_instances(role, name, &scaled, preempt)
            .await?;
        let (result, outcome) = match verdict {
            Ok(claimed) => {
                if !self.settings.node_ready_timeout.is_zero() {
                    record.node_wait = Some(NodeWait {
                        asg: name.to_owned(),
                        instances: claimed,
                        in_service_at: decide::unix_millis(SystemTime::now()),
                        result: NodeWaitResult::Waiting,
                    });
                }
                (AttemptResult::Ready, AttemptOutcome::Ready)
            }
            Err(failure) => {
                if role == Role::Spot && decide::is_capacity_shortage(&failure) {
                    self.remember_capacity_failure(name, &failure).await;
                }
                (decide::failed(&failure), AttemptOutcome::Failed(failure))
            }
        };
        *record = record.with_attempt(AttemptRecord {
            role,
            asg: name.to_owned(),
            scaled: Some(scaled),
            result,
        });
        self.save_or_warn(record).await;
        Ok(outcome)
    }

    /// Polls the ASG until enough new instances are InService (returning them), it
    /// fails, or the capacity check timeout (counted from the request, across restarts)
    /// passes.
    async fn wait_for_new_instances(
        &self,
        role: Role,
        name: &str,
        scaled: &Scaled,
        preempt: &CancellationToken,
    ) -> Result<Result<Vec<String>, CapacityFailure>, Preempted> {
        let timeout = self.settings.capacity_check_timeout;
        let elapsed = || decide::millis_ago(scaled.requested_at, SystemTime::now());
        info!(
            "Waiting up to {:?} for {} new instance(s) to reach InService in ASG {name} (checking every {:?})",
            timeout, scaled.needed, self.settings.check_interval
        );
        loop {
            let pause = self
                .settings
                .check_interval
                .min(timeout.saturating_sub(elapsed()))
                .max(Duration::from_millis(1));
            tokio::select! {
                _ = preempt.cancelled() => return Err(Preempted),
                _ = tokio::time::sleep(pause) => {}
            }
            let state = match self.asg.describe(name).await {
                Ok(state) => state,
                Err(error) => {
                    warn!("Checking ASG {name} failed, will check again: {error}");
                    if elapsed() >= timeout {
                        return Ok(Err(CapacityFailure::Timeout { waited: elapsed() }));
                    }
                    continue;
                }
            };
            let activities = self.activities_while_waiting(name, scaled, &state).await;
            match decide::judge(scaled, timeout, &state, &activities, SystemTime::now()) {
                WatchVerdict::Waiting => info!(
                    "ASG {name}: {} of {} new instance(s) InService ({:.1}s since the request)",
                    decide::new_in_service(scaled, &state),
                    scaled.needed,
                    elapsed().as_secs_f64()
                ),
                WatchVerdict::Ready { in_service } => {
                    let candidates = decide::new_in_service_ids(scaled, &state);
                    let claimed = self.claim(name, role, &candidates).await;
                    if !claimed.is_empty() {
                        info!(
                            "New instance reached InService in ASG {name}: {} is this node's replacement ({in_service} new InService, desired {}, was {})",
                            claimed.join(", "),
                            scaled.to,
                            scaled.from
                        );
                        return Ok(Ok(claimed));
                    }
                    if elapsed() >= timeout {
                        return Ok(Err(CapacityFailure::Timeout { waited: elapsed() }));
                    }
                    info!(
                        "ASG {name}: the {in_service} new InService instance(s) are other nodes' replacements; waiting for this node's ({:.1}s since the request)",
                        elapsed().as_secs_f64()
                    );
                }
                WatchVerdict::Failed(failure) => {
                    warn!(
                        reason = failure.reason(),
                        "ASG {name} did not deliver: {failure}"
                    );
                    return Ok(Err(failure));
                }
            }
        }
    }

    /// This node's replacement among the new InService `candidates`, claimed on the
    /// ASG's ledger so no other node counts it; none while all are other nodes'.
    async fn claim(&self, name: &str, role: Role, candidates: &[String]) -> Vec<String> {
        let count = usize::try_from(self.settings.scale_count).unwrap_or(1);
        let lease = names::asg_lease(name);
        match ledger::claim(
            &self.leases,
            &lease,
            name,
            role,
            self.node.name(),
            candidates,
            count,
        )
        .await
        {
            Ok(claimed) => {
                if !claimed.is_empty() {
                    info!(
                        "Recorded on lease {lease}: {} bought in ASG {name} for this node",
                        claimed.join(", ")
                    );
                }
                claimed
            }
            Err(error) => {
                warn!(
                    "Recording the new instances of ASG {name} on lease {lease} failed, so they count as this node's unchecked (their agents get no Cluster Autoscaler protection or scale-back): {error}"
                );
                candidates.iter().take(count).cloned().collect()
            }
        }
    }

    pub(super) async fn load_record(&self, event_id: &str) -> ReplacementRecord {
        let stored = match self.node.get().await {
            Ok(node) => ReplacementRecord::parse(record::annotation(&node, REPLACEMENT_ANNOTATION)),
            Err(error) => {
                warn!(
                    "Cannot read node {} for its replacement record ({error}); starting the flow from the beginning",
                    self.node.name()
                );
                None
            }
        };
        stored
            .filter(|record| record.event_id == event_id)
            .unwrap_or_else(|| ReplacementRecord::new(event_id))
    }

    pub(super) async fn save(&self, record: &ReplacementRecord) -> Result<(), NodeError> {
        self.node
            .set_annotations(&[(REPLACEMENT_ANNOTATION, record.to_annotation().as_str())])
            .await
            .map(|_| ())
    }

    /// Saves a step's result; the flow goes on if it cannot, the record is only lost.
    pub(super) async fn save_or_warn(&self, record: &ReplacementRecord) {
        if let Err(error) = self.save(record).await {
            warn!(
                "Recording the replacement on node {} failed; a restarted agent may redo this step: {error}",
                self.node.name()
            );
        }
    }

    /// The spot ASG could not deliver: says so in the log and to the reporter.
    fn report_fallback(
        &self,
        event: &InterruptionEvent,
        spot_name: &str,
        on_demand_name: &str,
        failure: &CapacityFailure,
    ) {
        warn!(
            asg = %spot_name,
            reason = failure.reason(),
            "Spot ASG {spot_name} could not provide capacity ({failure}); falling back to on-demand ASG {on_demand_name}"
        );
        self.reporter.spot_guard(
            event,
            SpotGuardStep::Fallback {
                spot_asg: spot_name,
                on_demand_asg: on_demand_name,
                reason: failure.reason(),
                detail: &failure.to_string(),
            },
        );
    }

    pub(super) fn preempted(&self, event: &InterruptionEvent, asg: &str) -> ReplacementOutcome {
        self.reporter
            .spot_guard(event, SpotGuardStep::Preempted { asg });
        ReplacementOutcome::Preempted
    }
}
