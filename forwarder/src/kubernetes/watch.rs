//! The API-server side of Kubernetes metadata: one watch on this node's pods.
//!
//! `kube`'s watcher lists the pods with `spec.nodeName=<node>` and then watches from the list's
//! resourceVersion, re-listing after errors with backoff (research: crates-gcl-kube.md). The
//! forwarder never waits on it: records of a pod the cache does not know (yet, or because the
//! API is down) carry file-name metadata only, and gain the rest once the watch delivers.
//!
//! A deleted pod stays in the cache for [`DELETE_GRACE`], because its last lines are usually
//! read after the API already reported it gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};

use super::{PodCache, PodMeta};

/// How long a deleted pod's metadata is kept.
pub const DELETE_GRACE: Duration = Duration::from_secs(120);

/// Builds a client: `"in-cluster"` (service account token and CA), or a URL (`kubectl proxy`,
/// tests).
pub async fn client(api: &str) -> Result<Client, String> {
    // Several workspace crates enable both of rustls' crypto providers, and then rustls will
    // not pick a process default by itself (kube would panic): name the one logferry uses.
    let _ = logferry_common::tls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = if api == "in-cluster" {
        kube::Config::incluster().map_err(|e| format!("in-cluster config: {e}"))?
    } else {
        let uri = api
            .parse()
            .map_err(|e| format!("kubernetes.api {api:?}: {e}"))?;
        kube::Config::new(uri)
    };
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(330));
    Client::try_from(config).map_err(|e| format!("cannot build the client: {e}"))
}

fn key_and_meta(pod: &Pod) -> Option<((String, String), PodMeta)> {
    let m = &pod.metadata;
    let name = m.name.clone()?;
    let namespace = m.namespace.clone().unwrap_or_else(|| "default".into());
    let meta = PodMeta {
        uid: m.uid.clone().unwrap_or_default(),
        node_name: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        labels: m.labels.clone().unwrap_or_default(),
        annotations: m.annotations.clone().unwrap_or_default(),
    };
    Some(((namespace, name), meta))
}

/// Watches this node's pods into `cache`, forever (errors are retried with backoff).
pub async fn run(client: Client, node: String, cache: Arc<PodCache>) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut init: Option<HashMap<(String, String), PodMeta>> = None;
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                if failing {
                    tracing::info!("kubernetes API reachable again");
                    failing = false;
                }
                match event {
                    Event::Init => init = Some(HashMap::new()),
                    Event::InitApply(pod) => {
                        if let (Some(all), Some((k, m))) = (init.as_mut(), key_and_meta(&pod)) {
                            all.insert(k, m);
                        }
                    }
                    Event::InitDone => {
                        let all = init.take().unwrap_or_default();
                        tracing::info!(pods = all.len(), %node, "kubernetes pod metadata listed");
                        cache.replace_all(all);
                    }
                    Event::Apply(pod) => {
                        if let Some(((ns, name), m)) = key_and_meta(&pod) {
                            cache.upsert(ns, name, m);
                        }
                    }
                    Event::Delete(pod) => {
                        if let Some(((ns, name), _)) = key_and_meta(&pod) {
                            let cache = Arc::clone(&cache);
                            tokio::spawn(async move {
                                tokio::time::sleep(DELETE_GRACE).await;
                                cache.remove(&ns, &name);
                                crate::metrics::KUBERNETES_PODS.set(cache.len() as i64);
                            });
                        }
                    }
                }
                crate::metrics::KUBERNETES_PODS.set(cache.len() as i64);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "kubernetes API watch failed; records carry file-name metadata until it is back");
                    failing = true;
                } else {
                    tracing::debug!(error = %e, "kubernetes API watch still failing");
                }
            }
        }
    }
}
