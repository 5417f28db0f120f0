//! Which offset of each partition may be stored: the contiguous watermark of durable batches
//! (pure bookkeeping; the consumer thread owns it and does the IO).
//!
//! ## Invariants
//! - A batch is a run of consumed messages of one partition, `first..=last`, dispatched in
//!   offset order. The offset to store for a partition is `last + 1` of the longest prefix of
//!   its dispatched batches that are all done (durable in every buffer they went to, or dead
//!   lettered): a later batch done before an earlier one never moves the offset past the
//!   earlier one. What is stored is the next offset to consume (`store_offsets` stores as is,
//!   no +1).
//! - Each assignment of a partition has its own epoch. A completion carries the epoch its batch
//!   was dispatched in; one from an earlier assignment (the partition was revoked and came
//!   back, or its assignment was lost) is ignored, so it can never store an offset for the
//!   partition's new owner's turn.
//! - Bytes in flight (dispatched, not done) are counted over every partition, so the consumer
//!   can pause above a limit.

use std::collections::{BTreeMap, HashMap};

/// A partition: its topic and number.
pub type Tp = (String, i32);

/// The bookkeeping of every assigned partition.
#[derive(Debug, Default)]
pub struct Tracker {
    parts: HashMap<Tp, Part>,
    next_epoch: u64,
    in_flight_bytes: u64,
}

#[derive(Debug)]
struct Part {
    epoch: u64,
    /// Dispatched batches by first offset.
    batches: BTreeMap<i64, Batch>,
}

#[derive(Debug)]
struct Batch {
    last: i64,
    bytes: u64,
    /// The message timestamp of its first message (ms), when it has one.
    timestamp_ms: Option<i64>,
    done: bool,
}

impl Tracker {
    /// Nothing assigned.
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// `tp` is (again) assigned: a new epoch, nothing in flight.
    pub fn assign(&mut self, tp: Tp) -> u64 {
        self.revoke(&tp);
        self.next_epoch += 1;
        self.parts.insert(
            tp,
            Part {
                epoch: self.next_epoch,
                batches: BTreeMap::new(),
            },
        );
        self.next_epoch
    }

    /// `tp` is no longer assigned: its batches in flight are forgotten (their completions will
    /// be ignored).
    pub fn revoke(&mut self, tp: &Tp) {
        if let Some(part) = self.parts.remove(tp) {
            self.in_flight_bytes -= part
                .batches
                .values()
                .filter(|b| !b.done)
                .map(|b| b.bytes)
                .sum::<u64>();
        }
    }

    /// The epoch of `tp`'s assignment, if assigned.
    pub fn epoch(&self, tp: &Tp) -> Option<u64> {
        self.parts.get(tp).map(|p| p.epoch)
    }

    /// Records a batch `first..=last` of `bytes` as dispatched (`timestamp_ms`: its first
    /// message's); its epoch, or `None` when `tp` is not assigned (the batch must not be
    /// dispatched).
    pub fn dispatch(
        &mut self,
        tp: &Tp,
        (first, last): (i64, i64),
        bytes: u64,
        timestamp_ms: Option<i64>,
    ) -> Option<u64> {
        let part = self.parts.get_mut(tp)?;
        part.batches.insert(
            first,
            Batch {
                last,
                bytes,
                timestamp_ms,
                done: false,
            },
        );
        self.in_flight_bytes += bytes;
        Some(part.epoch)
    }

    /// The batch of `tp` starting at `first`, dispatched in `epoch`, is done. Returns the
    /// offset to store when the watermark moved; `None` when it did not, or when the
    /// completion is stale.
    pub fn complete(&mut self, tp: &Tp, epoch: u64, first: i64) -> Option<i64> {
        let part = self.parts.get_mut(tp).filter(|p| p.epoch == epoch)?;
        let batch = part.batches.get_mut(&first).filter(|b| !b.done)?;
        batch.done = true;
        self.in_flight_bytes -= batch.bytes;
        let mut watermark = None;
        while let Some(entry) = part.batches.first_entry() {
            if !entry.get().done {
                break;
            }
            watermark = Some(entry.remove().last + 1);
        }
        watermark
    }

