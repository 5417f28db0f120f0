//! Receiver conformance checklist (protocol research §1.9, items 1-6 as far as they concern
//! decoding), with inputs built by independent encoders (rmpv, rmp-serde, hand-written bytes
//! from the research file) as well as by our own.

use bytes::{Bytes, BytesMut};
use logferry_common::forward::ack::chunk_id_bytes;
use logferry_common::forward::{
    decode_ack, encode_ack, encode_compressed_packed_forward, encode_entry, encode_packed_forward,
    gzip, DecodeError, Decoder, Entries, Entry, EventBatch, EventTime, Limits, Request,
};
use logferry_common::msgpack;
use proptest::prelude::*;
use rmpv::Value as V;

const T0: EventTime = EventTime::new(0x5fee_6600, 123_456_789); // 2021-01-01T00:00:00.123456789Z

fn enc(v: &V) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

fn event_time(t: EventTime) -> V {
    let mut data = t.secs.to_be_bytes().to_vec();
    data.extend_from_slice(&t.nanos.to_be_bytes());
    V::Ext(0, data)
}

fn rec(log: &str) -> V {
    V::Map(vec![(V::from("log"), V::from(log))])
}

fn decode_all_with(limits: Limits, bytes: &[u8]) -> Result<Vec<Request>, DecodeError> {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(request) = decoder.decode(&mut buf)? {
        out.push(request);
    }
    assert!(buf.is_empty(), "bytes left over: {:x?}", &buf[..]);
    Ok(out)
}

fn decode_all(bytes: &[u8]) -> Vec<Request> {
    decode_all_with(Limits::default(), bytes).unwrap()
}

/// Feeds `bytes` in pieces ending at `cuts` (sorted offsets), decoding after every piece.
fn decode_split(bytes: &[u8], cuts: &[usize]) -> Result<Vec<Request>, String> {
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let cut = cut.clamp(from, bytes.len());
        buf.extend_from_slice(&bytes[from..cut]);
        from = cut;
        while let Some(request) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            out.push(request);
        }
    }
    if !buf.is_empty() {
        return Err("incomplete".into());
    }
    Ok(out)
}

fn only_batch(requests: Vec<Request>) -> EventBatch {
    match <[Request; 1]>::try_from(requests) {
        Ok([Request::Events(batch)]) => batch,
        other => panic!("expected one event batch, got {other:?}"),
    }
}

/// (time, record bytes) of every entry, checking that the entries are canonical.
fn entries_of(batch: &EventBatch) -> Vec<(EventTime, Vec<u8>)> {
    let mut canonical = Vec::new();
    let entries: Vec<_> = Entries::new(&batch.entries)
        .map(|e| {
            let Entry { time, record } = e.unwrap();
            encode_entry(time, record, &mut canonical);
            (time, record.to_vec())
        })
        .collect();
    assert_eq!(canonical, batch.entries, "entries are canonical");
    assert_eq!(entries.len(), batch.records as usize);
    entries
}

// --- 1. carrier modes -------------------------------------------------------------------------

#[test]
fn research_message_frame_byte_for_byte() {
    // 94 a7 "app.web" d7 00 5f ee 66 00 07 5b cd 15 81 a3 "log" a2 "hi"
    // 82 a5 "chunk" b8 <24 bytes> a4 "size" 01
    let mut frame = vec![0x94, 0xa7];
    frame.extend_from_slice(b"app.web");
    frame.extend_from_slice(&[0xd7, 0x00, 0x5f, 0xee, 0x66, 0x00, 0x07, 0x5b, 0xcd, 0x15]);
    frame.extend_from_slice(&[0x81, 0xa3, b'l', b'o', b'g', 0xa2, b'h', b'i']);
    frame.extend_from_slice(&[0x82, 0xa5]);
    frame.extend_from_slice(b"chunk");
    frame.push(0xb8);
    frame.extend_from_slice(b"p8n9gmxTQVC8/nh2wlKKeQ==");
    frame.extend_from_slice(&[0xa4, b's', b'i', b'z', b'e', 0x01]);
    // The independent encoder agrees on the bytes.
    let v = V::Array(vec![
        V::from("app.web"),
        event_time(T0),
        rec("hi"),
        V::Map(vec![
            (V::from("chunk"), V::from("p8n9gmxTQVC8/nh2wlKKeQ==")),
            (V::from("size"), V::from(1)),
        ]),
    ]);
    assert_eq!(enc(&v), frame);

    let batch = only_batch(decode_all(&frame));
    assert_eq!(batch.tag, "app.web");
    assert_eq!(batch.wire_bytes, frame.len());
    assert_eq!(entries_of(&batch), vec![(T0, enc(&rec("hi")))]);
    assert_eq!(T0.to_rfc3339(), "2021-01-01T00:00:00.123456789Z");
    // Ack: 81 a3 61 63 6b b8 <24 bytes>.
    let mut expected_ack = vec![0x81, 0xa3, 0x61, 0x63, 0x6b, 0xb8];
    expected_ack.extend_from_slice(b"p8n9gmxTQVC8/nh2wlKKeQ==");
    assert_eq!(batch.ack().unwrap(), expected_ack);
}

