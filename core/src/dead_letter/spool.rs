//! The dead-letter spool: letters are acknowledged once they are durable here, on
//! local disk, and moved into the stream's Delta table in the background.
//!
//! A Delta commit costs tens of milliseconds; an fsync of a few small records costs
//! one or two. So a request that carries a bad record waits for the spool, not for
//! Delta, and many such requests share one Delta commit a moment later.
//!
//! redb gives crash-safe transactions with fsync on commit. One writer thread gathers
//! every append waiting at that moment into one transaction (group commit), as the
//! embedded log does. Each stream's letters are numbered by a sequence that never goes
//! back (its next value is kept in the database), and the Delta commit that takes them
//! carries, as a `txn` action, the last number it took under this spool's own app id.
//! A crash between that commit and the removal of the letters from the spool is
//! therefore seen at the next flush, and those letters are dropped, not committed twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::oneshot;

use super::StoredLetter;
use crate::error::CoreError;
use crate::time::now_micros;

/// The spool's identity and each stream's next sequence number.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const NEXT: TableDefinition<&str, u64> = TableDefinition::new("next");

fn letters_table(stream: &str) -> String {
    format!("letters/{stream}")
}

struct Append {
    stream: String,
    payloads: Vec<Vec<u8>>,
    reply: oneshot::Sender<Result<(), String>>,
}

