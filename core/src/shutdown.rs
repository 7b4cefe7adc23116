//! Named tasks and graceful shutdown.
//!
//! Every long-running task is spawned through [`Tasks::spawn`] with a name, so that a
//! slow or failed shutdown says which task held it up. Tasks started while serving
//! requests (live streams, batch runs started through the API) go through a
//! [`TaskSet`] that the same shutdown waits for. A [`Shutdown`] token is passed by value
//! into each layer's `run(config, shutdown)`.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
pub use tokio_util::sync::CancellationToken as Shutdown;
use tokio_util::task::TaskTracker;

/// Tasks spawned under a name.
#[derive(Default)]
pub struct Tasks {
    handles: Vec<(String, JoinHandle<Result<(), String>>)>,
    /// Short-lived tasks spawned by request handlers; waited for at shutdown.
    requests: TaskSet,
}

/// Tasks a request handler starts and the process must not forget at shutdown.
#[derive(Clone, Default)]
pub struct TaskSet {
    tracker: TaskTracker,
}

impl TaskSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawn `fut`, to be waited for by the shutdown of the [`Tasks`] this set belongs to.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

/// How a process's tasks ended, for its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// A signal asked for the stop and every task ended in time without an error.
    Clean,
    /// A task failed or ended on its own; the process stopped because of it.
    TaskEnded(String),
    /// The stop was asked for, but tasks failed while stopping or overran the deadline
    /// (they were aborted).
    Unclean(Vec<String>),
    /// A second signal arrived while stopping: the process exits at once.
    Forced,
}

impl Tasks {
    /// No tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The set request handlers spawn their tasks into.
    pub fn requests(&self) -> TaskSet {
        self.requests.clone()
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
        // Once the stop is asked for, tasks ending is what is expected, not news.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            (res, idx, _) = futures::future::select_all(futures) => {
                let (name, _) = self.handles.remove(idx);
                let res = res.unwrap_or_else(|e| Err(format!("task panicked: {e}")));
                Some((name, res))
            }
        }
    }

    /// Wait for every task (and every request task), at most `deadline`; returns the
    /// tasks that did not finish in time (they are aborted) or failed.
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
        self.requests.tracker.close();
        if tokio::time::timeout_at(until, self.requests.tracker.wait())
            .await
            .is_err()
        {
            problems.push(format!(
                "{} request task(s) (live streams, batch runs) did not stop within {deadline:?}",
                self.requests.len()
            ));
        }
        problems
    }

    /// After the first task ends or a signal arrives: stop everything within
    /// `deadline`, and exit at once on a second signal.
    pub async fn supervise(mut self, shutdown: Shutdown, deadline: Duration) -> StopOutcome {
        let ended = tokio::select! {
            exit = self.first_exit(&shutdown) => exit,
            _ = signal() => None,
        };
        shutdown.cancel();
        let ended = ended.map(|(name, result)| match result {
            Err(e) => format!("task `{name}` failed: {e}"),
            Ok(()) => format!("task `{name}` stopped unexpectedly"),
        });
        let problems = tokio::select! {
            problems = self.join(deadline) => problems,
            _ = signal() => return StopOutcome::Forced,
        };
        for p in &problems {
            tracing::warn!("shutdown: {p}");
        }
        match (ended, problems.is_empty()) {
            (Some(e), _) => StopOutcome::TaskEnded(e),
            (None, true) => StopOutcome::Clean,
            (None, false) => StopOutcome::Unclean(problems),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_task_that_overruns_makes_the_stop_unclean() {
        let tasks = Tasks::new();
        let requests = tasks.requests();
        requests.spawn(std::future::pending::<()>());
        let problems = tasks.join(Duration::from_millis(50)).await;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("request task"), "{problems:?}");
    }

    #[tokio::test]
    async fn finished_request_tasks_leave_a_clean_stop() {
        let mut tasks = Tasks::new();
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        tasks.spawn("worker", async move {
            s.cancelled().await;
            Ok::<(), String>(())
        });
        tasks.requests().spawn(async {});
        shutdown.cancel();
        assert_eq!(
            tasks.supervise(shutdown, Duration::from_secs(5)).await,
            StopOutcome::Clean
        );
    }

    #[tokio::test]
    async fn a_task_that_fails_is_named_in_the_outcome() {
        let mut tasks = Tasks::new();
        tasks.spawn("broken", async { Err::<(), _>("disk gone") });
        match tasks
            .supervise(Shutdown::new(), Duration::from_secs(5))
            .await
        {
            StopOutcome::TaskEnded(e) => assert!(e.contains("broken") && e.contains("disk gone")),
            other => panic!("{other:?}"),
        }
    }
}