    /// Batches of `tp` not yet done.
    pub fn pending(&self, tp: &Tp) -> usize {
        self.parts
            .get(tp)
            .map_or(0, |p| p.batches.values().filter(|b| !b.done).count())
    }

    /// Batches not yet done, over every partition.
    pub fn pending_total(&self) -> usize {
        self.parts.keys().map(|tp| self.pending(tp)).sum()
    }

    /// Bytes dispatched and not yet done, over every partition.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight_bytes
    }

    /// The message timestamp (ms) of the oldest message not yet done, over every partition.
    pub fn oldest_timestamp_ms(&self) -> Option<i64> {
        self.parts
            .values()
            .filter_map(|p| p.batches.values().find(|b| !b.done)?.timestamp_ms)
            .min()
    }

    /// The assigned partitions.
    pub fn assigned(&self) -> impl Iterator<Item = &Tp> {
        self.parts.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tp(p: i32) -> Tp {
        ("logs".into(), p)
    }

    #[test]
    fn the_watermark_waits_for_the_earliest_batch() {
        let mut t = Tracker::new();
        let e = t.assign(tp(0));
        t.dispatch(&tp(0), (0, 9), 100, Some(1000)).unwrap();
        t.dispatch(&tp(0), (10, 19), 100, Some(2000)).unwrap();
        t.dispatch(&tp(0), (25, 30), 50, None).unwrap();
        assert_eq!(t.in_flight_bytes(), 250);
        assert_eq!(t.oldest_timestamp_ms(), Some(1000));
        assert_eq!(
            t.complete(&tp(0), e, 10),
            None,
            "an earlier batch is in flight"
        );
        assert_eq!(t.oldest_timestamp_ms(), Some(1000));
        assert_eq!(t.complete(&tp(0), e, 0), Some(20));
        assert_eq!(
            t.oldest_timestamp_ms(),
            None,
            "the batch in flight has no timestamp"
        );
        assert_eq!(t.complete(&tp(0), e, 0), None, "done once");
        assert_eq!(t.complete(&tp(0), e, 25), Some(31));
        assert_eq!((t.in_flight_bytes(), t.pending_total()), (0, 0));
    }

    #[test]
    fn a_completion_from_an_earlier_assignment_is_ignored() {
        let mut t = Tracker::new();
        let old = t.assign(tp(1));
        t.dispatch(&tp(1), (5, 5), 10, None).unwrap();
        t.revoke(&tp(1));
        assert_eq!(t.in_flight_bytes(), 0);
        assert_eq!(t.dispatch(&tp(1), (6, 6), 10, None), None, "not assigned");
        assert_eq!(t.complete(&tp(1), old, 5), None);
        let new = t.assign(tp(1));
        assert_ne!(old, new);
        t.dispatch(&tp(1), (5, 5), 10, None).unwrap();
        assert_eq!(t.complete(&tp(1), old, 5), None, "stale epoch");
        assert_eq!(t.complete(&tp(1), new, 5), Some(6));
    }

    proptest! {
        /// Whatever order batches complete in, the stored offsets only grow, never pass a
        /// batch not done, and end past the last batch.
        #[test]
        fn stored_offsets_never_pass_a_batch_in_flight(order in Just((0..20usize).collect::<Vec<_>>()).prop_shuffle()) {
            let mut t = Tracker::new();
            let e = t.assign(tp(0));
            let firsts: Vec<i64> = (0..20).map(|i| i * 3).collect();
            for &f in &firsts {
                t.dispatch(&tp(0), (f, f + 2), 1, None).unwrap();
            }
            let mut done = [false; 20];
            let mut stored = 0;
            for i in order {
                done[i] = true;
                if let Some(offset) = t.complete(&tp(0), e, firsts[i]) {
                    prop_assert!(offset > stored);
                    stored = offset;
                }
                let prefix = done.iter().take_while(|d| **d).count() as i64;
                prop_assert_eq!(stored, prefix * 3);
            }
            prop_assert_eq!(stored, 60);
        }
    }
}
