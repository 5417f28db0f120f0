//! Talks to: a real `logferry-aggregator` process with a TLS listener (`[server.tls]`, with
//! `client_ca` for mutual TLS) and the Forward shared-key handshake (`[server.auth]`, with users),
//! fed by the real `logferry-loadtest forward` binary with `--tls`, `--ca`, `--cert/--key`,
//! `--server-name`, `--shared-key` and `--username/--password`; what arrived is checked in the
//! aggregator's file output and with `logferry-loadtest verify`. Certificates come from a
//! throwaway CA made with rcgen for each test.
//!
//! Shown here: acked and unacked load over TLS with the handshake arrives complete; mutual TLS
//! and user auth work, and a client without its certificate is refused; a wrong shared key, an
//! untrusted server certificate, a name the certificate does not cover and an unreadable CA
//! file each end the run quickly with a non-zero exit and a message saying what to fix.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use logferry_e2e::{
    loadtest_bin, metric_value, toml_path, unique_id, wait_for_records, wait_until, Aggregator,
    AggregatorConfig, Background, TestPki,
};
use serde_json::Value;

const KEY: &str = "loadtest-tls-key";
const PASSWORD: &str = "alice-pa55word";
/// Every loadtest run here finishes well within this.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// What the aggregator's `[server.auth]` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    None,
    /// The shared key [`KEY`].
    Key,
    /// The shared key and the user `alice` with [`PASSWORD`].
    KeyAndUser,
}

/// An aggregator with a TLS listener (and `client_ca`, the test CA, if asked) and `auth`.
fn aggregator(pki: &TestPki, client_ca: bool, auth: Auth) -> Aggregator {
    let (cert, key) = pki.issue("server", &["127.0.0.1", "localhost"]);
    let mut extra = format!(
        "[server.tls]\ncert = {}\nkey = {}\n",
        toml_path(&cert),
        toml_path(&key)
    );
    if client_ca {
        extra += &format!("client_ca = {}\n", toml_path(&pki.ca()));
    }
    if auth != Auth::None {
        // A hostname of its own: the loadtest's default is this machine's, like the
        // aggregator's, and equal names are refused as a loop.
        extra +=
            &format!("[server.auth]\nshared_key = \"{KEY}\"\nself_hostname = \"aggregator-e2e\"\n");
    }
    if auth == Auth::KeyAndUser {
        extra +=
            &format!("[[server.auth.users]]\nusername = \"alice\"\npassword = \"{PASSWORD}\"\n");
    }
    Aggregator::start_with(AggregatorConfig {
        server_extra: extra,
        ..AggregatorConfig::default()
    })
}

