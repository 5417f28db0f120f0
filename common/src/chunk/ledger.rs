//! The in-memory ledger of a buffer: which chunks it holds, how many bytes, and room for more.
//!
//! It is shared by the appending tasks (reserve room), the writer thread (bytes written,
//! chunks opened and sealed), and the output (release). It is rebuilt from the directory at
//! every start and never persisted: the chunk files are the truth, this is a cache of their
//! sizes. It also owns the buffer's gauges, so that every change of the numbers updates the
//! metrics in the same place.
//!
//! ## Invariants
//! - `pending + open.bytes + sealed_bytes` is what counts against `total_limit_size`;
//!   `pending` is bytes reserved by [`Ledger::try_reserve`] and not yet written or failed.
//! - A sealed chunk's bytes leave the ledger when its entry leaves `sealed`, which happens once
//!   ([`Ledger::take_sealed`] or drop-oldest inside [`Ledger::try_reserve`]).
//! - Whoever frees bytes calls `space.notify_waiters()`, so blocked appenders re-check.
//!
//! A `std::sync::Mutex` is used: it is held for a few arithmetic operations and never across
//! an `.await` or a syscall, which is cheaper than an async mutex.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;

use super::{OverflowAction, SealedChunk, Stats, Usage};
use crate::telemetry;

/// A sealed chunk held by the buffer.
#[derive(Debug, Clone)]
pub(super) struct SealedEntry {
    pub(super) path: PathBuf,
    pub(super) bytes: u64,
    pub(super) records: u64,
    pub(super) created_at: SystemTime,
}

#[derive(Debug)]
struct OpenEntry {
    bytes: u64,
    created_at: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    closed: bool,
    pending: u64,
    open: Option<OpenEntry>,
    sealed: BTreeMap<u64, SealedEntry>,
    sealed_bytes: u64,
}

impl State {
    fn used(&self) -> u64 {
        self.pending + self.open.as_ref().map_or(0, |o| o.bytes) + self.sealed_bytes
    }

    fn on_disk(&self) -> u64 {
        self.open.as_ref().map_or(0, |o| o.bytes) + self.sealed_bytes
    }

    fn oldest(&self) -> Option<SystemTime> {
        // The lowest sequence number is the oldest chunk (O(log n), called on every change);
        // a wall clock stepped backwards can only make this slightly off, never wrong by much.
        let sealed = self.sealed.first_key_value().map(|(_, e)| e.created_at);
        let open = self.open.as_ref().map(|o| o.created_at);
        match (sealed, open) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What [`Ledger::try_reserve`] decided.
#[derive(Debug)]
pub(super) enum Reservation {
    /// Room reserved. `dropped` chunks (drop-oldest) were taken out of the ledger; the caller
    /// deletes their files.
    Reserved { dropped: Vec<SealedEntry> },
    /// No room (even after dropping `dropped`, with drop-oldest).
    Full { dropped: Vec<SealedEntry> },
    /// The buffer is closed.
    Closed,
}

#[derive(Debug)]
struct Gauges {
    bytes: IntGauge,
    open: IntGauge,
    sealed: IntGauge,
    oldest_age: IntGauge,
    drop_oldest: IntCounter,
    buffer_full: IntCounter,
}

/// Atomic counters behind [`Stats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) frames_committed: AtomicU64,
    pub(super) groups: AtomicU64,
    pub(super) data_syncs: AtomicU64,
    pub(super) dir_syncs: AtomicU64,
    pub(super) chunks_sealed: AtomicU64,
    pub(super) frames_failed: AtomicU64,
    pub(super) records_rejected: AtomicU64,
    pub(super) chunks_dropped: AtomicU64,
    pub(super) records_dropped: AtomicU64,
}

/// Adds to a statistics counter. Relaxed: the counters order nothing, they are only read.
pub(super) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The ledger; see the module docs.
#[derive(Debug)]
pub(super) struct Ledger {
    limit: u64,
    state: Mutex<State>,
    /// Woken (all waiters) whenever bytes are freed or the buffer closes.
    pub(super) space: Notify,
    gauges: Gauges,
    pub(super) stats: Counters,
    #[cfg(test)]
    pub(super) faults: super::tests::Faults,
}

impl Ledger {
    pub(super) fn new(name: &str, limit: u64) -> Ledger {
        let chunks = |state| telemetry::BUFFER_CHUNKS.with_label_values(&[name, state]);
        telemetry::BUFFER_LIMIT_BYTES
            .with_label_values(&[name])
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
        Ledger {
            limit,
            state: Mutex::new(State::default()),
            space: Notify::new(),
            gauges: Gauges {
                bytes: telemetry::BUFFER_BYTES.with_label_values(&[name]),
                open: chunks("open"),
                sealed: chunks("sealed"),
                oldest_age: telemetry::BUFFER_OLDEST_AGE.with_label_values(&[name]),
                drop_oldest: telemetry::DROPPED_RECORDS.with_label_values(&["drop_oldest_chunk"]),
                buffer_full: telemetry::DROPPED_RECORDS.with_label_values(&["buffer_full"]),
            },
            stats: Counters::default(),
            #[cfg(test)]
            faults: super::tests::Faults::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock could only come from arithmetic on plain integers;
        // the state stays meaningful, so a poisoned lock is used as is rather than spreading
        // the panic to every appender.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, st: &State) {
        let gauge = |g: &IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&self.gauges.bytes, st.on_disk());
        gauge(&self.gauges.open, u64::from(st.open.is_some()));
        gauge(&self.gauges.sealed, st.sealed.len() as u64);
        let age = st
            .oldest()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or(0, |d| d.as_secs());
        gauge(&self.gauges.oldest_age, age);
    }

