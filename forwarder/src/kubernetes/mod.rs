//! Kubernetes metadata for records.
//!
//! Two sources, so that records always say where they come from even when the API server is
//! away (during control-plane upgrades, or when it throttles a thousand DaemonSet pods):
//!
//! 1. **The file name**, always: kubelet names container logs
//!    `<pod>_<namespace>_<container>-<container id>.log`, which gives `pod_name`,
//!    `namespace_name`, `container_name` and `docker_id` with no IO at all.
//! 2. **The API server**, with `[kubernetes] enabled = true`: one watch on this node's pods
//!    (field selector `spec.nodeName=<node>`), cached in a [`PodCache`] (module `watch`), adds
//!    `pod_id`, `host`, `labels` and `annotations`. Lookups never wait for the API: a pod not
//!    (yet) in the cache gets file-name metadata only.
//!
//! The `kubernetes` value of a file's records is encoded once and re-encoded only when the
//! cache changed ([`PodCache::generation`]), so the cost per record is one copy.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use logferry_common::msgpack;

#[cfg(feature = "kubernetes")]
pub mod watch;

/// What a log file's name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Pod name.
    pub pod_name: String,
    /// Namespace.
    pub namespace: String,
    /// Container name.
    pub container_name: String,
    /// Container id (64 hex characters for Docker and containerd).
    pub container_id: String,
}

impl PodRef {
    /// Parses `<pod>_<namespace>_<container>-<container id>.log` (a rotation suffix after
    /// `.log`, such as `.log.1` or `.log.20240101-120000`, is ignored). `None` for other names.
    pub fn from_file_name(name: &str) -> Option<PodRef> {
        let stem = match name.find(".log") {
            Some(i) => &name[..i],
            None => name,
        };
        let mut parts = stem.splitn(3, '_');
        let pod = parts.next()?;
        let namespace = parts.next()?;
        let rest = parts.next()?;
        let (container, id) = rest.rsplit_once('-')?;
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        if !valid_name(pod) || !valid_name(namespace) || !valid_name(container) {
            return None;
        }
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(PodRef {
            pod_name: pod.to_owned(),
            namespace: namespace.to_owned(),
            container_name: container.to_owned(),
            container_id: id.to_owned(),
        })
    }
}

/// What the API server says about a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// `metadata.uid`.
    pub uid: String,
    /// `spec.nodeName`.
    pub node_name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
}

/// Pods of this node by (namespace, name), kept current by the watch.
#[derive(Debug, Default)]
pub struct PodCache {
    pods: RwLock<HashMap<(String, String), Arc<PodMeta>>>,
    generation: AtomicU64,
}

impl PodCache {
    /// An empty cache.
    pub fn new() -> Arc<PodCache> {
        Arc::new(PodCache::default())
    }

    /// The pod, if known.
    pub fn get(&self, namespace: &str, pod: &str) -> Option<Arc<PodMeta>> {
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
        pods.get(&(namespace.to_owned(), pod.to_owned())).cloned()
    }