#[test]
fn research_packed_forward_frame() {
    // 93 a7 "app.web" c4 19 92 ce 5f ee 66 00 81 a1 61 01 92 d7 00 5f ee 66 01 00 00 00 00
    // 81 a1 62 02 82 ...
    let payload = [
        0x92, 0xce, 0x5f, 0xee, 0x66, 0x00, 0x81, 0xa1, 0x61, 0x01, // [1609459200, {"a":1}]
        0x92, 0xd7, 0x00, 0x5f, 0xee, 0x66, 0x01, 0, 0, 0, 0, 0x81, 0xa1, 0x62, 0x02,
    ];
    assert_eq!(payload.len(), 0x19);
    let mut frame = vec![0x93, 0xa7];
    frame.extend_from_slice(b"app.web");
    frame.extend_from_slice(&[0xc4, 0x19]);
    frame.extend_from_slice(&payload);
    frame.extend_from_slice(&enc(&V::Map(vec![
        (V::from("size"), V::from(2)),
        (V::from("chunk"), V::from("p8n9gmxTQVC8/nh2wlKKeQ==")),
    ])));
    let batch = only_batch(decode_all(&frame));
    assert_eq!(
        entries_of(&batch),
        vec![
            (EventTime::new(0x5fee_6600, 0), vec![0x81, 0xa1, b'a', 0x01]),
            (EventTime::new(0x5fee_6601, 0), vec![0x81, 0xa1, b'b', 0x02]),
        ]
    );
}

#[test]
fn message_with_three_and_four_elements() {
    for with_options in [false, true] {
        let mut items = vec![V::from("app"), event_time(T0), rec("x")];
        if with_options {
            items.push(V::Map(vec![(V::from("size"), V::from(1))]));
        }
        let batch = only_batch(decode_all(&enc(&V::Array(items))));
        assert_eq!(entries_of(&batch), vec![(T0, enc(&rec("x")))]);
        assert_eq!(batch.chunk, None);
    }
}

#[test]
fn forward_mode() {
    let v = V::Array(vec![
        V::from("app"),
        V::Array(vec![
            V::Array(vec![event_time(T0), rec("a")]),
            V::Array(vec![V::from(1_700_000_000u32), rec("b")]),
        ]),
        V::Map(vec![(V::from("chunk"), V::from("c1"))]),
    ]);
    let batch = only_batch(decode_all(&enc(&v)));
    assert_eq!(
        entries_of(&batch),
        vec![
            (T0, enc(&rec("a"))),
            (EventTime::new(1_700_000_000, 0), enc(&rec("b")))
        ]
    );
    assert_eq!(batch.chunk.as_deref(), Some(&enc(&V::from("c1"))[..]));
}

fn canonical_entries(n: usize) -> (Vec<u8>, Vec<(EventTime, Vec<u8>)>) {
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for i in 0..n {
        let time = EventTime::new(1_700_000_000 + i as u32, i as u32);
        let record = enc(&rec(&format!("line {i}")));
        encode_entry(time, &record, &mut bytes);
        expected.push((time, record));
    }
    (bytes, expected)
}

