//! The polls themselves, on a thread of their own: blocking reads of IMDS, a plain
//! wait between polls (one wake-up, where an async timer wheel takes three), and only
//! new notices and failures handed to the async side.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{MonitorSettings, Notice, asg_lifecycle_event_id, monitor_kind, next_wait};
use crate::imds::{
    ASG_TARGET_LIFECYCLE_STATE_PATH, ImdsClient, ImdsError, REBALANCE_RECOMMENDATION_PATH,
    SCHEDULED_EVENTS_PATH, SPOT_INSTANCE_ACTION_PATH,
};
use crate::report::Liveness;

/// What a poll hands to the async side.
pub(super) enum Found {
    /// Seen for the first time (each notice goes once).
    Notice(Notice),
    /// A read of `monitor` failed; `streak_start` when the poll before did not fail.
    Failure {
        monitor: &'static str,
        streak_start: bool,
    },
}

/// Ends the poll thread's wait between polls, and its polling, when dropped.
pub(super) struct StopOnDrop {
    stopped: Arc<AtomicBool>,
    thread: Thread,
}

impl StopOnDrop {
    pub(super) fn new(stopped: Arc<AtomicBool>, thread: Thread) -> Self {
        StopOnDrop { stopped, thread }
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// Polls until `stopped` is set or the receiver of `found` is gone.
pub(super) fn run(
    imds: &ImdsClient,
    settings: &MonitorSettings,
    liveness: &Liveness,
    found: &mpsc::Sender<Found>,
    stopped: &AtomicBool,
) {
    let mut sent: HashSet<String> = HashSet::new();
    let mut served_rebalance: Option<String> = None;
    let mut failed_polls: u32 = 0;
    loop {
        let poll = poll_once(imds, settings);
        liveness.record_poll();
        let failed = !poll.failures.is_empty();
        for monitor in poll.failures {
            let failure = Found::Failure {
                monitor,
                streak_start: failed_polls == 0,
            };
            if found.blocking_send(failure).is_err() {
                return;
            }
        }
        failed_polls = if failed {
            failed_polls.saturating_add(1)
        } else {
            0
        };
        let mut notices_now = poll.notices;
        match poll.rebalance_served {
            Some(Some(event_id)) => served_rebalance = Some(event_id),
            Some(None) => {
                if let Some(event_id) = served_rebalance.take() {
                    notices_now.push(Notice::RebalanceRecommendationCleared { event_id });
                }
            }
            None => {}
        }
        for notice in notices_now {
            let key = notice.dedupe_key();
            if sent.contains(&key) {
                continue;
            }
            log_new_notice(&notice);
            if found.blocking_send(Found::Notice(notice)).is_err() {
                return;
            }
            sent.insert(key);
        }
        if wait_or_stop(stopped, next_wait(settings.interval, failed_polls)) {
            return;
        }
    }
}

/// Sleeps for `wait`, or until `stopped` is set (its setter unparks this thread); true
/// when stopped. Parking is a plain futex wait: one wake-up per poll.
fn wait_or_stop(stopped: &AtomicBool, wait: Duration) -> bool {
    let deadline = Instant::now().checked_add(wait);
    loop {
        if stopped.load(Ordering::Acquire) {
            return true;
        }
        let left = deadline.map_or(wait, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        if left.is_zero() {
            return false;
        }
        // Returns early on an unpark, or spuriously: the loop looks again.
        std::thread::park_timeout(left);
    }
}

struct Poll {
    /// Most urgent first: a spot interruption before a rebalance recommendation.
    notices: Vec<Notice>,
    /// The rebalance recommendation served now (`Some(None)`: none); `None` when not read.
    rebalance_served: Option<Option<String>>,
    /// NTH's monitor kind, per failed read (the error is logged where it happens).
    failures: Vec<&'static str>,
}

fn poll_once(imds: &ImdsClient, settings: &MonitorSettings) -> Poll {
    let mut poll = Poll {
        notices: Vec::new(),
        rebalance_served: None,
        failures: Vec::new(),
    };
    if settings.spot_interruption {
        match imds.spot_instance_action() {
            Ok(action) => poll
                .notices
                .extend(action.as_ref().map(Notice::spot_interruption)),
            Err(error) => {
                poll.record_failure(monitor_kind::SPOT_ITN, SPOT_INSTANCE_ACTION_PATH, &error)
            }
        }
    }
    if settings.asg_lifecycle {
        match imds.asg_target_lifecycle_state() {
            Ok(Some(state)) if state == "Terminated" => {
                poll.notices.push(Notice::AsgLifecycleTermination {
                    event_id: asg_lifecycle_event_id(),
                })
            }
            Ok(_) => {}
            Err(error) => poll.record_failure(
                monitor_kind::ASG_LIFECYCLE,
                ASG_TARGET_LIFECYCLE_STATE_PATH,
                &error,
            ),
        }
    }
    if settings.scheduled_events {
        match imds.scheduled_events() {
            Ok(events) => poll
                .notices
                .extend(events.iter().filter_map(Notice::scheduled)),
            Err(error) => {
                poll.record_failure(monitor_kind::SCHEDULED_EVENT, SCHEDULED_EVENTS_PATH, &error)
            }
        }
    }
    if settings.rebalance {
        match imds.rebalance_recommendation() {
            Ok(recommendation) => {
                let notice = recommendation.as_ref().map(Notice::rebalance);
                poll.rebalance_served = Some(notice.as_ref().map(|n| n.event_id().to_string()));
                poll.notices.extend(notice);
            }
            Err(error) => poll.record_failure(
                monitor_kind::REBALANCE_RECOMMENDATION,
                REBALANCE_RECOMMENDATION_PATH,
                &error,
            ),
        }
    }
    poll
}

impl Poll {
    fn record_failure(&mut self, monitor: &'static str, path: &str, error: &ImdsError) {
        warn!(path, "Polling IMDS failed, will poll again: {error}");
        self.failures.push(monitor);
    }
}

fn log_new_notice(notice: &Notice) {
    match notice {
        Notice::RebalanceRecommendation {
            event_id,
            notice_time,
        } => info!(
            event_id,
            "Rebalance recommendation received: noticeTime={notice_time}"
        ),
        Notice::SpotInterruption {
            event_id,
            action,
            time,
        } => info!(
            event_id,
            "Spot interruption notice received: action={action} time={time}"
        ),
        Notice::ScheduledEvent {
            event_id,
            code,
            not_before,
            not_after,
            description,
        } => info!(
            event_id,
            "Scheduled event received: {code} between {not_before} and {not_after}: {description}"
        ),
        Notice::ScheduledEventEnded { event_id, state } => {
            info!(event_id, "Scheduled event {event_id} is now {state}")
        }
        Notice::RebalanceRecommendationCleared { event_id } => info!(
            event_id,
            "The rebalance recommendation is no longer served by IMDS"
        ),
        Notice::AsgLifecycleTermination { event_id } => info!(
            event_id,
            "ASG target lifecycle state is Terminated: the instance is being terminated by its Auto Scaling group"
        ),
    }
}
