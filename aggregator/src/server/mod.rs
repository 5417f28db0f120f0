//! The Forward listeners: accept, limit, secure, hand each connection to [`connection::accept`].
//!
//! ## Design constraints
//! - **Several listeners** (`[[server]]`), each with its own address, limits, TLS and
//!   authentication, share one [`Pipeline`] (routes, buffers, dedupe index).
//! - **Refuse early and cheaply.** A connection over `max_connections`, over
//!   `max_connections_per_source` for its address, or from outside every allowed network
//!   (`[server.auth]` with `allow_anonymous_source = false`) is closed right after accept,
//!   before any TLS or handshake work, and counted in
//!   `logferry_forward_closed_connections_total{reason}`. The client fails fast and tries
//!   another aggregator instead of waiting in the kernel's backlog.
//! - **Live security settings.** TLS certificates, authentication and timeouts can change
//!   without a restart ([`ListenerSet::reload`], and a watch on the certificate files): a new
//!   [`ListenerSettings`] is built whole (an error leaves the old one in force) and swapped in
//!   for *new* connections; established ones keep what they negotiated.
//! - **Shutdown** stops accepting first, then lets every connection ack what it already
//!   stored; [`Server::run`] returns when the last connection is gone.
//! - **Bounded log volume.** Refusals are logged, but at most [`LOG_BURST`] lines per second
//!   per process; the metric counts every one.

pub mod connection;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use logferry_common::config::system_hostname;
use logferry_common::forward::session::{Accepted, ClientRule, ServerAuth, Source};
use logferry_common::forward::Limits;
use logferry_common::telemetry;
use logferry_common::tls::{self, tokio_rustls::TlsAcceptor, ServerTlsFiles, TlsError};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{self, ServerConfig};
use crate::ingest::Pipeline;

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// The TLS certificate, key, client CA or a CRL could not be loaded.
    #[error("listener {listener}: TLS: {source}")]
    Tls {
        /// The listener's label.
        listener: String,
        /// What failed.
        source: Box<TlsError>,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr} (listener {listener}): {source}")]
    Bind {
        /// The listener's label.
        listener: String,
        /// The address.
        addr: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// A listener's TLS: the acceptor and what it was built from.
#[derive(Clone)]
pub struct ListenerTls {
    /// Accepts TLS sessions with the current certificate.
    pub acceptor: TlsAcceptor,
    /// The files, for reloads.
    pub files: ServerTlsFiles,
    /// Digest of the files' contents when loaded.
    pub fingerprint: tls::Fingerprint,
    /// How often the files are checked for changes (zero: only on reload).
    pub watch_interval: Duration,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("files", &self.files)
            .field("watch_interval", &self.watch_interval)
            .finish_non_exhaustive()
    }
}

/// The settings of one listener that apply per connection, replaceable while running.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Decoder limits.
    pub limits: Limits,
    /// A connection silent this long between requests is closed.
    pub idle_timeout: Duration,
    /// Longest pause inside a request, and the grace before `min_read_rate` applies.
    pub read_timeout: Duration,
    /// Bytes per second a request must arrive at, on average (0: off).
    pub min_read_rate: u64,
    /// Longest time writing one ack (or PONG) may take.
    pub write_timeout: Duration,
    /// Time from accept to the end of the TLS and Forward handshakes.
    pub handshake_timeout: Duration,
    /// Connections per source address (0: unlimited).
    pub max_connections_per_source: usize,
    /// TLS, when configured.
    pub tls: Option<ListenerTls>,
    /// The shared-key handshake policy, when configured.
    pub auth: Option<Arc<ServerAuth>>,
    /// The tenant of every record received here (`tenant` of the listener).
    pub tenant: Option<Arc<str>>,
    /// The tenant of each authenticated user that has one (`auth.users[].tenant`).
    pub user_tenants: HashMap<String, Arc<str>>,
    /// The tenant of each of `auth`'s client rules, in their order (`auth.clients[].tenant`).
    pub client_tenants: Vec<Option<Arc<str>>>,
}

