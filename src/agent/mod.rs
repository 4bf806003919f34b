//! Ties the pipeline together: notices from the monitor go through Spot Guard (for
//! rebalance recommendations) and then become node actions; cancelled events are undone.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::actions::{ActionOutcome, NodeActions};
use crate::asg::AutoScaling;
use crate::config::Config;
use crate::drain::{DrainSettings, PodRef};
use crate::imds::parse_scheduled_event_time;
use crate::logging::short_event_id;
use crate::monitor::Notice;
use crate::names::{ASG_LIFECYCLE_TAINT, SCHEDULED_MAINTENANCE_TAINT, SPOT_ITN_TAINT};
use crate::node::NodeClient;
use crate::plan::{self, ActionSettings, NodeActionPlan};
use crate::report::{InterruptionEvent, Reporter};
use crate::spot_guard::SpotGuard;
use crate::spot_guard::decide::ReplacementOutcome;
use k8s_openapi::jiff::Timestamp;

/// On shutdown, how long a rebalance flow may take to return before it is abandoned.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);
/// How long a preempted rebalance flow may take to stop before it is aborted: a spot
/// interruption leaves two minutes, and the drain must not wait on a hung AWS call.
const PREEMPT_GRACE: Duration = Duration::from_millis(200);

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

pub struct Agent<A> {
    settings: AgentSettings,
    actions: NodeActions,
    spot_guard: Option<SpotGuard<A>>,
    reporter: Reporter,
    /// Without Spot Guard: undo a rebalance cordon when the recommendation has left IMDS
    /// and no interruption came within this window of it (NTH never undoes it).
    rebalance_uncordon_window: Option<Duration>,
    /// How many notices have been fully handled, for callers that wait on the agent.
    handled: watch::Sender<u32>,
}

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

/// What the loop knows about events it acted on in this process and before.
#[derive(Default)]
struct Memory {
    /// Recorded on the Node by this or an earlier run: never acted on twice.
    handled: HashSet<String>,
    /// A drain-now event (interruption, maintenance, termination) was acted on: the
    /// node is going away, so nothing is undone and rebalance flows are moot.
    draining_for: Option<String>,
    /// The rebalance recommendation acted on in this run, and when it came.
    rebalance_received: Option<(String, Instant)>,
    /// A scheduled undo of a rebalance cordon, cancelled by any drain-now event.
    pending_rebalance_undo: Option<CancellationToken>,
}

