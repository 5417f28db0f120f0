//! A pipeline's parse and filters on the delivery path, and what it counts.
//!
//! Records are stored as they arrived (the ingest only selects the pipeline, once per
//! request); each of the pipeline's output workers runs the [`Stage`] on a chunk's records
//! right after reading it, on the blocking pool. So parsing costs nothing on the ack path, a
//! parser change applies to what is still buffered, and a fault in one pipeline's parse stays
//! in that pipeline's workers.
//!
//! What happens to a record whose parse fails is the pipeline's `on_error`: `keep_raw` sends it
//! with a `_parse_error` field, `dead_letter` writes the raw record to the output's dead
//! letters (kind `parse_error`), `drop` drops it. Every failure is counted by reason and the
//! last [`SAMPLES`] are kept for the pipeline's status (each cut to 256 bytes, with a hint
//! when the text is a docker line split at 16 KiB).
//!
//! The tap ([`Stats::tap`]) shows a team its records as they leave the parse and filters:
//! while someone listens, the first output's stage offers at most [`TAP_QUEUE`] records of
//! each chunk (as JSON, each cut to [`TAP_RECORD_MAX`]); a listener that falls behind skips
//! records. Nobody listening costs one atomic load per chunk. A pipeline with several outputs parses
//! once per output; the counts are per pipeline, from its first output only, so they are not
//! multiplied.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use logferry_common::telemetry;
use serde::Serialize;
use tokio::sync::broadcast;

use super::transform::{Applied, OnError, ParseError, Transform};
use crate::outputs::{DeadItem, Failure, FailureKind, Prepare, Rec};
use crate::record;

/// Parse-error samples kept per pipeline.
pub const SAMPLES: usize = 5;

/// What a pipeline counts, shared by its outputs' stages and its status; and its tap.
#[derive(Debug)]
pub struct Stats {
    tenant: String,
    pipeline: String,
    inner: Mutex<Counts>,
    tap: broadcast::Sender<Arc<str>>,
}

/// Records the tap holds for a slow reader; a reader further behind skips records.
pub const TAP_QUEUE: usize = 64;
/// Longest record the tap shows (as JSON); longer ones are cut, with `…` at the end.
pub const TAP_RECORD_MAX: usize = 4096;

/// One parse error, as the status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// The reason label.
    pub reason: &'static str,
    /// What went wrong, with the split-line hint when it applies.
    pub message: String,
    /// The text, cut to 256 bytes.
    pub sample: String,
    /// The text looks like a docker line split at 16 KiB.
    pub split_hint: bool,
}

#[derive(Debug, Default)]
struct Counts {
    parse_errors: BTreeMap<&'static str, u64>,
    dropped: BTreeMap<&'static str, u64>,
    samples: VecDeque<Sample>,
}

/// What [`Stats`] shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    /// Parse errors by reason.
    pub parse_errors: BTreeMap<&'static str, u64>,
    /// Records dropped by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// The latest parse errors, oldest first.
    pub parse_error_samples: Vec<Sample>,
}

impl Stats {
    /// The counts of `tenant`'s `pipeline`.
    pub fn new(tenant: &str, pipeline: &str) -> Stats {
        Stats {
            tenant: tenant.to_owned(),
            pipeline: pipeline.to_owned(),
            inner: Mutex::new(Counts::default()),
            tap: broadcast::channel(TAP_QUEUE).0,
        }
    }

    /// Records as they leave the parse and filters (JSON lines `{"tag", "time", "record"}`),
    /// while the receiver lives. Nothing is sampled while nobody listens.
    pub fn tap(&self) -> broadcast::Receiver<Arc<str>> {
        self.tap.subscribe()
    }

    /// Offers `recs` to the tap's listeners: at most [`TAP_QUEUE`] of one chunk, so a tap
    /// costs a bounded amount per chunk delivered.
    fn offer(&self, recs: &[Rec]) {
        if self.tap.receiver_count() == 0 {
            return;
        }
        for rec in recs.iter().take(TAP_QUEUE) {
            let mut record = Vec::new();
            if record::write_json_with(&rec.record, &[], &mut record).is_err() {
                continue;
            }
            let mut text = String::from_utf8_lossy(&record).into_owned();
            if text.len() > TAP_RECORD_MAX {
                let mut cut = TAP_RECORD_MAX;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
                text = serde_json::Value::String(text).to_string();
            }
            let line = format!(
                "{{\"tag\":{},\"time\":{},\"record\":{text}}}",
                serde_json::Value::String(rec.tag.to_string()),
                serde_json::Value::String(rec.time.to_rfc3339()),
            );
            // No listener left: stop.
            if self.tap.send(Arc::from(line)).is_err() {
                return;
            }
        }
    }

