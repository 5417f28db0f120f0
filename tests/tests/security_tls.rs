//! Talks to: a real `logferry-aggregator` process with TLS listeners, through the real npm client
//! `@fluent-org/logger` (Node's TLS stack; tests/fixtures/fluent_node_secure.js), the real
//! `openssl s_client`, and logferry-common's own client API (`tls::client_config`,
//! `tls::connect`, `client_session::handshake`). Certificates come from a throwaway CA made with
//! rcgen for each test, except for revocation, where the CA, its certificates and its CRLs are
//! made with the `openssl` commands docs/SECURITY.md gives.
//!
//! Shown here: delivery over TLS with mutual TLS and the shared-key handshake; TLS 1.2 and 1.3
//! accepted, 1.0 and 1.1 refused; mutual TLS refusing a client without a certificate and one
//! from another CA, and one whose certificate a CRL (`tls.client_crl`) revokes, also when the
//! CRL is replaced while the aggregator runs; certificate rotation through `POST /reload`,
//! SIGHUP and the file watch, with established connections unaffected; `[[server]]` serving a
//! plain and a TLS listener at once; `validate` warning about an exposed listener.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use logferry_e2e::client::{auth, closed_within, send_acked, tcp, tls_over};
use logferry_e2e::{
    aggregator_bin, assert_expected_records, external_tool, fixture, metric, run_checked,
    toml_path, unique_id, wait_for_lines, wait_for_records, wait_until, Aggregator,
    AggregatorConfig, TestPki,
};
use serde_json::{json, Value};

const KEY: &str = "tls-shared-key";

fn tls_server_extra(cert: &Path, key: &Path, client_ca: Option<&Path>, more: &str) -> String {
    let mut s = format!(
        "[server.tls]\ncert = {}\nkey = {}\n",
        toml_path(cert),
        toml_path(key)
    );
    if let Some(ca) = client_ca {
        s += &format!("client_ca = {}\n", toml_path(ca));
    }
    s + more
}

