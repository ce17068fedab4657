//! `[kubelet]`: labels, taints and cluster DNS the kubelet registers the node with, checked
//! against what Kubernetes and its NodeRestriction admission accept.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
use toml::Spanned;

use crate::values::valid_hostname;
use crate::{ConfigError, Cx};

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (may be empty).
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// kubelet settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubelet {
    /// Labels the kubelet registers the node with.
    pub node_labels: BTreeMap<String, String>,
    /// Taints it registers with.
    pub taints: Vec<Taint>,
    /// Cluster DNS addresses.
    pub cluster_dns: Vec<IpAddr>,
    /// Cluster domain.
    pub cluster_domain: String,
    /// The API server the kubelet registers with (`https://HOST:PORT`); without it the
    /// kubelet runs standalone (static pods only).
    pub api_server: Option<crate::values::Url>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawKubelet {
    #[serde(default)]
    pub(crate) node_labels: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(crate) taints: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) cluster_dns: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) cluster_domain: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) api_server: Option<Spanned<String>>,
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of at most
/// 63 alphanumerics, `-`, `_` or `.` that starts and ends alphanumeric.
pub fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(|p| valid_hostname(p) && p.chars().all(|c| !c.is_ascii_uppercase()))
        && valid_label_value(name)
        && !name.is_empty()
}

/// Whether a kubelet may register its node with label `key` (`--node-labels`): any key
/// outside the `kubernetes.io` and `k8s.io` namespaces, and within them only the well-known
/// node labels and the `kubelet.kubernetes.io` and `node.kubernetes.io` namespaces (what
/// the kubelet itself and the API server's NodeRestriction admit).
pub fn kubelet_may_set(key: &str) -> bool {
    const WELL_KNOWN: [&str; 12] = [
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "node.kubernetes.io/windows-build",
    ];
    let Some((ns, _)) = key.split_once('/') else {
        return true;
    };
    let within = |d: &str| ns == d || ns.ends_with(&format!(".{d}"));
    if !within("kubernetes.io") && !within("k8s.io") {
        return true;
    }
    WELL_KNOWN.contains(&key) || within("kubelet.kubernetes.io") || within("node.kubernetes.io")
}

/// A Kubernetes label value: empty, or at most 63 alphanumerics, `-`, `_` or `.` that
/// starts and ends alphanumeric.
pub fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

pub(crate) fn kubelet(cx: &Cx, raw: &RawKubelet) -> Result<Kubelet, ConfigError> {
    let mut node_labels = BTreeMap::new();
    for (k, v) in &raw.node_labels {
        if !valid_label_key(k) {
            return cx.err(
                Some(v.span()),
                format!("[kubelet] node-labels key '{k}' is not a label key"),
                "e.g. \"topology.kubernetes.io/zone\" or \"tier\"",
            );
        }
        if !kubelet_may_set(k) {
            return cx.err(
                Some(v.span()),
                format!("[kubelet] node-labels key '{k}' is reserved"),
                "a kubelet may only set kubernetes.io and k8s.io labels of its own (kubernetes.io/arch, topology.kubernetes.io/zone, node.kubernetes.io/…); set others, like node-role.kubernetes.io/, with kubectl",
            );
        }
        if !valid_label_value(v.get_ref()) {
            return cx.err(
                Some(v.span()),
                format!("[kubelet] node-labels value '{}' is not a label value", v.get_ref()),
                "at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric",
            );
        }
        node_labels.insert(k.clone(), v.get_ref().clone());
    }
    let mut taints = Vec::new();
    for t in &raw.taints {
        let v = t.get_ref();
        let parsed = v.rsplit_once(':').and_then(|(kv, effect)| {
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            (valid_label_key(key)
                && valid_label_value(value)
                && ["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect))
            .then(|| Taint {
                key: key.to_string(),
                value: value.to_string(),
                effect: effect.to_string(),
            })
        });
        match parsed {
            Some(t) => taints.push(t),
            None => {
                return cx.err(
                    Some(t.span()),
                    format!("[kubelet] taint '{v}' is not KEY[=VALUE]:EFFECT"),
                    "e.g. \"dedicated=etcd:NoSchedule\"; the effect is NoSchedule, PreferNoSchedule or NoExecute",
                )
            }
        }
    }
    let mut cluster_dns = Vec::new();
    for d in &raw.cluster_dns {
        cluster_dns.push(d.get_ref().parse::<IpAddr>().or_else(|_| {
            cx.err(
                Some(d.span()),
                format!("[kubelet] cluster-dns '{}' is not an IP address", d.get_ref()),
                "the cluster DNS service address, e.g. \"10.96.0.10\"",
            )
        })?);
    }
    let cluster_domain = match &raw.cluster_domain {
        None => "cluster.local".to_string(),
        Some(d) if valid_hostname(d.get_ref()) => d.get_ref().clone(),
        Some(d) => {
            return cx.err(
                Some(d.span()),
                format!("[kubelet] cluster-domain '{}' is not a domain", d.get_ref()),
                "",
            )
        }
    };
    let api_server = match &raw.api_server {
        None => None,
        Some(u) => match crate::values::Url::parse(u.get_ref())
            .ok()
            .filter(|u| u.scheme == "https")
        {
            Some(url) => Some(url),
            None => {
                return cx.err(
                    Some(u.span()),
                    format!("[kubelet] api-server '{}' is not an https://HOST:PORT URL", u.get_ref()),
                    "the Kubernetes API server, e.g. \"https://10.0.0.10:6443\"",
                )
            }
        },
    };
    Ok(Kubelet {
        node_labels,
        taints,
        cluster_dns,
        cluster_domain,
        api_server,
    })
}
