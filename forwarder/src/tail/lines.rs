//! Reading lines: bytes from a file, split at `\n`, parsed, partial lines joined, records
//! encoded into the file's batch.
//!
//! ## Invariants
//! - **Bytes past the last `\n` are carried**, not parsed: they start at
//!   `read_offset - carry.len()` and are parsed once their line is complete. Per file only
//!   those bytes stay; the big read and batch buffers are lent to the file being read and
//!   taken back after it, so memory does not grow with the number of files.
//! - **Partial lines are joined whole** ([`Joiner`]): CRI `P` lines until their `F` line, and
//!   docker json-file lines that do not end in `\n`, up to `max_message_size`, or until
//!   `partial_timeout` (then sent as they are, counted as a forced flush).
//! - **`safe_offset` never passes a line still needed**: it is the start of the oldest partial
//!   message being joined, or else the end of the last complete line. Everything before it is
//!   in the batch or in the buffer, so it is the offset a frame may commit.
//! - **A line longer than `max_line_size` is cut** to that size; the rest of it is skipped up
//!   to its `\n`. A line that does not parse is counted and skipped.
//! - **Reading is fair**: one file is read for at most [`READ_BUDGET`] bytes per pass, and its
//!   batch is cut into a frame whenever it reaches `batch_size`.

use std::os::unix::fs::FileExt;
use std::time::Instant;

use logferry_common::telemetry;

use super::files::Tailed;
use super::fingerprint;
use super::frames::{Sink, Stopped};
use super::TailOptions;
use crate::batch::encode_record;
use crate::config::Format;
use crate::kubernetes::PodCache;
use crate::metrics;
use crate::parse::{Joiner, LineFormat};

/// Bytes read from one file before the others get a turn.
const READ_BUDGET: u64 = 1024 * 1024;
/// Bytes read per `pread`.
const READ_CHUNK: usize = 256 * 1024;

/// Parse and batch state of a file.
#[derive(Debug)]
pub(super) struct LineState {
    format: Option<LineFormat>,
    pub(super) joiner: Joiner,
    pub(super) batch: Vec<u8>,
    pub(super) records: u32,
    /// Everything before this offset is in `batch` or in the buffer.
    pub(super) safe_offset: u64,
}

impl LineState {
    /// A file read from `offset`.
    pub(super) fn new(opts: &TailOptions, offset: u64) -> LineState {
        LineState {
            format: match opts.format {
                Format::Auto => None,
                Format::Cri => Some(LineFormat::Cri),
                Format::Docker => Some(LineFormat::Docker),
            },
            joiner: Joiner::new(opts.max_message_size, opts.partial_timeout),
            batch: Vec::new(),
            records: 0,
            safe_offset: offset,
        }
    }
}

/// Per-pass counters, folded into the metrics once per pass.
#[derive(Debug, Default)]
struct Counts {
    records: u64,
    bytes: u64,
    invalid: u64,
    truncated: u64,
    forced_size: u64,
    forced_timeout: u64,
}

impl Counts {
    fn publish(&mut self) {
        if self.records > 0 {
            telemetry::INPUT_RECORDS.inc_by(self.records);
        }
        if self.bytes > 0 {
            telemetry::INPUT_BYTES.inc_by(self.bytes);
        }
        if self.invalid > 0 {
            telemetry::DROPPED_RECORDS
                .with_label_values(&["invalid_line"])
                .inc_by(self.invalid);
        }
        if self.truncated > 0 {
            metrics::TAIL_TRUNCATED_LINES.inc_by(self.truncated);
        }
        if self.forced_size > 0 {
            metrics::PARTIAL_FLUSHES
                .with_label_values(&["size"])
                .inc_by(self.forced_size);
        }
        if self.forced_timeout > 0 {
            metrics::PARTIAL_FLUSHES
                .with_label_values(&["timeout"])
                .inc_by(self.forced_timeout);
        }
        *self = Counts::default();
    }
}

