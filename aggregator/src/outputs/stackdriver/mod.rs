//! `type = "stackdriver"`: Google Cloud Logging `entries.write` through the official
//! `google-cloud-logging-v2` client (REST; cargo feature `stackdriver`).
//!
//! Records are mapped by the pure [`mapping::map_record`] (see its rules and size policy),
//! batched under `max_request_bytes` and `max_entries_per_request`, and written with
//! `partialSuccess = true`. Retries are the framework's, not the client's (one retry policy,
//! visible in the output's metrics); each entry has a deterministic `insertId`, which Cloud
//! Logging uses to drop repeats, so a retried request does not duplicate.
//!
//! ## Outcomes
//! | answer | records |
//! |---|---|
//! | OK | delivered |
//! | INVALID_ARGUMENT (400) for a request of several entries | each entry is written again on its own, to find the bad ones (the good ones were written by the partial-success request; their insertIds make the repeat harmless) |
//! | INVALID_ARGUMENT for a single entry | dead letters with the API's message |
//! | anything else (auth, quota, UNAVAILABLE, timeouts, transport) | retried |
//!
//! ## Start
//! Credentials follow the application-default chain (metadata server on GKE,
//! `GOOGLE_APPLICATION_CREDENTIALS`), or a key file, or none (`credentials = "anonymous"`, for
//! local servers). Project id, cluster name and location come from the config or, when left
//! out, from the metadata server on the first delivery (retried like a delivery until known).

pub mod mapping;

use std::time::Duration;

use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_logging_type::model::LogSeverity;
use google_cloud_logging_v2::client::LoggingServiceV2;
use google_cloud_logging_v2::model::LogEntry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

use self::mapping::{map_record, Entry, Payload, Severity, Target};
use super::{Attempt, Failure, FailureKind, Outcome, OutputError, Rec, Sink};
use crate::config::StackdriverOutputConfig;

/// The default metadata server.
const METADATA: &str = "http://metadata.google.internal";

/// The Cloud Logging output.
#[derive(Debug)]
pub struct GclOutput {
    name: String,
    client: LoggingServiceV2,
    config: StackdriverOutputConfig,
    target: OnceCell<Target>,
}

