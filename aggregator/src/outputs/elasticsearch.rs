//! `type = "elasticsearch"`: `_bulk` requests with per-item outcomes.
//!
//! ## Request
//! ```text
//! POST /_bulk   Content-Type: application/x-ndjson   Content-Encoding: gzip (compression)
//! {"index":{"_index":"logs-2024.05.01","_id":"<32 hex>"}}      (or "create")
//! {"@timestamp":"2024-05-01T10:00:00.123456789Z","tag":"kube.x",...the record...}
//! ```
//! Records are batched in order up to `bulk_max_bytes` (uncompressed) and `bulk_max_records`.
//! A record whose two lines alone exceed `bulk_max_bytes` is rejected (dead letters) and never
//! blocks the queue; a bulk answered 413 halves the batch size limit for this output.
//!
//! ## `_id`
//! SHA-256 of (output name, the chunk's creation time and sequence number, frame index, entry
//! index), first 16 bytes in hex. The same record gets the same `_id` on every retry, after a
//! restart, and on `dead-letter replay`, so a retried bulk never duplicates (`index`
//! overwrites; with `create`, a 409 for an `_id` that exists means it already arrived).
//!
//! ## Outcomes
//! | answer | records |
//! |---|---|
//! | connection error, timeout, HTTP 429, 5xx, other 4xx (auth) | whole bulk retried |
//! | item 2xx | delivered |
//! | item 409 with `create` | delivered (the `_id` exists) |
//! | item 409 with `index`, 429, 5xx | retried |
//! | item other 4xx (mapping conflict, parse error, ...) | dead letters with ES's `type: reason` |

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::transport::{
    MultiNodeConnectionPool, SingleNodeConnectionPool, Transport, TransportBuilder,
};
use elasticsearch::http::{Method, Url};
use elasticsearch::Elasticsearch;
use serde::Deserialize;

use super::{Attempt, Failure, FailureKind, Outcome, OutputError, Rec, Sink};
use crate::config::{ElasticsearchOutputConfig, EsAction, HttpCompression};
use crate::record::write_json_with;
use crate::template::{finish_es_index, sanitize_es_index, Template};

/// The Elasticsearch output.
#[derive(Debug)]
pub struct EsOutput {
    name: String,
    client: Elasticsearch,
    index: Template,
    index_fallback: Option<String>,
    action: EsAction,
    generate_id: bool,
    id_key: Option<Vec<String>>,
    include_tag_key: bool,
    tag_key: String,
    time_key: String,
    /// The configured limit; `max_bytes` may be lowered from it after a 413.
    bulk_max_bytes: usize,
    max_bytes: AtomicUsize,
    bulk_max_records: usize,
    request_timeout: Duration,
    template: Option<(String, Vec<u8>, bool)>,
    template_installed: AtomicBool,
}

impl EsOutput {
    /// Builds the client (no request is sent).
    pub fn new(name: &str, c: &ElasticsearchOutputConfig) -> Result<EsOutput, OutputError> {
        let config_err = |m: String| OutputError::new(FailureKind::Config, m);
        let urls = c
            .endpoints
            .iter()
            .map(|e| Url::parse(e).map_err(|err| config_err(format!("endpoint {e:?}: {err}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder = if urls.len() == 1 {
            TransportBuilder::new(SingleNodeConnectionPool::new(urls[0].clone()))
        } else {
            TransportBuilder::new(MultiNodeConnectionPool::round_robin(urls, None))
        };
        // Cluster-internal traffic: proxy variables meant for the outside must not catch it.
        builder = builder
            .disable_proxy()
            .timeout(c.request_timeout)
            .request_body_compression(c.compression == HttpCompression::Gzip);
        if let Some(auth) = &c.auth {
            if let Some(key) = &auth.api_key {
                builder = builder.auth(Credentials::EncodedApiKey(key.expose().to_owned()));
            } else if let (Some(u), Some(p)) = (&auth.username, &auth.password) {
                builder = builder.auth(Credentials::Basic(u.clone(), p.expose().to_owned()));
            }
        }
        if c.tls.insecure_skip_verify {
            builder = builder.cert_validation(CertificateValidation::None);
        } else if let Some(ca) = &c.tls.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| config_err(format!("tls.ca {}: {e}", ca.display())))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| config_err(format!("tls.ca {}: {e}", ca.display())))?;
            builder = builder.cert_validation(CertificateValidation::Full(cert));
        }
        let transport: Transport = builder
            .build()
            .map_err(|e| config_err(format!("cannot build the HTTP client: {e}")))?;
        let template = match &c.template {
            Some(t) => {
                let body = std::fs::read(&t.file)
                    .map_err(|e| config_err(format!("template.file {}: {e}", t.file.display())))?;
                serde_json::from_slice::<serde_json::Value>(&body).map_err(|e| {
                    config_err(format!(
                        "template.file {} is not JSON: {e}",
                        t.file.display()
                    ))
                })?;
                Some((t.name.clone(), body, t.overwrite))
            }
            None => None,
        };
        Ok(EsOutput {
            name: name.to_owned(),
            client: Elasticsearch::new(transport),
            index: Template::parse(&c.index, true).map_err(|e| config_err(e.to_string()))?,
            index_fallback: c.index_fallback.clone(),
            action: c.action,
            generate_id: c.generate_id,
            id_key: c
                .id_key
                .as_ref()
                .map(|k| k.split('.').map(str::to_owned).collect()),
            include_tag_key: c.include_tag_key,
            tag_key: c.tag_key.clone(),
            time_key: c.time_key.clone(),
            bulk_max_bytes: c.bulk_max_bytes.bytes() as usize,
            max_bytes: AtomicUsize::new(c.bulk_max_bytes.bytes() as usize),
            bulk_max_records: c.bulk_max_records,
            request_timeout: c.request_timeout,
            template,
            template_installed: AtomicBool::new(false),
        })
    }

