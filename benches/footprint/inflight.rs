//! A tower layer on the kube client that counts requests in flight, and the most seen at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::Result;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Counts requests in flight through the kube client, and the most seen at once.
#[derive(Clone, Default)]
pub struct InFlight {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl InFlight {
    /// The most requests seen in flight at once.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

impl<S> tower::Layer<S> for InFlight {
    type Service = InFlightService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InFlightService {
            inner,
            counter: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct InFlightService<S> {
    inner: S,
    counter: InFlight,
}

impl<S, R> tower::Service<R> for InFlightService<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let now = self.counter.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.counter.max.fetch_max(now, Ordering::SeqCst);
        let counter = self.counter.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let answer = response.await;
            counter.now.fetch_sub(1, Ordering::SeqCst);
            answer
        })
    }
}

/// A client like the agent's (kube's own retries off, same timeouts) that counts in-flight requests.
pub fn counting_client(url: &str, counter: &InFlight) -> Result<kube::Client> {
    let mut config = kube::Config::new(url.parse()?);
    config.default_retry = false;
    config.read_timeout = Some(Duration::from_secs(20));
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(counter)
        .build())
}
