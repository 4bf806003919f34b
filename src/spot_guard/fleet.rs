//! The capacity workflow when many agents share the ASGs: each ASG's read-modify-write
//! happens under its Lease, each step is recorded on the Node before it is taken (so a
//! restarted agent resumes and never scales twice), capacity failures are remembered on
//! the spot ASG's Lease for every agent, and the drained instance can be given back.
//! The decisions are [`crate::fleet_flow`]'s.

use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use super::{Preempted, SpotGuard};
use crate::actions::NodeActions;
use crate::asg::AutoScaling;
use crate::ca_protection::CaProtection;
use crate::config::SpotGuardConfig;
use crate::drain::DrainSettings;
use crate::fleet_flow::{
    self, AttemptRecord, AttemptResult, CAPACITY_FAILURE_ANNOTATION, CapacityFailureNote, NextStep,
    REPLACEMENT_ANNOTATION, ReplacementRecord, Role, Scaled,
};
use crate::flow::{AttemptOutcome, CapacityFailure, ReplacementOutcome, WatchVerdict};
use crate::lease::{HeldLease, LeaseSettings, Leases};
use crate::ledger;
use crate::node::{NodeClient, NodeError};
use crate::record;
use crate::report::{InterruptionEvent, Reporter, SpotGuardStep};
use crate::scale_back::ScaleBack;
use crate::scale_back_flow::ScaleBackSettings;

/// The fleet options (SPOT_GUARD_* flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// The agent's namespace, where the Leases live.
    pub lease_namespace: String,
    pub lease_duration: Duration,
    pub lease_retry_interval: Duration,
    /// Instances bought per recommendation.
    pub scale_count: i32,
    /// After a capacity failure of the spot ASG, later recommendations go straight to
    /// on-demand for this long; zero turns the memory off.
    pub capacity_cool_off: Duration,
    /// After a complete drain, terminate this instance with ShouldDecrementDesiredCapacity.
    pub terminate_after_drain: bool,
    /// How long after InService a replacement's node keeps Cluster Autoscaler away;
    /// zero turns the protection off.
    pub new_node_protection: Duration,
    /// Give on-demand fallback nodes back once spot capacity returns.
    pub scale_back: Option<ScaleBackSettings>,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            lease_namespace: "kube-system".to_owned(),
            lease_duration: Duration::from_secs(15),
            lease_retry_interval: Duration::from_millis(500),
            scale_count: 1,
            capacity_cool_off: Duration::from_secs(600),
            terminate_after_drain: false,
            new_node_protection: Duration::from_secs(900),
            scale_back: None,
        }
    }
}

/// What fleet mode needs besides the ASGs: the Leases, this node, this instance.
pub struct Fleet {
    leases: Leases,
    node: NodeClient,
    instance_id: Option<String>,
    settings: FleetSettings,
}

impl Fleet {
    /// `instance_id` (from IMDS) is only needed to give the instance back after a drain.
    pub fn new(
        kube: kube::Client,
        node_name: &str,
        instance_id: Option<String>,
        settings: FleetSettings,
    ) -> Self {
        let leases = Leases::new(
            kube.clone(),
            LeaseSettings {
                namespace: settings.lease_namespace.clone(),
                holder: node_name.to_owned(),
                duration: settings.lease_duration,
                retry_interval: settings.lease_retry_interval,
            },
        );
        Fleet {
            leases,
            node: NodeClient::new(kube, node_name, false),
            instance_id,
            settings,
        }
    }

