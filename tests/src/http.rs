//! The aggregator's admin endpoint over plain HTTP/1.0 on a TCP socket: `GET`, `POST`, and
//! `/metrics` (Prometheus text) with [`metric_value`] to read one metric from it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::Aggregator;

/// `GET path` over HTTP/1.0; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    request(
        addr,
        &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        Duration::from_secs(10),
    )
}

/// `POST path` with an empty body over HTTP/1.0; returns the status code and the body.
pub fn http_post(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    request(
        addr,
        &format!(
            "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        Duration::from_secs(30),
    )
}

/// Sends `head` (a whole request) and reads the reply until the server closes, waiting at most
/// `read_timeout` for each read.
fn request(addr: SocketAddr, head: &str, read_timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(read_timeout))?;
    s.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad reply: {head}"),
            )
        })?;
    Ok((status, body.to_string()))
}

/// `GET /metrics` (Prometheus text); panics unless 200.
pub fn metrics(admin: SocketAddr) -> String {
    let (status, body) =
        http_get(admin, "/metrics").unwrap_or_else(|e| panic!("GET /metrics on {admin}: {e}"));
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// Sum of every sample of metric `name` (all label sets); `None` if it has no sample.
/// `name` may carry labels (`logferry_dropped_records_total{reason="overflow"}`) to pick
/// samples whose label set contains them.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let (base, want) = match name.split_once('{') {
        Some((b, rest)) => (b, rest.trim_end_matches('}')),
        None => (name, ""),
    };
    let want: Vec<&str> = want.split(',').filter(|s| !s.is_empty()).collect();
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (sname, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if sname != base {
            continue;
        }
        let have: Vec<&str> = labels.split(',').collect();
        if !want.iter().all(|w| have.contains(w)) {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// A metric of `agg` ([`metric_value`] of its `/metrics`; 0 when absent).
pub fn metric(agg: &Aggregator, name: &str) -> f64 {
    metric_value(&agg.metrics(), name).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values() {
        let text = "# HELP x\n# TYPE x counter\nlogferry_input_records_total 42\n\
            logferry_dropped_records_total{reason=\"overflow\"} 3\n\
            logferry_dropped_records_total{reason=\"invalid\"} 4\n\
            logferry_input_records_total_x 1\n";
        assert_eq!(
            metric_value(text, "logferry_input_records_total"),
            Some(42.0)
        );
        assert_eq!(
            metric_value(text, "logferry_dropped_records_total"),
            Some(7.0)
        );
        assert_eq!(
            metric_value(text, "logferry_dropped_records_total{reason=\"invalid\"}"),
            Some(4.0)
        );
        assert_eq!(metric_value(text, "logferry_forward_acks_total"), None);
    }
}
