//! The results table: our figures, the reference figures of `bench/reference.toml` beside them,
//! the ratios, and the targets met or missed.
//!
//! Ratios are ours divided by the reference for every column (so above 1 is better for records/s,
//! below 1 is better for CPU and memory). They are what we compare; absolute figures move with the
//! machine's load.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The reference figures shipped with the suite.
pub const DEFAULT_REFERENCE: &str = include_str!("../../../bench/reference.toml");

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    pub reference: Option<String>,
    pub records_per_sec: Option<f64>,
    pub cpu_s_per_million: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub idle_rss_mb: Option<f64>,
    pub idle_cpu_ms_per_s: Option<f64>,
    pub target_rate_ratio: Option<f64>,
    pub target_cpu_s_per_million: Option<f64>,
    pub target_peak_rss_mb: Option<f64>,
    pub target_idle_rss_mb: Option<f64>,
    pub target_idle_cpu_ms_per_s: Option<f64>,
    pub target_p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct References {
    #[serde(default)]
    pub scenario: BTreeMap<String, Reference>,
}

impl References {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "reason")]
pub enum Status {
    #[default]
    Ok,
    Skipped(String),
    Failed(String),
}

/// One scenario's results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub key: String,
    pub name: String,
    #[serde(flatten)]
    pub status: Status,
    pub records: u64,
    pub records_per_sec: Option<f64>,
    pub mb_per_sec: Option<f64>,
    pub cpu_s_per_million: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub idle_rss_mb: Option<f64>,
    pub idle_cpu_ms_per_s: Option<f64>,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
    pub missing: Option<u64>,
    pub duplicates: Option<u64>,
    /// Soak: peak RSS after warm-up minus peak RSS during warm-up.
    pub rss_growth_mb: Option<f64>,
    /// Soak: whether that growth stayed within the allowance (5% of the warm-up peak, or 2 MB).
    pub rss_flat: Option<bool>,
    /// Other figures, as text.
    pub notes: Vec<String>,
}

impl Row {
    pub fn new(key: &str, name: &str) -> Self {
        Self {
            key: key.into(),
            name: name.into(),
            ..Self::default()
        }
    }
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 1e6 => format!("{:.2}M", v / 1e6),
        Some(v) if v >= 1e4 => format!("{:.0}k", v / 1e3),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn ratio(ours: Option<f64>, reference: Option<f64>) -> Option<f64> {
    match (ours, reference) {
        (Some(o), Some(r)) if r > 0.0 => Some(o / r),
        _ => None,
    }
}

/// `"rate >= 1.5x ok"` style verdicts for the targets of `r`.
fn targets(row: &Row, r: &Reference) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |label: String, ok: Option<bool>| {
        if let Some(ok) = ok {
            out.push(format!("{label} {}", if ok { "ok" } else { "MISSED" }));
        }
    };
    if let Some(t) = r.target_rate_ratio {
        check(
            format!("rate >= {t}x"),
            ratio(row.records_per_sec, r.records_per_sec).map(|x| x >= t),
        );
    }
    if let Some(t) = r.target_cpu_s_per_million {
        check(format!("CPU <= {t}"), row.cpu_s_per_million.map(|c| c <= t));
    }
    if let Some(t) = r.target_peak_rss_mb {
        check(format!("RSS <= {t} MB"), row.peak_rss_mb.map(|m| m <= t));
    }
    if let Some(t) = r.target_idle_rss_mb {
        check(
            format!("idle RSS <= {t} MB"),
            row.idle_rss_mb.map(|m| m <= t),
        );
    }
    if let Some(t) = r.target_idle_cpu_ms_per_s {
        check(
            format!("idle CPU <= {t} ms/s"),
            row.idle_cpu_ms_per_s.map(|m| m <= t),
        );
    }
    if let Some(t) = r.target_p99_ms {
        check(format!("p99 <= {t} ms"), row.ack_p99_ms.map(|p| p <= t));
    }
    check("RSS flat after warm-up".into(), row.rss_flat);
    out
}

/// The markdown table of every row.
pub fn table(rows: &[Row], refs: &References) -> String {
    let mut s = String::new();
    s += "| scenario | records/s | MB/s | CPU-s / 1M | peak RSS MB | other | reference (records/s, CPU-s/1M, RSS MB) | ratio ours/ref (rate, CPU, RSS) | targets |\n";
    s += "|---|---|---|---|---|---|---|---|---|\n";
    for row in rows {
        let r = refs.scenario.get(&row.key).cloned().unwrap_or_default();
        let mut other = row.notes.clone();
        match &row.status {
            Status::Ok => {}
            Status::Skipped(why) => other.insert(0, format!("SKIPPED: {why}")),
            Status::Failed(why) => other.insert(0, format!("FAILED: {why}")),
        }
        let reference = if r.records_per_sec.is_some() || r.cpu_s_per_million.is_some() {
            format!(
                "{}, {}, {}",
                num(r.records_per_sec),
                num(r.cpu_s_per_million),
                num(r.peak_rss_mb)
            )
        } else {
            "–".into()
        };
        let ratios = if reference == "–" {
            "–".into()
        } else {
            let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}x"));
            format!(
                "{}, {}, {}",
                f(ratio(row.records_per_sec, r.records_per_sec)),
                f(ratio(row.cpu_s_per_million, r.cpu_s_per_million)),
                f(ratio(row.peak_rss_mb, r.peak_rss_mb))
            )
        };
        let t = if row.status == Status::Ok {
            targets(row, &r).join("; ")
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            num(row.records_per_sec),
            num(row.mb_per_sec),
            num(row.cpu_s_per_million),
            num(row.peak_rss_mb),
            other.join("; ").replace('|', "/"),
            reference,
            ratios,
            if t.is_empty() { "–".into() } else { t },
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_reference_parses() {
        let r = References::parse(DEFAULT_REFERENCE).unwrap();
        assert_eq!(r.scenario["ingest"].records_per_sec, Some(876_000.0));
        assert_eq!(r.scenario["file"].cpu_s_per_million, Some(2.43));
        assert_eq!(r.scenario["pods"].target_peak_rss_mb, Some(32.0));
        assert_eq!(r.scenario["latency"].target_p99_ms, Some(20.0));
        assert!(References::parse("[scenario.x]\nbogus = 1\n").is_err());
    }

    #[test]
    fn table_shows_ratios_and_targets() {
        let refs = References::parse(DEFAULT_REFERENCE).unwrap();
        let mut ingest = Row::new("ingest", "(a0) ingest");
        ingest.records_per_sec = Some(1_314_000.0);
        ingest.cpu_s_per_million = Some(0.5);
        ingest.peak_rss_mb = Some(80.0);
        let mut lat = Row::new("latency", "(d) latency");
        lat.ack_p99_ms = Some(25.0);
        let mut pods = Row::new("pods", "(c) pods");
        pods.status = Status::Skipped("no forwarder".into());
        let t = table(&[ingest, lat, pods], &refs);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[2].contains("1.31M"), "{t}");
        assert!(lines[2].contains("876k, 0.97, 297"), "{t}");
        assert!(lines[2].contains("1.50x, 0.52x, 0.27x"), "{t}");
        assert!(
            lines[2].contains("rate >= 1x ok; CPU <= 0.8 ok; RSS <= 64 MB MISSED"),
            "{t}"
        );
        assert!(lines[3].contains("p99 <= 20 ms MISSED"), "{t}");
        assert!(lines[4].contains("SKIPPED: no forwarder"), "{t}");
    }
}
