//! `[server]` or `[[server]]`: the Forward listeners, each with its own address, TLS,
//! authentication and limits.
//!
//! One aggregator often serves two audiences: in-cluster forwarders on a plain port, and
//! senders outside the cluster (VMs, other clusters, laptops behind a LoadBalancer) on a port
//! with TLS and the shared-key handshake. So `server` is either one table (the common case, and
//! every config written before listeners could be several) or an array of tables:
//!
//! ```toml
//! [[server]]
//! name = "in-cluster"
//! listen = "0.0.0.0:24224"
//!
//! [[server]]
//! name = "external"
//! listen = "0.0.0.0:24284"
//! max_connections_per_source = 32
//! tls = { cert = "/tls/tls.crt", key = "/tls/tls.key" }
//! [server.auth]                      # belongs to the last [[server]]
//! shared_key = "${FORWARD_SHARED_KEY}"
//! ```
//!
//! Secrets ([`Secret`]) never appear in `Debug` output, so a config can be logged.
//!
//! Validation reads no certificate, key or CA file: deploy configs are checked where the
//! Secrets are not mounted, and a missing file fails the start or the reload, naming it. The
//! one exception is `tls.client_crl`: a CRL file that exists is parsed, so a file that is not a
//! usable CRL is reported under its key (`server[i].tls.client_crl[j]`) before it can lock out
//! every client; one that does not exist is left to the start, like the others.

use std::fmt;
use std::net::IpAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::time::Duration;

use logferry_common::config::{duration, ByteSize, Secret};
use logferry_common::forward::session::IpNet;
use logferry_common::tls::{self, TlsError, TlsVersion};
use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::{defaults, parse_addr, ConfigError};

/// Every Forward listener: `[server]` (one) or `[[server]]` (several).
#[derive(Debug, Clone, PartialEq)]
pub struct Listeners {
    items: Vec<ServerConfig>,
    /// Written as `[[server]]`: key paths are `server[i].…`.
    array: bool,
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            items: vec![ServerConfig::default()],
            array: false,
        }
    }
}

impl Deref for Listeners {
    type Target = [ServerConfig];

    fn deref(&self) -> &[ServerConfig] {
        &self.items
    }
}

