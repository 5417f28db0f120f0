//! `logferry-loadtest`: Forward-protocol load generator and loss verifier.
//!
//! - `forward`: sends Kubernetes-shaped records (each with a unique `seq` and the run id) as
//!   PackedForward requests, optionally with acks and gzip, and reports records/s, MB/s and ack
//!   latency percentiles.
//! - `verify`: reads the aggregator's file output and reports received, missing and duplicated
//!   sequence numbers of one run; exits 1 if anything is missing.

mod forward;
mod record;
mod stats;
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
    Forward(forward::ForwardArgs),
    /// Check a run's records in the aggregator's file output (files or directories of *.jsonl).
    Verify(verify::VerifyArgs),
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

/// Returns whether the run succeeded.
fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Forward(args) => {
            let json = args.json;
            let summary = forward::run(args)?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!("{}", summary.text());
            }
            if !summary.ok && json {
                for e in &summary.errors {
                    eprintln!("logferry-loadtest: {e}");
                }
            }
            Ok(summary.ok)
        }
        Command::Verify(args) => {
            let report = verify::run(&args)?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.text());
            }
            Ok(report.ok)
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

    #[test]
    fn forward_defaults() {
        let cli = Cli::parse_from([
            "logferry-loadtest",
            "forward",
            "--target",
            "127.0.0.1:24224",
            "--records",
            "10",
        ]);
        let Command::Forward(a) = cli.command else {
            panic!("forward expected");
        };
        assert_eq!(
            (a.batch, a.connections, a.record_bytes, a.window),
            (1000, 1, 200, 4)
        );
        assert!(!a.ack && !a.gzip && !a.json);
        assert!(a.retry_for.is_zero());
    }
}
