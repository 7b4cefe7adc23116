//! The HTTP edge of a running `tributary up`: per-client rate limits (429 with
//! `Retry-After` and the limit, health checks exempt), HTTPS with a configured
//! certificate (and nothing in plain HTTP on that port), and JSON log lines.

mod common;

use std::time::{Duration, Instant};

use common::{Tributary, free_port};

#[tokio::test]
async fn over_the_rate_limit_a_client_gets_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[http]\nrate-limit-per-second = 5\nrate-limit-burst = 5";
    let t = Tributary::start(dir.path(), extra).await;
    // The launcher's own health polling is exempt, so the bucket is full here.
    let mut statuses = Vec::new();
    let mut refusal = None;
    for _ in 0..20 {
        let r = t
            .client
            .get(format!("{}/api/v1/views", t.base))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 && refusal.is_none() {
            let retry = r.headers()["retry-after"].to_str().unwrap().to_string();
            refusal = Some((retry, r.text().await.unwrap()));
        }
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        (5..=7).contains(&ok),
        "a burst of 5 (plus what refills meanwhile) passes: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let (retry, body) = refusal.expect("some requests were refused");
    assert!(retry.parse::<u64>().unwrap() >= 1, "{retry}");
    assert!(
        body.contains("at most 5 requests per second per client"),
        "{body}"
    );
    // Health checks are never limited.
    for _ in 0..20 {
        let (status, _) = t.get("/health").await;
        assert_eq!(status, 200);
    }
    // The bucket refills.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, body) = t.get("/api/v1/views").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn with_a_certificate_it_serves_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
    let extra = format!(
        "[http]\ntls-cert = \"{}\"\ntls-key = \"{}\"",
        cert_path.display(),
        key_path.display()
    );
    let config = Tributary::configure(dir.path(), &extra);
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("tls.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("--config")
        .arg(&config)
        .arg("up")
        .env("TRIBUTARY_HTTP__ADDR", format!("127.0.0.1:{port}"))
        .stderr(log.try_clone().unwrap())
        .stdout(log)
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
        .https_only(true)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        match client
            .get(format!("https://localhost:{port}/health"))
            .send()
            .await
        {
            Ok(r) => break r,
            Err(e) => {
                let logs = std::fs::read_to_string(dir.path().join("tls.log")).unwrap();
                assert!(
                    Instant::now() < deadline && child.try_wait().unwrap().is_none(),
                    "no HTTPS answer: {e}\n{logs}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(health.status(), 200);
    let r = client
        .post(format!("https://localhost:{port}/api/v1/streams/readings/events"))
        .json(&serde_json::json!([{"device": "d", "device_type": "t", "signal": 20.0, "ts": "2026-01-01T00:00:00Z"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Plain HTTP on the same port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| r.status() != 200),
        "plain HTTP was answered: {plain:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn log_lines_are_json_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = Tributary::configure(dir.path(), "");
    let t = Tributary::start_role(
        dir.path(),
        &config,
        "up",
        &[("TRIBUTARY_LOG_FORMAT", "json")],
    )
    .await;
    let logs = t.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "serving HTTP" && l["level"] == "INFO"),
        "{logs}"
    );
    assert!(!logs.contains(" INFO "), "text lines left: {logs}");
}

/// One request on a new connection; returns its status line and body.
async fn raw_get(addr: &str, path: &str) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    (s, String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn connections_over_the_cap_get_503_and_the_cap_frees_up() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "[http]\nmax-connections = 4").await;
    let addr = t.base.trim_start_matches("http://").to_string();
    // Keep-alive connections stay open while held here (the launcher's client may hold
    // one more, idle).
    let mut held = Vec::new();
    let mut refusal = None;
    for _ in 0..6 {
        let (socket, answer) = raw_get(&addr, "/api/v1/views").await;
        held.push(socket);
        if answer.starts_with("HTTP/1.1 503") {
            refusal = Some(answer);
            break;
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let refusal = refusal.expect("a connection over the cap of 4 is refused");
    assert!(refusal.contains("http.max-connections = 4"), "{refusal}");
    assert!(
        refusal.to_lowercase().contains("connection: close"),
        "{refusal}"
    );
    assert!(refusal.to_lowercase().contains("retry-after"), "{refusal}");
    drop(held);
    // Closed connections give their places back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, answer) = raw_get(&addr, "/api/v1/views").await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cap never freed up: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn probe_exits_zero_on_a_healthy_server_and_says_why_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "").await;
    let probe = |url: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["probe", &url, "--timeout-ms", "2000"])
            .output()
            .unwrap()
    };
    let ok = probe(format!("{}/health", t.base));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let missing = probe(format!("{}/no-such-page", t.base));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    let closed = probe(format!("http://127.0.0.1:{}/health", free_port()));
    assert!(!closed.status.success());
    assert!(String::from_utf8_lossy(&closed.stderr).contains("no answer"));
    // tcp://: a port that accepts connections (the cluster roles' gRPC) or one that does not.
    let open = probe(format!("tcp://{}", t.base.trim_start_matches("http://")));
    assert!(
        open.status.success(),
        "{}",
        String::from_utf8_lossy(&open.stderr)
    );
    let shut = probe(format!("tcp://127.0.0.1:{}", free_port()));
    assert!(!shut.status.success());
    assert!(String::from_utf8_lossy(&shut.stderr).contains("no answer from tcp://"));
}