impl GclOutput {
    /// Builds the client (credentials are fetched lazily, on the first request).
    pub async fn new(name: &str, c: &StackdriverOutputConfig) -> Result<GclOutput, OutputError> {
        let config_err = |m: String| OutputError::new(FailureKind::Config, m);
        // Two rustls crypto providers can be linked in (the Elasticsearch client's and Google's);
        // pick one for the process so neither client has to guess.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut builder = LoggingServiceV2::builder();
        if let Some(ep) = &c.endpoint {
            builder = builder.with_endpoint(ep.trim_end_matches('/'));
        }
        match c.credentials.as_deref() {
            None => {}
            Some("anonymous") => {
                builder = builder.with_credentials(
                    google_cloud_auth::credentials::anonymous::Builder::new().build(),
                );
            }
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| config_err(format!("credentials {path}: {e}")))?;
                let key: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| config_err(format!("credentials {path} is not JSON: {e}")))?;
                let creds = google_cloud_auth::credentials::service_account::Builder::new(key)
                    .build()
                    .map_err(|e| config_err(format!("credentials {path}: {e}")))?;
                builder = builder.with_credentials(creds);
            }
        }
        let client = builder
            .build()
            .await
            .map_err(|e| config_err(format!("cannot build the Cloud Logging client: {e}")))?;
        Ok(GclOutput {
            name: name.to_owned(),
            client,
            config: c.clone(),
            target: OnceCell::new(),
        })
    }

    /// Resolves the project and cluster (config, else the metadata server).
    async fn target(&self) -> Result<&Target, OutputError> {
        self.target
            .get_or_try_init(|| async {
                let c = &self.config;
                let md = c
                    .metadata_endpoint
                    .clone()
                    .or_else(|| std::env::var("GCE_METADATA_HOST").ok().map(|h| format!("http://{h}")))
                    .unwrap_or_else(|| METADATA.into());
                let project_id = match &c.project_id {
                    Some(p) => p.clone(),
                    None => metadata(&md, "project/project-id").await?,
                };
                let cluster_name = match &c.resource.cluster_name {
                    Some(n) => n.clone(),
                    None => metadata(&md, "instance/attributes/cluster-name").await?,
                };
                let location = match &c.resource.location {
                    Some(l) => l.clone(),
                    None => metadata(&md, "instance/attributes/cluster-location").await?,
                };
                tracing::info!(output = %self.name, %project_id, %cluster_name, %location, "Cloud Logging target");
                Ok(Target {
                    project_id,
                    location,
                    cluster_name,
                    log_name: c.log_name.clone(),
                    max_entry_bytes: c.max_entry_bytes.bytes() as usize,
                })
            })
            .await
    }

    /// Maps one record.
    fn map(&self, rec: &Rec, target: &Target) -> Result<Entry, Failure> {
        let mut json = Vec::with_capacity(rec.record.len() * 2);
        logferry_common::msgpack::write_json(&rec.record, &mut json).map_err(|e| {
            Failure::new(
                FailureKind::Unencodable,
                format!("record cannot be written as JSON: {e}"),
            )
        })?;
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&json)
            .map_err(|e| {
                Failure::new(
                    FailureKind::Unencodable,
                    format!("record is not a JSON object: {e}"),
                )
            })?;
        let insert_id = crate::record::stable_id(&self.name, rec);
        Ok(map_record(
            map,
            (i64::from(rec.time.secs), rec.time.nanos),
            insert_id,
            target,
        ))
    }

    /// Writes one batch. A whole-request failure before anything was delivered in this attempt
    /// is an `Err` (every record retries); later ones mark their records for retry.
    async fn write(
        &self,
        batch: Vec<(usize, Entry, usize)>,
        outcomes: &mut [Option<Outcome>],
    ) -> Result<u64, OutputError> {
        let entries: Vec<LogEntry> = batch.iter().map(|(_, e, _)| to_log_entry(e)).collect();
        match self.write_entries(entries).await {
            Ok(()) => {
                for (i, _, _) in &batch {
                    outcomes[*i] = Some(Outcome::Delivered);
                }
                Ok(batch.iter().map(|(_, _, s)| *s as u64).sum())
            }
            Err(WriteError::Invalid(msg)) if batch.len() == 1 => {
                outcomes[batch[0].0] =
                    Some(Outcome::Reject(Failure::new(FailureKind::Rejected, msg)));
                Ok(0)
            }
            Err(WriteError::Invalid(_)) => {
                // Find the bad entries: each on its own (insertIds make repeats harmless).
                let mut bytes = 0;
                for (i, entry, size) in batch {
                    outcomes[i] =
                        Some(match self.write_entries(vec![to_log_entry(&entry)]).await {
                            Ok(()) => {
                                bytes += size as u64;
                                Outcome::Delivered
                            }
                            Err(WriteError::Invalid(msg)) => {
                                Outcome::Reject(Failure::new(FailureKind::Rejected, msg))
                            }
                            Err(WriteError::Retry(f)) => Outcome::Retry(f),
                        });
                }
                Ok(bytes)
            }
            Err(WriteError::Retry(f)) => {
                if outcomes.iter().all(Option::is_none) {
                    return Err(OutputError::new(f.kind, f.reason));
                }
                for (i, _, _) in &batch {
                    outcomes[*i] = Some(Outcome::Retry(f.clone()));
                }
                Ok(0)
            }
        }
    }

    async fn write_entries(&self, entries: Vec<LogEntry>) -> Result<(), WriteError> {
        let request = self
            .client
            .write_log_entries()
            .set_entries(entries)
            .set_partial_success(true)
            .with_attempt_timeout(self.config.request_timeout)
            .send();
        let result = tokio::time::timeout(
            self.config.request_timeout + Duration::from_secs(5),
            request,
        )
        .await;
        let e = match result {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => {
                return Err(WriteError::Retry(Failure::new(
                    FailureKind::Timeout,
                    format!("no answer within {:?}", self.config.request_timeout),
                )))
            }
        };
        let status = e.http_status_code();
        let code = e.status().map(|s| s.code);
        if status == Some(400) || code == Some(google_cloud_gax::error::rpc::Code::InvalidArgument)
        {
            return Err(WriteError::Invalid(e.to_string()));
        }
        let kind = match status {
            Some(401 | 403) => FailureKind::Auth,
            Some(429) => FailureKind::Http429,
            Some(500..=599) => FailureKind::Http5xx,
            Some(_) => FailureKind::Http4xx,
            None if e.is_timeout() => FailureKind::Timeout,
            None if e.is_authentication() => FailureKind::Auth,
            None => FailureKind::Connection,
        };
        Err(WriteError::Retry(Failure::new(kind, e.to_string())))
    }
}