    /// Adds or replaces a pod.
    pub fn upsert(&self, namespace: String, pod: String, meta: PodMeta) {
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        let key = (namespace, pod);
        if pods.get(&key).is_some_and(|m| **m == meta) {
            return;
        }
        pods.insert(key, Arc::new(meta));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Forgets a pod.
    pub fn remove(&self, namespace: &str, pod: &str) {
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        if pods
            .remove(&(namespace.to_owned(), pod.to_owned()))
            .is_some()
        {
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// Replaces everything (after a full list).
    pub fn replace_all(&self, all: HashMap<(String, String), PodMeta>) {
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        *pods = all.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes whenever the content changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Pods known.
    pub fn len(&self) -> usize {
        self.pods.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no pod is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes the `kubernetes` map of a file's records (the value only, not the key).
pub fn encode_metadata(pod: &PodRef, meta: Option<&PodMeta>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut keys = 4;
    if let Some(m) = meta {
        keys += u32::from(!m.uid.is_empty())
            + u32::from(!m.node_name.is_empty())
            + u32::from(!m.labels.is_empty())
            + u32::from(!m.annotations.is_empty());
    }
    msgpack::write_map_len(&mut out, keys);
    for (k, v) in [
        ("pod_name", &pod.pod_name),
        ("namespace_name", &pod.namespace),
        ("container_name", &pod.container_name),
        ("docker_id", &pod.container_id),
    ] {
        msgpack::write_str(&mut out, k);
        msgpack::write_str(&mut out, v);
    }
    if let Some(m) = meta {
        if !m.uid.is_empty() {
            msgpack::write_str(&mut out, "pod_id");
            msgpack::write_str(&mut out, &m.uid);
        }
        if !m.node_name.is_empty() {
            msgpack::write_str(&mut out, "host");
            msgpack::write_str(&mut out, &m.node_name);
        }
        for (key, map) in [("labels", &m.labels), ("annotations", &m.annotations)] {
            if map.is_empty() {
                continue;
            }
            msgpack::write_str(&mut out, key);
            msgpack::write_map_len(&mut out, map.len() as u32);
            for (k, v) in map {
                msgpack::write_str(&mut out, k);
                msgpack::write_str(&mut out, v);
            }
        }
    }
    out
}

/// Per-file metadata, re-encoded when the cache changes.
#[derive(Debug)]
pub struct FileMetadata {
    pod: Option<PodRef>,
    encoded: Option<Vec<u8>>,
    generation: u64,
    /// Whether the API's metadata is in `encoded`.
    enriched: bool,
}

impl FileMetadata {
    /// Metadata for a file name.
    pub fn new(file_name: &str) -> FileMetadata {
        let pod = PodRef::from_file_name(file_name);
        let encoded = pod.as_ref().map(|p| encode_metadata(p, None));
        FileMetadata {
            pod,
            encoded,
            generation: u64::MAX,
            enriched: false,
        }
    }

    /// The encoded `kubernetes` value, refreshed from `cache` if it changed.
    pub fn current(&mut self, cache: Option<&PodCache>) -> Option<&[u8]> {
        let pod = self.pod.as_ref()?;
        if let Some(cache) = cache {
            let generation = cache.generation();
            if generation != self.generation {
                self.generation = generation;
                let meta = cache.get(&pod.namespace, &pod.pod_name);
                self.enriched = meta.is_some();
                self.encoded = Some(encode_metadata(pod, meta.as_deref()));
            }
        }
        self.encoded.as_deref()
    }

    /// The pod the file belongs to, when its name says.
    pub fn pod(&self) -> Option<&PodRef> {
        self.pod.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f7e3b2a1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f";

    #[test]
    fn file_names() {
        let p = PodRef::from_file_name(&format!("web-7d4b9c-x2x9z_shop_nginx-{ID}.log")).unwrap();
        assert_eq!(p.pod_name, "web-7d4b9c-x2x9z");
        assert_eq!(p.namespace, "shop");
        assert_eq!(p.container_name, "nginx");
        assert_eq!(p.container_id, ID);
        let p = PodRef::from_file_name(&format!("a_b_side-car-{ID}.log.20240101-000000")).unwrap();
        assert_eq!(p.container_name, "side-car");
        assert_eq!(PodRef::from_file_name("app.log"), None);
        assert_eq!(PodRef::from_file_name("a_b_c.log"), None);
        assert_eq!(PodRef::from_file_name("A_b_c-12ab.log"), None);
        assert_eq!(PodRef::from_file_name("a_b_c-xyz.log"), None);
    }

    #[test]
    fn metadata_follows_the_cache() {
        let cache = PodCache::new();
        let mut fm = FileMetadata::new(&format!("web-1_shop_nginx-{ID}.log"));
        let plain = fm.current(Some(&cache)).unwrap().to_vec();
        let v = rmpv::decode::read_value(&mut &plain[..]).unwrap();
        assert_eq!(v.as_map().unwrap().len(), 4);
        let mut meta = PodMeta {
            uid: "uid-1".into(),
            node_name: "node-1".into(),
            ..PodMeta::default()
        };
        meta.labels.insert("app".into(), "web".into());
        cache.upsert("shop".into(), "web-1".into(), meta);
        let rich = fm.current(Some(&cache)).unwrap().to_vec();
        let v = rmpv::decode::read_value(&mut &rich[..]).unwrap();
        let map = v.as_map().unwrap();
        assert_eq!(map.len(), 7);
        let labels = map
            .iter()
            .find(|(k, _)| k.as_str() == Some("labels"))
            .unwrap();
        assert_eq!(labels.1.as_map().unwrap()[0].1.as_str(), Some("web"));
        cache.remove("shop", "web-1");
        assert_eq!(fm.current(Some(&cache)).unwrap(), &plain[..]);
        assert!(FileMetadata::new("app.log").current(Some(&cache)).is_none());
    }
}
