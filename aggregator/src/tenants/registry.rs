//! The running tenant pipelines: what the ingest selects from, and how each pipeline file is
//! applied on its own.
//!
//! ## Apply
//! The directory is read at start, every `rescan_interval`, on a reload request, and when
//! inotify reports a change ([`super::watch`]). Each
//! file whose content changed (by hash) is applied on its own:
//! ```text
//! parse + validate against the tenant's policy (every error at once)
//!   invalid -> the last good version keeps running (state stale), or none runs (rejected)
//!   valid   -> per output: unchanged (same name, keys and buffer) -> kept as it is, its
//!                worker's parse and filters swapped in place
//!              new -> started (buffer opened and recovered, worker spawned)
//!              changed -> the old one's buffer closed and its worker stopped, the new one
//!                         started on the same directory (it delivers what the old left)
//!              gone -> buffer closed, drained for up to drain_timeout in the background
//!           -> the new version is published to the ingest in one swap
//! ```
//! A file that is gone: the pipeline stops taking records at once and drains (state
//! `draining`) for up to `drain_timeout`; what is left stays on disk for the next start.
//! Other pipelines are never touched: not rebuilt, their workers not restarted, their buffers
//! not reopened. A file written in the last [`SETTLE`] is left for the next round, so a burst
//! of edits is applied once.
//!
//! ## Invariants
//! - A tenant's pipelines see only requests whose tenant is theirs ([`super::select`]).
//! - Buffers live under `<buffer.path>/pipelines/<tenant>/<pipeline>/<output>/`; nothing here
//!   deletes a buffer directory. A pipeline whose file is invalid at start is not started and
//!   its buffered chunks stay on disk until a valid version runs.
//! - One worker per buffer directory: an output started on a directory that still drains
//!   (an output removed and added back, a pipeline deleted and written again) first ends
//!   that drain; what the drain did not deliver, the new output does.
//! - An append racing an output's replacement may find its buffer closed; that request is
//!   refused (not acked) and its sender sends it again: a duplicate, never a loss.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use logferry_common::chunk::{Buffer, BufferOptions};
use logferry_common::config::{ConfigError, ConfigErrors};
use logferry_common::telemetry;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::select::{Request, Selector};
use super::stage::{Stage, Stats, StatsView};
use super::window::Window;
use crate::config::{
    is_dns_label, OutputConfig, PipelineBufferConfig, PipelineConfig, PipelinesConfig, PolicyConfig,
};
use crate::outputs::dead_letter::Replayer;
use crate::outputs::{self, OutputHealth, OutputSpec};

/// A file changed more recently than this is read in the next round.
pub const SETTLE: Duration = Duration::from_millis(300);

/// A pipeline's name: its tenant and its own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Key {
    /// The tenant.
    pub tenant: String,
    /// The pipeline.
    pub name: String,
}

impl Key {
    /// `<root>/<tenant>/<name>/<output>`: the buffer directory of one of its outputs, `root`
    /// being `<buffer.path>/pipelines`.
    pub fn output_dir(&self, root: &Path, output: &str) -> PathBuf {
        root.join(&self.tenant).join(&self.name).join(output)
    }

    /// `<tenant>/<name>/<output>`: one of its outputs' buffer name and `output` metric label.
    pub fn output_label(&self, output: &str) -> String {
        format!("{self}/{output}")
    }
}

impl std::fmt::Display for Key {
    /// `TENANT/NAME`, as [`Key::from_str`](std::str::FromStr) reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.name)
    }
}

impl std::str::FromStr for Key {
    type Err = String;

    /// `TENANT/NAME`, both DNS labels.
    fn from_str(s: &str) -> Result<Key, String> {
        match s.split_once('/') {
            Some((tenant, name)) if is_dns_label(tenant) && is_dns_label(name) => Ok(Key {
                tenant: tenant.to_owned(),
                name: name.to_owned(),
            }),
            _ => Err(format!(
                "pipeline {s:?}: expected TENANT/NAME, both DNS labels"
            )),
        }
    }
}

/// What the ingest sees of a running pipeline.
#[derive(Debug)]
pub struct Active {
    /// Its name.
    pub key: Key,
    selector: Selector,
    /// One buffer per output.
    pub buffers: Vec<Buffer>,
    /// Its counts.
    pub stats: Arc<Stats>,
}