    /// Re-publishes the gauges (the oldest-chunk age moves with the clock).
    pub(super) fn refresh_metrics(&self) {
        let st = self.lock();
        self.publish(&st);
    }

    /// Reserves `bytes` for a frame, applying `action` when they do not fit.
    pub(super) fn try_reserve(&self, bytes: u64, action: OverflowAction) -> Reservation {
        let mut st = self.lock();
        if st.closed {
            return Reservation::Closed;
        }
        let mut dropped = Vec::new();
        if action == OverflowAction::DropOldestChunk {
            while st.used().saturating_add(bytes) > self.limit {
                let Some((_, entry)) = st.sealed.pop_first() else {
                    break;
                };
                st.sealed_bytes -= entry.bytes;
                bump(&self.stats.chunks_dropped, 1);
                bump(&self.stats.records_dropped, entry.records);
                self.gauges.drop_oldest.inc_by(entry.records);
                dropped.push(entry);
            }
        }
        if st.used().saturating_add(bytes) > self.limit {
            if !dropped.is_empty() {
                self.publish(&st);
            }
            return Reservation::Full { dropped };
        }
        st.pending += bytes;
        if !dropped.is_empty() {
            self.publish(&st);
        }
        Reservation::Reserved { dropped }
    }

    /// Counts records refused because the buffer is full.
    pub(super) fn rejected(&self, records: u32) {
        bump(&self.stats.records_rejected, u64::from(records));
        self.gauges.buffer_full.inc_by(u64::from(records));
    }

    /// Gives back a reservation that was never written (the writer is gone, or the write
    /// failed and was truncated away).
    pub(super) fn unreserve(&self, bytes: u64) {
        let mut st = self.lock();
        st.pending = st.pending.saturating_sub(bytes);
        drop(st);
        self.space.notify_waiters();
    }

    /// A chunk file was created with a header of `bytes`.
    pub(super) fn opened(&self, bytes: u64, created_at: SystemTime) {
        let mut st = self.lock();
        st.open = Some(OpenEntry { bytes, created_at });
        self.publish(&st);
    }

    /// Reserved frames of `bytes` were written to the open chunk.
    pub(super) fn written(&self, bytes: u64) {
        let mut st = self.lock();
        st.pending = st.pending.saturating_sub(bytes);
        if let Some(open) = st.open.as_mut() {
            open.bytes += bytes;
        }
        self.publish(&st);
    }

    /// The open chunk file was deleted (it held no frame).
    pub(super) fn open_discarded(&self) {
        let mut st = self.lock();
        st.open = None;
        self.publish(&st);
        drop(st);
        self.space.notify_waiters();
    }

    /// The open chunk was sealed as `seq`, holding `entry.bytes` bytes.
    pub(super) fn sealed(&self, seq: u64, entry: SealedEntry) {
        let mut st = self.lock();
        st.open = None;
        st.sealed_bytes += entry.bytes;
        st.sealed.insert(seq, entry);
        self.publish(&st);
        drop(st);
        // A seal makes a chunk droppable (drop-oldest waiters) and may shrink the open
        // chunk's bytes to what was acknowledged (after a failure).
        self.space.notify_waiters();
    }

    /// A chunk found by recovery.
    pub(super) fn recovered(&self, chunk: &SealedChunk) {
        let mut st = self.lock();
        st.sealed_bytes += chunk.bytes;
        st.sealed.insert(
            chunk.seq,
            SealedEntry {
                path: chunk.path.clone(),
                bytes: chunk.bytes,
                records: chunk.records,
                created_at: chunk.created_at,
            },
        );
        self.publish(&st);
    }

    /// Takes chunk `seq` out of the ledger (its bytes are freed) if it is still held and is
    /// the file at `path`. The caller deletes the file, then calls [`Ledger::freed`]; if
    /// deleting fails it puts the entry back with [`Ledger::restore`].
    pub(super) fn take_sealed(&self, seq: u64, path: &Path) -> Option<SealedEntry> {
        let mut st = self.lock();
        if st.sealed.get(&seq)?.path != path {
            return None;
        }
        let entry = st.sealed.remove(&seq)?;
        st.sealed_bytes -= entry.bytes;
        self.publish(&st);
        Some(entry)
    }

    /// Undoes [`Ledger::take_sealed`].
    pub(super) fn restore(&self, seq: u64, entry: SealedEntry) {
        let mut st = self.lock();
        st.sealed_bytes += entry.bytes;
        st.sealed.insert(seq, entry);
        self.publish(&st);
    }

    /// Wakes blocked appenders after bytes were freed.
    pub(super) fn freed(&self) {
        self.space.notify_waiters();
    }

    /// Marks the buffer closed: appends fail from now on; blocked ones wake and fail.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.space.notify_waiters();
    }

    pub(super) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub(super) fn usage(&self) -> Usage {
        let st = self.lock();
        self.publish(&st);
        Usage {
            bytes: st.on_disk(),
            limit: self.limit,
            open_chunks: u64::from(st.open.is_some()),
            sealed_chunks: st.sealed.len() as u64,
            oldest_created_at: st.oldest(),
            pending_bytes: st.pending,
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.lock().used() >= self.limit
    }

    pub(super) fn stats(&self) -> Stats {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            frames_committed: get(&s.frames_committed),
            groups: get(&s.groups),
            data_syncs: get(&s.data_syncs),
            dir_syncs: get(&s.dir_syncs),
            chunks_sealed: get(&s.chunks_sealed),
            frames_failed: get(&s.frames_failed),
            records_rejected: get(&s.records_rejected),
            chunks_dropped: get(&s.chunks_dropped),
            records_dropped: get(&s.records_dropped),
        }
    }
}
