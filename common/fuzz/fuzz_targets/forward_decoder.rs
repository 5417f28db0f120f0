//! Feeds arbitrary bytes to the Forward decoder in two pieces (split at `data[0]`), then walks
//! every decoded batch with `Entries` and transcodes every record to JSON. Whatever the decoder
//! accepts must be canonical, and must transcode.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use logferry_common::forward::{decode_ack, Decoder, Entries, Limits, Request};
use logferry_common::msgpack;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(rest.len());
    let (first, second) = rest.split_at(split);
    // Small limits so the size checks are exercised too.
    let mut decoder = Decoder::new(Limits {
        max_request_bytes: 64 * 1024,
        max_decompressed_bytes: 256 * 1024,
        max_tag_bytes: 64,
    });
    let mut buf = BytesMut::new();
    let mut json = Vec::new();
    'feed: for piece in [first, second] {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Request::Events(batch))) => {
                    let mut records = 0u32;
                    for entry in Entries::new(&batch.entries) {
                        let entry = entry.expect("decoder output must be canonical");
                        json.clear();
                        entry.time.write_rfc3339(&mut json);
                        msgpack::write_json(entry.record, &mut json)
                            .expect("accepted records must transcode");
                        records += 1;
                    }
                    assert_eq!(records, batch.records);
                    if let Some(chunk) = &batch.chunk {
                        let ack = batch.ack().expect("chunk present");
                        let mut ack_buf = BytesMut::from(&ack[..]);
                        let echoed = decode_ack(&mut ack_buf).expect("our ack decodes");
                        assert_eq!(echoed.as_ref(), Some(chunk));
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    let mut ack_buf = BytesMut::from(rest);
    let _ = decode_ack(&mut ack_buf);
});
