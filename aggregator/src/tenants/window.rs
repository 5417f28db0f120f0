//! Records in and out of a pipeline over the last five minutes, from samples of its since-start
//! counters: no work per record, only a few words per pipeline every [`SAMPLE_EVERY`].
//!
//! ## Arithmetic
//! A sample is `(at, records_in, records_out)`; [`Window::sample`] keeps one when the newest is
//! at least [`SAMPLE_EVERY`] old. The count over the window is the counter now minus the
//! counter at the *base*: the newest sample taken at least [`SPAN`] ago, or, while there is
//! none (the pipeline is younger than that), the oldest sample. The span covered is reported
//! with the counts: [`SPAN`] up to [`SPAN`] + the time between two samples once the pipeline is
//! older than [`SPAN`], less before.
//!
//! ## Invariants
//! - At most one sample older than [`SPAN`] is kept, and kept samples are at least
//!   [`SAMPLE_EVERY`] apart, so a window holds at most `SPAN / SAMPLE_EVERY + 1` samples.
//! - A counter that went down (an output's count leaves `records_out` with the output) gives
//!   0, never a wrapped number.
//! - The clock is a parameter: nothing here reads it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The window.
pub const SPAN: Duration = Duration::from_secs(300);
/// Least time between two samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Counts over the window, as the status shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windowed {
    /// Records in over the span.
    pub records_in: u64,
    /// Records out over the span.
    pub records_out: u64,
    /// The span the counts cover, in whole seconds.
    pub seconds: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    records_in: u64,
    records_out: u64,
}

/// The samples of one pipeline.
#[derive(Debug)]
pub struct Window {
    /// The first sample, or the newest one older than [`SPAN`] at the last [`Window::sample`].
    oldest: Sample,
    /// The samples after it, oldest first.
    newer: VecDeque<Sample>,
}

impl Window {
    /// A window whose first sample is the counters at `now`.
    pub fn new(now: Instant, records_in: u64, records_out: u64) -> Window {
        Window {
            oldest: Sample {
                at: now,
                records_in,
                records_out,
            },
            newer: VecDeque::with_capacity((SPAN.as_secs() / SAMPLE_EVERY.as_secs()) as usize + 1),
        }
    }

    /// Keeps the counters at `now` when the newest sample is [`SAMPLE_EVERY`] old, and drops
    /// the samples no base can be taken from any more.
    pub fn sample(&mut self, now: Instant, records_in: u64, records_out: u64) {
        let newest = self.newer.back().unwrap_or(&self.oldest);
        if now.saturating_duration_since(newest.at) < SAMPLE_EVERY {
            return;
        }
        self.newer.push_back(Sample {
            at: now,
            records_in,
            records_out,
        });
        while let Some(s) = self
            .newer
            .front()
            .filter(|s| now.saturating_duration_since(s.at) >= SPAN)
        {
            self.oldest = *s;
            self.newer.pop_front();
        }
    }

    /// The counts between the base (see the module docs) and the counters at `now`.
    pub fn over(&self, now: Instant, records_in: u64, records_out: u64) -> Windowed {
        let base = self
            .newer
            .iter()
            .rev()
            .find(|s| now.saturating_duration_since(s.at) >= SPAN)
            .unwrap_or(&self.oldest);
        Windowed {
            records_in: records_in.saturating_sub(base.records_in),
            records_out: records_out.saturating_sub(base.records_out),
            seconds: now.saturating_duration_since(base.at).as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_young_pipeline_counts_since_its_first_sample() {
        let t0 = Instant::now();
        let mut w = Window::new(t0, 100, 40);
        w.sample(t0 + secs(10), 150, 60);
        assert_eq!(
            w.over(t0 + secs(65), 200, 90),
            Windowed {
                records_in: 100,
                records_out: 50,
                seconds: 65
            }
        );
    }

    #[test]
    fn an_old_pipeline_counts_the_last_five_minutes_to_within_one_sample() {
        let t0 = Instant::now();
        let mut w = Window::new(t0, 0, 0);
        // 10 records in and 9 out per second for 20 minutes, sampled every second.
        for s in 1..=1200u64 {
            w.sample(t0 + secs(s), 10 * s, 9 * s);
        }
        let got = w.over(t0 + secs(1200), 12_000, 10_800);
        assert!(
            (SPAN.as_secs()..SPAN.as_secs() + SAMPLE_EVERY.as_secs()).contains(&got.seconds),
            "{got:?}"
        );
        assert_eq!(got.records_in, 10 * got.seconds);
        assert_eq!(got.records_out, 9 * got.seconds);
        // Samples 10 s apart, one of them older than the span.
        assert!(w.newer.len() <= 30, "{}", w.newer.len());
    }

    #[test]
    fn nothing_in_the_last_five_minutes_counts_zero_however_much_came_before() {
        let t0 = Instant::now();
        let mut w = Window::new(t0, 0, 0);
        w.sample(t0 + secs(60), 5_000, 5_000);
        for s in (70..=600).step_by(10) {
            w.sample(t0 + secs(s), 5_000, 5_000);
        }
        let got = w.over(t0 + secs(600), 5_000, 5_000);
        assert_eq!((got.records_in, got.records_out, got.seconds), (0, 0, 300));
    }

    #[test]
    fn samples_closer_than_the_interval_are_not_kept() {
        let t0 = Instant::now();
        let mut w = Window::new(t0, 0, 0);
        w.sample(t0 + secs(3), 30, 30);
        w.sample(t0 + secs(9), 90, 90);
        assert!(w.newer.is_empty());
        w.sample(t0 + secs(10), 100, 100);
        assert_eq!(w.newer.len(), 1);
    }

    #[test]
    fn a_counter_that_went_down_counts_zero() {
        let t0 = Instant::now();
        let w = Window::new(t0, 10, 500);
        let got = w.over(t0 + secs(20), 30, 200);
        assert_eq!((got.records_in, got.records_out), (20, 0));
    }
}
