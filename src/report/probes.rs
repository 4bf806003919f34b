//! The liveness probe (ENABLE_PROBES_SERVER, PROBES_SERVER_PORT, PROBES_SERVER_ENDPOINT).
//! Unlike NTH's, which always answers OK, it answers OK only while the IMDS monitor loop
//! keeps completing polls, so a stuck agent gets restarted instead of silently not watching.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::ReportError;
use super::server::{ServeError, reply, serve};

/// NTH's defaults.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSettings {
    /// PROBES_SERVER_ENDPOINT, e.g. `/healthz`.
    pub endpoint: String,
    /// The oldest last poll still healthy; give it a few poll intervals plus IMDS's own
    /// retries and back-off (e.g. 3 × interval + tries × timeout + the longest back-off).
    pub max_staleness: Duration,
}

impl ProbeSettings {
    pub fn validate(&self) -> Result<(), ReportError> {
        if self.endpoint.starts_with('/') {
            Ok(())
        } else {
            Err(ReportError::ProbesEndpoint(self.endpoint.clone()))
        }
    }
}

#[derive(Clone)]
struct ProbeState {
    liveness: Liveness,
    max_staleness: Duration,
    started: Instant,
}

/// Serves the liveness endpoint until `shutdown`: 200 while the last completed IMDS poll is
/// at most `max_staleness` old (or, before the first poll, while the server is younger than
/// that), 503 otherwise; both with a JSON body giving the age. Other paths are 404.
pub async fn serve_probes(
    listener: TcpListener,
    settings: ProbeSettings,
    liveness: Liveness,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let state = ProbeState {
        liveness,
        max_staleness: settings.max_staleness,
        started: Instant::now(),
    };
    serve(
        "probes",
        &settings.endpoint,
        listener,
        shutdown,
        move |_| probe(&state),
    )
    .await
}

fn probe(state: &ProbeState) -> Response<Full<Bytes>> {
    let max = state.max_staleness.as_secs_f64();
    let (healthy, body) = match state.liveness.last_poll() {
        Some(last_poll) => {
            // A clock stepping backwards makes the poll look fresh, which is the safe side.
            let age = SystemTime::now()
                .duration_since(last_poll)
                .unwrap_or_default();
            let healthy = age <= state.max_staleness;
            (
                healthy,
                json!({
                    "health": if healthy { "OK" } else { "STALE" },
                    "lastPollSecondsAgo": age.as_secs_f64(),
                    "maxStalenessSeconds": max,
                }),
            )
        }
        None => {
            let waited = state.started.elapsed();
            let healthy = waited <= state.max_staleness;
            (
                healthy,
                json!({
                    "health": if healthy { "STARTING" } else { "STALE" },
                    "lastPollSecondsAgo": null,
                    "secondsWithoutPoll": waited.as_secs_f64(),
                    "maxStalenessSeconds": max,
                }),
            )
        }
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    reply(status, "application/json", body.to_string().into())
}

/// When the loop last finished a poll, for a liveness probe; cheap to clone and read.
#[derive(Debug, Clone, Default)]
pub struct Liveness(Arc<AtomicU64>);

impl Liveness {
    /// The end of the last completed poll (successful or not); None before the first one.
    pub fn last_poll(&self) -> Option<SystemTime> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            millis => Some(UNIX_EPOCH + Duration::from_millis(millis)),
        }
    }

    pub(crate) fn record_poll(&self) {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.0.store(millis.max(1), Ordering::Relaxed);
    }
}
