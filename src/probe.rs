//! `tributary probe URL`: a health check for container images that carry no curl.
//! Exits 0 when `URL` answers 2xx within the timeout, 1 otherwise (with the reason).

use std::time::Duration;

use anyhow::{Context, bail};

pub async fn probe(url: &str, timeout_ms: u64) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .build()?;
    let answer = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("no answer from {url}"))?;
    let status = answer.status();
    if !status.is_success() {
        let body = answer.text().await.unwrap_or_default();
        bail!("{url} answered {status}: {body}");
    }
    Ok(())
}
