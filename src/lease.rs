//! A `coordination.k8s.io/v1` Lease per Auto Scaling group, so that the agents of all
//! nodes take turns at the group's read-modify-write (read desired, set desired + 1).
//!
//! kube-runtime's leader election is not compiled in, and a turn is short, so this is the
//! small part of it we need: acquire by create (409: someone else was first) or by replace
//! with the read's `resourceVersion` once the lease is free, expired or already ours (an
//! earlier run of this agent on the same node); renew while held; release by clearing the
//! holder. A holder that dies blocks the others at most the lease duration.
//!
//! Clocks differ between nodes, so, as client-go's leader election does, expiry is
//! judged by the observer's own monotonic clock: a lease held by another is expired once
//! its record has not changed for a whole duration *as this agent has watched it*, never
//! by comparing the holder's renewTime with this agent's wall clock. The holder treats
//! its lease as lost a margin before it could expire for anyone (no renewal for two
//! thirds of the duration), and callers check [`HeldLease::is_held`] right before each
//! write they make under it.
//! Shared memory that outlives one turn (e.g. a capacity failure) lives in the Lease's
//! annotations and is written with the same optimistic concurrency, held or not.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::node::is_transient;

/// Writes that meet a conflict start over from a fresh read this many times.
const WRITE_ATTEMPTS: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "{action}: {source} (the agent's ServiceAccount needs get, create and update on leases.coordination.k8s.io in its namespace)"
    )]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{action}: still conflicting after {WRITE_ATTEMPTS} attempts")]
    Contended { action: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Where the Leases live: the agent's own namespace.
    pub namespace: String,
    /// Who holds a lease: the node name, so a restarted agent recognises its own.
    pub holder: String,
    /// How long a lease stays valid without renewal; renewed every third of it.
    pub duration: Duration,
    /// Pause (with jitter) between looks at a lease someone else holds.
    pub retry_interval: Duration,
}

/// The Leases of one agent.
#[derive(Clone)]
pub struct Leases {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// Per lease: its holder record as last seen, and when (this agent's clock) it was
    /// first seen so.
    observed: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

/// A lease this agent holds; renewed in the background until released or dropped.
/// Dropping it without [`HeldLease::release`] (e.g. the task was aborted) stops the
/// renewal, so the lease expires after its duration.
pub struct HeldLease {
    leases: Leases,
    name: String,
    annotations: BTreeMap<String, String>,
    lost: Arc<AtomicBool>,
    /// When the last renewal (or the acquisition) was sent, on this agent's clock.
    renewed: Arc<Mutex<Instant>>,
    renewer: JoinHandle<()>,
    released: bool,
}

/// No renewal for this share of the duration and the holder counts its lease as lost,
/// well before another agent (which waits the whole duration) could take it.
const RENEW_DEADLINE_NUMERATOR: u32 = 2;
const RENEW_DEADLINE_DENOMINATOR: u32 = 3;

fn renew_deadline(duration: Duration) -> Duration {
    duration * RENEW_DEADLINE_NUMERATOR / RENEW_DEADLINE_DENOMINATOR
}

/// Whether `holder` may take the lease now: nobody holds it, it is ours, or its record
/// has not changed for longer than its duration while this agent watched
/// (`unchanged_for`, on this agent's clock).
pub fn is_free(
    lease: &Lease,
    holder: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> bool {
    let Some(spec) = &lease.spec else {
        return true;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => return true,
        Some(current) if current == holder => return true,
        Some(_) => {}
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|seconds| u64::try_from(seconds).ok())
        .map_or(default_duration, Duration::from_secs);
    unchanged_for > duration
}

/// What identifies one renewal of a lease: any change of it restarts the observer's count.
fn record_of(lease: &Lease) -> String {
    let spec = lease.spec.clone().unwrap_or_default();
    format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}",
        spec.holder_identity,
        spec.renew_time.map(|MicroTime(t)| t.as_microsecond()),
        spec.acquire_time.map(|MicroTime(t)| t.as_microsecond()),
        spec.lease_transitions,
        spec.lease_duration_seconds
    )
}

fn duration_seconds(duration: Duration) -> i32 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
}

/// Between half and one and a half times `base`, so that waiting agents do not all
/// look at the same moment.
fn jittered(base: Duration) -> Duration {
    let random = RandomState::new().hash_one(std::time::SystemTime::now());
    let permille = 500 + random % 1000;
    base * u32::try_from(permille).unwrap_or(1000) / 1000
}

