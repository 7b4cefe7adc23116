//! A speed layer in another process, reached over its internal endpoint.

use async_trait::async_trait;
use tributary_core::CoreError;

use crate::SpeedStats;
use crate::server::{
    COVERAGE, GENERATION, INGEST_POSITION, MAX_EVENT_TS, RELEASED_CUTOFF, REVISION, SEGMENTS,
};
use crate::source::{Coverage, Snapshot, SpeedSource, from_ipc};

/// A speed layer in another process, reached over its HTTP API (what `tributary serve` uses).
pub struct RemoteSpeed {
    base: String,
    client: reqwest::Client,
    /// Bearer token for an endpoint guarded by API tokens.
    token: Option<String>,
}

fn unavailable(base: &str, e: impl std::fmt::Display) -> CoreError {
    CoreError::LogUnavailable(format!("speed layer at {base}: {e}"))
}

impl RemoteSpeed {
    /// `base` is the speed process's URL, e.g. `http://127.0.0.1:8081`.
    pub fn new(base: &str) -> Self {
        RemoteSpeed {
            base: base.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .expect("a default HTTP client builds"),
            token: None,
        }
    }

    /// Present `token` (as `Authorization: Bearer`) on every call.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Where the process is reached.
    pub fn base(&self) -> &str {
        &self.base
    }
}

fn header<T: std::str::FromStr>(resp: &reqwest::Response, name: &str) -> Option<T> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl RemoteSpeed {
    /// Send a request to the speed process with the token; any answer.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CoreError> {
        let request = match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        request.send().await.map_err(|e| unavailable(&self.base, e))
    }

    /// Send a request to the speed process; anything but a 2xx answer is an error.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CoreError> {
        self.expect_success(self.send(request).await?)
    }

    fn expect_success(&self, resp: reqwest::Response) -> Result<reqwest::Response, CoreError> {
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(unavailable(
                &self.base,
                format!("answered {}", resp.status()),
            ))
        }
    }
}

#[async_trait]
impl SpeedSource for RemoteSpeed {
    async fn snapshot(
        &self,
        view: &str,
        cutoff: i64,
        known: Option<u64>,
    ) -> Result<Snapshot, CoreError> {
        let mut url = format!(
            "{}/internal/v1/views/{view}/states?cutoff={cutoff}",
            self.base
        );
        if let Some(k) = known {
            url.push_str(&format!("&known={k}"));
        }
        let resp = self.send(self.client.get(url)).await?;
        if resp.status() == reqwest::StatusCode::CONFLICT
            && let Some(released) = header(&resp, RELEASED_CUTOFF)
        {
            return Err(CoreError::StaleCutoff {
                view: view.to_string(),
                requested: cutoff,
                released,
            });
        }
        let resp = self.expect_success(resp)?;
        let max_event_ts = header(&resp, MAX_EVENT_TS);
        let generation = header(&resp, GENERATION);
        let coverage: Coverage = resp
            .headers()
            .get(COVERAGE)
            .and_then(|v| serde_json::from_slice(v.as_bytes()).ok())
            .ok_or_else(|| unavailable(&self.base, "answered without its coverage"))?;
        let ingest_position = header(&resp, INGEST_POSITION);
        let segments = header(&resp, SEGMENTS).unwrap_or(0);
        let revision = header(&resp, REVISION).unwrap_or(0);
        let bytes = resp.bytes().await.map_err(|e| unavailable(&self.base, e))?;
        Ok(Snapshot {
            states: from_ipc(&bytes)?,
            max_event_ts,
            ingest_position,
            segments,
            // Unique to the speed process's start (see `SpeedLayer::published_generation`).
            generation,
            coverage: vec![coverage],
            revision,
        })
    }

    async fn release(&self, view: &str, cutoff: i64) -> Result<(), CoreError> {
        let url = format!(
            "{}/internal/v1/views/{view}/release?cutoff={cutoff}",
            self.base
        );
        self.call(self.client.post(url)).await.map(|_| ())
    }

    async fn stats(&self) -> Result<SpeedStats, CoreError> {
        let url = format!("{}/internal/v1/stats", self.base);
        let resp = self.call(self.client.get(url)).await?;
        resp.json().await.map_err(|e| unavailable(&self.base, e))
    }
}