    /// The tasks that look after this agent's own node when it is a replacement Spot
    /// Guard bought: Cluster Autoscaler protection and, for an on-demand fallback,
    /// scale-back. None without this instance's id (read from IMDS).
    #[allow(clippy::too_many_arguments)]
    pub fn own_node_tasks<A: AutoScaling + 'static>(
        &self,
        asg: A,
        kube: kube::Client,
        config: &SpotGuardConfig,
        drain: DrainSettings,
        dry_run: bool,
        reporter: Reporter,
        shutdown: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let Some(instance_id) = self.instance_id.clone() else {
            if self.settings.scale_back.is_some() {
                warn!(
                    "SPOT_GUARD_SCALE_BACK is on but this instance's id could not be read from IMDS; this node is never given back"
                );
            }
            return Vec::new();
        };
        let node_name = self.node.name();
        let mut tasks = Vec::new();
        if !self.settings.new_node_protection.is_zero() {
            let protection = CaProtection {
                node: NodeClient::new(kube.clone(), node_name, dry_run),
                leases: self.leases.clone(),
                lease_names: vec![
                    Fleet::lease_name(&config.spot_asg_name),
                    Fleet::lease_name(&config.on_demand_asg_name),
                ],
                instance_id: instance_id.clone(),
                window: self.settings.new_node_protection,
                // The entry is usually there before the agent starts; this only
                // covers a buyer slower than the kubelet.
                lookup_interval: config.check_interval * 3,
            };
            let span = info_span!("ca_protection", node = %node_name, instance = %instance_id);
            tasks.push(tokio::spawn(
                protection.run(shutdown.clone()).instrument(span),
            ));
        }
        if let Some(settings) = &self.settings.scale_back {
            let mut actions = NodeActions::new(
                NodeClient::new(kube.clone(), node_name, dry_run),
                kube.clone(),
                drain.clone(),
                dry_run,
                String::new(),
            );
            actions.set_reporter(reporter.clone());
            let scale_back = ScaleBack {
                asg,
                spot_asg: config.spot_asg_name.clone(),
                on_demand_asg: config.on_demand_asg_name.clone(),
                settings: settings.clone(),
                kube: kube.clone(),
                node: NodeClient::new(kube, node_name, dry_run),
                leases: self.leases.clone(),
                actions,
                drain,
                instance_id,
                dry_run,
                reporter,
            };
            let span = info_span!(
                "scale_back",
                node = %node_name,
                on_demand_asg = %config.on_demand_asg_name
            );
            tasks.push(tokio::spawn(
                scale_back.run(shutdown.clone()).instrument(span),
            ));
        }
        tasks
    }

    /// `spot-guard-<asg>`, cut to a valid object name.
    pub fn lease_name(asg: &str) -> String {
        let cleaned: String = format!("spot-guard-{asg}")
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .take(253)
            .collect();
        cleaned.trim_end_matches(['-', '.']).to_owned()
    }

    async fn load_record(&self, event_id: &str) -> ReplacementRecord {
        let stored = match self.node.get().await {
            Ok(node) => ReplacementRecord::parse(record::annotation(&node, REPLACEMENT_ANNOTATION)),
            Err(error) => {
                warn!(
                    "Cannot read node {} for its replacement record ({error}); starting the flow from the beginning",
                    self.node.name()
                );
                None
            }
        };
        stored
            .filter(|record| record.event_id == event_id)
            .unwrap_or_else(|| ReplacementRecord::new(event_id))
    }

    async fn save(&self, record: &ReplacementRecord) -> Result<(), NodeError> {
        self.node
            .set_annotations(&[(REPLACEMENT_ANNOTATION, record.to_annotation().as_str())])
            .await
            .map(|_| ())
    }

    /// Saves a step's result; the flow goes on if it cannot, the record is only lost.
    async fn save_or_warn(&self, record: &ReplacementRecord) {
        if let Err(error) = self.save(record).await {
            warn!(
                "Recording the replacement on node {} failed; a restarted agent may redo this step: {error}",
                self.node.name()
            );
        }
    }

    async fn acquire(&self, asg: &str) -> Result<HeldLease, CapacityFailure> {
        self.leases
            .acquire(&Fleet::lease_name(asg))
            .await
            .map_err(|error| CapacityFailure::Api {
                error: format!("taking the lease for ASG {asg}: {error}"),
            })
    }
}

impl<A: AutoScaling> SpotGuard<A> {
    fn asg_name(&self, role: Role) -> String {
        match role {
            Role::Spot => self.config.spot_asg_name.clone(),
            Role::OnDemand => self.config.on_demand_asg_name.clone(),
        }
    }

