//! The capacity workflow: scale the spot ASG by one, wait for the new instance to be
//! InService, and fall back to the on-demand ASG when spot cannot deliver. Every
//! decision is made by [`crate::flow`]; this module only talks to the ASG and the clock.
//! With [`SpotGuard::with_fleet`] the workflow is safe for many agents at once and
//! across restarts ([`fleet`]).

mod fleet;

pub use fleet::{Fleet, FleetSettings, terminate_with_decrement};

use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::asg::{AsgState, AutoScaling, ScalingActivity};
use crate::config::SpotGuardConfig;
use crate::flow::{
    self, AttemptOutcome, CapacityFailure, CapacityWatch, ReplacementOutcome, ScalePlan,
    WatchVerdict,
};
use crate::report::{InterruptionEvent, Reporter, SpotGuardStep};

pub struct SpotGuard<A> {
    asg: A,
    config: SpotGuardConfig,
    dry_run: bool,
    reporter: Reporter,
    fleet: Option<Fleet>,
}

/// A spot interruption notice cut the wait short.
struct Preempted;

impl<A: AutoScaling> SpotGuard<A> {
    pub fn new(asg: A, config: SpotGuardConfig, dry_run: bool) -> Self {
        SpotGuard {
            asg,
            config,
            dry_run,
            reporter: Reporter::default(),
            fleet: None,
        }
    }

    /// Coordinates with the agents of the other nodes through Leases and records each
    /// step on the Node: exactly one replacement per recommendation, across restarts.
    pub fn with_fleet(mut self, fleet: Fleet) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Called after the node actions of a rebalance recommendation: gives the drained
    /// instance back when configured to (SPOT_GUARD_TERMINATE_AFTER_DRAIN).
    pub async fn after_node_actions(
        &self,
        outcome: &ReplacementOutcome,
        drained: bool,
        event: &InterruptionEvent,
    ) {
        if let Some(fleet) = &self.fleet
            && !self.dry_run
        {
            self.fleet_give_back(fleet, outcome, drained, event).await;
        }
    }

    /// Reports each step (scale-up, InService, fallback, failure) as events, webhook
    /// posts and metrics.
    pub fn with_reporter(mut self, reporter: Reporter) -> Self {
        self.reporter = reporter;
        self
    }

    pub fn config(&self) -> &SpotGuardConfig {
        &self.config
    }

    /// Start-up check of both ASGs. Problems are logged, not fatal: the agent must
    /// still protect the node from interruptions, and the flow falls back at run time.
    pub async fn check_setup(&self) {
        info!(
            "Spot Guard enabled - Spot ASG: {}, On-Demand ASG: {}",
            self.config.spot_asg_name, self.config.on_demand_asg_name
        );
        for name in [&self.config.spot_asg_name, &self.config.on_demand_asg_name] {
            match self.asg.describe(name).await {
                Ok(state) => {
                    info!(
                        asg = %name,
                        "ASG {name}: desired {}, min {}, max {}, InService {}",
                        state.desired_capacity,
                        state.min_size,
                        state.max_size,
                        state.in_service()
                    );
                    if state.capacity_rebalance && *name == self.config.spot_asg_name {
                        warn!(
                            asg = %name,
                            "ASG {name} has Capacity Rebalancing enabled: AWS launches its own replacement on every rebalance recommendation, so with Spot Guard each recommendation buys two instances; turn one of them off"
                        );
                    }
                }
                Err(error) => error!(
                    asg = %name,
                    "Spot Guard cannot read ASG {name} at start-up: {error}; rebalance recommendations will fall back or go straight to taint and drain until this is fixed"
                ),
            }
        }
    }