    /// Installs the index template once (retried with the delivery until it works).
    async fn install_template(&self) -> Result<(), OutputError> {
        let Some((name, body, overwrite)) = &self.template else {
            return Ok(());
        };
        if self.template_installed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let path = format!("/_index_template/{name}");
        let query: &[(&str, &str)] = if *overwrite {
            &[]
        } else {
            &[("create", "true")]
        };
        let resp = self
            .client
            .send(
                Method::Put,
                &path,
                HeaderMap::new(),
                Some(query),
                Some(body.as_slice()),
                Some(self.request_timeout),
            )
            .await
            .map_err(transport_error)?;
        let status = resp.status_code().as_u16();
        let text = resp.text().await.unwrap_or_default();
        // With create=true, an existing template answers 400 "already exists": keep it.
        if status == 200 || (!overwrite && status == 400 && text.contains("already exists")) {
            tracing::info!(output = %self.name, template = %name, "index template in place");
            self.template_installed.store(true, Ordering::Relaxed);
            return Ok(());
        }
        Err(OutputError::new(
            FailureKind::Template,
            format!("PUT {path} answered {status}: {}", snippet(&text)),
        ))
    }

    /// The `_id` of a record.
    pub fn doc_id(&self, rec: &Rec) -> String {
        doc_id(&self.name, rec)
    }

