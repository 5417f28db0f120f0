//! `forward`: a Forward-protocol load generator.
//!
//! Each connection claims batches of sequence numbers from one shared counter (so `seq` is unique
//! across the run), fills a pre-encoded batch template (only the seq and time bytes change), wraps it
//! in one PackedForward request (`size`, and `chunk` with `--ack`), and keeps up to `--window`
//! unacknowledged requests in flight. Acks are matched by chunk id; an unknown ack is a protocol
//! error. With `--retry-for`, a broken connection is re-established and every unacknowledged request
//! is written again with the same chunk id (at-least-once), until acked or the time runs out.
//!
//! How much is sent: `--records N`, or `--duration T` (a soak: new batches are claimed until T has
//! passed), or both (whichever ends first); how fast: unpaced, `--rate R`, or `--ramp FROM:TO:T`
//! (a linear ramp that then holds TO, to find where the receiver stops keeping up: the summary's
//! `saturation` is the first second the achieved rate fell below 90% of the target). A ticker
//! samples the counters every second into the summary's `timeline` and shows them as a progress
//! bar on a terminal, or as plain lines otherwise.
//!
//! With `--tls` and `--shared-key`, each connection (and each reconnect) first goes through TLS
//! and the Forward shared-key handshake (`crate::connect`); the send loop is the same for every
//! kind of stream and flushes whenever it runs out of bytes to write, so nothing waits in a TLS
//! buffer.

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use bytes::BytesMut;
use clap::Args;
use flate2::write::GzEncoder;
use logferry_common::forward::{
    ack::chunk_id_bytes, decode_ack, encode_compressed_packed_forward, encode_packed_forward,
    EventTime,
};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::connect::{Connected, Connector, SecurityArgs};
use crate::record::{BatchTemplate, RecordShape, Shape};
use crate::stats::{
    human, parse_ramp, saturation, Counters, IntervalLatencies, Latencies, LatencySummary, Pacer,
    Schedule, Tick,
};

#[derive(Debug, Clone, Args)]
pub struct ForwardArgs {
    /// Forward server to send to, HOST:PORT.
    #[arg(long)]
    pub target: String,
    /// How many records to send in total.
    #[arg(long, required_unless_present_any = ["duration", "ramp"])]
    pub records: Option<u64>,
    /// Send for this long (a soak); with `--records` too, whichever ends first. With `--ramp` and
    /// neither, the run ends with the ramp.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Steady rate in records per second, over all connections (default: as fast as possible).
    #[arg(long, conflicts_with = "ramp")]
    pub rate: Option<f64>,
    /// Ramp the rate linearly from FROM to TO records/s over DURATION, then hold TO
    /// (e.g. `1000:300000:60s`).
    #[arg(long, value_parser = parse_ramp, value_name = "FROM:TO:DURATION")]
    pub ramp: Option<Schedule>,
    /// Record shape.
    #[arg(long, value_enum, default_value_t = Shape::K8s)]
    pub shape: Shape,
    /// Records per PackedForward request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Parallel TCP connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Length of each record's `log` field in bytes.
    #[arg(long, default_value_t = 200)]
    pub record_bytes: usize,
    /// Ask for acknowledgements (a `chunk` id per request) and wait for them.
    #[arg(long)]
    pub ack: bool,
    /// Send CompressedPackedForward (gzip) instead of PackedForward.
    #[arg(long)]
    pub gzip: bool,
    /// Run id carried by every record (default: random).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Tag of every request (default: `loadtest.<run-id>`).
    #[arg(long)]
    pub tag: Option<String>,
    /// Unacknowledged requests allowed per connection (with `--ack`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub window: u32,
    /// Keep reconnecting and re-sending unacknowledged requests (same chunk id) for this long
    /// after a connection error; `0` fails on the first error.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub retry_for: Duration,
    /// A request not acknowledged within this time counts as a connection error.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub ack_timeout: Duration,
    /// Timeout of one connect attempt: the TCP connect, and each of the TLS handshake and the
    /// server's HELO and PONG of the shared-key handshake when enabled.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar or per-second lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Leave the per-second timeline out of the `--json` summary.
    #[arg(long)]
    pub no_timeline: bool,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// `"0"` or a humantime duration (`"500ms"`, `"30s"`, `"2m"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// The final report of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub ok: bool,
    pub run_id: String,
    pub tag: String,
    pub target: String,
    /// Records of the run: every seq in `0..records` was claimed (with `--duration`, what was
    /// claimed before the time ran out).
    pub records: u64,
    /// `--records` as given (null for a timed run).
    pub records_requested: Option<u64>,
    /// Records completely written to a socket at least once.
    pub sent: u64,
    /// Records acknowledged (null without `--ack`).
    pub acked: Option<u64>,
    /// Bytes written, re-sends included.
    pub bytes: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    /// Ack latency per request, from its last byte written to its ack read.
    pub ack_latency_ms: Option<LatencySummary>,
    pub resends: u64,
    pub reconnects: u64,
    pub connections: u32,
    pub batch: u32,
    pub gzip: bool,
    pub ack: bool,
    pub shape: Shape,
    /// Connections used TLS (`--tls`).
    pub tls: bool,
    /// Connections ran the shared-key handshake (`--shared-key`).
    pub handshake: bool,
    /// The schedule as given (`rate 5000/s`, `ramp 1000->50000/s over 30s`), null if unpaced.
    pub schedule: Option<String>,
    /// The best one-second rate of acked (with `--ack`) or sent records.
    pub peak_per_sec: f64,
    /// For a paced run: the first second the achieved rate stayed below 90% of the target.
    pub saturation: Option<Tick>,
    /// What `verify --expect-file` reads: records per source (`-`: this run's single sequence).
    pub expected: BTreeMap<String, u64>,
    /// One entry per second.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Tick>,
    pub errors: Vec<String>,
}