    /// Records of a request routed to this pipeline (before it is stored: a request refused
    /// and sent again counts again).
    pub fn records_in(&self, records: u64) {
        telemetry::PIPELINE_RECORDS_IN
            .with_label_values(&[&self.tenant, &self.pipeline])
            .inc_by(records);
    }

    fn parse_error(&self, e: &ParseError) {
        let reason = e.reason.as_str();
        telemetry::PIPELINE_PARSE_ERRORS
            .with_label_values(&[&self.tenant, &self.pipeline, reason])
            .inc();
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *c.parse_errors.entry(reason).or_default() += 1;
        if c.samples.len() == SAMPLES {
            c.samples.pop_front();
        }
        c.samples.push_back(Sample {
            reason,
            message: e.message(),
            sample: e.sample.clone(),
            split_hint: e.split_hint,
        });
    }

    fn dropped(&self, reason: &'static str, records: u64) {
        if records == 0 {
            return;
        }
        telemetry::PIPELINE_DROPPED_RECORDS
            .with_label_values(&[&self.tenant, &self.pipeline, reason])
            .inc_by(records);
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *c.dropped.entry(reason).or_default() += records;
    }

    /// The counts now.
    pub fn view(&self) -> StatsView {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        StatsView {
            parse_errors: c.parse_errors.clone(),
            dropped: c.dropped.clone(),
            parse_error_samples: c.samples.iter().cloned().collect(),
        }
    }
}

/// One output's run of its pipeline's parse and filters. The transform is swapped in place
/// when a new version of the pipeline changes only them.
#[derive(Debug)]
pub struct Stage {
    transform: RwLock<Arc<Transform>>,
    stats: Arc<Stats>,
    /// Whether this stage counts for the pipeline (its first output's does).
    counts: bool,
}

impl Stage {
    /// A stage running `transform`, counting in `stats` when `counts`.
    pub fn new(transform: Arc<Transform>, stats: Arc<Stats>, counts: bool) -> Stage {
        Stage {
            transform: RwLock::new(transform),
            stats,
            counts,
        }
    }

    /// Runs `transform` from the next chunk on.
    pub fn set(&self, transform: Arc<Transform>) {
        *self.transform.write().unwrap_or_else(|e| e.into_inner()) = transform;
    }

    fn run(&self, transform: &Transform, recs: Vec<Rec>) -> (Vec<Rec>, Vec<DeadItem>) {
        let (mut keep, mut dead) = (Vec::with_capacity(recs.len()), Vec::new());
        let (mut filtered, mut parse_dropped) = (0u64, 0u64);
        for mut rec in recs {
            match transform.apply(&rec.record) {
                Applied::Unchanged => keep.push(rec),
                Applied::Changed(record) => {
                    rec.record = Bytes::from(record);
                    keep.push(rec);
                }
                Applied::Filtered => filtered += 1,
                Applied::ParseFailed { error, record } => {
                    if self.counts {
                        self.stats.parse_error(&error);
                    }
                    match (transform.on_error(), record) {
                        (OnError::KeepRaw, Some(record)) => {
                            rec.record = Bytes::from(record);
                            keep.push(rec);
                        }
                        // keep_raw of a record that is no readable map (nothing can be added
                        // to it, and no sink could send it): dead letters, like dead_letter.
                        (OnError::KeepRaw, None) | (OnError::DeadLetter, _) => {
                            dead.push(DeadItem {
                                rec,
                                failure: Failure::new(FailureKind::Parse, error.message()),
                            })
                        }
                        (OnError::Drop, _) => parse_dropped += 1,
                    }
                }
            }
        }
        if self.counts {
            self.stats.dropped("filtered", filtered);
            self.stats.dropped("parse_error", parse_dropped);
            self.stats.offer(&keep);
        }
        (keep, dead)
    }
}

impl Prepare for Stage {
    fn prepare(&self, recs: Vec<Rec>) -> (Vec<Rec>, Vec<DeadItem>) {
        let transform = Arc::clone(&self.transform.read().unwrap_or_else(|e| e.into_inner()));
        if transform.is_identity() {
            if self.counts {
                self.stats.offer(&recs);
            }
            return (recs, Vec::new());
        }
        // A bug in a parser does not take the worker down: this runs on the blocking pool,
        // whose task ends in an error the worker treats like a chunk it could not read (read
        // again later, quarantined when it keeps failing).
        self.run(&transform, recs)
    }
}
