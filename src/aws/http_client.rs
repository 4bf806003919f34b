//! The AWS SDK's HTTP client on reqwest, the agent's HTTP/1.1 client (webhooks). The
//! SDK's own client (aws-smithy-http-client) links HTTP/2 (h2) and a second hyper client
//! stack that nothing here needs: Auto Scaling, STS (IRSA), EKS Pod Identity and the IMDS
//! credentials all speak HTTP/1.1. The aws-config credential chain gets this client too
//! (src/aws.rs sets it on the loader), so the SDK's client is not linked at all.
//!
//! It behaves as the SDK's own client does where the SDK's retries and timeouts depend on
//! it: failures are classified into the SDK's timeout / io / other kinds (timeouts and
//! lost connections are retried by the standard retry mode, a malformed answer is not);
//! the connect timeout covers connecting, the read timeout the wait for the answer's
//! head; redirects and proxies are left alone; the answer's body is streamed to the SDK.

use std::error::Error as StdError;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use tokio::sync::OnceCell;

#[derive(Debug, thiserror::Error)]
enum HttpClientError {
    /// No crypto provider or no CA certificates: every call fails the same way.
    #[error("building the HTTPS client for AWS")]
    Build(#[source] reqwest::Error),
    #[error("building the HTTPS client for AWS did not finish")]
    BuildAborted(#[source] tokio::task::JoinError),
    /// The SDK's read timeout, the SDK's own wording.
    #[error("HTTP read timeout occurred after {0:?}")]
    ReadTimeout(Duration),
}

/// The client set on the SDK's configuration; cheap to build (no I/O until a first call).
pub(super) fn https_client() -> SharedHttpClient {
    SharedHttpClient::new(ReqwestHttpClient::default())
}

/// One reqwest client (connection pool, TLS roots) per connect timeout the SDK asks for,
/// a handful: the SDK's default (3.1 s) for Auto Scaling and STS, 1 s for the IMDS
/// credentials. reqwest sets the connect timeout per client; the read timeout is per call.
#[derive(Debug, Default)]
struct ReqwestHttpClient {
    clients: Mutex<Vec<(Option<Duration>, LazyClient)>>,
}

/// Built on a connector's first call (see [`Connector::client`]).
type LazyClient = Arc<OnceCell<reqwest::Client>>;

impl HttpClient for ReqwestHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let connect = settings.connect_timeout();
        // A poisoned list is still a valid list: a panic cannot leave it half-written.
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let client = match clients.iter().find(|(timeout, _)| *timeout == connect) {
            Some((_, client)) => Arc::clone(client),
            None => {
                let client = Arc::default();
                clients.push((connect, Arc::clone(&client)));
                client
            }
        };
        SharedHttpConnector::new(Connector {
            connect,
            read: settings.read_timeout(),
            client,
        })
    }
}

#[derive(Debug)]
struct Connector {
    connect: Option<Duration>,
    read: Option<Duration>,
    /// Built on the first call, off the runtime's threads: reading the system's CA
    /// certificates is file I/O, and the SDK asks for its connector inside the call, under
    /// its attempt timeout.
    client: LazyClient,
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let cell = Arc::clone(&self.client);
        let connect = self.connect;
        let read = self.read;
        HttpConnectorFuture::new(async move {
            let client = cell
                .get_or_try_init(|| build_client(connect))
                .await
                .map_err(|error| ConnectorError::other(Box::new(error), None))?;
            let answer = send(client, request);
            match read {
                None => answer.await,
                // As the SDK's own client: the time from sending until the answer's head.
                Some(read) => tokio::time::timeout(read, answer)
                    .await
                    .map_err(|_elapsed| {
                        ConnectorError::timeout(Box::new(HttpClientError::ReadTimeout(read)))
                    })?,
            }
        })
    }
}

async fn build_client(connect: Option<Duration>) -> Result<reqwest::Client, HttpClientError> {
    tokio::task::spawn_blocking(move || {
        crate::tls::ensure_crypto_provider();
        // As the SDK's own client: no proxy unless configured (none is), and 3xx answers
        // go to the SDK, which knows what AWS means by them.
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        if let Some(timeout) = connect {
            builder = builder.connect_timeout(timeout);
        }
        builder.build().map_err(HttpClientError::Build)
    })
    .await
    .map_err(HttpClientError::BuildAborted)?
}

async fn send(
    client: &reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, ConnectorError> {
    let request = request
        .try_into_http1x()
        .map_err(|error| ConnectorError::user(error.into()))?;
    // Every header and value as signed; the body as the SDK streams it (in memory for
    // the Query protocol, so its length is known and sent).
    let request = reqwest::Request::try_from(request.map(reqwest::Body::wrap))
        .map_err(|error| ConnectorError::user(error.into()))?;
    let response = client.execute(request).await.map_err(connector_error)?;
    let response = hyper::Response::<reqwest::Body>::from(response);
    // Header values that are not text fail here, as in the SDK's own client.
    HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
        .map_err(|error| ConnectorError::other(error.into(), None))
}

/// What the SDK's standard retry mode makes of a failure: timeouts and io errors are
/// retried (the request may or may not have been applied: AWS's writes are safe to
/// repeat), `other` without a kind is not.
fn connector_error(error: reqwest::Error) -> ConnectorError {
    match classify(&error) {
        Kind::Timeout => ConnectorError::timeout(error.into()),
        Kind::Io => ConnectorError::io(error.into()),
        Kind::User => ConnectorError::user(error.into()),
        Kind::Other => ConnectorError::other(error.into(), None),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Timeout,
    Io,
    User,
    Other,
}

fn classify(error: &reqwest::Error) -> Kind {
    if error.is_timeout() {
        return Kind::Timeout;
    }
    if error.is_builder() {
        return Kind::User;
    }
    // Refused, reset, DNS, TLS handshake: no answer, so worth another attempt.
    if error.is_connect() || source::<std::io::Error>(error).is_some() {
        return Kind::Io;
    }
    match source::<hyper::Error>(error) {
        // The connection closed before the answer was complete (a pooled connection the
        // server had dropped, a server that died mid-answer).
        Some(hyper)
            if hyper.is_closed() || hyper.is_canceled() || hyper.is_incomplete_message() =>
        {
            Kind::Io
        }
        // A malformed answer: repeating the call would get the same.
        _ => Kind::Other,
    }
}

fn source<'a, E: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    std::iter::successors(Some(error), |&error| error.source())
        .find_map(|error| error.downcast_ref())
}

#[cfg(test)]
mod tests;
