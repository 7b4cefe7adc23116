//! `tributary probe URL`: a health check for container images that carry no curl.
//! Exits 0 when `URL` answers 2xx within the timeout, 1 otherwise (with the reason).
//! A `tcp://HOST:PORT` URL only has to accept a connection: the recompute cluster's
//! roles speak gRPC and Flight, not HTTP.

use std::time::Duration;

use anyhow::{Context, bail};

pub async fn probe(url: &str, timeout_ms: u64) -> anyhow::Result<()> {
    if let Some(address) = url.strip_prefix("tcp://") {
        return connects(address, Duration::from_millis(timeout_ms)).await;
    }
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

async fn connects(address: &str, timeout: Duration) -> anyhow::Result<()> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e).with_context(|| format!("no answer from tcp://{address}")),
        Err(_) => bail!("no answer from tcp://{address} within {timeout:?}"),
    }
}