impl<'de> Deserialize<'de> for Listeners {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than `#[serde(untagged)]`, so errors inside a table (unknown keys,
        // wrong types) keep their precise message instead of "did not match any variant".
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Listeners;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a [server] table or [[server]] tables")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Listeners, A::Error> {
                let one = ServerConfig::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Listeners {
                    items: vec![one],
                    array: false,
                })
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Listeners, A::Error> {
                let items =
                    Vec::<ServerConfig>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Listeners { items, array: true })
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Listeners {
    /// Listeners from a list (as if written as `[[server]]`).
    pub fn new(items: Vec<ServerConfig>) -> Self {
        Self { items, array: true }
    }

    /// The key path of listener `i` (`server` or `server[i]`).
    pub fn key(&self, i: usize) -> String {
        if self.array {
            format!("server[{i}]")
        } else {
            "server".into()
        }
    }

    /// The largest request any listener accepts.
    pub fn max_request_bytes(&self) -> ByteSize {
        self.items
            .iter()
            .map(|s| s.max_request_bytes)
            .max()
            .unwrap_or_else(defaults::max_request_bytes)
    }

    /// The largest decompressed request any listener accepts (sizes the buffer's frames).
    pub fn max_decompressed_bytes(&self) -> ByteSize {
        self.items
            .iter()
            .map(|s| s.max_decompressed_bytes)
            .max()
            .unwrap_or_else(defaults::max_decompressed_bytes)
    }

    /// The dedupe window: there is one index of acked chunk ids, so the largest applies.
    pub fn dedupe_window(&self) -> Duration {
        self.items
            .iter()
            .map(|s| s.dedupe_window)
            .max()
            .unwrap_or_else(defaults::dedupe_window)
    }

    /// Whether `other` differs only in what can change without a restart (TLS, auth,
    /// timeouts, the per-source limit).
    pub fn same_bindings(&self, other: &Listeners) -> bool {
        self.items.len() == other.items.len()
            && self.items.iter().zip(&other.items).all(|(a, b)| {
                a.name == b.name
                    && a.listen == b.listen
                    && a.max_connections == b.max_connections
                    && a.max_request_bytes == b.max_request_bytes
                    && a.max_decompressed_bytes == b.max_decompressed_bytes
                    && a.max_tag_bytes == b.max_tag_bytes
                    && a.dedupe_window == b.dedupe_window
            })
    }

    /// Checks every listener; problems are appended with their key paths.
    pub(super) fn validate_into(&self, errors: &mut Vec<ConfigError>) {
        if self.items.is_empty() {
            errors.push(ConfigError::new(
                "server",
                "at least one listener is required",
            ));
        }
        let mut seen_addrs = Vec::new();
        let mut seen_names = Vec::new();
        for (i, s) in self.items.iter().enumerate() {
            let key = self.key(i);
            let mut err =
                |k: &str, msg: String| errors.push(ConfigError::new(format!("{key}.{k}"), msg));
            match parse_addr(&s.listen) {
                Err(e) => err("listen", e),
                Ok(addr) if addr.port() != 0 => {
                    if seen_addrs.contains(&addr) {
                        err(
                            "listen",
                            format!("{addr} is already used by another [[server]]"),
                        );
                    }
                    seen_addrs.push(addr);
                }
                Ok(_) => {}
            }
            if let Some(name) = &s.name {
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    err(
                        "name",
                        "may only contain letters, digits, '_' and '-'".into(),
                    );
                }
                if seen_names.contains(name) {
                    err("name", format!("{name:?} is used by another [[server]]"));
                }
                seen_names.push(name.clone());
            }
            let users = s.auth.iter().flat_map(|a| a.users.iter().enumerate());
            let clients = s.auth.iter().flat_map(|a| a.clients.iter().enumerate());
            let tenants = s
                .tenant
                .iter()
                .map(|t| ("tenant".to_owned(), t))
                .chain(users.filter_map(|(j, u)| {
                    Some((format!("auth.users[{j}].tenant"), u.tenant.as_ref()?))
                }))
                .chain(clients.filter_map(|(j, c)| {
                    Some((format!("auth.clients[{j}].tenant"), c.tenant.as_ref()?))
                }));
            for (k, tenant) in tenants {
                if !super::is_dns_label(tenant) {
                    err(
                        &k,
                        format!("{tenant:?} is not a tenant name (a DNS label: [a-z0-9-])"),
                    );
                }
            }
            if s.max_connections == 0 {
                err("max_connections", "must be at least 1".into());
            }
            if s.max_connections_per_source > s.max_connections {
                err(
                    "max_connections_per_source",
                    format!("must not exceed max_connections ({})", s.max_connections),
                );
            }
            if s.max_request_bytes.bytes() < 1024 {
                err("max_request_bytes", "must be at least 1KiB".into());
            }
            if s.max_decompressed_bytes < s.max_request_bytes {
                err(
                    "max_decompressed_bytes",
                    format!(
                        "must be at least max_request_bytes ({})",
                        s.max_request_bytes
                    ),
                );
            }
            if s.max_tag_bytes.bytes() < MIN_TAG_BYTES || s.max_tag_bytes > s.max_request_bytes {
                err(
                    "max_tag_bytes",
                    format!(
                        "must be at least {MIN_TAG_BYTES} bytes and at most max_request_bytes ({})",
                        s.max_request_bytes
                    ),
                );
            }
            for (k, v) in [
                ("idle_timeout", s.idle_timeout),
                ("handshake_timeout", s.handshake_timeout),
                ("read_timeout", s.read_timeout),
                ("write_timeout", s.write_timeout),
            ] {
                if v.is_zero() {
                    err(k, "must be greater than 0".into());
                }
            }
            if let Some(tls) = &s.tls {
                if tls.cert.as_os_str().is_empty() {
                    err("tls.cert", "must name a PEM certificate file".into());
                }
                if tls.key.as_os_str().is_empty() {
                    err("tls.key", "must name a PEM private key file".into());
                }
                if tls
                    .client_ca
                    .as_ref()
                    .is_some_and(|p| p.as_os_str().is_empty())
                {
                    err(
                        "tls.client_ca",
                        "must name a PEM CA file (or be left out)".into(),
                    );
                }
                if tls.client_ca.is_none() && !tls.client_crl.is_empty() {
                    err(
                        "tls.client_crl",
                        "needs tls.client_ca: CRLs revoke client certificates, which are only \
                         asked for with mutual TLS"
                            .into(),
                    );
                }
                for (j, path) in tls.client_crl.iter().enumerate() {
                    let key = format!("tls.client_crl[{j}]");
                    if path.as_os_str().is_empty() {
                        err(&key, "must name a PEM CRL file".into());
                        continue;
                    }
                    match tls::load_crls(path) {
                        Ok(_) => {}
                        Err(TlsError::Read { error, .. })
                            if error.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => err(&key, e.to_string()),
                    }
                }
            }
            if let Some(auth) = &s.auth {
                auth.validate_into(&mut err);
            }
        }
    }

