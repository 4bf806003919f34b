//! An EC2 instance metadata service on loopback, serving the paths and payload formats
//! spot-guard reads, with knobs to change notices, token rules and failures mid-run.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::imds::{
    ASG_TARGET_LIFECYCLE_STATE_PATH, INSTANCE_ID_PATH, REBALANCE_RECOMMENDATION_PATH,
    SCHEDULED_EVENTS_PATH, SPOT_INSTANCE_ACTION_PATH, TOKEN_HEADER, TOKEN_PATH, TOKEN_TTL_HEADER,
};
use crate::instance_metadata::{
    AVAILABILITY_ZONE_PATH, IDENTITY_DOCUMENT_PATH, INSTANCE_LIFE_CYCLE_PATH, INSTANCE_TYPE_PATH,
    LOCAL_HOSTNAME_PATH, LOCAL_IPV4_PATH, PUBLIC_HOSTNAME_PATH, PUBLIC_IPV4_PATH,
};

pub const DEFAULT_INSTANCE_ID: &str = "i-0123456789abcdef0";
pub const DEFAULT_ACCOUNT_ID: &str = "123456789012";
pub const DEFAULT_INSTANCE_TYPE: &str = "m5.large";
pub const DEFAULT_AVAILABILITY_ZONE: &str = "us-east-1a";
pub const DEFAULT_LOCAL_IPV4: &str = "10.0.1.23";
pub const DEFAULT_LOCAL_HOSTNAME: &str = "ip-10-0-1-23.ec2.internal";
/// IMDS accepts token lifetimes from one second to six hours.
const MAX_TOKEN_TTL_SECONDS: u64 = 21_600;

#[derive(Debug, thiserror::Error)]
pub enum ImdsSimError {
    #[error("binding the IMDS simulator to 127.0.0.1: {0}")]
    Bind(std::io::Error),
}

/// How the simulator treats IMDSv2 tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenMode {
    /// Tokens are issued and checked when sent; GETs without one work too (IMDSv1 allowed).
    #[default]
    V2Optional,
    /// GETs without a valid token answer 401.
    V2Required,
    /// The token PUT answers this status (403, 404, 405 …); GETs without a token work.
    TokenRefused(u16),
    /// The token PUT answers this status and GETs without a valid token answer 401.
    V2RequiredTokenRefused(u16),
    /// The token PUT never answers; GETs without a token work: what a pod without host
    /// networking sees when the instance's hop limit is 1 (the PUT's reply is dropped).
    TokenHangs,
}

/// What IMDS tells about the instance besides its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimInstance {
    pub account_id: String,
    pub instance_type: String,
    /// `spot` or `on-demand`.
    pub life_cycle: String,
    pub availability_zone: String,
    pub local_ipv4: String,
    pub local_hostname: String,
    /// Hostname and address; None for an instance without a public address (IMDS: 404).
    pub public: Option<(String, String)>,
}

impl Default for SimInstance {
    fn default() -> Self {
        SimInstance {
            account_id: DEFAULT_ACCOUNT_ID.to_owned(),
            instance_type: DEFAULT_INSTANCE_TYPE.to_owned(),
            life_cycle: "spot".to_owned(),
            availability_zone: DEFAULT_AVAILABILITY_ZONE.to_owned(),
            local_ipv4: DEFAULT_LOCAL_IPV4.to_owned(),
            local_hostname: DEFAULT_LOCAL_HOSTNAME.to_owned(),
            public: None,
        }
    }
}

