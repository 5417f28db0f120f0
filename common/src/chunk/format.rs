//! The chunk file format as pure functions: bytes in, values out, no IO.
//!
//! Everything that interprets bytes from disk lives here, so that the writer, the reader,
//! recovery and `inspect` share one definition of "a valid frame", and so that it can be tested
//! and fuzzed without a filesystem. Every parser accepts any `&[u8]` and returns a value or an
//! error: none panics, indexes out of bounds, or allocates based on a length read from the input.
//! The layouts are drawn in the [module docs](super#on-disk-format).
//!
//! The file-name builder and its parser sit side by side ([`chunk_file_name`],
//! [`parse_chunk_file_name`]) so that they cannot drift apart.
//!
//! # Warning
//! These layouts are on disk, in files that outlive the binary that wrote them. Do not add,
//! remove, resize or reorder fields; define a new [`FORMAT_VERSION`] instead.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first bytes of every chunk file.
pub const CHUNK_MAGIC: [u8; 8] = *b"LFCHUNK1";
/// The header version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Header bytes before the key: magic, version, flags, created_at, seq, key_len.
pub const HEADER_FIXED_LEN: usize = 8 + 2 + 2 + 8 + 8 + 2;
/// The header CRC that follows the key.
pub const HEADER_CRC_LEN: usize = 4;
/// The longest key a header can hold (`key_len` is a `u16`).
pub const MAX_KEY_LEN: usize = u16::MAX as usize;
/// The first bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"LFR1";
/// Frame bytes before the payload: magic, len, records, crc32c.
pub const FRAME_HEADER_LEN: usize = 16;
/// The largest payload the format can describe (`len` is a `u32`).
pub const MAX_FRAME_PAYLOAD: u64 = u32::MAX as u64;

/// The state of a chunk file, as encoded in its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChunkState {
    /// `.open`: being appended to (or left so by a crash).
    Open,
    /// `.sealed`: complete, never appended to again.
    Sealed,
}

impl ChunkState {
    /// The file-name extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ChunkState::Open => "open",
            ChunkState::Sealed => "sealed",
        }
    }
}

const FILE_PREFIX: &str = "chunk-";
const SEQ_DIGITS: usize = 20;

/// The file name of chunk `seq` in `state`: `chunk-<seq:020>.<open|sealed>`.
///
/// Zero-padding to the 20 digits of `u64::MAX` makes names sort like their sequence numbers.
pub fn chunk_file_name(seq: u64, state: ChunkState) -> String {
    format!("{FILE_PREFIX}{seq:0SEQ_DIGITS$}.{}", state.extension())
}

/// The inverse of [`chunk_file_name`]; `None` for any name it would not produce.
pub fn parse_chunk_file_name(name: &str) -> Option<(u64, ChunkState)> {
    let rest = name.strip_prefix(FILE_PREFIX)?;
    let (digits, ext) = rest.split_once('.')?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // 20 digits can exceed u64::MAX ("99999999999999999999"): parse() rejects those.
    let seq = digits.parse::<u64>().ok()?;
    let state = match ext {
        "open" => ChunkState::Open,
        "sealed" => ChunkState::Sealed,
        _ => return None,
    };
    Some((seq, state))
}

/// Why bytes are not a valid chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The input ends inside the header.
    #[error("too short for a chunk header: {len} bytes, need {needed}")]
    Short {
        /// Bytes available.
        len: usize,
        /// Bytes the header needs (as far as could be told).
        needed: usize,
    },
    /// The first bytes are not [`CHUNK_MAGIC`].
    #[error("not a chunk file (bad magic)")]
    BadMagic,
    /// The header CRC does not match its bytes.
    #[error("header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        /// The CRC in the file.
        stored: u32,
        /// The CRC of the header bytes.
        computed: u32,
    },
    /// Written by a newer (or unknown) format version.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    /// Flags this version does not know.
    #[error("unknown header flags {0:#06x}")]
    UnknownFlags(u16),
    /// The key is not UTF-8.
    #[error("header key is not UTF-8")]
    KeyNotUtf8,
    /// The key does not fit in a header.
    #[error("header key is {len} bytes, more than a header can hold")]
    KeyTooLong {
        /// The key's length.
        len: usize,
    },
}

