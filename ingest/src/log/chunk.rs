//! The embedded log's record layout: the records one group commit appends to a
//! partition share one redb value (a chunk), keyed by the offset of its first record.
//!
//! One B-tree insert per record made the log's single writer thread the bottleneck of
//! HTTP ingest (about half of all CPU time went to redb's insert path at 0.9 M events/s),
//! and a read paid a B-tree step per record. A chunk is written with one insert and read
//! with one lookup, and the records of one group commit share their `_ingest_ts` anyway.
//!
//! A chunk is `ts: i64 | n: u32 | n × len: u32 | the n records' bytes`, little-endian.
//! Offsets stay dense: a chunk keyed `s` with `n` records holds offsets `s..s + n`, and
//! the next chunk of the partition is keyed `s + n`.

use redb::{ReadableTable, TableDefinition, TableError, WriteTransaction};
use tributary_core::error::{CoreError, Result};
use tributary_core::log::LogRecord;

use super::embedded::log_err;

/// Partition tables of the chunk layout.
pub(crate) fn chunk_table(stream: &str, partition: u32) -> String {
    format!("c/{stream}/{partition}")
}

/// Partition tables of the first layout (one value per record: `ts | record`), read only
/// to move their records into chunks when an older log is opened.
fn record_table(stream: &str, partition: u32) -> String {
    format!("p/{stream}/{partition}")
}

/// A chunk stops growing past this many bytes, so reading one record of it (a bound
/// check reads the first record at an offset) stays cheap.
const MAX_CHUNK_BYTES: usize = 1 << 20;

const HEADER: usize = 12;

/// One chunk, borrowed from its redb value.
pub(crate) struct Chunk<'a> {
    /// The `_ingest_ts` of every record in it.
    pub(crate) ts: i64,
    lens: &'a [u8],
    body: &'a [u8],
}