impl SimInstance {
    /// The instance identity document as IMDS formats it (every field it serves, with
    /// its nulls), for the instance `instance_id`.
    fn identity_document(&self, instance_id: &str) -> String {
        let region = self
            .availability_zone
            .get(..self.availability_zone.len().saturating_sub(1))
            .unwrap_or_default();
        serde_json::to_string_pretty(&json!({
            "accountId": self.account_id,
            "architecture": "x86_64",
            "availabilityZone": self.availability_zone,
            "billingProducts": null,
            "devpayProductCodes": null,
            "marketplaceProductCodes": null,
            "imageId": "ami-0abcdef1234567890",
            "instanceId": instance_id,
            "instanceType": self.instance_type,
            "kernelId": null,
            "pendingTime": "2030-01-01T00:00:00Z",
            "privateIp": self.local_ipv4,
            "ramdiskId": null,
            "region": region,
            "version": "2017-09-30"
        }))
        .unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct SimState {
    instance_id: String,
    instance: SimInstance,
    rebalance_notice_time: Option<String>,
    spot_action: Option<(String, String)>,
    scheduled_events: serde_json::Value,
    lifecycle_state: Option<String>,
    token_mode: TokenMode,
    /// Valid tokens and when each expires.
    tokens: HashMap<String, tokio::time::Instant>,
    /// When set, tokens live this many seconds whatever the client asked for.
    token_ttl_override: Option<u64>,
    /// The next `.0` GETs answer status `.1`.
    failing_gets: (u32, u16),
    down: bool,
    delay: Duration,
    path_delays: HashMap<String, Duration>,
    garbage: HashMap<String, String>,
    token_puts: u64,
    gets: HashMap<String, u64>,
    gets_with_token: u64,
    gets_without_token: u64,
    tokens_issued: u64,
    /// TCP connections accepted.
    connections: u64,
}

/// A running IMDS simulator; dropping it stops the server.
pub struct ImdsSim {
    addr: SocketAddr,
    state: Arc<Mutex<SimState>>,
    stop: CancellationToken,
    server: JoinHandle<()>,
}

impl ImdsSim {
    /// Starts the simulator on 127.0.0.1 with an ephemeral port, no notices and IMDSv2 optional.
    pub async fn start() -> Result<Self, ImdsSimError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(ImdsSimError::Bind)?;
        let addr = listener.local_addr().map_err(ImdsSimError::Bind)?;
        let state = Arc::new(Mutex::new(SimState {
            instance_id: DEFAULT_INSTANCE_ID.to_string(),
            scheduled_events: json!([]),
            ..SimState::default()
        }));
        let stop = CancellationToken::new();
        let app = Router::new().fallback(handle).with_state(state.clone());
        let shutdown = stop.clone().cancelled_owned();
        let counted = state.clone();
        let listener = listener.tap_io(move |_| lock(&counted).connections += 1);
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!("IMDS simulator stopped: {error}");
            }
        });
        Ok(Self {
            addr,
            state,
            stop,
            server,
        })
    }

    /// Base URL, e.g. "http://127.0.0.1:41234" (what INSTANCE_METADATA_URL would hold).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn shutdown(self) {
        drop(self);
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        lock(&self.state)
    }

    pub fn set_instance_id(&self, id: &str) {
        self.state().instance_id = id.to_string();
    }

    /// What IMDS serves about the instance besides its id.
    pub fn set_instance(&self, instance: SimInstance) {
        self.state().instance = instance;
    }

    /// Serves `{"noticeTime": …}` on the rebalance path, or 404 with None.
    pub fn set_rebalance(&self, notice_time: Option<&str>) {
        self.state().rebalance_notice_time = notice_time.map(str::to_string);
    }

    /// Serves `{"action": …, "time": …}` on the spot instance-action path, or 404 with None.
    pub fn set_spot_action(&self, action: Option<(&str, &str)>) {
        self.state().spot_action = action.map(|(a, t)| (a.to_string(), t.to_string()));
    }

    /// The JSON served on the scheduled maintenance path (default `[]`).
    pub fn set_scheduled_events(&self, events: serde_json::Value) {
        self.state().scheduled_events = events;
    }

    /// The ASG target lifecycle state served, or 404 with None.
    pub fn set_lifecycle_state(&self, state: Option<&str>) {
        self.state().lifecycle_state = state.map(str::to_string);
    }

    pub fn set_token_mode(&self, mode: TokenMode) {
        self.state().token_mode = mode;
    }

    /// Issues tokens living `ttl_seconds` (and says so in the TTL header) instead of the
    /// lifetime asked for; None restores the echo real IMDS does.
    pub fn set_token_ttl(&self, ttl_seconds: Option<u64>) {
        self.state().token_ttl_override = ttl_seconds;
    }

    /// The next `count` GETs, on any path, answer `status` (e.g. 500) instead of their answer.
    pub fn fail_next_gets(&self, count: u32, status: u16) {
        self.state().failing_gets = (count, status);
    }

    /// Invalidates every token issued so far: requests carrying one answer 401.
    pub fn expire_tokens(&self) {
        self.state().tokens.clear();
    }

    /// While down, every request is accepted and counted, then the connection is cut before
    /// a complete answer is sent, so clients see a transport error (as when IMDS is unreachable).
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Every answer waits this long first.
    /// Every answer to `path` comes `delay` late (on top of [`ImdsSim::set_delay`]).
    pub fn set_path_delay(&self, path: &str, delay: Duration) {
        self.state().path_delays.insert(path.to_string(), delay);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// Serves `body` with 200 on `path` instead of its normal answer; None restores it.
    pub fn set_garbage(&self, path: &str, body: Option<&str>) {
        let mut state = self.state();
        match body {
            Some(body) => state.garbage.insert(path.to_string(), body.to_string()),
            None => state.garbage.remove(path),
        };
    }

    /// Token PUTs received, answered or not.
    pub fn token_puts(&self) -> u64 {
        self.state().token_puts
    }

    /// Tokens handed out.
    pub fn tokens_issued(&self) -> u64 {
        self.state().tokens_issued
    }

    /// The tokens still valid, as sent in the token header (to look for them in logs).
    pub fn valid_tokens(&self) -> Vec<String> {
        self.state().tokens.keys().cloned().collect()
    }

    /// GETs received on `path`, whatever the answer.
    pub fn gets(&self, path: &str) -> u64 {
        self.state().gets.get(path).copied().unwrap_or(0)
    }

    /// GETs that carried an `X-aws-ec2-metadata-token` header, valid or not.
    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state().connections
    }

    pub fn gets_with_token(&self) -> u64 {
        self.state().gets_with_token
    }

    pub fn gets_without_token(&self) -> u64 {
        self.state().gets_without_token
    }
}