impl HeaderError {
    /// A short stable name for logs and reports.
    pub fn code(&self) -> &'static str {
        match self {
            HeaderError::Short { .. } => "short",
            HeaderError::BadMagic => "bad_magic",
            HeaderError::BadCrc { .. } => "bad_crc",
            HeaderError::UnsupportedVersion(_) => "unsupported_version",
            HeaderError::UnknownFlags(_) => "unknown_flags",
            HeaderError::KeyNotUtf8 => "key_not_utf8",
            HeaderError::KeyTooLong { .. } => "key_too_long",
        }
    }
}

/// The header at the start of every chunk file.
///
/// # Warning
/// Serialized: do not add, remove or reorder fields without a new [`FORMAT_VERSION`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Format version ([`FORMAT_VERSION`]).
    pub version: u16,
    /// Flags (none defined: 0).
    pub flags: u16,
    /// Creation time, unix nanoseconds.
    pub created_at_nanos: u64,
    /// The chunk's sequence number (also in its file name).
    pub seq: u64,
    /// The buffer's name.
    pub key: String,
}

impl ChunkHeader {
    /// A current-version header.
    pub fn new(seq: u64, key: impl Into<String>, created_at: SystemTime) -> Self {
        let created_at_nanos = created_at
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        ChunkHeader {
            version: FORMAT_VERSION,
            flags: 0,
            created_at_nanos,
            seq,
            key: key.into(),
        }
    }

    /// The creation time.
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.created_at_nanos)
    }

    /// The header's size on disk.
    pub fn encoded_len(&self) -> usize {
        HEADER_FIXED_LEN + self.key.len() + HEADER_CRC_LEN
    }

    /// The header's bytes.
    ///
    /// # Errors
    /// [`HeaderError::KeyTooLong`] when the key exceeds [`MAX_KEY_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, HeaderError> {
        let key_len = u16::try_from(self.key.len()).map_err(|_| HeaderError::KeyTooLong {
            len: self.key.len(),
        })?;
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&CHUNK_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.created_at_nanos.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(self.key.as_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Parses the header at the start of `buf`; returns it and its length (where frames start).
    ///
    /// The CRC is checked before any field is interpreted, so a bit flip in `version` reads as
    /// damage, not as a file from the future.
    ///
    /// # Errors
    /// Any [`HeaderError`]; never panics.
    pub fn parse(buf: &[u8]) -> Result<(Self, usize), HeaderError> {
        let short = |needed| HeaderError::Short {
            len: buf.len(),
            needed,
        };
        if buf.len() < CHUNK_MAGIC.len() {
            // Tell a truncated chunk file from a foreign file by the bytes that are there.
            return if CHUNK_MAGIC.starts_with(buf) {
                Err(short(HEADER_FIXED_LEN + HEADER_CRC_LEN))
            } else {
                Err(HeaderError::BadMagic)
            };
        }
        let fixed: &[u8; HEADER_FIXED_LEN] = buf
            .get(..HEADER_FIXED_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| short(HEADER_FIXED_LEN + HEADER_CRC_LEN))?;
        if fixed[..8] != CHUNK_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let key_len = usize::from(u16::from_le_bytes([fixed[28], fixed[29]]));
        let crc_at = HEADER_FIXED_LEN + key_len;
        let total = crc_at + HEADER_CRC_LEN;
        let covered = buf.get(..crc_at).ok_or_else(|| short(total))?;
        let stored = le_u32(buf, crc_at).ok_or_else(|| short(total))?;
        let computed = crc32c::crc32c(covered);
        if stored != computed {
            return Err(HeaderError::BadCrc { stored, computed });
        }
        let version = u16::from_le_bytes([fixed[8], fixed[9]]);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let flags = u16::from_le_bytes([fixed[10], fixed[11]]);
        if flags != 0 {
            return Err(HeaderError::UnknownFlags(flags));
        }
        let created_at_nanos = le_u64(fixed, 12).unwrap_or_default();
        let seq = le_u64(fixed, 20).unwrap_or_default();
        let key = covered.get(HEADER_FIXED_LEN..).unwrap_or_default();
        let key = std::str::from_utf8(key)
            .map_err(|_| HeaderError::KeyNotUtf8)?
            .to_owned();
        Ok((
            ChunkHeader {
                version,
                flags,
                created_at_nanos,
                seq,
                key,
            },
            total,
        ))
    }
}

