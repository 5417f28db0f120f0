//! Talks to: the forwarder's parsing and joining code (`parse::LineFormat`, `parse::Joiner`)
//! and record encoding (`batch::encode_record`), fed with recorded-format fixture files
//! (`tests/fixtures/{cri,docker}.log`): full lines, a 33 KiB line split by the runtime into
//! 16 KiB pieces with another stream's line interleaved, JSON payloads, escapes, time zones,
//! and invalid lines.
//!
//! Shows: every valid line becomes exactly the message the application wrote, with the
//! runtime's timestamp to the nanosecond; split lines are joined; invalid lines are counted
//! and skipped without disturbing the lines around them.

use std::time::Duration;

use logferry_common::forward::{Entries, EventTime};
use logferry_forwarder::batch::{encode_record, RecordOptions};
use logferry_forwarder::parse::{Joiner, LineFormat, Stream};

const BASE: u32 = 1_704_067_200; // 2024-01-01T00:00:00Z

fn long_message() -> String {
    "0123456789abcdef".repeat(3000)[..16384 * 2 + 1000].to_string()
}

/// (time, stream, message) of every emitted message, and the number of invalid lines.
fn run(fixture: &str) -> (Vec<(EventTime, Stream, Vec<u8>)>, usize) {
    let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let data = std::fs::read(path).unwrap();
    let mut format = None;
    let mut joiner = Joiner::new(1 << 20, Duration::from_secs(5));
    let mut out = Vec::new();
    let mut invalid = 0;
    let mut offset = 0u64;
    for line in data.split(|&b| b == b'\n') {
        let start = offset;
        offset += line.len() as u64 + 1;
        if line.is_empty() && offset as usize > data.len() {
            break; // after the final newline
        }
        let f = *format.get_or_insert_with(|| LineFormat::detect(line));
        match f.parse(line) {
            Ok(parsed) => joiner.push(parsed, start, |m| {
                assert!(m.forced.is_none());
                out.push((m.time, m.stream, m.text.to_vec()))
            }),
            Err(_) => invalid += 1,
        }
    }
    assert_eq!(
        joiner.pending_offset(),
        None,
        "a partial line was left pending"
    );
    (out, invalid)
}

fn t(secs: u32, nanos: u32) -> EventTime {
    EventTime::new(BASE + secs, nanos)
}

#[test]
fn cri_fixture() {
    let (msgs, invalid) = run("cri.log");
    assert_eq!(
        invalid, 4,
        "not a cri line, bad month, bad stream, empty line"
    );
    let expected: Vec<(EventTime, Stream, Vec<u8>)> = vec![
        (t(0, 1), Stream::Stdout, b"hello world".to_vec()),
        (t(0, 2), Stream::Stderr, b"an error".to_vec()),
        (
            t(0, 100_000_001),
            Stream::Stderr,
            b"interleaved stderr line".to_vec(),
        ),
        (
            t(0, 100_000_000),
            Stream::Stdout,
            long_message().into_bytes(),
        ),
        (
            t(1, 0),
            Stream::Stdout,
            br#"{"level":"info","msg":"json payload","n":3}"#.to_vec(),
        ),
        (t(2, 0), Stream::Stdout, b"with offset".to_vec()),
        (t(3, 500_000_000), Stream::Stdout, b"".to_vec()),
        (t(5, 123_456_789), Stream::Stdout, b"last".to_vec()),
    ];
    assert_eq!(msgs.len(), expected.len());
    for (got, want) in msgs.iter().zip(&expected) {
        assert_eq!(got, want);
    }
}

#[test]
fn docker_fixture() {
    let (msgs, invalid) = run("docker.log");
    assert_eq!(invalid, 3, "not json, no time, truncated json");
    let expected: Vec<(EventTime, Stream, Vec<u8>)> = vec![
        (t(0, 1), Stream::Stdout, b"hello world".to_vec()),
        (t(0, 2), Stream::Stderr, b"an error".to_vec()),
        (
            t(0, 100_000_001),
            Stream::Stderr,
            b"interleaved stderr line".to_vec(),
        ),
        (
            t(0, 100_000_000),
            Stream::Stdout,
            long_message().into_bytes(),
        ),
        (
            t(1, 0),
            Stream::Stdout,
            br#"{"level":"info","msg":"json payload","n":3}"#.to_vec(),
        ),
        (
            t(2, 0),
            Stream::Stdout,
            "unicode \u{e9}\u{e8} \u{1F600} \"quoted\" \\ back\ttab"
                .as_bytes()
                .to_vec(),
        ),
        (t(5, 123_456_789), Stream::Stdout, b"last".to_vec()),
    ];
    assert_eq!(msgs.len(), expected.len());
    for (got, want) in msgs.iter().zip(&expected) {
        assert_eq!(got, want);
    }
}

#[test]
fn fixture_messages_encode_as_forward_entries() {
    let (msgs, _) = run("cri.log");
    let mut entries = Vec::new();
    let opts = RecordOptions {
        merge_log: true,
        keep_log: true,
    };
    for (time, stream, text) in &msgs {
        encode_record(*time, *stream, text, None, opts, &mut entries);
    }
    let decoded: Vec<_> = Entries::new(&entries).map(|e| e.unwrap()).collect();
    assert_eq!(decoded.len(), msgs.len());
    let json_entry = &decoded[4];
    assert_eq!(json_entry.time, t(1, 0));
    let mut json = Vec::new();
    logferry_common::msgpack::write_json(json_entry.record, &mut json).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["level"], "info");
    assert_eq!(v["n"], 3);
    assert_eq!(v["stream"], "stdout");
    assert!(v["log"].as_str().unwrap().starts_with("{\"level\""));
}
