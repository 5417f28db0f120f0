//! `type = "null"`: counts and discards records. For benchmarks of the ingest path, where the
//! output must cost nothing.

use super::{Attempt, Outcome, OutputError, Rec, Sink};

/// The null output.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullOutput;

impl Sink for NullOutput {
    /// Counts the records as delivered.
    async fn send(&self, recs: &[Rec]) -> Result<Attempt, OutputError> {
        Ok(Attempt {
            outcomes: vec![Outcome::Delivered; recs.len()],
            bytes: recs.iter().map(|r| r.record.len() as u64).sum(),
        })
    }

    /// There is nothing to reach.
    async fn check(&self) -> Result<String, OutputError> {
        Ok("discards everything".into())
    }
}