#[test]
fn packed_forward_with_bin_and_every_str_width() {
    for n in [1, 2, 200, 3000] {
        let (payload, expected) = canonical_entries(n);
        let headers: Vec<Vec<u8>> = {
            let len = payload.len();
            let mut h = vec![];
            if let Ok(l) = u8::try_from(len) {
                h.push(vec![0xc4, l]); // bin8
                h.push(vec![0xd9, l]); // str8
            }
            if let Ok(l) = u16::try_from(len) {
                h.push([vec![0xc5], l.to_be_bytes().to_vec()].concat()); // bin16
                h.push([vec![0xda], l.to_be_bytes().to_vec()].concat()); // str16
            }
            let l = u32::try_from(len).unwrap();
            h.push([vec![0xc6], l.to_be_bytes().to_vec()].concat()); // bin32
            h.push([vec![0xdb], l.to_be_bytes().to_vec()].concat()); // str32 (Fluentd)
            h
        };
        for header in headers {
            let mut frame = vec![0x93, 0xa3, b'a', b'p', b'p'];
            frame.extend_from_slice(&header);
            frame.extend_from_slice(&payload);
            // Fluentd: {"size": n, "compressed": "text"}
            frame.extend_from_slice(&enc(&V::Map(vec![
                (V::from("size"), V::from(n)),
                (V::from("compressed"), V::from("text")),
            ])));
            let batch = only_batch(decode_all(&frame));
            assert_eq!(entries_of(&batch), expected, "header {header:x?}");
            assert_eq!(batch.entries, payload);
        }
    }
}

#[test]
fn compressed_packed_forward_single_and_multi_member() {
    let (payload, expected) = canonical_entries(500);
    let single = gzip(&payload);
    let (a, b) = payload.split_at(payload.len() / 3);
    let (b, c) = b.split_at(b.len() / 2);
    let multi = [gzip(a), gzip(b), gzip(c)].concat();
    for gz in [single, multi] {
        let mut frame = Vec::new();
        encode_compressed_packed_forward("app", &gz, 500, Some("id"), &mut frame);
        let batch = only_batch(decode_all(&frame));
        assert_eq!(entries_of(&batch), expected);
        assert_eq!(batch.wire_bytes, frame.len());
        // Also with an independent encoder and gzip as str (tolerated).
        let v = V::Array(vec![
            V::from("app"),
            V::Binary(gz.clone()),
            V::Map(vec![(V::from("compressed"), V::from("gzip"))]),
        ]);
        assert_eq!(entries_of(&only_batch(decode_all(&enc(&v)))), expected);
    }
}

// --- 2. time encodings ----------------------------------------------------------------------

#[test]
fn every_time_encoding() {
    let secs = 0x5fee_6600u32;
    let cases: Vec<(V, EventTime)> = vec![
        (V::from(100u8), EventTime::new(100, 0)), // positive fixint
        (V::from(200u8), EventTime::new(200, 0)), // uint8
        (V::from(60_000u16), EventTime::new(60_000, 0)), // uint16
        (V::from(secs), EventTime::new(secs, 0)), // uint32
        (event_time(T0), T0),                     // fixext8
        (V::F64(1.5), EventTime::new(1, 500_000_000)), // float (tolerated)
        (
            V::Array(vec![
                event_time(T0),
                V::Map(vec![(V::from("k"), V::from("v"))]),
            ]),
            T0,
        ), // v1.5 [EventTime, metadata]
        (V::Array(vec![event_time(T0), V::Map(vec![])]), T0), // v1.5 [EventTime, {}]
    ];
    for (time, expected) in cases {
        let v = V::Array(vec![
            V::from("t"),
            V::Array(vec![V::Array(vec![time.clone(), rec("r")])]),
        ]);
        let batch = only_batch(decode_all(&enc(&v)));
        assert_eq!(
            entries_of(&batch),
            vec![(expected, enc(&rec("r")))],
            "{time:?}"
        );
    }
    // Encodings rmpv would not choose: uint64, int8..int64 holding positive values, ext8.
    let raw_times: Vec<(Vec<u8>, EventTime)> = vec![
        (
            [vec![0xcf], u64::from(secs).to_be_bytes().to_vec()].concat(),
            EventTime::new(secs, 0),
        ),
        (vec![0xd0, 0x05], EventTime::new(5, 0)),
        (vec![0xd1, 0x01, 0x00], EventTime::new(256, 0)),
        (
            [vec![0xd2], (secs as i32).to_be_bytes().to_vec()].concat(),
            EventTime::new(secs, 0),
        ),
        (
            [vec![0xd3], i64::from(secs).to_be_bytes().to_vec()].concat(),
            EventTime::new(secs, 0),
        ),
        (
            vec![
                0xc7, 0x08, 0x00, 0x5f, 0xee, 0x66, 0x00, 0x07, 0x5b, 0xcd, 0x15,
            ],
            T0,
        ),
    ];
    for (time, expected) in raw_times {
        let mut payload = vec![0x92];
        payload.extend_from_slice(&time);
        payload.extend_from_slice(&enc(&rec("r")));
        let mut frame = Vec::new();
        encode_packed_forward("t", &payload, 1, None, &mut frame);
        let batch = only_batch(decode_all(&frame));
        assert_eq!(
            entries_of(&batch),
            vec![(expected, enc(&rec("r")))],
            "{time:x?}"
        );
    }
}