impl ListenerSettings {
    /// The tenant of a connection's records: its user's, else its client rule's, else the
    /// listener's. `accepted`: its Forward handshake, when the listener has `auth`.
    pub fn tenant_of(&self, accepted: Option<&Accepted>) -> Option<Arc<str>> {
        let user = accepted
            .and_then(|a| a.username.as_deref())
            .and_then(|u| self.user_tenants.get(u));
        let client = || {
            accepted
                .and_then(|a| a.client_rule)
                .and_then(|i| self.client_tenants.get(i)?.as_ref())
        };
        user.or_else(client).or(self.tenant.as_ref()).cloned()
    }
}

impl ListenerSettings {
    /// Builds the settings of `config`: loads the TLS files and resolves client host names.
    ///
    /// # Errors
    /// [`ListenerError::Tls`] when the certificate, key, CA or a CRL cannot be loaded.
    pub fn build(label: &str, config: &ServerConfig) -> Result<Self, ListenerError> {
        let tls = match &config.tls {
            None => None,
            Some(t) => {
                let files = ServerTlsFiles {
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                    client_ca: t.client_ca.clone(),
                    client_crl: t.client_crl.clone(),
                    min_version: t.min_version,
                };
                let loaded =
                    tls::load_server_config(&files).map_err(|source| ListenerError::Tls {
                        listener: label.to_owned(),
                        source: Box::new(source),
                    })?;
                Some(ListenerTls {
                    acceptor: TlsAcceptor::from(loaded.config),
                    files,
                    fingerprint: loaded.fingerprint,
                    watch_interval: t.watch_interval,
                })
            }
        };
        let (auth, client_tenants) = match &config.auth {
            Some(a) => {
                let (auth, tenants) = build_auth(label, a);
                (Some(auth), tenants)
            }
            None => (None, Vec::new()),
        };
        Ok(Self {
            limits: Limits {
                max_request_bytes: usize::try_from(config.max_request_bytes.bytes())
                    .unwrap_or(usize::MAX),
                max_decompressed_bytes: usize::try_from(config.max_decompressed_bytes.bytes())
                    .unwrap_or(usize::MAX),
                max_tag_bytes: usize::try_from(config.max_tag_bytes.bytes()).unwrap_or(usize::MAX),
            },
            idle_timeout: config.idle_timeout,
            read_timeout: config.read_timeout,
            min_read_rate: config.min_read_rate.bytes(),
            write_timeout: config.write_timeout,
            handshake_timeout: config.handshake_timeout,
            max_connections_per_source: config.max_connections_per_source,
            tls,
            auth: auth.map(Arc::new),
            tenant: config.tenant.as_deref().map(Arc::from),
            user_tenants: config
                .auth
                .iter()
                .flat_map(|a| &a.users)
                .filter_map(|u| Some((u.username.clone(), Arc::from(u.tenant.as_deref()?))))
                .collect(),
            client_tenants,
        })
    }
}

/// The policy of `[server.auth]`, and the tenant of each of its client rules (in their
/// order). Host names in `clients` are resolved now; one that does not resolve matches nobody
/// (logged).
fn build_auth(label: &str, auth: &config::AuthConfig) -> (ServerAuth, Vec<Option<Arc<str>>>) {
    let (clients, tenants) = auth
        .clients
        .iter()
        .filter_map(|c| {
            let source = if let Some(Ok(net)) = c.parse_network() {
                Source::Network(net)
            } else if let Some(host) = &c.host {
                let addrs = match host.parse::<IpAddr>() {
                    Ok(ip) => vec![ip],
                    Err(_) => match (host.as_str(), 0).to_socket_addrs() {
                        Ok(addrs) => addrs.map(|a| a.ip()).collect(),
                        Err(e) => {
                            tracing::warn!(listener = label, %host, error = %e,
                                "cannot resolve an auth.clients host; it matches no connection");
                            Vec::new()
                        }
                    },
                };
                Source::Host {
                    name: host.clone(),
                    addrs,
                }
            } else {
                return None; // validate() rejects this
            };
            let rule = ClientRule {
                source,
                shared_key: c.shared_key.as_ref().map(|k| k.expose().to_owned()),
                users: c.users.clone(),
            };
            Some((rule, c.tenant.as_deref().map(Arc::from)))
        })
        .unzip();
    let auth = ServerAuth {
        hostname: auth
            .self_hostname
            .clone()
            .unwrap_or_else(|| system_hostname("logferry-aggregator")),
        shared_key: auth.shared_key.as_ref().map(|k| k.expose().to_owned()),
        users: auth
            .users
            .iter()
            .map(|u| (u.username.clone(), u.password.expose().to_owned()))
            .collect(),
        clients,
        allow_anonymous_source: auth.allow_anonymous_source,
    };
    (auth, tenants)
}