fn holder_of(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

impl Leases {
    /// Who this agent is on its Leases: its node's name.
    pub fn holder(&self) -> &str {
        &self.settings.holder
    }

    pub fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        Leases {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn api_error(&self, action: String) -> impl FnOnce(kube::Error) -> LeaseError {
        move |source| LeaseError::Api { action, source }
    }

    fn held_spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let transitions = previous
            .and_then(|spec| spec.lease_transitions)
            .unwrap_or(0);
        let changed_hands = previous
            .and_then(|spec| spec.holder_identity.as_deref())
            .is_some_and(|holder| holder != self.settings.holder);
        LeaseSpec {
            holder_identity: Some(self.settings.holder.clone()),
            lease_duration_seconds: Some(duration_seconds(self.settings.duration)),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions + i32::from(changed_hands)),
            ..LeaseSpec::default()
        }
    }

    /// Waits until this agent holds the lease `name`; callers bound the wait.
    pub async fn acquire(&self, name: &str) -> Result<HeldLease, LeaseError> {
        let mut waiting_on: Option<String> = None;
        loop {
            // The turn counts from before the request: its answer may come late.
            let sent_at = Instant::now();
            match self.try_acquire(name).await {
                Ok(Some(lease)) => {
                    debug!(lease = name, "Acquired lease {name}");
                    return Ok(self.held(name, lease, sent_at));
                }
                Ok(None) => {}
                Err(LeaseError::Api { source, .. }) if is_transient(&source) => {
                    warn!(
                        lease = name,
                        "Reading or taking lease {name} failed, trying again: {source}"
                    );
                }
                Err(error) => return Err(error),
            }
            if waiting_on.is_none() {
                let holder = self.current_holder(name).await;
                info!(
                    lease = name,
                    "Waiting for lease {}/{name}, held by {}",
                    self.settings.namespace,
                    holder.as_deref().unwrap_or("another agent")
                );
                waiting_on = Some(holder.unwrap_or_default());
            }
            tokio::time::sleep(jittered(self.settings.retry_interval)).await;
        }
    }

    async fn current_holder(&self, name: &str) -> Option<String> {
        let lease = self.api.get_opt(name).await.ok().flatten()?;
        holder_of(&lease).map(str::to_owned)
    }

    /// How long the lease's record has looked the same to this agent.
    fn unchanged_for(&self, name: &str, lease: &Lease) -> Duration {
        let record = record_of(lease);
        let now = Instant::now();
        let mut observed = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
        match observed.get(name) {
            Some((seen, since)) if *seen == record => now.duration_since(*since),
            _ => {
                observed.insert(name.to_owned(), (record, now));
                Duration::ZERO
            }
        }
    }

    /// One look: `Some` with the stored lease when it is now ours, `None` when another
    /// agent holds it or won the race.
    async fn try_acquire(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
        let now = Timestamp::now();
        let current = self
            .api
            .get_opt(name)
            .await
            .map_err(self.api_error(format!("reading lease {name}")))?;
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/name".to_owned(),
                            "spot-guard".to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.held_spec(None, now)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(lease)
                if is_free(
                    &lease,
                    &self.settings.holder,
                    self.unchanged_for(name, &lease),
                    self.settings.duration,
                ) =>
            {
                let spec = self.held_spec(lease.spec.as_ref(), now);
                let taken = Lease {
                    spec: Some(spec),
                    ..lease
                };
                self.api.replace(name, &PostParams::default(), &taken).await
            }
            Some(_) => return Ok(None),
        };
        match result {
            Ok(lease) => Ok(Some(lease)),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
            Err(source) => Err(LeaseError::Api {
                action: format!("taking lease {name}"),
                source,
            }),
        }
    }

    fn held(&self, name: &str, lease: Lease, sent_at: Instant) -> HeldLease {
        let lost = Arc::new(AtomicBool::new(false));
        let renewed = Arc::new(Mutex::new(sent_at));
        let renewer = tokio::spawn(renew(
            self.clone(),
            name.to_owned(),
            lost.clone(),
            renewed.clone(),
        ));
        HeldLease {
            leases: self.clone(),
            name: name.to_owned(),
            annotations: lease.metadata.annotations.unwrap_or_default(),
            lost,
            renewed,
            renewer,
            released: false,
        }
    }

    /// Reads the lease, lets `change` edit it, and replaces it with the read's
    /// `resourceVersion`, starting over on a conflict; `change` returns false when
    /// there is nothing to write.
    async fn update(
        &self,
        name: &str,
        what: &str,
        change: impl Fn(&mut Lease) -> bool,
    ) -> Result<(), LeaseError> {
        let action = format!("{what} on lease {}/{name}", self.settings.namespace);
        for _ in 0..WRITE_ATTEMPTS {
            let current = self
                .api
                .get_opt(name)
                .await
                .map_err(self.api_error(action.clone()))?;
            let result = match current {
                Some(mut lease) => {
                    if !change(&mut lease) {
                        return Ok(());
                    }
                    self.api.replace(name, &PostParams::default(), &lease).await
                }
                None => {
                    let mut lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(name.to_owned()),
                            ..ObjectMeta::default()
                        },
                        spec: Some(LeaseSpec::default()),
                    };
                    if !change(&mut lease) {
                        return Ok(());
                    }
                    self.api.create(&PostParams::default(), &lease).await
                }
            };
            match result {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(source) if is_transient(&source) => {
                    warn!("Retrying {action}: {source}");
                    tokio::time::sleep(jittered(self.settings.retry_interval)).await;
                }
                Err(source) => return Err(LeaseError::Api { action, source }),
            }
        }
        Err(LeaseError::Contended { action })
    }

    /// The annotations of the lease `name`; empty when there is no such lease.
    pub async fn annotations(&self, name: &str) -> Result<BTreeMap<String, String>, LeaseError> {
        let lease = self
            .api
            .get_opt(name)
            .await
            .map_err(self.api_error(format!("reading lease {name}")))?;
        Ok(lease
            .and_then(|lease| lease.metadata.annotations)
            .unwrap_or_default())
    }

    /// Sets (`Some`) or removes (`None`) annotations of the lease `name`, whoever holds
    /// it; creates an unheld lease if there is none.
    pub async fn annotate(
        &self,
        name: &str,
        annotations: &[(&str, Option<&str>)],
    ) -> Result<(), LeaseError> {
        self.edit_annotations(name, |map| {
            let mut changed = false;
            for (key, value) in annotations {
                let before = map.get(*key).map(String::as_str);
                if before == *value {
                    continue;
                }
                changed = true;
                match value {
                    Some(value) => map.insert((*key).to_owned(), (*value).to_owned()),
                    None => map.remove(*key),
                };
            }
            changed
        })
        .await
    }

    /// Lets `change` edit the annotations of the lease `name` as just read (again after a
    /// conflict), whoever holds it; `change` returns false when there is nothing to write.
    pub async fn edit_annotations(
        &self,
        name: &str,
        change: impl Fn(&mut BTreeMap<String, String>) -> bool,
    ) -> Result<(), LeaseError> {
        self.update(name, "writing annotations", |lease| {
            change(lease.metadata.annotations.get_or_insert_with(BTreeMap::new))
        })
        .await
    }
}