impl Summary {
    pub fn text(&self) -> String {
        let mut s = format!(
            "run {} tag {} -> {}: {} records, {} sent{}, {} bytes in {:.2}s: {} records/s, {:.1} MB/s",
            self.run_id,
            self.tag,
            self.target,
            self.records,
            self.sent,
            self.acked.map(|a| format!(", {a} acked")).unwrap_or_default(),
            self.bytes,
            self.seconds,
            human(self.records_per_sec),
            self.mb_per_sec,
        );
        if self.tls || self.handshake {
            s += match (self.tls, self.handshake) {
                (true, true) => "\nover TLS, with the shared-key handshake",
                (true, false) => "\nover TLS",
                _ => "\nwith the shared-key handshake",
            };
        }
        if let Some(l) = &self.ack_latency_ms {
            s += &format!(
                "\nack latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                l.p50_ms, l.p99_ms, l.max_ms
            );
        }
        s += &format!(
            "\npeak {}/s{}",
            human(self.peak_per_sec),
            self.schedule
                .as_ref()
                .map(|d| format!(", schedule {d}"))
                .unwrap_or_default()
        );
        if let Some(t) = &self.saturation {
            s += &format!(
                "\nsaturated at {:.0}s: target {}/s, achieved {}/s",
                t.t,
                human(t.target_rate.unwrap_or(0.0)),
                human(if self.ack {
                    t.acked_per_sec
                } else {
                    t.sent_per_sec
                })
            );
        }
        s += &format!("\nresends {}, reconnects {}", self.resends, self.reconnects);
        for e in &self.errors {
            s += &format!("\nerror: {e}");
        }
        s += if self.ok { "\nOK" } else { "\nFAILED" };
        s
    }
}

/// Runs the generator; returns the summary (its `ok` decides the exit code).
pub fn run(args: ForwardArgs) -> anyhow::Result<Summary> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(args.connections as usize)
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run_async(args))
}

pub fn random_run_id() -> String {
    let b: [u8; 6] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    /// Opens connections (TCP, TLS, handshake).
    connector: Connector,
    tag: String,
    ack: bool,
    gzip: bool,
    window: usize,
    batch: u64,
    total: u64,
    /// No new batch is claimed after this.
    deadline: Option<Instant>,
    retry_for: Duration,
    ack_timeout: Duration,
    shape: RecordShape,
    next_seq: AtomicU64,
    pacer: Option<Pacer>,
    abort: AtomicBool,
    counters: Counters,
    latencies: IntervalLatencies,
}

impl Shared {
    /// Claims the next batch of sequence numbers: `(first, count)`.
    fn claim(&self) -> Option<(u64, u64)> {
        if self.exhausted() {
            return None;
        }
        let first = self.next_seq.fetch_add(self.batch, Relaxed);
        (first < self.total).then(|| (first, self.batch.min(self.total - first)))
    }