    /// Buys one replacement instance: spot first, on-demand when spot cannot deliver.
    /// Never fails: whatever happens, the caller goes on to taint and drain.
    pub async fn secure_replacement(
        &self,
        preempt: &CancellationToken,
        event: &InterruptionEvent,
    ) -> ReplacementOutcome {
        let noticed = Instant::now();
        if self.dry_run {
            for name in [&self.config.spot_asg_name, &self.config.on_demand_asg_name] {
                match self.asg.describe(name).await {
                    Ok(state) => match flow::plan_scale_up(&state) {
                        ScalePlan::Scale { from, to } => info!(
                            asg = %name,
                            "DRY RUN: would scale ASG {name} from {from} to {to} instances and wait for InService"
                        ),
                        ScalePlan::CannotScale(failure) => {
                            info!(asg = %name, "DRY RUN: ASG {name} could not be scaled: {failure}")
                        }
                    },
                    Err(error) => warn!(asg = %name, "DRY RUN: cannot read ASG {name}: {error}"),
                }
            }
            return ReplacementOutcome::DryRun;
        }
        if let Some(fleet) = &self.fleet {
            return self.fleet_replacement(fleet, preempt, event).await;
        }

        let spot_name = self.config.spot_asg_name.clone();
        let spot = match self
            .attempt(&spot_name, preempt, event)
            .instrument(info_span!("scale", asg = %spot_name))
            .await
        {
            Ok(outcome) => outcome,
            Err(Preempted) => return self.preempted(event, &spot_name),
        };
        let spot_failure = match spot {
            AttemptOutcome::Ready { .. } => {
                info!(asg = %spot_name, "Spot Guard: replacement ready in spot ASG {spot_name}");
                self.reporter.spot_guard(
                    event,
                    SpotGuardStep::InService {
                        asg: &spot_name,
                        on_demand: false,
                        since_notice: Some(noticed.elapsed()),
                    },
                );
                return ReplacementOutcome::Spot;
            }
            AttemptOutcome::Failed(failure) => failure,
        };

        let on_demand_name = self.config.on_demand_asg_name.clone();
        self.report_fallback(event, &spot_name, &on_demand_name, &spot_failure);
        let on_demand = match self
            .attempt(&on_demand_name, preempt, event)
            .instrument(info_span!("scale", asg = %on_demand_name))
            .await
        {
            Ok(outcome) => outcome,
            Err(Preempted) => return self.preempted(event, &on_demand_name),
        };
        match on_demand {
            AttemptOutcome::Ready { .. } => {
                info!(
                    asg = %on_demand_name,
                    "Spot Guard: replacement ready in on-demand ASG {on_demand_name} (fallback)"
                );
                self.reporter.spot_guard(
                    event,
                    SpotGuardStep::InService {
                        asg: &on_demand_name,
                        on_demand: true,
                        since_notice: Some(noticed.elapsed()),
                    },
                );
                ReplacementOutcome::OnDemand { spot_failure }
            }
            AttemptOutcome::Failed(on_demand_failure) => {
                error!(
                    spot_asg = %spot_name,
                    on_demand_asg = %on_demand_name,
                    "Spot Guard could not get replacement capacity: spot ASG {spot_name}: {spot_failure}; on-demand ASG {on_demand_name}: {on_demand_failure}; the node is tainted and drained anyway"
                );
                self.reporter.spot_guard(
                    event,
                    SpotGuardStep::Failed {
                        on_demand_asg: &on_demand_name,
                        reason: on_demand_failure.reason(),
                        detail: &on_demand_failure.to_string(),
                    },
                );
                ReplacementOutcome::NoneAvailable {
                    spot_failure,
                    on_demand_failure,
                }
            }
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

    fn preempted(&self, event: &InterruptionEvent, asg: &str) -> ReplacementOutcome {
        self.reporter
            .spot_guard(event, SpotGuardStep::Preempted { asg });
        ReplacementOutcome::Preempted
    }

    /// One ASG: raise desired by one and wait for the new instance.
    async fn attempt(
        &self,
        name: &str,
        preempt: &CancellationToken,
        event: &InterruptionEvent,
    ) -> Result<AttemptOutcome, Preempted> {
        let request = tokio::time::timeout(
            self.config.scale_timeout,
            self.request_scale_up(name, event),
        );
        let (from, to, watch) = tokio::select! {
            _ = preempt.cancelled() => return Err(Preempted),
            requested = request => match requested {
                Ok(Ok(requested)) => requested,
                Ok(Err(failure)) => return Ok(AttemptOutcome::Failed(failure)),
                Err(_) => {
                    return Ok(AttemptOutcome::Failed(CapacityFailure::Api {
                        error: format!(
                            "scaling ASG {name} did not finish within SPOT_GUARD_SCALE_TIMEOUT ({}s)",
                            self.config.scale_timeout.as_secs()
                        ),
                    }));
                }
            },
        };

        let started = Instant::now();
        info!(
            "Waiting up to {:?} for a new instance to reach InService in ASG {name} (checking every {:?})",
            self.config.capacity_check_timeout, self.config.check_interval
        );
        loop {
            let remaining = self
                .config
                .capacity_check_timeout
                .saturating_sub(started.elapsed());
            let pause = self
                .config
                .check_interval
                .min(remaining)
                .max(Duration::from_millis(1));
            tokio::select! {
                _ = preempt.cancelled() => return Err(Preempted),
                _ = tokio::time::sleep(pause) => {}
            }
            let in_service = match self.asg.describe(name).await {
                Ok(state) => state.in_service(),
                Err(error) => {
                    warn!("Checking ASG {name} failed, will check again: {error}");
                    watch.baseline_in_service
                }
            };
            let activities = self.activities_while_waiting(name).await;
            match flow::judge_capacity(&watch, in_service, &activities, started.elapsed()) {
                WatchVerdict::Waiting => info!(
                    "ASG {name}: {in_service} InService, waiting for {} ({:.1}s elapsed)",
                    watch.baseline_in_service + 1,
                    started.elapsed().as_secs_f64()
                ),
                WatchVerdict::Ready { in_service } => {
                    info!(
                        "New instance reached InService in ASG {name} ({in_service} InService, desired {to}, was {from})"
                    );
                    return Ok(AttemptOutcome::Ready { from, to });
                }
                WatchVerdict::Failed(failure) => {
                    warn!(
                        reason = failure.reason(),
                        "ASG {name} did not deliver: {failure}"
                    );
                    return Ok(AttemptOutcome::Failed(failure));
                }
            }
        }
    }

    /// The ASG's scaling activities during a wait; a failed read counts as none, and
    /// the next check reads again.
    async fn activities_while_waiting(&self, name: &str) -> Vec<ScalingActivity> {
        self.asg
            .scaling_activities(name)
            .await
            .unwrap_or_else(|error| {
                warn!("Reading scaling activities of ASG {name} failed, will check again: {error}");
                Vec::new()
            })
    }

    /// Reads the ASG, checks MaxSize and sends SetDesiredCapacity(desired + 1).
    async fn request_scale_up(
        &self,
        name: &str,
        event: &InterruptionEvent,
    ) -> Result<(i32, i32, CapacityWatch), CapacityFailure> {
        let before: AsgState = self
            .asg
            .describe(name)
            .await
            .map_err(|error| CapacityFailure::from_api_error(&error))?;
        let (from, to) = match flow::plan_scale_up(&before) {
            ScalePlan::Scale { from, to } => (from, to),
            ScalePlan::CannotScale(failure) => return Err(failure),
        };
        // Failures already listed before our request belong to someone else.
        let activities_before = self.asg.scaling_activities(name).await.unwrap_or_else(|error| {
            warn!("Reading scaling activities of ASG {name} failed; only activities started after the scale-up will count: {error}");
            Vec::new()
        });
        info!("Scaling ASG {name} from {from} to {to} instances");
        let requested_at = SystemTime::now();
        self.asg
            .set_desired_capacity(name, to)
            .await
            .map_err(|error| CapacityFailure::from_api_error(&error))?;
        self.reporter.spot_guard(
            event,
            SpotGuardStep::ScaleUp {
                asg: name,
                from,
                to,
            },
        );
        let watch = CapacityWatch::new(
            &before,
            &activities_before,
            requested_at,
            self.config.capacity_check_timeout,
        );
        Ok((from, to, watch))
    }
}
