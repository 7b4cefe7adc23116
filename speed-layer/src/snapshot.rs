//! Periodic snapshots of the speed layer's states, so that a restart resumes from them
//! instead of rebuilding everything above the batch cutoff from the log.
//!
//! A snapshot is taken between micro-batches, so its segments hold exactly the records
//! before its log positions. It is a directory under `<storage-root>/speed-snapshots/`
//! with one Arrow IPC file of states per view and `snapshot.json` (positions, per view
//! the SQL, newest event time and segments); `LATEST` names the newest complete one and
//! is replaced atomically. On start a snapshot is used per stream only when every view of
//! the stream still has the same SQL and the stream has no dedup rule (whose id state a
//! snapshot does not hold); segments below the current cutoffs are dropped.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use serde::{Deserialize, Serialize};
use tributary_core::CoreError;
use tributary_core::pipeline::Pipeline;

use crate::SpeedLayer;
use crate::store::Segment;

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    created_micros: i64,
    /// stream → partition → next offset to read.
    positions: BTreeMap<String, BTreeMap<u32, u64>>,
    views: BTreeMap<String, ViewManifest>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ViewManifest {
    sql: String,
    /// The store held states from here on: a snapshot taken while the view was newer
    /// than the batch cutoff it restarts with lacks the events in between.
    #[serde(default = "no_cutoff")]
    cutoff: i64,
    max_event_ts: Option<i64>,
    /// (bucket, state batches, events) in file order.
    segments: Vec<(i64, usize, u64)>,
}

fn no_cutoff() -> i64 {
    i64::MIN
}

fn io(path: &Path, e: impl std::fmt::Display) -> CoreError {
    CoreError::Table {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Write a snapshot of `layer` at `positions` under `dir`; keeps only the newest.
pub fn write(
    dir: &Path,
    layer: &SpeedLayer,
    positions: &HashMap<(String, u32), u64>,
) -> Result<PathBuf, CoreError> {
    let created = tributary_core::time::now_micros();
    let name = format!("{created}");
    let tmp = dir.join(format!("tmp-{name}"));
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let mut manifest = Manifest {
        created_micros: created,
        positions: BTreeMap::new(),
        views: BTreeMap::new(),
    };
    for ((stream, p), offset) in positions {
        manifest
            .positions
            .entry(stream.clone())
            .or_default()
            .insert(*p, *offset);
    }
    for store in layer.store.views() {
        let (segments, max_event_ts) = store.export();
        let path = tmp.join(format!("{}.arrow", store.view.name));
        let file = File::create(&path).map_err(|e| io(&path, e))?;
        let mut writer = FileWriter::try_new(file, &store.view.partial_schema)?;
        let mut listed = Vec::new();
        for (bucket, seg) in &segments {
            for b in &seg.states {
                writer.write(b)?;
            }
            listed.push((*bucket, seg.states.len(), seg.events));
        }
        writer.finish()?;
        manifest.views.insert(
            store.view.name.clone(),
            ViewManifest {
                sql: store.view.sql.clone(),
                cutoff: store.cutoff(),
                max_event_ts,
                segments: listed,
            },
        );
    }
    let text = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    let path = tmp.join("snapshot.json");
    std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    let done = dir.join(&name);
    std::fs::rename(&tmp, &done).map_err(|e| io(&done, e))?;
    let latest_tmp = dir.join("LATEST.tmp");
    std::fs::write(&latest_tmp, &name).map_err(|e| io(&latest_tmp, e))?;
    std::fs::rename(&latest_tmp, dir.join("LATEST")).map_err(|e| io(dir, e))?;
    // Older snapshots (and leftovers of interrupted writes) go.
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))?.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && n != name {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(done)
}

/// Restore the newest snapshot into `layer` where it still applies; returns the
/// positions to resume from, per stream restored.
pub fn restore(
    dir: &Path,
    layer: &SpeedLayer,
    pipeline: &Pipeline,
) -> Result<HashMap<String, BTreeMap<u32, u64>>, CoreError> {
    let Ok(name) = std::fs::read_to_string(dir.join("LATEST")) else {
        return Ok(HashMap::new());
    };
    let snap = dir.join(name.trim());
    let path = snap.join("snapshot.json");
    let text = std::fs::read(&path).map_err(|e| io(&path, e))?;
    let mut manifest: Manifest = serde_json::from_slice(&text).map_err(|e| io(&path, e))?;
    let mut restored = HashMap::new();
    for s in &pipeline.streams {
        let shard = layer.shard();
        // A snapshot of other partitions (another `speed.shard`) would count them twice.
        let same_partitions = manifest.positions.get(&s.name).is_some_and(|held| {
            held.keys()
                .copied()
                .eq((0..s.partitions).filter(|p| shard.owns(*p)))
        });
        let usable = s.dedup.is_none()
            && same_partitions
            && pipeline.views_of(&s.name).iter().all(|v| {
                let now = layer.store.view(&v.name).map_or(i64::MIN, |st| st.cutoff());
                manifest
                    .views
                    .get(&v.name)
                    .is_some_and(|m| m.sql == v.sql && m.cutoff <= now)
            });
        if !usable {
            continue;
        }
        for view in pipeline.views_of(&s.name) {
            let m = &manifest.views[&view.name];
            let path = snap.join(format!("{}.arrow", view.name));
            let file = File::open(&path).map_err(|e| io(&path, e))?;
            let mut batches = FileReader::try_new(file, None)?;
            let mut segments = Vec::new();
            for (bucket, n, events) in &m.segments {
                let states = (&mut batches).take(*n).collect::<Result<Vec<_>, _>>()?;
                segments.push((
                    *bucket,
                    Segment {
                        states: view.conform(states)?,
                        events: *events,
                        // No snapshot is taken while a view joins two streams.
                        unmatched: Vec::new(),
                    },
                ));
            }
            let store = layer.store.view(&view.name).expect("store per view");
            store.import(segments, m.max_event_ts);
        }
        restored.insert(
            s.name.clone(),
            manifest.positions.remove(&s.name).expect("checked above"),
        );
    }
    Ok(restored)
}