    /// Warnings about listeners reachable from other hosts without protection.
    pub(super) fn warnings_into(&self, warnings: &mut Vec<String>) {
        for (i, s) in self.items.iter().enumerate() {
            let Ok(addr) = parse_addr(&s.listen) else {
                continue;
            };
            if addr.ip().is_loopback() {
                continue;
            }
            let key = self.key(i);
            let listen = &s.listen;
            let client_ca = s.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
            match (&s.tls, &s.auth) {
                (None, None) => warnings.push(format!(
                    "{key}.listen = {listen:?} accepts connections from other hosts without TLS or authentication"
                )),
                (Some(_), None) if !client_ca => warnings.push(format!(
                    "{key}.listen = {listen:?} uses TLS but any host that reaches it may send records: \
                     add [server.auth] or tls.client_ca"
                )),
                (None, Some(_)) => warnings.push(format!(
                    "{key}.listen = {listen:?} authenticates senders but without TLS: records travel in clear text"
                )),
                _ => {}
            }
        }
    }
}

/// Smallest `max_tag_bytes` accepted: Kubernetes-derived tags are ~300 bytes, so a lower limit
/// would only refuse legitimate senders.
const MIN_TAG_BYTES: u64 = 256;

/// One Forward listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// A label for logs (`[[server]]` with several listeners).
    #[serde(default)]
    pub name: Option<String>,
    /// The tenant every record received on this listener belongs to (senders outside the
    /// cluster); unset: the tenant is read from each request's tag.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Address to listen on (`host:port`; port 0 picks a free one and logs it).
    #[serde(default = "defaults::listen")]
    pub listen: String,
    /// Largest request accepted; a larger one closes the connection.
    #[serde(default = "defaults::max_request_bytes")]
    pub max_request_bytes: ByteSize,
    /// Largest decompressed size of a gzip request (zip-bomb guard).
    #[serde(default = "defaults::max_decompressed_bytes")]
    pub max_decompressed_bytes: ByteSize,
    /// Longest tag accepted; a request with a longer tag is a decode error
    /// (`code="tag_too_long"`) and closes the connection.
    #[serde(default = "listener_defaults::max_tag_bytes")]
    pub max_tag_bytes: ByteSize,
    /// Connections served at once; more are closed on accept.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Connections served at once from one source address (0: no per-source limit).
    #[serde(default)]
    pub max_connections_per_source: usize,
    /// A connection silent this long between requests is closed.
    #[serde(default = "defaults::idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// Time allowed from accept to the end of the TLS and Forward handshakes.
    #[serde(default = "listener_defaults::handshake_timeout", with = "duration")]
    pub handshake_timeout: Duration,
    /// Once a request has started arriving, the longest pause allowed between its bytes, and
    /// the grace period before `min_read_rate` applies.
    #[serde(default = "listener_defaults::read_timeout", with = "duration")]
    pub read_timeout: Duration,
    /// Slow-client protection: a request must arrive at this many bytes per second on average
    /// (after `read_timeout`), or the connection is closed. `"0"` turns the check off.
    #[serde(default = "listener_defaults::min_read_rate")]
    pub min_read_rate: ByteSize,
    /// Longest time an ack may take to be written (a peer that stops reading is dropped).
    #[serde(default = "listener_defaults::write_timeout", with = "duration")]
    pub write_timeout: Duration,
    /// How long an acked chunk id is remembered, so a re-sent chunk is acked again without
    /// being stored twice. `"0s"` turns deduplication off. (One index serves every listener:
    /// the largest value applies.)
    #[serde(default = "defaults::dedupe_window", with = "duration")]
    pub dedupe_window: Duration,
    /// TLS on this listener.
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// The Forward shared-key handshake on this listener.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            name: None,
            tenant: None,
            listen: defaults::listen(),
            max_request_bytes: defaults::max_request_bytes(),
            max_decompressed_bytes: defaults::max_decompressed_bytes(),
            max_tag_bytes: listener_defaults::max_tag_bytes(),
            max_connections: defaults::max_connections(),
            max_connections_per_source: 0,
            idle_timeout: defaults::idle_timeout(),
            handshake_timeout: listener_defaults::handshake_timeout(),
            read_timeout: listener_defaults::read_timeout(),
            min_read_rate: listener_defaults::min_read_rate(),
            write_timeout: listener_defaults::write_timeout(),
            dedupe_window: defaults::dedupe_window(),
            tls: None,
            auth: None,
        }
    }
}

