//! The component configuration Cairn ships as files: containerd's config, the unit preset.
//! (Rendered per-node files are golden-tested in node/tests/config.rs; the units are
//! checked by `systemd-analyze verify` inside the booted image in qemu-tests.)

use std::path::Path;

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

#[test]
fn containerd_runs_cri_with_the_systemd_cgroup_driver_and_state_on_var() {
    let text = std::fs::read_to_string(repo("overlays/base/etc/containerd/config.toml")).unwrap();
    let c: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(c["version"].as_integer(), Some(2));
    assert_eq!(c["root"].as_str(), Some("/var/lib/containerd"));
    assert_eq!(c["grpc"]["address"].as_str(), Some("/run/containerd/containerd.sock"));
    let cri = &c["plugins"]["io.containerd.grpc.v1.cri"];
    let runc = &cri["containerd"]["runtimes"]["runc"];
    assert_eq!(cri["containerd"]["default_runtime_name"].as_str(), Some("runc"));
    assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
    assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(true));
    assert!(c.get("disabled_plugins").is_none(), "CRI must not be disabled");
    // CNI config lives on the state partition: /etc/cni/net.d is a link there.
    assert_eq!(cri["cni"]["conf_dir"].as_str(), Some("/etc/cni/net.d"));
    let link = std::fs::read_link(repo("overlays/base/etc/cni/net.d")).unwrap();
    assert_eq!(link, Path::new("/var/lib/cni/net.d"));
    let tmpfiles = std::fs::read_to_string(repo("units/cairn.tmpfiles.conf")).unwrap();
    assert!(tmpfiles.contains("d /var/lib/cni/net.d "), "{tmpfiles}");
}

#[test]
fn the_preset_enables_every_cairn_unit_that_can_be_enabled() {
    let preset = std::fs::read_to_string(repo("units/90-cairn.preset")).unwrap();
    let mut checked = 0;
    for e in std::fs::read_dir(repo("units")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".service") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        if let Some(template) = name.strip_suffix("@.service") {
            // Templates are started by OnFailure= in the gates, not enabled.
            for gate in cairn_node_config::HEALTH_GATES {
                let unit = std::fs::read_to_string(repo(&format!("units/cairn-health-{gate}.service"))).unwrap();
                assert!(unit.contains(&format!("OnFailure={template}@{gate}.service")), "{gate}");
            }
            continue;
        }
        if let Some(trigger) = ["timer", "path"].into_iter().find(|e| p.with_extension(e).is_file()) {
            // Started by its timer or path unit, which is what the preset enables.
            let timer = format!("{}.{trigger}", name.trim_end_matches(".service"));
            let ttext = std::fs::read_to_string(p.with_extension(trigger)).unwrap();
            assert!(
                !cairn_mkimage::tree::customize::install_targets(&ttext).is_empty(),
                "{timer}"
            );
            assert_eq!(
                cairn_mkimage::tree::customize::preset_verdict(&preset, &timer),
                Some(true),
                "{timer}"
            );
            continue;
        }
        let installable = !cairn_mkimage::tree::customize::install_targets(&text).is_empty();
        assert!(installable, "{name} has no [Install] section, so nothing enables it");
        assert_eq!(
            cairn_mkimage::tree::customize::preset_verdict(&preset, &name),
            Some(true),
            "{name} is not enabled by units/90-cairn.preset"
        );
        checked += 1;
    }
    assert!(checked >= 8, "{checked}");
    // Gates are required by boot-complete.target, not merely wanted.
    for gate in cairn_node_config::HEALTH_GATES {
        let text = std::fs::read_to_string(repo(&format!("units/cairn-health-{gate}.service"))).unwrap();
        assert!(
            cairn_mkimage::tree::customize::install_targets(&text)
                .contains(&("boot-complete.target".to_string(), "requires")),
            "{gate}"
        );
        assert!(text.contains("Before=boot-complete.target"), "{gate}");
    }
}