/// `openssl s_client` against `addr` with `args`; returns (success, stdout + stderr).
fn s_client(addr: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed (scripts/test.sh installs it when missing)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_client_over_mutual_tls_with_handshake_delivers() {
    let pki = TestPki::new("e2e CA");
    let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
    let (ccert, ckey) = pki.issue("node-client", &["node-client"]);
    let agg = Aggregator::start_with(AggregatorConfig {
        server_extra: tls_server_extra(
            &cert,
            &key,
            Some(&pki.ca()),
            &format!("[server.auth]\nshared_key = \"{KEY}\"\nself_hostname = \"aggregator-tls\"\n"),
        ),
        ..AggregatorConfig::default()
    });
    let Some(node_path) = external_tool("LOGFERRY_NODE_PATH") else {
        return;
    };
    let node = std::env::var("LOGFERRY_NODE").unwrap_or_else(|_| "node".into());
    let id = unique_id("node-tls");
    let cfg = json!({
        "host": "127.0.0.1", "port": agg.forward_addr.port(), "testId": id, "records": 50,
        "tls": {"ca": pki.ca(), "cert": ccert, "key": ckey, "servername": "localhost"},
        "security": {"clientHostname": "node-client", "sharedKey": KEY},
        "expectFailure": false,
    });
    let out = run_checked(
        Command::new(node)
            .arg(fixture("fluent_node_secure.js"))
            .arg(cfg.to_string())
            .env("NODE_PATH", Path::new(&node_path).join("node_modules")),
        Duration::from_secs(60),
    );
    let sent: Value = serde_json::from_slice(&out.stdout).expect("the fixture prints JSON");
    let expected = sent["expected"].as_array().expect("expected records");
    let lines = wait_for_lines(&agg.out_dir, expected.len(), Duration::from_secs(30), |v| {
        v["record"]["test_id"] == id.as_str()
    });
    assert_expected_records(expected, &lines);
    assert_eq!(metric(&agg, "logferry_forward_auth_failures_total"), 0.0);

    // Our own client, with the same certificate and key file formats.
    let run = unique_id("tls-rust");
    let mut s = tls_over(
        tcp(agg.forward_addr).await,
        &pki.ca(),
        Some((ccert.as_path(), ckey.as_path())),
    )
    .await
    .unwrap();
    auth(&mut s, KEY, None).await.unwrap();
    send_acked(&mut s, &run, 0, 20).await.unwrap();
    wait_for_records(&agg.out_dir, &run, 20, Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_1_2_and_1_3_are_accepted() {
    let pki = TestPki::new("e2e CA");
    let (cert, key) = pki.issue("server", &["localhost"]);
    let agg = Aggregator::start_with(AggregatorConfig {
        server_extra: tls_server_extra(&cert, &key, None, ""),
        ..AggregatorConfig::default()
    });
    let ca = pki.ca().display().to_string();
    let common = [
        "-CAfile",
        &ca,
        "-servername",
        "localhost",
        "-verify_return_error",
    ];
    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, text) = s_client(agg.forward_addr, &[&common[..], &[flag]].concat());
        assert!(ok, "openssl {flag} failed:\n{text}");
        assert!(
            // "New, TLSv1.3, Cipher is ...": printed once the handshake is done (the session
            // block with "Protocol :" may be missing when s_client exits before a 1.3 ticket).
            text.contains(&format!("New, {version}, Cipher is")),
            "openssl {flag} did not negotiate {version}:\n{text}"
        );
        assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    }
    // The client side must be allowed to offer old versions (security level 0), so the refusal
    // seen is the server's.
    for flag in ["-tls1_1", "-tls1"] {
        let (ok, text) = s_client(
            agg.forward_addr,
            &[&common[..], &[flag, "-cipher", "DEFAULT:@SECLEVEL=0"]].concat(),
        );
        assert!(!ok, "openssl {flag} succeeded:\n{text}");
        assert!(
            text.contains("alert protocol version")
                || text.contains("unsupported protocol")
                || text.contains("wrong version number")
                || text.contains("no protocols available")
                || text.contains("handshake failure"),
            "openssl {flag}: unexpected failure:\n{text}"
        );
        // No session was established (s_client still prints the version it tried).
        assert!(text.contains("Cipher is (NONE)"), "{text}");
    }
    // Plain Forward bytes on the TLS port: a failed TLS handshake, counted.
    let mut s = tcp(agg.forward_addr).await;
    tokio::io::AsyncWriteExt::write_all(&mut s, &[0x93, 0xa1, b't'])
        .await
        .unwrap();
    closed_within(&mut s, Duration::from_secs(5)).await.unwrap();
    wait_until("tls_handshake counted", Duration::from_secs(10), || {
        (metric(
            &agg,
            "logferry_forward_closed_connections_total{reason=\"tls_handshake\"}",
        ) >= 1.0)
            .then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_missing_and_foreign_certificates() {
    let pki = TestPki::new("e2e CA");
    let other = TestPki::new("some other CA");
    let (cert, key) = pki.issue("server", &["localhost"]);
    let (good_cert, good_key) = pki.issue("client", &["client-0"]);
    let (bad_cert, bad_key) = other.issue("client", &["client-0"]);
    let agg = Aggregator::start_with(AggregatorConfig {
        server_extra: tls_server_extra(&cert, &key, Some(&pki.ca()), ""),
        ..AggregatorConfig::default()
    });
    let run = unique_id("mtls");
    let mut good = tls_over(
        tcp(agg.forward_addr).await,
        &pki.ca(),
        Some((good_cert.as_path(), good_key.as_path())),
    )
    .await
    .unwrap();
    send_acked(&mut good, &run, 0, 10).await.unwrap();

    let reason = "logferry_forward_closed_connections_total{reason=\"client_certificate\"}";
    for (i, client) in [None, Some((bad_cert.as_path(), bad_key.as_path()))]
        .into_iter()
        .enumerate()
    {
        // With TLS 1.3 the client finishes its side before the server has checked the
        // certificate: the refusal shows as an alert or a close on the first read.
        let outcome = match tls_over(tcp(agg.forward_addr).await, &pki.ca(), client).await {
            Err(e) => format!("handshake error: {e}"),
            Ok(mut s) => match send_acked(&mut s, &run, 1000, 1).await {
                Ok(()) => panic!("a client with {client:?} was served"),
                Err(e) => e,
            },
        };
        eprintln!("client certificate {client:?}: {outcome}");
        wait_until(
            "client_certificate counted",
            Duration::from_secs(10),
            || (metric(&agg, reason) >= (i + 1) as f64).then_some(()),
        );
        assert_eq!(
            metric(&agg, "logferry_forward_auth_failures_total"),
            (i + 1) as f64
        );
        send_acked(&mut good, &run, 10 * (i as u64 + 1), 10)
            .await
            .unwrap();
    }
    // openssl, too, gets nowhere without a certificate.
    let ca = pki.ca().display().to_string();
    let (_, text) = s_client(
        agg.forward_addr,
        &["-CAfile", &ca, "-servername", "localhost", "-tls1_2"],
    );
    assert!(
        text.contains("alert")
            || text.contains("handshake failure")
            || text.contains("certificate required"),
        "openssl without a client certificate:\n{text}"
    );
    let count = wait_for_records(&agg.out_dir, &run, 30, Duration::from_secs(30));
    assert_eq!(count.received, 30, "{count:?}");
}

/// A CA kept with `openssl ca`, set up as docs/SECURITY.md shows ("Revoking a client
/// certificate"): `ca.cnf` with its database (`index.txt`) and CRL number, the CA made with
/// `openssl req -x509`, certificates signed with `openssl x509 -req`.
struct OpensslCa {
    dir: tempfile::TempDir,
}

impl OpensslCa {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("logferry-openssl-ca-")
            .tempdir()
            .unwrap();
        std::fs::write(
            dir.path().join("ca.cnf"),
            "[ca]\ndefault_ca = logging_ca\n[logging_ca]\ndatabase = index.txt\n\
             crlnumber = crlnumber\ncertificate = ca.crt\nprivate_key = ca.key\n\
             default_md = sha256\ndefault_crl_days = 30\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("index.txt"), "").unwrap();
        std::fs::write(dir.path().join("crlnumber"), "1000\n").unwrap();
        let ca = Self { dir };
        ca.openssl(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
             -subj /CN=logging-CA -keyout ca.key -out ca.crt",
        );
        ca
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `openssl` in the CA's directory with `args` (split at spaces).
    fn openssl(&self, args: &str) {
        run_checked(
            Command::new("openssl")
                .args(args.split_whitespace())
                .current_dir(self.dir.path()),
            Duration::from_secs(60),
        );
    }

    /// `<stem>.crt` and `<stem>.key` for `/CN=<stem>` with the extension `ext`.
    fn issue(&self, stem: &str, ext: &str) -> (PathBuf, PathBuf) {
        std::fs::write(self.path(&format!("{stem}.ext")), ext).unwrap();
        self.openssl(&format!(
            "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN={stem} \
             -keyout {stem}.key -out {stem}.csr"
        ));
        self.openssl(&format!(
            "x509 -req -in {stem}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
             -extfile {stem}.ext -out {stem}.crt"
        ));
        (
            self.path(&format!("{stem}.crt")),
            self.path(&format!("{stem}.key")),
        )
    }

    /// A client certificate.
    fn client(&self, stem: &str) -> (PathBuf, PathBuf) {
        self.issue(stem, "extendedKeyUsage=clientAuth")
    }

    /// Marks `<stem>.crt` revoked in the CA's database.
    fn revoke(&self, stem: &str) {
        self.openssl(&format!("ca -config ca.cnf -revoke {stem}.crt"));
    }

    /// Writes the current CRL to `crl.pem`, over the previous one (as a Secret update does).
    fn publish_crl(&self) -> PathBuf {
        self.openssl("ca -config ca.cnf -gencrl -out crl.pem");
        self.path("crl.pem")
    }
}

/// Connects with `client`'s certificate and sends one record of `run`; `Err` says how the
/// server refused (with TLS 1.3 the client's handshake ends before the server has checked
/// the certificate, so a refusal can show only at the first read).
async fn one_record(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: &(PathBuf, PathBuf),
    run: &str,
    seq: u64,
) -> Result<(), String> {
    let mut s = tls_over(tcp(addr).await, ca, Some((&client.0, &client.1)))
        .await
        .map_err(|e| format!("handshake error: {e}"))?;
    send_acked(&mut s, run, seq, 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_refuses_revoked_client_certificates_and_is_reloaded_by_the_watch() {
    let ca = OpensslCa::new();
    let (cert, key) = ca.issue("localhost", "subjectAltName=DNS:localhost");
    let kept = ca.client("vm-kept");
    let stolen = ca.client("vm-stolen");
    let later = ca.client("vm-later");
    let ca_crt = ca.path("ca.crt");
    // The CRL file the aggregator reads; vm-stolen is revoked before it starts.
    ca.revoke("vm-stolen");
    let crl = ca.publish_crl();
    let agg = Aggregator::start_with(AggregatorConfig {
        server_extra: tls_server_extra(
            &cert,
            &key,
            Some(&ca_crt),
            &format!(
                "client_crl = [{}]\nwatch_interval = \"1s\"\n",
                toml_path(&crl)
            ),
        ),
        ..AggregatorConfig::default()
    });
    let refused = "logferry_forward_closed_connections_total{reason=\"client_certificate\"}";
    let run = unique_id("crl");

    // The revoked certificate is refused and counted; the others are served and acked.
    let outcome = one_record(agg.forward_addr, &ca_crt, &stolen, &run, 1000).await;
    assert!(outcome.is_err(), "a revoked certificate was served");
    wait_until("the refusal counted", Duration::from_secs(10), || {
        (metric(&agg, refused) >= 1.0).then_some(())
    });
    assert_eq!(metric(&agg, refused), 1.0);
    assert_eq!(metric(&agg, "logferry_forward_auth_failures_total"), 1.0);
    let mut kept_conn = tls_over(
        tcp(agg.forward_addr).await,
        &ca_crt,
        Some((&kept.0, &kept.1)),
    )
    .await
    .unwrap();
    send_acked(&mut kept_conn, &run, 0, 10).await.unwrap();
    let mut later_conn = tls_over(
        tcp(agg.forward_addr).await,
        &ca_crt,
        Some((&later.0, &later.1)),
    )
    .await
    .unwrap();
    send_acked(&mut later_conn, &run, 10, 10).await.unwrap();

    // Revoke vm-later and publish the new CRL over the same file, as a Secret update does: no
    // reload, no restart; the watch (watch_interval = 1s) must pick it up.
    ca.revoke("vm-later");
    ca.publish_crl();
    let probe = unique_id("crl-probe");
    let mut attempts = 0u64;
    let refusal = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            attempts += 1;
            if let Err(e) = one_record(agg.forward_addr, &ca_crt, &later, &probe, attempts).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("vm-later is still served 20 s after its certificate was revoked");
    eprintln!("vm-later after {attempts} attempts: {refusal}");
    wait_until(
        "the second refusal counted",
        Duration::from_secs(10),
        || (metric(&agg, refused) >= 2.0).then_some(()),
    );
    // The change was the CRL alone: the unrevoked client still gets in.
    one_record(agg.forward_addr, &ca_crt, &kept, &run, 20)
        .await
        .unwrap();
    // Connections established before the new CRL keep the session they negotiated (as with a
    // rotated certificate; docs/SECURITY.md says so).
    send_acked(&mut kept_conn, &run, 21, 10).await.unwrap();
    send_acked(&mut later_conn, &run, 31, 10).await.unwrap();
    let count = wait_for_records(&agg.out_dir, &run, 41, Duration::from_secs(30));
    assert_eq!(count.received, 41, "{count:?}");
}

#[test]
fn validate_names_a_client_crl_that_is_not_a_crl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crl.toml");
    let bad = dir.path().join("crl.pem");
    std::fs::write(
        &bad,
        "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let out_dir = toml_path(&dir.path().join("out"));
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:24224\"\n[server.tls]\ncert = \"c\"\nkey = \"k\"\n\
             client_crl = [{}]\n[[route]]\nmatch = \"**\"\noutputs = [\"f\"]\n\
             [outputs.f]\ntype = \"file\"\npath = {out_dir}\n",
            toml_path(&bad)
        ),
    )
    .unwrap();
    let out = Command::new(aggregator_bin())
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    // Both problems, each under its key: no client_ca, and a file that is not a CRL.
    assert!(
        stderr.contains("server.tls.client_crl:") && stderr.contains("client_ca"),
        "{stderr}"
    );
    assert!(
        stderr.contains("server.tls.client_crl[0]") && stderr.contains("crl.pem"),
        "{stderr}"
    );
}

/// The issuer line `openssl s_client` prints for the served certificate.
fn served_issuer(addr: std::net::SocketAddr) -> String {
    let (_, text) = s_client(addr, &["-servername", "localhost", "-tls1_3"]);
    text.lines()
        .find(|l| l.contains("i:") && l.contains("CN"))
        .unwrap_or_else(|| panic!("no issuer in:\n{text}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_reaches_new_connections_only() {
    let first = TestPki::new("first CA");
    let second = TestPki::new("second CA");
    let (cert, key) = first.issue("server", &["localhost"]);
    let (cert2, key2) = second.issue("server", &["localhost"]);
    // The files the aggregator reads (cert-manager rewrites files like these in place).
    let dir = tempfile::tempdir().unwrap();
    let (live_cert, live_key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&cert, &live_cert).unwrap();
    std::fs::copy(&key, &live_key).unwrap();
    let agg = Aggregator::start_with(AggregatorConfig {
        server_extra: tls_server_extra(&live_cert, &live_key, None, "watch_interval = \"1s\"\n"),
        ..AggregatorConfig::default()
    });
    let run = unique_id("rotate");
    let mut old = tls_over(tcp(agg.forward_addr).await, &first.ca(), None)
        .await
        .unwrap();
    send_acked(&mut old, &run, 0, 10).await.unwrap();
    assert!(served_issuer(agg.forward_addr).contains("first CA"));

    // Rotate to the second CA's certificate and reload.
    std::fs::copy(&cert2, &live_cert).unwrap();
    std::fs::copy(&key2, &live_key).unwrap();
    let (status, body) = agg.reload_config();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("replaced"), "{body}");
    assert!(served_issuer(agg.forward_addr).contains("second CA"));
    let mut new = tls_over(tcp(agg.forward_addr).await, &second.ca(), None)
        .await
        .unwrap();
    send_acked(&mut new, &run, 10, 10).await.unwrap();
    assert!(
        tls_over(tcp(agg.forward_addr).await, &first.ca(), None)
            .await
            .is_err(),
        "a client trusting only the old CA still got through"
    );
    // The connection made before the rotation keeps working.
    send_acked(&mut old, &run, 20, 10).await.unwrap();

    // A broken key is refused as a whole; the second certificate stays in service.
    std::fs::write(
        &live_key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let (status, body) = agg.reload_config();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("tls.key") || body.contains(&live_key.display().to_string()),
        "{body}"
    );
    let mut again = tls_over(tcp(agg.forward_addr).await, &second.ca(), None)
        .await
        .unwrap();
    send_acked(&mut again, &run, 30, 10).await.unwrap();

    // Without any reload: the file watch (watch_interval = 1s) picks up a rotation back to the
    // first CA.
    std::fs::copy(&key, &live_key).unwrap();
    std::fs::copy(&cert, &live_cert).unwrap();
    wait_until(
        "the watch serves the first CA again",
        Duration::from_secs(15),
        || {
            served_issuer(agg.forward_addr)
                .contains("first CA")
                .then_some(())
        },
    );
    let mut last = tls_over(tcp(agg.forward_addr).await, &first.ca(), None)
        .await
        .unwrap();
    send_acked(&mut last, &run, 40, 10).await.unwrap();
    send_acked(&mut old, &run, 50, 10).await.unwrap();
    send_acked(&mut new, &run, 60, 10).await.unwrap();
    let count = wait_for_records(&agg.out_dir, &run, 70, Duration::from_secs(30));
    assert_eq!(count.received, 70, "{count:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_listeners_plain_inside_tls_and_auth_outside() {
    let pki = TestPki::new("e2e CA");
    let (cert, key) = pki.issue("server", &["localhost"]);
    let second = TestPki::new("rotated CA");
    let (cert2, key2) = second.issue("server", &["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let (live_cert, live_key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&cert, &live_cert).unwrap();
    std::fs::copy(&key, &live_key).unwrap();
    let agg = Aggregator::start_with(AggregatorConfig {
        servers: format!(
            r#"[[server]]
name = "in-cluster"
listen = "127.0.0.1:0"

[[server]]
name = "external"
listen = "127.0.0.1:0"
max_connections_per_source = 8
[server.tls]
cert = {cert}
key = {key}
watch_interval = "0s"
[server.auth]
shared_key = "{KEY}"
"#,
            cert = toml_path(&live_cert),
            key = toml_path(&live_key),
        ),
        ..AggregatorConfig::default()
    });
    let listeners = wait_until("both listeners", Duration::from_secs(10), || {
        let l = agg.forward_listeners();
        (l.len() == 2).then_some(l)
    });
    assert_eq!(listeners[0].0, "in-cluster");
    assert_eq!(listeners[1].0, "external");
    let (inside, outside) = (listeners[0].1, listeners[1].1);
    let run = unique_id("multi");

    let mut plain = tcp(inside).await;
    send_acked(&mut plain, &run, 0, 10).await.unwrap();
    let mut secure = tls_over(tcp(outside).await, &pki.ca(), None).await.unwrap();
    auth(&mut secure, KEY, None).await.unwrap();
    send_acked(&mut secure, &run, 10, 10).await.unwrap();
    // Plain bytes on the external port do not get in; TLS without the handshake neither.
    let mut s = tcp(outside).await;
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        &logferry_e2e::client::request("x", &run, 99, 1, "x"),
    )
    .await
    .unwrap();
    closed_within(&mut s, Duration::from_secs(5)).await.unwrap();
    let mut s = tls_over(tcp(outside).await, &pki.ca(), None).await.unwrap();
    assert!(send_acked(&mut s, &run, 99, 1).await.is_err());

    // SIGHUP re-reads the external listener's certificate.
    std::fs::copy(&cert2, &live_cert).unwrap();
    std::fs::copy(&key2, &live_key).unwrap();
    agg.sighup();
    wait_until(
        "SIGHUP serves the rotated certificate",
        Duration::from_secs(10),
        || served_issuer(outside).contains("rotated CA").then_some(()),
    );
    let mut rotated = tls_over(tcp(outside).await, &second.ca(), None)
        .await
        .unwrap();
    auth(&mut rotated, KEY, None).await.unwrap();
    send_acked(&mut rotated, &run, 20, 10).await.unwrap();
    send_acked(&mut secure, &run, 30, 10).await.unwrap();
    send_acked(&mut plain, &run, 40, 10).await.unwrap();
    let count = wait_for_records(&agg.out_dir, &run, 50, Duration::from_secs(30));
    assert_eq!(count.received, 50, "{count:?}");
}

#[test]
fn validate_warns_about_exposed_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exposed.toml");
    let out_dir = toml_path(&dir.path().join("out"));
    std::fs::write(
        &path,
        format!(
            "[[server]]\nlisten = \"0.0.0.0:24224\"\n[[server]]\nlisten = \"127.0.0.1:24225\"\n\
             [[route]]\nmatch = \"**\"\noutputs = [\"f\"]\n[outputs.f]\ntype = \"file\"\npath = {out_dir}\n"
        ),
    )
    .unwrap();
    let out = Command::new(aggregator_bin())
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("server[0].listen") && stderr.contains("without TLS or authentication"),
        "{stderr}"
    );
    assert!(!stderr.contains("server[1]"), "{stderr}");
}

#[test]
fn a_bad_certificate_fails_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.crt");
    let config = AggregatorConfig {
        server_extra: tls_server_extra(&missing, &missing, None, ""),
        ..AggregatorConfig::default()
    };
    let path = dir.path().join("aggregator.toml");
    std::fs::write(&path, config.to_toml(dir.path())).unwrap();
    let out = Command::new(aggregator_bin())
        .args(["run", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with a missing certificate:\n{stderr}"
    );
    assert!(
        stderr.contains("cannot read certificate") && stderr.contains("missing.crt"),
        "{stderr}"
    );
}
