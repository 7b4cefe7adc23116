//! The places a delivery goes: a webhook and a Kafka topic (Delta: `delta.rs`).

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use ring::hmac;
use serde_json::{Value, json};
use tributary_core::config::{LogConfig, SinkConfig};

use super::plan::Delivery;

/// Why one delivery attempt failed (the runner retries it as it was).
pub type DeliveryError = Box<dyn std::error::Error + Send + Sync>;

/// A sink's target: takes one delivery, or says why not.
#[async_trait]
pub trait Target: Send + Sync {
    /// Deliver `delivery` whole; `Ok` once the target has it.
    async fn deliver(&self, delivery: &Delivery) -> Result<(), DeliveryError>;

    /// Where it delivers, for status (no secrets).
    fn describe(&self) -> String;
}

/// The header carrying the body's HMAC-SHA256, as `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-tributary-signature";
/// The header carrying `<sink>:<delivery number>`, the same on every retry.
pub const DELIVERY_HEADER: &str = "x-tributary-delivery";

/// HTTP POST of `{"sink", "view", "mode", "delivery", "rows"}`, signed.
pub struct Webhook {
    sink: String,
    view: String,
    mode: &'static str,
    url: String,
    key: hmac::Key,
    client: reqwest::Client,
}

impl Webhook {
    /// The webhook `config` names (its `url` and `secret` were checked at start-up).
    pub fn new(config: &SinkConfig) -> Result<Webhook, DeliveryError> {
        let secret = config
            .secret
            .as_ref()
            .ok_or("a webhook sink needs `secret`")?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .build()?;
        Ok(Webhook {
            sink: config.name.clone(),
            view: config.view.clone(),
            mode: config.mode.name(),
            url: config.url.clone().ok_or("a webhook sink needs `url`")?,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
            client,
        })
    }
}

/// `sha256=<hex of HMAC-SHA256(key, body)>`, what receivers compare with the header.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    sign(&key, body)
}

fn sign(key: &hmac::Key, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac::sign(key, body).as_ref()))
}

#[async_trait]
impl Target for Webhook {
    async fn deliver(&self, delivery: &Delivery) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(&json!({
            "sink": self.sink,
            "view": self.view,
            "mode": self.mode,
            "delivery": delivery.seq,
            "rows": delivery.rows,
        }))?;
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sign(&self.key, &body))
            .header(DELIVERY_HEADER, format!("{}:{}", self.sink, delivery.seq))
            .body(body)
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        Err(format!("{} answered {status}: {text}", self.url).into())
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

/// One record per row on a topic, keyed by the row's identity (window and keys) so that
/// a window's versions stay in order on one partition; the row's `_key` is in the value.
pub struct KafkaTopic {
    topic: String,
    brokers: String,
    producer: FutureProducer,
    timeout: Duration,
}

impl KafkaTopic {
    /// A producer for `config.topic`, on `config.brokers` or the log's brokers, with the
    /// log's security settings; the topic is created (one partition) when missing.
    pub async fn new(config: &SinkConfig, log: &LogConfig) -> Result<KafkaTopic, DeliveryError> {
        let brokers = config
            .brokers
            .clone()
            .unwrap_or_else(|| log.brokers.clone());
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &brokers);
        for (k, v) in log.security.properties() {
            client.set(k, v);
        }
        for (k, v) in &log.options {
            client.set(k, v);
        }
        let topic = config.topic.clone().ok_or("a kafka sink needs `topic`")?;
        create_topic(&client, &topic).await?;
        let producer: FutureProducer = client
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        Ok(KafkaTopic {
            topic,
            brokers,
            producer,
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
        })
    }
}

async fn create_topic(client: &ClientConfig, topic: &str) -> Result<(), DeliveryError> {
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    let results = admin.create_topics([&new], &AdminOptions::new()).await?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(format!("creating topic `{t}`: {code}").into()),
        }
    }
    Ok(())
}

#[async_trait]
impl Target for KafkaTopic {
    async fn deliver(&self, delivery: &Delivery) -> Result<(), DeliveryError> {
        let mut sends = Vec::with_capacity(delivery.rows.len());
        for (row, (identity, _)) in delivery.rows.iter().zip(&delivery.marks) {
            let payload = serde_json::to_vec(&Value::Object(row.clone()))?;
            let producer = &self.producer;
            let topic = &self.topic;
            sends.push(async move {
                let record = FutureRecord::to(topic).key(identity).payload(&payload);
                producer.send(record, self.timeout).await
            });
        }
        for sent in futures::future::join_all(sends).await {
            if let Err((e, _)) = sent {
                return Err(format!("producing to `{}`: {e}", self.topic).into());
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("kafka://{}/{}", self.brokers, self.topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
