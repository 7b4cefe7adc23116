//! Sinks: a view's merged rows delivered to a webhook, a Kafka topic or a Delta table,
//! in Spark's output modes (`append`, `update`, `complete`).
//!
//! Each sink is one task in a serving process ([`start`]). Every `every-ms` it reads
//! the view's merged answer (the same one the API gives), plans what to emit against
//! what it delivered ([`plan`]), records the planned delivery in its progress file
//! *before* sending it ([`progress`]), sends it until the target takes it (backoff
//! from 200 ms doubling to `max-backoff-ms`), and then records it as delivered. So a
//! crash re-sends a planned delivery as it was (same rows, same keys), never skips one,
//! and never plans a window twice under different keys. A tick whose answer is missing
//! speed partitions (a speed process rebuilding or unreachable) emits nothing: its
//! rows could undercount.

pub mod delta;
pub mod plan;
pub mod progress;
pub mod targets;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tributary_core::config::{LogConfig, SinkConfig, SinkKind};
use tributary_core::shutdown::Shutdown;
use tributary_core::time::{now_micros, rfc3339};

use crate::error::ServingError;
use crate::merge::{Merger, ViewQuery};
use plan::{Progress, Shape};
use progress::ProgressFile;
use targets::Target;

/// What status and metrics show of one sink.
#[derive(Debug, Default)]
pub struct SinkStatus {
    /// The sink's name.
    pub name: String,
    /// The view it emits.
    pub view: String,
    /// `webhook`, `kafka` or `delta`.
    pub kind: &'static str,
    /// `append`, `update` or `complete`.
    pub mode: &'static str,
    /// Where it delivers (no secrets).
    pub target: std::sync::Mutex<String>,
    /// Deliveries acknowledged since start.
    pub deliveries: AtomicU64,
    /// Rows acknowledged since start.
    pub rows: AtomicU64,
    /// Failed delivery attempts since start.
    pub failures: AtomicU64,
    /// Rows planned and not yet acknowledged.
    pub pending_rows: AtomicU64,
    /// When the oldest unacknowledged delivery was planned (micros; 0: none).
    pub pending_since: AtomicU64,
    /// The last acknowledged delivery's number (survives restarts).
    pub delivered_seq: AtomicU64,
    /// The last failure, or why the sink is waiting.
    pub last_error: std::sync::Mutex<Option<String>>,
}

/// A sink's status as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SinkReport {
    /// The sink's name.
    pub name: String,
    /// The view it emits.
    pub view: String,
    /// Its kind.
    pub kind: String,
    /// Its output mode.
    pub mode: String,
    /// Where it delivers.
    pub target: String,
    /// Deliveries acknowledged since start.
    pub deliveries: u64,
    /// Rows acknowledged since start.
    pub rows: u64,
    /// Failed attempts since start.
    pub failures: u64,
    /// Rows waiting to be acknowledged.
    pub pending_rows: u64,
    /// How long the oldest of them has waited, in milliseconds (0: nothing waits).
    pub lag_ms: u64,
    /// The last acknowledged delivery's number.
    pub delivered_seq: u64,
    /// The last failure, or why it is waiting.
    pub last_error: Option<String>,
}

impl SinkStatus {
    /// The status as reported now.
    pub fn report(&self) -> SinkReport {
        let since = self.pending_since.load(Ordering::Relaxed) as i64;
        SinkReport {
            name: self.name.clone(),
            view: self.view.clone(),
            kind: self.kind.into(),
            mode: self.mode.into(),
            target: self.target.lock().expect("status lock").clone(),
            deliveries: self.deliveries.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            pending_rows: self.pending_rows.load(Ordering::Relaxed),
            lag_ms: if since == 0 {
                0
            } else {
                ((now_micros() - since).max(0) / 1000) as u64
            },
            delivered_seq: self.delivered_seq.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("status lock").clone(),
        }
    }

    fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().expect("status lock") = error;
    }
}

/// The status of each configured sink (empty when this process runs none).
pub type SinkStatuses = Arc<Vec<Arc<SinkStatus>>>;

/// One status per configured sink, before they start.
pub fn statuses(configs: &[SinkConfig]) -> SinkStatuses {
    Arc::new(
        configs
            .iter()
            .map(|c| {
                Arc::new(SinkStatus {
                    name: c.name.clone(),
                    view: c.view.clone(),
                    kind: c.kind.name(),
                    mode: c.mode.name(),
                    ..Default::default()
                })
            })
            .collect(),
    )
}

