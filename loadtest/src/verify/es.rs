//! Reads a run's documents from Elasticsearch (or OpenSearch) for `verify --es`.
//!
//! `_refresh` first (search only sees refreshed writes), then the scroll API over the index
//! pattern with a query that narrows to the run (`run_id` at the top or under `record`, or the id
//! as a phrase in `log`); every hit is still checked exactly on the client, so the query only has
//! to be generous, never exact. Plain HTTP with `ureq` (a blocking client is enough for a tool
//! that reads once), bounded by `--timeout`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use super::Tally;

/// Documents per scroll page.
const PAGE: usize = 5000;
/// The largest response body read.
const MAX_BODY: u64 = 512 << 20;

#[derive(Debug)]
struct Client {
    agent: ureq::Agent,
    base: String,
    deadline: Instant,
}

impl Client {
    fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        if url.starts_with("https://") {
            bail!("--es {url}: only http:// is supported by this build");
        }
        if !url.starts_with("http://") {
            bail!("--es {url}: expected an http:// URL");
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Ok(Self {
            agent,
            base: url.trim_end_matches('/').to_string(),
            deadline: Instant::now() + timeout,
        })
    }

    /// Sends `body` with `method` to `path`; returns the status and the parsed JSON body.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        if Instant::now() >= self.deadline {
            bail!("gave up: --timeout reached while reading {}", self.base);
        }
        let url = format!("{}{path}", self.base);
        let text = body.map(Value::to_string).unwrap_or_default();
        let result = match method {
            "POST" => self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(text.as_bytes()),
            "DELETE" => self
                .agent
                .delete(&url)
                .header("content-type", "application/json")
                .force_send_body()
                .send(text.as_bytes()),
            other => bail!("unsupported method {other}"),
        };
        let mut resp = result.with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let raw = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .with_context(|| format!("reading the reply of {method} {url}"))?;
        let v = if raw.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&raw).with_context(|| {
                format!(
                    "{method} {url}: reply is not JSON: {}",
                    raw.chars().take(300).collect::<String>()
                )
            })?
        };
        Ok((status, v))
    }
}

/// The query: generous on purpose (hits are checked exactly by [`Tally`]).
fn query(run_id: &str) -> Value {
    json!({
        "bool": {
            "should": [
                { "match_phrase": { "run_id": run_id } },
                { "match_phrase": { "record.run_id": run_id } },
                { "match_phrase": { "log": run_id } },
            ],
            "minimum_should_match": 1
        }
    })
}

fn error_text(status: u16, v: &Value) -> String {
    let reason = v
        .pointer("/error/reason")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string().chars().take(300).collect());
    format!("HTTP {status}: {reason}")
}

/// Counts every hit of one page; returns how many there were.
fn count_hits(t: &mut Tally, run_id: &str, page: &Value) -> anyhow::Result<usize> {
    let hits = page
        .pointer("/hits/hits")
        .and_then(Value::as_array)
        .context("search reply without hits.hits")?;
    for h in hits {
        match h.get("_source") {
            Some(src) => t.value(run_id, src),
            None => t.malformed += 1,
        }
    }
    Ok(hits.len())
}