/// `tls`: TLS on a listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates: when set, every client must present a certificate signed by one
    /// of them (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// PEM CRL files (`X509 CRL` blocks) of the client CAs: a client certificate listed in one
    /// is refused, and so is one whose issuer has no CRL here. Needs `client_ca`; re-read with
    /// the other files (`watch_interval`, reload).
    #[serde(default)]
    pub client_crl: Vec<PathBuf>,
    /// Lowest TLS version: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// How often the files are checked for changes and reloaded when they changed
    /// (cert-manager rotation); `"0s"`: only on SIGHUP or `POST /reload`.
    #[serde(default = "listener_defaults::watch_interval", with = "duration")]
    pub watch_interval: Duration,
}

/// `auth`: the Forward shared-key handshake (Fluentd's `<security>`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The default shared key.
    #[serde(default)]
    pub shared_key: Option<Secret>,
    /// Our hostname in PONG (default: the machine's hostname, i.e. the pod name).
    #[serde(default)]
    pub self_hostname: Option<String>,
    /// Users; when any is configured, every client must log in as one.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Per-source rules: own shared key, allowed users; with `allow_anonymous_source = false`
    /// also the only sources allowed to connect.
    #[serde(default)]
    pub clients: Vec<AuthClientConfig>,
    /// Whether sources matching no `clients` entry may authenticate with the default key.
    #[serde(default = "defaults::yes")]
    pub allow_anonymous_source: bool,
}

/// `auth.users`: one user.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// User name.
    pub username: String,
    /// Password (use `${ENV}`).
    pub password: Secret,
    /// The tenant of every record this user sends (tenant pipelines); overrides the
    /// listener's.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// `auth.clients`: one source rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthClientConfig {
    /// An IP address or a host name (resolved when the listener starts or reloads).
    #[serde(default)]
    pub host: Option<String>,
    /// A network in CIDR notation (`10.0.0.0/8`).
    #[serde(default)]
    pub network: Option<String>,
    /// This source's own shared key (default: `auth.shared_key`).
    #[serde(default)]
    pub shared_key: Option<Secret>,
    /// Users allowed from this source (default: all).
    #[serde(default)]
    pub users: Vec<String>,
    /// The tenant of every record a sender matched by this entry sends (tenant pipelines):
    /// over the listener's, under its user's (`auth.users[].tenant`).
    #[serde(default)]
    pub tenant: Option<String>,
}