    /// [`SpotGuard::secure_replacement`] in fleet mode.
    pub(super) async fn fleet_replacement(
        &self,
        fleet: &Fleet,
        preempt: &CancellationToken,
        event: &InterruptionEvent,
    ) -> ReplacementOutcome {
        let noticed = Instant::now();
        let mut record = fleet.load_record(&event.event_id).await;
        loop {
            let (role, resume) = match fleet_flow::next_step(Some(&record), &event.event_id) {
                NextStep::Finished(outcome) => return outcome,
                NextStep::Start(role) => (role, None),
                NextStep::Resume { role, scaled } => {
                    info!(
                        "Resuming after a restart: ASG {} was already asked to go from {} to {} for this recommendation; waiting for it again, not scaling again",
                        self.asg_name(role),
                        scaled.from,
                        scaled.to
                    );
                    (role, Some(scaled))
                }
            };
            let name = self.asg_name(role);
            let attempt = self
                .fleet_attempt(fleet, role, &name, resume, &mut record, preempt, event)
                .instrument(info_span!("scale", asg = %name))
                .await;
            let outcome = match attempt {
                Ok(outcome) => outcome,
                Err(Preempted) => return self.preempted(event, &name),
            };
            let since_notice = Some(noticed.elapsed());
            match (role, outcome) {
                (Role::Spot, AttemptOutcome::Ready { .. }) => {
                    info!(asg = %name, "Spot Guard: replacement ready in spot ASG {name}");
                    self.reporter.spot_guard(
                        event,
                        SpotGuardStep::InService {
                            asg: &name,
                            on_demand: false,
                            since_notice,
                        },
                    );
                }
                (Role::Spot, AttemptOutcome::Failed(failure)) => {
                    let on_demand = self.asg_name(Role::OnDemand);
                    self.report_fallback(event, &name, &on_demand, &failure);
                }
                (Role::OnDemand, AttemptOutcome::Ready { .. }) => {
                    info!(
                        asg = %name,
                        "Spot Guard: replacement ready in on-demand ASG {name} (fallback)"
                    );
                    self.reporter.spot_guard(
                        event,
                        SpotGuardStep::InService {
                            asg: &name,
                            on_demand: true,
                            since_notice,
                        },
                    );
                }
                (Role::OnDemand, AttemptOutcome::Failed(failure)) => {
                    error!(
                        on_demand_asg = %name,
                        "Spot Guard could not get replacement capacity: on-demand ASG {name}: {failure}; the node is tainted and drained anyway"
                    );
                    self.reporter.spot_guard(
                        event,
                        SpotGuardStep::Failed {
                            on_demand_asg: &name,
                            reason: failure.reason(),
                            detail: &failure.to_string(),
                        },
                    );
                }
            }
        }
    }

    /// One ASG: request (unless resuming) and wait; the result is in `record` too.
    #[allow(clippy::too_many_arguments)]
    async fn fleet_attempt(
        &self,
        fleet: &Fleet,
        role: Role,
        name: &str,
        resume: Option<Scaled>,
        record: &mut ReplacementRecord,
        preempt: &CancellationToken,
        event: &InterruptionEvent,
    ) -> Result<AttemptOutcome, Preempted> {
        let scaled = match resume {
            Some(scaled) => scaled,
            None => {
                let request = tokio::time::timeout(
                    self.config.scale_timeout,
                    self.request_under_lease(fleet, role, name, record, event),
                );
                let requested = tokio::select! {
                    _ = preempt.cancelled() => return Err(Preempted),
                    requested = request => requested,
                };
                let requested = requested.unwrap_or_else(|_| {
                    Err(CapacityFailure::Api {
                        error: format!(
                            "scaling ASG {name} did not finish within SPOT_GUARD_SCALE_TIMEOUT ({}s)",
                            self.config.scale_timeout.as_secs()
                        ),
                    })
                });
                match requested {
                    Ok(scaled) => scaled,
                    Err(failure) => {
                        *record = record.with_attempt(AttemptRecord {
                            role,
                            asg: name.to_owned(),
                            scaled: None,
                            result: fleet_flow::failed(&failure),
                        });
                        fleet.save_or_warn(record).await;
                        return Ok(AttemptOutcome::Failed(failure));
                    }
                }
            }
        };
        let verdict = self.wait_for_new_instances(name, &scaled, preempt).await?;
        let (result, outcome) = match verdict {
            Ok(new_instances) => {
                ledger::record(
                    &fleet.leases,
                    &Fleet::lease_name(name),
                    name,
                    role,
                    fleet.node.name(),
                    &new_instances,
                )
                .await;
                (
                    AttemptResult::Ready,
                    AttemptOutcome::Ready {
                        from: scaled.from,
                        to: scaled.to,
                    },
                )
            }
            Err(failure) => {
                if role == Role::Spot && fleet_flow::is_capacity_shortage(&failure) {
                    self.remember_capacity_failure(fleet, name, &failure).await;
                }
                (
                    fleet_flow::failed(&failure),
                    AttemptOutcome::Failed(failure),
                )
            }
        };
        *record = record.with_attempt(AttemptRecord {
            role,
            asg: name.to_owned(),
            scaled: Some(scaled),
            result,
        });
        fleet.save_or_warn(record).await;
        Ok(outcome)
    }

    async fn request_under_lease(
        &self,
        fleet: &Fleet,
        role: Role,
        name: &str,
        record: &mut ReplacementRecord,
        event: &InterruptionEvent,
    ) -> Result<Scaled, CapacityFailure> {
        let held = fleet.acquire(name).await?;
        let result = self
            .request_while_held(fleet, &held, role, name, record, event)
            .await;
        held.release().await;
        result
    }

