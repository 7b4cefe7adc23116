//! Request rate limits per client address (`http.rate-limit-per-second`, off by
//! default): a token bucket per peer IP (the `governor` crate's GCRA), so one noisy
//! client cannot starve the others. Over the limit a request gets `429` with
//! `Retry-After` and the limit in the reason. `/health` and `/ready` are exempt: load
//! balancers and orchestrators must always reach them.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;

/// Keys kept before idle ones are dropped (each is a few dozen bytes).
const MAX_KEYS: usize = 100_000;

/// `app` with at most `per_second` requests per second per client address, in bursts
/// of up to `burst` (at least `per_second` when 0). `per_second = 0` leaves it as is.
pub fn with_rate_limit(app: Router, per_second: u32, burst: u32) -> Router {
    let Some(rate) = NonZeroU32::new(per_second) else {
        return app;
    };
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    let limiter: Arc<DefaultKeyedRateLimiter<IpAddr>> = Arc::new(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ));
    app.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let limiter = limiter.clone();
            async move {
                let path = req.uri().path();
                if path == "/health" || path == "/ready" {
                    return next.run(req).await;
                }
                let Some(peer) = req
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip())
                else {
                    return next.run(req).await;
                };
                match limiter.check_key(&peer) {
                    Ok(()) => {
                        if limiter.len() > MAX_KEYS {
                            limiter.retain_recent();
                        }
                        next.run(req).await
                    }
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(DefaultClock::default().now());
                        refuse(per_second, burst.get(), wait.as_secs_f64())
                    }
                }
            }
        },
    ))
}

fn refuse(per_second: u32, burst: u32, wait_s: f64) -> Response {
    let message = format!(
        "rate limit: at most {per_second} requests per second per client (bursts of {burst}); retry in {:.0} ms",
        (wait_s * 1000.0).ceil()
    );
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({ "error": message })),
    )
        .into_response();
    let secs = wait_s.ceil().max(1.0) as u64;
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}
