//! An output's health: whether its deliveries are failing, and since when.
//!
//! An output counts as failing from the first attempt with a failure (whole or per record, but
//! not rejections, which are the records' fault) until an attempt fully succeeds; the worker
//! (and a replay, which delivers through the same health) says which. A chunk that could not
//! be read, or dead letters that could not be written, count as failing too.
//! `logferry_output_failing_seconds{output}` shows for how long; past `unready_after`,
//! `logferry_output_ready{output}` drops to 0 and `/readyz` answers 503.
//!
//! ## Invariants
//! - `failing_since` is set by the first failure of a failing stretch and kept by the later
//!   ones (compare-and-swap from 0), so the duration counts from the start of the trouble.
//! - `unready_after = 0` never makes the aggregator unready.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use logferry_common::telemetry;

/// Shared state of an output worker, read by `/readyz` and the metrics.
#[derive(Debug)]
pub struct OutputHealth {
    /// The output's name.
    name: String,
    /// Unix millis since when deliveries have been failing, 0 when healthy.
    failing_since_ms: AtomicU64,
    /// Failing longer than this makes the aggregator unready (zero: never).
    unready_after: Duration,
    /// What the latest failure was, while failing.
    last_error: Mutex<Option<String>>,
}

impl OutputHealth {
    /// Health of output `name`.
    pub fn new(name: &str, unready_after: Duration) -> OutputHealth {
        OutputHealth {
            name: name.to_owned(),
            failing_since_ms: AtomicU64::new(0),
            unready_after,
            last_error: Mutex::new(None),
        }
    }

    /// The output's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long the output has been failing, if it is.
    pub fn failing_for(&self) -> Option<Duration> {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        (since != 0).then(|| Duration::from_millis(unix_millis().saturating_sub(since)))
    }

    /// `Err(why)` when the output has been failing longer than `unready_after`.
    pub fn readiness(&self) -> Result<(), String> {
        match self.failing_for() {
            Some(d) if !self.unready_after.is_zero() && d >= self.unready_after => Err(format!(
                "output {} has been failing for {}s (unready_after = {}s)",
                self.name,
                d.as_secs(),
                self.unready_after.as_secs()
            )),
            _ => Ok(()),
        }
    }

    /// The latest failure, while the output is failing.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Marks the output failing with `error` (from now, unless it already is) or, with
    /// `None`, healthy; and publishes.
    pub(super) fn set_failing(&self, error: Option<&str>) {
        if error.is_some() {
            let _ = self.failing_since_ms.compare_exchange(
                0,
                unix_millis(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            self.failing_since_ms.store(0, Ordering::Relaxed);
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error.map(str::to_owned);
        self.publish();
    }

    /// Updates `logferry_output_failing_seconds` and `logferry_output_ready`.
    pub fn publish(&self) {
        let secs = self.failing_for().map_or(0, |d| d.as_secs());
        telemetry::OUTPUT_FAILING_SECONDS
            .with_label_values(&[&self.name])
            .set(secs as i64);
        telemetry::OUTPUT_READY
            .with_label_values(&[&self.name])
            .set(i64::from(self.readiness().is_ok()));
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}
