//! HTTP to IMDS: one kept-alive HTTP/1.1 connection, reused poll after poll (a second one
//! only while two requests overlap). IMDS is one link-local host answering tiny bodies, so
//! requests go through hyper's connection API with URIs and headers built once; a general
//! client's pool bookkeeping and redirect, cookie and retry layers cost more per poll than
//! the three GETs themselves (docs/PERFORMANCE.md). The retry policy is the parent's.

use std::error::Error as StdError;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use tokio::net::TcpStream;
use tracing::debug;

use super::ImdsError;

type Sender = SendRequest<Empty<Bytes>>;

/// Where IMDS is and the connection kept to it; clones share the connection.
#[derive(Debug, Clone)]
pub(super) struct Transport {
    /// `host:port`, as the socket is opened.
    address: String,
    host: HeaderValue,
    /// The base URL's path without its trailing slash: "" for IMDS itself.
    prefix: String,
    /// The request URI of every path read by name, built once.
    known: Arc<[(&'static str, Uri)]>,
    timeout: Duration,
    /// The open connection between two requests.
    idle: Arc<Mutex<Option<Sender>>>,
}

/// The base URL as written in METADATA_URL, checked, without its trailing slash.
pub(super) fn parse_base_url(url: &str) -> Result<(String, Url), ImdsError> {
    let invalid = |reason: String| ImdsError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let parsed = Url::parse(url.trim()).map_err(|e| invalid(e.to_string()))?;
    if parsed.scheme() != "http" {
        // IMDS (and NTH's test proxy) serve plain HTTP on a link-local address.
        return Err(invalid(format!(
            "scheme '{}' is not http (IMDS is served over plain HTTP)",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".to_string()));
    }
    Ok((parsed.as_str().trim_end_matches('/').to_string(), parsed))
}

impl Transport {
    pub(super) fn new(
        base: &Url,
        known_paths: &[&'static str],
        timeout: Duration,
    ) -> Result<Self, ImdsError> {
        let invalid = |reason: String| ImdsError::InvalidUrl {
            url: base.to_string(),
            reason,
        };
        let host = base.host_str().unwrap_or_default();
        let port = base.port_or_known_default().unwrap_or(80);
        let host_header = match base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let prefix = base.path().trim_end_matches('/').to_string();
        let known = known_paths
            .iter()
            .map(|path| {
                let uri = Uri::try_from(format!("{prefix}{path}"))
                    .map_err(|e| invalid(format!("path {path}: {e}")))?;
                Ok((*path, uri))
            })
            .collect::<Result<Vec<_>, ImdsError>>()?;
        Ok(Transport {
            address: format!("{host}:{port}"),
            host: HeaderValue::try_from(host_header).map_err(|e| invalid(e.to_string()))?,
            prefix,
            known: known.into(),
            timeout,
            idle: Arc::new(Mutex::new(None)),
        })
    }

    /// One request and its whole answer, within the request timeout; the error is what
    /// went wrong, for the log.
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        header: Option<(HeaderName, HeaderValue)>,
    ) -> Result<Response<Bytes>, String> {
        let request = self.request(method, path, header)?;
        tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .unwrap_or_else(|_| Err("timed out".to_string()))
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        header: Option<(HeaderName, HeaderValue)>,
    ) -> Result<Request<Empty<Bytes>>, String> {
        let uri = match self.known.iter().find(|(known, _)| *known == path) {
            Some((_, uri)) => uri.clone(),
            None => Uri::try_from(format!("{}{path}", self.prefix))
                .map_err(|e| format!("invalid path {path:?}: {e}"))?,
        };
        let mut request = Request::new(Empty::new());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        if let Some((name, value)) = header {
            headers.insert(name, value);
        }
        Ok(request)
    }

    async fn exchange(&self, request: Request<Empty<Bytes>>) -> Result<Response<Bytes>, String> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .filter(|sender| !sender.is_closed());
        let request = match idle {
            Some(mut sender) => match sender.try_send_request(request).await {
                Ok(response) => return self.read(sender, response).await,
                // Not written: IMDS closed the kept connection meanwhile. A new one.
                Err(mut error) => match error.take_message() {
                    Some(request) => request,
                    None => return Err(chain(error.error())),
                },
            },
            None => request,
        };
        let mut sender = self.connect().await?;
        let response = sender
            .try_send_request(request)
            .await
            .map_err(|error| chain(error.error()))?;
        self.read(sender, response).await
    }

    /// Reads the body whole, then keeps the connection for the next request.
    async fn read(
        &self,
        sender: Sender,
        response: Response<Incoming>,
    ) -> Result<Response<Bytes>, String> {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| chain(&e))?.to_bytes();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.is_none() {
            *idle = Some(sender);
        }
        Ok(Response::from_parts(parts, body))
    }

    async fn connect(&self) -> Result<Sender, String> {
        let stream = TcpStream::connect(self.address.as_str())
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.address))?;
        // Requests are one small write each: nothing to gain from Nagle's delay.
        if let Err(error) = stream.set_nodelay(true) {
            debug!("TCP_NODELAY on the IMDS connection: {error}");
        }
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| chain(&e))?;
        // Ends when IMDS closes the connection, or when its sender is dropped (a request
        // that timed out, or a second connection the idle slot had no room for).
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!("IMDS connection closed: {error}");
            }
        });
        Ok(sender)
    }
}

/// hyper's message and its causes ("connection closed before message completed: …").
fn chain(error: &hyper::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_is_checked_and_trailing_slash_dropped() {
        let base = |url: &str| parse_base_url(url).map(|(base, _)| base);
        assert_eq!(
            base("http://169.254.169.254/").ok().as_deref(),
            Some("http://169.254.169.254")
        );
        assert!(matches!(
            base("169.254.169.254"),
            Err(ImdsError::InvalidUrl { .. })
        ));
        assert!(matches!(
            base("ftp://169.254.169.254"),
            Err(ImdsError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn requests_carry_the_host_and_origin_form_paths() {
        let (_, url) = parse_base_url("http://127.0.0.1:1338/proxy/").expect("valid");
        let transport = Transport::new(&url, &["/latest/api/token"], Duration::from_secs(1))
            .expect("transport");
        assert_eq!(transport.address, "127.0.0.1:1338");
        for path in ["/latest/api/token", "/latest/meta-data/instance-id"] {
            let request = transport.request(Method::GET, path, None).expect("request");
            assert_eq!(request.uri().to_string(), format!("/proxy{path}"));
            assert_eq!(request.headers()[HOST], "127.0.0.1:1338");
        }
        let (_, url) = parse_base_url("http://169.254.169.254").expect("valid");
        let transport = Transport::new(&url, &[], Duration::from_secs(1)).expect("transport");
        assert_eq!(transport.address, "169.254.169.254:80");
        let request = transport.request(Method::GET, "/x", None).expect("request");
        assert_eq!(request.headers()[HOST], "169.254.169.254");
    }
}
