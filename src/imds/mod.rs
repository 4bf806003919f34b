//! Client of the EC2 instance metadata service (IMDS), behaving like NTH's: IMDSv2 token
//! cached and refreshed before expiry, a new token and one retry on 401, IMDSv1 when no
//! token can be had, `tries` attempts with doubling back-off on transport errors and 5xx,
//! and 404 on an event path read as "no event".
//!
//! Its reads block: the monitor polls from a thread of its own (src/monitor.rs), where
//! a poll costs the least CPU; async callers go through [`ImdsClient::off_runtime`].

mod payload;
mod token;
mod transport;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

pub use payload::{
    InstanceAction, RebalanceRecommendation, ScheduledEvent, is_instance_id,
    parse_scheduled_event_time,
};
use token::{Token, TokenCache};
use transport::{Answer, Method, Transport};

pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254";
/// NTH's METADATA_TRIES default.
pub const DEFAULT_TRIES: u32 = 3;
/// NTH's HTTP client timeout for IMDS.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// NTH's first retry sleep; it doubles on every further attempt.
pub const DEFAULT_RETRY_BASE_DELAY: Duration = Duration::from_secs(2);
/// The longest sleep between two attempts: with METADATA_TRIES capped too, a poll with
/// IMDS gone ends in bounded time, well within the liveness probe's staleness limit.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(8);
/// How long to stay on IMDSv1 after a failed token request before asking for a token again,
/// so a transient failure does not pin IMDSv1 for good.
pub const DEFAULT_V2_RETRY_AFTER: Duration = Duration::from_secs(60);

pub const TOKEN_PATH: &str = "/latest/api/token";
pub const INSTANCE_ID_PATH: &str = "/latest/meta-data/instance-id";
pub const REBALANCE_RECOMMENDATION_PATH: &str =
    "/latest/meta-data/events/recommendations/rebalance";
pub const SPOT_INSTANCE_ACTION_PATH: &str = "/latest/meta-data/spot/instance-action";
pub const SCHEDULED_EVENTS_PATH: &str = "/latest/meta-data/events/maintenance/scheduled";
pub const ASG_TARGET_LIFECYCLE_STATE_PATH: &str =
    "/latest/meta-data/autoscaling/target-lifecycle-state";

pub const TOKEN_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
const BODY_EXCERPT_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("invalid IMDS base URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("IMDS unreachable: GET {url} failed: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("IMDS answered HTTP {status} to GET {path}")]
    Status { path: String, status: u16 },
    #[error(
        "IMDS answered 401 to GET {path}: it requires IMDSv2 but no token could be obtained ({detail}); pods without hostNetwork need the instance's metadata hop limit at 2"
    )]
    TokenUnavailable { path: String, detail: String },
    #[error("IMDS answered malformed data on {path}: {detail}; body starts with: {body_excerpt:?}")]
    Malformed {
        path: String,
        detail: String,
        body_excerpt: String,
    },
}

/// Settings of an [`ImdsClient`]; the defaults are NTH's.
#[derive(Debug, Clone)]
pub struct ImdsClientBuilder {
    base_url: String,
    tries: u32,
    request_timeout: Duration,
    retry_base_delay: Duration,
    v2_retry_after: Duration,
}

impl ImdsClientBuilder {
    /// Attempts per request (METADATA_TRIES); 0 counts as 1.
    pub fn tries(mut self, tries: u32) -> Self {
        self.tries = tries;
        self
    }

    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sleep before the second attempt; it doubles for each further one.
    pub fn retry_base_delay(mut self, delay: Duration) -> Self {
        self.retry_base_delay = delay;
        self
    }

    /// Time spent on IMDSv1 after a failed token request before a token is asked for again.
    pub fn v2_retry_after(mut self, after: Duration) -> Self {
        self.v2_retry_after = after;
        self
    }