    /// Encodes one record's two bulk lines.
    fn encode(&self, rec: &Rec, out: &mut Vec<u8>) -> Result<(), Failure> {
        let index = match self
            .index
            .render(&rec.tag, rec.time, &rec.record, sanitize_es_index)
        {
            Ok(i) => finish_es_index(i),
            Err(missing) => match &self.index_fallback {
                Some(f) => f.clone(),
                None => {
                    return Err(Failure::new(
                        FailureKind::Template,
                        format!("index template: {missing} (set index_fallback)"),
                    ))
                }
            },
        };
        let start = out.len();
        out.extend_from_slice(match self.action {
            EsAction::Index => b"{\"index\":{\"_index\":",
            EsAction::Create => b"{\"create\":{\"_index\":",
        });
        logferry_common::msgpack::write_json_str(&index, out);
        let own_id = self
            .id_key
            .as_ref()
            .and_then(|path| crate::record::scalar(&rec.record, path))
            .map(|id| id.to_text());
        if let Some(id) = own_id {
            out.extend_from_slice(b",\"_id\":");
            logferry_common::msgpack::write_json_str(&id, out);
        } else if self.generate_id {
            out.extend_from_slice(b",\"_id\":\"");
            out.extend_from_slice(self.doc_id(rec).as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b"}}\n");
        let time = if self.time_key.is_empty() {
            String::new()
        } else {
            rec.time.to_rfc3339()
        };
        let mut extra: Vec<(&str, &str)> = Vec::with_capacity(2);
        if !self.time_key.is_empty() {
            extra.push((&self.time_key, &time));
        }
        if self.include_tag_key {
            extra.push((&self.tag_key, &rec.tag));
        }
        if let Err(e) = write_json_with(&rec.record, &extra, out) {
            out.truncate(start);
            return Err(Failure::new(
                FailureKind::Unencodable,
                format!("record cannot be written as JSON: {e}"),
            ));
        }
        out.push(b'\n');
        Ok(())
    }

    /// Sends one bulk request; fills in the outcomes of its records and returns the bytes
    /// delivered. A whole-request failure sets `whole_failure` (and the batch's outcomes).
    async fn send_bulk(
        &self,
        body: &[u8],
        batch: &[(usize, usize)],
        outcomes: &mut [Option<Outcome>],
        whole_failure: &mut Option<Failure>,
    ) -> u64 {
        let mut fail_all = |f: Failure, outcomes: &mut [Option<Outcome>]| {
            for (i, _) in batch {
                outcomes[*i] = Some(Outcome::Retry(f.clone()));
            }
            *whole_failure = Some(f);
            0
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        let resp = self
            .client
            .send(
                Method::Post,
                "/_bulk",
                headers,
                None::<&()>,
                Some(body),
                Some(self.request_timeout),
            )
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let e = transport_error(e);
                return fail_all(Failure::new(e.kind, e.message), outcomes);
            }
        };
        let status = resp.status_code().as_u16();
        let text = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return fail_all(
                    Failure::new(
                        FailureKind::Connection,
                        format!("reading the bulk response: {e}"),
                    ),
                    outcomes,
                )
            }
        };
        if status == 413 {
            if batch.len() == 1 {
                outcomes[batch[0].0] = Some(Outcome::Reject(Failure::new(
                    FailureKind::TooLarge,
                    format!(
                        "Elasticsearch refused a {}-byte document with 413",
                        batch[0].1
                    ),
                )));
                return 0;
            }
            let lower = (body.len() / 2).max(1024);
            self.max_bytes.fetch_min(lower, Ordering::Relaxed);
            tracing::warn!(output = %self.name, bulk_bytes = body.len(), new_limit = lower, "bulk refused with 413; lowering the batch size");
            return fail_all(
                Failure::new(
                    FailureKind::Http413,
                    format!("bulk of {} bytes refused with 413", body.len()),
                ),
                outcomes,
            );
        }
        if status != 200 {
            let kind = match status {
                429 => FailureKind::Http429,
                500..=599 => FailureKind::Http5xx,
                _ => FailureKind::Http4xx,
            };
            return fail_all(
                Failure::new(
                    kind,
                    format!(
                        "bulk answered {status}: {}",
                        snippet(&String::from_utf8_lossy(&text))
                    ),
                ),
                outcomes,
            );
        }
        let parsed: BulkResponse = match serde_json::from_slice(&text) {
            Ok(p) => p,
            Err(e) => {
                return fail_all(
                    Failure::new(
                        FailureKind::BadResponse,
                        format!("bulk response is not JSON: {e}"),
                    ),
                    outcomes,
                )
            }
        };
        if parsed.items.len() != batch.len() {
            return fail_all(
                Failure::new(
                    FailureKind::BadResponse,
                    format!(
                        "bulk response has {} items for {} documents",
                        parsed.items.len(),
                        batch.len()
                    ),
                ),
                outcomes,
            );
        }
        let mut delivered_bytes = 0u64;
        for ((i, len), item) in batch.iter().zip(parsed.items) {
            let Some(result) = item.into_values().next() else {
                outcomes[*i] = Some(Outcome::Retry(Failure::new(
                    FailureKind::BadResponse,
                    "empty bulk item",
                )));
                continue;
            };
            let outcome = self.classify(&result);
            if outcome == Outcome::Delivered {
                delivered_bytes += *len as u64;
            }
            outcomes[*i] = Some(outcome);
        }
        delivered_bytes
    }

    fn classify(&self, item: &BulkItem) -> Outcome {
        let describe = || match &item.error {
            Some(e) => {
                let mut s = format!(
                    "{} {}: {}",
                    item.status,
                    e["type"].as_str().unwrap_or("error"),
                    e["reason"].as_str().unwrap_or("")
                );
                if let Some(c) = e.get("caused_by") {
                    s.push_str(&format!(
                        " (caused by {}: {})",
                        c["type"].as_str().unwrap_or("error"),
                        c["reason"].as_str().unwrap_or("")
                    ));
                }
                s
            }
            None => format!("status {}", item.status),
        };
        match item.status {
            200..=299 => Outcome::Delivered,
            409 if self.action == EsAction::Create => Outcome::Delivered,
            409 => Outcome::Retry(Failure::new(FailureKind::VersionConflict, describe())),
            429 => Outcome::Retry(Failure::new(FailureKind::Item429, describe())),
            500..=599 => Outcome::Retry(Failure::new(FailureKind::Item5xx, describe())),
            _ => Outcome::Reject(Failure::new(FailureKind::Rejected, describe())),
        }
    }
}

