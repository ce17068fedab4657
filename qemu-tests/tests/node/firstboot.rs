//! First boot from config drives, under QEMU + OVMF, four boots of one disk: a newer
//! generation replaces the saved config (DHCP plus a static address, then a static address
//! alone); a malformed drive boots with one message and without its settings, and the
//! power cut after it is mended; an older generation does not replace it. A NoCloud seed.
//! (Three nodes personalized from one image by three drives: the cluster test.)

use std::path::Path;
use std::process::Command;

use cairn_qemu_tests::*;

fn node(hostname: &str, generation: u32, network: &str, key: &str) -> String {
    format!(
        "version = 1\ngeneration = {generation}\nhostname = \"{hostname}\"\n\n{network}\n[ssh]\nauthorized-keys = [\"{key}\"]\n"
    )
}

/// Boot `disk` with `drive` attached and SSH forwarded; wait for the ready line.
fn boot_ready(disk: &Path, drive: Option<&Path>, writable: bool) -> (Vm, u16) {
    let port = free_port();
    let mut s = spec(disk);
    s.config_drive = drive.map(Path::to_owned);
    s.ssh_port = Some(port);
    s.writable = writable;
    let mut vm = Vm::start(&s).expect("starting QEMU");
    vm.wait_for_line("cairn: ready ", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    (vm, port)
}

fn console_line(vm: &Vm, needle: &str) -> String {
    vm.lines()
        .iter()
        .find(|(_, l)| l.contains(needle))
        .map(|(_, l)| l.clone())
        .unwrap_or_else(|| panic!("no console line with '{needle}'"))
}

fn mkfs_drive(dir: &Path, name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    // A drive made by the reference tools, not by Cairn, so bad content can be written.
    let img = dir.join(format!("{name}.img"));
    let st = Command::new("mkfs.fat")
        .args(["-C", "-n", "CAIRN"])
        .arg(&img)
        .arg("2048")
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    for (file, body) in files {
        let src = dir.join(format!("{name}-{file}"));
        std::fs::write(&src, body).unwrap();
        let st = Command::new("mcopy")
            .arg("-i")
            .arg(&img)
            .arg(&src)
            .arg(format!("::{file}"))
            .status()
            .unwrap();
        assert!(st.success());
    }
    img
}

/// A static address only (the one QEMU's user network forwards SSH to), no DHCP.
const FIXED: &str = "[[network.interface]]\nname = \"en*\"\naddress = [\"10.0.2.15/24\"]\ngateway = [\"10.0.2.2\"]\ndns = [\"10.0.2.3\"]\n";

#[test]
fn generations_bad_drives_and_power_cuts_on_one_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = ssh_keypair(dir.path(), "admin");
    let (stranger, _) = ssh_keypair(dir.path(), "stranger");
    let (_tmp, disk) = copy_disk("generations");
    // A disk with room to grow into, as a real one has (first boot grows /var into it).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let _slot = vm_slot();
    let gen = |g: u32, host: &str, network: &str| config_drive(dir.path(), host, &node(host, g, network, &public));
    // What the node says about its name, addresses and saved config.
    const ADDRESSES: &str = "hostname; ip -br -4 addr show scope global; grep hostname /var/lib/cairn/node.toml";

    // Generation 2 on a fresh node: saved. DHCP plus a second, static address.
    let dhcp = "[[network.interface]]\nname = \"en*\"\ndhcp = true\naddress = [\"10.0.2.77/24\"]\n";
    let (mut vm, port) = boot_ready(&disk, Some(&gen(2, "gen-two", dhcp)), true);
    let saved = console_line(&vm, "cairn: config drive CAIRN");
    assert!(
        saved.contains("saved: generation 2, no saved config; host gen-two"),
        "{saved}"
    );
    let (out, ok) = ssh(&mut vm, port, &key, ADDRESSES);
    assert!(ok, "ssh as root with the drive's key failed: {out}");
    assert_eq!(out.lines().next(), Some("gen-two"), "{out}");
    assert!(out.contains("10.0.2.77/24"), "the static address is missing: {out}");
    assert!(out.contains("10.0.2.15/24"), "the DHCP address is missing: {out}");
    assert!(out.contains("hostname = \"gen-two\""), "saved config: {out}");
    vm.kill();

    // Generation 3: replaces it. A static address only: the second address is gone. A key
    // that is not on any drive does not get in; there is no password login either.
    let (mut vm, port) = boot_ready(&disk, Some(&gen(3, "gen-three", FIXED)), true);
    let (out, ok) = ssh(&mut vm, port, &key, ADDRESSES);
    assert!(ok, "{out}");
    assert_eq!(out.lines().next(), Some("gen-three"), "{out}");
    assert!(out.contains("10.0.2.15/24") && !out.contains("10.0.2.77"), "{out}");
    assert!(out.contains("hostname = \"gen-three\""), "saved config: {out}");
    let (out, ok) = ssh(&mut vm, port, &stranger, "true");
    assert!(!ok && out.contains("Permission denied"), "{out}");
    vm.kill();

    // A malformed drive (and its hostname) is refused with one message; the node keeps
    // generation 3 and stays reachable over SSH with the key it already has.
    let bad = mkfs_drive(
        dir.path(),
        "bad",
        &[("node.toml", "version = 1\ngeneration = 9\nhostname = \"evil\n")],
    );
    let (mut vm, port) = boot_ready(&disk, Some(&bad), true);
    let line = console_line(&vm, "cairn: config drive CAIRN");
    assert!(line.contains("refused: node.toml:3: "), "{line}");
    assert!(line.ends_with("keeping the saved config (generation 3)"), "{line}");
    // Then the power goes as it can right after first boot: ext4 kept the names of files
    // written without fsync but not their contents (both seen in CI, QEMU killed ~30 s
    // after they were written): the SSH host key (sshd then refused to start) and
    // containerd's introspection UUID (its health gate then failed), each for good.
    let (out, ok) = ssh(
        &mut vm,
        port,
        &key,
        "hostname; journalctl -b -u cairn-firstboot --no-pager | grep -c 'refused: node.toml:3'; \
         cd /var/lib/cairn/ssh && : > ssh_host_ed25519_key && \
         : > /var/lib/containerd/io.containerd.grpc.v1.introspection/uuid && sync",
    );
    assert!(ok, "{out}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["gen-three", "1"], "{out}");
    vm.kill();

    // Generation 1 afterwards: ignored, with a log line; the saved config stays. The
    // broken host key is made anew and sshd lets the admin in; containerd's broken file is
    // removed before it starts, so its gate passed (the ready line came).
    let (mut vm, port) = boot_ready(&disk, Some(&gen(1, "gen-one", "")), true);
    let line = console_line(&vm, "cairn: config drive CAIRN");
    assert!(
        line.contains("ignored: generation 1 is not newer than the saved generation 3"),
        "{line}"
    );
    let (out, ok) = ssh(
        &mut vm,
        port,
        &key,
        "hostname; journalctl -b -u containerd --no-pager | grep -c 'introspection UUID file held 0 bytes'",
    );
    assert!(ok, "{out}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["gen-three", "1"], "{out}");
    let line = console_line(&vm, "cairn: SSH host key ed25519");
    assert!(line.contains(": made anew: the saved key did not load"), "{line}");
    vm.kill();
}

#[test]
fn a_nocloud_drive_from_cloud_localds_personalizes_a_node_on_a_bigger_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = ssh_keypair(dir.path(), "cloud-admin");
    let user_data = dir.path().join("user-data");
    let meta_data = dir.path().join("meta-data");
    std::fs::write(
        &user_data,
        format!("#cloud-config\nssh_authorized_keys:\n  - {public}\n"),
    )
    .unwrap();
    std::fs::write(&meta_data, "instance-id: iid-cairn-test-1\nlocal-hostname: cloudy\n").unwrap();
    let seed = dir.path().join("seed.img");
    let st = Command::new("cloud-localds")
        .arg(&seed)
        .arg(&user_data)
        .arg(&meta_data)
        .status()
        .unwrap();
    assert!(st.success(), "cloud-localds failed");
    // The disk a node is flashed to is bigger than the image: 6 GiB here.
    let (_tmp, disk) = copy_disk("nocloud");
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.set_len(6 << 30).unwrap();
    drop(f);
    let _slot = vm_slot();
    let (mut vm, port) = boot_ready(&disk, Some(&seed), true);
    let line = console_line(&vm, "cairn: config drive cidata");
    assert!(
        line.contains("saved: instance-id iid-cairn-test-1, no saved config; host cloudy"),
        "{line}"
    );
    let grown = console_line(&vm, "cairn: state partition");
    assert!(grown.contains("grown from 256 MiB to"), "{grown}");
    let (out, ok) = ssh(
        &mut vm,
        port,
        &key,
        "hostname; df -B1 --output=size /var | tail -1; \
         systemctl show -P ExecMainStartTimestampMonotonic -P ExecMainExitTimestampMonotonic cairn-firstboot",
    );
    assert!(ok, "{out}");
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields[0], "cloudy", "{out}");
    let var: u64 = fields[1].parse().unwrap();
    assert!(var > 3 << 30, "/var is {var} bytes after growing into the 6 GiB disk");
    let (start, end): (u64, u64) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
    eprintln!(
        "first boot personalization (cairn-firstboot.service, incl. growing /var to {:.1} GiB): {:.2} s",
        var as f64 / (1u64 << 30) as f64,
        (end - start) as f64 / 1e6
    );
    vm.kill();
}
