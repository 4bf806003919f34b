//! HTTP to IMDS: blocking I/O on one kept-alive HTTP/1.1 connection, reused poll after poll
//! (a second one only while two requests overlap). The monitor polls from a thread of its
//! own, and each GET is one write and one read on the socket: an async runtime's
//! bookkeeping and its timer wheel's extra wake-ups cost more per poll than the GETs
//! themselves (docs/PERFORMANCE.md). ureq-proto frames the requests and answers (sans-IO);
//! this file moves the bytes. The retry policy is the parent's.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use reqwest::Url;
use tracing::debug;
use ureq_proto::client::{Call, RecvBodyResult, RecvResponseResult, SendRequestResult};
use ureq_proto::{BodyMode, client::state::RecvResponse};

use super::ImdsError;

/// Room for a request head and for the answer bytes read ahead of parsing.
const BUFFER_BYTES: usize = 8 * 1024;
/// IMDS answers are a few hundred bytes; a larger one is not IMDS.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// How far a socket timeout may stray from the request's deadline before it is set
/// again: most reads and writes then need no `setsockopt` of their own.
const TIMEOUT_SLACK: Duration = Duration::from_millis(10);

/// Where IMDS is and the connection kept to it; clones share the connection.
#[derive(Debug, Clone)]
pub(super) struct Transport {
    /// `host:port`, as the socket is opened.
    address: String,
    /// The Host header, built once (else the framing builds it for every request).
    host: HeaderValue,
    /// The base URL without its trailing slash; request URIs are built on it.
    base: String,
    /// The request URI of every path read by name, built once.
    known: Arc<[(&'static str, Uri)]>,
    timeout: Duration,
    /// The open connection between two requests.
    idle: Arc<Mutex<Option<Connection>>>,
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
        let base_text = base.as_str().trim_end_matches('/').to_string();
        let known = known_paths
            .iter()
            .map(|path| {
                let uri = Uri::try_from(format!("{base_text}{path}"))
                    .map_err(|e| invalid(format!("path {path}: {e}")))?;
                Ok((*path, uri))
            })
            .collect::<Result<Vec<_>, ImdsError>>()?;
        Ok(Transport {
            address: format!("{host}:{port}"),
            host: HeaderValue::try_from(host_header).map_err(|e| invalid(e.to_string()))?,
            base: base_text,
            known: known.into(),
            timeout,
            idle: Arc::new(Mutex::new(None)),
        })
    }

    /// One request and its whole answer, within the request timeout; the error is what
    /// went wrong, for the log. Blocks the calling thread.
    pub(super) fn send(
        &self,
        method: Method,
        path: &str,
        header: Option<(HeaderName, HeaderValue)>,
    ) -> Result<Response<Vec<u8>>, String> {
        let deadline = Instant::now()
            .checked_add(self.timeout)
            .ok_or("the request timeout is out of range")?;
        let kept = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut connection) = kept {
            let request = self.request(method.clone(), path, header.clone())?;
            match connection.exchange(request, deadline) {
                Ok((answer, reusable)) => {
                    self.keep(connection, reusable);
                    return Ok(answer);
                }
                // IMDS closed the kept connection meanwhile, before answering anything:
                // the request goes again on a new one, as HTTP clients do for GET and PUT.
                Err(Failure::Stale(error)) => debug!("kept IMDS connection closed: {error}"),
                Err(Failure::Other(error)) => return Err(error),
            }
        }
        let mut connection = Connection::open(&self.address, deadline)?;
        let request = self.request(method, path, header)?;
        let (answer, reusable) = connection
            .exchange(request, deadline)
            .map_err(Failure::into_message)?;
        self.keep(connection, reusable);
        Ok(answer)
    }

    fn keep(&self, connection: Connection, reusable: bool) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if reusable && idle.is_none() {
            *idle = Some(connection);
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        header: Option<(HeaderName, HeaderValue)>,
    ) -> Result<Request<()>, String> {
        let uri = match self.known.iter().find(|(known, _)| *known == path) {
            Some((_, uri)) => uri.clone(),
            None => Uri::try_from(format!("{}{path}", self.base))
                .map_err(|e| format!("invalid path {path:?}: {e}"))?,
        };
        let mut request = Request::new(());
        let sends_body = method == Method::PUT;
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(hyper::header::HOST, self.host.clone());
        if sends_body {
            // An empty body said as such, not as a chunked stream.
            headers.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(0u16));
        }
        if let Some((name, value)) = header {
            headers.insert(name, value);
        }
        Ok(request)
    }
}