/// Run one sink until shutdown. Whatever fails (its target unreachable at start, its
/// progress file unwritable) is retried with backoff: a sink never stops the process
/// or another sink, and status shows why it waits.
pub async fn run(
    config: SinkConfig,
    status: Arc<SinkStatus>,
    merger: Arc<Merger>,
    log: LogConfig,
    shutdown: Shutdown,
) -> Result<(), ServingError> {
    let mut backoff = Backoff::new(config.max_backoff_ms);
    loop {
        let attempt = run_once(&config, &status, &merger, &log, &shutdown, &mut backoff);
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) => {
                status.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sink = %config.name, error = %e, "sink failed; starting it again");
                status.set_error(Some(e.to_string()));
                if !backoff.wait(&shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}

/// From the stored progress on; `Ok` at shutdown.
async fn run_once(
    config: &SinkConfig,
    status: &Arc<SinkStatus>,
    merger: &Arc<Merger>,
    log: &LogConfig,
    shutdown: &Shutdown,
    backoff: &mut Backoff,
) -> Result<(), ServingError> {
    let sink_err = |message: &str, source| ServingError::Sink {
        sink: config.name.clone(),
        message: message.into(),
        source,
    };
    let file = ProgressFile::of(merger.storage(), &config.name)?;
    let mut progress = file
        .load()
        .await
        .map_err(|e| sink_err("reading its progress file", e))?;
    status
        .delivered_seq
        .store(progress.delivered, Ordering::Relaxed);
    let target = connect(config, merger, log)
        .await
        .map_err(|e| sink_err("connecting to its target", e))?;
    *status.target.lock().expect("status lock") = target.describe();
    let mut runner = Runner {
        config,
        status,
        merger,
        target,
        file,
        backoff,
        shutdown,
    };
    let every = Duration::from_millis(config.every_ms);
    loop {
        if !runner.flush(&mut progress).await? {
            return Ok(());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        runner.tick(&mut progress).await?;
    }
}

async fn connect(
    config: &SinkConfig,
    merger: &Merger,
    log: &LogConfig,
) -> Result<Box<dyn Target>, targets::DeliveryError> {
    Ok(match config.kind {
        SinkKind::Webhook => Box::new(targets::Webhook::new(config)?),
        SinkKind::Kafka => Box::new(targets::KafkaTopic::new(config, log).await?),
        SinkKind::Delta => {
            let path = config.path.as_deref().ok_or("a delta sink needs `path`")?;
            let url = merger.storage().table_at(path)?;
            let view = merger
                .pipeline()
                .view(&config.view)
                .ok_or("its view is not declared")?;
            Box::new(delta::DeltaSink::new(&config.name, url, &view))
        }
    })
}

/// One sink's loop state.
struct Runner<'a> {
    config: &'a SinkConfig,
    status: &'a SinkStatus,
    merger: &'a Merger,
    /// Where deliveries go.
    target: Box<dyn Target>,
    /// Where progress is recorded, before and after each delivery.
    file: ProgressFile,
    /// Shared with the restart loop, so a failing sink slows down across restarts.
    backoff: &'a mut Backoff,
    shutdown: &'a Shutdown,
}

impl Runner<'_> {
    /// Plan what the view's answer adds to what was planned, and record it.
    async fn tick(&mut self, progress: &mut Progress) -> Result<(), ServingError> {
        let answer = match self
            .merger
            .query(&self.config.view, &ViewQuery::default())
            .await
        {
            Ok(a) => a,
            Err(e) => {
                self.status
                    .set_error(Some(format!("reading the view: {e}")));
                return Ok(());
            }
        };
        if !answer.speed_missing_partitions.is_empty() {
            self.status.set_error(Some(format!(
                "waiting: speed partitions {:?} are not in the view's answer yet",
                answer.speed_missing_partitions
            )));
            return Ok(());
        }
        let view = self
            .merger
            .pipeline()
            .view(&self.config.view)
            .ok_or_else(|| ServingError::UnknownView(self.config.view.clone()))?;
        let shape = Shape {
            view: &view.name,
            window: &view.window,
            keys: &view.keys,
            values: &view.values,
        };
        let planned = progress.planned();
        let now = rfc3339(now_micros());
        let (rows, marks) = plan::plan(self.config.mode, &shape, &planned, &answer.rows, &now);
        if rows.is_empty() {
            return Ok(());
        }
        let mut marks = marks.into_iter();
        for chunk in rows.chunks(self.config.max_rows.max(1)) {
            let m: Vec<_> = marks.by_ref().take(chunk.len()).collect();
            progress.push(chunk.to_vec(), m);
        }
        // Recorded before anything is sent: a crash from here re-sends these as they are.
        self.save(progress).await
    }

    /// Send every pending delivery in order; `false` when shutdown came first.
    async fn flush(&mut self, progress: &mut Progress) -> Result<bool, ServingError> {
        self.show_pending(progress);
        while let Some(d) = progress.pending.first() {
            match self.target.deliver(d).await {
                Ok(()) => {
                    let rows = d.rows.len() as u64;
                    progress.acknowledge();
                    self.save(progress).await?;
                    self.status.deliveries.fetch_add(1, Ordering::Relaxed);
                    self.status.rows.fetch_add(rows, Ordering::Relaxed);
                    self.status
                        .delivered_seq
                        .store(progress.delivered, Ordering::Relaxed);
                    self.status.set_error(None);
                    self.backoff.reset();
                    self.show_pending(progress);
                }
                Err(e) => {
                    self.status.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(sink = %self.config.name, error = %e, "delivery failed; retrying");
                    self.status
                        .set_error(Some(format!("delivery {}: {e}", d.seq)));
                    if !self.backoff.wait(self.shutdown).await {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    fn show_pending(&self, progress: &Progress) {
        let rows: usize = progress.pending.iter().map(|d| d.rows.len()).sum();
        self.status
            .pending_rows
            .store(rows as u64, Ordering::Relaxed);
        let since = &self.status.pending_since;
        match rows {
            0 => since.store(0, Ordering::Relaxed),
            _ if since.load(Ordering::Relaxed) == 0 => {
                since.store(now_micros() as u64, Ordering::Relaxed)
            }
            _ => {}
        }
    }

    async fn save(&self, progress: &Progress) -> Result<(), ServingError> {
        self.file
            .save(progress)
            .await
            .map_err(|source| ServingError::Sink {
                sink: self.config.name.clone(),
                message: "writing its progress file".into(),
                source,
            })
    }
}

/// Waits between attempts: 200 ms, doubling up to a bound.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);

    fn new(max_ms: u64) -> Backoff {
        Backoff {
            next: Backoff::FIRST,
            max: Duration::from_millis(max_ms.max(200)),
        }
    }

    fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }

    /// Wait the current delay and double it; `false` when shutdown came first.
    async fn wait(&mut self, shutdown: &Shutdown) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}
