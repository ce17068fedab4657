//! `cairn boot`: a built image under QEMU, with the boot-phase budget once it is ready.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::build::{self};
use cairn_vm::{self as vm, Accel, Medium, Vm, VmSpec};

#[derive(Debug, clap::Args)]
pub(super) struct BootArgs {
    /// A build output directory (holding disk.raw) or a disk image (`live.iso` too: it is
    /// a disk as well as a CD).
    image: PathBuf,
    /// How the image is attached: `cairn boot OUT/live.iso --medium cdrom` (or `usb`)
    /// boots the live ISO as firmware reads a CD (or a USB stick).
    #[arg(long, value_enum, default_value_t = Medium::Disk, conflicts_with = "cluster")]
    medium: Medium,
    /// A config drive image to attach as a second disk.
    #[arg(long, value_name = "FILE")]
    config_drive: Option<PathBuf>,
    /// Stop after this many seconds (exit status 1 if the node was not ready by then).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Power off as soon as the node is ready, after printing the boot-phase budget.
    #[arg(long)]
    until_ready: bool,
    /// Host port forwarded to the node's SSH port.
    #[arg(long, default_value_t = 2222)]
    ssh_port: u16,
    /// CPU acceleration: auto tries KVM and falls back to TCG.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Guest memory in MiB (default: 2048; 1024 for each node of a cluster).
    #[arg(long)]
    memory: Option<u32>,
    /// Virtual CPUs of each VM (default: 2; 1 for each node of a cluster).
    #[arg(long)]
    cpus: Option<u32>,
    /// Boot every node of this cluster file at once, each with its drive from --drives,
    /// all on one network segment that only they share (QEMU multicast sockets: no root,
    /// no tap), each node's card by its `mac`. Consoles are shown line by line with the
    /// node's name; SSH of node n is on --ssh-port + n - 1. Start the cluster's keyserver
    /// on this machine first, as 10.0.2.2 (`cairn keyserver serve STATE --listen
    /// 127.0.0.1:PORT --name 10.0.2.2`).
    #[arg(long, value_name = "FILE", requires = "drives", conflicts_with = "config_drive")]
    cluster: Option<PathBuf>,
    /// The directory `cairn config-drive --cluster FILE --out DIR` wrote (NAME.img for each
    /// node).
    #[arg(long, value_name = "DIR", requires = "cluster")]
    drives: Option<PathBuf>,
}

pub(super) fn boot(args: BootArgs, _out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let BootArgs {
        image,
        medium,
        config_drive,
        timeout,
        until_ready,
        ssh_port,
        accel,
        memory,
        cpus,
        cluster,
        drives,
    } = args;
    let disk = if image.is_dir() {
        image.join(build::DISK_FILE)
    } else {
        image.clone()
    };
    if !disk.is_file() {
        bail!(
            "{} is not a disk image or a build output directory (run `cairn build` first)",
            image.display()
        );
    }
    if let (Some(file), Some(drives)) = (cluster, drives) {
        let opts = ClusterBoot {
            timeout,
            until_ready,
            ssh_port,
            accel,
            memory: memory.unwrap_or(1024),
            cpus: cpus.unwrap_or(1),
        };
        return boot_cluster(&disk, &file, &drives, &opts, err);
    }
    let spec = VmSpec {
        disk,
        config_drive,
        memory_mib: memory.unwrap_or(2048),
        cpus: cpus.unwrap_or(2),
        ssh_port: Some(ssh_port),
        accel,
        echo: true,
        writable: false,
        medium,
        lan: None,
        label: None,
    };
    let mut vm = Vm::start(&spec)?;
    writeln!(
        err,
        "cairn: booting {} ({}, SSH on 127.0.0.1:{ssh_port}); Ctrl-C stops",
        image.display(),
        if vm.accel == Accel::Kvm { "KVM" } else { "TCG" }
    )?;
    // Keyboard to the serial console.
    let stdin_to_vm = vm.console_input();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if stdin_to_vm.send(&line).is_err() {
                break;
            }
            line.clear();
        }
    });
    let limit = std::time::Duration::from_secs(timeout.unwrap_or(if until_ready { 900 } else { u64::MAX / 4 }));
    let ready = vm.wait_for_line("cairn: ready ", limit);
    let phases = vm::boot_phases(&vm.lines());
    match ready {
        Ok(_) => {
            writeln!(err, "\n{}", vm::render_budget(&phases, vm.accel))?;
            if until_ready {
                vm.kill();
                return Ok(());
            }
        }
        Err(e) => {
            vm.kill();
            return Err(e).context("the node did not become ready");
        }
    }
    let left = limit.saturating_sub(vm.elapsed());
    match vm.wait_exit(left) {
        Some(status) => writeln!(err, "cairn: QEMU exited ({status})")?,
        None => {
            writeln!(err, "cairn: --timeout reached, stopping the VM")?;
            vm.kill();
        }
    }
    Ok(())
}

