//! The loop over notices: which one is acted on and when. It takes over the events an
//! earlier run recorded, retries an incomplete drain, lets a drain-now notice preempt a
//! rebalance flow in progress, and finishes or abandons work on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::Agent;
use super::decide::{Memory, ScheduledEnd};
use super::describe::{describe, notice_ended, report_event};
use crate::asg::AutoScaling;
use crate::logging::short_event_id;
use crate::monitor::Notice;

/// On shutdown, how long a rebalance flow may take to return before it is abandoned.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);
/// How long a preempted rebalance flow may take to stop before it is aborted: a spot
/// interruption leaves two minutes, and the drain must not wait on a hung AWS call.
const PREEMPT_GRACE: Duration = Duration::from_millis(200);

/// A rebalance recommendation being handled in the background, so that a spot
/// interruption notice can still be received and preempt it.
struct RebalanceTask {
    event_id: String,
    preempt: CancellationToken,
    handle: JoinHandle<()>,
}

impl RebalanceTask {
    fn running(&self) -> bool {
        !self.handle.is_finished()
    }
}

impl<A: AutoScaling + 'static> Agent<A> {
    /// Handles notices until the monitor stops or `shutdown` is cancelled.
    pub async fn run(self, mut notices: mpsc::Receiver<Notice>, shutdown: CancellationToken) {
        let agent = Arc::new(self);
        let record = agent.actions.load_record().await;
        agent.actions.uncordon_if_rebooted(&record).await;
        let mut memory = Memory::new(record.handled_events);
        // A scheduled undo of a rebalance cordon, cancelled by any drain-now event.
        let mut pending_rebalance_undo: Option<CancellationToken> = None;
        let mut rebalance: Option<RebalanceTask> = None;
        // A drain-now notice whose drain is incomplete, tried again each retry interval
        // as NTH does, until it completes or the event is cancelled.
        let mut unfinished: Option<(Notice, tokio::time::Instant)> = None;
        loop {
            let retry_at = unfinished.as_ref().map(|(_, at)| *at);
            let notice = tokio::select! {
                biased;
                _ = shutdown.cancelled() => None,
                notice = notices.recv() => notice,
                _ = sleep_until_some(retry_at) => {
                    let Some((notice, _)) = unfinished.take() else { continue };
                    let event_id = notice.event_id().to_string();
                    let span = info_span!("drain_now", node = %agent.settings.node_name, %event_id);
                    info!(%event_id, "Retrying the incomplete drain");
                    let drain = agent.handle_drain_now(&notice, true).instrument(span);
                    let Some(complete) = finish_on_shutdown(drain, &shutdown, agent.settings.drain.timeout, &event_id).await else {
                        return;
                    };
                    if complete {
                        memory.handled.insert(event_id);
                    } else {
                        unfinished = Some((notice, tokio::time::Instant::now() + agent.settings.retry_interval));
                    }
                    continue;
                }
            };
            // The monitor closes the channel only when it stops, i.e. on shutdown too.
            let Some(notice) = notice else {
                if let Some(mut task) = rebalance.take().filter(RebalanceTask::running) {
                    // A flow that has just counted itself handled is only returning.
                    let finishing = tokio::time::timeout(SHUTDOWN_GRACE, &mut task.handle).await;
                    if finishing.is_err() {
                        warn!(event_id = %task.event_id, "Shutting down: abandoning the rebalance flow in progress; a restarted agent will see the recommendation again");
                        task.preempt.cancel();
                        let _ = task.handle.await;
                    }
                }
                return;
            };
            let event_id = notice.event_id().to_string();
            if memory.already_handled(&notice) {
                info!(%event_id, "Already acted on this event before this agent restarted; not acting again");
                continue;
            }
            match notice {
                Notice::RebalanceRecommendation {
                    ref notice_time, ..
                } => {
                    if let Some(draining_for) = &memory.draining_for {
                        info!(%event_id, "Ignoring rebalance recommendation: the node is already being drained for {}", short_event_id(draining_for));
                        continue;
                    }
                    if let Some(task) = rebalance.as_ref().filter(|task| task.running()) {
                        info!(%event_id, "Rebalance recommendation (noticeTime={notice_time}) arrived while {} is still being handled; it is covered by that flow", short_event_id(&task.event_id));
                        continue;
                    }
                    info!(%event_id, "Handling rebalance recommendation (noticeTime={notice_time})");
                    // Not a child of `shutdown`: the shutdown branch cancels it itself, after saying so.
                    let preempt = CancellationToken::new();
                    let span = info_span!("rebalance", node = %agent.settings.node_name, %event_id);
                    let handle = tokio::spawn({
                        let agent = Arc::clone(&agent);
                        let preempt = preempt.clone();
                        async move { agent.handle_rebalance(&notice, &preempt).await }
                            .instrument(span)
                    });
                    memory.rebalance_received = Some((event_id.clone(), Instant::now()));
                    rebalance = Some(RebalanceTask {
                        event_id,
                        preempt,
                        handle,
                    });
                }
                Notice::ScheduledEventEnded { state, .. } => {
                    if unfinished
                        .as_ref()
                        .is_some_and(|(pending, _)| pending.event_id() == event_id)
                    {
                        unfinished = None;
                    }
                    match memory.scheduled_end(&event_id) {
                        ScheduledEnd::NothingWasDone => {
                            info!(%event_id, "Scheduled event is {state}; nothing was done for it");
                        }
                        ScheduledEnd::DrainingForAnother => {
                            info!(%event_id, "Scheduled event is {state}, but the node is draining for another event; leaving it cordoned");
                        }
                        ScheduledEnd::Undo => {
                            let span =
                                info_span!("undo", node = %agent.settings.node_name, %event_id);
                            let event = report_event(&notice_ended(&event_id, &state));
                            agent.reporter.notice_received(&event);
                            agent
                                .actions
                                .undo(&event, &format!("the scheduled event is {state}"))
                                .instrument(span)
                                .await;
                            memory.draining_for = None;
                            memory.handled.remove(&event_id);
                        }
                    }
                }
                Notice::RebalanceRecommendationCleared { .. } => {
                    if let Some(undo) = agent.schedule_rebalance_undo(&event_id, &memory) {
                        pending_rebalance_undo = Some(undo);
                    }
                }
                drain_now => {
                    if let Some(undo) = pending_rebalance_undo.take() {
                        undo.cancel();
                    }
                    if let Some(mut task) = rebalance.take().filter(RebalanceTask::running) {
                        warn!(%event_id, "{} preempts the rebalance flow of {}: the replacement may still be pending; draining now", describe(&drain_now), short_event_id(&task.event_id));
                        task.preempt.cancel();
                        // The flow stops at its next await; one stuck in a call is cut off.
                        if tokio::time::timeout(PREEMPT_GRACE, &mut task.handle)
                            .await
                            .is_err()
                        {
                            warn!(%event_id, "The rebalance flow of {} did not stop within {PREEMPT_GRACE:?}; aborting it", short_event_id(&task.event_id));
                            task.handle.abort();
                        }
                    }
                    memory.draining_for = Some(event_id.clone());
                    let span = info_span!("drain_now", node = %agent.settings.node_name, %event_id);
                    let drain = agent.handle_drain_now(&drain_now, false).instrument(span);
                    let Some(complete) = finish_on_shutdown(
                        drain,
                        &shutdown,
                        agent.settings.drain.timeout,
                        &event_id,
                    )
                    .await
                    else {
                        return;
                    };
                    if complete {
                        memory.handled.insert(event_id);
                        unfinished = None;
                    } else {
                        warn!(%event_id, "The drain is incomplete; trying again every {:?} until it completes", agent.settings.retry_interval);
                        unfinished = Some((
                            drain_now,
                            tokio::time::Instant::now() + agent.settings.retry_interval,
                        ));
                    }
                }
            }
        }
    }
}

/// Runs a drain-now `drain` to its end even when `shutdown` comes first, for at most
/// `limit` (NODE_TERMINATION_GRACE_PERIOD, which the chart's terminationGracePeriodSeconds
/// covers) after it: the node is about to go. None when shutdown came, so the caller
/// stops; an unfinished drain is not recorded handled, so a restarted agent takes it over
/// from the Node record.
async fn finish_on_shutdown(
    drain: impl std::future::Future<Output = bool>,
    shutdown: &CancellationToken,
    limit: Duration,
    event_id: &str,
) -> Option<bool> {
    tokio::pin!(drain);
    tokio::select! {
        complete = &mut drain => Some(complete),
        _ = shutdown.cancelled() => {
            warn!(%event_id, "Shutting down during the drain: finishing it first, for at most {}s", limit.as_secs());
            match tokio::time::timeout(limit, drain).await {
                Ok(true) => info!(%event_id, "The drain completed before shutdown"),
                _ => warn!(%event_id, "The drain did not finish before shutdown; a restarted agent takes it over"),
            }
            None
        }
    }
}

/// Sleeps until `at`; forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
