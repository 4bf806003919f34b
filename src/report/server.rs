//! The metrics HTTP server (PROMETHEUS_SERVER_PORT, `GET /metrics`) and the bind helper the
//! probes server shares.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::metrics::Metrics;
use super::text_format;

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
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    serve("metrics", "/metrics", listener, app, shutdown).await
}

async fn scrape(State(metrics): State<Metrics>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    match metrics.encode() {
        Ok(text) if text_format::wants_openmetrics(accept) => {
            ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response()
        }
        Ok(text) => (
            [(header::CONTENT_TYPE, text_format::CONTENT_TYPE)],
            text_format::from_openmetrics(&text),
        )
            .into_response(),
        Err(failure) => {
            error!("Encoding the metrics for a scrape failed: {failure}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

pub(super) async fn serve(
    server: &'static str,
    path: &str,
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(|source| ServeError::Serve {
        server,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    info!("Serving {server} at http://{addr}{path}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|source| ServeError::Serve {
            server,
            addr,
            source,
        })
}
