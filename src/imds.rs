//! Client of the EC2 instance metadata service (IMDS), behaving like NTH's: IMDSv2 token
//! cached and refreshed before expiry, a new token and one retry on 401, IMDSv1 when no
//! token can be had, `tries` attempts with doubling back-off on transport errors and 5xx,
//! and 404 on an event path read as "no event".

use std::error::Error as StdError;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{debug, info, warn};

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
/// NTH asks for one-hour tokens.
const TOKEN_TTL_SECONDS: u64 = 3600;
/// NTH refreshes the token when this many seconds or fewer remain.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(15);
const BODY_EXCERPT_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("invalid IMDS base URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("building the HTTP client for IMDS: {detail}")]
    Client { detail: String },
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

/// `{"noticeTime": "2020-10-27T08:22:00Z"}` on the rebalance path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RebalanceRecommendation {
    #[serde(rename = "noticeTime")]
    pub notice_time: String,
}

/// `{"action": "terminate", "time": "2017-09-18T08:22:00Z"}` on the spot instance-action path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstanceAction {
    pub action: String,
    pub time: String,
}

/// One entry of the scheduled maintenance list; times are as IMDS writes them,
/// e.g. "21 Jan 2019 09:00:43 GMT" (see [`parse_scheduled_event_time`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ScheduledEvent {
    #[serde(rename = "Code", default)]
    pub code: String,
    #[serde(rename = "Description", default)]
    pub description: String,
    #[serde(rename = "EventId", default)]
    pub event_id: String,
    #[serde(rename = "State", default)]
    pub state: String,
    #[serde(rename = "NotBefore", default)]
    pub not_before: String,
    #[serde(rename = "NotAfter", default)]
    pub not_after: String,
    #[serde(rename = "NotBeforeDeadline", default)]
    pub not_before_deadline: String,
}

/// Parses IMDS's scheduled event time format (Go layout "2 Jan 2006 15:04:05 GMT", as NTH)
/// into seconds since the Unix epoch.
pub fn parse_scheduled_event_time(text: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut fields = text.split_whitespace();
    let day: i64 = fields.next()?.parse().ok()?;
    let month_name = fields.next()?;
    let month = i64::try_from(MONTHS.iter().position(|m| *m == month_name)? + 1).ok()?;
    let year: i64 = fields.next()?.parse().ok()?;
    let mut clock = fields.next()?.split(':');
    let hour: i64 = clock.next()?.parse().ok()?;
    let minute: i64 = clock.next()?.parse().ok()?;
    let second: i64 = clock.next()?.parse().ok()?;
    if fields.next()? != "GMT" || fields.next().is_some() || clock.next().is_some() {
        return None;
    }
    let valid = (1..=days_in_month(year, month)).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0..60).contains(&second);
    valid.then(|| days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// EC2's instance id shape: `i-` and 8 (older) or 17 lowercase hex digits.
pub fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
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
        crate::tls::ensure_crypto_provider();
        let base = parse_base_url(&self.base_url)?;
        let http = reqwest::Client::builder()
            .timeout(self.request_timeout)
            // IMDS is link-local: an HTTP(S)_PROXY meant for the internet must not see it.
            .no_proxy()
            .build()
            .map_err(|e| ImdsError::Client {
                detail: error_chain(&e),
            })?;
        Ok(ImdsClient {
            http,
            base,
            tries: self.tries.clamp(1, crate::config::MAX_METADATA_TRIES),
            request_timeout: self.request_timeout,
            retry_base_delay: self.retry_base_delay,
            v2_retry_after: self.v2_retry_after,
            token: Arc::new(Mutex::new(TokenCache::default())),
        })
    }
}

fn parse_base_url(url: &str) -> Result<String, ImdsError> {
    let invalid = |reason: String| ImdsError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let parsed = Url::parse(url.trim()).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme '{}' is not http or https",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".to_string()));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

#[derive(Debug, Default)]
struct TokenCache {
    mode: TokenMode,
    /// Whether the switch to IMDSv1 was already logged at warn, so it is said once per episode.
    v1_announced: bool,
}

#[derive(Debug, Default)]
enum TokenMode {
    #[default]
    Unknown,
    V2 {
        token: String,
        refresh_at: Instant,
    },
    V1 {
        retry_v2_at: Instant,
    },
}

