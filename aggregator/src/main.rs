//! `logferry-aggregator`: the command line. Errors become messages and exit codes here and
//! nowhere else.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use logferry_aggregator::app::{output_buffer_dir, pipelines_buffer_root};
use logferry_aggregator::config::{
    Config, ConfigErrors, OutputConfig, PipelineConfig, PolicyConfig,
};
use logferry_aggregator::outputs::{dead_letter, Output};
use logferry_aggregator::tenants::Key;
use logferry_common::chunk::inspect_dir;
use logferry_common::telemetry::{init_logging, LogFormat};

/// Exit code of `validate` for an invalid config (EX_CONFIG, as Vector uses).
const EXIT_CONFIG: u8 = 78;
/// Exit code of `dead-letter replay` when it must not run now (EX_TEMPFAIL): the buffer is locked
/// by a running aggregator whose admin listener cannot be reached, or that is busy or stopping.
/// Nothing was replayed or written.
const EXIT_TEMPFAIL: u8 = 75;

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
    /// Check a config file, or a tenant's pipeline file; exit 0 if valid, 78 listing every
    /// error otherwise.
    Validate {
        /// The config file (with --pipeline: where `[pipelines] policy` is read from).
        #[arg(long, required_unless_present = "pipeline")]
        config: Option<PathBuf>,
        /// A tenant pipeline file (`<dir>/<tenant>/<name>.toml`).
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// The pipeline's tenant (default: the name of the file's directory).
        #[arg(long, requires = "pipeline")]
        tenant: Option<String>,
        /// The tenant policy file (default: the config's `[pipelines] policy`, else the
        /// built-in default policy).
        #[arg(long, requires = "pipeline")]
        policy: Option<PathBuf>,
        /// Also check that each output can be reached (and each source's brokers and topics).
        #[arg(long)]
        check_outputs: bool,
    },
    /// List the chunk files of a buffer directory and verify their checksums (read-only).
    Inspect {
        /// A buffer directory (e.g. <buffer.path>/outputs/<name>).
        dir: PathBuf,
    },
    /// Inspect or re-send an output's dead letters: one of the config's [outputs], or with
    /// --pipeline an output of a tenant pipeline.
    DeadLetter {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// List dead-letter files with their record counts and reasons (read-only).
    List {
        #[command(flatten)]
        target: DeadLetterTarget,
        /// Also print up to this many records of each file as JSON.
        #[arg(long, default_value_t = 0)]
        show: usize,
    },
    /// Re-send dead letters through the output (after a fix), deleting each file once its
    /// records are delivered; records refused again are written back as new dead letters with
    /// the new reason.
    ///
    /// While an aggregator runs on this buffer (it holds <buffer.path>/LOCK), the replay runs
    /// inside it: this command asks its admin listener ([admin] listen, or --admin) and the
    /// records go through the running output, with the running process's config (a changed
    /// [outputs] needs a restart first). If that listener cannot be reached, nothing is done
    /// (exit 75). With no aggregator running, this command takes the lock for its whole run
    /// (an aggregator starting meanwhile fails and is restarted) and replays with the config
    /// file as it is now (with --pipeline: the pipeline file as it is now, checked against the
    /// tenant's policy). Never writes into a running output's files.
    ///
    /// Records are sent as they were kept: a tenant pipeline's parse and filters are not
    /// applied again (a `parse_error` dead letter holds the raw record and is sent raw).
    Replay {
        #[command(flatten)]
        target: DeadLetterTarget,
        /// Give up on a file whose records still fail after this long (it stays).
        #[arg(long, default_value = "60s", value_parser = humantime_duration)]
        timeout: std::time::Duration,
        /// Only files holding at least one group of this kind (e.g. `rejected`, `too_large`).
        #[arg(long)]
        kind: Option<String>,
        /// The running aggregator's admin listener (HOST:PORT), when [admin] listen of the
        /// config is not how to reach it (port 0, another address from here).
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
        /// Print the summary as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct DeadLetterTarget {
    /// The aggregator config.
    #[arg(long, env = "LOGFERRY_CONFIG")]
    config: PathBuf,
    /// The output whose dead letters to use (with --pipeline: the name in the pipeline file).
    #[arg(long)]
    output: String,
    /// A tenant pipeline (TENANT/NAME, its file `<[pipelines] dir>/TENANT/NAME.toml`) whose
    /// output to use instead of one of [outputs].
    #[arg(long, value_name = "TENANT/NAME")]
    pipeline: Option<Key>,
}

fn humantime_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
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
            pipeline: Some(pipeline),
            tenant,
            policy,
            check_outputs,
        }) => validate_pipeline(&pipeline, tenant, policy, config, check_outputs),
        Some(Command::Validate {
            config: Some(config),
            check_outputs,
            ..
        }) => validate(&config, check_outputs),
        Some(Command::Validate { .. }) => {
            eprintln!("validate: give --config or --pipeline");
            ExitCode::from(EXIT_CONFIG)
        }
        Some(Command::Inspect { dir }) => inspect(&dir),
        Some(Command::DeadLetter { command }) => dead_letter(command),
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
    // A config that parses but is invalid exits like `validate` does.
    if let Err(e) = config.validate() {
        let path = args
            .config
            .as_deref()
            .unwrap_or(std::path::Path::new("(embedded)"));
        eprintln!("error: {}: {e}", path.display());
        return ExitCode::from(EXIT_CONFIG);
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map(|rt| rt.block_on(logferry_aggregator::app::run(config, args.config.clone())));
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => failed(&anyhow::Error::from(e)),
        Err(e) => failed(&e),
    }
}