    /// No more batches will be claimed.
    fn exhausted(&self) -> bool {
        self.abort.load(Relaxed)
            || self.next_seq.load(Relaxed) >= self.total
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Records claimed so far: seqs `0..claimed`.
    fn claimed(&self) -> u64 {
        self.next_seq.load(Relaxed).min(self.total)
    }
}

async fn run_async(args: ForwardArgs) -> anyhow::Result<Summary> {
    let run_id = args.run_id.clone().unwrap_or_else(random_run_id);
    let tag = args
        .tag
        .clone()
        .unwrap_or_else(|| format!("loadtest.{run_id}"));
    let schedule = match (args.rate, args.ramp) {
        (Some(r), _) => {
            anyhow::ensure!(r > 0.0 && r.is_finite(), "--rate must be positive");
            Some(Schedule::Steady(r))
        }
        (None, ramp) => ramp,
    };
    // A ramp with no other limit ends with the ramp.
    let duration = match (args.duration, args.records, schedule) {
        (None, None, Some(Schedule::Ramp { over, .. })) => Some(over),
        (d, _, _) => d,
    };
    anyhow::ensure!(
        args.records.is_some() || duration.is_some(),
        "give --records, --duration or --ramp"
    );
    // Before any load: a bad CA, certificate or key file is a setup error naming the file.
    let connector =
        Connector::new(&args.target, args.connect_timeout, &args.security).context("TLS set-up")?;
    let start = Instant::now();
    let pacer = schedule.map(Pacer::new);
    if let Some(p) = &pacer {
        p.start_at(start);
    }
    let shared = Arc::new(Shared {
        connector,
        tag: tag.clone(),
        ack: args.ack,
        gzip: args.gzip,
        window: args.window as usize,
        batch: u64::from(args.batch),
        total: args.records.unwrap_or(u64::MAX),
        deadline: duration.map(|d| start + d),
        retry_for: args.retry_for,
        ack_timeout: args.ack_timeout,
        shape: RecordShape {
            run_id: run_id.clone(),
            log_bytes: args.record_bytes,
            connection: 0,
            kind: args.shape,
        },
        next_seq: AtomicU64::new(0),
        pacer,
        abort: AtomicBool::new(false),
        counters: Counters::default(),
        latencies: IntervalLatencies::default(),
    });

    let progress = Progress::new(&args, duration, !args.quiet);
    let (stop_ticker, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let ticker = {
        let sh = shared.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut timeline = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut prev = sh.counters.snapshot();
            let mut prev_t = start;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => return timeline,
                }
                let now = sh.counters.snapshot();
                let t = Instant::now();
                let entry = Tick::new(
                    t - start,
                    t - prev_t,
                    &prev,
                    &now,
                    sh.pacer.as_ref().map(|p| p.target_rate(prev_t, t)),
                    sh.latencies.take(),
                );
                progress.update(&entry, &now, sh.ack, t - start);
                timeline.push(entry);
                prev = now;
                prev_t = t;
                if timeline.len() >= MAX_TIMELINE {
                    timeline.remove(0);
                }
            }
        })
    };

    let tasks: Vec<_> = (0..args.connections as usize)
        .map(|id| tokio::spawn(connection(id, shared.clone())))
        .collect();
    let mut latencies = Latencies::default();
    let mut errors = Vec::new();
    for (id, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(out) => {
                latencies.merge(out.latencies);
                if let Some(e) = out.error {
                    errors.push(format!("connection {id}: {e:#}"));
                }
            }
            Err(e) => errors.push(format!("connection {id}: task failed: {e}")),
        }
    }
    let elapsed = start.elapsed();
    let _ = stop_ticker.send(());
    let timeline = ticker.await.unwrap_or_default();
    progress.finish();

    let c = shared.counters.snapshot();
    let records = shared.claimed();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let done = if args.ack {
        c.acked_records
    } else {
        c.sent_records
    };
    if done < records && errors.is_empty() {
        errors.push(format!(
            "only {done} of {records} records were {}",
            if args.ack { "acknowledged" } else { "sent" }
        ));
    }
    if records == 0 && errors.is_empty() {
        errors.push("no record was sent".into());
    }
    let peak_per_sec = timeline
        .iter()
        .map(|t| {
            if args.ack {
                t.acked_per_sec
            } else {
                t.sent_per_sec
            }
        })
        .fold(0.0, f64::max)
        // A run shorter than a second has no timeline.
        .max(if timeline.is_empty() {
            done as f64 / secs
        } else {
            0.0
        });
    let saturation = saturation(&timeline, args.ack);
    Ok(Summary {
        ok: errors.is_empty() && done == records,
        run_id,
        tag,
        target: args.target,
        records,
        records_requested: args.records,
        sent: c.sent_records,
        acked: args.ack.then_some(c.acked_records),
        bytes: c.bytes,
        seconds: secs,
        records_per_sec: done as f64 / secs,
        mb_per_sec: c.bytes as f64 / secs / 1e6,
        ack_latency_ms: latencies.summary(),
        resends: c.resends,
        reconnects: shared.counters.reconnects.load(Relaxed),
        connections: args.connections,
        batch: args.batch,
        gzip: args.gzip,
        ack: args.ack,
        shape: args.shape,
        tls: shared.connector.tls(),
        handshake: shared.connector.authenticates(),
        schedule: schedule.map(|s| describe_schedule(&s)),
        peak_per_sec,
        saturation,
        expected: BTreeMap::from([("-".to_string(), records)]),
        timeline: if args.no_timeline {
            Vec::new()
        } else {
            timeline
        },
        errors,
    })
}

/// A timeline longer than this (a day of seconds) keeps its last entries only.
const MAX_TIMELINE: usize = 86_400;

fn describe_schedule(s: &Schedule) -> String {
    match *s {
        Schedule::Steady(r) => format!("rate {}/s", human(r)),
        Schedule::Ramp { from, to, over } => format!(
            "ramp {}/s -> {}/s over {}",
            human(from),
            human(to),
            humantime::format_duration(over)
        ),
    }
}

/// The live view: an `indicatif` bar on a terminal, one plain line per second otherwise.
#[derive(Debug, Clone)]
enum Progress {
    Off,
    Lines,
    Bar {
        bar: indicatif::ProgressBar,
        /// The bar counts records (else milliseconds of a timed run).
        by_records: bool,
    },
}

