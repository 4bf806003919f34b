//! HTTP to IMDS: blocking I/O on one kept-alive HTTP/1.1 connection, reused poll after poll
//! (a second one only while two requests overlap). The monitor polls from a thread of its
//! own, and each GET is one write and one read on the socket: an async runtime's
//! bookkeeping and its timer wheel's extra wake-ups cost more per poll than the GETs
//! themselves (docs/PERFORMANCE.md).
//!
//! A request head is a few fixed lines, written straight into the connection's buffer;
//! answers are parsed by `httparse` (hyper's parser), and their bodies framed as RFC 9112
//! §6.3 says: Content-Length, chunked (`httparse::parse_chunk_size`), or until the
//! connection closes ([`wire`] has those decisions). A general HTTP client builds header
//! maps and URIs for every request, and that code, cold after two idle seconds, cost a
//! poll more than its three round trips (docs/PERFORMANCE.md). The retry policy is the
//! parent's.

use std::io::{ErrorKind, Read, Write};
use std::mem::MaybeUninit;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use reqwest::Url;
use tracing::debug;

use super::ImdsError;
pub(super) use wire::Method;
use wire::{BodyEnd, Head, MAX_HEADERS, check_request, head, write_head};

mod wire;

/// Room for a request head and for the answer bytes read ahead of parsing.
const BUFFER_BYTES: usize = 8 * 1024;
/// IMDS answers are a few hundred bytes; a larger one is not IMDS.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// How far a socket timeout may stray from the request's deadline before it is set
/// again: most reads and writes then need no `setsockopt` of their own.
const TIMEOUT_SLACK: Duration = Duration::from_millis(10);

/// One answer, read whole.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: StatusCode,
    body: Vec<u8>,
    /// The value of the header the request asked for, when the answer has it as text.
    header: Option<String>,
}

impl Answer {
    pub(super) fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text; IMDS answers ASCII, anything else is replaced, not refused.
    pub(super) fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    pub(super) fn header(&self) -> Option<&str> {
        self.header.as_deref()
    }
}

/// Where IMDS is and the connection kept to it; clones share the connection.
#[derive(Debug, Clone)]
pub(super) struct Transport {
    /// `host:port`, as the socket is opened.
    address: String,
    /// The Host header's value.
    host: String,
    /// The base URL's path without its trailing slash, before every request's path.
    prefix: String,
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
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(
            "a query or fragment cannot go before each request's path".to_string(),
        ));
    }
    Ok((parsed.as_str().trim_end_matches('/').to_string(), parsed))
}

