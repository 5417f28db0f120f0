//! Counters shared by the connections, the per-second progress line and latency percentiles.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Live counters, updated by every connection.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records whose request was completely written to a socket (first send only).
    pub sent_records: AtomicU64,
    /// Records acknowledged by the server (with `--ack`).
    pub acked_records: AtomicU64,
    /// Bytes written to sockets, re-sends included.
    pub bytes: AtomicU64,
    /// Batches written but not acknowledged yet.
    pub unacked_batches: AtomicU64,
    /// Batches written again after a reconnect.
    pub resends: AtomicU64,
    /// Connection errors survived thanks to `--retry-for`.
    pub reconnects: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            sent_records: self.sent_records.load(Relaxed),
            acked_records: self.acked_records.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            unacked_batches: self.unacked_batches.load(Relaxed),
            resends: self.resends.load(Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub sent_records: u64,
    pub acked_records: u64,
    pub bytes: u64,
    pub unacked_batches: u64,
    pub resends: u64,
}

/// One progress line: rates over the last interval.
pub fn progress_line(elapsed: Duration, prev: &Snapshot, now: &Snapshot, dt: Duration) -> String {
    let secs = dt.as_secs_f64().max(1e-9);
    let rec_rate = (now.sent_records - prev.sent_records) as f64 / secs;
    let mb_rate = (now.bytes - prev.bytes) as f64 / secs / 1e6;
    format!(
        "[{:>5.1}s] sent {} records ({}/s, {:.1} MB/s), acked {}, unacked batches {}, resends {}",
        elapsed.as_secs_f64(),
        now.sent_records,
        human(rec_rate),
        mb_rate,
        now.acked_records,
        now.unacked_batches,
        now.resends
    )
}

/// `1234567.0` -> `"1.23M"`.
pub fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Ack latencies in microseconds; one sample per acknowledged batch.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples_us: Vec<u64>,
}

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.samples_us
            .push(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn merge(&mut self, other: Latencies) {
        self.samples_us.extend(other.samples_us);
    }

    /// p50, p99 and max in milliseconds; `None` without samples.
    pub fn summary(&mut self) -> Option<LatencySummary> {
        if self.samples_us.is_empty() {
            return None;
        }
        self.samples_us.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencySummary {
            p50_ms: ms(percentile(&self.samples_us, 50.0)),
            p99_ms: ms(percentile(&self.samples_us, 99.0)),
            max_ms: ms(*self.samples_us.last().expect("not empty")),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Spaces requests so that the whole run averages `rate` records per second (all connections
/// share one schedule). No busy loop: a caller learns when it may send and sleeps until then.
#[derive(Debug)]
pub struct Pacer {
    per_record: Duration,
    next: std::sync::Mutex<Option<Instant>>,
}

impl Pacer {
    pub fn new(records_per_sec: f64) -> Self {
        Self {
            per_record: Duration::from_secs_f64(1.0 / records_per_sec),
            next: std::sync::Mutex::new(None),
        }
    }

    /// Reserves `n` records and returns the instant at which they may be sent.
    pub fn reserve(&self, n: u64) -> Instant {
        let now = Instant::now();
        let mut next = self.next.lock().expect("pacer lock");
        let at = match *next {
            Some(t) if t > now => t,
            _ => now,
        };
        *next = Some(at + self.per_record * u32::try_from(n).unwrap_or(u32::MAX));
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary().unwrap();
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert!(Latencies::default().summary().is_none());
    }

    #[test]
    fn pacer_spaces_batches() {
        let p = Pacer::new(1000.0);
        let a = p.reserve(100);
        let b = p.reserve(100);
        let c = p.reserve(100);
        assert!(b.duration_since(a) >= Duration::from_millis(99));
        assert!(c.duration_since(b) >= Duration::from_millis(99));
    }

    #[test]
    fn human_units() {
        assert_eq!(human(1_234_567.0), "1.23M");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(12.0), "12");
    }
}
