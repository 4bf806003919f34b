//! One notice carried through: a rebalance recommendation through Spot Guard and then
//! the node actions, a drain-now notice straight to them, a cleared recommendation to a
//! scheduled uncordon.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Agent;
use super::decide::{Memory, RebalanceCleared};
use super::describe::report_event;
use crate::actions::ActionOutcome;
use crate::asg::AutoScaling;
use crate::logging::short_event_id;
use crate::monitor::Notice;
use crate::names::{ASG_LIFECYCLE_TAINT, SCHEDULED_MAINTENANCE_TAINT, SPOT_ITN_TAINT};
use crate::plan::{self, NodeActionPlan};
use crate::report::InterruptionEvent;
use crate::spot_guard::decide::ReplacementOutcome;

impl<A: AutoScaling + 'static> Agent<A> {
    /// When the recommendation has left IMDS: the cordon is undone once the window
    /// since the recommendation has passed without an interruption, if so configured.
    pub(super) fn schedule_rebalance_undo(
        self: &Arc<Self>,
        event_id: &str,
        memory: &Memory,
    ) -> Option<CancellationToken> {
        let cleared = memory.rebalance_cleared(
            event_id,
            self.spot_guard.is_some(),
            self.rebalance_uncordon_window,
            Instant::now(),
        );
        let wait = match cleared {
            RebalanceCleared::SpotGuardKeeps => {
                info!(%event_id, "The rebalance recommendation is gone; the node stays as Spot Guard left it (its replacement is already bought)");
                return None;
            }
            RebalanceCleared::StaysCordoned => {
                info!(%event_id, "The rebalance recommendation is gone; the node stays cordoned, as with NTH (REBALANCE_UNCORDON_WINDOW undoes it)");
                return None;
            }
            RebalanceCleared::DrainingFor(other) => {
                info!(%event_id, "The rebalance recommendation is gone, but the node is draining for {}", short_event_id(other));
                return None;
            }
            RebalanceCleared::NotActedOn => return None,
            RebalanceCleared::UncordonAfter(wait) => wait,
        };
        info!(%event_id, "The rebalance recommendation is gone; the node is uncordoned in {wait:?} unless an interruption comes first");
        let cancel = CancellationToken::new();
        let agent = Arc::clone(self);
        let event = InterruptionEvent::rebalance_recommendation(event_id, "");
        let token = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::sleep(wait) => {
                    agent.actions.undo(&event, "the rebalance recommendation passed without an interruption").await;
                }
            }
        });
        Some(cancel)
    }

    pub(super) async fn handle_rebalance(&self, notice: &Notice, preempt: &CancellationToken) {
        let event = report_event(notice);
        self.reporter.notice_received(&event);
        let mut replacement = None;
        if let Some(spot_guard) = &self.spot_guard {
            let outcome = spot_guard.secure_replacement(preempt, &event).await;
            match &outcome {
                ReplacementOutcome::Preempted => return,
                ReplacementOutcome::Spot => info!(
                    "Spot Guard complete: replacement is InService in the spot ASG; tainting, cordoning and draining the node"
                ),
                ReplacementOutcome::OnDemand { spot_failure } => info!(
                    "Spot Guard complete: replacement is InService in the on-demand ASG (spot: {spot_failure}); tainting, cordoning and draining the node"
                ),
                ReplacementOutcome::NoneAvailable { .. } => warn!(
                    "Spot Guard complete without replacement capacity; tainting, cordoning and draining the node anyway"
                ),
                ReplacementOutcome::DryRun => {
                    info!("DRY RUN: Spot Guard complete; node actions follow as a dry run")
                }
            }
            replacement = Some((spot_guard, outcome));
        }
        let plan = plan::plan_rebalance(&self.settings.actions, notice.event_id());
        let act = async {
            let actions = self.act(&plan, &event, "rebalance recommendation").await;
            // Before the event is recorded as handled, so a restart in between still gives back.
            if let Some((spot_guard, outcome)) = &replacement {
                spot_guard
                    .after_node_actions(outcome, actions == ActionOutcome::Drained, &event)
                    .await;
            }
            self.done(&event).await;
        };
        tokio::select! {
            _ = preempt.cancelled() => info!("Rebalance node actions stopped: a drain-now event or shutdown took over"),
            _ = act => {}
        }
    }

    /// Acts on a drain-now notice; `retry` is a later attempt after an incomplete drain.
    /// Returns false when the drain is still incomplete, so the caller tries again.
    pub(super) async fn handle_drain_now(&self, notice: &Notice, retry: bool) -> bool {
        let event_id = notice.event_id();
        let event = report_event(notice);
        if !retry {
            self.reporter.notice_received(&event);
        }
        let (taint_key, reason) = match notice {
            Notice::SpotInterruption { action, time, .. } => {
                info!(%event_id, "Handling spot interruption notice: action={action} time={time}");
                (SPOT_ITN_TAINT, "spot interruption")
            }
            Notice::ScheduledEvent { code, .. } => {
                info!(%event_id, "Handling scheduled event {code}");
                if plan::is_restart_event(code) && !self.settings.dry_run {
                    self.actions.prepare_for_reboot(event_id).await;
                }
                (SCHEDULED_MAINTENANCE_TAINT, "scheduled maintenance")
            }
            Notice::AsgLifecycleTermination { .. } => {
                info!(%event_id, "Handling ASG lifecycle termination");
                (ASG_LIFECYCLE_TAINT, "ASG lifecycle termination")
            }
            Notice::RebalanceRecommendation { .. }
            | Notice::ScheduledEventEnded { .. }
            | Notice::RebalanceRecommendationCleared { .. } => return true,
        };
        let plan = plan::plan_drain_now(&self.settings.actions, taint_key, event_id);
        let complete = self.act(&plan, &event, reason).await != ActionOutcome::DrainIncomplete;
        if complete {
            // Only a finished drain is recorded: a restarted agent retries an unfinished one.
            self.actions.record_handled(&event.event_id).await;
        }
        if !retry {
            self.count_handled();
        }
        complete
    }

    async fn act(
        &self,
        plan: &NodeActionPlan,
        event: &InterruptionEvent,
        reason: &str,
    ) -> ActionOutcome {
        self.actions.apply(plan, event, reason).await
    }

    /// Records the event as handled on the Node (a restart will not redo it) and counts it.
    async fn done(&self, event: &InterruptionEvent) {
        self.actions.record_handled(&event.event_id).await;
        self.count_handled();
    }
}