/// What a look at a file found.
#[derive(Debug)]
pub(super) enum ReadOutcome {
    Read,
    Idle,
    Truncated,
}

/// Reads files into their batches: the shared buffers and the counters of a pass.
#[derive(Debug)]
pub(super) struct Reader {
    /// Enriches records with Kubernetes metadata.
    cache: Option<std::sync::Arc<PodCache>>,
    counts: Counts,
    /// Read and batch buffers lent to the file being read.
    scratch_read: Vec<u8>,
    scratch_batch: Vec<u8>,
}

impl Reader {
    pub(super) fn new(cache: Option<std::sync::Arc<PodCache>>) -> Reader {
        Reader {
            cache,
            counts: Counts::default(),
            scratch_read: Vec::new(),
            scratch_batch: Vec::new(),
        }
    }

    /// Folds this pass's counters into the metrics.
    pub(super) fn publish(&mut self) {
        self.counts.publish();
    }

    /// Reads what the file grew by (up to [`READ_BUDGET`]), cutting frames into `sink`, or
    /// finds it truncated.
    pub(super) fn read_file(
        &mut self,
        t: &mut Tailed,
        opts: &TailOptions,
        sink: &Sink,
    ) -> Result<ReadOutcome, Stopped> {
        let size = match t.file.metadata() {
            Ok(m) => m.len(),
            Err(_) => return Ok(ReadOutcome::Idle),
        };
        // Log files only grow; a smaller size means truncation (copytruncate), even if the
        // writer already wrote past our offset again.
        if size < t.read_offset || size < t.last_size {
            return Ok(ReadOutcome::Truncated);
        }
        if size == t.read_offset {
            t.last_size = size;
            return Ok(ReadOutcome::Idle);
        }
        // Before reading on, check the file still starts as it did: truncated and rewritten
        // past its old size between two looks, it is another file under the same inode.
        if t.read_offset > 0
            && !matches!(fingerprint::read_head(&t.file), Ok(Some(h)) if h == t.fp.head)
        {
            return Ok(ReadOutcome::Truncated);
        }
        if size > t.last_size {
            t.last_growth = Instant::now();
        }
        t.last_size = size;
        // Borrow the big buffers for this file.
        let mut big = std::mem::take(&mut self.scratch_read);
        big.clear();
        big.extend_from_slice(&t.carry);
        let small = std::mem::replace(&mut t.carry, big);
        let lent_batch = t.state.batch.is_empty();
        if lent_batch {
            t.state.batch = std::mem::take(&mut self.scratch_batch);
        }
        let result = self.read_into(t, size, opts, sink);
        // Give them back: the file keeps only its unfinished line.
        let mut small = small;
        small.clear();
        small.extend_from_slice(&t.carry);
        if small.capacity() > 64 * 1024 && small.len() < 16 * 1024 {
            small.shrink_to(16 * 1024);
        }
        self.scratch_read = std::mem::replace(&mut t.carry, small);
        // A batch left non-empty (only after a failed append, when stopping) stays with its
        // file.
        if lent_batch && t.state.batch.is_empty() {
            self.scratch_batch = std::mem::take(&mut t.state.batch);
        }
        result?;
        Ok(ReadOutcome::Read)
    }

    fn read_into(
        &mut self,
        t: &mut Tailed,
        size: u64,
        opts: &TailOptions,
        sink: &Sink,
    ) -> Result<(), Stopped> {
        let mut budget = READ_BUDGET;
        while t.read_offset < size && budget > 0 {
            let want = (size - t.read_offset).min(READ_CHUNK as u64).min(budget) as usize;
            let start = t.carry.len();
            t.carry.resize(start + want, 0);
            let n = match t.file.read_at(&mut t.carry[start..], t.read_offset) {
                Ok(n) => n,
                Err(e) => {
                    t.carry.truncate(start);
                    tracing::warn!(path = %t.glob_path.display(), error = %e, "read failed");
                    break;
                }
            };
            t.carry.truncate(start + n);
            if n == 0 {
                break;
            }
            t.read_offset += n as u64;
            budget = budget.saturating_sub(n as u64);
            self.counts.bytes += n as u64;
            if process_lines(t, opts, self.cache.as_deref(), &mut self.counts) {
                sink.cut_frame(t)?;
            }
        }
        sink.cut_frame(t)
    }

