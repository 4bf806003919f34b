//! The agent's pure choices: which notices are acted on again after a restart, and what
//! an ended event or a cleared recommendation undoes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::monitor::Notice;

/// What the loop knows about events it acted on in this process and before.
#[derive(Debug, Default)]
pub(super) struct Memory {
    /// Recorded on the Node by this or an earlier run: never acted on twice.
    pub handled: HashSet<String>,
    /// A drain-now event (interruption, maintenance, termination) was acted on: the
    /// node is going away, so nothing is undone and rebalance flows are moot.
    pub draining_for: Option<String>,
    /// The rebalance recommendation acted on in this run, and when it came.
    pub rebalance_received: Option<(String, Instant)>,
}

/// What a scheduled event that ended undoes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ScheduledEnd {
    NothingWasDone,
    /// The node is draining for another event: it stays cordoned.
    DrainingForAnother,
    Undo,
}

/// What a rebalance recommendation that left IMDS undoes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RebalanceCleared<'a> {
    /// Spot Guard already bought the replacement: the node stays as it left it.
    SpotGuardKeeps,
    /// No REBALANCE_UNCORDON_WINDOW: the node stays cordoned, as with NTH.
    StaysCordoned,
    DrainingFor(&'a str),
    /// Not the recommendation this run acted on.
    NotActedOn,
    UncordonAfter(Duration),
}

impl Memory {
    pub fn new(handled: impl IntoIterator<Item = String>) -> Self {
        Memory {
            handled: handled.into_iter().collect(),
            ..Memory::default()
        }
    }

    /// Acted on before (by this run or one before a restart); ends of events and cleared
    /// recommendations still count, as they undo what was done.
    pub fn already_handled(&self, notice: &Notice) -> bool {
        self.handled.contains(notice.event_id())
            && !matches!(
                notice,
                Notice::ScheduledEventEnded { .. } | Notice::RebalanceRecommendationCleared { .. }
            )
    }

    pub fn scheduled_end(&self, event_id: &str) -> ScheduledEnd {
        let acted_on =
            self.handled.contains(event_id) || self.draining_for.as_deref() == Some(event_id);
        if !acted_on {
            ScheduledEnd::NothingWasDone
        } else if self
            .draining_for
            .as_ref()
            .is_some_and(|other| other != event_id)
        {
            ScheduledEnd::DrainingForAnother
        } else {
            ScheduledEnd::Undo
        }
    }

    /// The cordon is undone once `window` since the recommendation has passed without an
    /// interruption, if so configured and Spot Guard is off.
    pub fn rebalance_cleared(
        &self,
        event_id: &str,
        spot_guard: bool,
        window: Option<Duration>,
        now: Instant,
    ) -> RebalanceCleared<'_> {
        if spot_guard {
            return RebalanceCleared::SpotGuardKeeps;
        }
        let Some(window) = window else {
            return RebalanceCleared::StaysCordoned;
        };
        if let Some(other) = &self.draining_for {
            return RebalanceCleared::DrainingFor(other);
        }
        match &self.rebalance_received {
            Some((id, at)) if id == event_id => RebalanceCleared::UncordonAfter(
                window.saturating_sub(now.saturating_duration_since(*at)),
            ),
            _ => RebalanceCleared::NotActedOn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(handled: &[&str], draining_for: Option<&str>) -> Memory {
        Memory {
            draining_for: draining_for.map(str::to_owned),
            ..Memory::new(handled.iter().map(|id| (*id).to_owned()))
        }
    }

    #[test]
    fn after_a_restart_only_new_events_and_undos_are_acted_on() {
        let memory = memory(&["e1"], None);
        let interruption = |id: &str| Notice::AsgLifecycleTermination {
            event_id: id.to_owned(),
        };
        assert!(memory.already_handled(&interruption("e1")));
        assert!(!memory.already_handled(&interruption("e2")));
        let ended = Notice::ScheduledEventEnded {
            event_id: "e1".to_owned(),
            state: "canceled".to_owned(),
        };
        assert!(!memory.already_handled(&ended));
        let cleared = Notice::RebalanceRecommendationCleared {
            event_id: "e1".to_owned(),
        };
        assert!(!memory.already_handled(&cleared));
    }

    #[test]
    fn an_ended_event_undoes_only_what_was_done_for_it() {
        use ScheduledEnd::{DrainingForAnother, NothingWasDone, Undo};
        let cases: [(&[&str], Option<&str>, ScheduledEnd); 5] = [
            (&[], None, NothingWasDone),
            (&[], Some("other"), NothingWasDone),
            (&["e1"], None, Undo),
            (&[], Some("e1"), Undo),
            (&["e1"], Some("other"), DrainingForAnother),
        ];
        for (handled, draining_for, expected) in cases {
            assert_eq!(
                memory(handled, draining_for).scheduled_end("e1"),
                expected,
                "handled {handled:?}, draining for {draining_for:?}"
            );
        }
    }

    #[test]
    fn a_cleared_recommendation_is_uncordoned_after_the_rest_of_its_window() {
        let received = Instant::now();
        let now = received + Duration::from_secs(30);
        let window = Some(Duration::from_secs(120));
        let mut acted_on = memory(&[], None);
        acted_on.rebalance_received = Some(("r1".to_owned(), received));
        let draining = Memory {
            draining_for: Some("itn-1".to_owned()),
            rebalance_received: acted_on.rebalance_received.clone(),
            ..Memory::default()
        };
        assert_eq!(
            acted_on.rebalance_cleared("r1", false, window, now),
            RebalanceCleared::UncordonAfter(Duration::from_secs(90))
        );
        assert_eq!(
            acted_on.rebalance_cleared("r1", false, window, now + Duration::from_secs(600)),
            RebalanceCleared::UncordonAfter(Duration::ZERO)
        );
        assert_eq!(
            acted_on.rebalance_cleared("r1", true, window, now),
            RebalanceCleared::SpotGuardKeeps
        );
        assert_eq!(
            acted_on.rebalance_cleared("r1", false, None, now),
            RebalanceCleared::StaysCordoned
        );
        assert_eq!(
            acted_on.rebalance_cleared("r2", false, window, now),
            RebalanceCleared::NotActedOn
        );
        assert_eq!(
            draining.rebalance_cleared("r1", false, window, now),
            RebalanceCleared::DrainingFor("itn-1")
        );
    }
}
