//! The metrics HTTP server (PROMETHEUS_SERVER_PORT, `GET /metrics`) and the small HTTP/1
//! server it shares with the probes server: one path each, so hyper (which kube and the AWS
//! SDK link anyway) serves them without a router framework.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::metrics::Metrics;
use super::text_format;

const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Prometheus negotiates this format; it carries `# EOF` and counters' `_total` suffixes.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding the {server} server to {addr}: {source} (is another process using the port?)")]
    Bind {
        server: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving {server} on {addr}: {source}")]
    Serve {
        server: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds a listener for `server` ("metrics", "probes"), with an error that names both.
pub async fn bind(server: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            server,
            addr,
            source,
        })
}

/// Serves `GET /metrics` until `shutdown`; every other path is 404.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    serve("metrics", "/metrics", listener, shutdown, move |headers| {
        scrape(&metrics, headers)
    })
    .await
}

fn scrape(metrics: &Metrics, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    match metrics.encode() {
        Ok(text) if text_format::wants_openmetrics(accept) => {
            reply(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, text.into())
        }
        Ok(text) => reply(
            StatusCode::OK,
            text_format::CONTENT_TYPE,
            text_format::from_openmetrics(&text).into(),
        ),
        Err(failure) => {
            error!("Encoding the metrics for a scrape failed: {failure}");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                Bytes::new(),
            )
        }
    }
}

pub(super) fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// What one request gets: `answer(headers)` for GET or HEAD of `path`, 405 for another method
/// there, 404 elsewhere.
fn route(
    path: &str,
    request: &Request<Incoming>,
    answer: &impl Fn(&HeaderMap) -> Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    if request.uri().path() != path {
        return reply(StatusCode::NOT_FOUND, "text/plain", Bytes::new());
    }
    match *request.method() {
        Method::GET => answer(request.headers()),
        Method::HEAD => {
            let mut response = answer(request.headers());
            *response.body_mut() = Full::new(Bytes::new());
            response
        }
        _ => {
            let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", Bytes::new());
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
            response
        }
    }
}

/// Accepts HTTP/1 connections on `listener` until `shutdown`, answering `GET path` with
/// `answer(headers)`. A connection that fails is logged and dropped; only the listener failing
/// ends the server with an error.
pub(super) async fn serve<F>(
    server: &'static str,
    path: &str,
    listener: TcpListener,
    shutdown: CancellationToken,
    answer: F,
) -> Result<(), ServeError>
where
    F: Fn(&HeaderMap) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let addr = listener.local_addr().map_err(|source| ServeError::Serve {
        server,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    info!("Serving {server} at http://{addr}{path}");
    let path: Arc<str> = Arc::from(path);
    let answer = Arc::new(answer);
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(failure) if is_per_connection(&failure) => {
                    debug!("Accepting a {server} connection failed: {failure}");
                    continue;
                }
                // Out of file descriptors, say: it may pass, so pause instead of spinning.
                Err(failure) => {
                    error!("Accepting a {server} connection failed, pausing 1s: {failure}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let path = path.clone();
        let answer = answer.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = route(&path, &request, answer.as_ref());
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(failure) = result {
                debug!("A {server} connection ended with an error: {failure}");
            }
        });
    }
}

/// Failures of one incoming connection (reset before it was accepted): the next accept works.
fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    )
}