impl AuthClientConfig {
    /// The `network` as a CIDR (a bare address counts as a /32 or /128).
    pub fn parse_network(&self) -> Option<Result<IpNet, String>> {
        let text = self.network.as_deref()?;
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map(|n| n.trunc())
            .map_err(|_| format!("{text:?} is not a network like \"10.0.0.0/8\" or an IP address"));
        Some(parsed)
    }
}

impl AuthConfig {
    fn validate_into(&self, err: &mut impl FnMut(&str, String)) {
        let default_key = self.shared_key.as_ref().filter(|k| !k.0.is_empty());
        if self.shared_key.as_ref().is_some_and(|k| k.0.is_empty()) {
            err("auth.shared_key", "must not be empty".into());
        }
        if default_key.is_none() {
            if self.allow_anonymous_source {
                err(
                    "auth.shared_key",
                    "is required (or set allow_anonymous_source = false and a shared_key on every auth.clients entry)".into(),
                );
            } else if let Some(i) = self.clients.iter().position(|c| c.shared_key.is_none()) {
                err(
                    &format!("auth.clients[{i}].shared_key"),
                    "is required when there is no auth.shared_key".into(),
                );
            }
        }
        if self.self_hostname.as_ref().is_some_and(String::is_empty) {
            err("auth.self_hostname", "must not be empty".into());
        }
        let mut names: Vec<&str> = Vec::new();
        for (i, u) in self.users.iter().enumerate() {
            if u.username.is_empty() {
                err(
                    &format!("auth.users[{i}].username"),
                    "must not be empty".into(),
                );
            }
            if u.password.0.is_empty() {
                err(
                    &format!("auth.users[{i}].password"),
                    "must not be empty".into(),
                );
            }
            if names.contains(&u.username.as_str()) {
                err(
                    &format!("auth.users[{i}].username"),
                    format!("{:?} is listed twice", u.username),
                );
            }
            names.push(&u.username);
        }
        for (i, c) in self.clients.iter().enumerate() {
            let key = format!("auth.clients[{i}]");
            match (&c.host, c.parse_network()) {
                (Some(_), Some(_)) | (None, None) => {
                    err(&key, "set exactly one of host and network".into());
                }
                (Some(h), None) if h.is_empty() => {
                    err(&format!("{key}.host"), "must not be empty".into())
                }
                (None, Some(Err(e))) => err(&format!("{key}.network"), e),
                _ => {}
            }
            if c.shared_key.as_ref().is_some_and(|k| k.0.is_empty()) {
                err(&format!("{key}.shared_key"), "must not be empty".into());
            }
            for u in &c.users {
                if !names.contains(&u.as_str()) {
                    err(
                        &format!("{key}.users"),
                        format!("no user {u:?} in auth.users"),
                    );
                }
            }
        }
    }
}

mod listener_defaults {
    use super::*;

    pub(super) fn max_tag_bytes() -> ByteSize {
        ByteSize(logferry_common::forward::Limits::DEFAULT_MAX_TAG_BYTES as u64)
    }

