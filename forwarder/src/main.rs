//! `logferry-forwarder`: the command line. Errors become messages and exit codes here and
//! nowhere else.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use logferry_common::telemetry::{init_logging, LogFormat};
use logferry_forwarder::config::Config;
use logferry_forwarder::tail::checkpoint::Store;

/// Exit code of `validate` for an invalid config (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "logferry-forwarder",
    version,
    about = "Tails container logs and ships them to logferry (or any Forward) aggregators, with acks"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the forwarder (the default).
    Run(RunArgs),
    /// Check a config file; exit 0 if valid, 78 listing every error otherwise.
    Validate {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// List the file offsets stored under a buffer directory (the forwarder must be stopped).
    Offsets {
        /// The `[buffer] path` directory.
        dir: PathBuf,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Config file (TOML). Without it, the embedded default runs.
    #[arg(long, env = "LOGFERRY_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level when RUST_LOG is not set.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Validate { config }) => validate(&config),
        Some(Command::Offsets { dir, json }) => offsets(&dir, json),
    }
}

fn run(args: RunArgs) -> ExitCode {
    init_logging(args.log_format, &args.log_level);
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => {
            tracing::info!("no --config given: running the embedded default (tails ./logferry-data/logs/*.log, sends to 127.0.0.1:24224)");
            Config::embedded_default()
        }
    };
    if let Err(errors) = config.validate() {
        eprintln!("error: {errors}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // One thread for the network side; the tailer and the buffer writer have their own.
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            rt.block_on(logferry_forwarder::app::run(config, args.config.clone()))
                .map_err(anyhow::Error::from)
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path).and_then(|c| c.validate().map(|()| c)) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            for e in &errors.0 {
                eprintln!("  error: {e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for warning in config.warnings() {
        eprintln!("  warning: {warning}");
    }
    println!("{}: valid", path.display());
    ExitCode::SUCCESS
}

fn offsets(dir: &std::path::Path, json: bool) -> ExitCode {
    let entries = match Store::inspect(&dir.join("offsets")) {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!(
                "error: cannot read the offsets under {}: {e}",
                dir.display()
            );
            return ExitCode::from(2);
        }
    };
    if !json {
        println!(
            "{:>14} {:>20} {:>16}  path (real path)",
            "offset", "inode", "head"
        );
    }
    for (fp, cp) in &entries {
        if json {
            let line = serde_json::json!({
                "path": cp.glob_path,
                "real_path": cp.real_path,
                "offset": cp.offset,
                "dev": fp.dev,
                "inode": fp.ino,
                "head": format!("{:016x}", fp.head),
                "updated_ms": cp.updated_ms,
            });
            println!("{line}");
        } else {
            println!(
                "{:>14} {:>20} {:016x}  {} ({})",
                cp.offset,
                fp.ino,
                fp.head,
                cp.glob_path.display(),
                cp.real_path.display()
            );
        }
    }
    ExitCode::SUCCESS
}
