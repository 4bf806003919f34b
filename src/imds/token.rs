//! The IMDSv2 session token: asked for once, sent on every GET until shortly before it
//! expires, and IMDSv1 for a while when none can be had (NTH's rules).

use std::fmt;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::transport::Method;
use super::{ImdsClient, TOKEN_PATH, TOKEN_TTL_HEADER};

/// NTH asks for one-hour tokens.
const TOKEN_TTL_SECONDS: u64 = 3600;
/// NTH refreshes the token when this many seconds or fewer remain.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(15);

#[derive(Debug, Default)]
pub(super) struct TokenCache {
    mode: TokenMode,
    /// Whether the switch to IMDSv1 was already logged at warn, so it is said once per episode.
    v1_announced: bool,
}

#[derive(Debug, Default)]
enum TokenMode {
    #[default]
    Unknown,
    V2 {
        token: Token,
        refresh_at: Instant,
    },
    V1 {
        retry_v2_at: Instant,
    },
}

/// An IMDSv2 token: a secret, so its Debug output does not show it. Clones share it.
#[derive(Clone)]
pub(super) struct Token(Arc<str>);

impl Token {
    pub(super) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(Sensitive)")
    }
}

impl ImdsClient {
    /// The token to send, asking for one when none is cached, it is about to expire, or the
    /// IMDSv1 fallback period is over. None means IMDSv1.
    pub(super) fn current_token(&self) -> Option<Token> {
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
        self.renew_token().ok()
    }

    /// Asks IMDS for a new token and records the outcome: the token, or IMDSv1 for a while.
    pub(super) fn renew_token(&self) -> Result<Token, String> {
        let outcome = self.request_token();
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
    fn request_token(&self) -> Result<(Token, Duration), String> {
        let ttl_asked = TOKEN_TTL_SECONDS.to_string();
        let answer = self.transport.send(
            Method::Put,
            TOKEN_PATH,
            Some((TOKEN_TTL_HEADER, ttl_asked.as_bytes())),
            Some(TOKEN_TTL_HEADER),
        )?;
        if !answer.status.is_success() {
            return Err(format!("HTTP {}", answer.status.as_u16()));
        }
        let ttl_seconds = answer
            .header()
            .and_then(|v| v.trim().parse::<u64>().ok())
            // Never longer than asked for: an absurd header must not overflow the clock.
            .map_or(TOKEN_TTL_SECONDS, |ttl| ttl.min(TOKEN_TTL_SECONDS));
        let text = answer.text();
        let token = text.trim();
        if token.is_empty() {
            return Err("empty token".to_string());
        }
        // It goes into a header line on every GET.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token is not a valid HTTP header value".to_string());
        }
        let token = Token(token.into());
        debug!(ttl_seconds, "got an IMDSv2 token");
        Ok((token, Duration::from_secs(ttl_seconds)))
    }
}