impl Drop for ImdsSim {
    fn drop(&mut self) {
        self.stop.cancel();
        self.server.abort();
    }
}

fn lock(state: &Mutex<SimState>) -> MutexGuard<'_, SimState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn handle(
    State(state): State<Arc<Mutex<SimState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().to_string();
    let (delay, down, hangs) = {
        let mut state = lock(&state);
        if method == Method::PUT && path == TOKEN_PATH {
            state.token_puts += 1;
        } else if method == Method::GET {
            *state.gets.entry(path.clone()).or_default() += 1;
            if headers.contains_key(TOKEN_HEADER) {
                state.gets_with_token += 1;
            } else {
                state.gets_without_token += 1;
            }
        }
        let delay = state.delay + state.path_delays.get(&path).copied().unwrap_or_default();
        let hangs = method == Method::PUT
            && path == TOKEN_PATH
            && state.token_mode == TokenMode::TokenHangs;
        (delay, state.down, hangs)
    };
    if hangs {
        std::future::pending::<()>().await;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if down {
        return cut_connection();
    }
    let mut state = lock(&state);
    match (method, path.as_str()) {
        (Method::PUT, TOKEN_PATH) => issue_token(&mut state, &headers),
        (Method::GET, _) if state.failing_gets.0 > 0 => {
            state.failing_gets.0 -= 1;
            StatusCode::from_u16(state.failing_gets.1)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                .into_response()
        }
        (Method::GET, path) => serve_get(&state, path, &headers),
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

/// A response whose body fails at once: hyper then closes the connection mid-answer.
fn cut_connection() -> Response {
    let failing = futures::stream::once(async {
        Err::<axum::body::Bytes, std::io::Error>(std::io::Error::other("IMDS simulator is down"))
    });
    Response::new(Body::from_stream(failing))
}

fn issue_token(state: &mut SimState, headers: &HeaderMap) -> Response {
    if let TokenMode::TokenRefused(status) | TokenMode::V2RequiredTokenRefused(status) =
        state.token_mode
    {
        return StatusCode::from_u16(status)
            .unwrap_or(StatusCode::FORBIDDEN)
            .into_response();
    }
    let ttl = headers
        .get(TOKEN_TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ttl| (1..=MAX_TOKEN_TTL_SECONDS).contains(ttl));
    let Some(ttl) = ttl.map(|asked| state.token_ttl_override.unwrap_or(asked)) else {
        return (
            StatusCode::BAD_REQUEST,
            "missing or invalid X-aws-ec2-metadata-token-ttl-seconds",
        )
            .into_response();
    };
    let token = random_token(state.tokens_issued);
    state.tokens_issued += 1;
    state.tokens.insert(
        token.clone(),
        tokio::time::Instant::now() + Duration::from_secs(ttl),
    );
    let mut response = token.into_response();
    response
        .headers_mut()
        .insert(TOKEN_TTL_HEADER, HeaderValue::from(ttl));
    response
}

fn random_token(serial: u64) -> String {
    // RandomState is seeded from OS randomness per instance: enough for a test token.
    let part = |salt: u64| RandomState::new().hash_one((serial, salt));
    format!("AQAE{:016x}{:016x}", part(1), part(2))
}

fn serve_get(state: &SimState, path: &str, headers: &HeaderMap) -> Response {
    let now = tokio::time::Instant::now();
    match headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
        Some(token) => {
            if state.tokens.get(token).is_none_or(|expiry| now >= *expiry) {
                return StatusCode::UNAUTHORIZED.into_response();
            }
        }
        None => {
            if matches!(
                state.token_mode,
                TokenMode::V2Required | TokenMode::V2RequiredTokenRefused(_)
            ) {
                return StatusCode::UNAUTHORIZED.into_response();
            }
        }
    }
    if let Some(body) = state.garbage.get(path) {
        return body.clone().into_response();
    }
    let found = match path {
        // An empty id stands for an instance whose id cannot be read.
        INSTANCE_ID_PATH => (!state.instance_id.is_empty()).then(|| state.instance_id.clone()),
        IDENTITY_DOCUMENT_PATH => (!state.instance_id.is_empty())
            .then(|| state.instance.identity_document(&state.instance_id)),
        INSTANCE_TYPE_PATH => Some(state.instance.instance_type.clone()),
        INSTANCE_LIFE_CYCLE_PATH => Some(state.instance.life_cycle.clone()),
        AVAILABILITY_ZONE_PATH => Some(state.instance.availability_zone.clone()),
        LOCAL_IPV4_PATH => Some(state.instance.local_ipv4.clone()),
        LOCAL_HOSTNAME_PATH => Some(state.instance.local_hostname.clone()),
        PUBLIC_HOSTNAME_PATH => state.instance.public.as_ref().map(|(host, _)| host.clone()),
        PUBLIC_IPV4_PATH => state.instance.public.as_ref().map(|(_, ip)| ip.clone()),
        REBALANCE_RECOMMENDATION_PATH => state
            .rebalance_notice_time
            .as_ref()
            .map(|time| json!({ "noticeTime": time }).to_string()),
        SPOT_INSTANCE_ACTION_PATH => state
            .spot_action
            .as_ref()
            .map(|(action, time)| json!({ "action": action, "time": time }).to_string()),
        SCHEDULED_EVENTS_PATH => Some(state.scheduled_events.to_string()),
        ASG_TARGET_LIFECYCLE_STATE_PATH => state.lifecycle_state.clone(),
        _ => None,
    };
    match found {
        Some(body) => body.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