/// Adds every document of `run_id` under `index` to `t`.
pub fn read(
    t: &mut Tally,
    run_id: &str,
    url: &str,
    index: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let c = Client::new(url, timeout)?;
    let (status, v) = c.call("POST", &format!("/{index}/_refresh"), None)?;
    if status == 404 {
        bail!(
            "no index matches {index} at {url}: {}",
            error_text(status, &v)
        );
    }
    if !(200..300).contains(&status) {
        bail!("refreshing {index}: {}", error_text(status, &v));
    }
    let body = json!({
        "size": PAGE,
        "query": query(run_id),
        "sort": ["_doc"],
        "_source": ["run_id", "seq", "pod", "log", "record.run_id", "record.seq", "record.pod", "record.log"],
    });
    let (status, mut page) = c.call("POST", &format!("/{index}/_search?scroll=2m"), Some(&body))?;
    if !(200..300).contains(&status) {
        bail!("searching {index}: {}", error_text(status, &page));
    }
    let mut scroll_ids = Vec::new();
    let result = loop {
        let n = match count_hits(t, run_id, &page) {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        let Some(id) = page.get("_scroll_id").and_then(Value::as_str) else {
            // No scroll context: the first page was everything.
            break Ok(());
        };
        if !scroll_ids.iter().any(|s: &String| s == id) {
            scroll_ids.push(id.to_string());
        }
        if n == 0 {
            break Ok(());
        }
        let next = json!({ "scroll": "2m", "scroll_id": id });
        match c.call("POST", "/_search/scroll", Some(&next)) {
            Ok((s, v)) if (200..300).contains(&s) => page = v,
            Ok((s, v)) => break Err(anyhow::anyhow!("scrolling: {}", error_text(s, &v))),
            Err(e) => break Err(e),
        }
    };
    if !scroll_ids.is_empty() {
        // Best effort: the contexts expire by themselves.
        let _ = c.call(
            "DELETE",
            "/_search/scroll",
            Some(&json!({ "scroll_id": scroll_ids })),
        );
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Expect;
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A tiny Elasticsearch stand-in: answers `_refresh`, `_search?scroll` and `_search/scroll`
    /// from a fixed list of documents (pages of `page` hits) and records every request.
    struct FakeEs {
        addr: String,
        requests: Arc<Mutex<Vec<(String, String, String)>>>,
    }

    fn fake_es(docs: Vec<Value>, page: usize, refresh_status: u16) -> FakeEs {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        std::thread::spawn(move || {
            let mut cursor = 0usize;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or("").to_string();
                    let path = parts.next().unwrap_or("").to_string();
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0u8; len];
                    reader.read_exact(&mut body).unwrap();
                    let body = String::from_utf8(body).unwrap();
                    reqs.lock()
                        .unwrap()
                        .push((method.clone(), path.clone(), body.clone()));
                    let (status, reply) = if path.ends_with("/_refresh") {
                        (refresh_status, json!({"_shards": {"failed": 0}}))
                    } else if path.contains("/_search?scroll") || path == "/_search/scroll" {
                        if method == "DELETE" {
                            (200, json!({"succeeded": true}))
                        } else {
                            if !path.starts_with("/_search/scroll") {
                                cursor = 0;
                            }
                            let hits: Vec<Value> = docs
                                [cursor.min(docs.len())..(cursor + page).min(docs.len())]
                                .iter()
                                .map(|d| json!({"_index": "logs", "_id": "x", "_source": d}))
                                .collect();
                            cursor += page;
                            (200, json!({"_scroll_id": "s1", "hits": {"hits": hits}}))
                        }
                    } else {
                        (404, json!({"error": {"reason": "no route"}}))
                    };
                    let reply = reply.to_string();
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                        reply.len()
                    );
                }
            }
        });
        FakeEs { addr, requests }
    }

    #[test]
    fn scrolls_every_page_and_checks_hits_exactly() {
        let mut docs = Vec::new();
        for seq in 0..23u64 {
            if seq == 7 {
                continue;
            }
            docs.push(json!({"run_id": "r1", "seq": seq, "log": "x", "@timestamp": "t"}));
        }
        docs.push(json!({"run_id": "r1", "seq": 3}));
        docs.push(json!({"run_id": "r10", "seq": 100}));
        // A pod line the forwarder did not merge.
        docs.push(json!({"log": "{\"run_id\":\"r1\",\"pod\":\"p1\",\"seq\":0}"}));
        let es = fake_es(docs, 4, 200);
        let mut t = Tally::default();
        read(&mut t, "r1", &es.addr, "logs-*", Duration::from_secs(10)).unwrap();
        let r = t.report("r1", "es", &Expect::PerSource(23));
        assert_eq!(r.sources.len(), 2, "{r:?}");
        let main = &r.sources[0];
        assert_eq!(main.source, "-");
        assert_eq!(
            (main.received, main.unique, main.duplicates, main.missing),
            (23, 22, 1, 1)
        );
        assert_eq!(main.missing_ranges, vec![[7, 7]]);
        assert_eq!(r.sources[1].source, "p1");
        assert_eq!(r.sources[1].missing, 22);
        assert_eq!(r.other_lines, 1);
        assert!(!r.ok);
        let reqs = es.requests.lock().unwrap();
        assert_eq!(reqs[0].0, "POST");
        assert_eq!(reqs[0].1, "/logs-*/_refresh");
        assert!(reqs[1].1.starts_with("/logs-*/_search?scroll="));
        let q: Value = serde_json::from_str(&reqs[1].2).unwrap();
        assert_eq!(q["size"], PAGE);
        // 26 docs in pages of 4: the search and 6 scrolls with hits, one empty scroll; then the
        // scroll is freed.
        let scrolls = reqs
            .iter()
            .filter(|r| r.0 == "POST" && r.1 == "/_search/scroll")
            .count();
        assert_eq!(scrolls, 6 + 1);
        assert_eq!(reqs.last().unwrap().0, "DELETE");
    }

    #[test]
    fn missing_index_is_an_error() {
        let es = fake_es(Vec::new(), 10, 404);
        let mut t = Tally::default();
        let e = read(&mut t, "r1", &es.addr, "nothing-*", Duration::from_secs(10)).unwrap_err();
        assert!(
            format!("{e:#}").contains("no index matches nothing-*"),
            "{e:#}"
        );
        let e = read(&mut t, "r1", "https://x", "i", Duration::from_secs(1)).unwrap_err();
        assert!(format!("{e:#}").contains("only http://"), "{e:#}");
    }
}
