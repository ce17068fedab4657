//! `cairn boot`: a built image under QEMU, with the boot-phase budget once it is ready.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::build::{self};
use cairn_vm::{self as vm, Accel, Vm, VmSpec};

#[derive(Debug, clap::Args)]
pub(super) struct BootArgs {
    /// A build output directory (holding disk.raw) or a disk image.
    image: PathBuf,
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
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
}

pub(super) fn boot(args: BootArgs, _out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let BootArgs {
        image,
        config_drive,
        timeout,
        until_ready,
        ssh_port,
        accel,
        memory,
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
    let spec = VmSpec {
        disk,
        config_drive,
        memory_mib: memory,
        cpus: 2,
        ssh_port: Some(ssh_port),
        accel,
        echo: true,
        writable: false,
        lan: None,
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
