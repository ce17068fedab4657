//! Pure renderers: a validated [`NodeConfig`] to the files the components read.
//!
//! [`plan`] lists every file a config produces (path, mode, owner, text); `apply` writes
//! them. Nothing here touches the system, so each output has a golden-file test.

use crate::{Etcd, Interface, KeyAgent, Kubelet, Match, NodeConfig, Wireguard};

/// Runtime directory for generated settings (a tmpfs: rebuilt every boot).
pub const RUN_DIR: &str = "/run/cairn";
/// Persistent per-node state on the state partition.
pub const STATE_DIR: &str = "/var/lib/cairn";
/// The effective config, as applied this boot (what the health gates read).
pub const EFFECTIVE: &str = "/run/cairn/node.toml";
/// etcd's environment file (the unit's drop-in reads it).
pub const ETCD_ENV: &str = "/run/cairn/etcd.env";
/// Where etcd serves /health over plain HTTP whatever its client TLS.
pub const ETCD_METRICS_URL: &str = "http://127.0.0.1:2381";
/// The kubelet's config file.
pub const KUBELET_CONFIG: &str = "/run/cairn/kubelet/config.yaml";
/// The kubelet's extra arguments.
pub const KUBELET_ENV: &str = "/run/cairn/kubelet/kubelet.env";
/// The kubelet's serving certificate and key from the key agent.
pub const KUBELET_SERVING: &str = "/var/lib/cairn/pki/kubelet-serving/current/both.pem";
/// The Kubernetes CA, from the key agent (the CA of the kubelet's client certificate).
pub const KUBERNETES_CA: &str = "/var/lib/cairn/pki/kubelet-client/current/bundle.pem";
/// The kubeconfig the kubelet registers with (`[kubelet] api-server` on a node with a key
/// agent).
pub const KUBECONFIG: &str = "/run/cairn/kubelet/kubeconfig";
/// The kubelet's client certificate and key from the key agent.
pub const KUBELET_CLIENT: &str = "/var/lib/cairn/pki/kubelet-client/current/both.pem";
/// Where sshd reads root's authorized keys (`AuthorizedKeysFile` in the image's sshd config).
pub const SSH_AUTHORIZED_KEYS: &str = "/run/cairn/ssh/authorized_keys/root";
/// sshd's settings for the keyserver's SSH certificates (included by the image's sshd
/// config).
pub const SSHD_KEYS: &str = "/run/cairn/ssh/sshd-keys.conf";
/// The key agent's bootstrap token (0600).
pub const KEY_AGENT_TOKEN: &str = "/var/lib/cairn/key-agent/token";
/// The key agent's server settings.
pub const KEY_AGENT_CONFIG: &str = "/var/lib/cairn/key-agent/server.toml";
/// containerd's CRI socket.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// Who owns a generated file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// root.
    Root,
    /// The `systemd-network` user (networkd must read the WireGuard key).
    SystemdNetwork,
}

/// One generated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Absolute path.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub owner: Owner,
    /// Contents.
    pub text: String,
}