/// The running pipelines by tenant, swapped whole on every apply.
#[derive(Debug, Default)]
pub struct Registry {
    snapshot: RwLock<Arc<HashMap<String, Vec<Arc<Active>>>>>,
}

impl Registry {
    /// The pipelines that take `request`.
    pub fn select(&self, request: &Request<'_>) -> Vec<Arc<Active>> {
        let snapshot = Arc::clone(&self.snapshot.read().unwrap_or_else(|e| e.into_inner()));
        snapshot
            .get(&request.tenant)
            .map(|pipelines| {
                pipelines
                    .iter()
                    .filter(|p| p.selector.matches(request))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn publish(&self, running: &BTreeMap<Key, Entry>) {
        let mut map: HashMap<String, Vec<Arc<Active>>> = HashMap::new();
        for (key, entry) in running {
            if let Some(r) = &entry.running {
                if !entry.draining {
                    map.entry(key.tenant.clone())
                        .or_default()
                        .push(Arc::clone(&r.active));
                }
            }
        }
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }
}

/// One version of a file: its content hash and when it was applied or rejected.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    /// xxh3 of the file, hex.
    pub hash: String,
    /// RFC 3339.
    pub at: String,
}

/// A rejected version with its errors.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    /// Which version.
    #[serde(flatten)]
    pub version: Version,
    /// Every error, as `validate --pipeline` prints them.
    pub errors: Vec<ErrorView>,
}

/// One error of a rejected version.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorView {
    /// Key path.
    pub key: String,
    /// Line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl From<&ConfigError> for ErrorView {
    fn from(e: &ConfigError) -> Self {
        ErrorView {
            key: e.key.clone(),
            line: e.line,
            message: e.message.clone(),
        }
    }
}

/// A pipeline's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Its newest version runs.
    Active,
    /// It never ran: its first version was rejected.
    Rejected,
    /// Its last good version runs; a newer one was rejected.
    Stale,
    /// Its file is gone; it delivers what it buffered.
    Draining,
}

impl State {
    const ALL: [State; 4] = [
        State::Active,
        State::Rejected,
        State::Stale,
        State::Draining,
    ];

    fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Rejected => "rejected",
            State::Stale => "stale",
            State::Draining => "draining",
        }
    }
}

#[derive(Debug)]
struct RunningOutput {
    config: OutputConfig,
    buffer_config: PipelineBufferConfig,
    buffer: Buffer,
    health: Arc<OutputHealth>,
    stage: Arc<Stage>,
    replayer: Arc<Replayer>,
    task: JoinHandle<()>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct Running {
    config: PipelineConfig,
    outputs: BTreeMap<String, RunningOutput>,
    active: Arc<Active>,
}

#[derive(Debug)]
struct Entry {
    file: PathBuf,
    /// The content last considered (applied or rejected).
    seen: Option<u64>,
    running: Option<Running>,
    applied: Option<Version>,
    rejected: Option<Rejected>,
    draining: bool,
    stats: Arc<Stats>,
    /// Samples of `records_in` and `records_out`, taken on rescans and status requests.
    window: Window,
}

impl Entry {
    fn state(&self) -> State {
        match (&self.running, &self.rejected) {
            _ if self.draining => State::Draining,
            (Some(_), Some(_)) => State::Stale,
            (Some(_), None) => State::Active,
            (None, _) => State::Rejected,
        }
    }
}

/// What the tenant pipelines share with the rest of the aggregator.
#[derive(Debug, Clone)]
pub struct Shared {
    /// `[pipelines]`.
    pub config: PipelinesConfig,
    /// `<buffer.path>/pipelines`.
    pub buffer_root: PathBuf,
    /// The main `[buffer]`'s options; each output overrides the directory, name, limit and
    /// overflow policy.
    pub buffer_template: BufferOptions,
    /// Cancelled at the shutdown deadline.
    pub hard_stop: CancellationToken,
    /// Cancelled when shutdown begins.
    pub replay_stop: CancellationToken,
}

/// The tenant pipelines of this aggregator.
#[derive(Debug)]
pub struct Pipelines {
    shared: Shared,
    registry: Arc<Registry>,
    entries: tokio::sync::Mutex<BTreeMap<Key, Entry>>,
    policy_seen: std::sync::Mutex<Option<u64>>,
    /// Outputs draining in the background, by buffer directory: an output started on a
    /// directory first ends the drain of that directory (one worker per directory, ever).
    drains: std::sync::Mutex<HashMap<PathBuf, Drain>>,
}

/// An output draining in the background.
#[derive(Debug)]
struct Drain {
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// Its dead-letter replays, while it still runs.
    replayer: Arc<Replayer>,
}

/// A pipeline's status, as `GET /pipelines/<tenant>/<name>` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineStatus {
    /// The tenant.
    pub tenant: String,
    /// The pipeline.
    pub name: String,
    /// Its state.
    pub state: State,
    /// Its file.
    pub file: PathBuf,
    /// The version that runs.
    pub applied: Option<Version>,
    /// The newest rejected version, when it is newer than the one that runs.
    pub rejected: Option<Rejected>,
    /// Its outputs.
    pub outputs: Vec<OutputStatus>,
    /// Records routed to it since start (a refused request sent again counts again).
    pub records_in: u64,
    /// Records delivered over all outputs, since start.
    pub records_out: u64,
    /// `records_in` over the last 5 minutes (see `window_seconds`).
    pub records_in_5m: u64,
    /// `records_out` over the last 5 minutes (see `window_seconds`).
    pub records_out_5m: u64,
    /// The span `records_in_5m` and `records_out_5m` cover, in seconds: 300 up to 300 + the
    /// time between two samples (10 s, or `rescan_interval` when longer), less while the
    /// pipeline is younger than 5 minutes.
    pub window_seconds: u64,
    /// Bytes on disk under the pipeline's buffer directory while no version of it runs
    /// (rejected at start, or draining): kept, never deleted, delivered once a valid version
    /// runs.
    pub unstarted_bytes: Option<u64>,
    /// Parse errors, drops and samples.
    #[serde(flatten)]
    pub stats: StatsView,
}

