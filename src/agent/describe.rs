//! How a notice reads in logs, webhook posts and Kubernetes events.

use k8s_openapi::jiff::Timestamp;

use crate::imds::parse_scheduled_event_time;
use crate::monitor::Notice;
use crate::report::InterruptionEvent;

/// How a drain-now notice is named when it preempts a rebalance flow.
pub(super) fn describe(notice: &Notice) -> &'static str {
    match notice {
        Notice::SpotInterruption { .. } => "A spot interruption notice",
        Notice::ScheduledEvent { .. } => "A scheduled maintenance event",
        Notice::AsgLifecycleTermination { .. } => "An ASG lifecycle termination",
        Notice::RebalanceRecommendation { .. }
        | Notice::ScheduledEventEnded { .. }
        | Notice::RebalanceRecommendationCleared { .. } => "A notice",
    }
}

pub(super) fn notice_ended(event_id: &str, state: &str) -> Notice {
    Notice::ScheduledEventEnded {
        event_id: event_id.to_string(),
        state: state.to_string(),
    }
}

fn scheduled_time(text: &str) -> Option<Timestamp> {
    parse_scheduled_event_time(text).and_then(|seconds| Timestamp::from_second(seconds).ok())
}

/// The notice as NTH's webhook templates and events describe it.
pub(super) fn report_event(notice: &Notice) -> InterruptionEvent {
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
