//! `type = "null"`: counts and discards records. For benchmarks of the ingest path, where the
//! output must cost nothing.

use super::{Attempt, Outcome, Rec};

/// The null output.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullOutput;

impl NullOutput {
    /// Counts the records as delivered.
    pub fn send(&self, recs: &[Rec]) -> Attempt {
        Attempt {
            outcomes: vec![Outcome::Delivered; recs.len()],
            bytes: recs.iter().map(|r| r.record.len() as u64).sum(),
        }
    }
}
