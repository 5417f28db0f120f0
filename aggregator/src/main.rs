//! `logferry-aggregator`: the command line. Errors become messages and exit codes here and
//! nowhere else.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use logferry_aggregator::config::{Config, OutputConfig};
use logferry_common::chunk::inspect_dir;
use logferry_common::telemetry::{init_logging, LogFormat};

/// Exit code of `validate` for an invalid config (EX_CONFIG, as Vector uses).
const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "logferry-aggregator",
    version,
    about = "Forward protocol aggregator with a durable buffer"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the aggregator (the default).
    Run(RunArgs),
    /// Check a config file; exit 0 if valid, 78 listing every error otherwise.
    Validate {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
        /// Also check that each output can be reached.
        #[arg(long)]
        check_outputs: bool,
    },
    /// List the chunk files of a buffer directory and verify their checksums (read-only).
    Inspect {
        /// A buffer directory (e.g. <buffer.path>/outputs/<name>).
        dir: PathBuf,
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
        Some(Command::Validate {
            config,
            check_outputs,
        }) => validate(&config, check_outputs),
        Some(Command::Inspect { dir }) => inspect(&dir),
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
            tracing::info!("no --config given: running the embedded default (Forward on 127.0.0.1:24224, file output in ./logferry-data/out)");
            Config::embedded_default()
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            rt.block_on(logferry_aggregator::app::run(config, args.config.clone()))
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

fn validate(path: &std::path::Path, check_outputs: bool) -> ExitCode {
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
    if check_outputs {
        let mut unreachable = 0;
        for (name, output) in &config.outputs {
            match check_output(output) {
                Ok(what) => println!("output {name}: ok ({what})"),
                Err(e) => {
                    unreachable += 1;
                    println!("output {name}: UNREACHABLE: {e}");
                }
            }
        }
        if unreachable > 0 {
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    println!("{}: valid", path.display());
    ExitCode::SUCCESS
}

fn check_output(output: &OutputConfig) -> anyhow::Result<String> {
    match output {
        OutputConfig::File(f) => {
            std::fs::create_dir_all(&f.path)
                .with_context(|| format!("cannot create {}", f.path.display()))?;
            let probe = f.path.join(".logferry-write-check");
            std::fs::write(&probe, b"ok")
                .with_context(|| format!("cannot write in {}", f.path.display()))?;
            let _ = std::fs::remove_file(&probe);
            Ok(format!("{} is writable", f.path.display()))
        }
        OutputConfig::Null(_) => Ok("discards everything".into()),
    }
}

fn inspect(dir: &std::path::Path) -> ExitCode {
    let reports = match inspect_dir(dir) {
        Ok(reports) => reports,
        Err(e) => {
            eprintln!("error: cannot inspect {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    let mut damaged = 0;
    println!(
        "{:<34} {:>7} {:>12} {:>9} {:>7} {:>10} {:>10}  status",
        "file", "state", "bytes", "records", "frames", "bad_frames", "torn_bytes"
    );
    for r in &reports {
        let ok = r.is_clean();
        if !ok {
            damaged += 1;
        }
        println!(
            "{:<34} {:>7} {:>12} {:>9} {:>7} {:>10} {:>10}  {}",
            r.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            r.state,
            r.bytes,
            r.records,
            r.frames_ok,
            r.bad_frames,
            r.torn_tail_bytes,
            if !r.header_ok {
                "BAD HEADER"
            } else if ok {
                "ok"
            } else {
                "DAMAGED"
            }
        );
    }
    println!("{} chunk file(s), {damaged} damaged", reports.len());
    if damaged > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
