//! Model-based test of [`Buffer`], in the style of Vector's disk buffer model tests: random
//! sequences of actions are applied both to the real buffer (real files in a temporary
//! directory, the real writer thread) and to a few lines of obviously-correct model, and the
//! two are compared after every action.
//!
//! The model is the buffer's contract as `common/src/chunk/mod.rs` states it, for one appender
//! that waits for each ticket:
//!
//! - a frame costs `FRAME_HEADER_LEN + payload` bytes, a chunk file its header plus its frames;
//! - a frame that would push a non-empty open chunk over `chunk_limit_size` goes to a new chunk,
//!   and a chunk that reaches `chunk_limit_size` is sealed;
//! - under `drop_oldest_chunk`, an append that does not fit under `total_limit_size` (open +
//!   sealed bytes) first deletes the oldest sealed chunks until it fits;
//! - sealed chunks reach the receiver in order, hold exactly the frames appended to them, and
//!   stay until released or dropped; released and dropped chunks never come back, not after a
//!   graceful reopen and not after a crash (which leaves the open chunk `.open` on disk, to be
//!   sealed by recovery);
//! - `usage()` and the files in the directory account for exactly the model's bytes (Invariant
//!   6), `stats()` for exactly the chunks dropped since the buffer was opened.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use logferry_common::chunk::format::{FRAME_HEADER_LEN, HEADER_CRC_LEN, HEADER_FIXED_LEN};
use logferry_common::chunk::{
    AppendError, Buffer, BufferOptions, ChunkError, FsyncPolicy, OverflowAction, Recovered,
    SealedChunk, SealedReceiver,
};
use proptest::prelude::*;

const NAME: &str = "model";
const CHUNK_LIMIT: u64 = 1024;
/// Small enough that appends regularly drop chunks, large enough that an append always fits
/// once every sealed chunk is gone (the open chunk stays under `CHUNK_LIMIT`, a frame is at
/// most `FRAME_HEADER_LEN + MAX_PAYLOAD`), so no append ever waits.
const TOTAL_LIMIT: u64 = 4096;
const MAX_PAYLOAD: usize = 1200;
/// How long the receiver may take to hand over a chunk the model says was sealed.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Action {
    /// Append a frame with a payload of about `len` bytes holding `records` records, and wait
    /// for its ticket.
    Append { len: usize, records: u32 },
    /// `seal_now`.
    Seal,
    /// Read the oldest sealed chunk, compare it with the model, and release it.
    ReleaseOldest,
    /// `close`.
    Close,
    /// Close (if open), drop the buffer and open the directory again.
    Reopen,
    /// Drop the buffer without closing it, on a copy of the directory taken first, so the open
    /// chunk stays `.open` as after `kill -9`; then open the copy.
    Crash,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        10 => (1..=MAX_PAYLOAD, 1u32..5).prop_map(|(len, records)| Action::Append { len, records }),
        2 => Just(Action::Seal),
        4 => Just(Action::ReleaseOldest),
        1 => Just(Action::Close),
        1 => Just(Action::Reopen),
        1 => Just(Action::Crash),
    ]
}

/// One chunk as the model sees it.
#[derive(Debug, Clone)]
struct ModelChunk {
    frames: Vec<(Vec<u8>, u32)>,
    bytes: u64,
}

impl ModelChunk {
    fn records(&self) -> u64 {
        self.frames.iter().map(|(_, r)| u64::from(*r)).sum()
    }
}

#[derive(Debug)]
struct Model {
    /// Bytes of a chunk header (fixed part, key, CRC).
    header: u64,
    open: Option<ModelChunk>,
    /// Oldest first.
    sealed: VecDeque<ModelChunk>,
    closed: bool,
    /// Since the buffer was (re)opened, like [`Buffer::stats`].
    chunks_dropped: u64,
    records_dropped: u64,
}

impl Model {
    fn new() -> Self {
        Model {
            header: (HEADER_FIXED_LEN + NAME.len() + HEADER_CRC_LEN) as u64,
            open: None,
            sealed: VecDeque::new(),
            closed: false,
            chunks_dropped: 0,
            records_dropped: 0,
        }
    }

    fn used(&self) -> u64 {
        self.open.as_ref().map_or(0, |c| c.bytes) + self.sealed.iter().map(|c| c.bytes).sum::<u64>()
    }

    /// Appends a frame; returns how many of the oldest sealed chunks it dropped.
    fn append(&mut self, payload: &[u8], records: u32) -> usize {
        let frame = (FRAME_HEADER_LEN + payload.len()) as u64;
        let mut dropped = 0;
        while self.used() + frame > TOTAL_LIMIT {
            let chunk = self
                .sealed
                .pop_front()
                .expect("the limits are chosen so that an append never waits");
            self.chunks_dropped += 1;
            self.records_dropped += chunk.records();
            dropped += 1;
        }
        if self
            .open
            .as_ref()
            .is_some_and(|c| !c.frames.is_empty() && c.bytes + frame > CHUNK_LIMIT)
        {
            self.seal();
        }
        let header = self.header;
        let open = self.open.get_or_insert_with(|| ModelChunk {
            frames: Vec::new(),
            bytes: header,
        });
        open.frames.push((payload.to_vec(), records));
        open.bytes += frame;
        if open.bytes >= CHUNK_LIMIT {
            self.seal();
        }
        dropped
    }

