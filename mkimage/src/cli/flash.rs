//! `cairn flash`: the command line around [`crate::flash`].

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::flash::{self, Host, Target};

#[derive(Debug, clap::Args)]
pub(super) struct FlashArgs {
    /// A build output directory, or its disk.raw or disk.raw.zst, with manifest.json and
    /// manifest.json.sig beside it; here or on a web server (http:// or https://: the
    /// directory's URL, or the image file's). From a server, disk.raw.zst is streamed when
    /// it is there, else disk.raw's data ranges are fetched by HTTP Range requests. A
    /// live.iso (`--format iso`) is written whole, checked against the signed
    /// outputs.json beside it.
    #[arg(value_name = "IMAGE")]
    image: String,
    /// The whole disk to write (/dev/sdX, /dev/disk/by-id/…), or an image file.
    #[arg(value_name = "TARGET")]
    target: PathBuf,
    /// The public key the image must be signed with (default: this machine's development
    /// key).
    #[arg(long, value_name = "PUBLIC_KEY")]
    key: Option<PathBuf>,
    /// Write the disk without asking.
    #[arg(long)]
    yes: bool,
    /// Check the image and the target, print the plan, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// When writing fails, keep what was written instead of wiping the partition table
    /// (for looking at a failure; the disk may not boot).
    #[arg(long)]
    preserve_on_error: bool,
}

pub(super) fn flash(args: FlashArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let FlashArgs {
        image,
        target,
        key,
        yes,
        dry_run,
        preserve_on_error,
    } = args;
    let img = flash::source::open(&image, key.as_deref())?;
    let t = flash::target::inspect(&Host::system(), &target, img.manifest.disk.size)?;
    for line in flash::describe(&img, &t) {
        writeln!(out, "{line}")?;
    }
    if dry_run {
        writeln!(out, "dry run: nothing written")?;
        return Ok(());
    }
    if let Target::Disk(d) = &t {
        if !yes {
            let stdin = std::io::stdin();
            if !stdin.is_terminal() {
                bail!(
                    "not asking without a terminal: everything on {} would be lost\n  hint: check the lines above, then pass --yes",
                    d.path.display()
                );
            }
            write!(
                err,
                "Everything on {} ({}) is lost. Type yes to write it: ",
                d.path.display(),
                crate::definition::Size(d.size)
            )?;
            err.flush()?;
            let mut answer = String::new();
            stdin.lock().read_line(&mut answer)?;
            if answer.trim() != "yes" {
                bail!("not confirmed: nothing written");
            }
        }
    }
    let tty = std::io::stderr().is_terminal();
    let report = flash::flash(&img, &t, &flash::Options { preserve_on_error }, &mut |line| {
        let _ = if tty && (line.starts_with("written ") || line.starts_with("read back ")) {
            write!(err, "\r{line}\x1b[K")
        } else if tty {
            writeln!(err, "\r{line}\x1b[K")
        } else {
            writeln!(err, "{line}")
        };
    })?;
    if tty {
        writeln!(err)?;
    }
    let m = &img.manifest;
    writeln!(
        out,
        "flashed {} {} to {}: {} in {} ranges written in {:.1} s ({:.1} MiB/s), read back{} in {:.1} s",
        m.name,
        m.version,
        target.display(),
        crate::definition::Size(report.written),
        report.ranges,
        report.write_secs,
        report.written as f64 / 1048576.0 / report.write_secs.max(0.001),
        if report.direct {
            " past the page cache"
        } else {
            " (page cache dropped first)"
        },
        report.verify_secs
    )?;
    if let Some(r) = report.reread {
        writeln!(out, "{r}")?;
    }
    Ok(())
}
