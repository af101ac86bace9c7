//! Request limits in front of every service: a bound on requests in flight that answers
//! `RESOURCE_EXHAUSTED` at once instead of queueing (a flood neither hangs callers nor grows
//! memory), and a too-large message reported as `RESOURCE_EXHAUSTED` (tonic's decoder says
//! `OUT_OF_RANGE`). Health checks are exempt, so probes still answer under a flood.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tonic::Status;
use tower::{Layer, Service};

/// Paths that are never refused for load: the health service.
const EXEMPT_PREFIX: &str = "/grpc.health.v1.Health/";

/// The prefix of tonic's message when a message exceeds `max_decoding_message_size`.
const TOO_LARGE: &str = "Error, decoded message length too large";

#[derive(Debug, Clone)]
pub struct LimitsLayer {
    permits: Arc<Semaphore>,
}

impl LimitsLayer {
    pub fn new(max_concurrent_requests: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent_requests)),
        }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limits {
            inner,
            permits: self.permits.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

type Response = http::Response<tonic::body::Body>;

impl<S, B> Service<http::Request<B>> for Limits<S>
where
    S: Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let permit = if request.uri().path().starts_with(EXEMPT_PREFIX) {
            None
        } else {
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let status = Status::resource_exhausted(
                        "too many requests in flight (server.max_concurrent_requests); retry later",
                    );
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            }
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            drop(permit);
            rewrite_too_large(&mut response);
            Ok(response)
        })
    }
}

/// `OUT_OF_RANGE` "decoded message length too large" → `RESOURCE_EXHAUSTED`, in a
/// trailers-only response (how tonic answers a request it could not decode).
fn rewrite_too_large(response: &mut Response) {
    let headers = response.headers_mut();
    let out_of_range = (tonic::Code::OutOfRange as i32).to_string();
    let is_too_large = headers
        .get("grpc-status")
        .is_some_and(|value| value.as_bytes() == out_of_range.as_bytes())
        && headers
            .get("grpc-message")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|message| message.replace("%20", " ").starts_with(TOO_LARGE));
    if is_too_large {
        let exhausted = (tonic::Code::ResourceExhausted as i32).to_string();
        if let Ok(value) = http::HeaderValue::from_str(&exhausted) {
            headers.insert("grpc-status", value);
        }
    }
}
