//! The read side: sealed chunks as the output receives them, and reading one back.
//!
//! A sealed chunk is read whole: chunks are bounded by `chunk_limit_size` and an output sends
//! them as one unit anyway, so a single `read` syscall beats a streaming reader. Reading
//! verifies the header and every frame's CRC; a damaged frame is skipped and counted, never an
//! error, because the rest of the chunk is still good and an error would only make the output
//! retry a chunk that will never get better.

use std::path::PathBuf;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::format::{self, ChunkHeader, FrameScanner, Scanned, FRAME_HEADER_LEN};
use super::ChunkError;
use crate::telemetry;

/// A sealed chunk file, handed out by [`SealedReceiver`].
///
/// Cheap to clone (a path and a few numbers); the data stays on disk until [`Self::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedChunk {
    /// The chunk's sequence number (increasing in the order chunks were created).
    pub seq: u64,
    /// The chunk file.
    pub path: PathBuf,
    /// Its size on disk.
    pub bytes: u64,
    /// Records in its valid frames.
    pub records: u64,
    /// When the chunk was created.
    pub created_at: SystemTime,
}

impl SealedChunk {
    /// Reads the chunk file and verifies it: the header, then every frame's CRC.
    ///
    /// Damaged frames are skipped, counted in [`ChunkContents::bad_frames`], in
    /// `logferry_buffer_corruption_total{action="bad_frame"}` and (with their record count when
    /// it is readable) in `logferry_dropped_records_total{reason="corrupt_frame"}`. Blocking
    /// file IO: from async code, call it on the blocking pool if chunks are large.
    ///
    /// # Errors
    /// [`ChunkError::Gone`] if the file was released or dropped to make room (skip it);
    /// [`ChunkError::BadHeader`] if the header is damaged (nothing in the file can be trusted);
    /// [`ChunkError::Io`] if it cannot be read.
    pub fn read(&self) -> Result<ChunkContents, ChunkError> {
        let data = match std::fs::read(&self.path) {
            Ok(data) => Bytes::from(data),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ChunkError::Gone {
                    path: self.path.clone(),
                })
            }
            Err(source) => {
                return Err(ChunkError::Io {
                    op: "read",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        ChunkContents::parse(data).map_err(|reason| ChunkError::BadHeader {
            path: self.path.clone(),
            reason,
        })
    }
}

/// Where frames of a chunk are within its bytes.
#[derive(Debug, Clone, Copy)]
struct FrameSpan {
    payload_at: usize,
    len: usize,
    records: u32,
}

/// The verified contents of a sealed chunk ([`SealedChunk::read`]).
#[derive(Debug, Clone)]
pub struct ChunkContents {
    header: ChunkHeader,
    data: Bytes,
    frames: Vec<FrameSpan>,
    bad_frames: u32,
    records: u64,
}

impl ChunkContents {
    /// Verifies a whole chunk file held in memory, counting damaged frames in the metrics.
    ///
    /// Frames are accepted up to the largest size the format allows rather than the buffer's
    /// `max_frame_bytes`: a frame whose CRC matches was written by us, and a limit lowered in
    /// the config since then must not turn good data into "damage".
    ///
    /// # Errors
    /// A [`format::HeaderError`] if the header is damaged.
    pub fn parse(data: Bytes) -> Result<ChunkContents, format::HeaderError> {
        let (header, start) = ChunkHeader::parse(&data)?;
        let mut frames = Vec::new();
        let mut bad_frames = 0u32;
        let mut bad_records = 0u64;
        let mut records = 0u64;
        for item in FrameScanner::new(&data, start, format::MAX_FRAME_PAYLOAD) {
            match item {
                Scanned::Frame { offset, header } => {
                    frames.push(FrameSpan {
                        payload_at: offset + FRAME_HEADER_LEN,
                        len: usize::try_from(header.len).unwrap_or(usize::MAX),
                        records: header.records,
                    });
                    records += u64::from(header.records);
                }
                Scanned::Bad { records: r, .. } => {
                    bad_frames = bad_frames.saturating_add(1);
                    bad_records += u64::from(r.unwrap_or(0));
                }
                // Recovery truncates torn tails, so one here is damage after recovery.
                Scanned::TornTail { .. } => bad_frames = bad_frames.saturating_add(1),
            }
        }
        if bad_frames > 0 {
            tracing::error!(
                buffer = %header.key,
                seq = header.seq,
                bad_frames,
                lost_records = bad_records,
                "damaged frames skipped while reading a chunk"
            );
            telemetry::BUFFER_CORRUPTION
                .with_label_values(&[&header.key, "bad_frame"])
                .inc_by(u64::from(bad_frames));
            telemetry::DROPPED_RECORDS
                .with_label_values(&["corrupt_frame"])
                .inc_by(bad_records);
        }
        Ok(ChunkContents {
            header,
            data,
            frames,
            bad_frames,
            records,
        })
    }

    /// The valid frames, in the order they were appended.
    pub fn frames(&self) -> impl Iterator<Item = FrameRef<'_>> {
        self.frames.iter().map(move |f| FrameRef {
            payload: self
                .data
                .get(f.payload_at..f.payload_at + f.len)
                .unwrap_or_default(),
            records: f.records,
        })
    }

    /// The valid frames' payloads as [`Bytes`] sharing this chunk's buffer (no copy), for
    /// callers that need to own them (e.g. to move into a task).
    pub fn payloads(&self) -> impl Iterator<Item = (Bytes, u32)> + '_ {
        self.frames.iter().map(move |f| {
            (
                self.data.slice(f.payload_at..f.payload_at + f.len),
                f.records,
            )
        })
    }

    /// Number of valid frames.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Damaged frames (and damaged tails) that were skipped.
    pub fn bad_frames(&self) -> u32 {
        self.bad_frames
    }

    /// Records in the valid frames.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The chunk's header.
    pub fn header(&self) -> &ChunkHeader {
        &self.header
    }
}

/// One valid frame of a chunk.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    /// The payload, exactly as appended.
    pub payload: &'a [u8],
    /// The record count given at append.
    pub records: u32,
}

/// Receives sealed chunks: first those recovered at open, in sequence order, then each chunk
/// as the writer seals it. Returns `None` once the buffer is closed (or every handle dropped)
/// and every sealed chunk was received.
#[derive(Debug)]
pub struct SealedReceiver {
    pub(super) rx: mpsc::UnboundedReceiver<SealedChunk>,
}

impl SealedReceiver {
    /// The next sealed chunk; `None` when there will be no more.
    pub async fn recv(&mut self) -> Option<SealedChunk> {
        self.rx.recv().await
    }

    /// The next sealed chunk if one is waiting.
    pub fn try_recv(&mut self) -> Option<SealedChunk> {
        self.rx.try_recv().ok()
    }
}