/// Open connections per source address of one listener.
#[derive(Debug, Default)]
struct SourceCounts(Mutex<HashMap<IpAddr, usize>>);

/// Holds one connection's place in [`SourceCounts`]; released on drop.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    listener: Arc<Listener>,
    ip: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self
            .listener
            .sources
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// One listener's shared state: its label, current settings and per-source counts.
#[derive(Debug)]
pub struct Listener {
    label: String,
    settings: RwLock<Arc<ListenerSettings>>,
    sources: SourceCounts,
}

impl Listener {
    /// The label used in logs (`name`, or `forward` / `forward[i]`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The settings new connections get.
    pub fn settings(&self) -> Arc<ListenerSettings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn replace(&self, settings: ListenerSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
    }

    /// Replaces the settings with `f(current)`, atomically with respect to other updates.
    fn update(&self, f: impl FnOnce(&ListenerSettings) -> ListenerSettings) {
        let mut guard = self.settings.write().unwrap_or_else(|e| e.into_inner());
        *guard = Arc::new(f(&guard));
    }

    /// Takes a place for `ip`, or `None` when it already has `max` connections.
    fn claim(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut map = self.sources.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            listener: Arc::clone(self),
            ip,
        })
    }
}

/// Lines per second the listeners log about refused connections; the rest are only counted.
pub const LOG_BURST: u64 = 20;

/// Whether a refusal may be logged now (at most [`LOG_BURST`] per second, process-wide).
pub(crate) fn log_budget() -> bool {
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static USED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if WINDOW.swap(now, Ordering::Relaxed) != now {
        USED.store(0, Ordering::Relaxed);
    }
    USED.fetch_add(1, Ordering::Relaxed) < LOG_BURST
}

/// Counts a refused or server-closed connection.
pub(crate) fn count_closed(reason: &str) {
    telemetry::FORWARD_CLOSED_CONNECTIONS
        .with_label_values(&[reason])
        .inc();
}

/// A bound Forward listener.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    shared: Arc<Listener>,
    pipeline: Arc<Pipeline>,
    max_connections: usize,
}