impl Progress {
    fn new(args: &ForwardArgs, duration: Option<Duration>, enabled: bool) -> Self {
        if !enabled {
            return Self::Off;
        }
        if !std::io::stderr().is_terminal() {
            return Self::Lines;
        }
        let (len, by_records) = match (args.records, duration) {
            (Some(n), _) => (n, true),
            (None, Some(d)) => (u64::try_from(d.as_millis()).unwrap_or(u64::MAX), false),
            (None, None) => (0, true),
        };
        let bar = indicatif::ProgressBar::new(len);
        let template = if by_records {
            "{elapsed_precise} [{bar:30}] {human_pos}/{human_len} {msg}"
        } else {
            "{elapsed_precise} [{bar:30}] {percent:>3}% {msg}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self::Bar { bar, by_records }
    }

    fn update(&self, tick: &Tick, now: &crate::stats::Snapshot, ack: bool, elapsed: Duration) {
        match self {
            Self::Off => {}
            Self::Lines => eprintln!(
                "[{:>6.1}s] sent {}, acked {}: {}",
                elapsed.as_secs_f64(),
                now.sent_records,
                now.acked_records,
                tick.describe(ack)
            ),
            Self::Bar { bar, by_records } => {
                let pos = if !*by_records {
                    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
                } else if ack {
                    now.acked_records
                } else {
                    now.sent_records
                };
                bar.set_position(pos);
                bar.set_message(tick.describe(ack));
            }
        }
    }

    fn finish(&self) {
        if let Self::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

/// 32 lowercase hex characters of 16 random bytes (Fluent Bit's shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChunkId([u8; 32]);

impl ChunkId {
    fn random() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let raw: [u8; 16] = rand::random();
        let mut out = [0u8; 32];
        for (i, b) in raw.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        Self(out)
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex is ASCII")
    }
}

/// A request written (or to be written) and not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    first_seq: u64,
    records: u64,
    chunk: ChunkId,
    frame: Arc<Vec<u8>>,
    /// Must be (re)written on the current connection.
    needs_send: bool,
    /// When its last byte was written on the current connection.
    sent_at: Option<Instant>,
    written_once: bool,
}

/// The request being written now.
#[derive(Debug)]
struct Current {
    first_seq: u64,
    records: u64,
    frame: Arc<Vec<u8>>,
    pos: usize,
}

#[derive(Debug)]
enum ConnError {
    /// Broken connection, timeout: retried with `--retry-for`.
    Retryable(anyhow::Error),
    /// The server broke the protocol (unknown ack, undecodable reply): never retried.
    Fatal(anyhow::Error),
}

#[derive(Debug)]
struct Outcome {
    latencies: Latencies,
    error: Option<anyhow::Error>,
}

/// Per-connection state; survives reconnects.
#[derive(Debug)]
struct Conn {
    id: usize,
    template: BatchTemplate,
    inflight: VecDeque<InFlight>,
    current: Option<Current>,
    /// A claimed batch waiting for the pacer: `(first_seq, count, send_at)`.
    pending: Option<(u64, u64, Instant)>,
    pool: Vec<Vec<u8>>,
    gzbuf: Vec<u8>,
    ackbuf: BytesMut,
    latencies: Latencies,
    /// Start of the current run of connection errors (reset by an ack).
    outage_since: Option<Instant>,
    attempt: u32,
}

async fn connection(id: usize, sh: Arc<Shared>) -> Outcome {
    let mut conn = Conn::new(id, &sh);
    let error = loop {
        // A failed TLS or Forward handshake is a connection error like a refused connect:
        // reported, or retried with the backoff below under --retry-for.
        let result = match sh.connector.connect().await {
            Err(e) => Err(retryable(e)),
            Ok(Connected::Plain(stream)) => conn.drive(stream, &sh, false).await,
            // Without acks nothing else reads the TLS session: drain it before closing.
            Ok(Connected::Tls(stream)) => conn.drive(*stream, &sh, !sh.ack).await,
        };
        match result {
            Ok(()) => break None,
            Err(ConnError::Fatal(e)) => break Some(e),
            Err(ConnError::Retryable(e)) => {
                if sh.retry_for.is_zero() {
                    break Some(e);
                }
                let since = *conn.outage_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= sh.retry_for {
                    break Some(
                        e.context(format!("giving up after retrying for {:?}", sh.retry_for)),
                    );
                }
                sh.counters.reconnects.fetch_add(1, Relaxed);
                let backoff = Duration::from_millis(50 << conn.attempt.min(4));
                conn.attempt += 1;
                eprintln!(
                    "connection {id}: {e:#}; reconnecting in {backoff:?} ({} unacknowledged requests will be re-sent)",
                    conn.inflight.len()
                );
                tokio::time::sleep(backoff).await;
            }
        }
    };
    if error.is_some() {
        // Let the other connections stop taking new work; they still finish their window.
        sh.abort.store(true, Relaxed);
        sh.counters
            .unacked_batches
            .fetch_sub(conn.inflight.len() as u64, Relaxed);
    }
    Outcome {
        latencies: conn.latencies,
        error,
    }
}

/// Writes some of `buf` (`Some(bytes written)`), or flushes when `buf` is empty (`None`).
/// Cancel-safe like `write` and `flush`: one future, as `select!` cannot borrow the writer twice.
async fn write_or_flush<W: AsyncWrite + Unpin>(
    wr: &mut W,
    buf: &[u8],
) -> std::io::Result<Option<usize>> {
    if buf.is_empty() {
        wr.flush().await.map(|()| None)
    } else {
        wr.write(buf).await.map(Some)
    }
}

/// How long [`drain_until_closed`] waits for the server to close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads and discards until the server closes its side (or [`DRAIN_TIMEOUT`], or an error).
async fn drain_until_closed<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Writes into `frame` (cleared first) one PackedForward request holding records
/// `first..first+n`, or a CompressedPackedForward one when `gzbuf` (a reusable scratch buffer) is
/// given.
#[allow(clippy::too_many_arguments)]
fn encode_request(
    template: &mut BatchTemplate,
    tag: &str,
    first: u64,
    n: u64,
    time: EventTime,
    chunk: Option<&str>,
    gzbuf: Option<&mut Vec<u8>>,
    frame: &mut Vec<u8>,
) {
    frame.clear();
    let entries = template.fill(first, n as usize, time);
    let records = u32::try_from(n).expect("batch fits u32");
    match gzbuf {
        Some(gzbuf) => {
            let mut enc = GzEncoder::new(std::mem::take(gzbuf), flate2::Compression::fast());
            enc.write_all(entries).expect("gzip into a Vec");
            let gz = enc.finish().expect("gzip into a Vec");
            encode_compressed_packed_forward(tag, &gz, records, chunk, frame);
            *gzbuf = gz;
            gzbuf.clear();
        }
        None => encode_packed_forward(tag, entries, records, chunk, frame),
    }
}

fn retryable(e: impl Into<anyhow::Error>) -> ConnError {
    ConnError::Retryable(e.into())
}

impl Conn {
    fn new(id: usize, sh: &Shared) -> Self {
        let shape = RecordShape {
            connection: id,
            ..sh.shape.clone()
        };
        let capacity = sh.batch.min(sh.total).max(1) as usize;
        Self {
            id,
            template: BatchTemplate::new(&shape, capacity, &mut rand::rng()),
            inflight: VecDeque::new(),
            current: None,
            pending: None,
            pool: Vec::new(),
            gzbuf: Vec::new(),
            ackbuf: BytesMut::with_capacity(4096),
            latencies: Latencies::default(),
            outage_since: None,
            attempt: 0,
        }
    }

