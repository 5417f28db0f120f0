//! Talks to: a real `logferry-aggregator` process (null output), attacked over TCP by this test
//! (1000 idle connections, slow-loris peers trickling bytes, gzip bombs, requests declaring
//! 2 GiB and 4-billion-element lengths, too many connections from one address) while the real
//! `logferry-loadtest forward --ack` keeps sending on its own connection.
//!
//! Shown: the aggregator stays up, every hostile connection is closed and counted, peak RSS
//! (`VmHWM`, printed) stays bounded, and the well-behaved client keeps its throughput.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use logferry_common::forward::{encode_compressed_packed_forward, encode_entry, gzip, EventTime};
use logferry_common::msgpack;
use logferry_e2e::client::{closed_within, send_acked, tcp, tcp_from};
use logferry_e2e::{metric, unique_id, wait_until, Aggregator, AggregatorConfig, Load};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const RECORDS: u64 = 200_000;

/// Runs `logferry-loadtest forward --ack` and returns its records per second.
fn loadtest(target: SocketAddr) -> f64 {
    let run_id = unique_id("abuse-lt");
    let out = Load::acked(&target, RECORDS, &run_id)
        .batch(1000)
        .no_timeline()
        .run();
    assert!(out.status.success(), "loadtest failed");
    let summary: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary["acked"], RECORDS, "{summary}");
    summary["records_per_sec"]
        .as_f64()
        .expect("records_per_sec")
}

/// A request whose bin payload declares `len` bytes (only the header is sent).
fn declared_bin(len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    msgpack::write_array_len(&mut out, 3);
    msgpack::write_str(&mut out, "abuse");
    msgpack::write_bin_header(&mut out, len);
    out
}