/// The CRC stored in a frame: CRC-32C over the record count (4 LE bytes) and the payload.
///
/// Covering `records` means a flipped count is caught too, so accounting read back from disk is
/// as trustworthy as the payload.
pub fn frame_crc(records: u32, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&records.to_le_bytes()), payload)
}

/// Why bytes are not a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer than [`FRAME_HEADER_LEN`] bytes.
    #[error("too short for a frame header")]
    Short,
    /// The first bytes are not [`FRAME_MAGIC`].
    #[error("bad frame magic")]
    BadMagic,
    /// The payload is longer than a frame can describe.
    #[error("payload of {len} bytes is too large for a frame")]
    TooLarge {
        /// The payload's length.
        len: usize,
    },
}

/// The 16 bytes before each frame's payload.
///
/// # Warning
/// Serialized: do not add, remove or reorder fields without a new [`FORMAT_VERSION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload bytes.
    pub len: u32,
    /// Records in the payload.
    pub records: u32,
    /// [`frame_crc`] of the payload.
    pub crc: u32,
}

impl FrameHeader {
    /// The header for `payload` holding `records` records (computes the CRC).
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] if the payload exceeds [`MAX_FRAME_PAYLOAD`].
    pub fn new(payload: &[u8], records: u32) -> Result<Self, FrameError> {
        let len = u32::try_from(payload.len())
            .map_err(|_| FrameError::TooLarge { len: payload.len() })?;
        Ok(FrameHeader {
            len,
            records,
            crc: frame_crc(records, payload),
        })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[..4].copy_from_slice(&FRAME_MAGIC);
        out[4..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..12].copy_from_slice(&self.records.to_le_bytes());
        out[12..16].copy_from_slice(&self.crc.to_le_bytes());
        out
    }

    /// Parses the frame header at the start of `buf` (magic checked; len and CRC not).
    ///
    /// # Errors
    /// [`FrameError::Short`] or [`FrameError::BadMagic`]; never panics.
    pub fn parse(buf: &[u8]) -> Result<Self, FrameError> {
        let h: &[u8; FRAME_HEADER_LEN] = buf
            .get(..FRAME_HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(FrameError::Short)?;
        if h[..4] != FRAME_MAGIC {
            return Err(FrameError::BadMagic);
        }
        Ok(FrameHeader {
            len: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            records: u32::from_le_bytes([h[8], h[9], h[10], h[11]]),
            crc: u32::from_le_bytes([h[12], h[13], h[14], h[15]]),
        })
    }

    /// Header plus payload bytes.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.len)
    }

    /// Whether `payload` is what this header describes.
    pub fn verify(&self, payload: &[u8]) -> bool {
        payload.len() as u64 == u64::from(self.len) && frame_crc(self.records, payload) == self.crc
    }
}

/// The valid frame starting at `buf[offset..]`, if there is one: magic, `len <= max_payload`,
/// the whole payload present, and the CRC matching.
pub fn check_frame(buf: &[u8], offset: usize, max_payload: u64) -> Option<FrameHeader> {
    let rest = buf.get(offset..)?;
    let header = FrameHeader::parse(rest).ok()?;
    if u64::from(header.len) > max_payload {
        return None;
    }
    let end = FRAME_HEADER_LEN.checked_add(usize::try_from(header.len).ok()?)?;
    let payload = rest.get(FRAME_HEADER_LEN..end)?;
    (frame_crc(header.records, payload) == header.crc).then_some(header)
}

/// One step of [`FrameScanner`]: a valid frame, a damaged region, or a torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// A valid frame; its payload is `buf[offset + FRAME_HEADER_LEN..][..header.len]`.
    Frame {
        /// Offset of the frame's magic.
        offset: usize,
        /// Its header (CRC verified).
        header: FrameHeader,
    },
    /// Damaged bytes followed by a valid frame: skipped.
    Bad {
        /// Where the damage starts.
        offset: usize,
        /// How many bytes are skipped (up to the next valid frame).
        len: usize,
        /// The damaged frame's record count, when its header was intact and the frame complete
        /// (only its CRC failed); `None` when unknown.
        records: Option<u32>,
    },
    /// Bytes at the end that hold no valid frame: a write torn by a crash (or damage that
    /// cannot be told from one). Recovery truncates them.
    TornTail {
        /// Where the tail starts (the end of the last valid frame, or of the header).
        offset: usize,
        /// Its length, to the end of the input.
        len: usize,
    },
}

