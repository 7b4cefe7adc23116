//! Idempotent ingest: a client that sends `Idempotency-Key` may retry a request after a
//! 503 or a timeout, and the retry adds nothing that the first attempt already added.
//!
//! Ingest remembers, per (stream, key), for `http.idempotency-window-ms`: the answer of
//! a request that succeeded, or the partitions a failed one had already committed (a
//! request's records span partitions, and each partition commits on its own). The
//! body's fingerprint is kept too, so a key reused for another body is refused rather
//! than answered with the first body's report. The memory is the process's: a key is
//! forgotten when the process restarts (README, "Idempotent ingest").

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tributary_core::schema::fnv1a;

use crate::error::IngestError;
use crate::report::IngestReport;

/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 256;

/// A request's `Idempotency-Key` and the fingerprint of its body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    key: String,
    fingerprint: u64,
}

impl IdempotencyKey {
    /// `key` as sent (1 to 256 visible ASCII characters), `body` the request's bytes.
    pub fn new(key: &str, body: &[u8]) -> Result<Self, IngestError> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(IngestError::BadIdempotencyKey(format!(
                "expected 1 to {MAX_KEY_BYTES} visible ASCII characters, got {} bytes",
                key.len()
            )));
        }
        Ok(IdempotencyKey {
            key: key.to_string(),
            fingerprint: fnv1a(body),
        })
    }

    /// Where this request's keyless records start their round robin: the same on
    /// every retry, so each record goes to the partition it went to before.
    pub fn turn(&self) -> u64 {
        fnv1a(self.key.as_bytes())
    }
}

/// What [`Idempotency::claim`] found.
pub enum Claim {
    /// The key's request succeeded: answer this again, append nothing.
    Answered(IngestReport),
    /// Go ahead, skipping partitions a failed attempt already committed.
    Resume {
        /// Partitions whose records the failed attempt appended.
        committed: BTreeSet<u32>,
        /// Whether the failed attempt stored its dead letters.
        letters_stored: bool,
    },
}

/// What one attempt did, for [`Idempotency::settle`].
pub struct Outcome {
    /// Partitions whose records this attempt appended.
    pub committed: BTreeSet<u32>,
    /// Whether it stored its dead letters.
    pub letters_stored: bool,
    /// Its answer.
    pub result: Result<IngestReport, IngestError>,
}

impl Outcome {
    /// Refused before anything was appended.
    pub fn refused(e: IngestError) -> Self {
        Outcome {
            committed: BTreeSet::new(),
            letters_stored: false,
            result: Err(e),
        }
    }
}

enum State {
    InFlight,
    Failed {
        committed: BTreeSet<u32>,
        letters_stored: bool,
    },
    Answered(IngestReport),
}

struct Entry {
    fingerprint: u64,
    state: State,
    at: Instant,
}

/// Answers of recent requests per (stream, `Idempotency-Key`), so a retry appends nothing twice.
pub struct Idempotency {
    window: Duration,
    max_keys: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(String, String), Entry>,
    /// Keys in the order they were first seen, to forget the oldest first.
    order: VecDeque<((String, String), Instant)>,
}

