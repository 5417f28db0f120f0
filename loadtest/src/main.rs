//! `logferry-loadtest`: load generator, pod-log writer and loss verifier.
//!
//! - `forward`: sends Kubernetes-shaped records (each with a unique `seq` and the run id) as
//!   PackedForward requests, optionally with acks and gzip, at a fixed rate, on a ramp or as fast
//!   as possible, for a count or a duration; reports records/s, MB/s and ack latency percentiles.
//! - `pods`: writes CRI or docker json-file logs for simulated pods, laid out like
//!   `/var/log/pods` + `/var/log/containers`, with kubelet-like rotation.
//! - `verify`: reads what arrived (file output, Elasticsearch, Kafka) and reports received,
//!   missing and duplicated sequence numbers per run and source; exits 1 if anything is missing.
//! - `sink`: a Forward server that acks and discards, to measure the generator's own ceiling.
//!
//! Exit status: 0 success, 1 the run or the check failed (records missing or not acked),
//! 2 usage or setup error.

mod connect;
mod forward;
mod pods;
mod record;
mod sink;
mod stats;
#[cfg(test)]
mod test_support;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "logferry-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send records to a Forward server and measure throughput and ack latency.
    Forward(Box<forward::ForwardArgs>),
    /// Write container logs of simulated pods (CRI or docker json-file) with rotation.
    Pods(pods::PodsArgs),
    /// Check a run's records in the file output, Elasticsearch or Kafka.
    Verify(verify::VerifyArgs),
    /// A Forward server that acks and discards everything (the generator's own ceiling).
    Sink(sink::SinkArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("logferry-loadtest: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Prints `value` as JSON or `text` on stdout.
fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{}", text());
    }
    Ok(())
}