    fn seal(&mut self) {
        if let Some(chunk) = self.open.take() {
            self.sealed.push_back(chunk);
        }
    }

    /// What the buffer opened on the model's files must report.
    fn reopened(&mut self) -> Recovered {
        self.seal();
        self.closed = false;
        self.chunks_dropped = 0;
        self.records_dropped = 0;
        Recovered {
            sealed_chunks: self.sealed.len() as u64,
            records: self.sealed.iter().map(ModelChunk::records).sum(),
            bytes: self.used(),
            ..Recovered::default()
        }
    }
}

/// The real buffer and what the test holds of it.
struct Real {
    /// Directories of earlier incarnations (a crashed writer may still be sealing in one).
    old_dirs: Vec<tempfile::TempDir>,
    dir: tempfile::TempDir,
    buffer: Buffer,
    rx: SealedReceiver,
    /// Every sealed chunk received and not yet released or dropped, oldest first: the
    /// counterpart of `Model::sealed`.
    received: VecDeque<SealedChunk>,
    /// Chunks released or dropped since the buffer was opened; they must stay gone.
    gone: Vec<SealedChunk>,
    /// Frames appended so far (makes every payload unique).
    appended: u64,
}

fn options(dir: &Path) -> BufferOptions {
    let mut o = BufferOptions::new(dir, NAME);
    o.chunk_limit_size = CHUNK_LIMIT;
    o.total_limit_size = TOTAL_LIMIT;
    o.overflow_action = OverflowAction::DropOldestChunk;
    // Fsyncs make no difference to what a process crash leaves behind, and cost time.
    o.fsync = FsyncPolicy::Never;
    // Only size seals and `seal_now`: an age seal would race with the model.
    o.flush_interval = Duration::from_secs(3600);
    o
}

fn open(dir: tempfile::TempDir, old_dirs: Vec<tempfile::TempDir>) -> (Real, Recovered) {
    let (buffer, rx, recovered) = Buffer::open(options(dir.path())).expect("open the buffer");
    let real = Real {
        old_dirs,
        dir,
        buffer,
        rx,
        received: VecDeque::new(),
        gone: Vec::new(),
        appended: 0,
    };
    (real, recovered)
}

/// The frames of a chunk, read back from its file.
fn frames(chunk: &SealedChunk) -> Vec<(Vec<u8>, u32)> {
    let contents = chunk
        .read()
        .unwrap_or_else(|e| panic!("read {}: {e}", chunk.path.display()));
    assert_eq!(contents.bad_frames(), 0, "{}", chunk.path.display());
    contents
        .frames()
        .map(|f| (f.payload.to_vec(), f.records))
        .collect()
}

/// `(bytes, .open files, .sealed files)` of the buffer's directory.
fn files(dir: &Path) -> (u64, usize, usize) {
    let (mut bytes, mut open, mut sealed) = (0, 0, 0);
    for entry in std::fs::read_dir(dir).expect("read the buffer directory") {
        let entry = entry.expect("directory entry");
        let meta = entry.metadata().expect("metadata");
        if !meta.is_file() {
            continue;
        }
        bytes += meta.len();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".open") {
            open += 1;
        } else if name.ends_with(".sealed") {
            sealed += 1;
        }
    }
    (bytes, open, sealed)
}

impl Real {
    async fn recv(&mut self) -> Option<SealedChunk> {
        tokio::time::timeout(RECV_TIMEOUT, self.rx.recv())
            .await
            .expect("the receiver stalled")
    }

    /// Receives every chunk the model says was sealed.
    async fn catch_up(&mut self, model: &Model) {
        while self.received.len() < model.sealed.len() {
            let chunk = self
                .recv()
                .await
                .expect("the receiver ended before every sealed chunk arrived");
            if let Some(last) = self.received.back() {
                assert!(chunk.seq > last.seq, "seq {} after {}", chunk.seq, last.seq);
            }
            self.received.push_back(chunk);
        }
    }

    /// The oldest `n` chunks were dropped to make room.
    fn dropped(&mut self, n: usize) {
        for _ in 0..n {
            let chunk = self.received.pop_front().expect("a received chunk to drop");
            self.gone.push(chunk);
        }
    }

    /// Closes the buffer and receives what it sealed; the receiver must end then.
    async fn close(&mut self, model: &mut Model) {
        self.buffer.close().await.expect("close");
        model.seal();
        model.closed = true;
        self.catch_up(model).await;
        assert!(self.recv().await.is_none(), "a chunk after close");
    }

