//! Cairn's dm-verity hash tree against `veritysetup format` on the same data and salt.
//!
//! `cargo bench --bench verity [-- SIZE_MIB]` prints both times, throughputs and the ratio
//! (Cairn / veritysetup; below 1.0 means Cairn is faster), and checks the outputs match.
#![allow(missing_docs)]

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use cairn_mkimage::verity::{self, VerityParams};

fn main() {
    let mib: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1024);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.img");
    // Deterministic, incompressible-looking data.
    let mut f = std::fs::File::create(&data).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let len = mib << 20;
    let params = VerityParams {
        salt: [0x5a; 32],
        uuid: *b"0123456789abcdef",
    };
    let uuid = "30313233-3435-3637-3839-616263646566";

    // Warm the page cache once so both read from memory.
    std::fs::read(&data).unwrap();
    let best = |runs: usize, mut f: Box<dyn FnMut() -> Vec<u8>>| {
        let mut t = f64::MAX;
        let mut out = Vec::new();
        for _ in 0..runs {
            let s = Instant::now();
            out = f();
            t = t.min(s.elapsed().as_secs_f64());
        }
        (t, out)
    };
    let d = data.clone();
    let (ours, tree) = best(
        3,
        Box::new(move || {
            let mut file = std::fs::File::open(&d).unwrap();
            verity::build(&mut file, len, &params).unwrap().hash_device
        }),
    );
    let reference = dir.path().join("ref.img");
    let (d, r) = (data.clone(), reference.clone());
    let (theirs, _) = best(
        3,
        Box::new(move || {
            let st = Command::new("veritysetup")
                .arg("format")
                .arg(&d)
                .arg(&r)
                .arg(format!("--salt={}", "5a".repeat(32)))
                .arg(format!("--uuid={uuid}"))
                .stdout(std::process::Stdio::null())
                .status()
                .expect("veritysetup (cryptsetup-bin) is needed for this benchmark");
            assert!(st.success());
            Vec::new()
        }),
    );
    assert_eq!(std::fs::read(&reference).unwrap(), tree, "outputs differ");
    let tp = |t: f64| mib as f64 / t;
    println!("verity over {mib} MiB (best of 3, page cache warm, identical output)");
    println!("  cairn        {ours:.3} s  {:.0} MiB/s", tp(ours));
    println!("  veritysetup  {theirs:.3} s  {:.0} MiB/s", tp(theirs));
    println!(
        "  ratio cairn/veritysetup = {:.2} (throughput ×{:.2})",
        ours / theirs,
        theirs / ours
    );
}