#[test]
fn fluent_bit_v15_message_mode_with_options() {
    let v = V::Array(vec![
        V::from("fb"),
        V::Array(vec![event_time(T0), V::Map(vec![])]),
        rec("m"),
        V::Map(vec![
            (V::from("chunk"), V::from("abc")),
            (V::from("fluent_signal"), V::from(0)),
        ]),
    ]);
    let batch = only_batch(decode_all(&enc(&v)));
    assert_eq!(entries_of(&batch), vec![(T0, enc(&rec("m")))]);
    assert!(batch.chunk.is_some());
}

// --- 3. acks ------------------------------------------------------------------------------------

fn ack_round_trip(chunk: V) {
    let raw = enc(&chunk);
    let v = V::Array(vec![
        V::from("t"),
        V::Array(vec![V::Array(vec![event_time(T0), rec("a")])]),
        V::Map(vec![
            (V::from("size"), V::from(1)),
            (V::from("chunk"), chunk.clone()),
        ]),
    ]);
    let batch = only_batch(decode_all(&enc(&v)));
    assert_eq!(
        batch.chunk.as_deref(),
        Some(&raw[..]),
        "raw chunk kept verbatim"
    );
    let mut ack = Vec::new();
    encode_ack(batch.chunk.as_ref().unwrap(), &mut ack);
    let mut expected = vec![0x81, 0xa3, b'a', b'c', b'k'];
    expected.extend_from_slice(&raw);
    assert_eq!(ack, expected);
    assert_eq!(batch.ack(), Some(expected));
    // The client side reads back exactly what it sent.
    let mut buf = BytesMut::from(&ack[..]);
    assert_eq!(
        decode_ack(&mut buf).unwrap(),
        Some(Bytes::from(raw.clone()))
    );
    let parsed = rmpv::decode::read_value(&mut &ack[..]).unwrap();
    assert_eq!(parsed, V::Map(vec![(V::from("ack"), chunk.clone())]));
    let content = chunk_id_bytes(&raw).unwrap();
    match chunk {
        V::String(s) => assert_eq!(content, s.as_bytes()),
        V::Binary(b) => assert_eq!(content, &b[..]),
        _ => unreachable!(),
    }
}

#[test]
fn ack_echoes_fluentd_chunk_id_with_newline() {
    ack_round_trip(V::from("p8n9gmxTQVC8/nh2wlKKeQ==\n"));
}

#[test]
fn ack_echoes_fluent_bit_hex_chunk_id() {
    ack_round_trip(V::from("3f9b2c1d4e5f60718293a4b5c6d7e8f9"));
}

#[test]
fn ack_echoes_bin_chunk_id() {
    ack_round_trip(V::Binary(vec![0x00, 0xff, 0x10, b'\n']));
}

