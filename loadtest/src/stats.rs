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

/// How fast records may go out over time: a steady rate, or a linear ramp that then holds its
/// final rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    Steady(f64),
    /// `from` records/s rising (or falling) linearly to `to` over `over`, then `to`.
    Ramp {
        from: f64,
        to: f64,
        over: Duration,
    },
}

impl Schedule {
    /// The target rate at `t` after the start.
    pub fn rate_at(&self, t: Duration) -> f64 {
        match *self {
            Schedule::Steady(r) => r,
            Schedule::Ramp { from, to, over } => {
                let f = (t.as_secs_f64() / over.as_secs_f64()).min(1.0);
                from + (to - from) * f
            }
        }
    }

    /// Records the schedule allows in the first `t`.
    pub fn records_by(&self, t: Duration) -> f64 {
        let t = t.as_secs_f64();
        match *self {
            Schedule::Steady(r) => r * t,
            Schedule::Ramp { from, to, over } => {
                let d = over.as_secs_f64();
                let c = (to - from) / (2.0 * d);
                if t <= d {
                    from * t + c * t * t
                } else {
                    from * d + c * d * d + to * (t - d)
                }
            }
        }
    }

    /// When (after the start) the schedule has allowed `k` records: the inverse of
    /// [`Schedule::records_by`].
    pub fn time_for(&self, k: f64) -> Duration {
        let secs = match *self {
            Schedule::Steady(r) => k / r,
            Schedule::Ramp { from, to, over } => {
                let d = over.as_secs_f64();
                let c = (to - from) / (2.0 * d);
                let at_end = from * d + c * d * d;
                if k > at_end {
                    d + (k - at_end) / to
                } else {
                    // Root of c t^2 + from t - k = 0 in [0, d], in the form that stays exact for
                    // c near 0 and for from = 0.
                    let disc = (from * from + 4.0 * c * k).max(0.0);
                    let den = from + disc.sqrt();
                    if den <= 0.0 {
                        0.0
                    } else {
                        2.0 * k / den
                    }
                }
            }
        };
        Duration::from_secs_f64(secs.clamp(0.0, 1e9))
    }
}

/// `FROM:TO:DURATION`, e.g. `1000:200000:60s`.
pub fn parse_ramp(s: &str) -> Result<Schedule, String> {
    let parts: Vec<&str> = s.splitn(3, ':').collect();
    let [from, to, over] = parts[..] else {
        return Err(format!(
            "expected FROM:TO:DURATION (e.g. 1000:200000:60s), got {s:?}"
        ));
    };
    let num = |v: &str, what: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| format!("{what} {v:?} is not a non-negative number"))
    };
    let from = num(from, "FROM")?;
    let to = num(to, "TO")?;
    if to <= 0.0 {
        return Err("TO must be above 0".into());
    }
    let over =
        humantime::parse_duration(over.trim()).map_err(|e| format!("DURATION {over:?}: {e}"))?;
    if over.is_zero() {
        return Err("DURATION must be above 0".into());
    }
    Ok(Schedule::Ramp { from, to, over })
}

/// Spaces requests so that the run follows a [`Schedule`] (all connections share it). No busy
/// loop: a caller learns when it may send and sleeps until then. A sender that falls behind does
/// not burst to catch up: the schedule skips ahead to "now" instead, so the offered rate never
/// exceeds the target.
#[derive(Debug)]
pub struct Pacer {
    schedule: Schedule,
    state: std::sync::Mutex<PacerState>,
}

#[derive(Debug)]
struct PacerState {
    start: Option<Instant>,
    /// Records reserved so far, in schedule units.
    reserved: f64,
}

/// How far behind the schedule a sender may be before the schedule skips ahead.
const MAX_LAG: Duration = Duration::from_millis(100);

impl Pacer {
    pub fn new(schedule: Schedule) -> Self {
        Self {
            schedule,
            state: std::sync::Mutex::new(PacerState {
                start: None,
                reserved: 0.0,
            }),
        }
    }

    /// Starts the clock (otherwise the first [`Pacer::reserve`] does).
    pub fn start_at(&self, t: Instant) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.start.get_or_insert(t);
    }

    /// Reserves `n` records and returns the instant at which they may be sent.
    pub fn reserve(&self, n: u64) -> Instant {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let start = *st.start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        let mut at = self.schedule.time_for(st.reserved);
        if at + MAX_LAG < elapsed {
            st.reserved = st.reserved.max(self.schedule.records_by(elapsed));
            at = elapsed;
        }
        st.reserved += n as f64;
        start + at
    }

    /// The average target rate between two instants (what a one-second tick compares with).
    pub fn target_rate(&self, from: Instant, to: Instant) -> f64 {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(start) = st.start else {
            return self.schedule.rate_at(Duration::ZERO);
        };
        let (a, b) = (
            from.saturating_duration_since(start),
            to.saturating_duration_since(start),
        );
        if b <= a {
            return self.schedule.rate_at(b);
        }
        (self.schedule.records_by(b) - self.schedule.records_by(a)) / (b - a).as_secs_f64()
    }
}

/// Ack latencies of the current progress interval (microseconds), shared by the connections and
/// drained by the progress ticker.
#[derive(Debug, Default)]
pub struct IntervalLatencies {
    samples_us: std::sync::Mutex<Vec<u64>>,
}

impl IntervalLatencies {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.samples_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(us);
    }

    /// p50 and p99 (ms) of the samples since the last call; `None` without samples.
    pub fn take(&self) -> Option<(f64, f64)> {
        let mut v = std::mem::take(&mut *self.samples_us.lock().unwrap_or_else(|e| e.into_inner()));
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some((
            percentile(&v, 50.0) as f64 / 1000.0,
            percentile(&v, 99.0) as f64 / 1000.0,
        ))
    }
}