impl Idempotency {
    /// Keep answers for `window`, at most `max_keys` of them (the oldest forgotten first).
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Idempotency {
            window,
            max_keys: max_keys.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Start an attempt under `key`.
    pub fn claim(&self, stream: &str, key: &IdempotencyKey) -> Result<Claim, IngestError> {
        let mut inner = self.inner.lock().expect("idempotency lock");
        self.expire(&mut inner);
        let id = (stream.to_string(), key.key.clone());
        if let Some(entry) = inner.entries.get_mut(&id) {
            if entry.fingerprint != key.fingerprint {
                return Err(IngestError::IdempotencyMismatch(key.key.clone()));
            }
            return match std::mem::replace(&mut entry.state, State::InFlight) {
                State::InFlight => Err(IngestError::IdempotencyInFlight(key.key.clone())),
                State::Answered(report) => {
                    entry.state = State::Answered(report.clone());
                    Ok(Claim::Answered(report))
                }
                State::Failed {
                    committed,
                    letters_stored,
                } => Ok(Claim::Resume {
                    committed,
                    letters_stored,
                }),
            };
        }
        while inner.entries.len() >= self.max_keys {
            let Some((oldest, _)) = inner.order.pop_front() else {
                break;
            };
            inner.entries.remove(&oldest);
        }
        let now = Instant::now();
        inner.order.push_back((id.clone(), now));
        inner.entries.insert(
            id,
            Entry {
                fingerprint: key.fingerprint,
                state: State::InFlight,
                at: now,
            },
        );
        Ok(Claim::Resume {
            committed: BTreeSet::new(),
            letters_stored: false,
        })
    }

    /// Record how the attempt under `key` ended.
    pub fn settle(&self, stream: &str, key: &IdempotencyKey, outcome: &Outcome) {
        let mut inner = self.inner.lock().expect("idempotency lock");
        let id = (stream.to_string(), key.key.clone());
        let Some(entry) = inner.entries.get_mut(&id) else {
            return;
        };
        entry.state = match (&outcome.result, &entry.state) {
            (Ok(report), _) => State::Answered(report.clone()),
            (
                Err(_),
                State::Failed {
                    committed,
                    letters_stored,
                },
            ) => State::Failed {
                committed: committed.union(&outcome.committed).copied().collect(),
                letters_stored: *letters_stored || outcome.letters_stored,
            },
            (Err(_), _) => State::Failed {
                committed: outcome.committed.clone(),
                letters_stored: outcome.letters_stored,
            },
        };
    }

    fn expire(&self, inner: &mut Inner) {
        while let Some((id, at)) = inner.order.front() {
            if at.elapsed() < self.window {
                break;
            }
            let id = id.clone();
            inner.order.pop_front();
            if inner
                .entries
                .get(&id)
                .is_some_and(|e| e.at.elapsed() >= self.window)
            {
                inner.entries.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> IngestReport {
        IngestReport {
            accepted: 1,
            rejected: 0,
            errors: vec![],
            dead_letters_stored: true,
            dead_letter_error: None,
        }
    }

    #[test]
    fn a_retry_after_success_is_answered_from_memory() {
        let idem = Idempotency::new(Duration::from_secs(60), 10);
        let k = IdempotencyKey::new("k1", b"body").unwrap();
        assert!(matches!(idem.claim("s", &k).unwrap(), Claim::Resume { .. }));
        assert!(matches!(
            idem.claim("s", &k),
            Err(IngestError::IdempotencyInFlight(_))
        ));
        idem.settle(
            "s",
            &k,
            &Outcome {
                committed: [0].into(),
                letters_stored: true,
                result: Ok(report()),
            },
        );
        assert!(matches!(idem.claim("s", &k).unwrap(), Claim::Answered(r) if r == report()));
        let other_body = IdempotencyKey::new("k1", b"other").unwrap();
        assert!(matches!(
            idem.claim("s", &other_body),
            Err(IngestError::IdempotencyMismatch(_))
        ));
        // Keys are per stream.
        assert!(matches!(idem.claim("t", &k).unwrap(), Claim::Resume { .. }));
    }

    #[test]
    fn a_retry_after_a_partial_failure_skips_committed_partitions() {
        let idem = Idempotency::new(Duration::from_secs(60), 10);
        let k = IdempotencyKey::new("k", b"b").unwrap();
        idem.claim("s", &k).unwrap();
        let failed = Outcome {
            committed: [1, 3].into(),
            letters_stored: true,
            result: Err(IngestError::LogUnavailable("down".into())),
        };
        idem.settle("s", &k, &failed);
        match idem.claim("s", &k).unwrap() {
            Claim::Resume {
                committed,
                letters_stored,
            } => {
                assert_eq!(committed, [1, 3].into());
                assert!(letters_stored);
            }
            Claim::Answered(_) => panic!("a failed request has no answer to repeat"),
        }
    }

    #[test]
    fn keys_expire_and_the_oldest_go_first_when_full() {
        let idem = Idempotency::new(Duration::from_millis(0), 10);
        let k = IdempotencyKey::new("k", b"b").unwrap();
        idem.claim("s", &k).unwrap();
        idem.settle(
            "s",
            &k,
            &Outcome {
                committed: BTreeSet::new(),
                letters_stored: true,
                result: Ok(report()),
            },
        );
        assert!(matches!(idem.claim("s", &k).unwrap(), Claim::Resume { .. }));
        let idem = Idempotency::new(Duration::from_secs(60), 2);
        for key in ["a", "b", "c"] {
            idem.claim("s", &IdempotencyKey::new(key, b"").unwrap())
                .unwrap();
        }
        // "a" was forgotten to make room: claiming it again starts afresh.
        assert!(matches!(
            idem.claim("s", &IdempotencyKey::new("a", b"").unwrap())
                .unwrap(),
            Claim::Resume { .. }
        ));
        assert!(IdempotencyKey::new("", b"").is_err());
        assert!(IdempotencyKey::new("has space", b"").is_err());
    }
}