    /// Checks everything observable against the model.
    fn check(&self, model: &Model) {
        assert_eq!(self.received.len(), model.sealed.len());
        for (chunk, want) in self.received.iter().zip(&model.sealed) {
            assert_eq!(chunk.bytes, want.bytes, "{}", chunk.path.display());
            assert_eq!(chunk.records, want.records(), "{}", chunk.path.display());
        }
        let usage = self.buffer.usage();
        assert_eq!(usage.bytes, model.used(), "usage: {usage:?}");
        assert_eq!(usage.pending_bytes, 0, "usage: {usage:?}");
        assert_eq!(usage.sealed_chunks, model.sealed.len() as u64);
        assert_eq!(usage.open_chunks, u64::from(model.open.is_some()));
        assert_eq!(
            files(self.dir.path()),
            (
                model.used(),
                usize::from(model.open.is_some()),
                model.sealed.len()
            ),
            "(bytes, .open, .sealed) in the directory"
        );
        let stats = self.buffer.stats();
        assert_eq!(
            (stats.chunks_dropped, stats.records_dropped),
            (model.chunks_dropped, model.records_dropped)
        );
        for chunk in &self.gone {
            assert!(
                matches!(chunk.read(), Err(ChunkError::Gone { .. })),
                "{} came back",
                chunk.path.display()
            );
        }
    }

    /// Drops the buffer and opens its directory again, or `copy` (of it, after a crash), and
    /// checks what recovery found.
    async fn reopen(self, copy: Option<tempfile::TempDir>, model: &mut Model) -> Real {
        let Real {
            mut old_dirs,
            dir,
            buffer,
            rx,
            appended,
            ..
        } = self;
        drop(buffer);
        drop(rx);
        let dir = match copy {
            Some(copy) => {
                old_dirs.push(dir);
                copy
            }
            None => dir,
        };
        let (mut real, recovered) = open(dir, old_dirs);
        real.appended = appended;
        assert_eq!(recovered, model.reopened());
        real.catch_up(model).await;
        for (chunk, want) in real.received.iter().zip(&model.sealed) {
            assert_eq!(frames(chunk), want.frames, "{}", chunk.path.display());
        }
        real
    }

    async fn apply(mut self, action: &Action, model: &mut Model) -> Real {
        match action {
            Action::Append { len, records } => {
                let mut payload = format!("frame {}:", self.appended).into_bytes();
                payload.resize((*len).max(payload.len()), b'x');
                self.appended += 1;
                let result = self
                    .buffer
                    .append(Bytes::from(payload.clone()), *records)
                    .await;
                if model.closed {
                    assert!(matches!(result, Err(AppendError::Closed)), "{result:?}");
                } else {
                    result
                        .expect("append")
                        .durable()
                        .await
                        .expect("the frame is durable");
                    let dropped = model.append(&payload, *records);
                    self.dropped(dropped);
                }
            }
            Action::Seal => {
                let result = self.buffer.seal_now().await;
                if model.closed {
                    assert!(matches!(result, Err(ChunkError::Closed)), "{result:?}");
                } else {
                    result.expect("seal_now");
                    model.seal();
                }
            }
            Action::ReleaseOldest => {
                if let Some(chunk) = self.received.pop_front() {
                    let want = model.sealed.pop_front().expect("model and buffer agree");
                    assert_eq!(frames(&chunk), want.frames, "{}", chunk.path.display());
                    self.buffer.release(&chunk).expect("release");
                    // Releasing again is a no-op: the bytes leave the accounting once.
                    self.buffer.release(&chunk).expect("release again");
                    self.gone.push(chunk);
                }
            }
            Action::Close => {
                if !model.closed {
                    self.close(model).await;
                }
            }
            Action::Reopen => {
                if !model.closed {
                    self.close(model).await;
                }
                return self.reopen(None, model).await;
            }
            Action::Crash => {
                // The writer is idle (every ticket resolved, no age seals): the copy is what a
                // `kill -9` at this point would leave.
                let copy = tempfile::tempdir().expect("temp dir");
                for entry in std::fs::read_dir(self.dir.path()).expect("read dir") {
                    let entry = entry.expect("directory entry");
                    if entry.metadata().expect("metadata").is_file() {
                        std::fs::copy(entry.path(), copy.path().join(entry.file_name()))
                            .expect("copy a chunk file");
                    }
                }
                return self.reopen(Some(copy), model).await;
            }
        }
        self.catch_up(model).await;
        self
    }
}

fn run(actions: &[Action]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut model = Model::new();
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut real, recovered) = open(dir, Vec::new());
        assert_eq!(recovered, Recovered::default());
        for action in actions {
            real = real.apply(action, &mut model).await;
            real.check(&model);
        }
        if !model.closed {
            real.close(&mut model).await;
        }
        real.check(&model);
        // Everything still held reads back as the model says.
        for (chunk, want) in real.received.iter().zip(&model.sealed) {
            assert_eq!(frames(chunk), want.frames, "{}", chunk.path.display());
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn buffer_behaves_like_the_model(actions in proptest::collection::vec(action(), 1..80)) {
        run(&actions);
    }
}
