//! Decoder throughput on the hot path: PackedForward requests of 1000 Kubernetes-shaped records
//! (~333 bytes each), plain and gzip, plus JSON transcoding of the decoded records.
//!
//! Run: `cargo bench -p logferry-common --bench forward_decode`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use logferry_common::forward::{
    encode_compressed_packed_forward, encode_entry, encode_packed_forward, gzip, Decoder, Entries,
    EventTime, Request,
};
use logferry_common::msgpack;

const RECORDS: u32 = 1000;

/// `{"log": <200-byte line>, "stream": "stdout", "seq": n, "kubernetes": {4 keys}}`
fn record(seq: u32) -> Vec<u8> {
    let line: String = format!("{seq:08} GET /api/v1/items?page={seq} 200 ")
        .chars()
        .chain(std::iter::repeat('x'))
        .take(200)
        .collect();
    let value = serde_json::json!({
        "log": line,
        "stream": "stdout",
        "seq": seq,
        "kubernetes": {
            "pod_name": "web-7d9f8b6c5d-x2x7k",
            "namespace_name": "shop",
            "container_name": "web",
            "host": "gke-pool-1-a1b2c3d4",
        },
    });
    rmp_serde::to_vec_named(&value).expect("serialising a JSON value cannot fail")
}

/// Canonical entries as our forwarder writes them, and the Fluentd flavour of the same request
/// (str32 payload, integer times) that takes the re-encoding path.
fn payloads() -> (Vec<u8>, Vec<u8>) {
    let mut canonical = Vec::new();
    let mut fluentd = Vec::new();
    for seq in 0..RECORDS {
        let record = record(seq);
        encode_entry(
            EventTime::new(1_700_000_000 + seq, seq),
            &record,
            &mut canonical,
        );
        fluentd.push(0x92);
        fluentd.push(0xce);
        fluentd.extend_from_slice(&(1_700_000_000 + seq).to_be_bytes());
        fluentd.extend_from_slice(&record);
    }
    (canonical, fluentd)
}

fn decode_one(decoder: &mut Decoder, wire: &[u8]) -> u32 {
    let mut buf = BytesMut::from(wire);
    match decoder.decode(&mut buf) {
        Ok(Some(Request::Events(batch))) => batch.records,
        other => panic!("bench input did not decode: {other:?}"),
    }
}

fn bench_decode(c: &mut Criterion) {
    let (canonical, fluentd) = payloads();
    let mut packed = Vec::new();
    encode_packed_forward(
        "kube.var.log.containers.checkout",
        &canonical,
        RECORDS,
        Some("id"),
        &mut packed,
    );
    let mut fluentd_wire = vec![0x93, 0xa3, b'a', b'p', b'p', 0xdb];
    fluentd_wire.extend_from_slice(&(fluentd.len() as u32).to_be_bytes());
    fluentd_wire.extend_from_slice(&fluentd);
    fluentd_wire.extend_from_slice(b"\x82\xa4size\xcd\x03\xe8\xaacompressed\xa4text");
    let mut compressed = Vec::new();
    let gz = gzip(&canonical);
    encode_compressed_packed_forward("kube.x", &gz, RECORDS, Some("id"), &mut compressed);
    eprintln!(
        "record {} B, entries {} B, packed request {} B, gzip request {} B",
        record(0).len(),
        canonical.len(),
        packed.len(),
        compressed.len()
    );

    let by_bytes = |len: usize| Throughput::Bytes(len as u64);
    let by_records = |_: usize| Throughput::Elements(u64::from(RECORDS));
    for (unit, throughput) in [
        ("bytes", &by_bytes as &dyn Fn(usize) -> Throughput),
        ("records", &by_records),
    ] {
        let mut group = c.benchmark_group(format!("decode_{unit}"));
        let inputs: [(&str, &[u8], usize); 3] = [
            ("packed_forward_canonical", &packed, packed.len()),
            (
                "packed_forward_fluentd_str32",
                &fluentd_wire,
                fluentd_wire.len(),
            ),
            // Throughput of the gzip variant is counted in inflated bytes.
            ("compressed_packed_forward", &compressed, canonical.len()),
        ];
        for (name, wire, len) in inputs {
            group.throughput(throughput(len));
            let mut decoder = Decoder::default();
            group.bench_function(name, |b| {
                b.iter_batched_ref(
                    || BytesMut::from(wire),
                    |buf| match decoder.decode(buf) {
                        Ok(Some(Request::Events(batch))) => black_box(batch),
                        other => panic!("bench input did not decode: {other:?}"),
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
    }
    assert_eq!(decode_one(&mut Decoder::default(), &packed), RECORDS);
}

fn bench_json(c: &mut Criterion) {
    let (canonical, _) = payloads();
    let mut group = c.benchmark_group("write_json");
    let record_bytes: usize = Entries::new(&canonical)
        .map(|e| e.map_or(0, |e| e.record.len()))
        .sum();
    group.throughput(Throughput::Bytes(record_bytes as u64));
    let mut out = Vec::with_capacity(1 << 20);
    group.bench_function("records_bytes", |b| {
        b.iter(|| {
            out.clear();
            for entry in Entries::new(&canonical) {
                let entry = entry.expect("bench entries are valid");
                entry.time.write_rfc3339(&mut out);
                msgpack::write_json(entry.record, &mut out).expect("bench records are valid");
                out.push(b'\n');
            }
            black_box(out.len())
        })
    });
    group.throughput(Throughput::Elements(u64::from(RECORDS)));
    group.bench_function("records", |b| {
        b.iter(|| {
            out.clear();
            for entry in Entries::new(&canonical) {
                let entry = entry.expect("bench entries are valid");
                msgpack::write_json(entry.record, &mut out).expect("bench records are valid");
            }
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode, bench_json);
criterion_main!(benches);