impl<'a> Chunk<'a> {
    /// Read a chunk's layout, refusing one whose lengths do not add up.
    pub(crate) fn parse(value: &'a [u8]) -> Result<Chunk<'a>> {
        let corrupt = || CoreError::Log("a chunk of the embedded log is corrupt".into());
        if value.len() < HEADER {
            return Err(corrupt());
        }
        let ts = i64::from_le_bytes(value[..8].try_into().expect("8 bytes"));
        let n = u32::from_le_bytes(value[8..12].try_into().expect("4 bytes")) as usize;
        let lens_end = n
            .checked_mul(4)
            .and_then(|l| l.checked_add(HEADER))
            .filter(|e| *e <= value.len())
            .ok_or_else(corrupt)?;
        let (lens, body) = (&value[HEADER..lens_end], &value[lens_end..]);
        let total: usize = lens.chunks_exact(4).map(len_of).sum();
        if total != body.len() {
            return Err(corrupt());
        }
        Ok(Chunk { ts, lens, body })
    }

    /// How many records it holds.
    pub(crate) fn len(&self) -> u64 {
        (self.lens.len() / 4) as u64
    }

    /// Its records in offset order.
    pub(crate) fn records(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        let mut at = 0;
        let body = self.body;
        self.lens.chunks_exact(4).map(move |l| {
            let end = at + len_of(l);
            let r = &body[at..end];
            at = end;
            r
        })
    }
}

fn len_of(l: &[u8]) -> usize {
    u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize
}

/// Builds the value of one chunk.
pub(crate) struct ChunkBuilder {
    ts: i64,
    lens: Vec<u8>,
    body: Vec<u8>,
}

impl ChunkBuilder {
    pub(crate) fn new(ts: i64) -> ChunkBuilder {
        ChunkBuilder {
            ts,
            lens: Vec::new(),
            body: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        (self.lens.len() / 4) as u64
    }

    /// Whether the chunk is big enough to be written and a new one started.
    pub(crate) fn is_full(&self) -> bool {
        self.body.len() >= MAX_CHUNK_BYTES
    }

    pub(crate) fn push(&mut self, record: &[u8]) -> Result<()> {
        let len = u32::try_from(record.len())
            .map_err(|_| CoreError::Log("a record of 4 GiB or more cannot be logged".into()))?;
        self.lens.extend_from_slice(&len.to_le_bytes());
        self.body.extend_from_slice(record);
        Ok(())
    }

    pub(crate) fn finish(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + self.lens.len() + self.body.len());
        v.extend_from_slice(&self.ts.to_le_bytes());
        v.extend_from_slice(&(self.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.lens);
        v.extend_from_slice(&self.body);
        v
    }
}

/// A chunk's first offset and its value, borrowed from a table.
type Located<'t> = (u64, redb::AccessGuard<'t, &'static [u8]>);

/// The chunk holding `offset`, if the table has one.
fn chunk_at(
    table: &impl ReadableTable<u64, &'static [u8]>,
    offset: u64,
) -> Result<Option<Located<'_>>> {
    let Some(entry) = table.range(..=offset).map_err(log_err)?.next_back() else {
        return Ok(None);
    };
    let (k, v) = entry.map_err(log_err)?;
    let start = k.value();
    let n = Chunk::parse(v.value())?.len();
    Ok((offset < start + n).then_some((start, v)))
}

/// The offset the next append gets.
pub(crate) fn end_offset(table: &impl ReadableTable<u64, &'static [u8]>) -> Result<u64> {
    match table.last().map_err(log_err)? {
        Some((k, v)) => Ok(k.value() + Chunk::parse(v.value())?.len()),
        None => Ok(0),
    }
}

/// The oldest offset the table holds (0 when empty).
pub(crate) fn first_offset(table: &impl ReadableTable<u64, &'static [u8]>) -> Result<u64> {
    Ok(table
        .first()
        .map_err(log_err)?
        .map_or(0, |(k, _)| k.value()))
}

/// The `_ingest_ts` of the record at `offset`, if the table holds it.
pub(crate) fn ts_at(
    table: &impl ReadableTable<u64, &'static [u8]>,
    offset: u64,
) -> Result<Option<i64>> {
    chunk_at(table, offset)?
        .map(|(_, v)| Chunk::parse(v.value()).map(|c| c.ts))
        .transpose()
}

/// Up to `max` records from `from` on.
pub(crate) fn read(
    table: &impl ReadableTable<u64, &'static [u8]>,
    from: u64,
    max: usize,
) -> Result<Vec<LogRecord>> {
    let mut out = Vec::new();
    // The chunk `from` falls in, then the chunks after it: each value is read once.
    let mut next = from;
    if let Some((first, v)) = chunk_at(table, from)? {
        next = push_records(&mut out, first, &Chunk::parse(v.value())?, from, max);
    }
    if out.len() < max {
        for entry in table.range(next..).map_err(log_err)? {
            let (k, v) = entry.map_err(log_err)?;
            push_records(&mut out, k.value(), &Chunk::parse(v.value())?, from, max);
            if out.len() >= max {
                break;
            }
        }
    }
    Ok(out)
}

/// Push the records of the chunk keyed `first` from offset `from` on, until `out` holds
/// `max`; returns the offset after the chunk.
fn push_records(
    out: &mut Vec<LogRecord>,
    first: u64,
    chunk: &Chunk<'_>,
    from: u64,
    max: usize,
) -> u64 {
    let skip = from.saturating_sub(first) as usize;
    let room = max.saturating_sub(out.len());
    out.extend(
        chunk
            .records()
            .enumerate()
            .skip(skip)
            .take(room)
            .map(|(i, payload)| LogRecord {
                offset: first + i as u64,
                ingest_ts: chunk.ts,
                payload: payload.to_vec(),
            }),
    );
    first + chunk.len()
}

/// Remove the records `first..stop` of a partition, where `first` is its oldest offset:
/// whole chunks below `stop`, and the head of the chunk `stop` falls inside (its tail is
/// written back keyed `stop`). Returns how many records went.
pub(crate) fn remove_prefix(txn: &WriteTransaction, name: &str, stop: u64) -> Result<u64> {
    let def: TableDefinition<u64, &[u8]> = TableDefinition::new(name);
    let mut table = txn.open_table(def).map_err(log_err)?;
    let mut chunks = Vec::new();
    for entry in table.range(..stop).map_err(log_err)? {
        let (k, v) = entry.map_err(log_err)?;
        chunks.push((k.value(), Chunk::parse(v.value())?.len()));
    }
    let mut removed = 0;
    for (start, n) in chunks {
        let tail = if start + n > stop {
            let v = table.get(start).map_err(log_err)?.ok_or_else(|| {
                CoreError::Log(format!("chunk {start} vanished during truncation"))
            })?;
            let chunk = Chunk::parse(v.value())?;
            let mut tail = ChunkBuilder::new(chunk.ts);
            for r in chunk.records().skip((stop - start) as usize) {
                tail.push(r)?;
            }
            Some(tail.finish())
        } else {
            None
        };
        table.remove(start).map_err(log_err)?;
        removed += n.min(stop - start);
        if let Some(tail) = tail {
            table.insert(stop, tail.as_slice()).map_err(log_err)?;
        }
    }
    Ok(removed)
}

/// Move the records of a log written in the first layout into chunks (consecutive records
/// with the same stamp share one), in the caller's transaction, and drop the old tables.
/// Returns how many records moved.
pub(crate) fn migrate_record_tables(
    txn: &WriteTransaction,
    streams: &[(String, u32)],
) -> Result<u64> {
    let mut moved = 0;
    for (stream, n) in streams {
        for p in 0..*n {
            let old_name = record_table(stream, p);
            let old_def: TableDefinition<u64, &[u8]> = TableDefinition::new(&old_name);
            let old = match txn.open_table(old_def) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(log_err(e)),
            };
            let new_name = chunk_table(stream, p);
            let new_def: TableDefinition<u64, &[u8]> = TableDefinition::new(&new_name);
            let mut new = txn.open_table(new_def).map_err(log_err)?;
            let mut current: Option<(u64, ChunkBuilder)> = None;
            for entry in old.iter().map_err(log_err)? {
                let (k, v) = entry.map_err(log_err)?;
                let (offset, v) = (k.value(), v.value());
                if v.len() < 8 {
                    return Err(CoreError::Log(format!(
                        "record {offset} of {old_name} is corrupt"
                    )));
                }
                let ts = i64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
                let continues = current
                    .as_ref()
                    .is_some_and(|(s, b)| b.ts == ts && s + b.len() == offset && !b.is_full());
                if !continues && let Some((s, b)) = current.take() {
                    new.insert(s, b.finish().as_slice()).map_err(log_err)?;
                }
                current
                    .get_or_insert_with(|| (offset, ChunkBuilder::new(ts)))
                    .1
                    .push(&v[8..])?;
                moved += 1;
            }
            if let Some((s, b)) = current {
                new.insert(s, b.finish().as_slice()).map_err(log_err)?;
            }
            drop(old);
            txn.delete_table(old_def).map_err(log_err)?;
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_reads_back_its_records_and_refuses_wrong_lengths() {
        let mut b = ChunkBuilder::new(42);
        for r in [&b"{}"[..], b"", b"{\"a\":1}"] {
            b.push(r).unwrap();
        }
        let v = b.finish();
        let c = Chunk::parse(&v).unwrap();
        assert_eq!((c.ts, c.len()), (42, 3));
        assert_eq!(
            c.records().collect::<Vec<_>>(),
            vec![&b"{}"[..], b"", b"{\"a\":1}"]
        );
        assert!(Chunk::parse(&v[..v.len() - 1]).is_err());
        assert!(Chunk::parse(&v[..10]).is_err());
        let mut huge = v.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Chunk::parse(&huge).is_err());
    }
}
