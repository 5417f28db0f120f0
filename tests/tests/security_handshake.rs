//! Talks to: a real `logferry-aggregator` process with `[server.auth]` (the Forward shared-key
//! handshake), driven by the real npm client `@fluent-org/logger` (tests/fixtures/
//! fluent_node_secure.js; `LOGFERRY_NODE_PATH` from scripts/test.sh) and by raw TCP peers that
//! break the protocol. The well-behaved peer is logferry-common's client API
//! (`forward::client_session::handshake`), the code the forwarder and loadtest use.
//!
//! Every failure must close that connection, bump `logferry_forward_auth_failures_total` (and
//! `logferry_forward_closed_connections_total{reason}`), log no secret, and leave an
//! authenticated connection opened before it working.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use logferry_common::forward::session::MAX_HANDSHAKE_BYTES;
use logferry_common::msgpack;
use logferry_e2e::client::{auth, closed_within, read_helo, request, send_acked, tcp, tcp_from};
use logferry_e2e::{
    assert_expected_records, external_tool, fixture, metric, run_checked, unique_id,
    wait_for_lines, wait_for_records, wait_until, Aggregator, AggregatorConfig,
};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const KEY: &str = "s3cret-shared-key";
const PASSWORD: &str = "alice-pa55word";

fn auth_config(extra: &str) -> AggregatorConfig {
    AggregatorConfig {
        server_extra: format!(
            r#"handshake_timeout = "2s"
[server.auth]
shared_key = "{KEY}"
self_hostname = "aggregator-e2e"
{extra}
[[server.auth.users]]
username = "alice"
password = "{PASSWORD}"
"#
        ),
        ..AggregatorConfig::default()
    }
}

/// Waits until the counter `name` reaches `want`.
fn wait_metric(agg: &Aggregator, name: &str, want: f64) {
    wait_until(
        &format!("{name} >= {want}"),
        Duration::from_secs(10),
        || (metric(agg, name) >= want).then_some(()),
    );
}

fn assert_no_secrets(agg: &Aggregator) {
    for line in agg.logs() {
        assert!(
            !line.contains(KEY) && !line.contains(PASSWORD),
            "a log line contains a secret: {line}"
        );
    }
}