    /// Sends and receives on one connection until the run is done or the connection fails.
    ///
    /// Written bytes may wait in the stream's buffer (a TLS session's) until flushed: the loop
    /// flushes whenever it has nothing more to write right away (window full, pacer waiting, run
    /// done), which costs nothing on plain TCP, whose flush is a no-op. With `drain`, after the
    /// last request the read side is read until the server closes: data the peer sent and we
    /// never read (TLS 1.3 session tickets) would otherwise turn our close into a reset, which
    /// can destroy requests the server has not read yet.
    async fn drive<S>(&mut self, stream: S, sh: &Shared, drain: bool) -> Result<(), ConnError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Everything unacknowledged goes out again, in order, with its chunk id.
        for f in &mut self.inflight {
            f.needs_send = true;
            f.sent_at = None;
        }
        self.current = None;
        self.ackbuf.clear();
        let (mut rd, mut wr) = tokio::io::split(stream);
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        // Bytes were written since the last flush.
        let mut unflushed = false;
        loop {
            self.next_write(sh);
            if self.current.is_none()
                && self.inflight.is_empty()
                && self.pending.is_none()
                && sh.exhausted()
            {
                // Shutting down flushes (and sends TLS's close_notify).
                let _ = wr.shutdown().await;
                if drain {
                    drain_until_closed(&mut rd).await;
                }
                return Ok(());
            }
            let to_write: &[u8] = self
                .current
                .as_ref()
                .map(|c| &c.frame[c.pos..])
                .unwrap_or(&[]);
            let pace_at = self
                .pending
                .map(|(_, _, at)| tokio::time::Instant::from_std(at));
            let ack_deadline = self
                .inflight
                .iter()
                .filter_map(|f| f.sent_at)
                .min()
                .map(|t| tokio::time::Instant::from_std(t + sh.ack_timeout));
            tokio::select! {
                r = rd.read_buf(&mut self.ackbuf), if sh.ack => {
                    let n = r.map_err(|e| retryable(anyhow::Error::new(e).context("reading acks")))?;
                    if n == 0 {
                        return Err(retryable(anyhow!(
                            "server closed the connection with {} unacknowledged requests",
                            self.inflight.len()
                        )));
                    }
                    self.process_acks(sh)?;
                }
                r = write_or_flush(&mut wr, to_write), if !to_write.is_empty() || unflushed => {
                    let r = r.map_err(|e| retryable(anyhow::Error::new(e).context("writing a request")))?;
                    match r {
                        None => unflushed = false,
                        Some(0) => {
                            return Err(retryable(anyhow!("connection closed while writing")));
                        }
                        Some(n) => {
                            unflushed = true;
                            sh.counters.bytes.fetch_add(n as u64, Relaxed);
                            self.advance_write(n, sh);
                        }
                    }
                }
                _ = tokio::time::sleep_until(pace_at.unwrap_or(far)), if pace_at.is_some() => {}
                _ = tokio::time::sleep_until(ack_deadline.unwrap_or(far)), if ack_deadline.is_some() => {
                    return Err(retryable(anyhow!(
                        "no ack within {:?} ({} unacknowledged requests)",
                        sh.ack_timeout,
                        self.inflight.len()
                    )));
                }
            }
        }
    }