fn failed(e: &anyhow::Error) -> ExitCode {
    tracing::error!("{e:#}");
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

fn validate(path: &std::path::Path, check_outputs: bool) -> ExitCode {
    let config = match Config::load(path).and_then(|c| c.validate().map(|()| c)) {
        Ok(config) => config,
        Err(errors) => return report_errors(path, &errors),
    };
    for warning in config.warnings() {
        eprintln!("  warning: {warning}");
    }
    if check_outputs && !(check_outputs_of(&config.outputs) & check_sources(&config)) {
        return ExitCode::from(EXIT_CONFIG);
    }
    println!("{}: valid", path.display());
    ExitCode::SUCCESS
}

/// `validate --pipeline`: a team's pipeline file against its tenant's policy, as the
/// aggregator would apply it (every error at once).
fn validate_pipeline(
    path: &std::path::Path,
    tenant: Option<String>,
    policy: Option<PathBuf>,
    config: Option<PathBuf>,
    check_outputs: bool,
) -> ExitCode {
    let tenant = tenant.or_else(|| {
        path.parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .map(str::to_owned)
    });
    let Some(tenant) = tenant.filter(|t| logferry_aggregator::config::is_dns_label(t)) else {
        eprintln!(
            "{}: the tenant is the name of the file's directory (a DNS label), or --tenant",
            path.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let policy_file = match (policy, config) {
        (Some(p), _) => Some(p),
        (None, Some(c)) => match Config::load(&c) {
            Ok(c) => c.pipelines.policy,
            Err(errors) => return report_errors(&c, &errors),
        },
        (None, None) => None,
    };
    let policy = match load_policy(policy_file.as_deref()) {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    let pipeline = match PipelineConfig::load(path, &tenant, &policy.tenant(&tenant)) {
        Ok(p) => p,
        Err(errors) => return report_errors(path, &errors),
    };
    if check_outputs && !check_outputs_of(&pipeline.outputs) {
        return ExitCode::from(EXIT_CONFIG);
    }
    println!("{}: valid (tenant {tenant})", path.display());
    ExitCode::SUCCESS
}

/// The tenant policy in `file`, or the built-in default policy; its errors are printed.
fn load_policy(file: Option<&std::path::Path>) -> Result<PolicyConfig, ExitCode> {
    match file {
        Some(p) => PolicyConfig::load(p).map_err(|errors| report_errors(p, &errors)),
        None => Ok(PolicyConfig::default()),
    }
}

fn report_errors(path: &std::path::Path, errors: &ConfigErrors) -> ExitCode {
    eprintln!("{}: {} error(s)", path.display(), errors.0.len());
    for e in &errors.0 {
        eprintln!("  error: {e}");
    }
    ExitCode::from(EXIT_CONFIG)
}

/// Checks that each output can be reached, printing one line per output.
fn check_outputs_of(outputs: &std::collections::BTreeMap<String, OutputConfig>) -> bool {
    let mut reachable = true;
    for (name, output) in outputs {
        match check_output(name, output) {
            Ok(what) => println!("output {name}: ok ({what})"),
            Err(e) => {
                reachable = false;
                println!("output {name}: UNREACHABLE: {e}");
            }
        }
    }
    reachable
}

/// Checks that each source can reach its brokers and topics, printing one line per source.
fn check_sources(config: &Config) -> bool {
    let mut reachable = true;
    for (name, result) in logferry_aggregator::sources::Sources::check(config) {
        match result {
            Ok(what) => println!("source {name}: ok ({what})"),
            Err(e) => {
                reachable = false;
                println!("source {name}: UNREACHABLE: {e}");
            }
        }
    }
    reachable
}

fn check_output(name: &str, output: &OutputConfig) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let built = Output::build(name, output).await?;
        let found = tokio::time::timeout(std::time::Duration::from_secs(15), built.check())
            .await
            .map_err(|_| anyhow::anyhow!("no answer within 15s"))??;
        Ok(found)
    })
}

/// `dead-letter list|replay`.
fn dead_letter(command: DeadLetterCommand) -> ExitCode {
    init_logging(LogFormat::Text, "warn");
    let target = match &command {
        DeadLetterCommand::List { target, .. } | DeadLetterCommand::Replay { target, .. } => target,
    };
    let config = match Config::load(&target.config).and_then(|c| c.validate().map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", target.config.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let output = match resolve_output(&config, target) {
        Ok(output) => output,
        Err(code) => return code,
    };
    let dir = dead_letter::dir_of(&output.buffer_dir);
    let result = match &command {
        DeadLetterCommand::List { show, .. } => dead_letter_list(&dir, *show),
        DeadLetterCommand::Replay {
            timeout,
            kind,
            admin,
            json,
            ..
        } => dead_letter_replay(
            &config,
            &output,
            &dir,
            ReplayOptions {
                timeout: *timeout,
                kind: kind.as_deref(),
                admin: admin.as_deref(),
                json: *json,
            },
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The output `dead-letter` works on.
struct DeadLetterOutput {
    /// Its name in its config file.
    name: String,
    /// Whose it is.
    owner: Owner,
    /// Its buffer name and metric label.
    label: String,
    /// Its buffer directory.
    buffer_dir: PathBuf,
}

/// Whose output `dead-letter` works on.
enum Owner {
    /// The admin's: one of `[outputs]`, with its config.
    Main(Box<OutputConfig>),
    /// A tenant pipeline's. Its config is read from `file` only when it is needed (a replay
    /// alone): listing, or replaying in the running aggregator, works while the file is gone
    /// or invalid (the pipeline draining or stale).
    Pipeline {
        /// The pipeline.
        key: Key,
        /// Its file, `<[pipelines] dir>/<tenant>/<name>.toml`.
        file: PathBuf,
    },
}

/// Finds `--output` among the config's [outputs], or names it in the `--pipeline` of
/// `[pipelines] dir`; errors are printed.
fn resolve_output(
    config: &Config,
    target: &DeadLetterTarget,
) -> Result<DeadLetterOutput, ExitCode> {
    let Some(key) = &target.pipeline else {
        let Some(output) = config.outputs.get(&target.output) else {
            eprintln!(
                "error: no output named {:?} in {}",
                target.output,
                target.config.display()
            );
            return Err(ExitCode::from(EXIT_CONFIG));
        };
        return Ok(DeadLetterOutput {
            name: target.output.clone(),
            owner: Owner::Main(Box::new(output.clone())),
            label: target.output.clone(),
            buffer_dir: output_buffer_dir(config, &target.output),
        });
    };
    let Some(dir) = &config.pipelines.dir else {
        eprintln!(
            "error: {} has no [pipelines] dir, so no pipeline {key}",
            target.config.display(),
        );
        return Err(ExitCode::from(EXIT_CONFIG));
    };
    if !logferry_aggregator::config::is_dns_label(&target.output) {
        eprintln!(
            "error: {:?} is no output name of a pipeline (a DNS label)",
            target.output
        );
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    Ok(DeadLetterOutput {
        name: target.output.clone(),
        owner: Owner::Pipeline {
            key: key.clone(),
            file: dir.join(&key.tenant).join(format!("{}.toml", key.name)),
        },
        label: key.output_label(&target.output),
        buffer_dir: key.output_dir(&pipelines_buffer_root(config), &target.output),
    })
}

/// The config of output `name` of pipeline `key`, from its `file` checked against the
/// tenant's policy, as the aggregator would apply it; errors are printed.
fn pipeline_output_config(
    config: &Config,
    key: &Key,
    file: &std::path::Path,
    name: &str,
) -> Result<OutputConfig, ExitCode> {
    let policy = load_policy(config.pipelines.policy.as_deref())?;
    let mut pipeline = PipelineConfig::load(file, &key.tenant, &policy.tenant(&key.tenant))
        .map_err(|errors| report_errors(file, &errors))?;
    pipeline.outputs.remove(name).ok_or_else(|| {
        eprintln!("error: no output named {name:?} in {}", file.display());
        ExitCode::from(EXIT_CONFIG)
    })
}

fn dead_letter_list(dir: &std::path::Path, show: usize) -> anyhow::Result<ExitCode> {
    let files = dead_letter::list_files(dir)?;
    let mut total = 0u64;
    let mut by_kind: std::collections::BTreeMap<String, u64> = Default::default();
    println!("dead letters in {}", dir.display());
    for path in &files {
        let file = match dead_letter::read_file(path) {
            Ok(f) => f,
            Err(e) => {
                println!("{}: UNREADABLE: {e}", path.display());
                continue;
            }
        };
        total += file.records();
        println!(
            "{}  records={}  bad_frames={}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            file.records(),
            file.bad_frames
        );
        for g in &file.groups {
            *by_kind.entry(g.kind.clone()).or_default() += u64::from(g.records);
            println!(
                "  {} record(s) tag={} kind={} chunk={} frame={} first_index={}: {}",
                g.records, g.tag, g.kind, g.origin.seq, g.frame, g.first_index, g.reason
            );
        }
        let recs = file.to_records().recs;
        for rec in recs.iter().take(show) {
            let mut json = Vec::new();
            let _ = logferry_common::msgpack::write_json(&rec.record, &mut json);
            println!(
                "    {} {} {}",
                rec.time.to_rfc3339(),
                rec.tag,
                String::from_utf8_lossy(&json)
            );
        }
    }
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k}={n}")).collect();
    println!(
        "{} file(s), {total} record(s){}{}",
        files.len(),
        if kinds.is_empty() { "" } else { ": " },
        kinds.join(" ")
    );
    Ok(ExitCode::SUCCESS)
}

/// How `dead-letter replay` was asked to run.
struct ReplayOptions<'a> {
    timeout: std::time::Duration,
    kind: Option<&'a str>,
    admin: Option<&'a str>,
    json: bool,
}

/// Why `dead-letter replay` did not replay.
#[derive(Debug, thiserror::Error)]
enum ReplayCliError {
    /// Nothing was done; trying again later (or with --admin) may work.
    #[error("{0}")]
    NotNow(String),
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

fn dead_letter_replay(
    config: &Config,
    output: &DeadLetterOutput,
    dir: &std::path::Path,
    opts: ReplayOptions<'_>,
) -> anyhow::Result<ExitCode> {
    let root = &config.buffer.path;
    let result = match try_lock_root(root)
        .with_context(|| format!("cannot open the lock file of {}", root.display()))?
    {
        Some(_lock) => {
            // No aggregator on this buffer, and none can start while the lock is held.
            let output_config = match &output.owner {
                Owner::Main(c) => (**c).clone(),
                Owner::Pipeline { key, file } => {
                    match pipeline_output_config(config, key, file, &output.name) {
                        Ok(c) => c,
                        Err(code) => return Ok(code),
                    }
                }
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(dead_letter::replay(
                &output.label,
                &output_config,
                dir,
                opts.timeout,
                opts.kind,
            ))
            .map(|r| (r, "alone"))
            .map_err(|e| ReplayCliError::Other(e.into()))
        }
        None => {
            let addr = opts
                .admin
                .map_or_else(|| admin_target(&config.admin.listen), |a| Ok(a.to_owned()));
            addr.map_err(ReplayCliError::NotNow).and_then(|addr| {
                let files = dead_letter::list_files(dir)
                    .map_err(anyhow::Error::from)?
                    .len();
                replay_remote(root, &addr, output, &opts, files).map(|r| (r, "aggregator"))
            })
        }
    };
    let (report, via) = match result {
        Ok(r) => r,
        Err(ReplayCliError::NotNow(why)) => {
            eprintln!("error: {why}");
            return Ok(ExitCode::from(EXIT_TEMPFAIL));
        }
        Err(ReplayCliError::Other(e)) => return Err(e),
    };
    if opts.json {
        let mut v = serde_json::to_value(&report)?;
        v["output"] = serde_json::Value::from(output.name.as_str());
        if let Owner::Pipeline { key, .. } = &output.owner {
            v["pipeline"] = serde_json::Value::from(key.to_string());
        }
        v["via"] = serde_json::Value::from(via);
        println!("{v}");
    } else {
        println!(
            "replayed {} file(s): {} record(s) delivered, {} dead again, {} file(s) left to retry",
            report.files_done, report.delivered, report.dead_again, report.files_left
        );
    }
    if report.interrupted {
        eprintln!("error: the replay was interrupted (the aggregator is shutting down); the files not done stay");
    }
    Ok(if report.files_left > 0 || report.interrupted {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Takes the buffer root's lock (as the aggregator does, `common::chunk::lock_root`), or
/// `None` when another process holds it.
fn try_lock_root(root: &std::path::Path) -> std::io::Result<Option<std::fs::File>> {
    std::fs::create_dir_all(root)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("LOCK"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Where to reach an admin listener configured as `listen` from this host.
fn admin_target(listen: &str) -> Result<String, String> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| format!("[admin] listen {listen:?}: {e}; pass --admin HOST:PORT"))?;
    if addr.port() == 0 {
        return Err(format!(
            "[admin] listen {listen:?} has port 0, so the running aggregator's admin port is not known; nothing was replayed. Pass --admin HOST:PORT"
        ));
    }
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Ok(std::net::SocketAddr::new(ip, addr.port()).to_string())
}

/// `POST /dead-letter/replay` to the running aggregator at `addr`; `files` (in the directory
/// now) bounds how long its answer may take.
fn replay_remote(
    root: &std::path::Path,
    addr: &str,
    output: &DeadLetterOutput,
    opts: &ReplayOptions<'_>,
    files: usize,
) -> Result<dead_letter::ReplayReport, ReplayCliError> {
    use std::io::{Read, Write};
    let unreachable = |e: &dyn std::fmt::Display| {
        ReplayCliError::NotNow(format!(
            "buffer {} is locked by a running aggregator (or another replay), but its admin \
             listener {addr} cannot be reached ({e}); nothing was replayed. Pass --admin \
             HOST:PORT to reach it, or stop it first",
            root.display()
        ))
    };
    let sock: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| unreachable(&e))?
        .next()
        .ok_or_else(|| unreachable(&"no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&sock, std::time::Duration::from_secs(5))
        .map_err(|e| unreachable(&e))?;
    // The aggregator gives each file up to `timeout`; a margin for the rest.
    let per_file = opts.timeout + std::time::Duration::from_secs(30);
    let wait = per_file * u32::try_from(files + 1).unwrap_or(u32::MAX);
    stream
        .set_read_timeout(Some(wait))
        .and_then(|()| stream.set_write_timeout(Some(std::time::Duration::from_secs(10))))
        .context("cannot set socket timeouts")?;
    let mut query = format!(
        "output={}&timeout={}ms",
        query_escape(&output.name),
        opts.timeout.as_millis()
    );
    if let Owner::Pipeline { key, .. } = &output.owner {
        query.push_str(&format!("&pipeline={}", query_escape(&key.to_string())));
    }
    if let Some(kind) = opts.kind {
        query.push_str(&format!("&kind={}", query_escape(kind)));
    }
    write!(
        stream,
        "POST /dead-letter/replay?{query} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| unreachable(&e))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).with_context(|| {
        format!("no complete answer from the aggregator at {addr}; the replay may still be running there, see `dead-letter list`")
    })?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP answer from {addr}: {head:?}"))?;
    if status == 200 {
        return serde_json::from_str(body)
            .with_context(|| format!("bad replay summary from {addr}: {body:?}"))
            .map_err(ReplayCliError::Other);
    }
    let why = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned());
    let msg = format!("the aggregator at {addr} refused the replay ({status}): {why}");
    Err(match status {
        409 | 503 => ReplayCliError::NotNow(msg),
        _ => ReplayCliError::Other(anyhow::anyhow!(msg)),
    })
}

/// Escapes a query value (everything but unreserved characters).
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
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