#[test]
fn ack_echo_preserves_a_non_minimal_string_encoding() {
    // "abc" as str32: re-encoding would produce a3 61 62 63; the ack must not.
    let mut frame = vec![0x93, 0xa1, b't', 0x90, 0x81, 0xa5];
    frame.extend_from_slice(b"chunk");
    let raw = [0xdb, 0, 0, 0, 3, b'a', b'b', b'c'];
    frame.extend_from_slice(&raw);
    let batch = only_batch(decode_all(&frame));
    assert_eq!(batch.chunk.as_deref(), Some(&raw[..]));
    assert_eq!(batch.ack().unwrap()[5..], raw);
}

#[test]
fn no_ack_without_chunk() {
    let (payload, _) = canonical_entries(3);
    let mut frame = Vec::new();
    encode_packed_forward("t", &payload, 3, None, &mut frame);
    let batch = only_batch(decode_all(&frame));
    assert_eq!(batch.chunk, None);
    assert_eq!(batch.ack(), None);
    // Two-element requests have no options at all.
    let v = V::Array(vec![V::from("t"), V::Binary(payload)]);
    assert_eq!(only_batch(decode_all(&enc(&v))).ack(), None);
}

// --- 4. pipelining and arbitrary splits -------------------------------------------------------

fn mixed_stream() -> Vec<u8> {
    let (payload, _) = canonical_entries(20);
    let mut wire = Vec::new();
    encode_packed_forward("a", &payload, 20, Some("one"), &mut wire);
    wire.push(0xc0); // heartbeat
    encode_compressed_packed_forward("b", &gzip(&payload), 20, Some("two"), &mut wire);
    wire.extend_from_slice(&enc(&V::Array(vec![
        V::from("c"),
        event_time(T0),
        rec("m"),
    ])));
    wire.extend_from_slice(&enc(&V::from(42))); // ignored
    wire.extend_from_slice(&enc(&V::Array(vec![
        V::from("d"),
        V::Array(vec![
            V::Array(vec![V::from(5), rec("f")]),
            V::Array(vec![V::from(5), V::Nil]),
        ]),
    ])));
    wire
}

#[test]
fn pipelined_requests() {
    let requests = decode_all(&mixed_stream());
    assert_eq!(requests.len(), 5);
    assert_eq!(requests[1], Request::Heartbeat);
    let tags: Vec<_> = requests
        .iter()
        .filter_map(|r| match r {
            Request::Events(b) => Some((b.tag.as_str(), b.records, b.skipped)),
            _ => None,
        })
        .collect();
    assert_eq!(
        tags,
        vec![("a", 20, 0), ("b", 20, 0), ("c", 1, 0), ("d", 1, 1)]
    );
}

#[test]
fn one_byte_at_a_time_gives_identical_results() {
    let wire = mixed_stream();
    let whole = decode_all(&wire);
    let cuts: Vec<usize> = (1..wire.len()).collect();
    assert_eq!(decode_split(&wire, &cuts).unwrap(), whole);
}

// --- 5. ignored things ---------------------------------------------------------------------------

#[test]
fn top_level_nil_and_other_values() {
    assert_eq!(decode_all(&[0xc0]), vec![Request::Heartbeat]);
    assert_eq!(
        decode_all(&[0xc0, 0xc0]),
        vec![Request::Heartbeat, Request::Heartbeat]
    );
    // Maps, strings, numbers at top level are consumed and skipped.
    let mut wire = enc(&V::Map(vec![(V::from("x"), V::from(1))]));
    wire.extend_from_slice(&enc(&V::from("junk")));
    wire.push(0xc0);
    assert_eq!(decode_all(&wire), vec![Request::Heartbeat]);
}

#[test]
fn unknown_options_and_non_gzip_compressed_are_ignored() {
    let (payload, expected) = canonical_entries(2);
    let v = V::Array(vec![
        V::from("t"),
        V::Binary(payload),
        V::Map(vec![
            (V::from("size"), V::from(2)),
            (V::from("compressed"), V::from("text")),
            (V::from("fluent_signal"), V::from(0)),
            (
                V::from("metadata"),
                V::Map(vec![(V::from("a"), V::Array(vec![V::Nil]))]),
            ),
            (V::from(7), V::from("non-string key")),
        ]),
    ]);
    let batch = only_batch(decode_all(&enc(&v)));
    assert_eq!(entries_of(&batch), expected);
}

