//! Ties the pipeline together: notices from the monitor go through Spot Guard (for
//! rebalance recommendations) and then become node actions; cancelled events are undone.
//!
//! `event_loop` decides which notice is acted on when (restarts, retries, preemption,
//! shutdown), `flows` carries one notice through Spot Guard and the node actions;
//! `decide` holds their choices, pure, and `describe` how a notice reads in reports.

mod decide;
mod describe;
mod event_loop;
mod flows;
mod settings;

pub use settings::AgentSettings;

use std::time::Duration;

use tokio::sync::watch;

use crate::actions::NodeActions;
use crate::asg::AutoScaling;
use crate::node::NodeClient;
use crate::report::Reporter;
use crate::spot_guard::SpotGuard;

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
}
