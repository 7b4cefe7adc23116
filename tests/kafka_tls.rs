//! Kafka over TLS: `tributary up` with `[log.security] protocol = "ssl"` and the broker's
//! CA reaches its broker through TLS only. tansu 0.6 speaks plaintext only (its
//! `--cert` flag leaves the listener plaintext, and refuses `--key`), so the test puts a
//! TLS terminator (rustls) in front of a tansu of its own (TANSU_BIN, which
//! deploy/test.sh installs): the broker advertises the terminator's address, so every
//! connection librdkafka makes (bootstrap, metadata, produce, fetch, consumer group)
//! goes through a TLS handshake that checks the broker's certificate against the CA.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Tributary, free_port, total_readings};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

const VIEW: &str = "/api/v1/views/signal_by_type";

/// A tansu broker of the test's own, killed when dropped.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker(port: u16, advertised: u16) -> Broker {
    let bin = std::env::var("TANSU_BIN").expect(
        "TANSU_BIN is not set: this test starts a tansu broker of its own; ./deploy/test.sh installs it",
    );
    let child = Command::new(bin)
        .args([
            "broker",
            &format!("--listener-url=tcp://127.0.0.1:{port}"),
            &format!("--advertised-listener-url=tcp://127.0.0.1:{advertised}"),
            "--storage-engine=memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting tansu");
    Broker(child)
}

/// Terminate TLS on `listener` and pass the bytes to the broker at `upstream`.
async fn tls_terminator(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    upstream: SocketAddr,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let Ok(mut broker) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
        });
    }
}

#[tokio::test]
async fn up_reaches_its_broker_over_tls_with_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (broker_port, tls_port) = (free_port(), free_port());
    let _broker = start_broker(broker_port, tls_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", broker_port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "tansu did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A self-signed certificate for 127.0.0.1 is its own CA.
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names).unwrap();
    let ca = dir.path().join("broker-ca.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into()),
        )
        .unwrap();
    let listener = TcpListener::bind(("127.0.0.1", tls_port)).await.unwrap();
    tokio::spawn(tls_terminator(
        listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        SocketAddr::from(([127, 0, 0, 1], broker_port)),
    ));

    let extra = format!(
        "[log]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:{tls_port}\"\ntopic-prefix = \"tls-\"\n\
         tick-interval-ms = 200\n[log.security]\nprotocol = \"ssl\"\nssl-ca-location = \"{}\"\n",
        ca.display()
    );
    let config = Tributary::configure(dir.path(), &extra);
    let t = Tributary::start_config(dir.path(), config).await;
    let events: Vec<_> = (0..20)
        .map(|i| {
            json!({"device": format!("t{i}"), "device_type": "pump", "signal": 30.0,
                        "ts": "2026-01-01T00:01:00Z"})
        })
        .collect();
    let (status, report) = t.post("readings", &json!(events)).await;
    assert_eq!(status, 200, "{report}");
    // Speed layer (consumer) and batch layer (archiver, consumer group) through TLS.
    t.wait_for(VIEW, |v| total_readings(v) == 20).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        t.run_batch().await;
        let (_, v) = t.get(VIEW).await;
        if v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["_source"] == "batch")
        {
            assert_eq!(total_readings(&v), 20, "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the archiver never caught up: {v}\n{}",
            t.logs()
        );
    }
}