/// A value a file format cannot carry: the second wall behind validation at parse time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to write {what} {value:?} into {format}: {why}")]
pub struct RenderError {
    /// The format (an environment file, a networkd file, …).
    pub format: &'static str,
    /// Which value.
    pub what: String,
    /// The value.
    pub value: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// How much of the printable range a format's value may use.
#[derive(Clone, Copy)]
enum Allow {
    /// One line without a trailing backslash, no surrounding blanks (systemd's line formats).
    Line,
    /// One line without quotes, backslashes, `$` or blanks: a word of a command line, or a
    /// value inside "…" in env files, YAML and TOML.
    Word,
}

/// Check one value for its format. Every renderer passes each value it did not write
/// itself through here.
fn val<'a>(format: &'static str, what: &str, v: &'a str, allow: Allow) -> Result<&'a str, RenderError> {
    let bad = |why| {
        Err(RenderError {
            format,
            what: what.to_string(),
            value: v.to_string(),
            why,
        })
    };
    if v.chars().any(char::is_control) {
        return bad("it holds a control character (a newline would start a new directive)");
    }
    if v.ends_with('\\') {
        return bad("a trailing backslash continues the line");
    }
    if v.trim() != v {
        return bad("it starts or ends with a blank");
    }
    if matches!(allow, Allow::Word) && v.contains(['"', '\\', '\'', '`', '$']) {
        return bad("it holds a quote, a backslash or a '$'");
    }
    if matches!(allow, Allow::Word) && v.contains(char::is_whitespace) {
        return bad("it holds a blank, which would split the argument");
    }
    Ok(v)
}

const ENV: &str = "an environment file";
const NETWORKD: &str = "a networkd file";
const YAML: &str = "the kubelet's YAML";
const ARGS: &str = "the kubelet's arguments";
const TOML: &str = "a TOML file";
const KEYS: &str = "authorized_keys";

fn header(comment: &str, c: &NodeConfig) -> String {
    format!(
        "{comment} Generated by cairn-node from node.toml generation {} ({}); do not edit.\n",
        c.generation, c.hostname
    )
}

/// etcd's environment: every setting as the `ETCD_*` variable etcd reads.
pub fn render_etcd_env(c: &NodeConfig, e: &Etcd) -> Result<String, RenderError> {
    let join = |urls: &[crate::Url]| urls.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(",");
    let mut listen_client = e.client_urls.clone();
    let scheme = &e.client_urls[0].scheme;
    let local = crate::Url {
        scheme: scheme.clone(),
        host: "127.0.0.1".into(),
        port: e.client_urls[0].port,
    };
    if !listen_client.contains(&local) {
        listen_client.push(local);
    }
    let cluster = e
        .initial_cluster
        .iter()
        .flat_map(|(name, urls)| urls.iter().map(move |u| format!("{name}={u}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut s = header("#", c);
    let mut kv = |k: &str, v: &str| -> Result<(), RenderError> {
        s.push_str(&format!("{k}={}\n", val(ENV, k, v, Allow::Word)?));
        Ok(())
    };
    kv("ETCD_NAME", &e.name)?;
    kv("ETCD_DATA_DIR", e.data_dir.as_str())?;
    kv("ETCD_LISTEN_CLIENT_URLS", &join(&listen_client))?;
    kv("ETCD_ADVERTISE_CLIENT_URLS", &join(&e.client_urls))?;
    kv("ETCD_LISTEN_PEER_URLS", &join(&e.peer_urls))?;
    kv("ETCD_INITIAL_ADVERTISE_PEER_URLS", &join(&e.peer_urls))?;
    kv("ETCD_INITIAL_CLUSTER", &cluster)?;
    kv("ETCD_INITIAL_CLUSTER_STATE", &e.initial_cluster_state)?;
    kv("ETCD_INITIAL_CLUSTER_TOKEN", "cairn")?;
    kv("ETCD_LISTEN_METRICS_URLS", ETCD_METRICS_URL)?;
    if let Some(t) = &e.tls {
        for (k, v) in [
            ("ETCD_CERT_FILE", &t.cert),
            ("ETCD_KEY_FILE", &t.key),
            ("ETCD_TRUSTED_CA_FILE", &t.ca),
            ("ETCD_PEER_CERT_FILE", &t.peer_cert),
            ("ETCD_PEER_KEY_FILE", &t.peer_key),
            ("ETCD_PEER_TRUSTED_CA_FILE", &t.peer_ca),
        ] {
            kv(k, v.as_str())?;
        }
        kv("ETCD_CLIENT_CERT_AUTH", "true")?;
        kv("ETCD_PEER_CLIENT_CERT_AUTH", "true")?;
    }
    Ok(s)
}

/// Where the WireGuard private key lives (state partition, mode 0600).
pub fn wireguard_key_path(w: &Wireguard) -> String {
    format!("{STATE_DIR}/wireguard/{}.key", w.interface)
}

/// The systemd-networkd `.netdev` that creates the interface with its key and peers.
pub fn render_wireguard_netdev(c: &NodeConfig, w: &Wireguard) -> Result<String, RenderError> {
    let mut s = header("#", c);
    s.push_str(&format!(
        "[NetDev]\nName={}\nKind=wireguard\nDescription=Cairn WireGuard\n\n[WireGuard]\nPrivateKeyFile={}\nListenPort={}\n",
        val(NETWORKD, "interface", &w.interface, Allow::Word)?,
        val(NETWORKD, "key file", &wireguard_key_path(w), Allow::Word)?,
        w.listen_port
    ));
    for p in &w.peers {
        s.push_str(&format!("\n[WireGuardPeer]\nPublicKey={}\n", p.public_key.to_base64()));
        if let Some(e) = &p.endpoint {
            s.push_str(&format!(
                "Endpoint={}\n",
                val(NETWORKD, "peer endpoint", e, Allow::Word)?
            ));
        }
        let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
        s.push_str(&format!("AllowedIPs={}\n", ips.join(",")));
        if let Some(k) = p.persistent_keepalive {
            s.push_str(&format!("PersistentKeepalive={k}\n"));
        }
    }
    Ok(s)
}

/// The `.network` that gives the interface its addresses.
pub fn render_wireguard_network(c: &NodeConfig, w: &Wireguard) -> Result<String, RenderError> {
    let mut s = header("#", c);
    s.push_str(&format!(
        "[Match]\nName={}\n\n[Network]\n",
        val(NETWORKD, "interface", &w.interface, Allow::Word)?
    ));
    for a in &w.address {
        s.push_str(&format!("Address={a}\n"));
    }
    Ok(s)
}

/// The kubelet's `KubeletConfiguration`.
pub fn render_kubelet_config(c: &NodeConfig, k: &Kubelet) -> Result<String, RenderError> {
    let mut s = header("#", c);
    s.push_str(&format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1\n\
         kind: KubeletConfiguration\n\
         cgroupDriver: systemd\n\
         containerRuntimeEndpoint: unix://{CONTAINERD_SOCKET}\n\
         resolvConf: /run/systemd/resolve/resolv.conf\n\
         staticPodPath: {STATE_DIR}/kubelet/manifests\n\
         healthzBindAddress: 127.0.0.1\n\
         healthzPort: 10248\n\
         {}\
         authentication:\n  anonymous:\n    enabled: false\n  webhook:\n    enabled: true\n{}\
         authorization:\n  mode: Webhook\n\
         clusterDomain: {}\n",
        if c.key_agent.is_some() {
            // The key agent's certificates; the kubelet rereads the files when they change.
            format!(
                "rotateCertificates: false\nserverTLSBootstrap: false\ntlsCertFile: {KUBELET_SERVING}\ntlsPrivateKeyFile: {KUBELET_SERVING}\n"
            )
        } else {
            "rotateCertificates: true\n".to_string()
        },
        if c.key_agent.is_some() {
            format!("  x509:\n    clientCAFile: {KUBERNETES_CA}\n")
        } else {
            String::new()
        },
        val(YAML, "cluster-domain", &k.cluster_domain, Allow::Word)?
    ));
    if !k.cluster_dns.is_empty() {
        s.push_str("clusterDNS:\n");
        for d in &k.cluster_dns {
            s.push_str(&format!("  - {d}\n"));
        }
    }
    if !k.taints.is_empty() {
        s.push_str("registerWithTaints:\n");
        for t in &k.taints {
            s.push_str(&format!(
                "  - key: \"{}\"\n    value: \"{}\"\n    effect: {}\n",
                val(YAML, "taint key", &t.key, Allow::Word)?,
                val(YAML, "taint value", &t.value, Allow::Word)?,
                val(YAML, "taint effect", &t.effect, Allow::Word)?
            ));
        }
    }
    Ok(s)
}

/// The kubelet's command-line arguments that have no config-file field.
pub fn render_kubelet_env(c: &NodeConfig, k: &Kubelet) -> Result<String, RenderError> {
    let mut args = vec![
        format!("--config={KUBELET_CONFIG}"),
        format!(
            "--hostname-override={}",
            val(ARGS, "hostname", &c.hostname, Allow::Word)?
        ),
    ];
    if !k.node_labels.is_empty() {
        let mut labels = Vec::new();
        for (k, v) in &k.node_labels {
            if k.contains([',', '=']) || v.contains([',', '=']) {
                return Err(RenderError {
                    format: ARGS,
                    what: "node label".into(),
                    value: format!("{k}={v}"),
                    why: "a ',' or '=' would split it into other labels",
                });
            }
            labels.push(format!(
                "{}={}",
                val(ARGS, "node label", k, Allow::Word)?,
                val(ARGS, "node label", v, Allow::Word)?
            ));
        }
        args.push(format!("--node-labels={}", labels.join(",")));
    }
    if c.kubelet.api_server.is_some() && c.key_agent.is_some() {
        args.push(format!("--kubeconfig={KUBECONFIG}"));
    }
    Ok(format!("{}KUBELET_ARGS=\"{}\"\n", header("#", c), args.join(" ")))
}

/// The kubelet's kubeconfig: the API server, trusted with the Kubernetes CA, and the
/// kubelet's client certificate from the key agent (a node without a key agent has no
/// credentials to register with, so it gets none and runs standalone).
pub fn render_kubeconfig(c: &NodeConfig, api_server: &crate::values::Url) -> Result<String, RenderError> {
    let url = api_server.to_string();
    let server = val(YAML, "api-server", &url, Allow::Word)?;
    Ok(format!(
        "{}apiVersion: v1\n\
         kind: Config\n\
         clusters:\n  - name: cairn\n    cluster:\n      server: \"{server}\"\n      certificate-authority: {KUBERNETES_CA}\n\
         users:\n  - name: kubelet\n    user:\n      client-certificate: {KUBELET_CLIENT}\n      client-key: {KUBELET_CLIENT}\n\
         contexts:\n  - name: cairn\n    context:\n      cluster: cairn\n      user: kubelet\n\
         current-context: cairn\n",
        header("#", c)
    ))
}

/// A systemd-networkd `.network` for one configured interface.
pub fn render_network(c: &NodeConfig, i: &Interface) -> Result<String, RenderError> {
    let mut s = header("#", c);
    match &i.matches {
        Match::Name(n) => s.push_str(&format!(
            "[Match]\nName={}\n",
            val(NETWORKD, "interface name", n, Allow::Word)?
        )),
        Match::Mac(m) => s.push_str(&format!(
            "[Match]\nMACAddress={}\n",
            val(NETWORKD, "MAC address", m, Allow::Word)?
        )),
    }
    s.push_str(&format!("\n[Network]\nDHCP={}\n", if i.dhcp { "yes" } else { "no" }));
    for a in &i.address {
        s.push_str(&format!("Address={a}\n"));
    }
    for g in &i.gateway {
        s.push_str(&format!("Gateway={g}\n"));
    }
    for d in &i.dns {
        s.push_str(&format!("DNS={d}\n"));
    }
    for r in &i.routes {
        s.push_str(&format!("\n[Route]\nDestination={}\nGateway={}\n", r.to, r.via));
    }
    Ok(s)
}

/// root's authorized_keys.
pub fn render_authorized_keys(c: &NodeConfig) -> Result<String, RenderError> {
    let mut s = header("#", c);
    for k in &c.ssh_authorized_keys {
        s.push_str(val(KEYS, "key", k, Allow::Line)?);
        s.push('\n');
    }
    Ok(s)
}

/// The key agent's server settings (the token goes in its own 0600 file).
pub fn render_key_agent(c: &NodeConfig, k: &KeyAgent) -> Result<String, RenderError> {
    Ok(format!(
        "{}server = \"{}\"\nca-fingerprint = \"sha256:{}\"\ntoken-file = \"{KEY_AGENT_TOKEN}\"\n",
        header("#", c),
        val(TOML, "key agent server", &k.server.to_string(), Allow::Word)?,
        hex::encode(k.ca_fingerprint)
    ))
}

/// Every file `config` produces. `effective` is the node.toml text it was parsed from.
///
/// Fails, writing nothing, when a value cannot be represented in its file's format (which
/// validation at parse time already rules out: this is the second wall).
pub fn plan(c: &NodeConfig, effective: &str) -> Result<Vec<Output>, RenderError> {
    let file = |path: &str, mode, owner, text: String| Output {
        path: path.to_string(),
        mode,
        owner,
        text,
    };
    let mut out = vec![file(EFFECTIVE, 0o600, Owner::Root, effective.to_string())];
    if let Some(e) = &c.etcd {
        out.push(file(ETCD_ENV, 0o644, Owner::Root, render_etcd_env(c, e)?));
    }
    if let Some(w) = &c.wireguard {
        let base = format!("/run/systemd/network/50-cairn-{}", w.interface);
        // Without a key in node.toml the node makes its own (cairn-node apply), once, and
        // keeps it: it is not an output of the config.
        if let Some(key) = &w.private_key {
            out.push(file(
                &wireguard_key_path(w),
                0o600,
                Owner::SystemdNetwork,
                format!("{}\n", key.to_base64()),
            ));
        }
        out.push(file(
            &format!("{base}.netdev"),
            0o644,
            Owner::Root,
            render_wireguard_netdev(c, w)?,
        ));
        out.push(file(
            &format!("{base}.network"),
            0o644,
            Owner::Root,
            render_wireguard_network(c, w)?,
        ));
    }
    for (n, i) in c.network.iter().enumerate() {
        out.push(file(
            &format!("/run/systemd/network/40-cairn-{n}.network"),
            0o644,
            Owner::Root,
            render_network(c, i)?,
        ));
    }
    if !c.ssh_authorized_keys.is_empty() {
        out.push(file(
            SSH_AUTHORIZED_KEYS,
            0o644,
            Owner::Root,
            render_authorized_keys(c)?,
        ));
    }
    if let Some(k) = &c.key_agent {
        out.push(file(KEY_AGENT_CONFIG, 0o644, Owner::Root, render_key_agent(c, k)?));
        // The key agent writes both files; sshd reads the CA at every login and the host
        // certificate when it starts or reloads (the agent reloads it).
        out.push(file(
            SSHD_KEYS,
            0o644,
            Owner::Root,
            format!(
                "{}HostCertificate /var/lib/cairn/ssh/ssh_host_ed25519_key-cert.pub\nTrustedUserCAKeys /var/lib/cairn/pki/ssh/user-ca.pub\n",
                header("#", c)
            ),
        ));
        out.push(file(
            KEY_AGENT_TOKEN,
            0o600,
            Owner::Root,
            format!(
                "{}\n",
                val(ENV, "bootstrap token", &k.bootstrap_token.to_string(), Allow::Word)?
            ),
        ));
    }
    out.push(file(
        KUBELET_CONFIG,
        0o644,
        Owner::Root,
        render_kubelet_config(c, &c.kubelet)?,
    ));
    out.push(file(
        KUBELET_ENV,
        0o644,
        Owner::Root,
        render_kubelet_env(c, &c.kubelet)?,
    ));
    if let (Some(api), Some(_)) = (&c.kubelet.api_server, &c.key_agent) {
        out.push(file(KUBECONFIG, 0o644, Owner::Root, render_kubeconfig(c, api)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cidr, Peer, Taint, WgKey};

    fn wg() -> Wireguard {
        Wireguard {
            interface: "wg0".into(),
            private_key: Some(WgKey([1; 32])),
            endpoint: None,
            address: vec![Cidr::parse("10.90.0.1/24").unwrap()],
            listen_port: 51820,
            peers: vec![Peer {
                public_key: WgKey([2; 32]),
                endpoint: Some("192.0.2.2:51820".into()),
                allowed_ips: vec![Cidr::parse("10.90.0.2/32").unwrap()],
                persistent_keepalive: None,
            }],
        }
    }

    /// Values validation would have refused, put straight into a config: every renderer
    /// refuses them, and nothing is planned.
    #[test]
    fn renderers_refuse_what_their_format_cannot_carry() {
        type Edit = Box<dyn Fn(&mut NodeConfig)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "ETCD_NAME",
                Box::new(|c| c.etcd.as_mut().unwrap().name = "a\nETCD_FORCE_NEW_CLUSTER=true".into()),
            ),
            (
                "ETCD_INITIAL_CLUSTER_STATE",
                Box::new(|c| c.etcd.as_mut().unwrap().initial_cluster_state = "new\\".into()),
            ),
            (
                "interface",
                Box::new(|c| c.wireguard.as_mut().unwrap().interface = "wg0\n[Match]".into()),
            ),
            (
                "peer endpoint",
                Box::new(|c| c.wireguard.as_mut().unwrap().peers[0].endpoint = Some("h:1 x".into())),
            ),
            (
                "cluster-domain",
                Box::new(|c| c.kubelet.cluster_domain = "a\"\nb".into()),
            ),
            (
                "taint key",
                Box::new(|c| {
                    c.kubelet.taints = vec![Taint {
                        key: "k\"".into(),
                        value: String::new(),
                        effect: "NoSchedule".into(),
                    }]
                }),
            ),
            (
                "node label",
                Box::new(|c| _ = c.kubelet.node_labels.insert("a".into(), "b,c=d".into())),
            ),
            (
                "node label",
                Box::new(|c| _ = c.kubelet.node_labels.insert("a b".into(), "c".into())),
            ),
            ("hostname", Box::new(|c| c.hostname = "h\" --x=\"".into())),
            (
                "key",
                Box::new(|c| c.ssh_authorized_keys = vec!["ssh-ed25519 AAAA x\nssh-rsa AAAA evil".into()]),
            ),
            (
                "key",
                Box::new(|c| c.ssh_authorized_keys = vec!["ssh-ed25519 AAAA x\0".into()]),
            ),
        ];
        for (what, edit) in cases {
            let mut c = NodeConfig::single_node();
            c.wireguard = Some(wg());
            assert!(plan(&c, "").is_ok());
            edit(&mut c);
            let e = plan(&c, "").expect_err(what);
            assert_eq!(e.what, what, "{e}");
        }
    }
}
