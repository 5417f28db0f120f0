//! Tenant transform throughput on the delivery path: 1000 Kubernetes-shaped records whose `log`
//! is a JSON app line, an nginx access line (regex with named groups) or a Go logfmt line
//! (200-400 bytes each), parsed and passed through one `add_field` filter. Criterion reports
//! records/s; ns per record is its time per iteration / 1000.
//!
//! Run: `cargo bench -p logferry-aggregator --bench transform`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use logferry_aggregator::tenants::transform::{
    Applied, FilterConfig, ParseConfig, ParseFormat, Transform,
};

const RECORDS: u32 = 1000;

const NGINX: &str = r#"^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+) (?P<protocol>[^"]+)" (?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$"#;

fn line(format: ParseFormat, seq: u32) -> String {
    match format {
        ParseFormat::Json => format!(
            r#"{{"ts":"2026-12-07T21:43:{:02}.123Z","level":"info","logger":"shop.checkout.PaymentService","msg":"payment authorised for order","order_id":"ord-{seq:08}","user_id":{seq},"amount":42.5,"currency":"EUR","latency_ms":12.7,"ok":true,"trace":{{"id":"4bf92f3577b34da6a3ce929d0e0e4736","span":"00f067aa0ba902b7"}}}}"#,
            seq % 60
        ),
        ParseFormat::Regex => format!(
            r#"203.0.113.{} - alice [07/Dec/2026:21:43:21 +0000] "GET /api/v1/items?page={seq}&sort=price HTTP/1.1" 200 5123 "https://shop.example/cart" "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0""#,
            seq % 250
        ),
        ParseFormat::Logfmt | ParseFormat::None => format!(
            r#"ts=2026-12-07T21:43:21.123Z level=info caller=server/http.go:211 msg="request done" method=GET path=/api/v1/items/{seq} status=200 bytes=5123 dur=1.2ms remote=203.0.113.7:51234 user_agent="Go-http-client/1.1" trace_id=4bf92f3577b34da6"#
        ),
    }
}

fn record(format: ParseFormat, seq: u32) -> Vec<u8> {
    // As the forwarder ships them: stream, log, then the pod's metadata.
    let value = serde_json::json!({
        "stream": "stdout",
        "log": line(format, seq),
        "kubernetes": {
            "namespace_name": "shop",
            "pod_name": format!("checkout-5f7c9d-{:05}", seq % 7),
            "container_name": "checkout",
            "labels": {"app": "checkout", "tier": "backend"},
        },
    });
    rmp_serde::to_vec_named(&value).expect("a JSON value encodes")
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("transform");
    group.throughput(Throughput::Elements(u64::from(RECORDS)));
    let filters = [FilterConfig::AddField {
        key: "team".to_owned(),
        value: "shop".to_owned(),
    }];
    for (name, format, pattern) in [
        ("json", ParseFormat::Json, None),
        ("regex_nginx", ParseFormat::Regex, Some(NGINX.to_owned())),
        ("logfmt", ParseFormat::Logfmt, None),
    ] {
        let config = ParseConfig {
            field: "log".to_owned(),
            format,
            pattern,
            on_error: Default::default(),
            keep_original: true,
        };
        let transform = Transform::compile(Some(&config), &filters).expect("compiles");
        let records: Vec<Vec<u8>> = (0..RECORDS).map(|seq| record(format, seq)).collect();
        let sizes: Vec<usize> = records.iter().map(Vec::len).collect();
        eprintln!(
            "{name}: records of {}-{} bytes",
            sizes.iter().min().unwrap_or(&0),
            sizes.iter().max().unwrap_or(&0)
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                for r in &records {
                    let applied = transform.apply(black_box(r));
                    assert!(matches!(applied, Applied::Changed(_)), "{applied:?}");
                    black_box(applied);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