/// One second of a run, as reported in the summary's timeline.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Tick {
    /// Seconds since the start, at the end of the interval.
    pub t: f64,
    /// The schedule's average rate over the interval (null when unpaced).
    pub target_rate: Option<f64>,
    pub sent_per_sec: f64,
    pub acked_per_sec: f64,
    pub mb_per_sec: f64,
    pub unacked_batches: u64,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
}

impl Tick {
    pub fn new(
        t: Duration,
        dt: Duration,
        prev: &Snapshot,
        now: &Snapshot,
        target_rate: Option<f64>,
        latency: Option<(f64, f64)>,
    ) -> Self {
        let secs = dt.as_secs_f64().max(1e-9);
        Self {
            t: t.as_secs_f64(),
            target_rate,
            sent_per_sec: (now.sent_records - prev.sent_records) as f64 / secs,
            acked_per_sec: (now.acked_records - prev.acked_records) as f64 / secs,
            mb_per_sec: (now.bytes - prev.bytes) as f64 / secs / 1e6,
            unacked_batches: now.unacked_batches,
            ack_p50_ms: latency.map(|l| l.0),
            ack_p99_ms: latency.map(|l| l.1),
        }
    }

    /// The progress line's text (after the totals).
    pub fn describe(&self, ack: bool) -> String {
        let mut s = format!(
            "{}/s, {:.1} MB/s",
            human(self.sent_per_sec),
            self.mb_per_sec
        );
        if let Some(r) = self.target_rate {
            s += &format!(" (target {}/s)", human(r));
        }
        if ack {
            s += &format!(
                ", acked {}/s, unacked {}",
                human(self.acked_per_sec),
                self.unacked_batches
            );
            if let (Some(p50), Some(p99)) = (self.ack_p50_ms, self.ack_p99_ms) {
                s += &format!(", ack p50 {p50:.1} ms p99 {p99:.1} ms");
            }
        }
        s
    }
}

/// The first second at which a paced run stopped keeping up: the achieved rate stayed below 90%
/// of the target for two consecutive seconds (what a ramp-up test looks for).
pub fn saturation(timeline: &[Tick], ack: bool) -> Option<Tick> {
    let behind = |t: &Tick| {
        let achieved = if ack { t.acked_per_sec } else { t.sent_per_sec };
        t.target_rate.is_some_and(|r| r > 0.0 && achieved < 0.9 * r)
    };
    timeline
        .windows(2)
        .find(|w| behind(&w[0]) && behind(&w[1]))
        .map(|w| w[0])
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
        let p = Pacer::new(Schedule::Steady(1000.0));
        let a = p.reserve(100);
        let b = p.reserve(100);
        let c = p.reserve(100);
        assert!(b.duration_since(a) >= Duration::from_millis(99));
        assert!(c.duration_since(b) >= Duration::from_millis(99));
    }

    #[test]
    fn ramp_schedule_is_consistent() {
        let r = parse_ramp("1000:3000:2s").unwrap();
        assert_eq!(
            r,
            Schedule::Ramp {
                from: 1000.0,
                to: 3000.0,
                over: Duration::from_secs(2)
            }
        );
        assert_eq!(r.rate_at(Duration::ZERO), 1000.0);
        assert_eq!(r.rate_at(Duration::from_secs(1)), 2000.0);
        assert_eq!(r.rate_at(Duration::from_secs(10)), 3000.0);
        // Area under the ramp: 2 s averaging 2000/s, then 3000/s.
        assert!((r.records_by(Duration::from_secs(2)) - 4000.0).abs() < 1e-6);
        assert!((r.records_by(Duration::from_secs(3)) - 7000.0).abs() < 1e-6);
        for k in [0.0, 1.0, 500.0, 1500.0, 3999.0, 4000.0, 6500.0, 1e6] {
            let t = r.time_for(k);
            assert!(
                (r.records_by(t) - k).abs() < 1e-3 * k.max(1.0),
                "k {k} t {t:?}"
            );
        }
        // From zero, and downwards.
        for s in ["0:1000:1s", "5000:100:3s"] {
            let r = parse_ramp(s).unwrap();
            for k in [1.0, 100.0, 499.0, 2000.0, 9000.0] {
                let t = r.time_for(k);
                assert!((r.records_by(t) - k).abs() < 1e-3 * k, "{s}: k {k} t {t:?}");
            }
        }
        for bad in ["1:2", "a:2:1s", "1:0:1s", "1:2:0s", "-1:2:1s", "1:2:soon"] {
            assert!(parse_ramp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn saturation_needs_two_seconds_behind() {
        let tick = |t: f64, target: f64, acked: f64| Tick {
            t,
            target_rate: Some(target),
            sent_per_sec: acked,
            acked_per_sec: acked,
            mb_per_sec: 0.0,
            unacked_batches: 0,
            ack_p50_ms: None,
            ack_p99_ms: None,
        };
        let tl = [
            tick(1.0, 1000.0, 1000.0),
            tick(2.0, 2000.0, 1500.0),
            tick(3.0, 3000.0, 2950.0),
            tick(4.0, 4000.0, 3000.0),
            tick(5.0, 5000.0, 3000.0),
        ];
        assert_eq!(saturation(&tl, true).map(|t| t.t), Some(4.0));
        assert_eq!(saturation(&tl[..4], true), None);
    }

    #[test]
    fn human_units() {
        assert_eq!(human(1_234_567.0), "1.23M");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(12.0), "12");
    }
}