    pub fn build(self) -> Result<ImdsClient, ImdsError> {
        let (base, url) = transport::parse_base_url(&self.base_url)?;
        // No proxy is ever asked: IMDS is link-local, and an HTTP_PROXY meant for the
        // internet must not see it.
        let transport = Transport::new(&url, self.request_timeout);
        Ok(ImdsClient {
            transport,
            base,
            tries: self.tries.clamp(1, crate::config::MAX_METADATA_TRIES),
            request_timeout: self.request_timeout,
            retry_base_delay: self.retry_base_delay,
            v2_retry_after: self.v2_retry_after,
            token: Arc::new(Mutex::new(TokenCache::default())),
        })
    }
}

/// IMDS client; cheap to clone (clones share the token and the connection).
#[derive(Debug, Clone)]
pub struct ImdsClient {
    transport: Transport,
    base: String,
    tries: u32,
    request_timeout: Duration,
    retry_base_delay: Duration,
    v2_retry_after: Duration,
    token: Arc<Mutex<TokenCache>>,
}

/// The sleeps between the attempts of one request: doubling from `base`, each capped
/// at [`MAX_RETRY_DELAY`].
fn retry_delays(base: Duration, tries: u32) -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(base.min(MAX_RETRY_DELAY)), |delay| {
        Some(delay.saturating_mul(2).min(MAX_RETRY_DELAY))
    })
    .take(tries.saturating_sub(1) as usize)
}

impl ImdsClient {
    /// A client with NTH's timeouts for `base_url` (e.g. "http://169.254.169.254").
    pub fn new(base_url: &str, tries: u32) -> Result<Self, ImdsError> {
        Self::builder(base_url).tries(tries).build()
    }

    pub fn builder(base_url: &str) -> ImdsClientBuilder {
        ImdsClientBuilder {
            base_url: base_url.to_string(),
            tries: DEFAULT_TRIES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_base_delay: DEFAULT_RETRY_BASE_DELAY,
            v2_retry_after: DEFAULT_V2_RETRY_AFTER,
        }
    }