/// Renews every fifth of the duration; marks the lease lost when another agent took it
/// or when no renewal succeeded within the renew deadline.
async fn renew(leases: Leases, name: String, lost: Arc<AtomicBool>, renewed: Arc<Mutex<Instant>>) {
    let period = leases.settings.duration / 5;
    let deadline = renew_deadline(leases.settings.duration);
    loop {
        tokio::time::sleep(period).await;
        let holder = leases.settings.holder.clone();
        let taken_over = AtomicBool::new(false);
        let sent_at = Instant::now();
        let result = leases
            .update(&name, "renewing", |lease| {
                if holder_of(lease) != Some(holder.as_str()) {
                    taken_over.store(true, Ordering::Relaxed);
                    return false;
                }
                if let Some(spec) = lease.spec.as_mut() {
                    spec.renew_time = Some(MicroTime(Timestamp::now()));
                }
                true
            })
            .await;
        if taken_over.load(Ordering::Relaxed) {
            warn!(lease = %name, "Lease {name} was taken by another agent");
            lost.store(true, Ordering::Relaxed);
            return;
        }
        match result {
            Ok(()) => *renewed.lock().unwrap_or_else(PoisonError::into_inner) = sent_at,
            Err(error) => {
                warn!(lease = %name, "Renewing lease {name} failed: {error}");
                let last = *renewed.lock().unwrap_or_else(PoisonError::into_inner);
                if last.elapsed() >= deadline {
                    lost.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

impl HeldLease {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The annotations as read when the lease was acquired.
    pub fn annotations(&self) -> &BTreeMap<String, String> {
        &self.annotations
    }

    /// False once no renewal succeeded within the renew deadline (two thirds of the
    /// duration, on this agent's clock) or another agent took the lease: the turn is
    /// over and nothing may be written on its strength.
    pub fn is_held(&self) -> bool {
        let renewed = *self.renewed.lock().unwrap_or_else(PoisonError::into_inner);
        !self.lost.load(Ordering::Relaxed)
            && !self.renewer.is_finished()
            && renewed.elapsed() < renew_deadline(self.leases.settings.duration)
    }

    /// Gives the lease up so the next agent need not wait for it to expire.
    pub async fn release(mut self) {
        self.released = true;
        self.renewer.abort();
        release(&self.leases, &self.name).await;
    }
}

async fn release(leases: &Leases, name: &str) {
    let holder = leases.settings.holder.clone();
    let released = leases
        .update(name, "releasing", |lease| {
            let Some(spec) = lease.spec.as_mut() else {
                return false;
            };
            if spec.holder_identity.as_deref() != Some(holder.as_str()) {
                return false;
            }
            spec.holder_identity = None;
            true
        })
        .await;
    match released {
        Ok(()) => debug!(lease = name, "Released lease {name}"),
        Err(error) => warn!(
            lease = name,
            "Releasing lease {name} failed; it expires after {:?}: {error}",
            leases.settings.duration
        ),
    }
}

impl Drop for HeldLease {
    /// A turn cut short (a preempted or aborted flow) still hands the lease on, if the
    /// runtime lives on; a killed process leaves it to expire.
    fn drop(&mut self) {
        self.renewer.abort();
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let leases = self.leases.clone();
            let name = self.name.clone();
            runtime.spawn(async move { release(&leases, &name).await });
        }
    }
}

#[cfg(test)]
mod tests;
