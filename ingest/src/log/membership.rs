//! Consumer-group membership without consuming: a subscribed consumer that pauses every
//! partition it is assigned, so the group coordinator balances partitions across the
//! members while the data itself is read through the log's cursors. The generation
//! counts rebalances, so the owner can go back to its source of truth (the archiver:
//! the master table) whenever its assignment changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use tributary_core::error::{CoreError, Result};
use tributary_core::log::Assignment;

/// The consumer group's current generation, shared with the rebalance callbacks.
pub struct MemberContext {
    generation: AtomicU64,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance
            && let Err(e) = consumer.pause(partitions)
        {
            tracing::warn!(error = %e, "could not pause assigned partitions");
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// This process's membership in one consumer group.
pub struct Membership {
    consumer: Arc<BaseConsumer<MemberContext>>,
    stop: Arc<AtomicBool>,
    /// topic → stream
    streams: HashMap<String, String>,
}

impl Membership {
    /// Join `group`, subscribed to the topics of `topics` (stream → topic).
    pub fn join(
        mut config: ClientConfig,
        group: &str,
        topics: &HashMap<String, String>,
    ) -> Result<Self> {
        let consumer: BaseConsumer<MemberContext> = config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            // A killed member's partitions move on after this long.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .create_with_context(MemberContext {
                generation: AtomicU64::new(0),
            })
            .map_err(|e| CoreError::LogUnavailable(format!("kafka group `{group}`: {e}")))?;
        let names: Vec<&str> = topics.values().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| CoreError::LogUnavailable(format!("kafka group `{group}`: {e}")))?;
        let consumer = Arc::new(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (consumer.clone(), stop.clone());
        // Rebalance callbacks run inside poll; nothing is fetched (partitions paused).
        std::thread::Builder::new()
            .name(format!("kafka-group-{group}"))
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    let _ = c.poll(Duration::from_millis(100));
                }
            })
            .map_err(|e| CoreError::Log(e.to_string()))?;
        Ok(Membership {
            consumer,
            stop,
            streams: topics.iter().map(|(s, t)| (t.clone(), s.clone())).collect(),
        })
    }

    /// The partitions of `stream` assigned to this member now.
    pub fn assignment(&self, stream: &str) -> Result<Assignment> {
        let generation = self.consumer.context().generation.load(Ordering::Acquire);
        let tpl = self
            .consumer
            .assignment()
            .map_err(|e| CoreError::LogUnavailable(format!("kafka assignment: {e}")))?;
        let mut partitions: Vec<u32> = tpl
            .elements()
            .iter()
            .filter(|e| self.streams.get(e.topic()).is_some_and(|s| s == stream))
            .map(|e| e.partition() as u32)
            .collect();
        partitions.sort_unstable();
        Ok(Assignment {
            partitions,
            generation,
        })
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