    pub(super) fn handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn read_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn min_read_rate() -> ByteSize {
        ByteSize(1024)
    }
    pub(super) fn write_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub(super) fn watch_interval() -> Duration {
        Duration::from_secs(60)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const TAIL: &str =
        "[[route]]\nmatch = \"**\"\noutputs = [\"n\"]\n[outputs.n]\ntype = \"null\"\n";

    fn parse(text: &str) -> Config {
        Config::parse_with_env(&format!("{text}\n{TAIL}"), no_env).unwrap()
    }

    #[test]
    fn one_table_or_an_array() {
        let one = parse("[server]\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!(one.server.len(), 1);
        assert_eq!(one.server[0].listen, "127.0.0.1:1");
        assert_eq!(one.server.key(0), "server");
        one.validate().unwrap();

        let many = parse(
            r#"
            [[server]]
            name = "internal"
            listen = "127.0.0.1:24224"
            [[server]]
            name = "external"
            listen = "0.0.0.0:24284"
            max_connections_per_source = 8
            [server.tls]
            cert = "/tls/tls.crt"
            key = "/tls/tls.key"
            client_ca = "/tls/ca.crt"
            min_version = "1.3"
            [server.auth]
            shared_key = "k"
            allow_anonymous_source = false
            [[server.auth.users]]
            username = "alice"
            password = "pw"
            [[server.auth.clients]]
            network = "10.0.0.0/8"
            users = ["alice"]
            [[server.auth.clients]]
            host = "vm-1.example.com"
            shared_key = "own"
            "#,
        );
        many.validate().unwrap();
        assert_eq!(many.server.len(), 2);
        assert_eq!(many.server.key(1), "server[1]");
        let ext = &many.server[1];
        assert!(ext.tls.as_ref().unwrap().client_ca.is_some());
        let auth = ext.auth.as_ref().unwrap();
        assert_eq!(auth.clients.len(), 2);
        assert!(!auth.allow_anonymous_source);
        assert!(many.server[0].tls.is_none());
        // Secrets stay out of Debug output.
        let dbg = format!("{many:?}");
        assert!(!dbg.contains("\"pw\"") && !dbg.contains("\"own\""), "{dbg}");
        assert!(many.warnings().iter().all(|w| !w.contains("server[1]")));
    }

    #[test]
    fn a_client_entry_takes_a_tenant_validated_as_a_dns_label() {
        let auth = |tenant: &str| {
            format!(
                "[server.auth]\nshared_key = \"k\"\n[[server.auth.clients]]\nnetwork = \"10.0.0.0/8\"\ntenant = {tenant:?}\n"
            )
        };
        let good = parse(&auth("shop"));
        good.validate().unwrap();
        let clients = &good.server[0].auth.as_ref().unwrap().clients;
        assert_eq!(clients[0].tenant.as_deref(), Some("shop"));
        for bad in ["Shop", "shop_1", ""] {
            let errors = parse(&auth(bad)).validate().unwrap_err().to_string();
            assert!(
                errors.contains("server.auth.clients[0].tenant")
                    && errors.contains("not a tenant name"),
                "{bad}: {errors}"
            );
        }
    }

    #[test]
    fn max_tag_bytes_per_listener_and_validated() {
        let many = parse(
            "[[server]]\nlisten = \"127.0.0.1:1\"\n[[server]]\nlisten = \"127.0.0.1:2\"\nmax_tag_bytes = 512\n",
        );
        many.validate().unwrap();
        assert_eq!(many.server[0].max_tag_bytes.bytes(), 1024);
        assert_eq!(many.server[1].max_tag_bytes.bytes(), 512);
        for bad in ["100", "\"32MiB\""] {
            let config = parse(&format!("[server]\nmax_tag_bytes = {bad}\n"));
            let errors = config.validate().unwrap_err().to_string();
            assert!(errors.contains("server.max_tag_bytes"), "{bad}: {errors}");
        }
    }

    #[test]
    fn unknown_keys_in_listener_tables_are_errors() {
        for text in [
            "[server]\nlisten_typo = 1\n",
            "[[server]]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n",
            "[server.tls]\ncert = \"a\"\nkey = \"b\"\nca = \"c\"\n",
            "[server.auth]\nshared_key = \"k\"\nsharedkey = \"k\"\n",
        ] {
            let e = Config::parse_with_env(text, no_env).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("unknown field"), "{text}");
        }
        let e = Config::parse_with_env(
            "[server.tls]\ncert = \"a\"\nkey = \"b\"\nmin_version = \"1.1\"\n",
            no_env,
        )
        .unwrap_err();
        assert!(e.to_string().contains("1.1"), "{e}");
    }

    #[test]
    fn validation_names_every_problem() {
        let config = parse(
            r#"
            [[server]]
            listen = "127.0.0.1:5000"
            name = "a b"
            max_connections = 4
            max_connections_per_source = 5
            read_timeout = "0s"
            [[server]]
            listen = "127.0.0.1:5000"
            [server.auth]
            [[server.auth.users]]
            username = "u"
            password = ""
            [[server.auth.clients]]
            network = "10.0.0.0/33"
            [[server.auth.clients]]
            host = "h"
            network = "10.0.0.0/8"
            [[server.auth.clients]]
            host = "h2"
            users = ["nobody"]
            "#,
        );
        let errors = config.validate().unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "server[0].name",
            "server[0].max_connections_per_source",
            "server[0].read_timeout",
            "server[1].listen",
            "server[1].auth.shared_key",
            "server[1].auth.users[0].password",
            "server[1].auth.clients[0].network",
            "server[1].auth.clients[1]",
            "server[1].auth.clients[2].users",
        ] {
            assert!(keys.contains(&expected), "{expected} not in {keys:?}");
        }
        // Without a default key, every client needs its own and anonymous sources must be off.
        let c = parse(
            "[server.auth]\nallow_anonymous_source = false\n[[server.auth.clients]]\nnetwork = \"10.0.0.1\"\nshared_key = \"k\"\n",
        );
        c.validate().unwrap();
    }

