//! File identity: device + inode + a hash of the file's first line.
//!
//! Paths are not identities: kubelet renames `0.log` to `0.log.<time>` and the runtime opens a
//! new `0.log`; logrotate's `copytruncate` keeps the inode but replaces the content. So a file
//! is known by `(head, dev, ino)`:
//!
//! - **rename + create**: the renamed file keeps its inode and its first line, so it is the
//!   same file (drained to its end through the descriptor already open); the new file has
//!   another inode and is new.
//! - **copytruncate**: the truncated file keeps its inode but gets a new first line, so it is a
//!   new file once it has one; the copy has the same first line under another inode, which is
//!   how the tailer recognises it as the continuation of what it was reading.
//! - **inode reuse** after a delete: same dev and inode, another first line: a new file.
//!
//! The head is the first line (up to and including its `\n`), capped at [`HEAD_BYTES`]; a file
//! with neither a complete first line nor [`HEAD_BYTES`] bytes has no fingerprint yet and is
//! looked at again later. Every container log line starts with a timestamp, so first lines
//! of different files differ.
//!
//! Limit: docker json-file puts the time last, so a file truncated in place and rewritten with
//! the same long first message keeps its fingerprint. The tailer notices such a truncation when
//! the file is shorter than where it was read or checkpointed, and then reads it from its start
//! and resets the checkpoint; one rewritten past its old checkpoint while the forwarder was down
//! cannot be told from growth. Nothing cheaper helps: the birth time and the inode survive a
//! truncation, and any change to the hash or the key would orphan every stored checkpoint at
//! the upgrade (files re-read whole, or with `read_from = "tail"` skipped to their ends).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use sha2::{Digest, Sha256};

/// Most bytes of a file's start that go into its fingerprint.
pub const HEAD_BYTES: usize = 512;

/// The identity of a tailed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint {
    /// Hash of the first line.
    pub head: u64,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

impl Fingerprint {
    /// Bytes of [`Fingerprint::to_bytes`].
    pub const LEN: usize = 24;

    /// Key bytes (head first, so checkpoints of one content sort together).
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.head.to_be_bytes());
        out[8..16].copy_from_slice(&self.dev.to_be_bytes());
        out[16..].copy_from_slice(&self.ino.to_be_bytes());
        out
    }

    /// Parses [`Fingerprint::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Option<Fingerprint> {
        if b.len() != Self::LEN {
            return None;
        }
        let u = |r: std::ops::Range<usize>| -> Option<u64> {
            Some(u64::from_be_bytes(b.get(r)?.try_into().ok()?))
        };
        Some(Fingerprint {
            head: u(0..8)?,
            dev: u(8..16)?,
            ino: u(16..24)?,
        })
    }

    /// Whether this fingerprint is of the open file `(dev, ino)`.
    pub fn same_inode(&self, dev: u64, ino: u64) -> bool {
        self.dev == dev && self.ino == ino
    }
}

/// The hash of a head (first line, or the first [`HEAD_BYTES`]); `None` if `start` does not
/// hold a complete one yet.
pub fn head_hash(start: &[u8]) -> Option<u64> {
    let head = match memchr::memchr(b'\n', &start[..start.len().min(HEAD_BYTES)]) {
        Some(nl) => &start[..=nl],
        None if start.len() >= HEAD_BYTES => &start[..HEAD_BYTES],
        None => return None,
    };
    let digest = Sha256::digest(head);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Some(u64::from_be_bytes(first))
}

/// Reads the start of an open file and fingerprints it; `Ok(None)` if it has no complete head
/// yet.
pub fn fingerprint(file: &File) -> io::Result<Option<Fingerprint>> {
    let meta = file.metadata()?;
    Ok(read_head(file)?.map(|head| Fingerprint {
        head,
        dev: meta.dev(),
        ino: meta.ino(),
    }))
}

/// The head hash of an open file as it is now (`None`: no complete head).
pub fn read_head(file: &File) -> io::Result<Option<u64>> {
    let mut buf = [0u8; HEAD_BYTES];
    let mut filled = 0;
    while filled < HEAD_BYTES {
        let n = file.read_at(&mut buf[filled..], filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(head_hash(&buf[..filled]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        assert_eq!(head_hash(b"partial"), None);
        assert_eq!(head_hash(b"a\nb"), head_hash(b"a\nc"));
        assert_ne!(head_hash(b"a\n"), head_hash(b"b\n"));
        let long = vec![b'x'; 600];
        assert_eq!(head_hash(&long), head_hash(&long[..HEAD_BYTES]));
        assert_eq!(head_hash(&long[..HEAD_BYTES - 1]), None);
    }

    #[test]
    fn bytes_round_trip_and_files() {
        let fp = Fingerprint {
            head: 1,
            dev: 2,
            ino: 3,
        };
        assert_eq!(Fingerprint::from_bytes(&fp.to_bytes()), Some(fp));
        assert_eq!(Fingerprint::from_bytes(b"short"), None);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.log");
        std::fs::write(&p, b"no newline yet").unwrap();
        assert_eq!(fingerprint(&File::open(&p).unwrap()).unwrap(), None);
        std::fs::write(&p, b"line one\nline two\n").unwrap();
        let a = fingerprint(&File::open(&p).unwrap()).unwrap().unwrap();
        std::fs::write(&p, b"line one\nother\n").unwrap();
        let b = fingerprint(&File::open(&p).unwrap()).unwrap().unwrap();
        assert_eq!(a, b, "same first line, same inode");
        let q = d.path().join("copy.log");
        std::fs::copy(&p, &q).unwrap();
        let c = fingerprint(&File::open(&q).unwrap()).unwrap().unwrap();
        assert_eq!(c.head, a.head);
        assert_ne!(c.ino, a.ino);
    }
}