impl Scanned {
    /// The offset just past this item.
    pub fn end(&self) -> usize {
        match *self {
            Scanned::Frame { offset, header } => {
                offset + FRAME_HEADER_LEN + usize::try_from(header.len).unwrap_or(usize::MAX)
            }
            Scanned::Bad { offset, len, .. } | Scanned::TornTail { offset, len } => offset + len,
        }
    }
}

/// Walks the frames of a chunk file, resynchronising after damage.
///
/// At each offset: a valid frame ([`check_frame`]) is yielded and skipped. Otherwise the scanner
/// looks for the next offset holding a valid frame (first right after the damaged frame, if its
/// header was intact; then at every later occurrence of [`FRAME_MAGIC`]); the bytes in between
/// are one [`Scanned::Bad`]. If no valid frame follows, the rest is a [`Scanned::TornTail`].
/// Every item either is a frame whose CRC matched or carries no payload, and the items tile the
/// input from `start` to its end without gaps or overlaps.
///
/// A payload could, in principle, contain the bytes of a valid frame (a log line quoting a
/// chunk file); resynchronisation inside a damaged frame could then yield it. A CRC-32C match
/// on damaged data is otherwise a 1 in 2^32 event.
#[derive(Debug, Clone)]
pub struct FrameScanner<'a> {
    buf: &'a [u8],
    pos: usize,
    max_payload: u64,
}

impl<'a> FrameScanner<'a> {
    /// Scans `buf` (a whole chunk file) from `start` (the header's length), accepting payloads
    /// of at most `max_payload` bytes.
    pub fn new(buf: &'a [u8], start: usize, max_payload: u64) -> Self {
        FrameScanner {
            buf,
            pos: start,
            max_payload,
        }
    }

    fn resync(&self, mut from: usize) -> Option<usize> {
        loop {
            let rest = self.buf.get(from..)?;
            let at = rest
                .windows(FRAME_MAGIC.len())
                .position(|w| w == FRAME_MAGIC)?;
            let candidate = from + at;
            if check_frame(self.buf, candidate, self.max_payload).is_some() {
                return Some(candidate);
            }
            from = candidate + 1;
        }
    }
}

impl Iterator for FrameScanner<'_> {
    type Item = Scanned;

    fn next(&mut self) -> Option<Scanned> {
        let offset = self.pos;
        let len = self.buf.len();
        if offset >= len {
            return None;
        }
        if let Some(header) = check_frame(self.buf, offset, self.max_payload) {
            self.pos = offset + FRAME_HEADER_LEN + usize::try_from(header.len).unwrap_or(len);
            return Some(Scanned::Frame { offset, header });
        }
        // Damage. If the header is intact and the frame complete, only its bytes are bad
        // (the common case: a flipped bit in a payload); try the offset right after it first.
        let complete = self
            .buf
            .get(offset..)
            .and_then(|rest| FrameHeader::parse(rest).ok())
            .filter(|h| u64::from(h.len) <= self.max_payload)
            .and_then(|h| {
                let end = offset.checked_add(usize::try_from(h.frame_len()).ok()?)?;
                (end <= len).then_some((h, end))
            });
        let records = complete.map(|(h, _)| h.records);
        let next = match complete {
            Some((_, end)) if check_frame(self.buf, end, self.max_payload).is_some() => Some(end),
            _ => self.resync(offset + 1),
        };
        match next {
            Some(next) => {
                self.pos = next;
                Some(Scanned::Bad {
                    offset,
                    len: next - offset,
                    records,
                })
            }
            None => {
                self.pos = len;
                Some(Scanned::TornTail {
                    offset,
                    len: len - offset,
                })
            }
        }
    }
}