    /// Picks what to write next: a re-send first, then a new batch if the window and the pacer
    /// allow it.
    fn next_write(&mut self, sh: &Shared) {
        if self.current.is_some() {
            return;
        }
        if let Some(f) = self.inflight.iter_mut().find(|f| f.needs_send) {
            f.needs_send = false;
            if f.written_once {
                sh.counters.resends.fetch_add(1, Relaxed);
            }
            self.current = Some(Current {
                first_seq: f.first_seq,
                records: f.records,
                frame: f.frame.clone(),
                pos: 0,
            });
            return;
        }
        if sh.ack && self.inflight.len() >= sh.window {
            return;
        }
        if self.pending.is_none() {
            if let Some((first, n)) = sh.claim() {
                let at = sh
                    .pacer
                    .as_ref()
                    .map_or_else(Instant::now, |p| p.reserve(n));
                self.pending = Some((first, n, at));
            }
        }
        match self.pending {
            Some((first, n, at)) if at <= Instant::now() => {
                self.pending = None;
                self.build(sh, first, n);
            }
            _ => {}
        }
    }

    /// Encodes the request for seqs `first..first+n` and makes it current.
    fn build(&mut self, sh: &Shared, first: u64, n: u64) {
        let mut frame = self.pool.pop().unwrap_or_default();
        let chunk = sh.ack.then(ChunkId::random);
        encode_request(
            &mut self.template,
            &sh.tag,
            first,
            n,
            EventTime::now(),
            chunk.as_ref().map(ChunkId::as_str),
            sh.gzip.then_some(&mut self.gzbuf),
            &mut frame,
        );
        let frame = Arc::new(frame);
        if let Some(chunk) = chunk {
            self.inflight.push_back(InFlight {
                first_seq: first,
                records: n,
                chunk,
                frame: frame.clone(),
                needs_send: false,
                sent_at: None,
                written_once: false,
            });
            sh.counters.unacked_batches.fetch_add(1, Relaxed);
        }
        self.current = Some(Current {
            first_seq: first,
            records: n,
            frame,
            pos: 0,
        });
    }

