//! A built-in source of IoT readings, so `tributary up` shows live data at once.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use tributary_core::config::GeneratorConfig;
use tributary_core::shutdown::Shutdown;
use tributary_core::time::{now_micros, rfc3339};

use crate::error::IngestError;
use crate::service::{Ingest, RawRecord};

const DEVICE_TYPES: &[&str] = &["pump", "fan", "valve", "compressor"];

/// Post readings through the normal ingest path until shutdown.
pub async fn run(
    config: GeneratorConfig,
    ingest: Arc<Ingest>,
    shutdown: Shutdown,
) -> Result<(), IngestError> {
    let tick = Duration::from_millis(100);
    let per_tick = (config.events_per_second as usize).div_ceil(10).max(1);
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = interval.tick() => {}
        }
        let records = {
            let mut rng = rand::rng();
            (0..per_tick)
                .map(|_| {
                    let device = rng.random_range(0..config.devices.max(1));
                    // Mostly on time, a few seconds of jitter, and now and then a reading
                    // that arrives many minutes late: late data is part of the demo.
                    let lateness = if rng.random_bool(0.01) {
                        rng.random_range(0..1_800_000_000i64)
                    } else {
                        rng.random_range(0..3_000_000i64)
                    };
                    RawRecord::Parsed(json!({
                        "device": format!("dev-{device:03}"),
                        "device_type": DEVICE_TYPES[device as usize % DEVICE_TYPES.len()],
                        "signal": (rng.random_range(0.0..100.0f64) * 10.0).round() / 10.0,
                        "ts": rfc3339(now_micros() - lateness),
                    }))
                })
                .collect::<Vec<_>>()
        };
        if let Err(e) = ingest.ingest(&config.stream, records).await {
            tracing::warn!(error = %e, "generator could not ingest");
        }
    }
}
