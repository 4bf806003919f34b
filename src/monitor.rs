//! The IMDS polling loop: reads the notice paths every interval and sends each distinct
//! notice once on a channel. IMDS trouble is logged and polled through, never fatal.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::report::{Liveness, Reporter, monitor_kind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod poll;

use poll::{Found, StopOnDrop};

use crate::imds::{
    ImdsClient, InstanceAction, RebalanceRecommendation, ScheduledEvent, parse_scheduled_event_time,
};

/// NTH's IMDS poll interval.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// The thread the polls run on, as `ps -T` and /proc show it.
pub const POLL_THREAD_NAME: &str = "imds-poll";
/// While IMDS fails, the wait between polls doubles up to this many intervals.
const MAX_BACKOFF_INTERVALS: u32 = 8;

/// A notice read from IMDS, identified as NTH identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    RebalanceRecommendation {
        event_id: String,
        notice_time: String,
    },
    SpotInterruption {
        event_id: String,
        action: String,
        time: String,
    },
    /// A scheduled maintenance event that is still to come (or in progress).
    ScheduledEvent {
        event_id: String,
        code: String,
        description: String,
        not_before: String,
        not_after: String,
    },
    /// A scheduled event that turned `canceled` or `completed`: undo what was done for it.
    ScheduledEventEnded { event_id: String, state: String },
    /// The ASG's target lifecycle state became `Terminated`.
    AsgLifecycleTermination { event_id: String },
    /// A rebalance recommendation that was served is no longer served.
    RebalanceRecommendationCleared { event_id: String },
}

impl Notice {
    pub fn event_id(&self) -> &str {
        match self {
            Notice::RebalanceRecommendation { event_id, .. }
            | Notice::SpotInterruption { event_id, .. }
            | Notice::ScheduledEvent { event_id, .. }
            | Notice::ScheduledEventEnded { event_id, .. }
            | Notice::AsgLifecycleTermination { event_id }
            | Notice::RebalanceRecommendationCleared { event_id } => event_id,
        }
    }

    /// What makes a notice new: its id, and for an ended event also how it ended.
    pub fn dedupe_key(&self) -> String {
        match self {
            Notice::ScheduledEventEnded { event_id, state } => format!("{event_id}:{state}"),
            Notice::RebalanceRecommendationCleared { event_id } => format!("{event_id}:cleared"),
            other => other.event_id().to_string(),
        }
    }

    /// NTH's kind names, used in webhooks, events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::RebalanceRecommendation { .. }
            | Notice::RebalanceRecommendationCleared { .. } => "REBALANCE_RECOMMENDATION",
            Notice::SpotInterruption { .. } => "SPOT_ITN",
            Notice::ScheduledEvent { .. } | Notice::ScheduledEventEnded { .. } => "SCHEDULED_EVENT",
            Notice::AsgLifecycleTermination { .. } => "ASG_LIFECYCLE",
        }
    }

    /// A scheduled event from IMDS, or None (logged) when its dates are not IMDS's format.
    pub fn scheduled(event: &ScheduledEvent) -> Option<Self> {
        if event.event_id.trim().is_empty() {
            warn!("Ignoring a scheduled event without EventId: {event:?}");
            return None;
        }
        if matches!(event.state.as_str(), "canceled" | "completed") {
            return Some(Notice::ScheduledEventEnded {
                event_id: event.event_id.clone(),
                state: event.state.clone(),
            });
        }
        if parse_scheduled_event_time(&event.not_before).is_none() {
            warn!(
                event_id = %event.event_id,
                "Ignoring scheduled event {}: NotBefore '{}' is not in IMDS's date format",
                event.event_id, event.not_before
            );
            return None;
        }
        Some(Notice::ScheduledEvent {
            event_id: event.event_id.clone(),
            code: event.code.clone(),
            description: event.description.clone(),
            not_before: event.not_before.clone(),
            not_after: event.not_after.clone(),
        })
    }

    pub fn rebalance(recommendation: &RebalanceRecommendation) -> Self {
        Notice::RebalanceRecommendation {
            event_id: rebalance_event_id(recommendation),
            notice_time: recommendation.notice_time.clone(),
        }
    }

    pub fn spot_interruption(action: &InstanceAction) -> Self {
        Notice::SpotInterruption {
            event_id: spot_itn_event_id(action),
            action: action.action.clone(),
            time: action.time.clone(),
        }
    }
}