// --- 6. limits and rejections ------------------------------------------------------------------

#[test]
fn gzip_bomb_is_rejected_at_the_limit() {
    // 100 MB of zeros compress to about 100 KB.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![0u8; 1 << 20];
    for _ in 0..100 {
        std::io::Write::write_all(&mut encoder, &block).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 200_000, "{}", bomb.len());
    let mut frame = Vec::new();
    encode_compressed_packed_forward("t", &bomb, 1, Some("x"), &mut frame);
    let limits = Limits {
        max_request_bytes: 1 << 20,
        max_decompressed_bytes: 4 << 20,
        ..Limits::default()
    };
    let err = decode_all_with(limits, &frame).unwrap_err();
    assert!(
        matches!(err, DecodeError::DecompressedTooLarge { limit } if limit == 4 << 20),
        "{err}"
    );
    assert_eq!(err.code(), "decompressed_too_large");
    // Multi-member bomb too.
    let member = gzip(&block);
    let multi: Vec<u8> = std::iter::repeat_n(&member[..], 100)
        .flatten()
        .copied()
        .collect();
    let mut frame = Vec::new();
    encode_compressed_packed_forward("t", &multi, 1, None, &mut frame);
    assert!(matches!(
        decode_all_with(limits, &frame),
        Err(DecodeError::DecompressedTooLarge { .. })
    ));
}

#[test]
fn oversized_declared_lengths_are_rejected_immediately() {
    let limits = Limits {
        max_request_bytes: 1 << 20,
        ..Limits::default()
    };
    let headers: Vec<Vec<u8>> = vec![
        vec![0x92, 0xdb, 0x7f, 0xff, 0xff, 0xff], // str32 tag of 2 GiB
        vec![0x93, 0xa1, b't', 0xc6, 0x00, 0x20, 0x00, 0x00], // bin32 payload of 2 MiB
        vec![0x93, 0xa1, b't', 0xdb, 0x00, 0x20, 0x00, 0x00], // str32 payload of 2 MiB
        vec![0x92, 0xa1, b't', 0xdd, 0x01, 0x00, 0x00, 0x00], // array32 of 16 M entries
        vec![0x93, 0xa1, b't', 0x01, 0xdf, 0x00, 0x10, 0x00, 0x00], // map32 of 1 M pairs
        vec![0xc6, 0xff, 0xff, 0xff, 0xff],       // ignored top-level bin32
    ];
    for header in headers {
        let mut decoder = Decoder::new(limits);
        let mut buf = BytesMut::from(&header[..]);
        let err = decoder.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, DecodeError::RequestTooLarge { limit } if limit == 1 << 20),
            "{header:x?}"
        );
    }
    // Buffered past the limit without a complete value (an unbounded stream of array elements).
    let mut decoder = Decoder::new(Limits {
        max_request_bytes: 1000,
        ..Limits::default()
    });
    let mut buf = BytesMut::from(&[0x92, 0xa1, b't', 0xdc, 0x00, 0x10][..]);
    assert!(decoder.decode(&mut buf).unwrap().is_none()); // 16 entries: might fit
    buf.extend_from_slice(&[0x01; 10]);
    assert!(decoder.decode(&mut buf).unwrap().is_none());
    buf.extend_from_slice(&[0x01; 6]);
    assert!(matches!(
        decoder.decode(&mut buf).unwrap(),
        Some(Request::Events(_))
    ));
    let mut decoder = Decoder::new(Limits {
        max_request_bytes: 1000,
        ..Limits::default()
    });
    let mut buf = BytesMut::from(&[0x92, 0xa1, b't', 0xdc, 0x04, 0x00][..]); // 1024 entries
    assert!(matches!(
        decoder.decode(&mut buf),
        Err(DecodeError::RequestTooLarge { .. })
    ));
}