impl Transport {
    pub(super) fn new(base: &Url, timeout: Duration) -> Transport {
        let host = base.host_str().unwrap_or_default();
        let port = base.port_or_known_default().unwrap_or(80);
        Transport {
            address: format!("{host}:{port}"),
            host: match base.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_string(),
            },
            prefix: base.path().trim_end_matches('/').to_string(),
            timeout,
            idle: Arc::new(Mutex::new(None)),
        }
    }

    /// One request with at most one header of the caller's, and its whole answer with the
    /// value of its header `wanted` (any case), within the request timeout; the error is
    /// what went wrong, for the log. Blocks the thread.
    pub(super) fn send(
        &self,
        method: Method,
        path: &str,
        header: Option<(&str, &[u8])>,
        wanted: Option<&str>,
    ) -> Result<Answer, String> {
        let deadline = Instant::now()
            .checked_add(self.timeout)
            .ok_or("the request timeout is out of range")?;
        check_request(path, header)?;
        let kept = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let request = |connection: &mut Connection| {
            let target = (self.prefix.as_str(), path);
            write_head(&mut connection.output, method, &self.host, target, header);
            connection.exchange(deadline, wanted)
        };
        if let Some(mut connection) = kept {
            match request(&mut connection) {
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
        let (answer, reusable) = request(&mut connection).map_err(Failure::into_message)?;
        self.keep(connection, reusable);
        Ok(answer)
    }

    fn keep(&self, connection: Connection, reusable: bool) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if reusable && idle.is_none() {
            *idle = Some(connection);
        }
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

    fn other(error: impl std::fmt::Display) -> Failure {
        Failure::Other(error.to_string())
    }
}

/// One socket to IMDS with its buffers, kept between requests.
#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    /// Answer bytes read and not yet taken: `input[..filled]`.
    input: Vec<u8>,
    filled: usize,
    /// The request head on its way out.
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
                        output: Vec::with_capacity(BUFFER_BYTES),
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

    /// Writes the request head in `output`, reads its answer whole; also says whether
    /// the connection can carry the next request.
    fn exchange(
        &mut self,
        deadline: Instant,
        wanted: Option<&str>,
    ) -> Result<(Answer, bool), Failure> {
        self.write(deadline)?;
        let head = self.read_head(deadline, wanted)?;
        self.consume(head.length);
        let mut body = Vec::new();
        match head.body {
            BodyEnd::Length(length) => {
                check_size(length)?;
                body.reserve_exact(length);
                self.take(length, &mut body, deadline)?;
            }
            BodyEnd::Chunked => self.read_chunks(&mut body, deadline)?,
            BodyEnd::Close => loop {
                body.extend_from_slice(&self.input[..self.filled]);
                self.consume(self.filled);
                check_size(body.len())?;
                if !self.fill(deadline, true)? {
                    break;
                }
            },
        }
        let reusable = head.keep_alive && head.body != BodyEnd::Close && self.filled == 0;
        let answer = Answer {
            status: head.status,
            body,
            header: head.wanted,
        };
        Ok((answer, reusable))
    }

    /// Reads until a final answer's head is in `input[..length]` (interim 1xx answers
    /// are read past).
    fn read_head(&mut self, deadline: Instant, wanted: Option<&str>) -> Result<Head, Failure> {
        let mut answered = false;
        loop {
            if self.filled > 0 {
                // Left uninitialised: httparse writes the headers it finds, and a poll
                // reads three heads.
                let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
                let mut response = httparse::Response::new(&mut []);
                let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                    &mut response,
                    &self.input[..self.filled],
                    &mut headers,
                );
                match parsed {
                    Ok(httparse::Status::Complete(length)) => {
                        let code = response.code.unwrap_or_default();
                        if (100..200).contains(&code) && code != 101 {
                            self.consume(length);
                            continue;
                        }
                        return head(&response, length, wanted).map_err(Failure::Other);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(error) => {
                        return Err(Failure::other(format!("malformed answer: {error}")));
                    }
                }
            }
            if !self.make_room() {
                return Err(Failure::other("answer head too large"));
            }
            let before = self.filled;
            match self.fill(deadline, false) {
                Ok(_) => answered |= self.filled > before,
                Err(failure) if answered => {
                    return Err(Failure::Other(failure.into_message()));
                }
                Err(failure) => return Err(failure),
            }
        }
    }

    /// Moves `length` body bytes into `bytes`, reading as needed.
    fn take(
        &mut self,
        length: usize,
        bytes: &mut Vec<u8>,
        deadline: Instant,
    ) -> Result<(), Failure> {
        let mut left = length;
        loop {
            let now = left.min(self.filled);
            bytes.extend_from_slice(&self.input[..now]);
            self.consume(now);
            left -= now;
            if left == 0 {
                return Ok(());
            }
            self.fill(deadline, false).map_err(cut)?;
        }
    }

    /// A chunked body, decoded into `bytes`; trailers are read past.
    fn read_chunks(&mut self, bytes: &mut Vec<u8>, deadline: Instant) -> Result<(), Failure> {
        let start = bytes.len();
        loop {
            let size = match httparse::parse_chunk_size(&self.input[..self.filled]) {
                Ok(httparse::Status::Complete((used, size))) => {
                    self.consume(used);
                    size
                }
                Ok(httparse::Status::Partial) => {
                    self.fill_or_grow(deadline)?;
                    continue;
                }
                Err(_) => return Err(Failure::other("malformed chunk size")),
            };
            if size == 0 {
                return self.read_trailers(deadline);
            }
            let size = usize::try_from(size).map_err(|_| Failure::other("chunk too large"))?;
            check_size((bytes.len() - start).saturating_add(size))?;
            self.take(size, bytes, deadline)?;
            while self.filled < 2 {
                self.fill(deadline, false).map_err(cut)?;
            }
            if &self.input[..2] != b"\r\n" {
                return Err(Failure::other("malformed chunk end"));
            }
            self.consume(2);
        }
    }

    fn read_trailers(&mut self, deadline: Instant) -> Result<(), Failure> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(&self.input[..self.filled], &mut headers) {
                Ok(httparse::Status::Complete((used, _))) => {
                    self.consume(used);
                    return Ok(());
                }
                Ok(httparse::Status::Partial) => self.fill_or_grow(deadline)?,
                Err(_) => return Err(Failure::other("malformed trailers")),
            }
        }
    }

    /// Reads more, making room first when the buffer is full (a line longer than it).
    fn fill_or_grow(&mut self, deadline: Instant) -> Result<(), Failure> {
        if !self.make_room() {
            return Err(too_large());
        }
        self.fill(deadline, false).map(|_| ()).map_err(cut)
    }

    /// Doubles a full input buffer, up to [`MAX_ANSWER_BYTES`]; false when it is full at
    /// that size.
    fn make_room(&mut self) -> bool {
        if self.filled < self.input.len() {
            return true;
        }
        if self.input.len() >= MAX_ANSWER_BYTES {
            return false;
        }
        self.input.resize(self.input.len() * 2, 0);
        true
    }

    fn write(&mut self, deadline: Instant) -> Result<(), Failure> {
        let bytes = &self.output;
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

/// A failure once part of the answer is in: never a reason to send the request again.
fn cut(failure: Failure) -> Failure {
    Failure::Other(failure.into_message())
}

fn check_size(body: usize) -> Result<(), Failure> {
    if body > MAX_ANSWER_BYTES {
        return Err(too_large());
    }
    Ok(())
}

fn too_large() -> Failure {
    Failure::other(format!("answer over {MAX_ANSWER_BYTES} bytes"))
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
