//! Named tasks and graceful shutdown.
//!
//! Every long-running task is spawned through [`Tasks::spawn`] with a name, so that a
//! slow or failed shutdown says which task held it up. A [`Shutdown`] token is passed by
//! value into each layer's `run(config, shutdown)`.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
pub use tokio_util::sync::CancellationToken as Shutdown;

/// Tasks spawned under a name.
#[derive(Default)]
pub struct Tasks {
    handles: Vec<(String, JoinHandle<Result<(), String>>)>,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawn `fut` as a task called `name`; its error is reported by [`Tasks::join`].
    pub fn spawn<F, E>(&mut self, name: impl Into<String>, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let name = name.into();
        let task_name = name.clone();
        let handle = tokio::spawn(async move {
            let result = fut.await.map_err(|e| e.to_string());
            match &result {
                Ok(()) => tracing::debug!(task = %task_name, "task finished"),
                Err(e) => tracing::error!(task = %task_name, error = %e, "task failed"),
            }
            result
        });
        self.handles.push((name, handle));
    }

    /// Wait until any task ends (returning its name and result) or `shutdown` fires.
    pub async fn first_exit(
        &mut self,
        shutdown: &Shutdown,
    ) -> Option<(String, Result<(), String>)> {
        if self.handles.is_empty() {
            shutdown.cancelled().await;
            return None;
        }
        let futures = self.handles.iter_mut().map(|(_, h)| h);
        tokio::select! {
            (res, idx, _) = futures::future::select_all(futures) => {
                let (name, _) = self.handles.remove(idx);
                let res = res.unwrap_or_else(|e| Err(format!("task panicked: {e}")));
                Some((name, res))
            }
            _ = shutdown.cancelled() => None,
        }
    }

    /// Wait for every task, at most `deadline`; returns the names of tasks that did
    /// not finish in time (they are aborted) or failed.
    pub async fn join(self, deadline: Duration) -> Vec<String> {
        let mut problems = Vec::new();
        let until = tokio::time::Instant::now() + deadline;
        for (name, mut handle) in self.handles {
            match tokio::time::timeout_at(until, &mut handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => problems.push(format!("{name}: {e}")),
                Ok(Err(e)) => problems.push(format!("{name}: panicked: {e}")),
                Err(_) => {
                    handle.abort();
                    problems.push(format!("{name}: did not stop within {deadline:?}"));
                }
            }
        }
        problems
    }
}

/// Resolve when SIGINT or SIGTERM arrives.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
