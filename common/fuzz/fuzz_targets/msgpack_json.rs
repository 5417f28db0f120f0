//! `value_len` and `write_json` on arbitrary bytes: no panics, and they agree on where a value
//! ends; whatever is emitted is UTF-8.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logferry_common::msgpack;

fuzz_target!(|data: &[u8]| {
    let len = msgpack::value_len(data, msgpack::DEFAULT_MAX_DEPTH);
    let mut out = Vec::new();
    let written = msgpack::write_json(data, &mut out);
    match (len, written) {
        (Ok(Some(n)), Ok(m)) => {
            assert_eq!(n, m);
            assert!(std::str::from_utf8(&out).is_ok());
        }
        (Ok(Some(_)), Err(e)) => panic!("complete value failed to transcode: {e}"),
        (_, Ok(_)) => panic!("transcoded a value the scanner rejects"),
        (_, Err(_)) => assert!(out.is_empty()),
    }
    let mut cur = data;
    let _ = msgpack::skip_value(&mut cur, 4);
});