/// One output of a pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct OutputStatus {
    /// Its name.
    pub name: String,
    /// Its type.
    pub r#type: &'static str,
    /// Whether it delivers: false from its first failure until a delivery succeeds.
    pub delivering: bool,
    /// For how long it has been failing.
    pub failing_seconds: Option<u64>,
    /// The latest failure, while failing.
    pub last_error: Option<String>,
    /// Bytes in its buffer.
    pub buffer_bytes: u64,
    /// Its buffer's limit.
    pub buffer_limit: u64,
}

impl Pipelines {
    /// The pipelines of `shared.config.dir`; none runs before [`Pipelines::rescan`].
    pub fn new(shared: Shared) -> Pipelines {
        Pipelines {
            shared,
            registry: Arc::new(Registry::default()),
            entries: tokio::sync::Mutex::new(BTreeMap::new()),
            policy_seen: std::sync::Mutex::new(None),
            drains: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// What the ingest selects from.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    fn policy(&self) -> (PolicyConfig, Option<u64>, Option<ConfigErrors>) {
        let Some(path) = &self.shared.config.policy else {
            return (PolicyConfig::default(), None, None);
        };
        let hash = std::fs::read(path)
            .ok()
            .map(|b| xxhash_rust::xxh3::xxh3_64(&b));
        match PolicyConfig::load(path) {
            Ok(p) => (p, hash, None),
            Err(e) => (PolicyConfig::default(), hash, Some(e)),
        }
    }

    /// Reads the directory and applies what changed (see the module doc).
    pub async fn rescan(&self) {
        let Some(dir) = self.shared.config.dir.clone() else {
            return;
        };
        let mut entries = self.entries.lock().await;
        sample(&mut entries);
        let (policy, policy_hash, policy_error) = self.policy();
        if let Some(e) = policy_error {
            // The last good policy stays (pipelines already applied keep running); nothing
            // new is applied against a policy that cannot be read.
            tracing::error!(error = %e, "the tenant policy file is invalid; no pipeline is applied until it is fixed");
            return;
        }
        {
            let mut seen = self.policy_seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen != policy_hash {
                // Every pipeline is checked against the new policy.
                for entry in entries.values_mut() {
                    entry.seen = None;
                }
                *seen = policy_hash;
            }
        }
        let files = list_files(&dir);
        let mut changed = false;
        // Gone files: stop taking records, drain in the background.
        let gone: Vec<Key> = entries
            .keys()
            .filter(|k| !files.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            changed |= self.remove(&mut entries, &key);
        }
        for (key, file) in files {
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            let fresh = meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age < SETTLE);
            if fresh {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
            let entry = entries.entry(key.clone()).or_insert_with(|| Entry {
                file: file.clone(),
                seen: None,
                running: None,
                applied: None,
                rejected: None,
                draining: false,
                stats: Arc::new(Stats::new(&key.tenant, &key.name)),
                window: Window::new(Instant::now(), records_in(&key), 0),
            });
            if entry.seen == Some(hash) && !entry.draining {
                continue;
            }
            entry.seen = Some(hash);
            entry.draining = false;
            changed = true;
            let tenant_policy = policy.tenant(&key.tenant);
            let result = PipelineConfig::parse(&text, &key.tenant, &tenant_policy, |k| {
                std::env::var(k).ok()
            });
            let version = Version {
                hash: format!("{hash:016x}"),
                at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            };
            let result = result.and_then(|config| {
                quota_check(&entries, &key, &config, &tenant_policy).map(|()| config)
            });
            let entry = entries.get_mut(&key).expect("inserted above");
            match result {
                Ok(config) => match self.apply(&key, entry, config).await {
                    Ok(()) => {
                        entry.applied = Some(version);
                        entry.rejected = None;
                        telemetry::PIPELINE_APPLIES
                            .with_label_values(&[&key.tenant, &key.name, "applied"])
                            .inc();
                        tracing::info!(tenant = %key.tenant, pipeline = %key.name, "pipeline applied");
                    }
                    Err(errors) => reject(&key, entry, version, &errors),
                },
                Err(errors) => reject(&key, entry, version, &errors),
            }
        }
        if changed {
            self.registry.publish(&entries);
        }
        for (key, entry) in entries.iter() {
            let state = entry.state();
            for s in State::ALL {
                telemetry::PIPELINE_STATE
                    .with_label_values(&[&key.tenant, &key.name, s.as_str()])
                    .set(i64::from(s == state));
            }
        }
    }

    /// Builds the outputs of `config` for `key`, reusing those that did not change.
    async fn apply(
        &self,
        key: &Key,
        entry: &mut Entry,
        config: PipelineConfig,
    ) -> Result<(), ConfigErrors> {
        let transform = Arc::new(config.transform().map_err(|problems| {
            ConfigErrors(
                problems
                    .into_iter()
                    .map(|(k, m)| ConfigError::new(k, m))
                    .collect(),
            )
        })?);
        // The sinks of new and changed outputs are built once before anything is touched:
        // one that cannot be built (a CA file that does not load, a client that cannot be
        // made) rejects this version while the last good one keeps running.
        let mut unbuildable = Vec::new();
        for (name, output) in &config.outputs {
            let unchanged = entry.running.as_ref().is_some_and(|r| {
                r.outputs
                    .get(name)
                    .is_some_and(|o| o.config == *output && o.buffer_config == config.buffer)
            });
            if unchanged {
                continue;
            }
            match outputs::Output::build(name, output).await {
                Ok(built) => built.close().await,
                Err(e) => {
                    unbuildable.push(ConfigError::new(format!("outputs.{name}"), e.to_string()))
                }
            }
        }
        if !unbuildable.is_empty() {
            return Err(ConfigErrors(unbuildable));
        }
        let mut old = entry.running.take().map(|r| r.outputs).unwrap_or_default();
        let mut outputs = BTreeMap::new();
        let mut failed = Vec::new();
        for (i, (name, output)) in config.outputs.iter().enumerate() {
            match old.remove(name) {
                Some(kept) if kept.config == *output && kept.buffer_config == config.buffer => {
                    kept.stage.set(Arc::clone(&transform));
                    outputs.insert(name.clone(), kept);
                    continue;
                }
                Some(changed) => stop_now(changed).await,
                None => {}
            }
            let stage = Arc::new(Stage::new(
                Arc::clone(&transform),
                Arc::clone(&entry.stats),
                i == 0,
            ));
            match self
                .start_output(key, name, output, &config.buffer, stage)
                .await
            {
                Ok(started) => {
                    outputs.insert(name.clone(), started);
                }
                Err(e) => failed.push(ConfigError::new(format!("outputs.{name}"), e)),
            }
        }
        // Outputs no longer in the file drain in the background.
        for (name, gone) in old {
            self.drain(key, &name, gone);
        }
        let active = Arc::new(Active {
            key: key.clone(),
            selector: Selector::new(&config.select),
            buffers: outputs.values().map(|o| o.buffer.clone()).collect(),
            stats: Arc::clone(&entry.stats),
        });
        if !failed.is_empty() {
            // Some outputs could not start although their sinks could be built (a buffer
            // directory that cannot be opened): this version does not run; the ones that did
            // start drain what they recovered, and every chunk stays on disk.
            for (name, o) in outputs {
                self.drain(key, &name, o);
            }
            return Err(ConfigErrors(failed));
        }
        entry.running = Some(Running {
            config,
            outputs,
            active,
        });
        Ok(())
    }

    async fn start_output(
        &self,
        key: &Key,
        name: &str,
        output: &OutputConfig,
        buffer: &PipelineBufferConfig,
        stage: Arc<Stage>,
    ) -> Result<RunningOutput, String> {
        let mut options = self.shared.buffer_template.clone();
        options.dir = self.output_dir(key, name);
        // A drain of this directory ends now; what it did not deliver, this output does.
        let draining = self
            .drains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&options.dir);
        if let Some(drain) = draining {
            drain.stop.cancel();
            let _ = drain.task.await;
        }
        options.name = key.output_label(name);
        options.total_limit_size = buffer.total_limit_size.bytes();
        options.overflow_action = buffer.overflow_action;
        let label = options.name.clone();
        let stop = self.shared.hard_stop.child_token();
        let prepare: Arc<dyn outputs::Prepare> = Arc::clone(&stage) as _;
        let started = outputs::start(OutputSpec {
            name: &label,
            config: output,
            buffer: options,
            prepare: Some(prepare),
            hard_stop: stop.clone(),
            replay_stop: self.shared.replay_stop.clone(),
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(RunningOutput {
            config: output.clone(),
            buffer_config: buffer.clone(),
            buffer: started.buffer,
            health: started.health,
            stage,
            replayer: started.replayer,
            task: started.task,
            stop,
        })
    }

    fn output_dir(&self, key: &Key, output: &str) -> PathBuf {
        key.output_dir(&self.shared.buffer_root, output)
    }

    /// Closes an output's buffer and lets its worker deliver what is left for up to
    /// `drain_timeout`, in the background.
    fn drain(&self, key: &Key, name: &str, output: RunningOutput) {
        let timeout = self.shared.config.drain_timeout;
        let dir = self.output_dir(key, name);
        let (tenant, pipeline, name) = (key.tenant.clone(), key.name.clone(), name.to_owned());
        let stop = output.stop.clone();
        let replayer = Arc::clone(&output.replayer);
        let task = tokio::spawn(async move {
            let _ = output.buffer.close().await;
            let mut task = output.task;
            if tokio::time::timeout(timeout, &mut task).await.is_err() {
                output.stop.cancel();
                let _ = task.await;
                let left = output.buffer.usage().bytes;
                tracing::warn!(%tenant, %pipeline, output = %name, bytes_left = left,
                    "drain timeout reached; what is left stays on disk for the next start");
            }
        });
        self.drains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                dir,
                Drain {
                    stop,
                    task,
                    replayer,
                },
            );
    }

    /// Whether an output of `key` still drains.
    fn draining(&self, key: &Key) -> bool {
        let prefix = self.shared.buffer_root.join(&key.tenant).join(&key.name);
        let mut drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        drains.retain(|_, d| !d.task.is_finished());
        drains.keys().any(|dir| dir.starts_with(&prefix))
    }

    fn remove(&self, entries: &mut BTreeMap<Key, Entry>, key: &Key) -> bool {
        let Some(entry) = entries.get_mut(key) else {
            return false;
        };
        match entry.running.take() {
            Some(running) => {
                telemetry::PIPELINE_APPLIES
                    .with_label_values(&[&key.tenant, &key.name, "deleted"])
                    .inc();
                tracing::info!(tenant = %key.tenant, pipeline = %key.name, "pipeline file removed; draining");
                for (name, output) in running.outputs {
                    self.drain(key, &name, output);
                }
                // Shown as draining until its outputs are done (see `rescan`).
                entry.draining = true;
                true
            }
            None if entry.draining && self.draining(key) => false,
            None => {
                entries.remove(key);
                false
            }
        }
    }

    /// Every pipeline's status.
    pub async fn statuses(&self) -> Vec<PipelineStatus> {
        let mut entries = self.entries.lock().await;
        sample(&mut entries);
        entries
            .iter()
            .map(|(k, e)| self.with_disk(status(k, e)))
            .collect()
    }

    /// One pipeline's status.
    pub async fn status(&self, tenant: &str, name: &str) -> Option<PipelineStatus> {
        let key = Key {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
        };
        let mut entries = self.entries.lock().await;
        sample(&mut entries);
        entries.get(&key).map(|e| self.with_disk(status(&key, e)))
    }

    /// Adds what a pipeline that does not run holds on disk.
    fn with_disk(&self, mut status: PipelineStatus) -> PipelineStatus {
        if status.outputs.is_empty() {
            let dir = self
                .shared
                .buffer_root
                .join(&status.tenant)
                .join(&status.name);
            status.unstarted_bytes = Some(dir_bytes(&dir));
        }
        status
    }

    /// The dead-letter replayer of output `output` of pipeline `tenant`/`name`, while that
    /// output runs: in the version that runs (also when a newer one was rejected), or
    /// draining (its file gone, or the output no longer in it) until its drain ends.
    pub async fn replayer(&self, tenant: &str, name: &str, output: &str) -> Option<Arc<Replayer>> {
        let key = Key {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
        };
        let running = self.entries.lock().await.get(&key).and_then(|e| {
            e.running
                .as_ref()
                .and_then(|r| r.outputs.get(output))
                .map(|o| Arc::clone(&o.replayer))
        });
        running.or_else(|| {
            let drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
            drains
                .get(&self.output_dir(&key, output))
                .filter(|d| !d.task.is_finished())
                .map(|d| Arc::clone(&d.replayer))
        })
    }

    /// The tap of a pipeline ([`Stats::tap`](super::stage::Stats::tap)).
    pub async fn tap(
        &self,
        tenant: &str,
        name: &str,
    ) -> Option<tokio::sync::broadcast::Receiver<Arc<str>>> {
        let key = Key {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
        };
        let entries = self.entries.lock().await;
        entries.get(&key).map(|e| e.stats.tap())
    }

    /// Shutdown: stops taking records, closes every buffer (sealing its open chunk) and waits
    /// until `deadline` for the workers to deliver what is left; the rest stays on disk.
    pub async fn shutdown(&self, deadline: tokio::time::Instant) {
        let mut entries = self.entries.lock().await;
        for entry in entries.values_mut() {
            entry.draining = true;
        }
        self.registry.publish(&entries);
        let mut tasks = Vec::new();
        for entry in entries.values_mut() {
            if let Some(running) = entry.running.take() {
                for output in running.outputs.into_values() {
                    let _ = output.buffer.close().await;
                    tasks.push(output.task);
                }
            }
        }
        let _ = tokio::time::timeout_at(deadline, async {
            for task in tasks {
                let _ = task.await;
            }
        })
        .await;
    }
}

/// Stops an output at once (its buffer closed, its worker cancelled); its undelivered chunks
/// stay in its directory for the output that replaces it.
async fn stop_now(output: RunningOutput) {
    let _ = output.buffer.close().await;
    output.stop.cancel();
    let _ = output.task.await;
}

fn reject(key: &Key, entry: &mut Entry, version: Version, errors: &ConfigErrors) {
    telemetry::PIPELINE_APPLIES
        .with_label_values(&[&key.tenant, &key.name, "rejected"])
        .inc();
    tracing::warn!(tenant = %key.tenant, pipeline = %key.name, errors = %errors,
        running = entry.running.is_some(), "pipeline version rejected");
    entry.rejected = Some(Rejected {
        version,
        errors: errors.0.iter().map(ErrorView::from).collect(),
    });
}

/// The tenant's pipeline count and buffer bytes with `config` in place of `key`'s running
/// version.
fn quota_check(
    entries: &BTreeMap<Key, Entry>,
    key: &Key,
    config: &PipelineConfig,
    policy: &crate::config::TenantPolicy,
) -> Result<(), ConfigErrors> {
    let others = entries
        .iter()
        .filter(|(k, e)| k.tenant == key.tenant && *k != key && e.running.is_some());
    let (count, bytes) = others.fold((1usize, config.buffer_bytes()), |(n, b), (_, e)| {
        let running = e.running.as_ref().map_or(0, |r| r.config.buffer_bytes());
        (n + 1, b + running)
    });
    let mut errors = Vec::new();
    if count > policy.max_pipelines {
        errors.push(ConfigError::new(
            "",
            format!(
                "tenant {:?} would have {count} pipelines; its policy allows {}",
                key.tenant, policy.max_pipelines
            ),
        ));
    }
    if bytes > policy.buffer_max.bytes() {
        errors.push(ConfigError::new(
            "buffer.total_limit_size",
            format!(
                "tenant {:?}'s pipelines would hold {bytes} bytes of buffer; its policy allows {}",
                key.tenant, policy.buffer_max
            ),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

fn status(key: &Key, entry: &Entry) -> PipelineStatus {
    let outputs: Vec<OutputStatus> = entry
        .running
        .as_ref()
        .map(|r| {
            r.outputs
                .iter()
                .map(|(name, o)| {
                    let usage = o.buffer.usage();
                    let failing = o.health.failing_for();
                    OutputStatus {
                        name: name.clone(),
                        r#type: o.config.type_name(),
                        delivering: failing.is_none(),
                        failing_seconds: failing.map(|d| d.as_secs()),
                        last_error: o.health.last_error(),
                        buffer_bytes: usage.bytes,
                        buffer_limit: usage.limit,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let (records_in, records_out) = (records_in(key), records_out(key, entry));
    let last_5m = entry.window.over(Instant::now(), records_in, records_out);
    PipelineStatus {
        tenant: key.tenant.clone(),
        name: key.name.clone(),
        state: entry.state(),
        file: entry.file.clone(),
        applied: entry.applied.clone(),
        rejected: entry.rejected.clone(),
        outputs,
        records_in,
        records_out,
        records_in_5m: last_5m.records_in,
        records_out_5m: last_5m.records_out,
        window_seconds: last_5m.seconds,
        unstarted_bytes: None,
        stats: entry.stats.view(),
    }
}

/// Records routed to `key` since start.
fn records_in(key: &Key) -> u64 {
    telemetry::PIPELINE_RECORDS_IN
        .with_label_values(&[&key.tenant, &key.name])
        .get()
}

/// Records delivered by the outputs of `key`'s running version since start.
fn records_out(key: &Key, entry: &Entry) -> u64 {
    entry.running.as_ref().map_or(0, |r| {
        r.outputs
            .keys()
            .map(|name| {
                telemetry::OUTPUT_RECORDS
                    .with_label_values(&[&key.output_label(name)])
                    .get()
            })
            .sum()
    })
}

/// Samples every pipeline's counters into its window (when its last sample is old enough).
fn sample(entries: &mut BTreeMap<Key, Entry>) {
    let now = Instant::now();
    for (key, entry) in entries.iter_mut() {
        let (i, o) = (records_in(key), records_out(key, entry));
        entry.window.sample(now, i, o);
    }
}

/// Bytes of the files under `dir` (0 when it does not exist).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(items) = std::fs::read_dir(dir) else {
        return 0;
    };
    items
        .flatten()
        .map(|item| match item.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&item.path()),
            Ok(_) => item.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// `<dir>/<tenant>/<name>.toml` for every tenant and name that are DNS labels.
fn list_files(dir: &Path) -> BTreeMap<Key, PathBuf> {
    let mut files = BTreeMap::new();
    let Ok(tenants) = std::fs::read_dir(dir) else {
        return files;
    };
    for tenant in tenants.flatten() {
        let Some(tenant_name) = tenant.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_dns_label(&tenant_name) {
            continue;
        }
        let Ok(pipelines) = std::fs::read_dir(tenant.path()) else {
            continue;
        };
        for file in pipelines.flatten() {
            let path = file.path();
            let name = path
                .extension()
                .filter(|e| *e == "toml")
                .and_then(|_| path.file_stem())
                .and_then(|s| s.to_str());
            if let Some(name) = name.filter(|n| is_dns_label(n)) {
                files.insert(
                    Key {
                        tenant: tenant_name.clone(),
                        name: name.to_owned(),
                    },
                    path.clone(),
                );
            }
        }
    }
    files
}
