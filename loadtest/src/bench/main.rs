//! `logferry-bench`: the benchmark suite behind `bench/run.sh`.
//!
//! `run` starts real processes (the aggregator, the forwarder, `logferry-loadtest`) from one
//! directory of binaries, drives each scenario, measures the daemons through `/proc` and their
//! metrics, checks that nothing was lost, and prints one markdown table with the reference figures
//! of `bench/reference.toml` beside ours. `plot` redraws the soak chart from its `soak.json`.
//!
//! Scenarios (keys for `--scenarios`):
//! - `ceiling`: `loadtest forward` -> `loadtest sink` (acks, discards): the generator's own limit;
//! - `ingest` (a0): Forward -> aggregator, `fsync = "always"`, acked -> null output;
//! - `file` (a): the same into the file output, timed until the file holds every record;
//! - `file-gzip` (b): the same with CompressedPackedForward;
//! - `pods` (c): `loadtest pods` (docker json-file) -> forwarder -> aggregator -> file output;
//! - `latency` (d): ack latency at half of the `ingest` rate;
//! - `soak` (e): a fixed rate for a duration, the aggregator's RSS sampled, with an SVG chart.

mod plot;
mod procs;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "logferry-bench", version, about = "logferry's benchmark suite")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the scenarios and print the results table.
    Run(Box<RunArgs>),
    /// Draw the soak chart (SVG) from a `soak.json` written by `run`.
    Plot {
        /// The `soak.json` of a run.
        #[arg(long)]
        data: PathBuf,
        /// The SVG to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `"0"` or a humantime duration.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

pub const ALL_SCENARIOS: &[&str] = &[
    "ceiling",
    "ingest",
    "file",
    "file-gzip",
    "pods",
    "latency",
    "soak",
];

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Directory holding logferry-aggregator, logferry-forwarder and logferry-loadtest
    /// (default: this program's own directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Where results, logs, `soak.json` and `soak.svg` go (default: `<bin-dir>/../bench/<time>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Small sizes for a smoke run (seconds, not minutes).
    #[arg(long)]
    pub quick: bool,
    /// Scenarios to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(ALL_SCENARIOS))]
    pub scenarios: Vec<String>,
    /// Records per Forward scenario (default 2M; 100k with --quick).
    #[arg(long)]
    pub records: Option<u64>,
    /// Records per request.
    #[arg(long, default_value_t = 1000)]
    pub batch: u32,
    /// Connections of the generator.
    #[arg(long, default_value_t = 1)]
    pub connections: u32,
    /// Unacknowledged requests per connection.
    #[arg(long, default_value_t = 8)]
    pub window: u32,
    /// Log lines written for the pods scenario, all pods together (default 1M; 20k with --quick).
    #[arg(long)]
    pub pods_lines: Option<u64>,
    /// Pods of the pods scenario.
    #[arg(long, default_value_t = 10)]
    pub pods: u32,
    /// Length of the latency scenario (default 20s; 3s with --quick).
    #[arg(long, value_parser = parse_duration)]
    pub latency_duration: Option<Duration>,
    /// The maximum rate the latency scenario halves, when `ingest` does not run.
    #[arg(long)]
    pub max_rate: Option<f64>,
    /// Length of the soak (default 10m; 10s with --quick).
    #[arg(long, value_parser = parse_duration)]
    pub soak_duration: Option<Duration>,
    /// Records per second of the soak (default 50000; 5000 with --quick).
    #[arg(long)]
    pub soak_rate: Option<f64>,
    /// RSS sampling interval of the soak (default 10s; 1s with --quick).
    #[arg(long, value_parser = parse_duration)]
    pub sample_every: Option<Duration>,
    /// Warm-up excluded from the soak's growth check (default 60s; 30% of the soak with --quick).
    #[arg(long, value_parser = parse_duration)]
    pub soak_warmup: Option<Duration>,
    /// Output of the soak's aggregator (`null` keeps the disk from filling on long soaks).
    #[arg(long, default_value = "null", value_parser = ["null", "file"])]
    pub soak_output: String,
    /// Reference figures (default: the bench/reference.toml built in).
    #[arg(long)]
    pub reference: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => scenarios::run(*args),
        Command::Plot { data, out } => plot_file(&data, &out).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("logferry-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn plot_file(data: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read(data).with_context(|| format!("reading {}", data.display()))?;
    let d: plot::SoakData =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", data.display()))?;
    plot::draw(&d, out)?;
    println!("wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::parse_from([
            "logferry-bench",
            "run",
            "--quick",
            "--scenarios",
            "ingest,latency",
            "--soak-duration",
            "5s",
        ]);
        let Command::Run(a) = cli.command else {
            panic!("run expected")
        };
        assert_eq!(a.scenarios, vec!["ingest", "latency"]);
        assert!(Cli::try_parse_from(["logferry-bench", "run", "--scenarios", "bogus"]).is_err());
    }
}