fn le_u32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        buf.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn le_u64(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        buf.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(seq: u64) -> ChunkHeader {
        ChunkHeader::new(
            seq,
            "out_es",
            UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123),
        )
    }

    fn frame(payload: &[u8], records: u32) -> Vec<u8> {
        let mut out = FrameHeader::new(payload, records)
            .unwrap()
            .encode()
            .to_vec();
        out.extend_from_slice(payload);
        out
    }

    /// A chunk file with `n` frames; returns it, the header length and each frame's offset.
    fn chunk_file(n: usize) -> (Vec<u8>, usize, Vec<usize>) {
        let mut buf = header(7).encode().unwrap();
        let start = buf.len();
        let mut offsets = Vec::new();
        for i in 0..n {
            offsets.push(buf.len());
            let payload = format!("payload number {i} {}", "x".repeat(i * 13));
            buf.extend_from_slice(&frame(payload.as_bytes(), i as u32 + 1));
        }
        (buf, start, offsets)
    }

    fn scan(buf: &[u8], start: usize) -> Vec<Scanned> {
        FrameScanner::new(buf, start, MAX_FRAME_PAYLOAD).collect()
    }

    #[test]
    fn header_round_trip() {
        let h = header(42);
        let bytes = h.encode().unwrap();
        assert_eq!(bytes.len(), h.encoded_len());
        assert_eq!(&bytes[..8], b"LFCHUNK1");
        let mut with_frames = bytes.clone();
        with_frames.extend_from_slice(b"LFR1 trailing frames");
        let (parsed, len) = ChunkHeader::parse(&with_frames).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(len, bytes.len());
        assert_eq!(parsed.created_at(), h.created_at());
    }

    #[test]
    fn header_layout_is_fixed() {
        // Pin the byte layout: a change here breaks every chunk file on disk.
        let h = ChunkHeader {
            version: 1,
            flags: 0,
            created_at_nanos: 0x0102_0304_0506_0708,
            seq: 9,
            key: "ab".into(),
        };
        let b = h.encode().unwrap();
        assert_eq!(&b[8..10], &[1, 0]);
        assert_eq!(&b[10..12], &[0, 0]);
        assert_eq!(&b[12..20], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[20..28], &[9, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[28..30], &[2, 0]);
        assert_eq!(&b[30..32], b"ab");
        assert_eq!(&b[32..36], &crc32c::crc32c(&b[..32]).to_le_bytes());
        assert_eq!(b.len(), 36);
    }

    #[test]
    fn header_damage_is_detected() {
        let good = header(1).encode().unwrap();
        assert!(matches!(
            ChunkHeader::parse(&[]),
            Err(HeaderError::Short { .. })
        ));
        assert!(matches!(
            ChunkHeader::parse(&good[..5]),
            Err(HeaderError::Short { .. })
        ));
        assert!(matches!(
            ChunkHeader::parse(&good[..29]),
            Err(HeaderError::Short { .. })
        ));
        assert!(matches!(
            ChunkHeader::parse(&good[..good.len() - 1]),
            Err(HeaderError::Short { .. })
        ));
        assert_eq!(ChunkHeader::parse(b"hello"), Err(HeaderError::BadMagic));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(ChunkHeader::parse(&bad), Err(HeaderError::BadMagic));
        for i in 8..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(
                ChunkHeader::parse(&bad).is_err(),
                "flip at {i} not detected"
            );
        }
        let mut v2 = header(1);
        v2.version = 2;
        assert_eq!(
            ChunkHeader::parse(&v2.encode().unwrap()),
            Err(HeaderError::UnsupportedVersion(2))
        );
        let mut flagged = header(1);
        flagged.flags = 4;
        assert_eq!(
            ChunkHeader::parse(&flagged.encode().unwrap()),
            Err(HeaderError::UnknownFlags(4))
        );
        // Non-UTF-8 key with a valid CRC.
        let mut raw = header(1).encode().unwrap();
        raw.truncate(HEADER_FIXED_LEN);
        raw[28] = 1;
        raw[29] = 0;
        raw.push(0xff);
        let crc = crc32c::crc32c(&raw);
        raw.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(ChunkHeader::parse(&raw), Err(HeaderError::KeyNotUtf8));
        let long = ChunkHeader::new(1, "k".repeat(MAX_KEY_LEN + 1), SystemTime::now());
        assert!(matches!(long.encode(), Err(HeaderError::KeyTooLong { .. })));
    }

    #[test]
    fn frame_round_trip() {
        let h = FrameHeader::new(b"hello", 3).unwrap();
        let bytes = h.encode();
        assert_eq!(&bytes[..4], b"LFR1");
        assert_eq!(&bytes[4..8], &5u32.to_le_bytes());
        assert_eq!(&bytes[8..12], &3u32.to_le_bytes());
        let mut crc_input = 3u32.to_le_bytes().to_vec();
        crc_input.extend_from_slice(b"hello");
        assert_eq!(&bytes[12..16], &crc32c::crc32c(&crc_input).to_le_bytes());
        assert_eq!(FrameHeader::parse(&bytes), Ok(h));
        assert!(h.verify(b"hello"));
        assert!(!h.verify(b"hellO"));
        assert_eq!(FrameHeader::parse(&bytes[..15]), Err(FrameError::Short));
        assert_eq!(
            FrameHeader::parse(b"LFR2............"),
            Err(FrameError::BadMagic)
        );
        assert_eq!(h.frame_len(), 21);
    }

    #[test]
    fn scan_clean_file() {
        let (buf, start, offsets) = chunk_file(5);
        let items = scan(&buf, start);
        assert_eq!(items.len(), 5);
        for (i, item) in items.iter().enumerate() {
            match item {
                Scanned::Frame { offset, header } => {
                    assert_eq!(*offset, offsets[i]);
                    assert_eq!(header.records, i as u32 + 1);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(scan(&buf[..start], start).is_empty());
    }

    #[test]
    fn flipped_payload_bit_skips_one_frame() {
        let (mut buf, start, offsets) = chunk_file(5);
        buf[offsets[2] + FRAME_HEADER_LEN + 3] ^= 1;
        let items = scan(&buf, start);
        assert_eq!(items.len(), 5);
        assert_eq!(
            items[2],
            Scanned::Bad {
                offset: offsets[2],
                len: offsets[3] - offsets[2],
                records: Some(3)
            }
        );
        assert!(matches!(items[3], Scanned::Frame { offset, .. } if offset == offsets[3]));
        assert!(matches!(items[4], Scanned::Frame { .. }));
    }

    #[test]
    fn flipped_records_field_is_detected() {
        let (mut buf, start, offsets) = chunk_file(3);
        buf[offsets[1] + 8] ^= 4;
        let items = scan(&buf, start);
        assert!(matches!(items[1], Scanned::Bad { .. }));
        assert_eq!(
            items
                .iter()
                .filter(|i| matches!(i, Scanned::Frame { .. }))
                .count(),
            2
        );
    }

    #[test]
    fn damaged_magic_and_len_resync() {
        let (mut buf, start, offsets) = chunk_file(5);
        buf[offsets[1]] = b'X';
        buf[offsets[3] + 5] = 0x7f; // len now points far past the end
        let items = scan(&buf, start);
        let kinds: Vec<_> = items
            .iter()
            .map(|i| match i {
                Scanned::Frame { .. } => 'F',
                Scanned::Bad { .. } => 'B',
                Scanned::TornTail { .. } => 'T',
            })
            .collect();
        assert_eq!(kinds, vec!['F', 'B', 'F', 'B', 'F']);
        assert_eq!(
            items[1],
            Scanned::Bad {
                offset: offsets[1],
                len: offsets[2] - offsets[1],
                records: None
            }
        );
        assert_eq!(items[3].end(), offsets[4]);
    }

    #[test]
    fn len_above_limit_is_damage() {
        let (buf, start, _) = chunk_file(3);
        let items: Vec<_> = FrameScanner::new(&buf, start, 10).collect();
        // Frame 0's payload is 18 bytes: over the limit, and nothing after it validates either.
        assert_eq!(
            items,
            vec![Scanned::TornTail {
                offset: start,
                len: buf.len() - start
            }]
        );
    }

    #[test]
    fn torn_tails() {
        let (buf, start, offsets) = chunk_file(4);
        for cut in [
            offsets[3] + 1,
            offsets[3] + 10,
            offsets[3] + FRAME_HEADER_LEN + 2,
            buf.len() - 1,
        ] {
            let items = scan(&buf[..cut], start);
            assert_eq!(items.len(), 4, "cut at {cut}");
            assert_eq!(
                items[3],
                Scanned::TornTail {
                    offset: offsets[3],
                    len: cut - offsets[3]
                },
                "cut at {cut}"
            );
        }
        // Zeros appended (a crash after the size grew but before the data landed).
        let mut zeros = buf.clone();
        zeros.extend_from_slice(&[0; 100]);
        let items = scan(&zeros, start);
        assert_eq!(
            items[4],
            Scanned::TornTail {
                offset: buf.len(),
                len: 100
            }
        );
        // A complete last frame with a bad CRC has no valid frame after it: a torn tail.
        let mut last_bad = buf.clone();
        let n = last_bad.len();
        last_bad[n - 1] ^= 0xff;
        assert_eq!(
            scan(&last_bad, start)[3],
            Scanned::TornTail {
                offset: offsets[3],
                len: n - offsets[3]
            }
        );
    }

    #[test]
    fn file_names() {
        assert_eq!(
            chunk_file_name(7, ChunkState::Open),
            "chunk-00000000000000000007.open"
        );
        assert_eq!(
            chunk_file_name(u64::MAX, ChunkState::Sealed),
            "chunk-18446744073709551615.sealed"
        );
        for (seq, state) in [
            (0, ChunkState::Open),
            (7, ChunkState::Sealed),
            (u64::MAX, ChunkState::Open),
        ] {
            assert_eq!(
                parse_chunk_file_name(&chunk_file_name(seq, state)),
                Some((seq, state))
            );
        }
        for bad in [
            "chunk-7.open",
            "chunk-00000000000000000007.tmp",
            "chunk-00000000000000000007",
            "chunk-0000000000000000000a.open",
            "chunk-99999999999999999999.open",
            "chunk-+0000000000000000007.open",
            "xchunk-00000000000000000007.open",
            "chunk-00000000000000000007.open.bak",
            "",
        ] {
            assert_eq!(parse_chunk_file_name(bad), None, "{bad}");
        }
        // Names sort like sequence numbers.
        assert!(chunk_file_name(9, ChunkState::Open) < chunk_file_name(10, ChunkState::Open));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), start in 0usize..600) {
            let _ = ChunkHeader::parse(&bytes);
            let _ = FrameHeader::parse(&bytes);
            let items: Vec<_> = FrameScanner::new(&bytes, start, MAX_FRAME_PAYLOAD).collect();
            let mut pos = start;
            for item in &items {
                if let Scanned::Frame { offset, header } = item {
                    let payload = &bytes[offset + FRAME_HEADER_LEN..item.end()];
                    prop_assert!(header.verify(payload));
                }
                let offset = match *item {
                    Scanned::Frame { offset, .. } | Scanned::Bad { offset, .. } | Scanned::TornTail { offset, .. } => offset,
                };
                prop_assert_eq!(offset, pos);
                pos = item.end();
            }
            prop_assert!(items.is_empty() || pos == bytes.len());
            let _ = parse_chunk_file_name(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn arbitrary_file_names_never_panic(name in "\\PC{0,40}") {
            if let Some((seq, state)) = parse_chunk_file_name(&name) {
                prop_assert_eq!(chunk_file_name(seq, state), name);
            }
        }

        /// Random truncations and bit flips: every frame yielded has a matching CRC and is one
        /// of the frames written, and every frame entirely before the first damaged byte is
        /// yielded intact, in order.
        #[test]
        fn damaged_files_yield_only_valid_frames(
            n in 1usize..12,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 0..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let (mut buf, start, offsets) = chunk_file(n);
            let originals: Vec<Vec<u8>> = offsets
                .iter()
                .zip(offsets.iter().skip(1).chain(std::iter::once(&buf.len())))
                .map(|(&a, &b)| buf[a..b].to_vec())
                .collect();
            let mut first_damage = usize::MAX;
            if let Some(cut) = cut {
                let at = start + cut.index(buf.len() - start + 1);
                buf.truncate(at);
                first_damage = first_damage.min(at);
            }
            for (idx, bit) in flips {
                if buf.len() > start {
                    let at = start + idx.index(buf.len() - start);
                    buf[at] ^= 1 << bit;
                    first_damage = first_damage.min(at);
                }
            }
            let items = scan(&buf, start);
            let mut frames = Vec::new();
            for item in &items {
                if let Scanned::Frame { offset, header } = *item {
                    let bytes = &buf[offset..item.end()];
                    prop_assert!(header.verify(&bytes[FRAME_HEADER_LEN..]));
                    prop_assert!(originals.iter().any(|o| o.as_slice() == bytes));
                    frames.push(offset);
                }
            }
            let intact: Vec<usize> = offsets
                .iter()
                .zip(originals.iter())
                .filter(|(&o, f)| o + f.len() <= first_damage)
                .map(|(&o, _)| o)
                .collect();
            prop_assert!(frames.len() >= intact.len());
            prop_assert_eq!(&frames[..intact.len()], &intact[..]);
        }
    }
}