impl Server {
    async fn bind(
        addr: SocketAddr,
        label: String,
        settings: ListenerSettings,
        pipeline: Arc<Pipeline>,
        max_connections: usize,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Server {
            listener,
            shared: Arc::new(Listener {
                label,
                settings: RwLock::new(Arc::new(settings)),
                sources: SourceCounts::default(),
            }),
            pipeline,
            max_connections,
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The listener's shared state (settings can be replaced through it).
    pub fn handle(&self) -> Arc<Listener> {
        Arc::clone(&self.shared)
    }

    /// Accepts connections until `shutdown` is cancelled, then waits for every connection to
    /// finish acking what it stored.
    pub async fn run(self, shutdown: CancellationToken) {
        let limit = Arc::new(Semaphore::new(self.max_connections));
        let tracker = TaskTracker::new();
        let label: Arc<str> = Arc::from(self.shared.label.as_str());
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = shutdown.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Per-connection errors (e.g. reset before accept) and fd exhaustion both
                    // land here; a short pause keeps an fd-exhausted loop from spinning.
                    tracing::warn!(listener = %label, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                count_closed("max_connections");
                if log_budget() {
                    tracing::warn!(listener = %label, %peer, max = self.max_connections,
                        "too many connections; closing the new one");
                }
                continue;
            };
            let settings = self.shared.settings();
            let slot = match settings.max_connections_per_source {
                0 => None,
                max => match self.shared.claim(peer.ip(), max) {
                    Some(slot) => Some(slot),
                    None => {
                        count_closed("max_connections_per_source");
                        if log_budget() {
                            tracing::warn!(listener = %label, %peer, max,
                                "too many connections from this address; closing the new one");
                        }
                        continue;
                    }
                },
            };
            // Every line a connection logs carries its listener and peer.
            let span = tracing::info_span!("connection", listener = %label, %peer);
            let listener = connection::Listener {
                name: Arc::clone(&label),
                settings,
                pipeline: Arc::clone(&self.pipeline),
                shutdown: shutdown.clone(),
            };
            tracker.spawn(
                async move {
                    telemetry::FORWARD_CONNECTIONS.inc();
                    connection::accept(stream, peer, listener).await;
                    telemetry::FORWARD_CONNECTIONS.dec();
                    drop(slot);
                    drop(permit);
                }
                .instrument(span),
            );
        }
        drop(self.listener);
        tracker.close();
        tracker.wait().await;
    }
}

/// Every listener of a config: bound together, reloaded together.
#[derive(Debug, Clone)]
pub struct ListenerSet {
    listeners: Vec<Arc<Listener>>,
}

/// The log label of listener `i` of `config`.
fn label_of(config: &config::Listeners, i: usize) -> String {
    match (&config[i].name, config.len()) {
        (Some(name), _) => name.clone(),
        (None, 1) => "forward".into(),
        (None, _) => format!("forward[{i}]"),
    }
}

impl ListenerSet {
    /// Loads every listener's TLS and auth settings, then binds every address. Nothing is
    /// bound if any setting fails to load.
    ///
    /// # Errors
    /// The first [`ListenerError`].
    pub async fn bind(
        config: &config::Listeners,
        pipeline: &Arc<Pipeline>,
    ) -> Result<(ListenerSet, Vec<Server>), ListenerError> {
        let mut settings = Vec::with_capacity(config.len());
        for (i, c) in config.iter().enumerate() {
            settings.push(ListenerSettings::build(&label_of(config, i), c)?);
        }
        let mut servers = Vec::with_capacity(config.len());
        for ((i, c), s) in config.iter().enumerate().zip(settings) {
            let label = label_of(config, i);
            let bind_err = |source| ListenerError::Bind {
                listener: label.clone(),
                addr: c.listen.clone(),
                source,
            };
            let addr = config::parse_addr(&c.listen)
                .map_err(|e| bind_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
            let server = Server::bind(
                addr,
                label.clone(),
                s,
                Arc::clone(pipeline),
                c.max_connections,
            )
            .await
            .map_err(bind_err)?;
            servers.push(server);
        }
        let listeners = servers.iter().map(Server::handle).collect();
        Ok((ListenerSet { listeners }, servers))
    }

    /// Applies the TLS, auth and timeout settings of `config` (whose bindings must equal the
    /// running ones, see [`config::Listeners::same_bindings`]), re-reading every certificate
    /// and key. All or nothing: if one listener fails, none changes.
    ///
    /// # Errors
    /// The first [`ListenerError`]; the running settings stay.
    pub fn reload(&self, config: &config::Listeners) -> Result<Vec<String>, ListenerError> {
        let mut built = Vec::with_capacity(self.listeners.len());
        for (listener, c) in self.listeners.iter().zip(config.iter()) {
            built.push(ListenerSettings::build(&listener.label, c)?);
        }
        let mut notes = Vec::new();
        for (listener, new) in self.listeners.iter().zip(built) {
            let old = listener.settings();
            if let Some(tls) = &new.tls {
                let changed = old
                    .tls
                    .as_ref()
                    .is_none_or(|o| o.fingerprint != tls.fingerprint);
                notes.push(format!(
                    "listener {}: TLS certificate {} ({})",
                    listener.label,
                    if changed { "replaced" } else { "unchanged" },
                    tls.files.cert.display()
                ));
            }
            listener.replace(new);
        }
        Ok(notes)
    }

    /// Checks whether any listener's TLS files (certificate, key, client CA, CRLs) changed
    /// (every `tls.watch_interval`; the shortest of all listeners paces the checks) and, if
    /// they did and load, swaps them in: cert-manager rotates the files of a Secret volume in
    /// place, a new CRL is written over the old one, and nobody has to send SIGHUP. A file that
    /// does not load yet (half written) is retried at the next check.
    /// Runs until `shutdown`.
    pub async fn watch_certificates(self, shutdown: CancellationToken) {
        // Without any watching listener, look again now and then: a reload may add one.
        const IDLE_RECHECK: Duration = Duration::from_secs(60);
        loop {
            let interval = self
                .listeners
                .iter()
                .filter_map(|l| l.settings().tls.as_ref().map(|t| t.watch_interval))
                .filter(|i| !i.is_zero())
                .min();
            tokio::select! {
                () = tokio::time::sleep(interval.unwrap_or(IDLE_RECHECK)) => {}
                () = shutdown.cancelled() => return,
            }
            for listener in &self.listeners {
                let current = listener.settings();
                let Some(tls) = current.tls.as_ref().filter(|t| !t.watch_interval.is_zero()) else {
                    continue;
                };
                let files = tls.files.clone();
                let fingerprint = tls.fingerprint;
                let loaded = tokio::task::spawn_blocking(move || match tls::fingerprint(&files) {
                    Ok(f) if f == fingerprint => Ok(None),
                    Ok(_) => tls::load_server_config(&files).map(Some),
                    Err(e) => Err(e),
                })
                .await;
                match loaded {
                    Ok(Ok(None)) | Err(_) => {}
                    Ok(Ok(Some(loaded))) => {
                        listener.update(|current| {
                            let mut new = current.clone();
                            if let Some(t) = new.tls.as_mut().filter(|t| t.files == tls.files) {
                                t.acceptor = TlsAcceptor::from(loaded.config);
                                t.fingerprint = loaded.fingerprint;
                            }
                            new
                        });
                        tracing::info!(listener = %listener.label, cert = %tls.files.cert.display(),
                            "TLS files changed (certificate, key, client CA or CRL): new connections use them");
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(listener = %listener.label, error = %e,
                            "TLS files changed but do not load; keeping the current ones");
                    }
                }
            }
        }
    }

    /// The labels of the listeners, in config order.
    pub fn labels(&self) -> Vec<String> {
        self.listeners.iter().map(|l| l.label.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(username: Option<&str>, client_rule: Option<usize>) -> Accepted {
        Accepted {
            pong: Vec::new(),
            client_hostname: "sender".into(),
            username: username.map(str::to_owned),
            client_rule,
        }
    }

    #[test]
    fn a_connections_tenant_is_its_users_then_its_client_rules_then_its_listeners() {
        let config: crate::config::Config = crate::config::Config::parse_with_env(
            r#"
            [server]
            tenant = "listener"
            auth = { shared_key = "k", users = [
                { username = "with", password = "pw", tenant = "user" },
                { username = "without", password = "pw" },
            ], clients = [
                { network = "10.0.0.0/8" },
                { network = "192.168.0.0/16", tenant = "client" },
            ] }
            "#,
            |_| None,
        )
        .unwrap();
        let settings = ListenerSettings::build("test", &config.server[0]).unwrap();
        let tenant = |a: Option<Accepted>| settings.tenant_of(a.as_ref()).map(|t| t.to_string());
        assert_eq!(
            tenant(Some(accepted(Some("with"), Some(1)))).as_deref(),
            Some("user")
        );
        assert_eq!(
            tenant(Some(accepted(Some("without"), Some(1)))).as_deref(),
            Some("client")
        );
        assert_eq!(
            tenant(Some(accepted(None, Some(1)))).as_deref(),
            Some("client")
        );
        // A rule without a tenant, or none matched: the listener's.
        assert_eq!(
            tenant(Some(accepted(Some("without"), Some(0)))).as_deref(),
            Some("listener")
        );
        assert_eq!(
            tenant(Some(accepted(None, None))).as_deref(),
            Some("listener")
        );
        assert_eq!(tenant(None).as_deref(), Some("listener"));
    }
}