    /// Runs `read` on the runtime's blocking pool, for callers on the async runtime (the
    /// start-up reads, the tests): a read blocks for up to its attempts' timeouts and
    /// sleeps, and it runs to its end even when the caller stops waiting.
    pub async fn off_runtime<T: Send + 'static>(
        &self,
        read: impl FnOnce(&ImdsClient) -> Result<T, ImdsError> + Send + 'static,
    ) -> Result<T, ImdsError> {
        let client = self.clone();
        match tokio::task::spawn_blocking(move || read(&client)).await {
            Ok(outcome) => outcome,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(ImdsError::Unreachable {
                url: self.base.clone(),
                detail: format!("the read was stopped: {error}"),
            }),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The longest one token request can take: one attempt, never answered.
    pub fn longest_token_request(&self) -> Duration {
        self.request_timeout
    }

    /// The longest one GET can take with IMDS gone: every attempt times out, with the
    /// sleeps between them.
    pub fn longest_request(&self) -> Duration {
        retry_delays(self.retry_base_delay, self.tries).fold(
            self.request_timeout.saturating_mul(self.tries),
            Duration::saturating_add,
        )
    }

    pub fn instance_id(&self) -> Result<String, ImdsError> {
        let answer = self.get(INSTANCE_ID_PATH)?;
        if !answer.status.is_success() {
            return Err(status_error(INSTANCE_ID_PATH, answer.status));
        }
        let text = answer.text();
        let id = text.trim();
        if !is_instance_id(id) {
            // It goes into Auto Scaling calls and Node lookups: only a real id's shape.
            return Err(malformed(
                INSTANCE_ID_PATH,
                "not an EC2 instance id ('i-' and 8 or 17 hex digits)",
                &text,
            ));
        }
        Ok(id.to_string())
    }

    /// A metadata path's text, trimmed; None when IMDS answers 404 (e.g. `public-ipv4` on
    /// an instance without a public address).
    pub fn text(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let answer = self.get(path)?;
        match answer.status {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(answer.text().trim().to_string())),
            status => Err(status_error(path, status)),
        }
    }

    pub fn rebalance_recommendation(&self) -> Result<Option<RebalanceRecommendation>, ImdsError> {
        self.get_event(REBALANCE_RECOMMENDATION_PATH)
    }

    pub fn spot_instance_action(&self) -> Result<Option<InstanceAction>, ImdsError> {
        self.get_event(SPOT_INSTANCE_ACTION_PATH)
    }

    /// The scheduled maintenance events; none when IMDS answers 404 or `[]`.
    pub fn scheduled_events(&self) -> Result<Vec<ScheduledEvent>, ImdsError> {
        Ok(self.get_event(SCHEDULED_EVENTS_PATH)?.unwrap_or_default())
    }

    /// The ASG target lifecycle state (e.g. "InService", "Terminated"); None without a lifecycle hook.
    pub fn asg_target_lifecycle_state(&self) -> Result<Option<String>, ImdsError> {
        let answer = self.get(ASG_TARGET_LIFECYCLE_STATE_PATH)?;
        match answer.status {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => {
                let text = answer.text();
                let state = text.trim();
                Ok((!state.is_empty()).then(|| state.to_string()))
            }
            status => Err(status_error(ASG_TARGET_LIFECYCLE_STATE_PATH, status)),
        }
    }

    fn get_event<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ImdsError> {
        let answer = self.get(path)?;
        match answer.status {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => serde_json::from_slice(answer.body())
                .map(Some)
                .map_err(|e| malformed(path, &e.to_string(), &answer.text())),
            status => Err(status_error(path, status)),
        }
    }

    /// GET with the current token (if any), renewing it once on 401.
    fn get(&self, path: &str) -> Result<Answer, ImdsError> {
        let token = self.current_token();
        let answer = self.get_with_retries(path, token.as_ref())?;
        if answer.status != StatusCode::UNAUTHORIZED {
            return Ok(answer);
        }
        debug!(path, "IMDS answered 401; requesting a new IMDSv2 token");
        let token = match self.renew_token() {
            Ok(token) => token,
            Err(detail) => {
                return Err(ImdsError::TokenUnavailable {
                    path: path.to_string(),
                    detail,
                });
            }
        };
        let answer = self.get_with_retries(path, Some(&token))?;
        if answer.status == StatusCode::UNAUTHORIZED {
            return Err(status_error(path, answer.status));
        }
        Ok(answer)
    }

    fn get_with_retries(&self, path: &str, token: Option<&Token>) -> Result<Answer, ImdsError> {
        let mut delays = retry_delays(self.retry_base_delay, self.tries);
        let mut attempt = 1;
        loop {
            let header = token.map(|token| (TOKEN_HEADER, token.as_bytes()));
            let outcome = self.transport.send(Method::Get, path, header, None);
            let failure = match &outcome {
                Ok(answer) if answer.status.is_server_error() => {
                    format!("HTTP {}", answer.status.as_u16())
                }
                Ok(_) => break outcome,
                Err(detail) => detail.clone(),
            };
            let Some(delay) = delays.next().filter(|_| attempt < self.tries) else {
                break outcome;
            };
            warn!(
                path,
                attempt,
                tries = self.tries,
                "IMDS request failed ({failure}); retrying in {delay:?}"
            );
            std::thread::sleep(delay);
            attempt += 1;
        }
        .map_err(|detail| ImdsError::Unreachable {
            url: format!("{}{path}", self.base),
            detail,
        })
    }
}

fn status_error(path: &str, status: StatusCode) -> ImdsError {
    ImdsError::Status {
        path: path.to_string(),
        status: status.as_u16(),
    }
}

fn malformed(path: &str, detail: &str, body: &str) -> ImdsError {
    ImdsError::Malformed {
        path: path.to_string(),
        detail: detail.to_string(),
        body_excerpt: body.chars().take(BODY_EXCERPT_CHARS).collect(),
    }
}