#[test]
fn non_string_tag_is_an_error() {
    for tag in [
        V::from(1),
        V::Binary(b"tag".to_vec()),
        V::Nil,
        V::Map(vec![]),
    ] {
        let v = V::Array(vec![tag.clone(), V::Array(vec![])]);
        let err = decode_all_with(Limits::default(), &enc(&v)).unwrap_err();
        assert_eq!(err.code(), "malformed", "{tag:?}");
    }
}

#[test]
fn empty_tag_is_allowed_and_invalid_utf8_tag_is_not() {
    let batch = only_batch(decode_all(&enc(&V::Array(vec![
        V::from(""),
        V::Array(vec![]),
    ]))));
    assert_eq!((batch.tag.as_str(), batch.records), ("", 0));
    let err = decode_all_with(Limits::default(), &[0x92, 0xa2, 0xc3, 0x28, 0x90]).unwrap_err();
    assert_eq!(err.code(), "invalid_utf8_tag");
}

#[test]
fn invalid_entries_are_skipped_and_counted() {
    let v = V::Array(vec![
        V::from("t"),
        V::Array(vec![
            V::Array(vec![event_time(T0), rec("ok")]),
            V::Array(vec![event_time(T0), V::from("not a map")]),
            V::Array(vec![event_time(T0), V::Nil]),
            V::Array(vec![event_time(T0), V::Array(vec![])]),
            V::Array(vec![V::from("not a time"), rec("x")]),
            V::Array(vec![V::from(-5), rec("x")]),
            V::Array(vec![V::Ext(1, vec![0; 8]), rec("x")]),
            V::from(3),
            V::Array(vec![V::from(5), rec("ok2")]),
        ]),
        V::Map(vec![(V::from("chunk"), V::from("c"))]),
    ]);
    let batch = only_batch(decode_all(&enc(&v)));
    assert_eq!((batch.records, batch.skipped), (2, 7));
    assert_eq!(
        entries_of(&batch),
        vec![
            (T0, enc(&rec("ok"))),
            (EventTime::new(5, 0), enc(&rec("ok2")))
        ]
    );
    // Still acked.
    assert!(batch.ack().is_some());
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // A record nested a million levels deep, in every carrier mode.
    let mut deep = vec![0x81, 0xa1, b'k'];
    deep.extend(std::iter::repeat_n(0x91, 1_000_000));
    deep.push(0xc0);
    let mut entry = Vec::new();
    encode_entry(T0, &deep, &mut entry);
    let mut packed = Vec::new();
    encode_packed_forward("t", &entry, 1, None, &mut packed);
    let mut forward = vec![0x92, 0xa1, b't', 0x91];
    forward.extend_from_slice(&entry);
    let mut message = vec![0x93, 0xa1, b't', 0x01];
    message.extend_from_slice(&deep);
    let mut compressed = Vec::new();
    encode_compressed_packed_forward("t", &gzip(&entry), 1, None, &mut compressed);
    for frame in [packed, forward, message, compressed] {
        let err = decode_all_with(Limits::default(), &frame).unwrap_err();
        assert_eq!(err.code(), "too_deep", "{err}");
    }
    // Just inside the record limit is fine, and write_json accepts what the decoder accepted.
    let mut ok = vec![0x81, 0xa1, b'k'];
    ok.extend(std::iter::repeat_n(0x91, msgpack::DEFAULT_MAX_DEPTH - 1));
    ok.push(0xc0);
    let batch = only_batch(decode_all(
        &[vec![0x93, 0xa1, b't', 0x01], ok.clone()].concat(),
    ));
    let (_, record) = entries_of(&batch).remove(0);
    let mut json = Vec::new();
    assert_eq!(msgpack::write_json(&record, &mut json), Ok(record.len()));
}

// --- round trips and robustness ------------------------------------------------------------