    fn advance_write(&mut self, n: usize, sh: &Shared) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        cur.pos += n;
        if cur.pos < cur.frame.len() {
            return;
        }
        let cur = self.current.take().expect("current request");
        if !sh.ack {
            sh.counters.sent_records.fetch_add(cur.records, Relaxed);
            self.outage_since = None;
            self.attempt = 0;
            self.recycle(cur.frame);
            return;
        }
        // Acked already (only possible if the server acks early): nothing to update.
        if let Some(f) = self
            .inflight
            .iter_mut()
            .find(|f| f.first_seq == cur.first_seq)
        {
            f.sent_at = Some(Instant::now());
            if !f.written_once {
                f.written_once = true;
                sh.counters.sent_records.fetch_add(cur.records, Relaxed);
            }
        }
    }

    fn process_acks(&mut self, sh: &Shared) -> Result<(), ConnError> {
        loop {
            let raw = match decode_ack(&mut self.ackbuf) {
                Ok(Some(raw)) => raw,
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(ConnError::Fatal(anyhow!(
                        "connection {}: undecodable reply from the server: {e}",
                        self.id
                    )))
                }
            };
            let Some(id) = chunk_id_bytes(&raw) else {
                return Err(ConnError::Fatal(anyhow!(
                    "ack value is not a string: {:02x?}",
                    &raw[..]
                )));
            };
            let Some(idx) = self.inflight.iter().position(|f| f.chunk.0 == id) else {
                let waiting: Vec<&str> = self.inflight.iter().map(|f| f.chunk.as_str()).collect();
                return Err(ConnError::Fatal(anyhow!(
                    "unexpected ack {:?}; waiting for {:?}",
                    String::from_utf8_lossy(id),
                    waiting
                )));
            };
            let f = self.inflight.remove(idx).expect("index from position");
            if let Some(t) = f.sent_at {
                let d = t.elapsed();
                self.latencies.record(d);
                sh.latencies.record(d);
            }
            if !f.written_once {
                // Acked before we saw our own write complete: count it as sent now.
                sh.counters.sent_records.fetch_add(f.records, Relaxed);
            }
            sh.counters.acked_records.fetch_add(f.records, Relaxed);
            sh.counters.unacked_batches.fetch_sub(1, Relaxed);
            self.outage_since = None;
            self.attempt = 0;
            self.recycle(f.frame);
        }
    }

    fn recycle(&mut self, frame: Arc<Vec<u8>>) {
        if let Ok(v) = Arc::try_unwrap(frame) {
            if self.pool.len() < 8 {
                self.pool.push(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn chunk_ids_are_hex_and_distinct() {
        let a = ChunkId::random();
        let b = ChunkId::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
    }

    /// Decodes `frame` with the project's own Decoder and checks every record.
    fn check_frame(frame: &[u8], tag: &str, first: u64, n: u64, chunk: Option<&str>) {
        use logferry_common::forward::{Decoder, Entries, Request};
        let mut buf = BytesMut::from(frame);
        let req = Decoder::default()
            .decode(&mut buf)
            .expect("valid request")
            .expect("complete request");
        assert!(buf.is_empty(), "exactly one request");
        let Request::Events(batch) = req else {
            panic!("not events: {req:?}");
        };
        assert_eq!(batch.tag, tag);
        assert_eq!(u64::from(batch.records), n);
        assert_eq!(batch.skipped, 0);
        assert_eq!(batch.wire_bytes, frame.len());
        let got_chunk = batch
            .chunk
            .as_ref()
            .map(|c| chunk_id_bytes(c).unwrap().to_vec());
        assert_eq!(got_chunk.as_deref(), chunk.map(str::as_bytes));
        let mut count = 0;
        for (i, e) in Entries::new(&batch.entries).enumerate() {
            let e = e.expect("valid entry");
            assert_eq!(
                e.time,
                EventTime {
                    secs: 1_609_459_200,
                    nanos: 123_456_789
                }
            );
            let rec = rmpv::decode::read_value(&mut &e.record[..]).unwrap();
            let get = |k: &str| {
                rec.as_map()
                    .unwrap()
                    .iter()
                    .find(|(key, _)| key.as_str() == Some(k))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| panic!("no {k} in {rec}"))
            };
            assert_eq!(get("seq").as_u64(), Some(first + i as u64));
            assert_eq!(get("run_id").as_str(), Some("run-7"));
            assert_eq!(get("stream").as_str(), Some("stdout"));
            assert_eq!(get("log").as_str().unwrap().len(), 50);
            let k8s = get("kubernetes");
            assert_eq!(k8s.as_map().unwrap().len(), 4);
            count += 1;
        }
        assert_eq!(count, n);
    }

    #[test]
    fn generated_requests_decode_with_the_project_decoder() {
        let shape = RecordShape {
            run_id: "run-7".into(),
            log_bytes: 50,
            connection: 3,
            kind: Shape::K8s,
        };
        let mut template = BatchTemplate::new(&shape, 100, &mut rand::rng());
        let time = EventTime {
            secs: 1_609_459_200,
            nanos: 123_456_789,
        };
        let mut frame = Vec::new();
        let mut gzbuf = Vec::new();
        let chunk = ChunkId::random();
        // Full batch, acked.
        encode_request(
            &mut template,
            "loadtest.run-7",
            0,
            100,
            time,
            Some(chunk.as_str()),
            None,
            &mut frame,
        );
        check_frame(&frame, "loadtest.run-7", 0, 100, Some(chunk.as_str()));
        // A short last batch, no ack; the buffer is reused.
        encode_request(
            &mut template,
            "t",
            1_000_000,
            7,
            time,
            None,
            None,
            &mut frame,
        );
        check_frame(&frame, "t", 1_000_000, 7, None);
        // gzip, twice through the same scratch buffer.
        for first in [200, 300] {
            encode_request(
                &mut template,
                "gz",
                first,
                100,
                time,
                Some(chunk.as_str()),
                Some(&mut gzbuf),
                &mut frame,
            );
            check_frame(&frame, "gz", first, 100, Some(chunk.as_str()));
        }
    }

    /// A `Shared` for `total` records in batches of `batch`, window 2, 2 s ack timeout.
    fn shared(ack: bool, batch: u64, total: u64) -> Shared {
        Shared {
            connector: Connector::plain("127.0.0.1:1", Duration::from_secs(1)),
            tag: "t".into(),
            ack,
            gzip: false,
            window: 2,
            batch,
            total,
            deadline: None,
            retry_for: Duration::ZERO,
            ack_timeout: Duration::from_secs(2),
            shape: RecordShape {
                run_id: "r".into(),
                log_bytes: 1,
                connection: 0,
                kind: Shape::K8s,
            },
            next_seq: AtomicU64::new(0),
            pacer: None,
            abort: AtomicBool::new(false),
            counters: Counters::default(),
            latencies: IntervalLatencies::default(),
        }
    }

    #[test]
    fn claims_cover_every_seq_once() {
        let sh = shared(false, 7, 20);
        let mut claims = Vec::new();
        while let Some(c) = sh.claim() {
            claims.push(c);
        }
        assert_eq!(claims, vec![(0, 7), (7, 7), (14, 6)]);
        assert_eq!(sh.claimed(), 20);
        assert!(sh.exhausted());
    }

    /// Like a TLS session: written bytes stay here until flushed (or shut down).
    struct HoldsUntilFlushed {
        inner: tokio::io::DuplexStream,
        held: Vec<u8>,
    }

    impl AsyncRead for HoldsUntilFlushed {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for HoldsUntilFlushed {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.held.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let this = &mut *self;
            while !this.held.is_empty() {
                let n = std::task::ready!(
                    std::pin::Pin::new(&mut this.inner).poll_write(cx, &this.held)
                )?;
                this.held.drain(..n);
            }
            std::pin::Pin::new(&mut this.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::ready!(self.as_mut().poll_flush(cx))?;
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// A Forward server on `io`: acks every request that asks for it, closes after the client
    /// does; returns the records received.
    async fn serve(mut io: tokio::io::DuplexStream) -> u64 {
        use logferry_common::forward::{encode_ack, Decoder, Request};
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut records = 0;
        loop {
            while let Some(req) = decoder.decode(&mut buf).expect("valid request") {
                let Request::Events(batch) = req else {
                    panic!("not events: {req:?}");
                };
                records += u64::from(batch.records);
                if let Some(chunk) = &batch.chunk {
                    let mut ack = Vec::new();
                    encode_ack(chunk, &mut ack);
                    io.write_all(&ack).await.unwrap();
                }
            }
            if io.read_buf(&mut buf).await.unwrap() == 0 {
                return records;
            }
        }
    }

    /// What a TLS session holds must go out without waiting for more writes: with acks the
    /// window fills and nothing else would be written (the run would end in an ack timeout);
    /// without, the close must flush, and with `drain` wait for the server to close.
    #[tokio::test]
    async fn drive_flushes_a_buffering_stream() {
        for ack in [true, false] {
            let sh = shared(ack, 10, 95);
            let (client, server) = tokio::io::duplex(64 * 1024);
            let server = tokio::spawn(serve(server));
            let stream = HoldsUntilFlushed {
                inner: client,
                held: Vec::new(),
            };
            let mut conn = Conn::new(0, &sh);
            let r = tokio::time::timeout(Duration::from_secs(10), conn.drive(stream, &sh, !ack))
                .await
                .expect("drive finishes");
            if let Err(ConnError::Retryable(e) | ConnError::Fatal(e)) = r {
                panic!("ack {ack}: {e:#}");
            }
            assert_eq!(server.await.unwrap(), 95, "ack {ack}");
            let c = sh.counters.snapshot();
            assert_eq!(c.sent_records, 95);
            assert_eq!(c.acked_records, if ack { 95 } else { 0 });
        }
    }

    /// The same frames, decoded by an independent implementation: the Python `msgpack` package
    /// (EventTime as ext type 0, CompressedPackedForward through Python's gzip module).
    #[test]
    fn generated_requests_decode_with_python_msgpack() {
        let Some(python) = crate::test_support::python() else {
            return;
        };
        const SCRIPT: &str = r#"
import gzip, json, struct, sys
import msgpack
def ext(code, data):
    assert code == 0 and len(data) == 8, (code, data)
    return struct.unpack(">II", data)
out = []
unp = msgpack.Unpacker(raw=False, ext_hook=ext, strict_map_key=False)
unp.feed(open(sys.argv[1], "rb").read())
for req in unp:
    tag, entries, opts = req
    assert isinstance(entries, bytes), type(entries)
    if opts.get("compressed") == "gzip":
        entries = gzip.decompress(entries)
    records = []
    inner = msgpack.Unpacker(raw=False, ext_hook=ext, strict_map_key=False)
    inner.feed(entries)
    for time, record in inner:
        if record.get("log", "").startswith("{"):
            record["log_json"] = json.loads(record["log"])
        records.append({"time": list(time), "record": record})
    out.append({"tag": tag, "opts": opts, "records": records})
print(json.dumps(out))
"#;
        let dir = tempfile::tempdir().unwrap();
        let time = EventTime {
            secs: 1_609_459_200,
            nanos: 123_456_789,
        };
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        let chunk = ChunkId::random();
        for (i, shape) in [Shape::K8s, Shape::K8sFull, Shape::AppJson]
            .into_iter()
            .enumerate()
        {
            let rs = RecordShape {
                run_id: "py-run".into(),
                log_bytes: 250,
                connection: i,
                kind: shape,
            };
            let mut template = BatchTemplate::new(&rs, 50, &mut rand::rng());
            for gzip in [false, true] {
                let first = expected.len() as u64 * 1000;
                let mut frame = Vec::new();
                let mut gzbuf = Vec::new();
                encode_request(
                    &mut template,
                    "py.tag",
                    first,
                    50,
                    time,
                    gzip.then_some(chunk.as_str()),
                    gzip.then_some(&mut gzbuf),
                    &mut frame,
                );
                stream.extend_from_slice(&frame);
                expected.push((shape, gzip, first));
            }
        }
        let path = dir.path().join("frames.bin");
        std::fs::write(&path, &stream).unwrap();
        let out = std::process::Command::new(&python)
            .arg("-c")
            .arg(SCRIPT)
            .arg(&path)
            .output()
            .expect("running python");
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let reqs = got.as_array().unwrap();
        assert_eq!(reqs.len(), expected.len());
        for (req, (shape, gzip, first)) in reqs.iter().zip(&expected) {
            assert_eq!(req["tag"], "py.tag");
            assert_eq!(req["opts"]["size"], 50);
            if *gzip {
                assert_eq!(req["opts"]["compressed"], "gzip");
                assert_eq!(req["opts"]["chunk"], chunk.as_str());
            } else {
                assert!(req["opts"].get("chunk").is_none(), "{}", req["opts"]);
            }
            let records = req["records"].as_array().unwrap();
            assert_eq!(records.len(), 50);
            for (i, r) in records.iter().enumerate() {
                assert_eq!(
                    r["time"],
                    serde_json::json!([1_609_459_200u32, 123_456_789u32])
                );
                let rec = &r["record"];
                assert_eq!(rec["seq"], first + i as u64, "{shape:?} {rec}");
                assert_eq!(rec["run_id"], "py-run");
                let k8s = rec["kubernetes"].as_object().unwrap();
                match shape {
                    Shape::K8s => {
                        assert_eq!(k8s.len(), 4);
                        assert_eq!(rec["log"].as_str().unwrap().len(), 250);
                    }
                    Shape::K8sFull => {
                        assert_eq!(k8s.len(), 10);
                        assert_eq!(rec["kubernetes"]["labels"]["app"], "checkout");
                        assert_eq!(rec["logtag"], "F");
                    }
                    Shape::AppJson => {
                        assert!(rec["log_json"]["http"]["status"].is_u64(), "{rec}");
                        assert_eq!(rec["log"].as_str().unwrap().len(), 250);
                    }
                }
            }
        }
    }
}
