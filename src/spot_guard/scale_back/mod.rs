//! On-demand scale-back: the agent on an on-demand instance that Spot Guard bought as a
//! fallback gives it back once spot capacity has returned. It waits at least
//! SPOT_GUARD_SCALE_BACK_MIN_WAIT after the purchase, then until the spot ASG has been
//! healthy for the stability period and the cluster would stay under the utilization
//! ceiling without this node; it buys one more spot instance first if this node's pods
//! would not fit elsewhere. Then, holding the cluster-wide scale-back Lease (one fallback
//! node at a time), it taints, cordons and drains its node and terminates this exact
//! instance with ShouldDecrementDesiredCapacity. Each step is recorded on the Node
//! first, so a restarted agent finishes a started drain and never terminates twice.
//! The decisions are [`decide`]'s.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::actions::{ActionOutcome, NodeActions};
use crate::asg::{AsgError, AutoScaling};
use crate::drain::DrainSettings;
pub mod decide;
mod look;

use decide::{Decision, Observation, Phase, PreScale, Resume, ScaleBackRecord};

use super::decide::Role;
use super::ledger::{self, LedgerEntry};
use super::terminate_with_decrement;
use crate::config::{PreScaleSettings, ScaleBackSettings, TaintEffect};
use crate::lease::{LeaseError, Leases};
use crate::names::{self, SCALE_BACK_ANNOTATION, SCALE_BACK_LEASE, SCALE_BACK_TAINT};
use crate::node::{NodeClient, NodeError};
use crate::plan::{NodeActionPlan, Taint};
use crate::record;
use crate::report::{InterruptionEvent, Reporter, SpotGuardStep};