/// One answer of IMDS, read whole.
struct Answer {
    status: StatusCode,
    body: String,
}

/// IMDS client; cheap to clone (clones share the token).
#[derive(Debug, Clone)]
pub struct ImdsClient {
    http: reqwest::Client,
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

    pub async fn instance_id(&self) -> Result<String, ImdsError> {
        let answer = self.get(INSTANCE_ID_PATH).await?;
        if !answer.status.is_success() {
            return Err(status_error(INSTANCE_ID_PATH, answer.status));
        }
        let id = answer.body.trim();
        if !is_instance_id(id) {
            // It goes into Auto Scaling calls and Node lookups: only a real id's shape.
            return Err(malformed(
                INSTANCE_ID_PATH,
                "not an EC2 instance id ('i-' and 8 or 17 hex digits)",
                &answer.body,
            ));
        }
        Ok(id.to_string())
    }

    /// A metadata path's text, trimmed; None when IMDS answers 404 (e.g. `public-ipv4` on
    /// an instance without a public address).
    pub async fn text(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let answer = self.get(path).await?;
        match answer.status {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(answer.body.trim().to_string())),
            status => Err(status_error(path, status)),
        }
    }

    pub async fn rebalance_recommendation(
        &self,
    ) -> Result<Option<RebalanceRecommendation>, ImdsError> {
        self.get_event(REBALANCE_RECOMMENDATION_PATH).await
    }

    pub async fn spot_instance_action(&self) -> Result<Option<InstanceAction>, ImdsError> {
        self.get_event(SPOT_INSTANCE_ACTION_PATH).await
    }

    /// The scheduled maintenance events; none when IMDS answers 404 or `[]`.
    pub async fn scheduled_events(&self) -> Result<Vec<ScheduledEvent>, ImdsError> {
        Ok(self
            .get_event(SCHEDULED_EVENTS_PATH)
            .await?
            .unwrap_or_default())
    }

    /// The ASG target lifecycle state (e.g. "InService", "Terminated"); None without a lifecycle hook.
    pub async fn asg_target_lifecycle_state(&self) -> Result<Option<String>, ImdsError> {
        let answer = self.get(ASG_TARGET_LIFECYCLE_STATE_PATH).await?;
        match answer.status {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => {
                let state = answer.body.trim();
                Ok((!state.is_empty()).then(|| state.to_string()))
            }
            status => Err(status_error(ASG_TARGET_LIFECYCLE_STATE_PATH, status)),
        }
    }

    async fn get_event<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ImdsError> {
        let answer = self.get(path).await?;
        match answer.status {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => serde_json::from_str(&answer.body)
                .map(Some)
                .map_err(|e| malformed(path, &e.to_string(), &answer.body)),
            status => Err(status_error(path, status)),
        }
    }

    /// GET with the current token (if any), renewing it once on 401.
    async fn get(&self, path: &str) -> Result<Answer, ImdsError> {
        let token = self.current_token().await;
        let answer = self.get_with_retries(path, token.as_deref()).await?;
        if answer.status != StatusCode::UNAUTHORIZED {
            return Ok(answer);
        }
        debug!(path, "IMDS answered 401; requesting a new IMDSv2 token");
        let token = match self.renew_token().await {
            Ok(token) => token,
            Err(detail) => {
                return Err(ImdsError::TokenUnavailable {
                    path: path.to_string(),
                    detail,
                });
            }
        };
        let answer = self.get_with_retries(path, Some(&token)).await?;
        if answer.status == StatusCode::UNAUTHORIZED {
            return Err(status_error(path, answer.status));
        }
        Ok(answer)
    }

    async fn get_with_retries(&self, path: &str, token: Option<&str>) -> Result<Answer, ImdsError> {
        let url = format!("{}{path}", self.base);
        let mut delays = retry_delays(self.retry_base_delay, self.tries);
        let mut attempt = 1;
        loop {
            let outcome = self.get_once(&url, token).await;
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
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
        .map_err(|detail| ImdsError::Unreachable { url, detail })
    }

    async fn get_once(&self, url: &str, token: Option<&str>) -> Result<Answer, String> {
        let mut request = self.http.get(url);
        if let Some(token) = token {
            request = request.header(TOKEN_HEADER, token);
        }
        let response = request.send().await.map_err(|e| error_chain(&e))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| error_chain(&e))?;
        Ok(Answer { status, body })
    }

    /// The token to send, asking for one when none is cached, it is about to expire, or the
    /// IMDSv1 fallback period is over. None means IMDSv1.
    async fn current_token(&self) -> Option<String> {
        let now = Instant::now();
        {
            let cache = self.token.lock().unwrap_or_else(PoisonError::into_inner);
            match &cache.mode {
                TokenMode::V2 { token, refresh_at } if now < *refresh_at => {
                    return Some(token.clone());
                }
                TokenMode::V1 { retry_v2_at } if now < *retry_v2_at => return None,
                _ => {}
            }
        }
        self.renew_token().await.ok()
    }

    /// Asks IMDS for a new token and records the outcome: the token, or IMDSv1 for a while.
    async fn renew_token(&self) -> Result<String, String> {
        let outcome = self.request_token().await;
        let mut cache = self.token.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok((token, ttl)) => {
                if cache.v1_announced {
                    info!("IMDSv2 token obtained again; leaving IMDSv1");
                    cache.v1_announced = false;
                }
                cache.mode = TokenMode::V2 {
                    token: token.clone(),
                    refresh_at: Instant::now()
                        .checked_add(ttl.saturating_sub(TOKEN_REFRESH_MARGIN))
                        .unwrap_or_else(Instant::now),
                };
                Ok(token)
            }
            Err(detail) => {
                if cache.v1_announced {
                    debug!("IMDSv2 token request failed again ({detail}); staying on IMDSv1");
                } else {
                    warn!(
                        "IMDSv2 token request to {}{TOKEN_PATH} failed ({detail}); falling back to IMDSv1, will ask for a token again in {:?}",
                        self.base, self.v2_retry_after
                    );
                    cache.v1_announced = true;
                }
                cache.mode = TokenMode::V1 {
                    retry_v2_at: Instant::now() + self.v2_retry_after,
                };
                Err(detail)
            }
        }
    }

    /// One PUT for a token (NTH does not retry it): the token and its lifetime.
    async fn request_token(&self) -> Result<(String, Duration), String> {
        let response = self
            .http
            .put(format!("{}{TOKEN_PATH}", self.base))
            .header(TOKEN_TTL_HEADER, TOKEN_TTL_SECONDS.to_string())
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        let ttl_seconds = response
            .headers()
            .get(TOKEN_TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            // Never longer than asked for: an absurd header must not overflow the clock.
            .map_or(TOKEN_TTL_SECONDS, |ttl| ttl.min(TOKEN_TTL_SECONDS));
        let token = response.text().await.map_err(|e| error_chain(&e))?;
        let token = token.trim();
        if token.is_empty() {
            return Err("empty token".to_string());
        }
        debug!(ttl_seconds, "got an IMDSv2 token");
        Ok((token.to_string(), Duration::from_secs(ttl_seconds)))
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

/// reqwest's own message only repeats the URL the caller already names; the cause is in
/// its sources.
fn error_chain(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_string();
    }
    let mut causes = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    if causes.is_empty() {
        error.to_string()
    } else {
        causes.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_event_time_in_imds_format_is_parsed() {
        assert_eq!(
            parse_scheduled_event_time("21 Jan 2019 09:00:43 GMT"),
            Some(1_548_061_243)
        );
        assert_eq!(
            parse_scheduled_event_time("1 Mar 2024 00:00:00 GMT"),
            Some(1_709_251_200)
        );
        assert_eq!(parse_scheduled_event_time("2019-01-21T09:00:43Z"), None);
        assert_eq!(parse_scheduled_event_time("30 Feb 2019 09:00:43 GMT"), None);
        assert_eq!(parse_scheduled_event_time("21 Jan 2019 09:00:43"), None);
    }

    #[test]
    fn base_url_is_checked_and_trailing_slash_dropped() {
        assert_eq!(
            parse_base_url("http://169.254.169.254/").ok().as_deref(),
            Some("http://169.254.169.254")
        );
        assert!(matches!(
            parse_base_url("169.254.169.254"),
            Err(ImdsError::InvalidUrl { .. })
        ));
        assert!(matches!(
            parse_base_url("ftp://169.254.169.254"),
            Err(ImdsError::InvalidUrl { .. })
        ));
    }
}