/// Runs `logferry-loadtest` with `args` (and `env`), killing it and failing after
/// [`RUN_TIMEOUT`].
fn loadtest(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(loadtest_bin());
    cmd.args(args).envs(env.iter().copied());
    Background::spawn(&mut cmd).wait(RUN_TIMEOUT)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn summary(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{}", text(out)))
}

fn auth_failures(agg: &Aggregator) -> f64 {
    metric_value(&agg.metrics(), "logferry_forward_auth_failures_total").unwrap_or(0.0)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `logferry-loadtest verify` over the aggregator's output: every seq once.
fn verify(agg: &Aggregator, run_id: &str, records: u64) {
    wait_for_records(&agg.out_dir, run_id, records, Duration::from_secs(60));
    let out = loadtest(
        &[
            "verify",
            "--run-id",
            run_id,
            &path(&agg.out_dir),
            "--expect",
            &records.to_string(),
            "--json",
        ],
        &[],
    );
    assert!(out.status.success(), "verify failed:\n{}", text(&out));
    let report = summary(&out);
    assert_eq!(report["missing"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["received"], records, "{report}");
}

#[test]
fn tls_with_shared_key_and_acks_delivers_every_record() {
    let pki = TestPki::new("loadtest e2e CA");
    let agg = aggregator(&pki, false, Auth::Key);
    let run_id = unique_id("lt-tls-ack");
    let records: u64 = 20_000;
    let n = records.to_string();
    let ca = path(&pki.ca());
    // The server name defaults to the target's host, an IP address the certificate covers.
    let out = loadtest(
        &[
            "forward",
            "--target",
            &agg.target(),
            "--tls",
            "--ca",
            &ca,
            "--shared-key",
            KEY,
            "--ack",
            "--records",
            &n,
            "--batch",
            "500",
            "--connections",
            "2",
            "--run-id",
            &run_id,
            "--json",
            "--quiet",
        ],
        &[],
    );
    assert!(out.status.success(), "loadtest failed:\n{}", text(&out));
    let s = summary(&out);
    assert_eq!(s["ok"], true, "{s}");
    assert_eq!(s["acked"], records, "{s}");
    assert_eq!(
        (&s["tls"], &s["handshake"]),
        (&Value::Bool(true), &Value::Bool(true))
    );
    assert_eq!(s["reconnects"], 0, "{s}");
    verify(&agg, &run_id, records);
    assert_eq!(auth_failures(&agg), 0.0);
}

#[test]
fn mutual_tls_with_user_auth_delivers_and_needs_the_client_certificate() {
    let pki = TestPki::new("loadtest e2e CA");
    let agg = aggregator(&pki, true, Auth::KeyAndUser);
    let (cert, key) = pki.issue("loadtest-client", &["loadtest-client"]);
    let (ca, cert, key) = (path(&pki.ca()), path(&cert), path(&key));
    let run_id = unique_id("lt-mtls");
    let records: u64 = 5000;
    let n = records.to_string();
    let target = agg.target();
    let base = [
        "forward",
        "--target",
        &target,
        "--tls",
        "--ca",
        &ca,
        "--server-name",
        "localhost",
        "--shared-key",
        KEY,
        "--username",
        "alice",
        "--hostname",
        "loadtest-e2e",
        "--records",
        &n,
        "--batch",
        "250",
        "--json",
        "--quiet",
    ];
    // Acked, the password from the environment (kept out of the process list).
    let out = loadtest(
        &[
            &base[..],
            &["--cert", &cert, "--key", &key, "--ack", "--run-id", &run_id],
        ]
        .concat(),
        &[("LOGFERRY_LOADTEST_PASSWORD", PASSWORD)],
    );
    assert!(out.status.success(), "loadtest failed:\n{}", text(&out));
    let s = summary(&out);
    assert_eq!(
        (&s["ok"], &s["acked"]),
        (&Value::Bool(true), &records.into())
    );
    verify(&agg, &run_id, records);
    assert_eq!(auth_failures(&agg), 0.0);

    // Without acks (what was written must still reach the server through the TLS buffers),
    // the password as a flag: a second run id.
    let run2 = unique_id("lt-mtls-noack");
    let out = loadtest(
        &[
            &base[..],
            &["--cert", &cert, "--key", &key, "--password", PASSWORD],
            &["--run-id", &run2, "--connections", "2"],
        ]
        .concat(),
        &[],
    );
    assert!(out.status.success(), "loadtest failed:\n{}", text(&out));
    assert_eq!(summary(&out)["sent"], records);
    let count = wait_for_records(&agg.out_dir, &run2, records, Duration::from_secs(60));
    assert_eq!(count.received, records, "{count:?}");

    // Without the client certificate the server refuses the session.
    let started = Instant::now();
    let out = loadtest(
        &[&base[..], &["--ack", "--run-id", &unique_id("lt-no-cert")]].concat(),
        &[("LOGFERRY_LOADTEST_PASSWORD", PASSWORD)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    let s = summary(&out);
    assert_eq!(s["ok"], false, "{s}");
    let errors = s["errors"].to_string();
    assert!(errors.contains("client certificate"), "{errors}");
}

#[test]
fn wrong_shared_key_fails_fast_with_a_clear_message() {
    let pki = TestPki::new("loadtest e2e CA");
    let agg = aggregator(&pki, false, Auth::Key);
    let ca = path(&pki.ca());
    let started = Instant::now();
    // With --retry-for, the handshake is retried with the usual backoff (not in a tight loop)
    // until the time is up.
    let out = loadtest(
        &[
            "forward",
            "--target",
            &agg.target(),
            "--tls",
            "--ca",
            &ca,
            "--shared-key",
            "not-the-key",
            "--ack",
            "--records",
            "2000",
            "--retry-for",
            "2s",
            "--run-id",
            &unique_id("lt-bad-key"),
            "--json",
            "--quiet",
        ],
        &[],
    );
    let elapsed = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    let s = summary(&out);
    assert_eq!((&s["ok"], &s["acked"]), (&Value::Bool(false), &0.into()));
    let errors = s["errors"].to_string();
    assert!(
        errors.contains("handshake") && errors.contains("shared key"),
        "{errors}"
    );
    // --json prints the errors on stderr too.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the server rejected us"), "{stderr}");
    // Each attempt is one failure at the server; the backoff keeps them few.
    let attempts = s["reconnects"].as_u64().unwrap() + 1;
    assert!(
        (2..=10).contains(&attempts),
        "{attempts} attempts in 2s: {s}"
    );
    wait_until("auth failures counted", Duration::from_secs(10), || {
        (auth_failures(&agg) >= attempts as f64).then_some(())
    });
    assert_eq!(auth_failures(&agg), attempts as f64);
}

#[test]
fn untrusted_or_mismatched_server_certificates_are_refused() {
    let pki = TestPki::new("loadtest e2e CA");
    let other = TestPki::new("some other CA");
    let agg = aggregator(&pki, false, Auth::None);
    let target = agg.target();
    let run = |extra: &[&str]| {
        let started = Instant::now();
        let run_id = unique_id("lt-bad-cert");
        let args = [
            &["forward", "--target", &target, "--tls", "--records", "2000"][..],
            &["--ack", "--run-id", &run_id, "--quiet"],
            extra,
        ]
        .concat();
        let out = loadtest(&args, &[]);
        assert!(started.elapsed() < Duration::from_secs(30), "{args:?}");
        out
    };
    // A server certificate not signed by --ca.
    let out = run(&["--ca", &path(&other.ca())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("TLS handshake") && t.contains("certificate"),
        "{t}"
    );

    // Signed by --ca, but not for the name asked for.
    let out = run(&[
        "--ca",
        &path(&pki.ca()),
        "--server-name",
        "elsewhere.example",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("certificate") && t.contains("elsewhere.example"),
        "{t}"
    );

    // An unreadable CA file: a setup error naming it, before any connection.
    let missing = pki.ca().with_file_name("no-such-ca.crt");
    let out = run(&["--ca", &path(&missing)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains(&path(&missing)), "{t}");
    assert_eq!(
        metric_value(&agg.metrics(), "logferry_input_records_total").unwrap_or(0.0),
        0.0
    );
}

#[test]
fn unacked_tls_without_handshake_delivers_every_record() {
    let pki = TestPki::new("loadtest e2e CA");
    let agg = aggregator(&pki, false, Auth::None);
    let run_id = unique_id("lt-tls-noack");
    let records: u64 = 20_000;
    let out = loadtest(
        &[
            "forward",
            "--target",
            &agg.target(),
            "--tls",
            "--ca",
            &path(&pki.ca()),
            "--records",
            &records.to_string(),
            "--batch",
            "1000",
            "--run-id",
            &run_id,
            "--json",
            "--quiet",
        ],
        &[],
    );
    assert!(out.status.success(), "loadtest failed:\n{}", text(&out));
    let s = summary(&out);
    assert_eq!(
        (&s["ok"], &s["sent"]),
        (&Value::Bool(true), &records.into())
    );
    assert_eq!(
        (&s["tls"], &s["handshake"]),
        (&Value::Bool(true), &Value::Bool(false))
    );
    verify(&agg, &run_id, records);
}