impl Sink for GclOutput {
    /// One attempt: map, batch, write.
    async fn send(&self, recs: &[Rec]) -> Result<Attempt, OutputError> {
        let target = self.target().await?.clone();
        let max_request = self.config.max_request_bytes.bytes() as usize;
        let max_entries = self.config.max_entries_per_request;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; recs.len()];
        let mut batch: Vec<(usize, Entry, usize)> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut bytes = 0u64;
        for (i, rec) in recs.iter().enumerate() {
            let entry = match self.map(rec, &target) {
                Ok(e) => e,
                Err(f) => {
                    outcomes[i] = Some(Outcome::Reject(f));
                    continue;
                }
            };
            let size = entry.size() + 1;
            if !batch.is_empty()
                && (batch_bytes + size + 64 > max_request || batch.len() >= max_entries)
            {
                bytes += self
                    .write(std::mem::take(&mut batch), &mut outcomes)
                    .await?;
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push((i, entry, size));
        }
        if !batch.is_empty() {
            bytes += self.write(batch, &mut outcomes).await?;
        }
        Ok(Attempt {
            outcomes: outcomes
                .into_iter()
                .map(|o| {
                    o.unwrap_or_else(|| {
                        Outcome::Retry(Failure::new(FailureKind::Internal, "not sent"))
                    })
                })
                .collect(),
            bytes,
        })
    }

    /// Resolves the target and writes no entries (for `validate --check-outputs`).
    async fn check(&self) -> Result<String, OutputError> {
        let t = self.target().await?;
        Ok(format!(
            "project {} cluster {} in {}",
            t.project_id, t.cluster_name, t.location
        ))
    }
}

#[derive(Debug)]
enum WriteError {
    /// INVALID_ARGUMENT: some entry is bad.
    Invalid(String),
    /// Anything else: retry.
    Retry(Failure),
}

/// The client's LogEntry for a mapped entry.
fn to_log_entry(e: &Entry) -> LogEntry {
    let resource = google_cloud_api::model::MonitoredResource::new()
        .set_type(e.resource_type)
        .set_labels(e.resource_labels.clone());
    let severity = match e.severity {
        Severity::Default => LogSeverity::Default,
        Severity::Debug => LogSeverity::Debug,
        Severity::Info => LogSeverity::Info,
        Severity::Notice => LogSeverity::Notice,
        Severity::Warning => LogSeverity::Warning,
        Severity::Error => LogSeverity::Error,
        Severity::Critical => LogSeverity::Critical,
        Severity::Alert => LogSeverity::Alert,
        Severity::Emergency => LogSeverity::Emergency,
    };
    let mut entry = LogEntry::new()
        .set_log_name(e.log_name.clone())
        .set_resource(resource)
        .set_severity(severity)
        .set_insert_id(e.insert_id.clone())
        .set_labels(e.labels.clone());
    if let Ok(ts) = google_cloud_wkt::Timestamp::new(e.timestamp.0, e.timestamp.1 as i32) {
        entry = entry.set_timestamp(ts);
    }
    match &e.payload {
        Payload::Text(t) => entry.set_text_payload(t.clone()),
        Payload::Json(m) => entry.set_json_payload(m.clone()),
    }
}

/// `GET <md>/computeMetadata/v1/<path>` with `Metadata-Flavor: Google` (plain HTTP).
async fn metadata(md: &str, path: &str) -> Result<String, OutputError> {
    let err = |m: String| OutputError::new(FailureKind::Metadata, m);
    let host = md
        .strip_prefix("http://")
        .ok_or_else(|| err(format!("metadata endpoint {md:?} is not http://")))?
        .trim_end_matches('/');
    let host_port = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(&host_port).await?;
        s.write_all(
            format!(
                "GET /computeMetadata/v1/{path} HTTP/1.1\r\nHost: {host}\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        // Read to the end of the body (Content-Length) or of the connection.
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if raw.len() > 64 * 1024 {
                break;
            }
            let text = String::from_utf8_lossy(&raw);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                });
                if len.is_some_and(|len| body.len() >= len) {
                    break;
                }
            }
        }
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| err(format!("metadata server {md}: no answer for {path}")))?
        .map_err(|e| err(format!("metadata server {md}: {e}")))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(err(format!(
            "metadata server {md}: {path}: {}",
            head.lines().next().unwrap_or("no status")
        )));
    }
    let value = body.trim().to_owned();
    if value.is_empty() {
        return Err(err(format!("metadata server {md}: {path} is empty")));
    }
    Ok(value)
}
