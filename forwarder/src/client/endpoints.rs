//! Where the aggregators are: `host:port` entries, resolved again and again.
//!
//! A headless Service's DNS name resolves to every aggregator pod, and the set changes as pods
//! come and go; resolving once at startup would pin a forwarder to the pods that existed then
//! (research §3 item 15: uneven load with long-lived connections). So every name is resolved
//! every `dns_refresh_interval`, and the client keeps one connection per address found. A
//! failed lookup keeps the previous addresses rather than dropping every connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::net::split_host_port;

/// Resolves every server entry to its addresses, each with the host it came from (the name
/// TLS verifies); entries that fail are reported and skipped.
pub async fn resolve_all(servers: &[String]) -> (BTreeMap<SocketAddr, String>, Vec<String>) {
    let mut addrs = BTreeMap::new();
    let mut errors = Vec::new();
    for server in servers {
        let Ok((host, port)) = split_host_port(server) else {
            errors.push(format!("{server}: invalid"));
            continue;
        };
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let found = tokio::net::lookup_host(target).await;
        match found {
            Ok(found) => {
                for addr in found {
                    addrs.entry(addr).or_insert_with(|| host.clone());
                }
            }
            Err(e) => errors.push(format!("{server}: {e}")),
        }
    }
    (addrs, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_names_and_literals() {
        let (addrs, errors) =
            resolve_all(&["127.0.0.1:24224".into(), "localhost:24225".into()]).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            addrs
                .get(&"127.0.0.1:24224".parse().unwrap())
                .map(String::as_str),
            Some("127.0.0.1")
        );
        assert!(addrs
            .iter()
            .any(|(a, host)| a.port() == 24225 && host == "localhost"));
    }
}