/// A CompressedPackedForward whose gzip members inflate to 256 MiB of zeros (a multi-member
/// stream of 256 identical 1 MiB members, about 1.2 MiB on the wire: under max_request_bytes,
/// 16 times max_decompressed_bytes).
fn gzip_bomb() -> Vec<u8> {
    let member = gzip(&vec![0u8; 1 << 20]);
    let bomb: Vec<u8> = member
        .iter()
        .copied()
        .cycle()
        .take(member.len() * 256)
        .collect();
    let mut out = Vec::new();
    encode_compressed_packed_forward("abuse.bomb", &bomb, 1, Some("bomb"), &mut out);
    out
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_cost_bounded_memory_and_no_throughput() {
    let agg = Aggregator::start_with(AggregatorConfig {
        output_type: "null".into(),
        server_extra: r#"max_connections = 1500
max_request_bytes = "4MiB"
max_decompressed_bytes = "16MiB"
read_timeout = "1s"
min_read_rate = "1KiB"
"#
        .into(),
        ..AggregatorConfig::default()
    });
    let pid = agg.pid().expect("running");
    let t0 = Instant::now();
    let baseline = tokio::task::spawn_blocking({
        let target = agg.forward_addr;
        move || loadtest(target)
    })
    .await
    .unwrap();
    let rss_before = logferry_e2e::proc_status_kib(pid, "VmRSS").unwrap_or(0);

    // 1000 idle connections, from 127.0.0.2.
    let mut idle = Vec::with_capacity(1000);
    for _ in 0..1000 {
        idle.push(tcp_from(ip("127.0.0.2"), agg.forward_addr).await.unwrap());
    }
    wait_until(
        "1000 idle connections accepted",
        Duration::from_secs(20),
        || (metric(&agg, "logferry_forward_connections") >= 1000.0).then_some(()),
    );

    // Slow loris: a request declaring 1 MiB, trickled one byte every 100 ms.
    let loris: Vec<_> = (0..20)
        .map(|_| {
            let target = agg.forward_addr;
            tokio::spawn(async move {
                let mut s = tcp_from(ip("127.0.0.3"), target).await.unwrap();
                s.write_all(&declared_bin(1 << 20)).await.unwrap();
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(20) {
                    if s.write_all(b"x").await.is_err() {
                        return Some(start.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None
            })
        })
        .collect();

    // Gzip bombs and impossible lengths, each on its own connection, while the loadtest runs.
    eprintln!("abuse: {:?} setup done", t0.elapsed());
    let bomb = gzip_bomb();
    eprintln!(
        "abuse: {:?} bomb built ({} bytes)",
        t0.elapsed(),
        bomb.len()
    );
    let attacks = {
        let target = agg.forward_addr;
        tokio::spawn(async move {
            let mut hostile: Vec<Vec<u8>> = vec![bomb.clone(), bomb.clone(), bomb];
            hostile.push(declared_bin(0x8000_0000)); // 2 GiB
            hostile.push(declared_bin(u32::MAX));
            let mut forward = Vec::new(); // Forward mode with 4 billion entries
            msgpack::write_array_len(&mut forward, 2);
            msgpack::write_str(&mut forward, "abuse");
            msgpack::write_array_len(&mut forward, u32::MAX);
            hostile.push(forward);
            let mut record = Vec::new(); // a record map of 4 billion pairs
            msgpack::write_array_len(&mut record, 3);
            msgpack::write_str(&mut record, "abuse");
            encode_entry(
                EventTime::now(),
                &[0xdf, 0xff, 0xff, 0xff, 0xff],
                &mut record,
            );
            hostile.push(record);
            let mut tag = Vec::new(); // a 2 GiB tag
            msgpack::write_array_len(&mut tag, 3);
            msgpack::write_str_header(&mut tag, 0x8000_0000);
            hostile.push(tag);
            let mut closed = 0;
            for bytes in hostile {
                let mut s: TcpStream = tcp(target).await;
                let _ = s.write_all(&bytes).await;
                // Keep streaming junk after the header: the server must not buffer it.
                let junk = vec![0x41u8; 64 * 1024];
                for _ in 0..64 {
                    if s.write_all(&junk).await.is_err() {
                        break;
                    }
                }
                if closed_within(&mut s, Duration::from_secs(10)).await.is_ok() {
                    closed += 1;
                }
            }
            closed
        })
    };
    let during = tokio::task::spawn_blocking({
        let target = agg.forward_addr;
        move || loadtest(target)
    })
    .await
    .unwrap();
    eprintln!("abuse: {:?} loadtest done", t0.elapsed());
    let closed = attacks.await.unwrap();
    eprintln!("abuse: {:?} attacks done", t0.elapsed());
    assert_eq!(closed, 8, "every hostile request closes its connection");

    let mut dropped_after = Vec::new();
    for l in loris {
        dropped_after.push(
            l.await
                .unwrap()
                .expect("a slow-loris peer was never dropped"),
        );
    }
    let slowest = dropped_after.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(5),
        "slow-loris peers dropped after up to {slowest:?}"
    );
    assert!(
        metric(
            &agg,
            "logferry_forward_closed_connections_total{reason=\"slow_client\"}"
        ) >= 20.0
    );
    assert!(metric(&agg, "logferry_forward_decode_errors_total") >= 8.0);
    // By code, from the metric: the log lines saying the same are rate-limited (LOG_BURST a
    // second), and the slow-loris closes above may have used up the budget.
    let by_code = |code: &str| {
        metric(
            &agg,
            &format!("logferry_forward_decode_errors_by_code_total{{code=\"{code}\"}}"),
        )
    };
    assert!(
        by_code("decompressed_too_large") >= 3.0,
        "the bombs were not inflated up to the limit"
    );
    assert!(
        by_code("request_too_large") >= 2.0,
        "the 2 GiB and 4 GiB bin headers were not refused by their declared length"
    );

    // The idle connections are all still there (idle_timeout is 5 minutes), and one of them
    // can still be used.
    assert!(metric(&agg, "logferry_forward_connections") >= 1000.0);
    let run = unique_id("abuse-idle");
    send_acked(&mut idle[0], &run, 0, 10).await.unwrap();

    let peak = agg.peak_rss_kib().unwrap_or(0);
    let rss_idle = logferry_e2e::proc_status_kib(pid, "VmRSS").unwrap_or(0);
    eprintln!(
        "abuse: loadtest {baseline:.0} rec/s alone, {during:.0} rec/s under attack ({:.0}%); \
         RSS {rss_before} KiB before, {rss_idle} KiB after (1000 idle connections still open); peak RSS {peak} KiB; \
         slow-loris peers dropped after {:?}..{slowest:?}",
        100.0 * during / baseline,
        dropped_after.iter().min().copied().unwrap_or_default()
    );
    // Three 16 MiB inflations at most at once, 4 MiB requests, 1000 small connections:
    // far below what the hostile lengths declared (GiBs).
    assert!(peak < 512 * 1024, "peak RSS {peak} KiB");
    assert!(
        during >= 0.25 * baseline,
        "throughput under attack {during:.0} rec/s vs {baseline:.0} rec/s alone"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_total_and_per_source() {
    let agg = Aggregator::start_with(AggregatorConfig {
        output_type: "null".into(),
        server_extra:
            "max_connections = 60\nmax_connections_per_source = 20\nidle_timeout = \"2s\"\n".into(),
        ..AggregatorConfig::default()
    });
    let per_source =
        "logferry_forward_closed_connections_total{reason=\"max_connections_per_source\"}";
    let total = "logferry_forward_closed_connections_total{reason=\"max_connections\"}";
    let mut held = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..30 {
            held.push(tcp_from(ip(source), agg.forward_addr).await.unwrap());
        }
    }
    wait_until("20 refused per source", Duration::from_secs(10), || {
        (metric(&agg, per_source) >= 20.0).then_some(())
    });
    // 40 held; 20 more from a third address fill max_connections, the next is refused.
    for _ in 0..20 {
        held.push(tcp_from(ip("127.0.0.4"), agg.forward_addr).await.unwrap());
    }
    wait_until("60 connections", Duration::from_secs(10), || {
        (metric(&agg, "logferry_forward_connections") >= 60.0).then_some(())
    });
    let mut extra = tcp_from(ip("127.0.0.5"), agg.forward_addr).await.unwrap();
    closed_within(&mut extra, Duration::from_secs(5))
        .await
        .unwrap();
    wait_until("max_connections counted", Duration::from_secs(10), || {
        (metric(&agg, total) >= 1.0).then_some(())
    });
    assert_eq!(metric(&agg, per_source), 20.0);

    // Idle peers are closed after idle_timeout (2s), which frees the slots.
    wait_until("idle connections closed", Duration::from_secs(15), || {
        (metric(&agg, "logferry_forward_connections") == 0.0).then_some(())
    });
    assert!(
        metric(
            &agg,
            "logferry_forward_closed_connections_total{reason=\"idle_timeout\"}"
        ) >= 40.0
    );
    let mut s = tcp(agg.forward_addr).await;
    send_acked(&mut s, &unique_id("limits"), 0, 10)
        .await
        .unwrap();
    drop(held);
}
