//! The chunk files of a buffer directory (`chunk-<seq>.open` / `.sealed`, as named by
//! `logferry_common::chunk::chunk_file_name`), for tests that damage, seed or count them.

use std::path::{Path, PathBuf};

use logferry_common::chunk::parse_chunk_file_name;

/// Chunk files (any state) directly in `dir`, sorted by name (so by sequence number); none if
/// `dir` does not exist.
pub fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(parse_chunk_file_name)
                .is_some()
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}
