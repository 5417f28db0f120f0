//! Server addresses as written in the config: `host:port`, `[v6]:port` for IPv6 literals.
//!
//! A leaf: pure string checks, no IO and no resolution, so that both the config's validation
//! and the client's resolver ([`crate::client::endpoints`]) read an entry the same way. A valid
//! entry has a non-empty host without whitespace and a port from 1 to 65535.

/// Splits `host:port` (`[v6]:port` for IPv6 literals), checking the port.
pub fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("{s:?} is not host:port (e.g. \"aggregator.logging.svc:24224\")");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
        (host, port)
    } else {
        s.rsplit_once(':').ok_or_else(bad)?
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(format!("{s:?}: port 0 is not a server port"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        assert_eq!(
            split_host_port("agg.logging.svc:24224").unwrap(),
            ("agg.logging.svc".into(), 24224)
        );
        assert_eq!(split_host_port("[::1]:1").unwrap(), ("::1".into(), 1));
        for bad in ["nohost", ":1", "h:0", "h:99999", "h:x", "a b:1"] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }
}