/// NTH's id: sha256 over Go's `%v` of a pointer to the decoded struct, i.e. `&{<noticeTime>}`.
pub fn rebalance_event_id(recommendation: &RebalanceRecommendation) -> String {
    format!(
        "rebalance-recommendation-{}",
        sha256_hex(&format!("&{{{}}}", recommendation.notice_time))
    )
}

/// NTH's id: sha256 over Go's `%v` of a pointer to the decoded struct, i.e. `&{<action> <time>}`.
pub fn spot_itn_event_id(action: &InstanceAction) -> String {
    format!(
        "spot-itn-{}",
        sha256_hex(&format!("&{{{} {}}}", action.action, action.time))
    )
}

/// IMDS gives the lifecycle state no id or time; one termination per instance, so a
/// fixed id keeps it acting once, across restarts too (NTH hashes the poll time instead).
pub fn asg_lifecycle_event_id() -> String {
    format!(
        "target-lifecycle-state-terminated-{}",
        sha256_hex("Terminated")
    )
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

#[derive(Debug, Clone)]
pub struct MonitorSettings {
    pub interval: Duration,
    pub rebalance: bool,
    pub spot_interruption: bool,
    pub scheduled_events: bool,
    pub asg_lifecycle: bool,
}

impl MonitorSettings {
    /// The monitors NTH starts for this configuration: spot ITN, scheduled events and ASG
    /// lifecycle each by their draining flag; rebalance recommendations when either
    /// ENABLE_REBALANCE_MONITORING or ENABLE_REBALANCE_DRAINING is set (NTH's rule, so
    /// draining alone is not a configuration that silently does nothing).
    pub fn from_config(config: &Config) -> Self {
        MonitorSettings {
            interval: config.tuning.poll_interval,
            rebalance: config.enable_rebalance_monitoring || config.enable_rebalance_draining,
            spot_interruption: config.enable_spot_interruption_draining,
            scheduled_events: config.enable_scheduled_event_draining,
            asg_lifecycle: config.enable_asg_lifecycle_draining,
        }
    }
}

impl Default for MonitorSettings {
    fn default() -> Self {
        Self {
            interval: DEFAULT_POLL_INTERVAL,
            rebalance: true,
            spot_interruption: true,
            scheduled_events: false,
            asg_lifecycle: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("IMDS poll interval must be above zero")]
    ZeroInterval,
    #[error("the IMDS poll thread: {0}")]
    Thread(String),
}

/// Polls IMDS until `shutdown` is cancelled or the receiver of `notices` is gone.
pub async fn run(
    imds: ImdsClient,
    settings: MonitorSettings,
    notices: mpsc::Sender<Notice>,
    shutdown: CancellationToken,
) -> Result<(), MonitorError> {
    run_with_liveness(imds, settings, notices, shutdown, Liveness::default()).await
}

/// [`run`], recording every completed poll in `liveness`.
pub async fn run_with_liveness(
    imds: ImdsClient,
    settings: MonitorSettings,
    notices: mpsc::Sender<Notice>,
    shutdown: CancellationToken,
    liveness: Liveness,
) -> Result<(), MonitorError> {
    run_reporting(
        imds,
        settings,
        notices,
        shutdown,
        liveness,
        Reporter::default(),
    )
    .await
}

/// [`run_with_liveness`], reporting failed polls: every failure counts in
/// `events_error_total`; a MonitorError event marks only the start of a failure streak,
/// so an IMDS outage does not write an event every few seconds.
///
/// The polls run on a thread of their own (see [`poll`]); this task hands their
/// findings on, so a quiet poll wakes nothing else in the process. On shutdown the
/// thread finishes the poll in flight and ends.
pub async fn run_reporting(
    imds: ImdsClient,
    settings: MonitorSettings,
    notices: mpsc::Sender<Notice>,
    shutdown: CancellationToken,
    liveness: Liveness,
    reporter: Reporter,
) -> Result<(), MonitorError> {
    if settings.interval.is_zero() {
        return Err(MonitorError::ZeroInterval);
    }
    info!(
        interval = ?settings.interval,
        rebalance = settings.rebalance,
        spot_interruption = settings.spot_interruption,
        scheduled_events = settings.scheduled_events,
        asg_lifecycle = settings.asg_lifecycle,
        imds = imds.base_url(),
        "Watching IMDS for notices"
    );
    // A few findings at most per poll; the thread waits while the agent is behind.
    let (found_sender, mut found) = mpsc::channel(8);
    let stopped = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new()
        .name(POLL_THREAD_NAME.to_string())
        .spawn({
            let stopped = Arc::clone(&stopped);
            move || poll::run(&imds, &settings, &liveness, &found_sender, &stopped)
        })
        .map_err(|error| MonitorError::Thread(error.to_string()))?;
    // Dropped on every return: ends the thread's wait between polls, and its polls.
    let _stop = StopOnDrop::new(stopped, thread.thread().clone());
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = notices.closed() => {
                info!("Notice receiver is gone; stopping the IMDS monitor");
                return Ok(());
            }
            next = found.recv() => next,
        };
        match next {
            Some(Found::Failure {
                monitor,
                streak_start,
            }) => {
                if streak_start {
                    reporter.monitor_error(monitor);
                } else if let Some(metrics) = reporter.metrics() {
                    metrics.event_error(monitor);
                }
            }
            Some(Found::Notice(notice)) => {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    outcome = notices.send(notice) => {
                        if outcome.is_err() {
                            info!("Notice receiver is gone; stopping the IMDS monitor");
                            return Ok(());
                        }
                    }
                }
            }
            // The thread only ends on its own by panicking: the panic goes on from here.
            None => {
                return match tokio::task::spawn_blocking(move || thread.join()).await {
                    Ok(Err(panic)) => std::panic::resume_unwind(panic),
                    _ => Err(MonitorError::Thread("the poll thread ended".to_string())),
                };
            }
        }
    }
}