/// Returns whether the run succeeded.
fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Forward(args) => {
            let json = args.json;
            let summary = forward::run(*args)?;
            print(json, &summary, || summary.text())?;
            if !summary.ok && json {
                for e in &summary.errors {
                    eprintln!("logferry-loadtest: {e}");
                }
            }
            Ok(summary.ok)
        }
        Command::Pods(args) => {
            let summary = pods::run(&args)?;
            print(args.json, &summary, || summary.text())?;
            Ok(summary.ok)
        }
        Command::Verify(args) => {
            let report = verify::run(&args)?;
            print(args.json, &report, || report.text())?;
            Ok(report.ok)
        }
        Command::Sink(args) => {
            let summary = sink::run(&args)?;
            print(args.json, &summary, || summary.text())?;
            Ok(summary.ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    fn forward(extra: &[&str]) -> Result<forward::ForwardArgs, clap::Error> {
        let args = [
            "logferry-loadtest",
            "forward",
            "--target",
            "127.0.0.1:24224",
        ];
        let cli = Cli::try_parse_from(args.iter().chain(extra))?;
        let Command::Forward(a) = cli.command else {
            panic!("forward expected");
        };
        Ok(*a)
    }

    #[test]
    fn forward_defaults() {
        let a = forward(&["--records", "10"]).unwrap();
        assert_eq!(
            (a.batch, a.connections, a.record_bytes, a.window),
            (1000, 1, 200, 4)
        );
        assert!(!a.ack && !a.gzip && !a.json);
        assert!(a.retry_for.is_zero());
        assert_eq!(a.shape, record::Shape::K8s);
    }

    #[test]
    fn forward_limits() {
        // Something must bound the run.
        assert!(forward(&[]).is_err());
        assert!(forward(&["--duration", "5s"]).is_ok());
        assert!(forward(&["--ramp", "0:1000:5s"]).is_ok());
        assert!(forward(&["--records", "5", "--rate", "10", "--ramp", "0:1000:5s"]).is_err());
        assert!(forward(&["--records", "5", "--ramp", "0:0:5s"]).is_err());
        let a = forward(&["--duration", "2m", "--shape", "app-json"]).unwrap();
        assert_eq!(a.duration, Some(std::time::Duration::from_secs(120)));
        assert_eq!(a.shape, record::Shape::AppJson);
    }

    #[test]
    fn forward_security_flags() {
        let a = forward(&["--records", "1"]).unwrap();
        assert!(!a.security.tls && a.security.ca.is_none() && a.security.server_name.is_none());
        assert!(a.security.cert.is_none() && a.security.key.is_none());
        assert!(a.security.username.is_none() && a.security.hostname.is_none());
        let ok = |extra: &[&str]| {
            let mut args = vec!["--records", "1"];
            args.extend_from_slice(extra);
            forward(&args).map_err(|e| e.to_string())
        };
        let a = ok(&[
            "--tls",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--server-name",
            "logs.example.com",
            "--shared-key",
            "secret",
            "--username",
            "u",
            "--password",
            "p",
            "--hostname",
            "node-1",
        ])
        .unwrap();
        let s = &a.security;
        assert!(s.tls);
        assert_eq!(s.ca.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(s.server_name.as_deref(), Some("logs.example.com"));
        assert_eq!(s.shared_key.as_ref().map(|k| k.expose()), Some("secret"));
        assert_eq!(s.password.as_ref().map(|k| k.expose()), Some("p"));
        assert_eq!(
            (s.username.as_deref(), s.hostname.as_deref()),
            (Some("u"), Some("node-1"))
        );
        // Each part alone, where it makes sense.
        assert!(ok(&["--tls"]).is_ok());
        assert!(
            ok(&["--shared-key", "k"]).is_ok(),
            "a handshake without TLS"
        );
        assert!(ok(&["--tls", "--cert", "c", "--key", "k"]).is_ok());

        // TLS files and names need --tls.
        for extra in [
            &["--ca", "ca.pem"][..],
            &["--server-name", "x"],
            &["--cert", "c", "--key", "k"],
        ] {
            let e = ok(extra).unwrap_err();
            assert!(e.contains("--tls"), "{extra:?}: {e}");
        }
        // A client certificate and its key go together.
        assert!(ok(&["--tls", "--cert", "c"]).unwrap_err().contains("--key"));
        assert!(ok(&["--tls", "--key", "k"]).unwrap_err().contains("--cert"));
        // User auth and our hostname belong to the handshake; user and password go together.
        for extra in [
            &["--username", "u", "--password", "p"][..],
            &["--hostname", "h"],
        ] {
            let e = ok(extra).unwrap_err();
            assert!(e.contains("--shared-key"), "{extra:?}: {e}");
        }
        assert!(ok(&["--shared-key", "k", "--username", "u"])
            .unwrap_err()
            .contains("--password"));
        assert!(ok(&["--shared-key", "k", "--password", "p"])
            .unwrap_err()
            .contains("--username"));
    }

    #[test]
    fn forward_secrets_can_come_from_the_environment() {
        let cmd = Cli::command();
        let fwd = cmd.find_subcommand("forward").expect("forward");
        for (id, var) in [
            ("shared_key", "LOGFERRY_LOADTEST_SHARED_KEY"),
            ("password", "LOGFERRY_LOADTEST_PASSWORD"),
        ] {
            let arg = fwd
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("no {id}"));
            assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(var)));
            assert!(arg.is_hide_env_values_set(), "{id} must not show its value");
        }
    }

    #[test]
    fn verify_needs_exactly_one_input() {
        let parse = |extra: &[&str]| {
            Cli::try_parse_from(
                ["logferry-loadtest", "verify", "--run-id", "r"]
                    .iter()
                    .chain(extra),
            )
        };
        assert!(parse(&[]).is_err());
        assert!(parse(&["out/"]).is_ok());
        assert!(parse(&["--es", "http://127.0.0.1:9200", "--index", "logs-*"]).is_ok());
        assert!(
            parse(&["--kafka", "127.0.0.1:9092"]).is_err(),
            "--topic is needed"
        );
        assert!(parse(&["--kafka", "127.0.0.1:9092", "--topic", "t"]).is_ok());
        assert!(parse(&["out/", "--es", "http://x"]).is_err());
        assert!(parse(&["--es", "http://x", "--kafka", "k", "--topic", "t"]).is_err());
        assert!(parse(&["out/", "--expect", "1", "--expect-file", "f"]).is_err());
    }

    #[test]
    fn pods_needs_a_limit() {
        let parse = |extra: &[&str]| {
            Cli::try_parse_from(
                ["logferry-loadtest", "pods", "--dir", "d"]
                    .iter()
                    .chain(extra),
            )
        };
        assert!(parse(&[]).is_err());
        assert!(parse(&["--lines", "10"]).is_ok());
        assert!(parse(&["--duration", "1s", "--rate", "100", "--format", "docker"]).is_ok());
        assert!(parse(&["--lines", "10", "--rotate-keep", "1"]).is_err());
    }
}
