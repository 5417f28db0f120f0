//! `logferry-forwarder`: the per-node agent. Only its command line exists so far; tailing,
//! buffering and the acked Forward client are tracked in their own issue.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "logferry-forwarder",
    version,
    about = "Tails container logs and ships them over Forward (not implemented yet)"
)]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!(
        "logferry-forwarder {}: not implemented yet; run logferry-aggregator, or send with any Forward client",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::FAILURE
}