/// How `cairn boot --cluster` runs its VMs.
struct ClusterBoot {
    timeout: Option<u64>,
    until_ready: bool,
    ssh_port: u16,
    accel: Accel,
    memory: u32,
    cpus: u32,
}

/// Every node of the cluster file at once, on one segment.
fn boot_cluster(
    disk: &std::path::Path,
    file: &std::path::Path,
    drives: &std::path::Path,
    opts: &ClusterBoot,
    err: &mut dyn Write,
) -> Result<()> {
    let cluster = crate::cluster::Cluster::read(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    if cluster.network.is_none() {
        bail!(
            "{}: `cairn boot --cluster` needs [network]: on their segment the nodes reach each other only at the static addresses it gives them",
            file.display()
        );
    }
    let mut nodes = Vec::new();
    // Every node's MAC before any drive: a cluster file that needs changing makes new drives.
    if let Some((i, n)) = cluster.nodes.iter().enumerate().find(|(_, n)| n.mac.is_none()) {
        bail!(
            "{}: node {} has no mac: `cairn boot --cluster` puts each node's second card on the segment with the MAC its node.toml matches\n  hint: give every [[node]] one, e.g. mac = \"52:54:00:77:00:{:02x}\", then write the drives again",
            file.display(),
            n.name,
            i + 1
        );
    }
    for (i, n) in cluster.nodes.iter().enumerate() {
        let mac = n.mac.clone().expect("every node has a mac (checked above)");
        let drive = drives.join(format!("{}.img", n.name));
        if !drive.is_file() {
            bail!(
                "{} is missing: write the drives first (cairn config-drive --cluster {} --out {})",
                drive.display(),
                file.display(),
                drives.display()
            );
        }
        let ssh = opts
            .ssh_port
            .checked_add(i as u16)
            .context("--ssh-port leaves no port for every node")?;
        nodes.push((n.name.clone(), mac, drive, ssh));
    }
    // Any free UDP port names the segment; only these VMs join its multicast group.
    let lan_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .context("picking a port for the segment")?
        .port();
    let mut vms = Vec::new();
    for (name, mac, drive, ssh) in &nodes {
        let spec = VmSpec {
            disk: disk.to_owned(),
            config_drive: Some(drive.clone()),
            memory_mib: opts.memory,
            cpus: opts.cpus,
            ssh_port: Some(*ssh),
            accel: opts.accel,
            echo: true,
            writable: false,
            medium: Medium::Disk,
            lan: Some(vm::Lan {
                port: lan_port,
                mac: mac.clone(),
            }),
            label: Some(name.clone()),
        };
        vms.push(Vm::start(&spec).with_context(|| format!("starting {name}"))?);
    }
    writeln!(
        err,
        "cairn: booting cluster {} ({}): {}; the consoles are read-only here, log in with ssh -p PORT root@127.0.0.1; Ctrl-C stops every node",
        cluster.name,
        if vms.iter().all(|v| v.accel == Accel::Kvm) { "KVM" } else { "TCG" },
        nodes
            .iter()
            .map(|(n, _, _, p)| format!("{n} (SSH {p})"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    let limit =
        std::time::Duration::from_secs(
            opts.timeout
                .unwrap_or(if opts.until_ready { 1800 } else { u64::MAX / 4 }),
        );
    let started = std::time::Instant::now();
    let mut ready = Vec::new();
    for (vm, (name, ..)) in vms.iter_mut().zip(&nodes) {
        let left = limit.saturating_sub(started.elapsed());
        match vm.wait_for_line("cairn: ready ", left) {
            Ok(i) => {
                let line = vm.lines()[i].1.clone();
                let at = line
                    .find("cairn: ready ")
                    .map_or(line.as_str(), |p| &line[p..])
                    .to_string();
                ready.push(format!("{name}: {at}"));
            }
            Err(e) => {
                for v in vms {
                    v.kill();
                }
                return Err(e).with_context(|| format!("{name} did not become ready"));
            }
        }
    }
    writeln!(err, "\ncairn: every node is ready:\n  {}", ready.join("\n  "))?;
    if opts.until_ready {
        for v in vms {
            v.kill();
        }
        return Ok(());
    }
    // Until every VM has stopped, or the time is up.
    loop {
        let mut running = 0;
        for vm in &mut vms {
            if vm.wait_exit(std::time::Duration::from_millis(200)).is_none() {
                running += 1;
            }
        }
        if running == 0 {
            writeln!(err, "cairn: every node has stopped")?;
            return Ok(());
        }
        if started.elapsed() >= limit {
            writeln!(err, "cairn: --timeout reached, stopping every node")?;
            for v in vms {
                v.kill();
            }
            return Ok(());
        }
    }
}