/// The longest the monitor can go without completing a poll while IMDS is gone: one
/// unanswered token request, every enabled path's GET with all its attempts, and the
/// longest back-off wait after a failed poll. The liveness probe must allow this.
pub fn longest_silence(imds: &ImdsClient, settings: &MonitorSettings) -> Duration {
    let paths = [
        settings.spot_interruption,
        settings.asg_lifecycle,
        settings.scheduled_events,
        settings.rebalance,
    ]
    .into_iter()
    .filter(|enabled| *enabled)
    .count() as u32;
    imds.longest_token_request()
        .saturating_add(imds.longest_request().saturating_mul(paths))
        .saturating_add(next_wait(settings.interval, u32::MAX))
}

/// The interval, doubled for each consecutive failed poll, capped at MAX_BACKOFF_INTERVALS.
pub(super) fn next_wait(interval: Duration, failed_polls: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failed_polls.min(31))
        .unwrap_or(u32::MAX)
        .min(MAX_BACKOFF_INTERVALS);
    interval.saturating_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_hash_the_payload_as_nth_formats_it() {
        // Expected values: `printf '&{…}' | sha256sum`, the bytes NTH's Fprintf("%v", &struct) hashes.
        let rebalance = RebalanceRecommendation {
            notice_time: "2020-10-27T08:22:00Z".to_string(),
        };
        assert_eq!(
            rebalance_event_id(&rebalance),
            "rebalance-recommendation-ec1be3373b11adcde417bd7778350fbddba81ef5bffed1426b407e667d05bca9"
        );
        let action = InstanceAction {
            action: "terminate".to_string(),
            time: "2017-09-18T08:22:00Z".to_string(),
        };
        assert_eq!(
            spot_itn_event_id(&action),
            "spot-itn-2d5c4796e9a951cc259e996a2694d27d16a7b5ed45a33434f30ceeaaa84d5893"
        );
    }

    #[test]
    fn failed_polls_stretch_the_wait_up_to_a_cap() {
        let interval = Duration::from_secs(2);
        assert_eq!(next_wait(interval, 0), interval);
        assert_eq!(next_wait(interval, 1), interval * 2);
        assert_eq!(next_wait(interval, 2), interval * 4);
        assert_eq!(next_wait(interval, 3), interval * 8);
        assert_eq!(next_wait(interval, 40), interval * 8);
    }
}