impl Sink for EsOutput {
    /// One attempt: every record batched into bulk requests, each item classified.
    async fn send(&self, recs: &[Rec]) -> Result<Attempt, OutputError> {
        self.install_template().await?;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; recs.len()];
        let mut bytes = 0u64;
        let max_bytes = self.max_bytes.load(Ordering::Relaxed).max(1024);
        let mut body = Vec::with_capacity(max_bytes.min(16 << 20));
        // (record index, line bytes) of the records in `body`.
        let mut batch: Vec<(usize, usize)> = Vec::new();
        let mut line = Vec::new();
        let mut whole_failure: Option<Failure> = None;
        for (i, rec) in recs.iter().enumerate() {
            if whole_failure.is_some() {
                break;
            }
            line.clear();
            if let Err(f) = self.encode(rec, &mut line) {
                outcomes[i] = Some(Outcome::Reject(f));
                continue;
            }
            if line.len() > self.bulk_max_bytes {
                outcomes[i] = Some(Outcome::Reject(Failure::new(
                    FailureKind::TooLarge,
                    format!(
                        "document of {} bytes is larger than bulk_max_bytes ({})",
                        line.len(),
                        self.bulk_max_bytes
                    ),
                )));
                continue;
            }
            if !batch.is_empty()
                && (body.len() + line.len() > max_bytes || batch.len() >= self.bulk_max_records)
            {
                bytes += self
                    .send_bulk(&body, &batch, &mut outcomes, &mut whole_failure)
                    .await;
                body.clear();
                batch.clear();
                if whole_failure.is_some() {
                    break;
                }
            }
            body.extend_from_slice(&line);
            batch.push((i, line.len()));
        }
        if !batch.is_empty() && whole_failure.is_none() {
            bytes += self
                .send_bulk(&body, &batch, &mut outcomes, &mut whole_failure)
                .await;
        }
        // Nothing got through: the attempt failed as a whole. Otherwise the records after a
        // failed request (not sent) retry with it.
        if let Some(f) = &whole_failure {
            if outcomes
                .iter()
                .all(|o| o.is_none() || matches!(o, Some(Outcome::Retry(_))))
            {
                return Err(OutputError::new(f.kind, f.reason.clone()));
            }
        }
        let fallback =
            whole_failure.unwrap_or_else(|| Failure::new(FailureKind::Internal, "record not sent"));
        Ok(Attempt {
            outcomes: outcomes
                .into_iter()
                .map(|o| o.unwrap_or_else(|| Outcome::Retry(fallback.clone())))
                .collect(),
            bytes,
        })
    }

    /// `GET /`: the cluster's name and version.
    async fn check(&self) -> Result<String, OutputError> {
        let resp = self
            .client
            .send(
                Method::Get,
                "/",
                HeaderMap::new(),
                None::<&()>,
                None::<&[u8]>,
                Some(self.request_timeout),
            )
            .await
            .map_err(transport_error)?;
        let status = resp.status_code().as_u16();
        let body = resp.text().await.unwrap_or_default();
        if status != 200 {
            return Err(OutputError::new(
                FailureKind::Http,
                format!("GET / answered {status}: {}", snippet(&body)),
            ));
        }
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        Ok(format!(
            "cluster {} version {}",
            v["cluster_name"].as_str().unwrap_or("?"),
            v["version"]["number"].as_str().unwrap_or("?")
        ))
    }
}

/// The deterministic `_id` of a record written by output `output`.
pub fn doc_id(output: &str, rec: &Rec) -> String {
    crate::record::stable_id(output, rec)
}

#[derive(Debug, Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(Debug, Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

fn transport_error(e: elasticsearch::Error) -> OutputError {
    if e.is_timeout() {
        OutputError::new(FailureKind::Timeout, e.to_string())
    } else {
        OutputError::new(FailureKind::Connection, e.to_string())
    }
}

