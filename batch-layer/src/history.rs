//! The run history: one JSON record per finished run, appended to
//! `<storage-root>/batch-runs.jsonl`, and bounded (`batch.history-limit`): the list keeps
//! the newest runs, and the file is rewritten with them once it holds twice as many.

use std::io::Write;

use tributary_core::storage::Storage;

use crate::run::{RunRecord, RunStatus};

/// Runs kept when nothing else is configured.
pub const DEFAULT_LIMIT: usize = 1_000;

fn history_path(storage: &Storage) -> std::path::PathBuf {
    storage.root().join("batch-runs.jsonl")
}

/// The newest `limit` finished runs of earlier processes (a run cut short by a crash
/// never committed and is not listed). A file of more than twice `limit` lines is
/// rewritten with just those, through a rename so a crash leaves one or the other.
pub(crate) fn load_history(storage: &Storage, limit: usize) -> Vec<RunRecord> {
    let path = history_path(storage);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    let mut runs: Vec<RunRecord> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<RunRecord>(l).ok())
        .collect();
    let lines = text.lines().count();
    let keep_from = runs.len().saturating_sub(limit);
    runs.drain(..keep_from);
    if lines > 2 * limit {
        let tmp = path.with_extension("jsonl.tmp");
        let rewrite = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            for r in &runs {
                let mut line = serde_json::to_vec(r)?;
                line.push(b'\n');
                f.write_all(&line)?;
            }
            f.sync_data()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = rewrite() {
            tracing::warn!(error = %e, "could not shorten the run history file");
        }
    }
    runs
}

pub(crate) fn append_history(storage: &Storage, record: &RunRecord) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(history_path(storage))?;
    let mut line = serde_json::to_vec(record)?;
    line.push(b'\n');
    f.write_all(&line)?;
    f.sync_data()
}

/// Forget the oldest finished runs beyond `limit` (running ones stay).
pub(crate) fn trim(history: &mut Vec<RunRecord>, limit: usize) {
    let mut excess = history.len().saturating_sub(limit);
    history.retain(|r| {
        if excess > 0 && r.status != RunStatus::Running {
            excess -= 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_newest_runs_and_the_file_is_shortened() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let run = |i: usize| {
            serde_json::from_value::<RunRecord>(serde_json::json!({
                "id": format!("run-{i}"), "views": [], "kind": "full", "status": "succeeded",
                "cutoff": null, "rows_in": 0, "rows_out": 0, "files": 0,
                "started_at": "2026-01-01T00:00:00Z", "duration_ms": 1, "error": null,
                "progress": null, "attempts": 1
            }))
            .unwrap()
        };
        for i in 0..25 {
            append_history(&storage, &run(i)).unwrap();
        }
        let runs = load_history(&storage, 10);
        assert_eq!(runs.len(), 10);
        assert_eq!(runs[0].id, "run-15");
        let lines = std::fs::read_to_string(history_path(&storage))
            .unwrap()
            .lines()
            .count();
        assert_eq!(lines, 10, "the file was rewritten with the newest runs");
        let mut h = runs;
        h.push(run(25));
        trim(&mut h, 10);
        assert_eq!((h.len(), h[0].id.as_str()), (10, "run-16"));
    }
}
