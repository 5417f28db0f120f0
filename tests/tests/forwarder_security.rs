//! Talks to: a real `logferry-forwarder` process tailing CRI logs the test writes, sending to a
//! real `logferry-aggregator` with a TLS listener (certificates from a throwaway rcgen CA per
//! test) and the Forward shared-key handshake; the aggregator's file output is checked record
//! by record.
//!
//! Shows: delivery exactly once over mutual TLS with the shared key and user auth; a
//! forwarder whose CA file does not trust the aggregator delivers nothing, keeps every line
//! buffered, and delivers all of it once the CA file is replaced in place (rotation without a
//! restart); a wrong shared key is refused and counted on both ends, and after the key is
//! fixed (a graceful stop and a start) nothing written meanwhile is missing or duplicated.

use std::path::Path;
use std::time::Duration;

use logferry_e2e::forwarder::{wait_for_seqs, Forwarder, ForwarderConfig, LogFormat, LogWriter};
use logferry_e2e::{
    metric_value, toml_path, unique_id, wait_until, Aggregator, AggregatorConfig, TestPki,
};

const ID: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const KEY: &str = "forwarder-shared-key";
const PASSWORD: &str = "node-pa55word";

/// An aggregator with a TLS listener (mutual TLS when `client_ca`) and the handshake.
fn secure_aggregator(pki: &TestPki, client_ca: Option<&Path>) -> Aggregator {
    let (cert, key) = pki.issue("aggregator", &["localhost", "127.0.0.1"]);
    let mut extra = format!(
        "handshake_timeout = \"5s\"\n[server.tls]\ncert = {}\nkey = {}\n",
        toml_path(&cert),
        toml_path(&key)
    );
    if let Some(ca) = client_ca {
        extra += &format!("client_ca = {}\n", toml_path(ca));
    }
    extra += &format!(
        "[server.auth]\nshared_key = \"{KEY}\"\nself_hostname = \"aggregator-e2e\"\n[[server.auth.users]]\nusername = \"node\"\npassword = \"{PASSWORD}\"\n"
    );
    Aggregator::start_with(AggregatorConfig {
        server_extra: extra,
        ..AggregatorConfig::default()
    })
}

/// `[output]` lines for the handshake as user `node`, then `[output.tls]`.
fn output_security(shared_key: &str, tls: &str) -> String {
    format!(
        "shared_key = \"{shared_key}\"\nself_hostname = \"node-e2e\"\nusername = \"node\"\npassword = \"{PASSWORD}\"\n[output.tls]\nserver_name = \"localhost\"\n{tls}"
    )
}

fn forwarder_config(logs: &Path, agg: &Aggregator, output_extra: String) -> ForwarderConfig {
    ForwarderConfig {
        paths: vec![format!("{}/*.log", logs.display())],
        servers: vec![agg.target()],
        heartbeat_interval: "300ms".into(),
        output_extra,
        ..ForwarderConfig::default()
    }
}

/// A CRI log file of `pod_ns_container` in a fresh directory, for a fresh run id.
fn pod_log(run: &str, pod_ns_container: &str) -> (tempfile::TempDir, String, LogWriter) {
    let logs = tempfile::tempdir().unwrap();
    let run = unique_id(run);
    let path = logs.path().join(format!("{pod_ns_container}-{ID}.log"));
    let writer = LogWriter::new(&path, LogFormat::Cri, &run);
    (logs, run, writer)
}

fn output_errors(fwd: &Forwarder, kind: &str) -> f64 {
    metric_value(
        &fwd.metrics(),
        &format!("logferry_output_errors_total{{kind=\"{kind}\",output=\"forward\"}}"),
    )
    .unwrap_or(0.0)
}

fn aggregator_metric(agg: &Aggregator, name: &str) -> f64 {
    metric_value(&agg.metrics(), name).unwrap_or(0.0)
}