pub(super) struct Spool {
    db: Arc<Database>,
    /// Where the database lives, for error messages.
    path: PathBuf,
    /// The Delta `txn` app id under which this spool records what it committed. It is
    /// unique to this database file, so a spool made anew (its numbers starting again
    /// at zero) is never mistaken for one whose letters were already committed.
    app_id: String,
    /// `None` only while dropping, so the writer thread sees the channel close.
    writer: Option<std::sync::mpsc::Sender<Append>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Spool {
    /// Open (or create) the spool at `path`; `None` when another process holds it.
    pub(super) fn open(path: &Path) -> Result<Option<Spool>, CoreError> {
        let err = |e: &dyn std::fmt::Display| spool_err(path, e);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Ok(None),
            Err(e) => return Err(err(&e)),
        };
        let txn = db.begin_write().map_err(|e| err(&e))?;
        let id = {
            let mut meta = txn.open_table(META).map_err(|e| err(&e))?;
            let existing = meta
                .get("id")
                .map_err(|e| err(&e))?
                .map(|v| v.value().to_string());
            match existing {
                Some(id) => id,
                None => {
                    let id = format!("{:x}-{:x}", now_micros(), std::process::id());
                    meta.insert("id", id.as_str()).map_err(|e| err(&e))?;
                    id
                }
            }
        };
        txn.open_table(NEXT).map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))?;
        let db = Arc::new(db);
        let (tx, rx) = std::sync::mpsc::channel::<Append>();
        let writer_db = db.clone();
        let writer_thread = std::thread::Builder::new()
            .name("dead-letter-spool".into())
            .spawn(move || writer_loop(&writer_db, rx))
            .map_err(|e| err(&e))?;
        Ok(Some(Spool {
            db,
            path: path.to_path_buf(),
            app_id: format!("tributary-dead-letter-spool-{id}"),
            writer: Some(tx),
            writer_thread: Some(writer_thread),
        }))
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn app_id(&self) -> &str {
        &self.app_id
    }

    /// Returns once `letters` are durable in the spool.
    pub(super) async fn append(
        &self,
        stream: &str,
        letters: &[StoredLetter],
    ) -> Result<(), CoreError> {
        let payloads = letters
            .iter()
            .map(|l| serde_json::to_vec(l).map_err(|e| spool_err(&self.path, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let (reply, rx) = oneshot::channel();
        let request = Append {
            stream: stream.to_string(),
            payloads,
            reply,
        };
        let writer = self
            .writer
            .as_ref()
            .ok_or_else(|| spool_err(&self.path, "the spool is closing"))?;
        writer
            .send(request)
            .map_err(|_| spool_err(&self.path, "the spool writer stopped"))?;
        rx.await
            .map_err(|_| spool_err(&self.path, "the spool writer stopped"))?
            .map_err(|e| spool_err(&self.path, e))
    }

    /// The oldest letters of `stream`, at most `max_letters` of them and about
    /// `max_bytes`, each with its sequence number.
    pub(super) async fn oldest(
        &self,
        stream: &str,
        max_letters: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, StoredLetter)>, CoreError> {
        let name = letters_table(stream);
        self.blocking(move |db, path| {
            let read = db.begin_read().map_err(|e| spool_err(path, e))?;
            let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
            let table = match read.open_table(def) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(spool_err(path, e)),
            };
            let mut out = Vec::new();
            let mut bytes = 0;
            for entry in table.iter().map_err(|e| spool_err(path, e))? {
                let (k, v) = entry.map_err(|e| spool_err(path, e))?;
                let letter: StoredLetter = serde_json::from_slice(v.value())
                    .map_err(|e| spool_err(path, format!("letter {}: {e}", k.value())))?;
                bytes += v.value().len();
                out.push((k.value(), letter));
                if out.len() >= max_letters || bytes >= max_bytes {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    /// Forget every letter of `stream` numbered up to `last` (they are in Delta).
    pub(super) async fn remove_through(&self, stream: &str, last: u64) -> Result<(), CoreError> {
        let name = letters_table(stream);
        self.blocking(move |db, path| {
            let txn = db.begin_write().map_err(|e| spool_err(path, e))?;
            {
                let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
                let mut table = txn.open_table(def).map_err(|e| spool_err(path, e))?;
                table
                    .retain_in(..=last, |_, _| false)
                    .map_err(|e| spool_err(path, e))?;
            }
            txn.commit().map_err(|e| spool_err(path, e))
        })
        .await
    }

    /// How many letters of `stream` wait for Delta.
    pub(super) async fn len(&self, stream: &str) -> Result<u64, CoreError> {
        let name = letters_table(stream);
        self.blocking(move |db, path| {
            let read = db.begin_read().map_err(|e| spool_err(path, e))?;
            let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
            match read.open_table(def) {
                Ok(t) => t.len().map_err(|e| spool_err(path, e)),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
                Err(e) => Err(spool_err(path, e)),
            }
        })
        .await
    }

    fn blocking<T, F>(&self, f: F) -> impl Future<Output = Result<T, CoreError>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &Path) -> Result<T, CoreError> + Send + 'static,
    {
        let (db, path) = (self.db.clone(), self.path.clone());
        async move {
            let p = path.clone();
            tokio::task::spawn_blocking(move || f(&db, &p))
                .await
                .map_err(|e| spool_err(&path, e))?
        }
    }
}

impl Drop for Spool {
    /// Close the writer and wait for it, so the file is released when the spool is
    /// dropped (a reopen in the same process would otherwise be refused).
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

fn writer_loop(db: &Database, rx: std::sync::mpsc::Receiver<Append>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        let outcome = commit_group(db, &group).map_err(|e| e.to_string());
        for request in group {
            let _ = request.reply.send(outcome.clone());
        }
    }
}

fn commit_group(db: &Database, group: &[Append]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut next = txn.open_table(NEXT)?;
        for request in group {
            let name = letters_table(&request.stream);
            let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
            let mut table = txn.open_table(def)?;
            let mut seq = next
                .get(request.stream.as_str())?
                .map(|v| v.value())
                .unwrap_or(0);
            for p in &request.payloads {
                table.insert(seq, p.as_slice())?;
                seq += 1;
            }
            next.insert(request.stream.as_str(), seq)?;
        }
    }
    txn.commit()?;
    Ok(())
}

fn spool_err(path: &Path, e: impl std::fmt::Display) -> CoreError {
    CoreError::DeadLetterSpool {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}
