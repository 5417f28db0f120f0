//! A small Forward client for hand-made requests, built on logferry-common's client API
//! (`tls::client_config`, `tls::connect`, `forward::client_session::handshake`), the same code
//! the forwarder and `logferry-loadtest` use: connections from chosen source addresses, TLS,
//! the shared-key handshake, PackedForward requests with acks, and watching a connection get
//! closed. The load generator's records all have one shape; these helpers send what a test
//! needs (records a sink refuses, requests a listener must refuse).
//!
//! Async (tokio) except [`send_json_acked`], which blocks.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use logferry_common::forward::client_session::{
    handshake, ClientAuth, Established, HandshakeError,
};
use logferry_common::forward::{decode_ack, encode_entry, encode_packed_forward, EventTime};
use logferry_common::msgpack;
use logferry_common::tls::{self, tokio_rustls::client::TlsStream};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connects to `addr` from `source` (any 127.0.0.0/8 address works on Linux, so tests can act
/// as several hosts).
pub async fn tcp_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// Connects from 127.0.0.1.
pub async fn tcp(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// TLS over `stream`, trusting `ca`, verifying the name `localhost`, presenting `client` (cert,
/// key) if given.
pub async fn tls_over(
    stream: TcpStream,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let config = tls::client_config(Some(ca), client.map(|c| c.0), client.map(|c| c.1))
        .map_err(std::io::Error::other)?;
    tls::connect(
        stream,
        config,
        tls::server_name("localhost").expect("server name"),
    )
    .await
}

/// The shared-key handshake with a short timeout.
pub async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &str,
    user: Option<(&str, &str)>,
) -> Result<Established, HandshakeError> {
    let mut auth = ClientAuth::new(key, "e2e-client");
    if let Some((u, p)) = user {
        auth.username = u.into();
        auth.password = p.into();
    }
    auth.timeout = Duration::from_secs(10);
    handshake(stream, &auth).await
}

/// A PackedForward request of records `{"run_id", "seq"}` for seqs `from..from + n`, asking
/// for an ack with `chunk`.
pub fn request(tag: &str, run_id: &str, from: u64, n: u64, chunk: &str) -> Vec<u8> {
    let mut entries = Vec::new();
    for seq in from..from + n {
        let mut record = Vec::new();
        msgpack::write_map_len(&mut record, 2);
        msgpack::write_str(&mut record, "run_id");
        msgpack::write_str(&mut record, run_id);
        msgpack::write_str(&mut record, "seq");
        msgpack::write_uint(&mut record, seq);
        encode_entry(EventTime::now(), &record, &mut entries);
    }
    let mut out = Vec::new();
    encode_packed_forward(tag, &entries, n as u32, Some(chunk), &mut out);
    out
}

/// Sends a request and waits (10 s at most) for its ack.
pub async fn send_acked<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    run_id: &str,
    from: u64,
    n: u64,
) -> Result<(), String> {
    send_tagged_acked(stream, "security.e2e", run_id, from, n).await
}

/// [`send_acked`] with records tagged `tag`.
pub async fn send_tagged_acked<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    tag: &str,
    run_id: &str,
    from: u64,
    n: u64,
) -> Result<(), String> {
    let chunk = format!("{run_id}-{from}");
    stream
        .write_all(&request(tag, run_id, from, n, &chunk))
        .await
        .map_err(|e| format!("write: {e}"))?;
    stream.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut buf = BytesMut::new();
    let ack = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(ack) = decode_ack(&mut buf).map_err(|e| format!("bad ack: {e}"))? {
                return Ok::<_, String>(ack);
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Err("connection closed before the ack".to_string()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    })
    .await
    .map_err(|_| "no ack within 10s".to_string())??;
    let id = logferry_common::forward::ack::chunk_id_bytes(&ack).unwrap_or_default();
    if id != chunk.as_bytes() {
        return Err(format!(
            "ack for {:?}, expected {chunk:?}",
            String::from_utf8_lossy(id)
        ));
    }
    Ok(())
}

/// Reads until the peer closes (EOF or an error such as a reset or a TLS alert), returning
/// what it sent; `Err` if it is still open after `within`.
pub async fn closed_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let result = tokio::time::timeout(within, async {
        let mut b = [0u8; 4096];
        loop {
            match stream.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
    })
    .await;
    match result {
        Ok(()) => Ok(got),
        Err(_) => Err(format!(
            "still open after {within:?} (received {} bytes)",
            got.len()
        )),
    }
}

/// Reads the server's HELO (a plain connection to a listener with auth).
pub async fn read_helo<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut buf = BytesMut::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut d = logferry_common::forward::Decoder::default();
            if let Ok(Some(_)) = d.decode(&mut buf.clone()) {
                return buf.to_vec();
            }
            if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return buf.to_vec();
            }
        }
    })
    .await
    .expect("HELO within 10s")
}

/// Encodes a JSON object as a msgpack map (integers stay integers).
fn msgpack_map(v: &Value) -> Vec<u8> {
    fn enc(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Null => rmp::encode::write_nil(out).unwrap(),
            Value::Bool(b) => rmp::encode::write_bool(out, *b).unwrap(),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    rmp::encode::write_uint(out, u).unwrap();
                } else if let Some(i) = n.as_i64() {
                    rmp::encode::write_sint(out, i).unwrap();
                } else {
                    rmp::encode::write_f64(out, n.as_f64().unwrap()).unwrap();
                }
            }
            Value::String(s) => rmp::encode::write_str(out, s).unwrap(),
            Value::Array(a) => {
                rmp::encode::write_array_len(out, a.len() as u32).unwrap();
                for x in a {
                    enc(x, out);
                }
            }
            Value::Object(m) => {
                rmp::encode::write_map_len(out, m.len() as u32).unwrap();
                for (k, x) in m {
                    rmp::encode::write_str(out, k).unwrap();
                    enc(x, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    enc(v, &mut out);
    out
}

/// Sends JSON `records` with `tag` in PackedForward requests of `batch` records, each with a
/// chunk id, and waits for every ack (blocking). Panics on any failure.
pub fn send_json_acked(addr: &str, tag: &str, records: &[Value], batch: usize) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the aggregator");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let base = EventTime::now();
    for (b, group) in records.chunks(batch.max(1)).enumerate() {
        let mut entries = Vec::new();
        for (i, r) in group.iter().enumerate() {
            let t = EventTime::from_unix_nanos(base.unix_nanos() + (b * batch + i) as u64);
            encode_entry(t, &msgpack_map(r), &mut entries);
        }
        let chunk = format!(
            "{:032x}",
            (std::process::id() as u128) << 64 | (base.unix_nanos() as u128 + b as u128)
        );
        let mut req = Vec::new();
        encode_packed_forward(tag, &entries, group.len() as u32, Some(&chunk), &mut req);
        std::io::Write::write_all(&mut s, &req).expect("send");
        let mut buf = BytesMut::new();
        loop {
            if let Some(ack) = decode_ack(&mut buf).expect("ack decodes") {
                let id = logferry_common::forward::ack::chunk_id_bytes(&ack);
                assert_eq!(id, Some(chunk.as_bytes()), "ack for another chunk");
                break;
            }
            let mut tmp = [0u8; 4096];
            let n = std::io::Read::read(&mut s, &mut tmp).expect("read ack");
            assert!(n > 0, "aggregator closed the connection before acking");
            buf.extend_from_slice(&tmp[..n]);
        }
    }
}