    /// Reads the ASG, records the intent on the Node, then sets desired capacity.
    async fn request_while_held(
        &self,
        fleet: &Fleet,
        held: &HeldLease,
        role: Role,
        name: &str,
        record: &mut ReplacementRecord,
        event: &InterruptionEvent,
    ) -> Result<Scaled, CapacityFailure> {
        if role == Role::Spot
            && let Some(note) = fleet_flow::cool_off(
                held.annotations()
                    .get(CAPACITY_FAILURE_ANNOTATION)
                    .map(String::as_str),
                SystemTime::now(),
                fleet.settings.capacity_cool_off,
            )
        {
            let ago = fleet_flow::millis_ago(note.at, SystemTime::now());
            return Err(CapacityFailure::InsufficientCapacity {
                message: format!(
                    "spot ASG {name} failed for lack of capacity {}s ago ({}, seen by node {}); within SPOT_GUARD_CAPACITY_COOL_OFF ({}s) recommendations go straight to on-demand",
                    ago.as_secs(),
                    note.reason,
                    note.node,
                    fleet.settings.capacity_cool_off.as_secs()
                ),
            });
        }
        let before = self
            .asg
            .describe(name)
            .await
            .map_err(|error| CapacityFailure::from_api_error(&error))?;
        // Failures already listed before our request belong to someone else.
        let activities = self.asg.scaling_activities(name).await.unwrap_or_else(|error| {
            warn!("Reading scaling activities of ASG {name} failed; only activities started after the scale-up will count: {error}");
            Vec::new()
        });
        let scaled = fleet_flow::plan_target(
            &before,
            fleet.settings.scale_count,
            &activities,
            SystemTime::now(),
        )?;
        if !held.is_held() {
            return Err(CapacityFailure::Api {
                error: format!(
                    "lost lease {} before scaling ASG {name}; not scaling on a stale read",
                    held.name()
                ),
            });
        }
        let intent = record.with_attempt(AttemptRecord {
            role,
            asg: name.to_owned(),
            scaled: Some(scaled.clone()),
            result: AttemptResult::Pending,
        });
        fleet.save(&intent).await.map_err(|error| CapacityFailure::Api {
            error: format!(
                "recording the scale-up of ASG {name} on node {} failed, so it was not sent (a restart could otherwise scale twice): {error}",
                fleet.node.name()
            ),
        })?;
        *record = intent;
        info!(
            "Scaling ASG {name} from {} to {} instances",
            scaled.from, scaled.to
        );
        self.asg
            .set_desired_capacity(name, scaled.to)
            .await
            .map_err(|error| CapacityFailure::from_api_error(&error))?;
        self.reporter.spot_guard(
            event,
            SpotGuardStep::ScaleUp {
                asg: name,
                from: scaled.from,
                to: scaled.to,
            },
        );
        Ok(scaled)
    }

    /// Polls the ASG until enough new instances are InService (returning them), it
    /// fails, or the capacity check timeout (counted from the request, across restarts)
    /// passes.
    async fn wait_for_new_instances(
        &self,
        name: &str,
        scaled: &Scaled,
        preempt: &CancellationToken,
    ) -> Result<Result<Vec<String>, CapacityFailure>, Preempted> {
        let timeout = self.config.capacity_check_timeout;
        let elapsed = || fleet_flow::millis_ago(scaled.requested_at, SystemTime::now());
        info!(
            "Waiting up to {:?} for {} new instance(s) to reach InService in ASG {name} (checking every {:?})",
            timeout, scaled.needed, self.config.check_interval
        );
        loop {
            let pause = self
                .config
                .check_interval
                .min(timeout.saturating_sub(elapsed()))
                .max(Duration::from_millis(1));
            tokio::select! {
                _ = preempt.cancelled() => return Err(Preempted),
                _ = tokio::time::sleep(pause) => {}
            }
            let state = match self.asg.describe(name).await {
                Ok(state) => state,
                Err(error) => {
                    warn!("Checking ASG {name} failed, will check again: {error}");
                    if elapsed() >= timeout {
                        return Ok(Err(CapacityFailure::Timeout { waited: elapsed() }));
                    }
                    continue;
                }
            };
            let activities = self.activities_while_waiting(name).await;
            match fleet_flow::judge(scaled, timeout, &state, &activities, SystemTime::now()) {
                WatchVerdict::Waiting => info!(
                    "ASG {name}: {} of {} new instance(s) InService ({:.1}s since the request)",
                    fleet_flow::new_in_service(scaled, &state),
                    scaled.needed,
                    elapsed().as_secs_f64()
                ),
                WatchVerdict::Ready { in_service } => {
                    info!(
                        "New instance reached InService in ASG {name} ({in_service} new InService, desired {}, was {})",
                        scaled.to, scaled.from
                    );
                    return Ok(Ok(fleet_flow::new_in_service_ids(scaled, &state)));
                }
                WatchVerdict::Failed(failure) => {
                    warn!(
                        reason = failure.reason(),
                        "ASG {name} did not deliver: {failure}"
                    );
                    return Ok(Err(failure));
                }
            }
        }
    }

