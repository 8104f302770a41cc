//! Smoke test of the real-systemd test bed (ci/testbed.sh + tests/support).
//! Skips loudly unless root with systemd-nspawn/debootstrap; required in CI.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Instant;

#[test]
fn testbed_smoke() {
    let Some(tb) = support::require_testbed() else {
        return;
    };

    // A server on host loopback that the containers must reach.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\nhello-outpost",
            );
        }
    });

    let handles: Vec<_> = ["smoke-a", "smoke-b"]
        .into_iter()
        .map(|name| {
            let tb = tb.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let c = tb.boot(name);
                eprintln!("{}: booted in {:?}", c.name(), t.elapsed());
                check_container(&c, port);
                c
            })
        })
        .collect();
    let containers: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("container thread panicked"))
        .collect();
    server.join().unwrap();

    // Both are up at the same time, with distinct PID 1s.
    let pids: Vec<u32> = containers.iter().map(|c| c.pid()).collect();
    assert_ne!(pids[0], pids[1]);

    // Reboot one: clean poweroff and boot on the same files.
    let c = &containers[0];
    c.must_sh("echo survived > /var/tmp/marker");
    let boot_id = c.must_sh("cat /proc/sys/kernel/random/boot_id");
    let before = c.must_sh("journalctl --list-boots --no-pager | wc -l");
    let t = Instant::now();
    c.reboot();
    eprintln!("{}: rebooted in {:?}", c.name(), t.elapsed());
    assert_running(c);
    assert_eq!(c.must_sh("cat /var/tmp/marker").trim(), "survived");
    let after = c.must_sh("journalctl --list-boots --no-pager | wc -l");
    assert!(
        after.trim().parse::<u32>().unwrap() > before.trim().parse::<u32>().unwrap(),
        "journal should show a new boot: before={before} after={after}"
    );
    // the kernel boot id is the host's (shared kernel); it must not matter
    let _ = boot_id;
    // linger survives the reboot: user@1001 comes back by itself
    c.wait_user("bob");

    // Power cut: SIGKILL, then boot on the same files.
    c.powercut_and_boot();
    assert_running(c);
    assert_eq!(c.must_sh("cat /var/tmp/marker").trim(), "survived");

    drop(containers);
}

fn assert_running(c: &support::Container) {
    let o = c.sh("systemctl is-system-running --wait");
    let state = o.out().to_string();
    assert!(
        state == "running" || state == "degraded",
        "[{}] system state {state:?}: {o:?}",
        c.name()
    );
    if state == "degraded" {
        eprintln!(
            "[{}] degraded, failed units:\n{}",
            c.name(),
            c.sh("systemctl --failed --no-pager").stdout
        );
    }
}

fn check_container(c: &support::Container, port: u16) {
    assert_running(c);

    // cloud-init is installed but disabled in normal boots
    c.must_sh("test -e /etc/cloud/cloud-init.disabled && command -v cloud-init");
    let o = c.sh("systemctl is-active cloud-init.service");
    assert_ne!(o.out(), "active", "cloud-init must not run by default");

    // host loopback is reachable (shared network namespace)
    let body = c.must_sh(&format!("curl -sS --max-time 10 http://127.0.0.1:{port}/"));
    assert_eq!(body.trim(), "hello-outpost");

    // alice: real logind session, user manager, passwordless sudo
    let out = c.must_sh_as(
        "alice",
        "set -e; id -un; echo XDG=$XDG_RUNTIME_DIR; echo HOME=$HOME; \
         loginctl show-user alice -p State -p Linger; \
         systemctl --user is-system-running --wait || true; \
         sudo -n true && echo SUDO-OK",
    );
    assert!(out.contains("alice\n"), "{out}");
    assert!(out.contains("XDG=/run/user/1000"), "{out}");
    assert!(out.contains("HOME=/home/alice"), "{out}");
    assert!(
        out.contains("State=active") || out.contains("State=online"),
        "{out}"
    );
    assert!(out.contains("SUDO-OK"), "{out}");
    let root_view = c.must_sh("loginctl show-user alice -p Name -p UID");
    assert!(root_view.contains("UID=1000"), "{root_view}");

    // bob: no sudo
    let o = c.sh_as("bob", "sudo -n true");
    assert!(!o.success(), "bob must not have sudo: {o:?}");

    // linger for bob: user@1001 comes up without a session
    c.must_sh("loginctl enable-linger bob");
    c.wait_user("bob");
    c.must_sh("systemctl is-active user@1001.service && test -S /run/user/1001/bus");
    let out = c.must_sh_as(
        "bob",
        "systemctl --user show-environment >/dev/null && echo USER-BUS-OK",
    );
    assert!(out.contains("USER-BUS-OK"), "{out}");

    // cp-in: files keep their mode
    let dir = std::env::temp_dir().join(format!("testbed-cp-{}", c.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("hello.sh");
    std::fs::write(&f, "#!/bin/sh\necho from-host\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    c.cp_in(&f, "/usr/local/bin/hello.sh");
    assert_eq!(c.must_sh("hello.sh").trim(), "from-host");
    c.cp_in(&dir, "/opt/fromhost");
    assert_eq!(
        c.must_sh_as("alice", "/opt/fromhost/hello.sh").trim(),
        "from-host"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
