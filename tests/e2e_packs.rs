//! End-to-end: packs on real systemd (docs/PACKS.md). The host's admin validates, installs,
//! lists, grants and removes packs; the running agent re-reads them on SIGHUP (no restart)
//! and refuses a pack that anyone but root could change. The service user can change
//! nothing the agent loads. System mode (root's pack dir) and user mode (the user's).
mod support;

use support::hub::Hub;
use support::{Container, Output};

const BIN: &str = "/srv/dist/outpost";

fn boot(name: &str) -> Option<Container> {
    support::boot_with_binary(name)
}

/// A pack `demo` at `dir` (owned by `owner`) with one action; `privileged` adds a root one.
fn write_pack(c: &Container, dir: &str, owner: &str, version: &str, privileged: bool) {
    let extra = if privileged {
        "\n[[action]]\nid = \"whoami\"\ncommand = [\"/usr/bin/id\", \"-u\"]\nprivileged = true\n"
    } else {
        ""
    };
    c.must_sh(&format!(
        "set -e; rm -rf {dir}; mkdir -p {dir}/bin
cat > {dir}/pack.toml <<'EOF'
[pack]
name = \"demo\"
version = \"{version}\"
description = \"e2e pack\"

[[action]]
id = \"hello\"
description = \"say hello\"
command = [\"bin/hello.sh\", \"{{who}}\"]
[[action.param]]
name = \"who\"
type = \"string\"
pattern = \"[a-z]+\"
max_len = 16
required = true
{extra}EOF
printf '#!/bin/sh\\necho \"hello $1\"\\n' > {dir}/bin/hello.sh
chmod 0755 {dir}/bin/hello.sh
chown -R {owner} {dir}"
    ));
}

/// One `error:` line followed by one `hint:` line on stderr, and exit `code`.
fn refused(o: &Output, code: i32, what: &str) {
    assert_eq!(o.code(), Some(code), "{what}: {o:?}");
    let lines: Vec<&str> = o.stderr.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{what}: no error line: {o:?}"));
    assert!(
        lines.get(i + 1).is_some_and(|l| l.starts_with("hint:")),
        "{what}: no hint line: {o:?}"
    );
}

/// Wait until the agent's log (journalctl) has a line containing `want`.
fn wait_log(c: &Container, unit: &str, want: &str) -> String {
    for _ in 0..50 {
        let log = c.sh(&format!("journalctl {unit} --no-pager -o cat")).stdout;
        if log.contains(want) {
            return log;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!(
        "no {want:?} in the agent log: {}",
        c.sh(&format!("journalctl {unit} --no-pager -o cat | tail -20"))
            .stdout
    );
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn e2e_packs_system_mode() {
    let Some(c) = boot("packs-sys") else { return };
    c.must_sh(&format!("{BIN} install"));
    let unit = "-u outpost.service";
    wait_log(&c, unit, "catalog: 0 pack(s)");
    let pid = c.must_sh("systemctl show -p MainPID --value outpost.service");

    // validate: anyone, changes nothing; a link in the tree is refused naming it
    write_pack(&c, "/home/alice/demo", "alice", "1.0.0", false);
    let v = c.must_sh_as("alice", &format!("{BIN} pack validate /home/alice/demo"));
    assert!(
        v.contains("pack demo 1.0.0") && v.contains("hello(who)"),
        "{v}"
    );
    c.must_sh("ln -s /etc/shadow /home/alice/demo/bin/shadow");
    let o = c.sh_as("alice", &format!("{BIN} pack validate /home/alice/demo"));
    refused(&o, 2, "validate with a link");
    assert!(o.stderr.contains("bin/shadow: is a symlink"), "{o:?}");
    let o = c.sh(&format!("{BIN} pack install /home/alice/demo"));
    refused(&o, 2, "install with a link");
    assert!(
        c.sh("test -e /etc/outpost/packs/demo").code() == Some(1),
        "nothing installed"
    );
    c.must_sh("rm /home/alice/demo/bin/shadow");

    // install needs root; as alice it says the sudo command and changes nothing
    let o = c.sh_as("alice", &format!("{BIN} pack install /home/alice/demo"));
    refused(&o, 2, "install without root");
    assert!(o.stderr.contains("sudo outpost pack install"), "{o:?}");
    let out = c.must_sh_as(
        "alice",
        &format!("sudo {BIN} pack install /home/alice/demo"),
    );
    assert!(out.contains("pack demo 1.0.0 installed"), "{out}");
    assert!(out.contains("agent reloaded"), "{out}");
    // root's copy: root-owned, modes normalised, alice's source untouched
    let modes = c.must_sh("cd /etc/outpost/packs && stat -c '%U %a %n' demo demo/pack.toml demo/bin demo/bin/hello.sh");
    assert_eq!(
        modes.trim(),
        "root 755 demo\nroot 644 demo/pack.toml\nroot 755 demo/bin\nroot 755 demo/bin/hello.sh",
        "{modes}"
    );
    // the running agent re-read its packs on SIGHUP, without a restart
    wait_log(&c, unit, "catalog: 1 pack(s), 1 action(s)");
    assert_eq!(
        c.must_sh("systemctl show -p MainPID --value outpost.service"),
        pid
    );
    let ev = c.must_sh(&format!("{BIN} events --json"));
    assert!(ev.contains("\"pack_installed\""), "{ev}");
    let again = c.must_sh(&format!("{BIN} pack install /home/alice/demo"));
    assert!(again.contains("unchanged"), "{again}");

    // the service user can change nothing the agent loads
    for attack in [
        "echo 'echo pwned' >> /etc/outpost/packs/demo/bin/hello.sh",
        "mkdir /etc/outpost/packs/evil",
        "mv /etc/outpost/packs/demo /etc/outpost/packs/gone",
        "touch /etc/outpost/privileged/demo",
    ] {
        let o = c.sh(&format!("runuser -u outpost -- /bin/sh -c \"{attack}\""));
        assert!(!o.success(), "the service user could: {attack}: {o:?}");
    }

    // an admin mistake (group-writable file) is refused by the agent and by `pack list`
    c.must_sh("chmod g+w /etc/outpost/packs/demo/bin/hello.sh");
    c.must_sh("systemctl kill -s HUP --kill-whom=main outpost.service");
    let log = wait_log(&c, unit, "pack demo refused");
    assert!(log.contains("cannot be trusted"), "{log}");
    let o = c.sh(&format!("{BIN} pack list"));
    assert_eq!(o.code(), Some(1), "{o:?}");
    assert!(o.stdout.contains("REFUSED"), "{o:?}");
    let j = c.must_sh("runuser -u outpost -- cat /var/lib/outpost/agent/events.jsonl");
    assert!(j.contains("\"pack_refused\""), "{j}");
    c.must_sh("chmod g-w /etc/outpost/packs/demo/bin/hello.sh");

    // privileged grants: only for packs with such actions, pinned to the tree hash
    let o = c.sh(&format!("{BIN} pack trust demo --privileged"));
    refused(&o, 2, "trust without a privileged action");
    write_pack(&c, "/home/alice/demo", "alice", "1.1.0", true);
    c.must_sh(&format!("{BIN} pack install /home/alice/demo"));
    let o = c.sh_as("alice", &format!("{BIN} pack trust demo --privileged"));
    refused(&o, 2, "trust without root");
    let t = c.must_sh(&format!("{BIN} pack trust demo --privileged"));
    assert!(t.contains("whoami may run as root"), "{t}");
    assert_eq!(
        c.must_sh("stat -c '%U %a' /etc/outpost/privileged/demo")
            .trim(),
        "root 644"
    );
    let l = c.must_sh(&format!("{BIN} pack list"));
    assert!(l.contains("granted at this hash"), "{l}");
    // a changed pack loses the grant until trusted again
    c.must_sh("echo 'notes' > /home/alice/demo/NOTES && chown alice /home/alice/demo/NOTES");
    c.must_sh(&format!("{BIN} pack install /home/alice/demo"));
    let l = c.must_sh(&format!("{BIN} pack list --json"));
    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
    assert_eq!(v[0]["privileged_granted"], false, "{l}");
    assert_eq!(v[0]["privileged_grant_drifted"], true, "{l}");

    // remove: pack and grant gone, the agent's catalog empty again
    let before = count(
        &c.sh(&format!("journalctl {unit} --no-pager -o cat")).stdout,
        "catalog: 0 pack(s)",
    );
    c.must_sh(&format!("{BIN} pack remove demo"));
    assert_eq!(c.sh("test -e /etc/outpost/packs/demo").code(), Some(1));
    assert_eq!(c.sh("test -e /etc/outpost/privileged/demo").code(), Some(1));
    for _ in 0..50 {
        let log = c.sh(&format!("journalctl {unit} --no-pager -o cat")).stdout;
        if count(&log, "catalog: 0 pack(s)") > before {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let log = c.sh(&format!("journalctl {unit} --no-pager -o cat")).stdout;
    assert!(count(&log, "catalog: 0 pack(s)") > before, "{log}");
    refused(&c.sh(&format!("{BIN} pack remove demo")), 2, "remove twice");
    refused(
        &c.sh(&format!("{BIN} pack remove ../etc")),
        2,
        "remove a path",
    );
}

#[test]
fn e2e_packs_user_mode() {
    let Some(c) = boot("packs-user") else { return };
    c.must_sh_as("bob", &format!("{BIN} install --user"));
    write_pack(&c, "/home/bob/src", "bob", "1.0.0", false);
    let out = c.must_sh_as("bob", &format!("{BIN} pack install --user /home/bob/src"));
    assert!(
        out.contains("installed: /home/bob/.config/outpost/packs/demo"),
        "{out}"
    );
    assert_eq!(
        c.must_sh("stat -c '%U %a' /home/bob/.config/outpost/packs/demo/bin/hello.sh")
            .trim(),
        "bob 755"
    );
    for _ in 0..50 {
        let j = c
            .sh("journalctl --no-pager -o cat _SYSTEMD_USER_UNIT=outpost.service")
            .stdout;
        if j.contains("catalog: 1 pack(s)") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!(
        "the user agent did not load the pack: {}",
        c.sh("journalctl --no-pager -o cat _SYSTEMD_USER_UNIT=outpost.service | tail")
            .stdout
    );
}

/// The hub's packs (`outpost-hub packs --json`).
fn hub_packs(hub: &Hub) -> Vec<serde_json::Value> {
    let o = hub.cli(&["packs", "--json", "--hub", &hub.url]);
    assert!(
        o.status.success(),
        "packs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn wait_hub_packs(
    hub: &Hub,
    what: &str,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let p = hub_packs(hub);
        if pred(&p) {
            return p;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{what}: {:?}\n{}", hub_packs(hub), hub.log());
}

#[test]
fn e2e_packs_reach_the_hub_pending_until_trusted() {
    let Some(c) = boot("packs-hub") else { return };
    let hub = Hub::start("packs", 1);
    let key = hub.mint_key();
    c.exec_with_stdin(&["bash", "-c", "umask 077; cat > /run/k"], key.as_bytes());
    c.must_sh(&format!(
        "OUTPOST_ENROLL_KEY_FILE=/run/k {BIN} install --hub {}",
        hub.url
    ));
    c.must_sh("rm -f /run/k");
    hub.wait_agents(10, |a| a.len() == 1 && a[0]["status"] == "online")
        .unwrap_or_else(|| panic!("agent not online: {:?}", hub.agents()));
    assert!(hub_packs(&hub).is_empty());

    // the admin installs a pack: the next heartbeat carries it, pending at the hub
    write_pack(&c, "/root/demo", "root", "1.0.0", false);
    c.must_sh(&format!("{BIN} pack install /root/demo"));
    let sha = c.must_sh(&format!("{BIN} pack list --json"));
    let sha: serde_json::Value = serde_json::from_str(&sha).unwrap();
    let sha = sha[0]["sha256"].as_str().unwrap().to_string();
    let p = wait_hub_packs(&hub, "pending after a heartbeat", |p| p.len() == 1);
    assert_eq!(p[0]["name"], "demo");
    assert_eq!(p[0]["sha256"], sha.as_str());
    assert_eq!(p[0]["state"], "pending");
    assert_eq!(p[0]["agents"], 1);
    assert_eq!(p[0]["actions"][0]["id"], "hello");

    // trusted by the hub's admin (a prefix of the hash is enough)
    let o = hub.cli(&["packs", "trust", "demo", &sha[..16], "--hub", &hub.url]);
    assert!(o.status.success(), "trust: {o:?}");
    let p = hub_packs(&hub);
    assert_eq!(p[0]["state"], "trusted", "{p:?}");

    // a changed pack is a new pending hash; the trusted one stays trusted
    write_pack(&c, "/root/demo", "root", "1.1.0", false);
    c.must_sh(&format!("{BIN} pack install /root/demo"));
    let p = wait_hub_packs(&hub, "the changed pack pending", |p| p.len() == 2);
    let state = |v: &str| {
        p.iter()
            .find(|x| x["version"] == v)
            .map(|x| x["state"].clone())
    };
    assert_eq!(state("1.0.0"), Some("trusted".into()), "{p:?}");
    assert_eq!(state("1.1.0"), Some("pending".into()), "{p:?}");
}

/// The pack files root owns, and leftovers of a pack release install: what a refused
/// install must leave as it was.
fn pack_state(c: &Container) -> String {
    c.must_sh(
        "find /etc/outpost/packs /etc/outpost/privileged /var/lib/outpost/pack-release-replay \
         2>/dev/null | sort; ls -d /tmp/outpost-pack-release-* 2>/dev/null; true",
    )
}

fn release_tool(args: &[&str], cwd: &std::path::Path) -> String {
    let tool = support::release::variants().join("outpost-release");
    let o = std::process::Command::new(&tool)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run outpost-release");
    assert!(o.status.success(), "outpost-release {args:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Signed pack releases (docs/PACKS.md): built and published with `outpost-release pack
/// build` into the hub's release dir, installed over loopback http with `sudo outpost pack
/// install URL` in system mode, verified with the host's trusted release key (config
/// `[release] public_keys`); a tampered tarball, an edited manifest, a bundle signed by an
/// unknown key and a replayed older manifest are refused with exit 1, an `error:` + `hint:`
/// pair and nothing changed; the bundle and a pinned older version install.
#[test]
fn e2e_pack_release_from_the_hub_and_refusals() {
    let Some(c) = boot("packs-rel") else { return };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    release_tool(&["keygen", "--unencrypted", "--out", "keys"], w);
    release_tool(&["keygen", "--unencrypted", "--out", "evil"], w);
    let pubkey = std::fs::read_to_string(w.join("keys/outpost-release.pub")).unwrap();
    let pubkey = pubkey.lines().nth(1).unwrap().trim().to_string();
    let src = w.join("demo");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(
        src.join("pack.toml"),
        "[pack]\nname = \"demo\"\nversion = \"1.0.0\"\n\n[[action]]\nid = \"hello\"\ncommand = [\"bin/hello.sh\"]\n",
    )
    .unwrap();
    std::fs::write(src.join("bin/hello.sh"), "#!/bin/sh\necho hello\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        src.join("bin/hello.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let built = release_tool(
        &[
            "pack",
            "build",
            "demo",
            "--key",
            "keys/outpost-release.key",
            "--out",
            "site",
            "--bundle",
            "demo.tar",
        ],
        w,
    );
    let tree = built
        .split("tree sha256 ")
        .nth(1)
        .and_then(|s| s.get(..64))
        .unwrap_or_else(|| panic!("no tree hash: {built}"))
        .to_string();
    release_tool(
        &[
            "pack",
            "build",
            "demo",
            "--key",
            "evil/outpost-release.key",
            "--out",
            "evil-site",
            "--bundle",
            "evil.tar",
        ],
        w,
    );
    let hub = Hub::start_with("packrel", 5, Some(&w.join("site")), None);

    c.must_sh(&format!("{BIN} install"));
    c.must_sh(&format!(
        "cat > /etc/outpost/config.toml <<'EOF'\n[release]\npublic_keys = [\"{pubkey}\"]\nEOF"
    ));
    let unit = "-u outpost.service";
    wait_log(&c, unit, "catalog: 0 pack(s)");
    c.cp_in(w.join("demo.tar"), "/root/demo.tar");
    c.cp_in(w.join("evil.tar"), "/root/evil.tar");
    let url = format!("{}/packs/demo", hub.url);
    let install = |arg: &str| c.sh_as("alice", &format!("sudo {BIN} pack install {arg}"));
    let before = pack_state(&c);

    // a tampered tarball (same size): sha256 from the signed manifest
    let tarball = w.join("site/packs/demo/v1.0.0/demo-1.0.0.tar.gz");
    let good = std::fs::read(&tarball).unwrap();
    let mut bad = good.clone();
    let n = bad.len() / 2;
    bad[n] ^= 0x20;
    std::fs::write(&tarball, &bad).unwrap();
    let o = install(&url);
    refused(&o, 1, "tampered tarball");
    assert!(o.stderr.contains("sha256 mismatch"), "{o:?}");
    assert_eq!(pack_state(&c), before, "a refused install changes nothing");
    std::fs::write(&tarball, &good).unwrap();

    // an edited manifest: its signature
    let mpath = w.join("site/packs/demo/manifest.json");
    let manifest = std::fs::read_to_string(&mpath).unwrap();
    std::fs::write(&mpath, manifest.replace("\"size\": ", "\"size\": 1")).unwrap();
    let o = install(&url);
    refused(&o, 1, "edited manifest");
    assert!(o.stderr.contains("signature check failed"), "{o:?}");
    assert_eq!(pack_state(&c), before);
    std::fs::write(&mpath, &manifest).unwrap();

    // a bundle signed by a key the host does not trust
    let o = install("--bundle /root/evil.tar");
    refused(&o, 1, "unknown key");
    assert!(o.stderr.contains("not trusted"), "{o:?}");
    assert_eq!(pack_state(&c), before);

    // the genuine release over http: installed with the signed tree hash, agent reloaded
    let o = install(&url);
    assert!(o.success(), "{o:?}");
    assert!(
        o.stdout.contains("verified pack release demo 1.0.0"),
        "{o:?}"
    );
    assert!(o.stdout.contains("pack demo 1.0.0 installed"), "{o:?}");
    let list: serde_json::Value =
        serde_json::from_str(&c.must_sh(&format!("{BIN} pack list --json"))).unwrap();
    assert_eq!(list[0]["sha256"], tree.as_str(), "{list}");
    assert_eq!(
        c.must_sh("stat -c '%U %a' /etc/outpost/packs/demo/bin/hello.sh")
            .trim(),
        "root 755"
    );
    wait_log(&c, unit, "catalog: 1 pack(s), 1 action(s)");
    let ev = c.must_sh(&format!("{BIN} events --json"));
    assert!(ev.contains("\"pack_installed\""), "{ev}");
    assert_eq!(
        c.sh("ls -d /tmp/outpost-pack-release-*").code(),
        Some(2),
        "temp dir removed"
    );
    assert!(c
        .must_sh("cat /var/lib/outpost/pack-release-replay/demo")
        .trim()
        .parse::<u64>()
        .is_ok());

    // the offline bundle installs the same tree (unchanged), after a remove anew
    let o = install("--bundle /root/demo.tar");
    assert!(o.success() && o.stdout.contains("unchanged"), "{o:?}");
    c.must_sh(&format!("{BIN} pack remove demo"));
    let o = install("/root/demo.tar");
    assert!(
        o.success() && o.stdout.contains("pack demo 1.0.0 installed"),
        "{o:?}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&c.must_sh(&format!("{BIN} pack list --json"))).unwrap();
    assert_eq!(list[0]["sha256"], tree.as_str(), "{list}");

    // replay guard: once 1.1.0's newer manifest was installed, the old signed manifest is
    // refused; pinning 1.0.0 from the current manifest is allowed
    let sig_path = w.join("site/packs/demo/manifest.json.minisig");
    let old_manifest = std::fs::read(&mpath).unwrap();
    let old_sig = std::fs::read(&sig_path).unwrap();
    let toml = std::fs::read_to_string(src.join("pack.toml")).unwrap();
    std::fs::write(src.join("pack.toml"), toml.replace("1.0.0", "1.1.0")).unwrap();
    release_tool(
        &[
            "pack",
            "build",
            "demo",
            "--key",
            "keys/outpost-release.key",
            "--out",
            "site",
        ],
        w,
    );
    let o = install(&url);
    assert!(
        o.success() && o.stdout.contains("pack demo 1.1.0 updated"),
        "{o:?}"
    );
    let newer = std::fs::read(&mpath).unwrap();
    let newer_sig = std::fs::read(&sig_path).unwrap();
    std::fs::write(&mpath, &old_manifest).unwrap();
    std::fs::write(&sig_path, &old_sig).unwrap();
    let before = pack_state(&c);
    let o = install(&url);
    refused(&o, 1, "replayed manifest");
    assert!(o.stderr.contains("older than"), "{o:?}");
    assert_eq!(pack_state(&c), before);
    std::fs::write(&mpath, &newer).unwrap();
    std::fs::write(&sig_path, &newer_sig).unwrap();
    let o = install(&format!("{url} --version 1.0.0"));
    assert!(
        o.success() && o.stdout.contains("pack demo 1.0.0 updated"),
        "{o:?}"
    );
}