    /// Sends the file's partial messages past their timeout (all of them with `force`) as
    /// they are.
    pub(super) fn flush_partials(
        &mut self,
        t: &mut Tailed,
        opts: &TailOptions,
        now: Instant,
        force: bool,
    ) {
        let kube = t.meta.current(self.cache.as_deref()).map(<[u8]>::to_vec);
        let counts = &mut self.counts;
        let st = &mut t.state;
        let batch = &mut st.batch;
        let records = &mut st.records;
        st.joiner.flush_expired(now, force, |m| {
            encode_record(
                m.time,
                m.stream,
                m.text,
                kube.as_deref(),
                opts.record,
                batch,
            );
            *records += 1;
            counts.records += 1;
            counts.forced_timeout += 1;
        });
        let consumed = t.read_offset - t.carry.len() as u64;
        st.safe_offset = st.joiner.pending_offset().unwrap_or(consumed);
    }
}

/// Splits the carried bytes into lines and feeds them through parse and join into the batch.
/// Returns whether the batch reached `batch_size`.
fn process_lines(
    t: &mut Tailed,
    opts: &TailOptions,
    cache: Option<&PodCache>,
    counts: &mut Counts,
) -> bool {
    let base = t.read_offset - t.carry.len() as u64;
    let mut pos = 0usize;
    let kube = t.meta.current(cache).map(<[u8]>::to_vec);
    let st = &mut t.state;
    while let Some(nl) = memchr::memchr(b'\n', &t.carry[pos..]) {
        let line_start = base + pos as u64;
        let line = &t.carry[pos..pos + nl];
        pos += nl + 1;
        if t.skipping {
            t.skipping = false;
        } else {
            let line = if line.len() > opts.max_line_size {
                counts.truncated += 1;
                &line[..opts.max_line_size]
            } else {
                line
            };
            handle_line(st, line, line_start, kube.as_deref(), opts, counts);
        }
        st.safe_offset = st.joiner.pending_offset().unwrap_or(base + pos as u64);
    }
    let rest = t.carry.len() - pos;
    if rest > opts.max_line_size {
        if !t.skipping {
            counts.truncated += 1;
            let line = &t.carry[pos..pos + opts.max_line_size];
            handle_line(st, line, base + pos as u64, kube.as_deref(), opts, counts);
            t.skipping = true;
        }
        pos = t.carry.len();
    }
    t.carry.drain(..pos);
    st.batch.len() >= opts.batch_size
}

fn handle_line(
    st: &mut LineState,
    line: &[u8],
    line_start: u64,
    kube: Option<&[u8]>,
    opts: &TailOptions,
    counts: &mut Counts,
) {
    let format = *st.format.get_or_insert_with(|| LineFormat::detect(line));
    match format.parse(line) {
        Ok(parsed) => {
            let batch = &mut st.batch;
            let records = &mut st.records;
            st.joiner.push(parsed, line_start, |m| {
                encode_record(m.time, m.stream, m.text, kube, opts.record, batch);
                *records += 1;
                counts.records += 1;
                match m.forced {
                    Some(crate::parse::ForcedFlush::Size) => counts.forced_size += 1,
                    Some(crate::parse::ForcedFlush::Timeout) => counts.forced_timeout += 1,
                    None => {}
                }
            });
        }
        Err(e) => {
            counts.invalid += 1;
            tracing::trace!(error = %e, "invalid line skipped");
        }
    }
}