fn snippet(s: &str) -> String {
    let mut s = s.trim().to_owned();
    if s.len() > 512 {
        let mut cut = 512;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Origin;
    use bytes::Bytes;
    use logferry_common::forward::EventTime;
    use std::sync::Arc;

    fn config(extra: &str) -> ElasticsearchOutputConfig {
        let text = format!(
            "[outputs.es]\ntype = \"elasticsearch\"\nendpoints = [\"http://127.0.0.1:1\"]\n{extra}\n[[route]]\nmatch = \"**\"\noutputs = [\"es\"]\n"
        );
        let c = crate::config::Config::parse_with_env(&text, |_| None).unwrap();
        c.validate().unwrap();
        match &c.outputs["es"] {
            crate::config::OutputConfig::Elasticsearch(c) => c.clone(),
            _ => unreachable!(),
        }
    }

    fn rec(index: u32, v: serde_json::Value) -> Rec {
        Rec {
            origin: Origin {
                seq: 3,
                created_ns: 1,
            },
            frame: 0,
            index,
            tag: Arc::from("kube.app"),
            time: EventTime::new(1_714_557_600, 123_456_789), // 2024-05-01T10:00:00
            record: Bytes::from(rmp_serde::to_vec_named(&v).unwrap()),
        }
    }

    #[test]
    fn bulk_lines() {
        let out = EsOutput::new(
            "es",
            &config(
                "index = \"logs-${kubernetes.namespace_name}-%Y.%m.%d\"\ninclude_tag_key = true",
            ),
        )
        .unwrap();
        let r = rec(
            5,
            serde_json::json!({"log": "hi", "kubernetes": {"namespace_name": "Prod"}}),
        );
        let mut line = Vec::new();
        out.encode(&r, &mut line).unwrap();
        let text = String::from_utf8(line).unwrap();
        let mut lines = text.lines();
        let action: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(action["index"]["_index"], "logs-prod-2024.05.01");
        assert_eq!(action["index"]["_id"], out.doc_id(&r));
        let doc: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(doc["@timestamp"], "2024-05-01T10:00:00.123456789Z");
        assert_eq!(doc["tag"], "kube.app");
        assert_eq!(doc["log"], "hi");
        // Missing field without a fallback: rejected with a reason.
        let r = rec(6, serde_json::json!({"log": "x"}));
        let err = out.encode(&r, &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind.as_str(), "template");
    }

    #[test]
    fn a_record_with_the_id_key_gives_its_own_id() {
        let out = EsOutput::new("es", &config("id_key = \"_kafka.id\"")).unwrap();
        let action = |r: &Rec| {
            let mut line = Vec::new();
            out.encode(r, &mut line).unwrap();
            let text = String::from_utf8(line).unwrap();
            serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap()).unwrap()
        };
        let own = rec(1, serde_json::json!({"_kafka": {"id": "abc\"1"}}));
        assert_eq!(action(&own)["index"]["_id"], "abc\"1");
        let other = rec(2, serde_json::json!({"log": "x"}));
        assert_eq!(action(&other)["index"]["_id"], out.doc_id(&other));
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = rec(1, serde_json::json!({}));
        let b = rec(2, serde_json::json!({}));
        assert_eq!(doc_id("es", &a), doc_id("es", &a.clone()));
        assert_ne!(doc_id("es", &a), doc_id("es", &b));
        assert_ne!(doc_id("es", &a), doc_id("es2", &a));
        assert_eq!(doc_id("es", &a).len(), 32);
    }

    #[test]
    fn item_statuses() {
        let index = EsOutput::new("es", &config("")).unwrap();
        let create = EsOutput::new("es", &config("action = \"create\"")).unwrap();
        let item = |status, t: &str| BulkItem {
            status,
            error: Some(serde_json::json!({"type": t, "reason": "why"})),
        };
        assert_eq!(index.classify(&item(201, "")), Outcome::Delivered);
        assert!(matches!(
            index.classify(&item(409, "version_conflict_engine_exception")),
            Outcome::Retry(_)
        ));
        assert_eq!(
            create.classify(&item(409, "version_conflict_engine_exception")),
            Outcome::Delivered
        );
        assert!(matches!(
            index.classify(&item(429, "es_rejected_execution_exception")),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            index.classify(&item(503, "unavailable_shards_exception")),
            Outcome::Retry(_)
        ));
        match index.classify(&item(400, "document_parsing_exception")) {
            Outcome::Reject(f) => {
                assert_eq!(f.kind.as_str(), "rejected");
                assert_eq!(f.reason, "400 document_parsing_exception: why");
            }
            other => panic!("{other:?}"),
        }
    }
}