#[test]
fn mutual_tls_with_shared_key_and_user_delivers_exactly_once() {
    let pki = TestPki::new("forwarder e2e CA");
    let agg = secure_aggregator(&pki, Some(&pki.ca()));
    let (cert, key) = pki.issue("forwarder", &["node-e2e"]);
    let (logs, run, mut writer) = pod_log("fwd-tls", "web-1_shop_nginx");
    writer.write(2_000);
    let tls = format!(
        "ca = {}\ncert = {}\nkey = {}\n",
        toml_path(&pki.ca()),
        toml_path(&cert),
        toml_path(&key)
    );
    let fwd = Forwarder::start(forwarder_config(
        logs.path(),
        &agg,
        output_security(KEY, &tls),
    ));
    writer.write(3_000);
    let report = wait_for_seqs(&agg.out_dir, &run, 5_000, Duration::from_secs(60));
    assert_eq!(report.duplicates, 0, "{report:?}");
    assert_eq!(
        aggregator_metric(&agg, "logferry_forward_auth_failures_total"),
        0.0
    );
    for kind in ["tls", "handshake", "handshake_timeout"] {
        assert_eq!(output_errors(&fwd, kind), 0.0, "{kind}");
    }
    // The shared key and the password never reach the forwarder's logs.
    for line in fwd.logs() {
        assert!(
            !line.contains(KEY) && !line.contains(PASSWORD),
            "secret in a log line: {line}"
        );
    }
}

#[test]
fn an_untrusted_aggregator_gets_nothing_until_the_ca_file_is_rotated_in_place() {
    let pki = TestPki::new("aggregator CA");
    let agg = secure_aggregator(&pki, None);
    let other = TestPki::new("some other CA");
    let conf = tempfile::tempdir().unwrap();
    let ca_file = conf.path().join("ca.crt");
    std::fs::copy(other.ca(), &ca_file).unwrap();

    let (logs, run, mut writer) = pod_log("fwd-rotate", "api-2_shop_app");
    let fwd = Forwarder::start(forwarder_config(
        logs.path(),
        &agg,
        output_security(KEY, &format!("ca = {}\n", toml_path(&ca_file))),
    ));
    writer.write(3_000);
    wait_until("TLS failures counted", Duration::from_secs(20), || {
        (output_errors(&fwd, "tls") >= 2.0).then_some(())
    });
    assert_eq!(
        aggregator_metric(&agg, "logferry_input_records_total"),
        0.0,
        "nothing may be sent to a server the forwarder does not trust"
    );
    assert!(
        fwd.logs()
            .iter()
            .any(|l| l.contains("TLS handshake failed") && l.contains("output.tls.ca")),
        "the failure says what to check"
    );

    // cert-manager style rotation: the mounted file is replaced; no restart.
    std::fs::copy(pki.ca(), &ca_file).unwrap();
    writer.write(2_000);
    let report = wait_for_seqs(&agg.out_dir, &run, 5_000, Duration::from_secs(90));
    assert_eq!(report.duplicates, 0, "{report:?}");
}

#[test]
fn a_wrong_shared_key_is_refused_and_nothing_is_lost_once_it_is_fixed() {
    let pki = TestPki::new("handshake CA");
    let agg = secure_aggregator(&pki, None);
    let (logs, run, mut writer) = pod_log("fwd-key", "db-3_shop_pg");
    let tls = format!("ca = {}\n", toml_path(&pki.ca()));
    let mut fwd = Forwarder::start(ForwarderConfig {
        shutdown_timeout: "2s".into(),
        ..forwarder_config(logs.path(), &agg, output_security("not-the-key", &tls))
    });
    writer.write(2_000);
    wait_until(
        "handshake failures counted",
        Duration::from_secs(20),
        || (output_errors(&fwd, "handshake") >= 2.0).then_some(()),
    );
    assert!(aggregator_metric(&agg, "logferry_forward_auth_failures_total") >= 2.0);
    assert_eq!(aggregator_metric(&agg, "logferry_input_records_total"), 0.0);
    assert!(
        fwd.logs()
            .iter()
            .any(|l| l.contains("rejected us") && l.contains("shared key")),
        "the failure says what to check"
    );

    // A graceful stop gives up sending at shutdown_timeout; the lines stay buffered.
    let (status, _) = fwd.stop(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    fwd.config.output_extra = output_security(KEY, &tls);
    fwd.restart();
    writer.write(1_000);
    let report = wait_for_seqs(&agg.out_dir, &run, 3_000, Duration::from_secs(60));
    assert_eq!(report.duplicates, 0, "{report:?}");
}
