//! Two nodes on one network segment (QEMU multicast sockets: no root, no tap) make a
//! WireGuard mesh with nothing but their config drives and a keyserver on the host: each
//! makes its key at first boot, tells the keyserver the public half when it enrolls, and
//! gets the other from the keyserver's peer list; then they ping each other over the
//! tunnel, with handshakes on both sides. No WireGuard key is on a drive or in the
//! keyserver's state.

use std::time::{Duration, Instant};

use cairn_qemu_tests::*;

fn node_toml(n: u8, keyserver_port: u16) -> String {
    format!(
        "version = 1\ngeneration = 1\nhostname = \"m-{n}\"\nrole = \"worker\"\n\n\
         [[network.interface]]\nmac = \"{}\"\naddress = [\"192.168.77.{n}/24\"]\n\n\
         [wireguard]\naddress = [\"10.90.0.{n}/24\"]\n\n\
         [key-agent]\nserver = \"https://10.0.2.2:{keyserver_port}\"\n",
        vm::Lan::member(1, n).mac
    )
}

#[test]
fn two_nodes_make_a_wireguard_mesh_through_the_keyserver() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("ks");
    let st = state.display().to_string();
    cairn(&["keyserver", "init", &st, "--cluster", "mesh"]);
    let port = free_port();
    let _server = serve(&state, port, &dir.path().join("keyserver.log"));
    let lan = free_port();
    let mut drives = Vec::new();
    for n in 1..=2u8 {
        let toml = dir.path().join(format!("m-{n}.toml"));
        std::fs::write(&toml, node_toml(n, port)).unwrap();
        let img = dir.path().join(format!("m-{n}.img"));
        let said = cairn(&[
            "config-drive",
            &toml.display().to_string(),
            "--out",
            &img.display().to_string(),
            "--keyserver",
            &st,
        ]);
        assert!(said.contains("makes its key at first boot"), "{said}");
        drives.push(img);
    }

    let _slot = vm_slot();
    let start = Instant::now();
    let mut vms: Vec<Vm> = drives
        .iter()
        .enumerate()
        .map(|(i, drive)| {
            let mut s = spec(&test_image().join("disk.raw"));
            s.config_drive = Some(drive.clone());
            s.lan = Some(vm::Lan::member(lan, i as u8 + 1));
            // Two guests on a two-core host: one CPU each.
            s.cpus = 1;
            s.memory_mib = 1024;
            Vm::start(&s).expect("starting QEMU")
        })
        .collect();
    for vm in &mut vms {
        vm.wait_for_line("cairn: ready ", BOOT_TIMEOUT * 2)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let both_ready = start.elapsed();
    for vm in &vms {
        let made = vm
            .lines()
            .iter()
            .position(|(_, l)| l.contains("made the WireGuard key of wg0"));
        let enrolled = vm.lines().iter().position(|(_, l)| l.contains("key agent enrolled m-"));
        assert!(
            made.is_some() && enrolled.is_some() && made < enrolled,
            "key made, then enrolled"
        );
    }
    let keys: Vec<String> = vms
        .iter_mut()
        .map(|vm| run_ok(vm, "wg show wg0 public-key").trim().to_string())
        .collect();

    // The first node to enroll learns of the second at its next poll (a minute at most);
    // then traffic makes the handshake.
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut pinged = [false, false];
    while pinged != [true, true] {
        assert!(
            Instant::now() < deadline,
            "no mesh after 4 minutes:\n{}\n{}",
            run_ok(
                &mut vms[0],
                "wg show wg0; journalctl -u cairn-key-agent --no-pager | tail -5"
            ),
            run_ok(
                &mut vms[1],
                "wg show wg0; journalctl -u cairn-key-agent --no-pager | tail -5"
            )
        );
        for (i, vm) in vms.iter_mut().enumerate() {
            let other = 2 - i;
            if !pinged[i] {
                let (_, code) = vm
                    .run(&format!("ping -c1 -W2 10.90.0.{other}"), COMMAND_TIMEOUT)
                    .unwrap();
                pinged[i] = code == 0;
            }
        }
        if pinged != [true, true] {
            std::thread::sleep(Duration::from_secs(5));
        }
    }
    let meshed = start.elapsed();
    for (i, vm) in vms.iter_mut().enumerate() {
        let dump = run_ok(vm, "wg show wg0 dump");
        let peer: Vec<&str> = dump.lines().nth(1).expect("one peer").split('\t').collect();
        assert_eq!(peer[0], keys[1 - i], "m-{} has the other's key:\n{dump}", i + 1);
        assert_eq!(peer[2], format!("192.168.77.{}:51820", 2 - i), "{dump}");
        assert_eq!(peer[3], format!("10.90.0.{}/32", 2 - i), "{dump}");
        assert!(peer[4].parse::<u64>().unwrap() > 0, "a handshake:\n{dump}");
        assert_eq!(peer[7], "25", "{dump}");
        let kept = run_ok(vm, "cat /var/lib/cairn/wireguard/wg0.peers.json");
        assert!(kept.contains(&keys[1 - i]), "{kept}");
        // The private key stays on the node: not in the keyserver's state.
        let secret = run_ok(vm, "cat /var/lib/cairn/wireguard/wg0.key").trim().to_string();
        assert_eq!(secret.len(), 44, "{secret}");
        let found = std::process::Command::new("grep")
            .args(["-rqF", &secret])
            .arg(&state)
            .status()
            .unwrap();
        assert!(!found.success(), "the keyserver's state holds a node's private key");
    }
    println!(
        "mesh: both nodes ready after {:.1} s, pinging each other over WireGuard after {:.1} s",
        both_ready.as_secs_f64(),
        meshed.as_secs_f64()
    );
}