impl<A: AutoScaling + 'static> Agent<A> {
    pub fn new(
        settings: AgentSettings,
        kube: kube::Client,
        spot_guard: Option<SpotGuard<A>>,
    ) -> Self {
        let node = NodeClient::new(kube.clone(), &settings.node_name, settings.dry_run);
        let actions = NodeActions::new(
            node,
            kube,
            settings.drain.clone(),
            settings.dry_run,
            settings.uptime_file.clone(),
        );
        Agent {
            settings,
            actions,
            spot_guard,
            reporter: Reporter::default(),
            rebalance_uncordon_window: None,
            handled: watch::Sender::new(0),
        }
    }

    pub fn with_rebalance_uncordon_window(mut self, window: Option<Duration>) -> Self {
        self.rebalance_uncordon_window = window;
        self
    }

    /// Reports notices and node actions (and Spot Guard's steps, through the
    /// [`SpotGuard`] built with the same reporter) as events, webhook posts and metrics.
    pub fn with_reporter(mut self, reporter: Reporter) -> Self {
        self.actions.set_reporter(reporter.clone());
        self.reporter = reporter;
        self
    }

    /// Counts notices whose node actions have finished (or been given up).
    pub fn handled(&self) -> watch::Receiver<u32> {
        self.handled.subscribe()
    }

    fn count_handled(&self) {
        self.handled.send_modify(|count| *count += 1);
    }

    /// Handles notices until the monitor stops or `shutdown` is cancelled.
    pub async fn run(self, mut notices: mpsc::Receiver<Notice>, shutdown: CancellationToken) {
        let agent = Arc::new(self);
        let record = agent.actions.load_record().await;
        agent.actions.uncordon_if_rebooted(&record).await;
        let mut memory = Memory {
            handled: record.handled_events.into_iter().collect(),
            ..Memory::default()
        };
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
            if memory.handled.contains(&event_id)
                && !matches!(
                    notice,
                    Notice::ScheduledEventEnded { .. }
                        | Notice::RebalanceRecommendationCleared { .. }
                )
            {
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
                    let acted_on = memory.handled.contains(&event_id)
                        || memory.draining_for.as_deref() == Some(event_id.as_str());
                    if !acted_on {
                        info!(%event_id, "Scheduled event is {state}; nothing was done for it");
                    } else if memory
                        .draining_for
                        .as_ref()
                        .is_some_and(|other| *other != event_id)
                    {
                        info!(%event_id, "Scheduled event is {state}, but the node is draining for another event; leaving it cordoned");
                    } else {
                        let span = info_span!("undo", node = %agent.settings.node_name, %event_id);
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
                Notice::RebalanceRecommendationCleared { .. } => {
                    if let Some(undo) = agent.schedule_rebalance_undo(&event_id, &memory) {
                        memory.pending_rebalance_undo = Some(undo);
                    }
                }
                drain_now => {
                    if let Some(undo) = memory.pending_rebalance_undo.take() {
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

    /// When the recommendation has left IMDS: the cordon is undone once the window
    /// since the recommendation has passed without an interruption, if so configured.
    fn schedule_rebalance_undo(
        self: &Arc<Self>,
        event_id: &str,
        memory: &Memory,
    ) -> Option<CancellationToken> {
        if self.spot_guard.is_some() {
            info!(%event_id, "The rebalance recommendation is gone; the node stays as Spot Guard left it (its replacement is already bought)");
            return None;
        }
        let Some(window) = self.rebalance_uncordon_window else {
            info!(%event_id, "The rebalance recommendation is gone; the node stays cordoned, as with NTH (REBALANCE_UNCORDON_WINDOW undoes it)");
            return None;
        };
        if let Some(other) = &memory.draining_for {
            info!(%event_id, "The rebalance recommendation is gone, but the node is draining for {}", short_event_id(other));
            return None;
        }
        let received = match &memory.rebalance_received {
            Some((id, at)) if id == event_id => *at,
            _ => return None,
        };
        let wait = window.saturating_sub(received.elapsed());
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

    async fn handle_rebalance(&self, notice: &Notice, preempt: &CancellationToken) {
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
    async fn handle_drain_now(&self, notice: &Notice, retry: bool) -> bool {
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

fn describe(notice: &Notice) -> &'static str {
    match notice {
        Notice::SpotInterruption { .. } => "A spot interruption notice",
        Notice::ScheduledEvent { .. } => "A scheduled maintenance event",
        Notice::AsgLifecycleTermination { .. } => "An ASG lifecycle termination",
        Notice::RebalanceRecommendation { .. }
        | Notice::ScheduledEventEnded { .. }
        | Notice::RebalanceRecommendationCleared { .. } => "A notice",
    }
}

fn notice_ended(event_id: &str, state: &str) -> Notice {
    Notice::ScheduledEventEnded {
        event_id: event_id.to_string(),
        state: state.to_string(),
    }
}

fn scheduled_time(text: &str) -> Option<Timestamp> {
    parse_scheduled_event_time(text).and_then(|seconds| Timestamp::from_second(seconds).ok())
}

/// The notice as NTH's webhook templates and events describe it.
fn report_event(notice: &Notice) -> InterruptionEvent {
    match notice {
        Notice::RebalanceRecommendation {
            event_id,
            notice_time,
        } => InterruptionEvent::rebalance_recommendation(event_id, notice_time),
        Notice::SpotInterruption { event_id, time, .. } => {
            InterruptionEvent::spot_interruption(event_id, time)
        }
        Notice::ScheduledEvent {
            event_id,
            code,
            description,
            not_before,
            not_after,
        } => InterruptionEvent::scheduled_event(
            event_id,
            code,
            "active",
            (not_before, not_after),
            scheduled_time(not_after),
            description,
        ),
        Notice::ScheduledEventEnded { event_id, state } => {
            InterruptionEvent::scheduled_event(event_id, "", state, ("", ""), None, "")
        }
        Notice::AsgLifecycleTermination { event_id } => {
            InterruptionEvent::asg_lifecycle(event_id, Some(Timestamp::now()))
        }
        Notice::RebalanceRecommendationCleared { event_id } => {
            InterruptionEvent::rebalance_recommendation(event_id, "")
        }
    }
}