#[derive(Debug, thiserror::Error)]
pub enum ScaleBackError {
    #[error(transparent)]
    Asg(#[from] AsgError),
    #[error("listing {what} failed (the ClusterRole needs list on {what}): {source}")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Everything scale-back needs; built once at start-up.
pub struct ScaleBack<A> {
    pub asg: A,
    pub spot_asg: String,
    pub on_demand_asg: String,
    pub settings: ScaleBackSettings,
    pub pre_scale: Option<PreScaleSettings>,
    pub kube: kube::Client,
    pub node: NodeClient,
    pub leases: Leases,
    pub actions: NodeActions,
    pub drain: DrainSettings,
    pub instance_id: String,
    pub dry_run: bool,
    pub reporter: Reporter,
}

impl<A: AutoScaling> ScaleBack<A> {
    pub async fn run(self, shutdown: CancellationToken) {
        let lease_names = vec![names::asg_lease(&self.on_demand_asg)];
        let Some((lease, entry)) = ledger::wait_for_entry(
            &self.leases,
            &lease_names,
            &self.instance_id,
            &self.node,
            self.settings.check_interval,
            &shutdown,
        )
        .await
        else {
            return;
        };
        if entry.role != Role::OnDemand {
            return;
        }
        let name = self.node.name().to_owned();
        info!(
            "Node {name} (instance {}) is an on-demand fallback bought for node {}; it gives itself back once spot ASG {} has capacity again",
            self.instance_id, entry.for_node, self.spot_asg
        );
        let mut record = self.load_record().await;
        match decide::resume(&record) {
            Resume::Done => {
                info!(
                    "Node {name} was already given back (instance {} terminated)",
                    self.instance_id
                );
                return;
            }
            Resume::FinishDrain => {
                info!("Resuming the scale-back of node {name} that a restart interrupted");
                if self
                    .give_back_under_lease(&mut record, &entry, &lease, &shutdown)
                    .await
                {
                    return;
                }
            }
            Resume::Watch => {}
        }
        let mut healthy_since: Option<Instant> = None;
        let mut last_reason = String::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.check_interval) => {}
            }
            // A look at a large cluster takes a while; shutdown does not wait for it.
            let seen = tokio::select! {
                _ = shutdown.cancelled() => return,
                seen = self.observe(&entry, &record, &mut healthy_since) => seen,
            };
            let seen = match seen {
                Ok(seen) => seen,
                Err(error) => {
                    warn!("Scale-back check of node {name} failed, will check again: {error}");
                    continue;
                }
            };
            match decide::decide(&seen, &self.settings) {
                Decision::Wait(reason) => {
                    if reason != last_reason {
                        info!("Keeping on-demand node {name}: {reason}");
                        last_reason = reason;
                    }
                }
                Decision::ScaleSpotFirst if self.dry_run => {
                    info!(
                        "DRY RUN: the pods of node {name} would not fit on the other nodes; would scale spot ASG {} by one, then give the node back",
                        self.spot_asg
                    );
                    return;
                }
                Decision::ScaleSpotFirst => self.scale_spot_first(&mut record).await,
                Decision::PreScale(nodes) if self.dry_run => {
                    info!(
                        "DRY RUN: without node {name} the cluster would be over the ceiling; would pre-scale spot ASG {} by {nodes}, then give the node back",
                        self.spot_asg
                    );
                    return;
                }
                Decision::PreScale(nodes) => self.pre_scale(&mut record, nodes).await,
                Decision::DrainAndTerminate => {
                    if self.dry_run {
                        info!(
                            "DRY RUN: would drain node {name} and terminate instance {} in ASG {} (spot capacity is back)",
                            self.instance_id, self.on_demand_asg
                        );
                        return;
                    }
                    if self
                        .give_back_under_lease(&mut record, &entry, &lease, &shutdown)
                        .await
                    {
                        return;
                    }
                    healthy_since = None;
                }
            }
        }
    }

    async fn load_record(&self) -> ScaleBackRecord {
        let annotation = match self.node.get().await {
            Ok(node) => record::annotation(&node, SCALE_BACK_ANNOTATION).map(str::to_owned),
            Err(error) => {
                warn!(
                    "Cannot read the scale-back record of node {}: {error}",
                    self.node.name()
                );
                None
            }
        };
        ScaleBackRecord::parse(annotation.as_deref(), &self.instance_id)
    }

    async fn save(&self, record: &ScaleBackRecord) -> Result<(), NodeError> {
        self.node
            .set_annotations(&[(SCALE_BACK_ANNOTATION, record.to_annotation().as_str())])
            .await
            .map(|_| ())
    }

    /// One look at the ASGs, the nodes and the pods.
    async fn observe(
        &self,
        entry: &LedgerEntry,
        record: &ScaleBackRecord,
        healthy_since: &mut Option<Instant>,
    ) -> Result<Observation, ScaleBackError> {
        let now = SystemTime::now();
        let aborted_ago = match &record.phase {
            Phase::Aborted { at, .. } => Some(super::decide::millis_ago(*at, now)),
            _ => None,
        };
        let spot = self.asg.describe(&self.spot_asg).await?;
        let on_demand = self.asg.describe(&self.on_demand_asg).await?;
        let name = self.node.name();
        let (cluster, budgets) = look::look(&self.kube, name, &self.drain).await?;
        let asked = |at: u64| super::decide::millis_ago(at, now);
        let tolerated = match (&self.pre_scale, record.pre_scaled) {
            (Some(settings), Some((at, nodes))) if asked(at) >= settings.timeout => nodes,
            _ => 0,
        };
        let pre_scale = match (&self.pre_scale, record.pre_scaled) {
            (None, _) => PreScale::Off,
            (Some(settings), None) => PreScale::NotYet {
                nodes: decide::spot_node_size(&spot, &cluster.nodes).and_then(|size| {
                    decide::pre_scale_nodes(
                        &cluster,
                        size,
                        settings.target_utilization,
                        settings.safety_buffer,
                    )
                }),
            },
            (Some(settings), Some((at, _))) => PreScale::Asked {
                ago: asked(at),
                timeout: settings.timeout,
                fallback_threshold: settings.fallback_threshold,
            },
        };
        let spot_health = decide::spot_health(&spot, &cluster.nodes, tolerated);
        let healthy_for = match (&spot_health, *healthy_since) {
            (Ok(()), Some(since)) => since.elapsed(),
            (Ok(()), None) => {
                *healthy_since = Some(Instant::now());
                Duration::ZERO
            }
            (Err(_), _) => {
                *healthy_since = None;
                Duration::ZERO
            }
        };
        Ok(Observation {
            bought_ago: entry.age(now),
            aborted_ago,
            on_demand: decide::can_shrink(&on_demand, &self.instance_id),
            spot_health,
            healthy_for,
            utilization: decide::utilization_without(&cluster),
            pods_fit: decide::pods_fit_elsewhere(&cluster),
            budgets: decide::budgets_allow(&cluster, &budgets),
            spot_requested: record.spot_requested_at.is_some(),
            pre_scale,
        })
    }

    /// One more spot instance, once per node, recorded before it is asked for.
    async fn scale_spot_first(&self, record: &mut ScaleBackRecord) {
        let spot = self.spot_asg.clone();
        let name = self.node.name().to_owned();
        record.spot_requested_at = Some(super::decide::unix_millis(SystemTime::now()));
        if let Err(error) = self.save(record).await {
            warn!("Recording the spot scale-up on node {name} failed, so it was not sent: {error}");
            record.spot_requested_at = None;
            return;
        }
        match self.raise_spot(1).await {
            Ok((from, to)) => info!(
                "The pods of on-demand node {name} would not fit on the other nodes: scaled spot ASG {spot} from {from} to {to} before giving the node back"
            ),
            Err(error) => warn!(
                "The pods of on-demand node {name} would not fit on the other nodes and spot ASG {spot} could not be scaled: {error}; the node stays"
            ),
        }
    }

    /// Pre-scale: `nodes` more spot instances, once per node, recorded before they are
    /// asked for; a request that fails is not sent again (the fallback threshold applies
    /// after the timeout).
    async fn pre_scale(&self, record: &mut ScaleBackRecord, nodes: i32) {
        let spot = self.spot_asg.clone();
        let name = self.node.name().to_owned();
        record.pre_scaled = Some((super::decide::unix_millis(SystemTime::now()), nodes));
        if let Err(error) = self.save(record).await {
            warn!("Recording the pre-scale on node {name} failed, so it was not sent: {error}");
            record.pre_scaled = None;
            return;
        }
        match self.raise_spot(nodes).await {
            Ok((from, to)) => info!(
                "Without on-demand node {name} the cluster would be over the utilization ceiling: pre-scaled spot ASG {spot} from {from} to {to} before giving the node back"
            ),
            Err(error) => warn!(
                "Pre-scaling spot ASG {spot} by {nodes} for on-demand node {name} failed: {error}; the node stays, and the fallback threshold applies once the pre-scale timeout has passed"
            ),
        }
    }

    /// Raises the spot ASG's desired capacity by `count` under its Lease; (from, to).
    async fn raise_spot(&self, count: i32) -> Result<(i32, i32), String> {
        let spot = &self.spot_asg;
        let held = self
            .leases
            .acquire(&names::asg_lease(spot))
            .await
            .map_err(|error| format!("taking the lease of spot ASG {spot} failed: {error}"))?;
        let scaled = async {
            let state = self.asg.describe(spot).await.map_err(|e| e.to_string())?;
            let plan = super::decide::plan_target(&state, count, &[], SystemTime::now())
                .map_err(|failure| failure.to_string())?;
            self.asg
                .set_desired_capacity(spot, plan.to)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((plan.from, plan.to))
        }
        .await;
        held.release().await;
        scaled
    }

    /// Under the scale-back Lease: decide again on a fresh look (another fallback node
    /// may just have left), then drain and terminate. Returns whether the instance is gone.
    async fn give_back_under_lease(
        &self,
        record: &mut ScaleBackRecord,
        entry: &LedgerEntry,
        ledger_lease: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        let name = self.node.name().to_owned();
        let held = tokio::select! {
            _ = shutdown.cancelled() => return false,
            held = self.leases.acquire(SCALE_BACK_LEASE) => match held {
                Ok(held) => held,
                Err(error) => {
                    warn!("Taking the scale-back lease failed; node {name} stays for now: {error}");
                    return false;
                }
            },
        };
        let resuming = matches!(record.phase, Phase::Draining { .. });
        let go = resuming || self.still_decided(entry, record).await;
        let gone = if go {
            self.give_back(record, ledger_lease).await
        } else {
            false
        };
        held.release().await;
        gone
    }

    async fn still_decided(&self, entry: &LedgerEntry, record: &ScaleBackRecord) -> bool {
        // Health was already stable; the fresh look checks it is still healthy, the
        // load, the fit and the on-demand ASG.
        let mut healthy_since = Instant::now().checked_sub(self.settings.stability_period);
        match self.observe(entry, record, &mut healthy_since).await {
            Ok(seen) => match decide::decide(&seen, &self.settings) {
                Decision::DrainAndTerminate => true,
                Decision::Wait(reason) => {
                    info!(
                        "Not giving node {} back after all: {reason}",
                        self.node.name()
                    );
                    false
                }
                Decision::ScaleSpotFirst | Decision::PreScale(_) => false,
            },
            Err(error) => {
                warn!("Checking again before the scale-back failed: {error}");
                false
            }
        }
    }

    /// Taint, cordon, drain, terminate; every step recorded. Returns whether the
    /// instance is gone.
    async fn give_back(&self, record: &mut ScaleBackRecord, ledger_lease: &str) -> bool {
        let name = self.node.name().to_owned();
        let now = || super::decide::unix_millis(SystemTime::now());
        if !matches!(record.phase, Phase::Draining { .. }) {
            record.phase = Phase::Draining { since: now() };
            if let Err(error) = self.save(record).await {
                warn!(
                    "Recording the scale-back on node {name} failed, so it did not start: {error}"
                );
                return false;
            }
        }
        info!(
            "Spot capacity is back: giving on-demand node {name} back (taint {SCALE_BACK_TAINT}, cordon, drain, terminate instance {})",
            self.instance_id
        );
        let event = self.event();
        let plan = NodeActionPlan {
            taint: Some(Taint {
                key: SCALE_BACK_TAINT,
                value: now().to_string(),
                effect: TaintEffect::NoSchedule,
            }),
            cordon: true,
            drain: true,
            exclude_from_load_balancers: false,
            out_of_service_after_drain: false,
        };
        let outcome = self
            .actions
            .apply(&plan, &event, "on-demand scale-back")
            .await;
        let result = if outcome != ActionOutcome::Drained {
            Err("the drain did not complete".to_owned())
        } else {
            // Recorded as sent before it is sent: a restart never sends it twice.
            record.phase = Phase::Terminated { at: now() };
            match self.save(record).await {
                Err(error) => Err(format!(
                    "recording the termination before sending it failed, so it was not sent: {error}"
                )),
                Ok(()) => match terminate_with_decrement(
                    &self.asg,
                    &self.leases,
                    &self.on_demand_asg,
                    &self.instance_id,
                )
                .await
                {
                    Ok(_) => Ok(()),
                    Err(error) if error.may_have_applied => {
                        warn!(
                            "Terminating instance {} got no clean answer ({error}); it may be on its way out, so it is not sent again",
                            self.instance_id
                        );
                        Ok(())
                    }
                    Err(error) => Err(error.to_string()),
                },
            }
        };
        match result {
            Ok(()) => {
                self.reporter.spot_guard(
                    &event,
                    SpotGuardStep::ScaleBack {
                        asg: &self.on_demand_asg,
                        instance: &self.instance_id,
                    },
                );
                if let Err(error) =
                    ledger::forget(&self.leases, ledger_lease, &self.instance_id).await
                {
                    warn!(
                        "Removing instance {} from the ledger failed: {error}",
                        self.instance_id
                    );
                }
                true
            }
            Err(reason) => {
                error!(
                    "Scale-back of node {name} given up ({reason}); putting the node back in service and trying again after {}s",
                    self.settings.min_wait.as_secs()
                );
                self.actions.undo(&event, "scale-back given up").await;
                self.reporter.spot_guard(
                    &event,
                    SpotGuardStep::ScaleBackAborted {
                        asg: &self.on_demand_asg,
                        detail: &reason,
                    },
                );
                record.phase = Phase::Aborted { at: now(), reason };
                if let Err(error) = self.save(record).await {
                    warn!("Recording the given-up scale-back on node {name} failed: {error}");
                }
                false
            }
        }
    }

    fn event(&self) -> InterruptionEvent {
        InterruptionEvent {
            event_id: format!("spot-guard-scale-back-{}", self.instance_id),
            kind: "SPOT_GUARD_SCALE_BACK".to_owned(),
            monitor: "SPOT_GUARD".to_owned(),
            description: format!(
                "Spot capacity is back in ASG {}: on-demand fallback instance {} is given back",
                self.spot_asg, self.instance_id
            ),
            auto_scaling_group_name: self.on_demand_asg.clone(),
            ..InterruptionEvent::default()
        }
    }
}
