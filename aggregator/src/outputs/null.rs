//! `type = "null"`: counts and discards records. For benchmarks of the ingest path, where the
//! output must cost nothing.

use logferry_common::chunk::ChunkContents;

use super::Delivered;

/// The null output.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullOutput;

impl NullOutput {
    /// Counts the chunk's records as delivered.
    pub fn deliver(&self, contents: &ChunkContents) -> Delivered {
        let mut delivered = Delivered::default();
        for frame in contents.frames() {
            delivered.records += u64::from(frame.records);
            delivered.bytes += frame.payload.len() as u64;
        }
        delivered
    }
}
