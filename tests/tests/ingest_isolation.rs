//! Talks to: a real `logferry-aggregator` process, over raw Forward connections from this test.
//!
//! Regression tests for the audit's ingest findings (../shared/research/reliability-audit.md):
//! - #2: a chunk id reused by another sender, or by the same sender for other records, is
//!   stored, never answered from the dedupe memory; only a true re-send is;
//! - #6: a request routed to a full `block` buffer holds back neither the requests of the same
//!   connection routed elsewhere nor the connection slot once its peer is gone, and waits at
//!   most `block_timeout`;
//! - #5: gzip requests that inflate 1000-fold cost memory bounded by `[ingest] memory_limit`,
//!   not per connection.

use std::net::IpAddr;
use std::time::Duration;

use bytes::BytesMut;
use logferry_common::forward::{
    decode_ack, encode_compressed_packed_forward, encode_entry, gzip, EventTime,
};
use logferry_common::msgpack;
use logferry_e2e::client::{request, send_acked, tcp, tcp_from};
use logferry_e2e::{metric, read_output, unique_id, wait_until, Aggregator, AggregatorConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Reads one ack (10 s at most); `None` if the connection closed or nothing came.
async fn read_ack(stream: &mut TcpStream, buf: &mut BytesMut, within: Duration) -> Option<String> {
    tokio::time::timeout(within, async {
        loop {
            if let Some(ack) = decode_ack(buf).ok()? {
                let id = logferry_common::forward::ack::chunk_id_bytes(&ack)?;
                return Some(String::from_utf8_lossy(id).into_owned());
            }
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .flatten()
}

fn records_by_tag(agg: &Aggregator, tag: &str) -> usize {
    read_output(&agg.out_dir)
        .iter()
        .filter(|v| v["tag"] == tag)
        .count()
}

#[tokio::test]
async fn a_reused_chunk_id_is_a_resend_only_from_the_same_sender_with_the_same_bytes() {
    let agg = Aggregator::start();
    let run = unique_id("dedupe");
    let input = |agg: &Aggregator| metric(agg, "logferry_input_records_total");

    // Sender A (127.0.0.1) stores 1 record under chunk id "1".
    let mut a = tcp(agg.forward_addr).await;
    a.write_all(&request("tenant_a.app", &run, 0, 1, "1"))
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(
        read_ack(&mut a, &mut buf, Duration::from_secs(10)).await,
        Some("1".into())
    );
    // Sender B (another address) uses the same id for 3 other records: stored, not dropped.
    let mut b = tcp_from(ip("127.0.0.2"), agg.forward_addr).await.unwrap();
    let b_request = request("tenant_b.payments", &run, 100, 3, "1");
    b.write_all(&b_request).await.unwrap();
    let mut b_buf = BytesMut::new();
    assert_eq!(
        read_ack(&mut b, &mut b_buf, Duration::from_secs(10)).await,
        Some("1".into())
    );
    assert_eq!(
        input(&agg),
        4.0,
        "B's records were suppressed by A's chunk id"
    );

    // B re-sends the very same request (its ack was "lost"): acked again, stored once.
    b.write_all(&b_request).await.unwrap();
    assert_eq!(
        read_ack(&mut b, &mut b_buf, Duration::from_secs(10)).await,
        Some("1".into())
    );
    assert_eq!(input(&agg), 4.0, "a true re-send was stored twice");

    // A reuses its id "1" for new records (a restarted client counting from 1 again).
    a.write_all(&request("tenant_a.app", &run, 1, 2, "1"))
        .await
        .unwrap();
    assert_eq!(
        read_ack(&mut a, &mut buf, Duration::from_secs(10)).await,
        Some("1".into())
    );
    assert_eq!(
        input(&agg),
        6.0,
        "new records under a reused id were dropped"
    );

    wait_until("every record in the files", Duration::from_secs(20), || {
        (records_by_tag(&agg, "tenant_a.app") == 3
            && records_by_tag(&agg, "tenant_b.payments") == 3)
            .then_some(())
    });
}

/// An aggregator with two outputs: `bad.**` goes to `down` (its directory can never be
/// created, so its buffer fills and stays full), everything else to the healthy `out`.
fn one_output_down(block_timeout: &str) -> Aggregator {
    Aggregator::start_with(AggregatorConfig {
        total_limit_size: "64KiB".into(),
        chunk_limit_size: "16KiB".into(),
        flush_interval: "100ms".into(),
        overflow_action: "block".into(),
        servers: r#"[server]
listen = "127.0.0.1:0"
max_request_bytes = "32KiB"
max_decompressed_bytes = "32KiB"

[ingest]
memory_limit = "64MiB"

[[route]]
match = "bad.**"
outputs = ["down"]
"#
        .into(),
        extra_toml: r#"
[outputs.down]
type = "file"
path = "/proc/logferry-e2e-unwritable"
retry = { initial = "50ms", max_interval = "200ms", forever = true }
"#
        .into(),
        buffer_extra: format!("block_timeout = \"{block_timeout}\""),
        ..AggregatorConfig::default()
    })
}

/// A request of `n` records of about 1 KiB each for `tag`.
fn big_request(tag: &str, n: u64, chunk: &str) -> Vec<u8> {
    let mut entries = Vec::new();
    for i in 0..n {
        let mut record = Vec::new();
        msgpack::write_map_len(&mut record, 2);
        msgpack::write_str(&mut record, "seq");
        msgpack::write_uint(&mut record, i);
        msgpack::write_str(&mut record, "log");
        msgpack::write_str(&mut record, &"x".repeat(1000));
        encode_entry(EventTime::now(), &record, &mut entries);
    }
    let mut out = Vec::new();
    logferry_common::forward::encode_packed_forward(tag, &entries, n as u32, Some(chunk), &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_output_holds_back_only_its_own_requests_and_for_a_bounded_time() {
    let agg = one_output_down("4s");
    let mut conn = tcp(agg.forward_addr).await;
    // Fill `down`'s buffer (64 KiB) and then some: these can never all be stored.
    for i in 0..12 {
        conn.write_all(&big_request("bad.app", 8, &format!("bad-{i}")))
            .await
            .unwrap();
    }
    wait_until("down's buffer to fill", Duration::from_secs(20), || {
        (metric(&agg, "logferry_buffer_bytes{buffer=\"down\"}") > 40.0 * 1024.0).then_some(())
    });
    // A request for the healthy output, on the same connection, behind the blocked ones.
    let run = unique_id("iso");
    conn.write_all(&request("good.app", &run, 0, 5, "good-same-conn"))
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let mut acked = Vec::new();
    let got_good = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(id) = read_ack(&mut conn, &mut buf, Duration::from_secs(3)).await {
            let done = id == "good-same-conn";
            acked.push(id);
            if done {
                return;
            }
        }
    })
    .await;
    assert!(
        got_good.is_ok(),
        "the healthy output's request was held back by the full one (acks: {acked:?})"
    );
    // The blocked requests give up at block_timeout: the connection is closed, unacked.
    wait_until(
        "the blocked connection to be refused",
        Duration::from_secs(20),
        || {
            (metric(
                &agg,
                "logferry_forward_closed_connections_total{reason=\"block_timeout\"}",
            ) >= 1.0)
                .then_some(())
        },
    );
    assert_eq!(metric(&agg, "logferry_dropped_records_total"), 0.0);
    wait_until(
        "the good records in the file",
        Duration::from_secs(20),
        || (records_by_tag(&agg, "good.app") == 5).then_some(()),
    );

    // Peers that send to the full output and go away free their slots.
    let mut gone = Vec::new();
    for i in 0..5 {
        let mut c = tcp(agg.forward_addr).await;
        c.write_all(&big_request("bad.app", 8, &format!("gone-{i}")))
            .await
            .unwrap();
        gone.push(c);
    }
    wait_until("five connections", Duration::from_secs(10), || {
        (metric(&agg, "logferry_forward_connections") >= 5.0).then_some(())
    });
    drop(gone);
    wait_until("every slot freed", Duration::from_secs(20), || {
        (metric(&agg, "logferry_forward_connections") == 0.0).then_some(())
    });
    // A new connection to the healthy output is served as usual.
    let mut fresh = tcp(agg.forward_addr).await;
    send_acked(&mut fresh, &run, 5, 5).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_amplification_costs_the_ingest_budget_not_memory_per_connection() {
    let agg = Aggregator::start_with(AggregatorConfig {
        total_limit_size: "100MiB".into(),
        servers: r#"[server]
listen = "127.0.0.1:0"

[ingest]
memory_limit = "96MiB"
"#
        .into(),
        // `stuck` can never write: its buffer fills and stays full.
        output_type: "null".into(),
        route_outputs: vec!["out".into(), "stuck".into()],
        extra_toml: r#"
[outputs.stuck]
type = "file"
path = "/proc/logferry-e2e-unwritable"
retry = { forever = true }
"#
        .into(),
        buffer_extra: "block_timeout = \"120s\"".into(),
        ..AggregatorConfig::default()
    });
    let pid = agg.pid().expect("running");

    // One request: 58 entries of a 1 MiB record, each entry its own gzip member (~1 KiB on the
    // wire), 58 MiB inflated.
    let mut record = Vec::new();
    msgpack::write_map_len(&mut record, 1);
    msgpack::write_str(&mut record, "log");
    msgpack::write_str(&mut record, &"a".repeat(1 << 20));
    let mut entry = Vec::new();
    encode_entry(EventTime::now(), &record, &mut entry);
    let member = gzip(&entry);
    let payload: Vec<u8> = member
        .iter()
        .copied()
        .cycle()
        .take(member.len() * 58)
        .collect();

    let mut conns = Vec::new();
    for i in 0..20 {
        let mut wire = Vec::new();
        encode_compressed_packed_forward("bomb.t", &payload, 58, Some(&format!("c{i}")), &mut wire);
        let mut c = tcp(agg.forward_addr).await;
        c.write_all(&wire).await.unwrap();
        conns.push(c);
    }
    // The first request fills the buffer, the second waits for room holding its payload, and
    // every other connection waits for ingest memory.
    wait_until("two requests decoded", Duration::from_secs(300), || {
        (metric(&agg, "logferry_input_records_total") >= 116.0).then_some(())
    });
    wait_until(
        "requests waiting for ingest memory",
        Duration::from_secs(30),
        || (metric(&agg, "logferry_ingest_memory_waits_total") >= 10.0).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(metric(&agg, "logferry_input_records_total"), 116.0);
    let held = metric(&agg, "logferry_ingest_memory_bytes");
    assert!(
        held <= 96.0 * 1024.0 * 1024.0,
        "held {held} bytes over the limit"
    );
    let peak = agg.peak_rss_kib().unwrap_or(0);
    let rss = logferry_e2e::proc_status_kib(pid, "VmRSS").unwrap_or(0);
    eprintln!(
        "20 gzip connections (58 MiB inflated each): RSS {rss} KiB, peak {peak} KiB, {} records in, {} bytes buffered, {held} bytes of ingest memory held",
        metric(&agg, "logferry_input_records_total"),
        metric(&agg, "logferry_buffer_bytes{buffer=\"stuck\"}"),
    );
    // Unbounded, this is about 2.3 GB (116 MiB per connection); the budget keeps it to the
    // 96 MiB limit, one 100 MiB buffer queue and the process itself.
    assert!(peak < 400 * 1024, "peak RSS {peak} KiB");
    drop(conns);
}