    #[test]
    fn client_crl_needs_client_ca_and_a_file_that_is_a_crl() {
        let dir = tempfile::tempdir().unwrap();
        let not_crl = dir.path().join("not-a-crl.pem");
        std::fs::write(
            &not_crl,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgQ1JM\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let missing = dir.path().join("missing.pem");
        let tls = |ca: &str, crls: &[&std::path::Path]| {
            let list: Vec<String> = crls
                .iter()
                .map(|p| format!("{:?}", p.display().to_string()))
                .collect();
            format!(
                "[[server]]\nlisten = \"127.0.0.1:1\"\n[[server]]\nlisten = \"127.0.0.1:2\"\n\
                 [server.tls]\ncert = \"c\"\nkey = \"k\"\n{ca}client_crl = [{}]\n",
                list.join(", ")
            )
        };
        let keys = |text: &str| -> Vec<(String, String)> {
            match parse(text).validate() {
                Ok(()) => Vec::new(),
                Err(e) => e.0.into_iter().map(|e| (e.key, e.message)).collect(),
            }
        };

        // Without client_ca.
        let errors = keys(&tls("", &[&missing]));
        assert!(
            errors
                .iter()
                .any(|(k, m)| k == "server[1].tls.client_crl" && m.contains("client_ca")),
            "{errors:?}"
        );
        // A file that is not a CRL is named under its key; a missing one is left to the start
        // (deploy configs are validated where the Secret is not mounted).
        let errors = keys(&tls("client_ca = \"ca\"\n", &[&missing, &not_crl]));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, "server[1].tls.client_crl[1]");
        assert!(
            errors[0].1.contains("not-a-crl.pem") && errors[0].1.contains("X509 CRL"),
            "{errors:?}"
        );
        assert!(keys(&tls("client_ca = \"ca\"\n", &[&missing])).is_empty());
    }

    #[test]
    fn exposed_listeners_warn() {
        let warns = |text: &str| parse(text).warnings().join("\n");
        assert!(
            warns("[server]\nlisten = \"0.0.0.0:1\"\n").contains("without TLS or authentication")
        );
        assert!(
            warns("[server]\nlisten = \"0.0.0.0:1\"\ntls = { cert = \"c\", key = \"k\" }\n")
                .contains("any host that reaches it")
        );
        assert!(
            warns("[server]\nlisten = \"0.0.0.0:1\"\n[server.auth]\nshared_key = \"k\"\n")
                .contains("clear text")
        );
        let quiet = warns(
            "[server]\nlisten = \"0.0.0.0:1\"\ntls = { cert = \"c\", key = \"k\" }\n[server.auth]\nshared_key = \"k\"\n",
        );
        assert!(!quiet.contains("server.listen"), "{quiet}");
        assert!(!warns("[server]\nlisten = \"127.0.0.1:1\"\n").contains("server.listen"));
    }
}
