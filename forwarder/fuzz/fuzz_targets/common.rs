// Shared by both targets: feed lines through parse -> join -> encode, checking invariants.

use std::time::{Duration, Instant};

use logferry_common::forward::Entries;
use logferry_forwarder::batch::{encode_record, RecordOptions};
use logferry_forwarder::parse::{Joiner, LineFormat};

pub fn run(format: LineFormat, data: &[u8]) {
    // Small limits so the size cap fires too.
    let mut joiner = Joiner::new(64, Duration::from_secs(5));
    let mut entries = Vec::new();
    let mut emitted = 0usize;
    let opts = RecordOptions {
        merge_log: true,
        keep_log: data.first().is_some_and(|b| b & 1 == 1),
    };
    let mut offset = 0u64;
    for line in data.split(|&b| b == b'\n') {
        let start = offset;
        offset += line.len() as u64 + 1;
        if let Ok(parsed) = format.parse(line) {
            joiner.push(parsed, start, |m| {
                assert!(m.text.len() <= 64, "a message over the cap");
                encode_record(m.time, m.stream, m.text, None, opts, &mut entries);
                emitted += 1;
            });
        }
        if let Some(p) = joiner.pending_offset() {
            assert!(p <= start, "the restart offset is past the current line");
        }
    }
    joiner.flush_expired(Instant::now(), true, |m| {
        encode_record(m.time, m.stream, m.text, None, opts, &mut entries);
        emitted += 1;
    });
    assert_eq!(joiner.pending_offset(), None);
    // Whatever was emitted is a valid sequence of Forward entries whose records transcode.
    let mut n = 0;
    let mut json = Vec::new();
    for e in Entries::new(&entries) {
        let e = e.expect("encoded entries are canonical");
        json.clear();
        logferry_common::msgpack::write_json(e.record, &mut json).expect("records transcode");
        n += 1;
    }
    assert_eq!(n, emitted);
}
