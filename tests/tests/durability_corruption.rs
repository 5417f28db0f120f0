//! Talks to: a real `logferry-aggregator` process restarted on a buffer directory whose chunk
//! files (written by the real `logferry_common::chunk::Buffer`, as the aggregator writes them)
//! were damaged on disk: a torn last frame in an open chunk, a flipped bit inside a frame of a
//! sealed chunk, and a flipped bit in a chunk header. Also runs `logferry-aggregator inspect`.
//!
//! Expected: no panic, every record of every undamaged frame delivered exactly once, the
//! damaged frames skipped and counted, the chunk with the bad header moved to `quarantine/`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use logferry_common::chunk::format::{ChunkHeader, FrameHeader, FRAME_HEADER_LEN};
use logferry_common::chunk::{Buffer, BufferOptions};
use logferry_common::forward::{encode_entry, encode_packed_forward, EventTime};
use logferry_e2e::chunks::chunk_files;
use logferry_e2e::{
    aggregator_bin, http_get, metric_value, read_output, unique_id, Aggregator, AggregatorConfig,
};

const CHUNKS: u64 = 4;
const FRAMES: u64 = 5;
const PER_FRAME: u64 = 10;

/// One frame payload as the aggregator stores it: a PackedForward request.
fn frame_payload(run_id: &str, first_seq: u64) -> Bytes {
    let mut entries = Vec::new();
    for seq in first_seq..first_seq + PER_FRAME {
        let mut record = Vec::new();
        rmp::encode::write_map_len(&mut record, 3).unwrap();
        rmp::encode::write_str(&mut record, "run_id").unwrap();
        rmp::encode::write_str(&mut record, run_id).unwrap();
        rmp::encode::write_str(&mut record, "seq").unwrap();
        // Fixed width, so every frame has the same size.
        rmp::encode::write_u64(&mut record, seq).unwrap();
        rmp::encode::write_str(&mut record, "log").unwrap();
        rmp::encode::write_str(&mut record, "a line of a container log").unwrap();
        encode_entry(
            EventTime::new(1_700_000_000, seq as u32),
            &record,
            &mut entries,
        );
    }
    let mut payload = Vec::new();
    encode_packed_forward(
        "app.corrupt",
        &entries,
        PER_FRAME as u32,
        None,
        &mut payload,
    );
    Bytes::from(payload)
}

/// Writes CHUNKS sealed chunks of FRAMES frames each into the output's buffer directory.
fn write_chunks(dir: &Path, run_id: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut options = BufferOptions::new(dir, "out");
        options.flush_interval = Duration::from_secs(3600);
        let (buffer, _sealed, _) = Buffer::open(options).unwrap();
        for chunk in 0..CHUNKS {
            for frame in 0..FRAMES {
                let first = (chunk * FRAMES + frame) * PER_FRAME;
                let ticket = buffer.append(frame_payload(run_id, first), PER_FRAME as u32);
                ticket.await.unwrap().durable().await.unwrap();
            }
            buffer.seal_now().await.unwrap();
        }
        buffer.close().await.unwrap();
    });
}

/// Byte offset of frame `index`'s payload in a chunk file.
fn frame_payload_offset(bytes: &[u8], index: usize) -> usize {
    let (_, mut offset) = ChunkHeader::parse(bytes).unwrap();
    for _ in 0..index {
        offset += FrameHeader::parse(&bytes[offset..]).unwrap().frame_len() as usize;
    }
    offset + FRAME_HEADER_LEN
}

fn seqs(chunk: u64, frames: std::ops::Range<u64>) -> impl Iterator<Item = u64> {
    frames.flat_map(move |f| {
        let first = (chunk * FRAMES + f) * PER_FRAME;
        first..first + PER_FRAME
    })
}

#[test]
fn damaged_chunks_lose_only_the_damaged_frames() {
    let mut agg = Aggregator::start_with(AggregatorConfig::default());
    agg.stop(Duration::from_secs(30));
    let run_id = unique_id("corrupt");
    let dir = agg.buffer_dir.join("outputs").join("out");
    write_chunks(&dir, &run_id);

    let files = chunk_files(&dir);
    assert_eq!(files.len(), CHUNKS as usize, "{files:?}");
    // Chunk 0: a crash mid-append: the last frame is torn and the chunk is still open.
    let bytes = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &bytes[..bytes.len() - 7]).unwrap();
    std::fs::rename(&files[0], files[0].with_extension("open")).unwrap();
    // Chunk 1: one flipped bit inside frame 2.
    let mut bytes = std::fs::read(&files[1]).unwrap();
    let flip_at = frame_payload_offset(&bytes, 2) + 20;
    bytes[flip_at] ^= 0x10;
    std::fs::write(&files[1], &bytes).unwrap();
    // Chunk 2: one flipped bit in the header.
    let mut bytes = std::fs::read(&files[2]).unwrap();
    bytes[14] ^= 0x01;
    std::fs::write(&files[2], &bytes).unwrap();
    // Chunk 3: intact.

    // The offline inspection sees the damage without changing anything.
    let inspect = Command::new(aggregator_bin())
        .arg("inspect")
        .arg(&dir)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&inspect.stdout);
    eprintln!("inspect:\n{report}");
    assert_eq!(
        inspect.status.code(),
        Some(1),
        "inspect must fail on damage: {report}"
    );
    assert!(
        report.contains("BAD HEADER") && report.contains("DAMAGED"),
        "{report}"
    );

    agg.restart();
    let expected: BTreeSet<u64> = seqs(0, 0..FRAMES - 1)
        .chain(seqs(1, 0..2))
        .chain(seqs(1, 3..FRAMES))
        .chain(seqs(3, 0..FRAMES))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let lines: Vec<u64> = read_output(&agg.out_dir)
            .iter()
            .filter(|v| v["record"]["run_id"].as_str() == Some(run_id.as_str()))
            .filter_map(|v| v["record"]["seq"].as_u64())
            .collect();
        if lines.len() >= expected.len() || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(
        unique, expected,
        "delivered records differ from the undamaged ones"
    );
    assert_eq!(got.len(), expected.len(), "records delivered twice");

    let metrics = agg.metrics();
    for action in ["quarantined", "truncated", "bad_frame"] {
        let name = format!("logferry_buffer_corruption_total{{action=\"{action}\"}}");
        assert!(
            metric_value(&metrics, &name) >= Some(1.0),
            "{name} not counted:\n{metrics}"
        );
    }
    let dropped = "logferry_dropped_records_total{reason=\"corrupt_frame\"}";
    assert_eq!(
        metric_value(&metrics, dropped),
        Some(PER_FRAME as f64),
        "{metrics}"
    );
    let quarantined: Vec<_> = std::fs::read_dir(dir.join("quarantine")).unwrap().collect();
    assert_eq!(
        quarantined.len(),
        1,
        "the chunk with the bad header is kept for inspection"
    );
    let (status, _) = http_get(agg.admin_addr, "/readyz").unwrap();
    assert_eq!(status, 200);
    agg.stop(Duration::from_secs(30));
}
