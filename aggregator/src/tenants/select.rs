//! Which tenant a request belongs to, and which of the tenant's pipelines take it.
//!
//! Decided once per request (a Forward request carries one tag, and the forwarder sends one
//! container's records per request), never per record:
//! - the connection's tenant, when it has one (senders outside the cluster): its user's
//!   `auth.users[].tenant`, else its `auth.clients[].tenant`, else the listener's `tenant`
//!   (`crate::server::ListenerSettings::tenant_of`);
//! - else the namespace in the forwarder's tag,
//!   `<prefix>.var.log.containers.<pod>_<namespace>_<container>-<id>.log` (pod names and
//!   namespaces have no `_`);
//! - else the first record's `kubernetes.namespace_name` (Fluent Bit's and Fluentd's
//!   Kubernetes filters).
//!
//! A pipeline's `[match]` narrows that: container names (from the tag, else the first
//! record's `kubernetes.container_name`), pod labels (the first record's
//! `kubernetes.labels`) and tag patterns.

use crate::config::SelectConfig;
use crate::record::{self, Scalar};
use crate::route::Pattern;

/// What the forwarder's tag says about a container log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeTag<'a> {
    /// The pod's name.
    pub pod: &'a str,
    /// The namespace: the tenant.
    pub namespace: &'a str,
    /// The container's name.
    pub container: &'a str,
}

/// Reads a container log's tag (`kube.var.log.containers.<pod>_<ns>_<container>-<id>.log`).
pub fn kube_tag(tag: &str) -> Option<KubeTag<'_>> {
    let (_, file) = tag.rsplit_once("containers.")?;
    let file = file.strip_suffix(".log")?;
    let mut parts = file.splitn(3, '_');
    let (pod, namespace, rest) = (parts.next()?, parts.next()?, parts.next()?);
    // The container id is 64 hex digits after the last '-'.
    let container = rest.rsplit_once('-').map_or(rest, |(name, _)| name);
    (!pod.is_empty() && !namespace.is_empty() && !container.is_empty()).then_some(KubeTag {
        pod,
        namespace,
        container,
    })
}

/// What one request is, for selection.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The request's tag.
    pub tag: &'a str,
    /// Its tenant.
    pub tenant: String,
    /// Its first record (a msgpack map), for labels and names the tag does not carry.
    pub first: Option<&'a [u8]>,
    container: Option<String>,
}

impl<'a> Request<'a> {
    /// The tenant of a request with `tag` on a listener of `listener_tenant`; `None` when no
    /// tenant can be told.
    pub fn new(
        tag: &'a str,
        listener_tenant: Option<&str>,
        first: Option<&'a [u8]>,
    ) -> Option<Request<'a>> {
        let kube = kube_tag(tag);
        let from_record = |key: &str| {
            first
                .and_then(|r| record::scalar(r, &["kubernetes", key]))
                .map(|s| s.to_text())
        };
        let tenant = match (listener_tenant, kube) {
            (Some(t), _) => t.to_owned(),
            (None, Some(k)) => k.namespace.to_owned(),
            (None, None) => from_record("namespace_name")?,
        };
        let container = kube
            .map(|k| k.container.to_owned())
            .or_else(|| from_record("container_name"));
        Some(Request {
            tag,
            tenant,
            first,
            container,
        })
    }
}

/// A pipeline's compiled `[match]`.
#[derive(Debug, Clone)]
pub struct Selector {
    containers: Vec<String>,
    labels: Vec<(String, String)>,
    tags: Vec<Pattern>,
}

impl Selector {
    /// Compiles `[match]` (its tag patterns were checked by the pipeline's validation; one
    /// that does not parse matches nothing).
    pub fn new(config: &SelectConfig) -> Selector {
        Selector {
            containers: config.containers.clone(),
            labels: config
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            tags: config
                .tags
                .iter()
                .filter_map(|t| Pattern::parse(t).ok())
                .collect(),
        }
    }

    /// Whether the pipeline takes `request` (of its tenant).
    pub fn matches(&self, request: &Request<'_>) -> bool {
        let container = || {
            request
                .container
                .as_deref()
                .is_some_and(|c| self.containers.iter().any(|want| want == c))
        };
        let labels = || {
            self.labels.iter().all(|(key, want)| {
                request
                    .first
                    .and_then(|r| record::scalar(r, &["kubernetes", "labels", key.as_str()]))
                    .is_some_and(|v| match v {
                        Scalar::Str(s) => s == want,
                        other => other.to_text() == *want,
                    })
            })
        };
        let tag = || self.tags.iter().any(|p| p.matches(request.tag));
        (self.containers.is_empty() || container())
            && (self.labels.is_empty() || labels())
            && (self.tags.is_empty() || tag())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "kube.var.log.containers.web-7d4b9c-x2x_shop_app-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.log";

    fn rec(v: serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&v).unwrap()
    }

    #[test]
    fn the_forwarder_tag_names_pod_namespace_and_container() {
        assert_eq!(
            kube_tag(TAG),
            Some(KubeTag {
                pod: "web-7d4b9c-x2x",
                namespace: "shop",
                container: "app"
            })
        );
        // Pod names may hold dots; the container name may hold dashes.
        let dotted = "kube.var.log.containers.a.b_ns_side-car-ffff.log";
        assert_eq!(kube_tag(dotted).unwrap().pod, "a.b");
        assert_eq!(kube_tag(dotted).unwrap().container, "side-car");
        assert_eq!(kube_tag("app.access"), None);
        assert_eq!(kube_tag("kube.var.log.containers.nounderscores.log"), None);
    }

    #[test]
    fn the_tenant_comes_from_the_listener_then_the_tag_then_the_record() {
        let r = rec(
            serde_json::json!({"kubernetes": {"namespace_name": "billing", "container_name": "api"}}),
        );
        assert_eq!(
            Request::new(TAG, Some("ext"), Some(&r)).unwrap().tenant,
            "ext"
        );
        assert_eq!(Request::new(TAG, None, Some(&r)).unwrap().tenant, "shop");
        let other = Request::new("app.access", None, Some(&r)).unwrap();
        assert_eq!(
            (other.tenant.as_str(), other.container.as_deref()),
            ("billing", Some("api"))
        );
        assert!(Request::new("app.access", None, None).is_none());
    }

    #[test]
    fn match_narrows_by_container_labels_and_tag() {
        let r = rec(serde_json::json!({"kubernetes": {"labels": {"app": "web", "tier": 1}}}));
        let request = Request::new(TAG, None, Some(&r)).unwrap();
        let select = |c: &[&str], l: &[(&str, &str)], t: &[&str]| {
            Selector::new(&SelectConfig {
                containers: c.iter().map(|s| s.to_string()).collect(),
                labels: l
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                tags: t.iter().map(|s| s.to_string()).collect(),
            })
            .matches(&request)
        };
        assert!(select(&[], &[], &[]));
        assert!(select(
            &["app"],
            &[("app", "web"), ("tier", "1")],
            &["kube.**"]
        ));
        assert!(!select(&["db"], &[], &[]));
        assert!(!select(&[], &[("app", "db")], &[]));
        assert!(!select(&[], &[("missing", "x")], &[]));
        assert!(!select(&[], &[], &["app.**"]));
    }
}
