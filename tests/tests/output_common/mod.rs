//! Helpers shared by the output tests: a minimal acked Forward sender for hand-made records
//! (the load generator's records all have one shape; these tests need records that a sink
//! refuses), and config snippets.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use logferry_common::forward::{decode_ack, encode_entry, encode_packed_forward, EventTime};
use serde_json::Value;

/// Encodes a JSON object as a msgpack map (integers stay integers).
pub fn msgpack_map(v: &Value) -> Vec<u8> {
    fn enc(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Null => rmp::encode::write_nil(out).unwrap(),
            Value::Bool(b) => rmp::encode::write_bool(out, *b).unwrap(),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    rmp::encode::write_uint(out, u).unwrap();
                } else if let Some(i) = n.as_i64() {
                    rmp::encode::write_sint(out, i).unwrap();
                } else {
                    rmp::encode::write_f64(out, n.as_f64().unwrap()).unwrap();
                }
            }
            Value::String(s) => rmp::encode::write_str(out, s).unwrap(),
            Value::Array(a) => {
                rmp::encode::write_array_len(out, a.len() as u32).unwrap();
                for x in a {
                    enc(x, out);
                }
            }
            Value::Object(m) => {
                rmp::encode::write_map_len(out, m.len() as u32).unwrap();
                for (k, x) in m {
                    rmp::encode::write_str(out, k).unwrap();
                    enc(x, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    enc(v, &mut out);
    out
}

/// Sends `records` with `tag` in PackedForward requests of `batch` records, each with a chunk
/// id, and waits for every ack. Panics on any failure.
pub fn send_acked(addr: &str, tag: &str, records: &[Value], batch: usize) {
    let mut s = TcpStream::connect(addr).expect("connect to the aggregator");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let base = EventTime::now();
    for (b, group) in records.chunks(batch.max(1)).enumerate() {
        let mut entries = Vec::new();
        for (i, r) in group.iter().enumerate() {
            let t = EventTime::from_unix_nanos(base.unix_nanos() + (b * batch + i) as u64);
            encode_entry(t, &msgpack_map(r), &mut entries);
        }
        let chunk = format!(
            "{:032x}",
            (std::process::id() as u128) << 64 | (base.unix_nanos() as u128 + b as u128)
        );
        let mut req = Vec::new();
        encode_packed_forward(tag, &entries, group.len() as u32, Some(&chunk), &mut req);
        s.write_all(&req).expect("send");
        let mut buf = BytesMut::new();
        loop {
            if let Some(ack) = decode_ack(&mut buf).expect("ack decodes") {
                let id = logferry_common::forward::ack::chunk_id_bytes(&ack);
                assert_eq!(id, Some(chunk.as_bytes()), "ack for another chunk");
                break;
            }
            let mut tmp = [0u8; 4096];
            let n = s.read(&mut tmp).expect("read ack");
            assert!(n > 0, "aggregator closed the connection before acking");
            buf.extend_from_slice(&tmp[..n]);
        }
    }
}
