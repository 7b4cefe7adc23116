//! At most `http.max-connections` open connections per process.
//!
//! The cap sits where the server makes one service per accepted connection: that
//! service holds a permit for as long as the connection lives (hyper drops it when the
//! connection closes). A connection over the cap is still accepted, so that its client
//! hears why instead of waiting in the kernel's backlog: each of its requests gets
//! `503` with `Retry-After` and `Connection: close`. This works alike for plain HTTP
//! (`axum::serve`) and HTTPS (`axum-server`), which both make a service per connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::Service;

use crate::error::ServingError;

/// Wraps a make-service so each connection it makes holds one of `max` permits.
#[derive(Clone)]
pub struct ConnectionCap<M> {
    inner: M,
    permits: Arc<Semaphore>,
    max: usize,
}

impl<M> ConnectionCap<M> {
    pub fn new(inner: M, max: usize) -> Self {
        ConnectionCap {
            inner,
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

impl<M, T> Service<T> for ConnectionCap<M>
where
    M: Service<T, Error = Infallible>,
    M::Future: Send + 'static,
{
    type Response = PerConnection<M::Response>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, target: T) -> Self::Future {
        let permit = self.permits.clone().try_acquire_owned().ok();
        let max = self.max;
        let made = self.inner.call(target);
        Box::pin(async move {
            let service = made.await?;
            Ok(match permit {
                Some(permit) => PerConnection::Admitted {
                    service,
                    _permit: Arc::new(permit),
                },
                None => {
                    tracing::warn!(max, "connection refused: http.max-connections reached");
                    PerConnection::Refused { max }
                }
            })
        })
    }
}

/// The service of one connection: the application, holding a permit (shared by the
/// clones hyper makes per request), or a refusal.
#[derive(Clone)]
pub enum PerConnection<S> {
    Admitted {
        service: S,
        /// Released when the connection (and every clone of its service) is gone.
        _permit: Arc<OwnedSemaphorePermit>,
    },
    Refused {
        max: usize,
    },
}

impl<S, R> Service<R> for PerConnection<S>
where
    S: Service<R, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self {
            PerConnection::Admitted { service, .. } => service.poll_ready(cx),
            PerConnection::Refused { .. } => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: R) -> BoxFuture<'static, Result<Response, Infallible>> {
        match self {
            PerConnection::Admitted { service, .. } => Box::pin(service.call(request)),
            PerConnection::Refused { max } => {
                let mut answer = ServingError::TooManyConnections(*max).into_response();
                let headers = answer.headers_mut();
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                Box::pin(std::future::ready(Ok(answer)))
            }
        }
    }
}
