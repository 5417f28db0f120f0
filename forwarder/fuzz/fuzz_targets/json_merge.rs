//! Arbitrary bytes as a `merge_log` message: merging never panics, leaves the output untouched
//! when it declines, and otherwise writes pairs that form a valid msgpack map (which transcodes
//! to JSON) for a message serde_json also reads as a JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logferry_common::json_merge::merge_object;
use logferry_common::msgpack;

fuzz_target!(|data: &[u8]| {
    let mut pairs = vec![0xc0];
    match merge_object(data, |k| k == "stream", &mut pairs) {
        None => assert_eq!(pairs, [0xc0], "declined but wrote"),
        Some(n) => {
            assert!(
                matches!(
                    serde_json::from_slice::<serde_json::Value>(data),
                    Ok(serde_json::Value::Object(_))
                ),
                "merged something serde_json does not read as an object"
            );
            let mut map = Vec::new();
            msgpack::write_map_len(&mut map, n);
            map.extend_from_slice(&pairs[1..]);
            let mut json = Vec::new();
            msgpack::write_json(&map, &mut json).expect("merged pairs transcode");
            let back: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
            assert!(back.get("stream").is_none(), "a skipped key was merged");
        }
    }
});