fn arb_record() -> impl Strategy<Value = V> {
    let leaf = prop_oneof![
        Just(V::Nil),
        any::<bool>().prop_map(V::Boolean),
        any::<i64>().prop_map(V::from),
        any::<u64>().prop_map(V::from),
        any::<f64>().prop_map(V::F64),
        ".{0,40}".prop_map(V::from),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(V::Binary),
    ];
    let value = leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(V::Array),
            proptest::collection::vec(("[a-z]{1,8}", inner), 0..6)
                .prop_map(|kv| V::Map(kv.into_iter().map(|(k, v)| (V::from(k), v)).collect())),
        ]
    });
    proptest::collection::vec(("[a-z_]{1,12}", value), 0..8)
        .prop_map(|kv| V::Map(kv.into_iter().map(|(k, v)| (V::from(k), v)).collect()))
}

fn arb_entries() -> impl Strategy<Value = Vec<(EventTime, Vec<u8>)>> {
    proptest::collection::vec(
        ((1u32..=u32::MAX), (0u32..1_000_000_000), arb_record())
            .prop_map(|(s, n, r)| (EventTime::new(s, n), enc(&r))),
        0..20,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn packed_forward_round_trip(
        tag in ".{0,30}",
        entries in arb_entries(),
        chunk in proptest::option::of("[A-Za-z0-9+/=\n]{0,40}"),
        compress in any::<bool>(),
    ) {
        let mut payload = Vec::new();
        for (t, r) in &entries {
            encode_entry(*t, r, &mut payload);
        }
        let mut frame = Vec::new();
        let n = entries.len() as u32;
        if compress {
            encode_compressed_packed_forward(&tag, &gzip(&payload), n, chunk.as_deref(), &mut frame);
        } else {
            encode_packed_forward(&tag, &payload, n, chunk.as_deref(), &mut frame);
        }
        let batch = only_batch(decode_all(&frame));
        prop_assert_eq!(&batch.tag, &tag);
        prop_assert_eq!(batch.records, n);
        prop_assert_eq!(batch.skipped, 0);
        prop_assert_eq!(&batch.entries[..], &payload[..]);
        prop_assert_eq!(entries_of(&batch), entries);
        prop_assert_eq!(batch.chunk.as_deref().and_then(chunk_id_bytes), chunk.as_deref().map(str::as_bytes));
        // Every record transcodes to JSON that serde_json accepts.
        for e in Entries::new(&batch.entries) {
            let mut json = Vec::new();
            msgpack::write_json(e.unwrap().record, &mut json).unwrap();
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok());
        }
    }

    #[test]
    fn forward_mode_via_rmpv_matches_packed(entries in arb_entries(), tag in "[a-z.]{0,20}") {
        let v = V::Array(vec![
            V::from(tag.as_str()),
            V::Array(entries.iter().map(|(t, r)| {
                V::Array(vec![event_time(*t), rmpv::decode::read_value(&mut &r[..]).unwrap()])
            }).collect()),
        ]);
        let batch = only_batch(decode_all(&enc(&v)));
        prop_assert_eq!(entries_of(&batch), entries);
    }

    #[test]
    fn arbitrary_split_points_give_the_same_requests(
        mut cuts in proptest::collection::vec(0usize..2000, 0..30),
    ) {
        let wire = mixed_stream();
        cuts.sort_unstable();
        let whole = decode_all(&wire);
        prop_assert_eq!(decode_split(&wire, &cuts).unwrap(), whole);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), split in any::<usize>()) {
        let split = split % (bytes.len() + 1);
        let _ = decode_split(&bytes, &[split]);
        let mut decoder = Decoder::new(Limits { max_request_bytes: 64, max_decompressed_bytes: 64, max_tag_bytes: 16 });
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = decode_ack(&mut buf);
        for e in Entries::new(&bytes).flatten() {
            let _ = msgpack::write_json(e.record, &mut Vec::new());
        }
    }

    #[test]
    fn mutated_valid_requests_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut wire = mixed_stream();
        for (at, byte) in flips {
            let at = at % wire.len();
            wire[at] = byte;
        }
        if let Ok(requests) = decode_split(&wire, &[wire.len() / 2]) {
            for request in requests {
                if let Request::Events(batch) = request {
                    // Whatever the decoder accepted is canonical and transcodes.
                    for e in entries_of(&batch) {
                        msgpack::write_json(&e.1, &mut Vec::new()).unwrap();
                    }
                }
            }
        }
    }
}