    async fn remember_capacity_failure(
        &self,
        fleet: &Fleet,
        name: &str,
        failure: &CapacityFailure,
    ) {
        if fleet.settings.capacity_cool_off.is_zero() {
            return;
        }
        let note = CapacityFailureNote {
            at: fleet_flow::unix_millis(SystemTime::now()),
            reason: failure.reason().to_owned(),
            node: fleet.node.name().to_owned(),
        };
        let lease = Fleet::lease_name(name);
        match fleet
            .leases
            .annotate(
                &lease,
                &[(
                    CAPACITY_FAILURE_ANNOTATION,
                    Some(note.to_annotation().as_str()),
                )],
            )
            .await
        {
            Ok(()) => info!(
                "Remembered on lease {lease}: spot ASG {name} is short of capacity; recommendations in the next {}s go straight to on-demand",
                fleet.settings.capacity_cool_off.as_secs()
            ),
            Err(error) => warn!("Could not share the capacity failure of ASG {name}: {error}"),
        }
    }

    /// After the node actions: with SPOT_GUARD_TERMINATE_AFTER_DRAIN, a drained spot
    /// instance whose replacement arrived is terminated with ShouldDecrementDesiredCapacity,
    /// so the group returns to its size with the replacement in place.
    pub(super) async fn fleet_give_back(
        &self,
        fleet: &Fleet,
        outcome: &ReplacementOutcome,
        drained: bool,
        event: &InterruptionEvent,
    ) {
        if !fleet.settings.terminate_after_drain {
            return;
        }
        let node = fleet.node.name();
        if !fleet_flow::may_give_back(outcome, drained) {
            info!(
                "Not terminating the instance of node {node}: {}",
                if drained {
                    "no replacement arrived"
                } else {
                    "its drain did not complete"
                }
            );
            return;
        }
        let Some(instance_id) = fleet.instance_id.as_deref() else {
            warn!(
                "SPOT_GUARD_TERMINATE_AFTER_DRAIN is on but this instance's id could not be read from IMDS; node {node} stays, drained, and the ASG stays one bigger"
            );
            return;
        };
        let spot = self.config.spot_asg_name.clone();
        let given_back = tokio::time::timeout(
            self.config.scale_timeout,
            terminate_with_decrement(&self.asg, &fleet.leases, &spot, instance_id),
        )
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "not done within SPOT_GUARD_SCALE_TIMEOUT ({}s)",
                self.config.scale_timeout.as_secs()
            ))
        });
        match given_back {
            Ok(true) => {
                let mut record = fleet.load_record(&event.event_id).await;
                record.gave_back = true;
                fleet.save_or_warn(&record).await;
            }
            Ok(false) => {}
            Err(error) => error!(
                "Terminating instance {instance_id} of node {node} after its drain failed; the spot ASG stays one bigger: {error}"
            ),
        }
    }
}

/// Terminates `instance_id` with ShouldDecrementDesiredCapacity if it is still a member of
/// `asg`, under the ASG's Lease, since the decrement must not land between another
/// agent's read and write of desired capacity. Returns whether it terminated. Used to
/// give back a drained spot instance and an on-demand fallback.
pub async fn terminate_with_decrement<A: AutoScaling>(
    client: &A,
    leases: &Leases,
    asg: &str,
    instance_id: &str,
) -> Result<bool, String> {
    let held = leases
        .acquire(&Fleet::lease_name(asg))
        .await
        .map_err(|error| format!("taking the lease for ASG {asg}: {error}"))?;
    let result = async {
        let state = client.describe(asg).await.map_err(|e| e.to_string())?;
        if !state.instances.iter().any(|i| i.instance_id == instance_id) {
            info!("Instance {instance_id} is no longer in ASG {asg}; nothing to terminate");
            return Ok(false);
        }
        info!(
            "Terminating instance {instance_id} in ASG {asg} with ShouldDecrementDesiredCapacity: desired capacity {} -> {}",
            state.desired_capacity,
            state.desired_capacity - 1
        );
        client
            .terminate_instance(instance_id, true)
            .await
            .map_err(|e| e.to_string())?;
        Ok(true)
    }
    .await;
    held.release().await;
    result
}