/// How a request on a connection failed.
enum Failure {
    /// The connection was closed before any byte of the answer came back.
    Stale(String),
    Other(String),
}

impl Failure {
    fn into_message(self) -> String {
        match self {
            Failure::Stale(error) | Failure::Other(error) => error,
        }
    }
}

/// One socket to IMDS with its buffers, kept between requests.
#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    /// Answer bytes read and not yet taken by the parser: `input[..filled]`.
    input: Vec<u8>,
    filled: usize,
    /// The request head, and body bytes on their way out of the parser.
    output: Vec<u8>,
    /// The socket's read and write timeouts as last set (none at first).
    read_timeout: Duration,
    write_timeout: Duration,
}

impl Connection {
    fn open(address: &str, deadline: Instant) -> Result<Self, String> {
        let connecting =
            |error: &dyn std::fmt::Display| format!("connecting to {address}: {error}");
        let mut last_error = None;
        for socket in address.to_socket_addrs().map_err(|e| connecting(&e))? {
            let remaining = remaining(deadline).map_err(|e| connecting(&e))?;
            match TcpStream::connect_timeout(&socket, remaining) {
                Ok(stream) => {
                    // Requests are one small write each: nothing to gain from Nagle's delay.
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!("TCP_NODELAY on the IMDS connection: {error}");
                    }
                    return Ok(Connection {
                        stream,
                        input: vec![0; BUFFER_BYTES],
                        filled: 0,
                        output: vec![0; BUFFER_BYTES],
                        read_timeout: Duration::ZERO,
                        write_timeout: Duration::ZERO,
                    });
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(match last_error {
            Some(error) => connecting(&io_message(&error)),
            None => connecting(&"the name resolves to no address"),
        })
    }

    /// Writes `request`, reads its answer whole; also says whether the connection can
    /// carry the next request.
    fn exchange(
        &mut self,
        request: Request<()>,
        deadline: Instant,
    ) -> Result<(Response<Vec<u8>>, bool), Failure> {
        let other = |error: &dyn std::fmt::Display| Failure::Other(error.to_string());
        let mut call = Call::new(request).map_err(|e| other(&e))?.proceed();
        let head = call.write(&mut self.output).map_err(|e| other(&e))?;
        self.write(head, deadline)?;
        let call = match call.proceed().map_err(|e| other(&e))? {
            Some(SendRequestResult::RecvResponse(call)) => call,
            Some(SendRequestResult::SendBody(mut call)) => {
                // Only the token PUT sends a body, and it is empty.
                let (_, end) = call.write(&[], &mut self.output).map_err(|e| other(&e))?;
                self.write(end, deadline)?;
                call.proceed()
                    .ok_or_else(|| other(&"the request body did not end"))?
            }
            Some(SendRequestResult::Await100(_)) | None => {
                return Err(other(&"the request could not be sent"));
            }
        };
        let (response, call) = self.read_head(call, deadline)?;
        let mut body = Vec::new();
        let cleanup = match call.proceed() {
            Some(RecvResponseResult::RecvBody(mut call)) => {
                let close_delimited = matches!(call.body_mode(), BodyMode::CloseDelimited);
                loop {
                    let (used, produced) = call
                        .read(&self.input[..self.filled], &mut self.output)
                        .map_err(|e| other(&e))?;
                    self.consume(used);
                    body.extend_from_slice(&self.output[..produced]);
                    if body.len() > MAX_ANSWER_BYTES {
                        return Err(other(&format!("answer over {MAX_ANSWER_BYTES} bytes")));
                    }
                    if !close_delimited && call.can_proceed() {
                        break;
                    }
                    if used > 0 || produced > 0 {
                        continue;
                    }
                    let more = self
                        .fill(deadline, close_delimited)
                        .map_err(|failure| Failure::Other(failure.into_message()))?;
                    if !more {
                        break; // the end of a body that ends with the connection
                    }
                }
                match call.proceed() {
                    Some(RecvBodyResult::Cleanup(call)) => Some(call.must_close_connection()),
                    // A redirect is an answer like any other here; the connection goes.
                    Some(RecvBodyResult::Redirect(_)) | None => None,
                }
            }
            Some(RecvResponseResult::Cleanup(call)) => Some(call.must_close_connection()),
            Some(RecvResponseResult::Redirect(_)) | None => None,
        };
        let reusable = cleanup == Some(false) && self.filled == 0;
        let (parts, ()) = response.into_parts();
        Ok((Response::from_parts(parts, body), reusable))
    }

    fn read_head(
        &mut self,
        mut call: Call<RecvResponse>,
        deadline: Instant,
    ) -> Result<(Response<()>, Call<RecvResponse>), Failure> {
        let mut answered = false;
        loop {
            let (used, response) = call
                .try_response(&self.input[..self.filled], false)
                .map_err(|e| Failure::Other(e.to_string()))?;
            self.consume(used);
            if let Some(response) = response {
                return Ok((response, call));
            }
            if self.filled == self.input.len() {
                if self.input.len() >= MAX_ANSWER_BYTES {
                    return Err(Failure::Other("answer head too large".to_string()));
                }
                self.input.resize(self.input.len() * 2, 0);
            }
            let before = self.filled;
            match self.fill(deadline, false) {
                Ok(_) => answered |= self.filled > before,
                Err(Failure::Other(error)) | Err(Failure::Stale(error)) if answered => {
                    return Err(Failure::Other(error));
                }
                Err(failure) => return Err(failure),
            }
        }
    }

    fn write(&mut self, length: usize, deadline: Instant) -> Result<(), Failure> {
        let bytes = &self.output[..length];
        bound(deadline, &mut self.write_timeout, |left| {
            self.stream.set_write_timeout(Some(left))
        })
        .and_then(|()| self.stream.write_all(bytes))
        .map_err(|error| match error.kind() {
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
                Failure::Stale(format!("sending the request: {}", io_message(&error)))
            }
            _ => Failure::Other(format!("sending the request: {}", io_message(&error))),
        })
    }

    /// Reads more of the answer; false at the end of the stream when `end_allowed`.
    /// An end before any byte of an answer is [`Failure::Stale`].
    fn fill(&mut self, deadline: Instant, end_allowed: bool) -> Result<bool, Failure> {
        let read = bound(deadline, &mut self.read_timeout, |left| {
            self.stream.set_read_timeout(Some(left))
        })
        .and_then(|()| self.stream.read(&mut self.input[self.filled..]));
        match read {
            Ok(0) if end_allowed => Ok(false),
            Ok(0) => Err(Failure::Stale(
                "the connection closed before the answer was complete".to_string(),
            )),
            Ok(n) => {
                self.filled += n;
                Ok(true)
            }
            Err(error) if error.kind() == ErrorKind::ConnectionReset => Err(Failure::Stale(
                format!("reading the answer: {}", io_message(&error)),
            )),
            Err(error) => Err(Failure::Other(format!(
                "reading the answer: {}",
                io_message(&error)
            ))),
        }
    }

    fn consume(&mut self, used: usize) {
        self.input.copy_within(used..self.filled, 0);
        self.filled -= used;
    }
}

/// Time left before `deadline`, as an I/O error once it has passed (a socket timeout
/// cannot be zero).
fn remaining(deadline: Instant) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ErrorKind::TimedOut.into());
    }
    Ok(left)
}

/// Makes a socket timeout, last set to `current`, end within [`TIMEOUT_SLACK`] of
/// `deadline`, calling `set` only when it would not.
fn bound(
    deadline: Instant,
    current: &mut Duration,
    set: impl FnOnce(Duration) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let left = remaining(deadline)?;
    if current.abs_diff(left) > TIMEOUT_SLACK {
        set(left)?;
        *current = left;
    }
    Ok(())
}

/// A socket timeout reads as "timed out" whatever the platform calls it.
fn io_message(error: &std::io::Error) -> String {
    match error.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timed out".to_string(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests;