/// Runs the node fixture with `cfg` (host/port filled in); returns its JSON line.
fn node(agg: &Aggregator, mut cfg: Value) -> Option<Value> {
    let node_path = external_tool("LOGFERRY_NODE_PATH")?;
    let node = std::env::var("LOGFERRY_NODE").unwrap_or_else(|_| "node".into());
    cfg["host"] = json!(agg.forward_addr.ip().to_string());
    cfg["port"] = json!(agg.forward_addr.port());
    let out = run_checked(
        Command::new(node)
            .arg(fixture("fluent_node_secure.js"))
            .arg(cfg.to_string())
            .env("NODE_PATH", Path::new(&node_path).join("node_modules")),
        Duration::from_secs(60),
    );
    Some(serde_json::from_slice(&out.stdout).expect("the fixture prints JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_client_authenticates_and_bad_credentials_are_refused() {
    let agg = Aggregator::start_with(auth_config(""));
    let run = unique_id("hs-good");
    // An authenticated connection that must keep working through every failure below.
    let mut good = tcp(agg.forward_addr).await;
    let server = auth(&mut good, KEY, Some(("alice", PASSWORD)))
        .await
        .unwrap();
    assert_eq!(server.server_hostname, "aggregator-e2e");
    send_acked(&mut good, &run, 0, 10).await.unwrap();

    let id = unique_id("node-auth");
    let Some(ok) = node(
        &agg,
        json!({"testId": id, "records": 20, "tls": null, "expectFailure": false,
               "security": {"clientHostname": "node-client", "sharedKey": KEY,
                            "username": "alice", "password": PASSWORD}}),
    ) else {
        return;
    };
    let expected = ok["expected"].as_array().expect("expected records");
    let lines = wait_for_lines(&agg.out_dir, expected.len(), Duration::from_secs(30), |v| {
        v["record"]["test_id"] == id.as_str()
    });
    assert_expected_records(expected, &lines);
    assert_eq!(metric(&agg, "logferry_forward_auth_failures_total"), 0.0);

    let cases = [
        (
            "wrong key",
            "not-the-key",
            "alice",
            PASSWORD,
            "shared_key_mismatch",
        ),
        ("wrong password", KEY, "alice", "wrong", "password_mismatch"),
        ("unknown user", KEY, "mallory", PASSWORD, "unknown_user"),
    ];
    for (i, (what, key, user, password, reason)) in cases.into_iter().enumerate() {
        let failed = node(
            &agg,
            json!({"testId": id, "records": 1, "tls": null, "expectFailure": true,
                   "security": {"clientHostname": "node-client", "sharedKey": key,
                                "username": user, "password": password}}),
        )
        .expect("node available");
        assert_eq!(failed["error"], "AuthError", "{what}: {failed}");
        wait_metric(&agg, "logferry_forward_auth_failures_total", (i + 1) as f64);
        wait_metric(
            &agg,
            &format!("logferry_forward_closed_connections_total{{reason=\"{reason}\"}}"),
            1.0,
        );
        send_acked(&mut good, &run, 10 * (i as u64 + 1), 10)
            .await
            .unwrap_or_else(|e| panic!("the good connection broke after {what}: {e}"));
    }
    // The generic reasons reach the client; the precise ones only our log. (Refusals are
    // logged at most LOG_BURST = 20 a second; this aggregator refuses 3 connections in all,
    // so the line is never held back. It may still be on its way through the log pipe.)
    wait_until("the precise reason logged", Duration::from_secs(10), || {
        let logs = agg.logs().join("\n");
        logs.contains("unknown user \\\"mallory\\\"").then_some(())
    });
    assert_no_secrets(&agg);
    wait_for_records(&agg.out_dir, &run, 40, Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_abuse_before_authentication_closes_only_that_connection() {
    let agg = Aggregator::start_with(auth_config(""));
    let run = unique_id("hs-abuse");
    let mut good = tcp(agg.forward_addr).await;
    auth(&mut good, KEY, Some(("alice", PASSWORD)))
        .await
        .unwrap();
    send_acked(&mut good, &run, 0, 5).await.unwrap();
    let failures = |agg: &Aggregator| metric(agg, "logferry_forward_auth_failures_total");
    let mut expected_failures = 0.0;
    let mut seq = 5;

    // 1. Events before the handshake: closed, nothing stored.
    let mut s = tcp(agg.forward_addr).await;
    read_helo(&mut s).await;
    s.write_all(&request("security.e2e", &run, 1000, 3, "early"))
        .await
        .unwrap();
    closed_within(&mut s, Duration::from_secs(5)).await.unwrap();
    expected_failures += 1.0;
    wait_metric(
        &agg,
        "logferry_forward_closed_connections_total{reason=\"request_before_handshake\"}",
        1.0,
    );

    // 2. A heartbeat before PING is data too.
    let mut s = tcp(agg.forward_addr).await;
    read_helo(&mut s).await;
    s.write_all(&[0xc0]).await.unwrap();
    closed_within(&mut s, Duration::from_secs(5)).await.unwrap();
    expected_failures += 1.0;

    // 3. A truncated PING, then EOF.
    let mut ping = Vec::new();
    msgpack::write_array_len(&mut ping, 6);
    msgpack::write_str(&mut ping, "PING");
    msgpack::write_str(&mut ping, "truncated-client");
    let mut s = tcp(agg.forward_addr).await;
    read_helo(&mut s).await;
    s.write_all(&ping).await.unwrap();
    s.shutdown().await.unwrap();
    closed_within(&mut s, Duration::from_secs(5)).await.unwrap();
    expected_failures += 1.0;
    wait_metric(
        &agg,
        "logferry_forward_closed_connections_total{reason=\"truncated_ping\"}",
        1.0,
    );

    // 4. A truncated PING and silence: closed by handshake_timeout (2s).
    let mut s = tcp(agg.forward_addr).await;
    read_helo(&mut s).await;
    s.write_all(&ping).await.unwrap();
    let t = std::time::Instant::now();
    closed_within(&mut s, Duration::from_secs(8)).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}",
        t.elapsed()
    );
    expected_failures += 1.0;
    wait_metric(
        &agg,
        "logferry_forward_closed_connections_total{reason=\"handshake_timeout\"}",
        1.0,
    );

    // 5. An oversized PING, declared (a 1 GiB hostname header) and actual.
    let mut s = tcp(agg.forward_addr).await;
    read_helo(&mut s).await;
    let mut big = Vec::new();
    msgpack::write_array_len(&mut big, 6);
    msgpack::write_str(&mut big, "PING");
    msgpack::write_str_header(&mut big, 1 << 30);
    s.write_all(&big).await.unwrap();
    closed_within(&mut s, Duration::from_secs(5)).await.unwrap();
    expected_failures += 1.0;
    let mut s = tcp(agg.forward_addr).await;
    read_helo(&mut s).await;
    let mut big = Vec::new();
    msgpack::write_array_len(&mut big, 6);
    msgpack::write_str(&mut big, "PING");
    msgpack::write_str(&mut big, &"h".repeat(2 * MAX_HANDSHAKE_BYTES));
    let _ = s.write_all(&big).await; // the server may close mid-write
    closed_within(&mut s, Duration::from_secs(5)).await.unwrap();
    expected_failures += 1.0;
    wait_metric(
        &agg,
        "logferry_forward_closed_connections_total{reason=\"ping_too_large\"}",
        2.0,
    );

    // 6. Our own hostname.
    let mut s = tcp(agg.forward_addr).await;
    let mut same = logferry_common::forward::client_session::ClientAuth::new(KEY, "aggregator-e2e");
    same.username = "alice".into();
    same.password = PASSWORD.into();
    let err = logferry_common::forward::client_session::handshake(&mut s, &same)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("same hostname"), "{err}");
    expected_failures += 1.0;

    // 7. Wrong key and no user, through our own client: PONG false with a reason.
    let mut s = tcp(agg.forward_addr).await;
    let err = auth(&mut s, "wrong", Some(("alice", PASSWORD)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("shared_key mismatch"), "{err}");
    expected_failures += 1.0;
    let mut s = tcp(agg.forward_addr).await;
    let err = auth(&mut s, KEY, None).await.unwrap_err();
    assert!(
        err.to_string().contains("username/password mismatch"),
        "{err}"
    );
    expected_failures += 1.0;

    wait_metric(
        &agg,
        "logferry_forward_auth_failures_total",
        expected_failures,
    );
    assert_eq!(failures(&agg), expected_failures);
    // The good connection is untouched.
    for _ in 0..3 {
        send_acked(&mut good, &run, seq, 5).await.unwrap();
        seq += 5;
    }
    // A connect-and-leave (a load balancer's TCP health check) is not an auth failure.
    drop(tcp(agg.forward_addr).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(failures(&agg), expected_failures);

    let count = wait_for_records(&agg.out_dir, &run, seq, Duration::from_secs(30));
    assert_eq!(
        count.received, seq,
        "records of the refused connections were stored: {count:?}"
    );
    assert_no_secrets(&agg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_acl_and_per_client_keys() {
    let agg = Aggregator::start_with(auth_config(
        r#"allow_anonymous_source = false
[[server.auth.clients]]
network = "127.0.0.2/32"
shared_key = "key-of-127.0.0.2"
[[server.auth.clients]]
host = "127.0.0.3"
"#,
    ));
    let run = unique_id("hs-acl");
    let user = Some(("alice", PASSWORD));
    let mut good = tcp_from("127.0.0.3".parse().unwrap(), agg.forward_addr)
        .await
        .unwrap();
    auth(&mut good, KEY, user).await.unwrap();
    send_acked(&mut good, &run, 0, 5).await.unwrap();

    // Outside every allowed network: closed before HELO (nothing is sent at all).
    let mut s = tcp_from("127.0.0.1".parse().unwrap(), agg.forward_addr)
        .await
        .unwrap();
    let got = closed_within(&mut s, Duration::from_secs(5)).await.unwrap();
    assert!(
        got.is_empty(),
        "the server sent {} bytes to a disallowed source",
        got.len()
    );
    wait_metric(
        &agg,
        "logferry_forward_closed_connections_total{reason=\"source_not_allowed\"}",
        1.0,
    );
    wait_metric(&agg, "logferry_forward_auth_failures_total", 1.0);

    // 127.0.0.2 has its own key; the default one does not work there.
    let mut s = tcp_from("127.0.0.2".parse().unwrap(), agg.forward_addr)
        .await
        .unwrap();
    let err = auth(&mut s, KEY, user).await.unwrap_err();
    assert!(err.to_string().contains("shared_key mismatch"), "{err}");
    let mut s = tcp_from("127.0.0.2".parse().unwrap(), agg.forward_addr)
        .await
        .unwrap();
    auth(&mut s, "key-of-127.0.0.2", user).await.unwrap();
    send_acked(&mut s, &run, 5, 5).await.unwrap();

    wait_metric(&agg, "logferry_forward_auth_failures_total", 2.0);
    send_acked(&mut good, &run, 10, 5).await.unwrap();
    wait_for_records(&agg.out_dir, &run, 15, Duration::from_secs(30));
    assert_no_secrets(&agg);
}
