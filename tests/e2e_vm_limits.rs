//! End-to-end in a QEMU VM (`ci/vm.sh`, docs/RUNS.md "Limits proven in a VM"): the limits
//! of an action are enforced by the kernel, not only written into the run's unit. The nspawn
//! testbed cannot show it (its cgroup v2 has no controllers, so there such a run is rejected:
//! tests/e2e_runs.rs); the VM boots the same Debian image with its own kernel, under TCG,
//! with cpu, memory and pids delegated to user managers, and no network device.
//!
//! Everything runs inside the VM: `outpost-hub` on the VM's own 127.0.0.1, the agent
//! (`outpost install --user` for alice, lingering) enrolled to it, a pack installed and
//! trusted, and four runs: `memory = "64M"` against a 300 MiB allocation (→ `failed`,
//! `oom-kill`), `tasks = 16` against a bounded fork bomb (→ capped at 16 tasks), `cpu =
//! "20%"` against a 5 s busy loop (→ about 20 % of one CPU) and the same loop without the
//! limit (the control: about 100 %). The guest script only records; this test asserts.
//!
//! User mode: on this base, a system-mode agent cannot reach its service user's bus (the
//! hardening drop-in hides /run/user), so runs are rejected there before any limit applies.
//!
//! Skips loudly without root or QEMU, unless `CI` or `OUTPOST_E2E_REQUIRED=1`.
mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The pack the VM runs (owned by alice, installed with `outpost pack install --user`).
const PACK_TOML: &str = r##"[pack]
name = "limits"
version = "1.0.0"
description = "limits proven in a VM (tests/e2e_vm_limits.rs)"

[[action]]
id = "hog"
description = "allocate 300 MiB under a 64M memory limit"
command = ["bin/hog.sh"]
[action.limits]
memory = "64M"
timeout = "60s"

[[action]]
id = "bomb"
description = "fork 64 sleepers under a limit of 16 tasks"
command = ["bin/bomb.sh"]
[action.limits]
tasks = 16
timeout = "60s"

[[action]]
id = "spin"
description = "a busy loop for 5 s under a 20% CPU limit"
command = ["bin/spin.sh", "5"]
[action.limits]
cpu = "20%"
timeout = "60s"

[[action]]
id = "spin-free"
description = "the same busy loop, 3 s, no CPU limit (the control)"
command = ["bin/spin.sh", "3"]
[action.limits]
timeout = "60s"
"##;

/// Sourced by the actions: the run's own cgroup and what the kernel enforces there.
const CG_SH: &str = r##"# sourced: the run's own cgroup (v2) directory and what the kernel enforces there
cg=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
show() { for f in "$@"; do printf '%s=%s\n' "$f" "$(tr '\n' ' ' <"$cg/$f" 2>/dev/null | sed 's/ $//')"; done; }
echo "cgroup=$cg"
"##;

const HOG_SH: &str = r##"#!/bin/sh
. "$(dirname "$0")/cg.sh"
show memory.max memory.swap.max
echo "allocating 300 MiB"
# tail keeps a line until its newline: 300 MiB of NULs without one are all held in memory
head -c 300M /dev/zero | tail >/dev/null
rc=$?
# still here while systemd acts on the OOM kill (it stops the whole unit: oom-kill)
sleep 10
echo "survived: tail exited $rc"
"##;

const BOMB_SH: &str = r##"#!/bin/sh
# A bounded fork bomb: a child shell forks 64 sleepers, each printing one line first; dash
# gives up ("Cannot fork") at the first fork the pids controller refuses.
. "$(dirname "$0")/cg.sh"
show pids.max
if [ "${1:-}" = child ]; then
    i=0
    while [ $i -lt 64 ]; do
        i=$((i + 1))
        { echo "forked $i"; exec sleep 60; } &
    done
    exit 0
fi
sh "$0" child
rc=$?
# builtins only from here on (read, echo, kill): every task slot may be taken
read -r cur <"$cg/pids.current"
read -r _ ev <"$cg/pids.events"
echo "pids.current=$cur"
echo "pids.events.max=$ev"
while read -r p; do [ "$p" = $$ ] || kill "$p" 2>/dev/null; done <"$cg/cgroup.procs"
if [ $rc -ne 0 ]; then
    echo "capped: a fork failed and the forking shell exited $rc"
    exit 3
fi
echo "all 64 forks succeeded"
"##;

const SPIN_SH: &str = r##"#!/bin/sh
# A busy loop for $1 s; prints the CPU time the run's cgroup used against the wall time.
. "$(dirname "$0")/cg.sh"
show cpu.max
usage() { awk '$1 == "usage_usec" { print $2 }' "$cg/cpu.stat"; }
t0=$(date +%s%N)
u0=$(usage)
timeout "$1" sh -c 'while :; do :; done'
u1=$(usage)
t1=$(date +%s%N)
echo "wall_usec=$(( (t1 - t0) / 1000 ))"
echo "cpu_usec=$(( u1 - u0 ))"
awk '$1 ~ /^(nr_periods|nr_throttled|throttled_usec)$/ { print $1 "=" $2 }' "$cg/cpu.stat"
"##;

/// Runs inside the VM as root (ci/vm.sh: `run.sh OUT`, once the system is up).
const RUN_SH: &str = r##"#!/bin/bash
# Inside the VM, as root: a hub on the VM's own 127.0.0.1, alice's agent enrolled to it, the
# pack installed and trusted, each action run to its end. Records into $1; asserts nothing.
set -uo pipefail
OUT=$1
P=$(cd "$(dirname "$0")" && pwd)
export OUTPOST_HUB_URL=http://127.0.0.1:7070
export OUTPOST_HUB_ADMIN_TOKEN=e2e-vm-hub-admin-token-0123456789abcdef
SUSER=alice
HUB=/usr/local/bin/outpost-hub
step() { echo "== [$(cut -d' ' -f1 /proc/uptime) s] $*"; }
die() { echo "FATAL: $*"; exit 1; }
# until_ok SECS CMD: poll the shell string CMD until it succeeds, at most SECS seconds
until_ok() {
    local secs=$1 i
    for ((i = 0; i < secs * 5; i++)); do
        eval "$2" && return 0
        sleep 0.2
    done
    return 1
}

install -m 0755 "$P/outpost" /usr/local/bin/outpost
install -m 0755 "$P/outpost-hub" "$HUB"

step "hub on 127.0.0.1:7070"
mkdir -p /var/lib/e2e-hub/releases
"$HUB" serve --listen 127.0.0.1:7070 --db /var/lib/e2e-hub/hub.db \
    --releases /var/lib/e2e-hub/releases --heartbeat-interval 1 \
    >"$OUT/hub.out" 2>"$OUT/hub.log" &
until_ok 30 'grep -q "listening on" "$OUT/hub.out"' || die "the hub did not start: $(cat "$OUT/hub.log")"
key=$("$HUB" keys create --ttl 1h | grep -o 'opk_[0-9a-zA-Z_]*' | head -n1)
[[ -n $key ]] || die "no enrollment key"

step "install (user mode, $SUSER lingering)"
loginctl enable-linger "$SUSER"
install -o "$SUSER" -m 0600 /dev/null "/home/$SUSER/k" && printf '%s\n' "$key" >"/home/$SUSER/k"
cp -r "$P/pack" "/home/$SUSER/limits" && chown -R "$SUSER:" "/home/$SUSER/limits"
systemd-run --wait --pipe --quiet --collect --uid="$SUSER" -p PAMName=login \
    -p WorkingDirectory="/home/$SUSER" --setenv=XDG_SESSION_CLASS=user --setenv=LANG=C.UTF-8 -- \
    /bin/bash -c "OUTPOST_ENROLL_KEY_FILE=\$HOME/k outpost install --user --hub $OUTPOST_HUB_URL && rm \$HOME/k && outpost pack install --user \$HOME/limits" \
    >"$OUT/install.log" 2>&1 </dev/null || die "install failed: $(cat "$OUT/install.log")"
SUID=$(id -u "$SUSER")
MGR=/sys/fs/cgroup/user.slice/user-$SUID.slice/user@$SUID.service
until_ok 30 "test -S /run/user/$SUID/bus" || die "no user manager for $SUSER"
{
    echo "service_user=$SUSER"
    echo "kernel=$(uname -r)"
    echo "links=$(ip -o link | awk '{print $2}' | tr '\n' ' ')"
    echo "root_controllers=$(cat /sys/fs/cgroup/cgroup.controllers)"
    echo "manager_controllers=$(cat "$MGR/cgroup.controllers")"
    echo "delegate=$(systemctl show "user@$SUID.service" -p DelegateControllers --value)"
} >"$OUT/facts.txt"

step "enroll, trust the pack"
until_ok 30 '"$HUB" agents --json | grep -q online' || die "the agent never came online: $("$HUB" agents --json)"
agent=$("$HUB" agents --json | grep -o 'a_[0-9a-zA-Z]*' | head -n1)
sha=
for ((i = 0; i < 60; i++)); do
    sha=$("$HUB" packs --json | grep -o '[0-9a-f]\{64\}' | head -n1)
    [[ -n $sha ]] && break
    sleep 0.5
done
[[ -n $sha ]] || die "the pack never reached the hub: $("$HUB" packs --json)"
"$HUB" packs trust limits "${sha:0:16}" || die "trust failed"

for a in hog bomb spin spin-free; do
    step "run limits/$a"
    timeout 120 "$HUB" run "$agent" "limits/$a" --follow >"$OUT/follow-$a.txt" 2>&1
    id=$(head -n1 "$OUT/follow-$a.txt" | cut -d' ' -f1)
    echo "$a $id" >>"$OUT/ids.txt"
    "$HUB" logs "$id" >"$OUT/log-$a.txt" 2>&1
    tail -n 1 "$OUT/follow-$a.txt"
done
"$HUB" runs --json >"$OUT/runs.json"
step "done"
"##;

fn required() -> bool {
    let ci = std::env::var("CI").unwrap_or_default();
    let ci = !ci.is_empty() && ci != "false" && ci != "0";
    ci || std::env::var("OUTPOST_E2E_REQUIRED").as_deref() == Ok("1")
}

/// Straight to fd 2: libtest captures `eprintln!`, not this.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// `true` (after a loud banner) when the suite cannot run here; panics when it must.
fn skipped(reason: &str) -> bool {
    if required() {
        panic!("e2e VM required (CI or OUTPOST_E2E_REQUIRED=1) but unavailable: {reason}");
    }
    let bar = "*".repeat(72);
    say(&format!(
        "\n{bar}\nSKIPPED: e2e VM unavailable: {reason}\n\
         (set OUTPOST_E2E_REQUIRED=1 to make this a failure)\n{bar}\n"
    ));
    true
}

fn in_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn unavailable() -> Option<String> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Some("not Linux on x86_64".into());
    }
    if !is_root() {
        return Some("not running as root".into());
    }
    let missing: Vec<&str> = [
        "qemu-system-x86_64",
        "mkfs.ext4",
        "debootstrap",
        "chroot",
        "zstd",
        "tar",
        "flock",
        "timeout",
    ]
    .into_iter()
    .filter(|t| !in_path(t))
    .collect();
    if !missing.is_empty() {
        return Some(format!(
            "missing tools: {} (ci/setup.sh installs qemu-system-x86 e2fsprogs debootstrap zstd)",
            missing.join(" ")
        ));
    }
    None
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `timeout SECS bash ci/vm.sh ARGS…`: (success, stdout, stderr).
fn vm_sh(secs: u64, args: &[&str]) -> (bool, String, String) {
    let o = Command::new("timeout")
        .arg("--kill-after=10")
        .arg(secs.to_string())
        .arg("bash")
        .arg(repo().join("ci/vm.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ci/vm.sh");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn write_exec(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The payload: both binaries, run.sh and the pack.
fn payload(dir: &Path) {
    let bin = support::binary_under_test();
    std::fs::create_dir_all(dir.join("pack/bin")).unwrap();
    std::fs::copy(&bin, dir.join("outpost")).unwrap_or_else(|e| panic!("copy {bin}: {e}"));
    // The debug hub is ~100 MB, nearly all of it debug info: a stripped copy boots faster.
    let hub = support::tls::hub_bin();
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(dir.join("outpost-hub"))
        .arg(&hub)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(&hub, dir.join("outpost-hub")).unwrap();
    }
    write_exec(&dir.join("run.sh"), RUN_SH, 0o755);
    write_exec(&dir.join("pack/pack.toml"), PACK_TOML, 0o644);
    write_exec(&dir.join("pack/bin/cg.sh"), CG_SH, 0o644);
    write_exec(&dir.join("pack/bin/hog.sh"), HOG_SH, 0o755);
    write_exec(&dir.join("pack/bin/bomb.sh"), BOMB_SH, 0o755);
    write_exec(&dir.join("pack/bin/spin.sh"), SPIN_SH, 0o755);
}

/// `k=v` lines (of facts.txt, boot.txt, a run's log).
fn kv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn num(map: &BTreeMap<String, String>, key: &str, ctx: &str) -> f64 {
    map.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key} in:\n{ctx}"))
}

struct Results {
    dir: PathBuf,
    runs: Vec<serde_json::Value>,
    ids: BTreeMap<String, String>,
}

impl Results {
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// The hub's view of the run of `action`, and its log at the hub.
    fn run(&self, action: &str) -> (serde_json::Value, String) {
        let id = self
            .ids
            .get(action)
            .unwrap_or_else(|| panic!("no run of {action}: {:?}", self.ids));
        let r = self
            .runs
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap_or_else(|| panic!("run {id} not at the hub: {:?}", self.runs))
            .clone();
        (r, self.read(&format!("log-{action}.txt")))
    }
}

#[test]
fn e2e_vm_limits() {
    if let Some(why) = unavailable() {
        if skipped(&why) {
            return;
        }
    }
    let t0 = Instant::now();
    let (ok, out, err) = vm_sh(1800, &["image"]);
    if !ok && skipped(&format!("VM image build failed:\n{err}")) {
        return;
    }
    say(&format!(
        "e2e_vm_limits: VM image {} ready after {:.1} s",
        out.trim(),
        t0.elapsed().as_secs_f64()
    ));

    let work = std::env::temp_dir().join(format!("outpost-e2e-vm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (pdir, odir) = (work.join("payload"), work.join("out"));
    payload(&pdir);
    let boot = Instant::now();
    let (ok, _, err) = vm_sh(
        420,
        &["run", pdir.to_str().unwrap(), odir.to_str().unwrap()],
    );
    let vm_secs = boot.elapsed().as_secs_f64();
    let console = std::fs::read_to_string(odir.join("console.log")).unwrap_or_default();
    let tail = |s: &str, n: usize| {
        let l: Vec<&str> = s.lines().collect();
        l[l.len().saturating_sub(n)..].join("\n")
    };
    assert!(
        ok,
        "ci/vm.sh run failed:\n{err}\n--- console (tail) ---\n{}",
        tail(&console, 40)
    );
    let runs_json = std::fs::read_to_string(odir.join("runs.json")).unwrap_or_default();
    let res = Results {
        runs: serde_json::from_str(&runs_json).unwrap_or_default(),
        ids: std::fs::read_to_string(odir.join("ids.txt"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(a, id)| (a.to_string(), id.to_string()))
            .collect(),
        dir: odir.clone(),
    };
    let run_log = res.read("run.log");
    assert_eq!(
        res.read("rc").trim(),
        "0",
        "run.sh in the VM failed:\n{run_log}\n--- install.log ---\n{}\n--- hub.log ---\n{}",
        res.read("install.log"),
        tail(&res.read("hub.log"), 30)
    );
    let boot_txt = kv(&res.read("boot.txt"));
    let boot_secs = num(&boot_txt, "payload_start_uptime", &res.read("boot.txt"));
    say(&format!(
        "e2e_vm_limits: VM booted to its payload in {boot_secs:.1} s (guest uptime); \
         power on to power off {vm_secs:.1} s; whole suite so far {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    let journal = res.read("journal.txt");
    let ctx = format!(
        "{run_log}\n--- agent (journal, tail) ---\n{}",
        tail(&journal, 40)
    );

    // The VM has what the containers lack: controllers, delegated to the runs' manager.
    let facts = kv(&res.read("facts.txt"));
    let has = |key: &str, c: &str| {
        facts
            .get(key)
            .is_some_and(|v| v.split_whitespace().any(|x| x == c))
    };
    for c in ["cpu", "memory", "pids"] {
        assert!(has("root_controllers", c), "{c} in the VM: {facts:?}");
        assert!(
            has("manager_controllers", c),
            "{c} delegated to alice's manager: {facts:?}"
        );
    }
    assert_eq!(
        facts.get("links").map(|s| s.trim()),
        Some("lo:"),
        "no network device but loopback: {facts:?}"
    );
    assert!(
        journal.contains("(controllers: cpu memory pids)"),
        "the agent found the controllers:\n{ctx}"
    );

    // memory = "64M" against 300 MiB: the kernel kills it in the run's own cgroup → oom-kill
    let (r, log) = res.run("hog");
    let l = kv(&log);
    assert_eq!(
        l.get("memory.max").map(String::as_str),
        Some("67108864"),
        "{log}"
    );
    assert_eq!(
        l.get("memory.swap.max").map(String::as_str),
        Some("0"),
        "{log}"
    );
    assert!(
        log.contains("allocating 300 MiB") && !log.contains("survived"),
        "{log}"
    );
    assert_eq!(r["state"], "failed", "{r}\n{ctx}");
    let why = r["reason"].as_str().unwrap_or_default();
    assert!(why.starts_with("oom-kill"), "{r}\n{ctx}");
    let unit = format!("outpost-run-{}.service", r["id"].as_str().unwrap());
    assert!(
        journal
            .lines()
            .any(|x| x.contains("oom-kill:constraint=CONSTRAINT_MEMCG")
                && x.contains("oom_memcg=")
                && x.contains(&unit)),
        "the kernel's OOM kill was in the run's memory cgroup {unit}:\n{ctx}"
    );

    // tasks = 16 against a fork bomb of 64: pids.max is 16 and forks stop there
    let (r, log) = res.run("bomb");
    let l = kv(&log);
    assert_eq!(l.get("pids.max").map(String::as_str), Some("16"), "{log}");
    let forked = log.lines().filter(|x| x.starts_with("forked ")).count();
    assert!(
        (1..=16).contains(&forked),
        "{forked} forks succeeded:\n{log}"
    );
    assert!(num(&l, "pids.current", &log) <= 16.0, "{log}");
    assert!(
        num(&l, "pids.events.max", &log) >= 1.0,
        "a fork was refused:\n{log}"
    );
    assert!(log.contains("capped: a fork failed"), "{log}");
    assert_eq!(r["state"], "failed", "{r}\n{ctx}");
    assert_eq!(r["exit_code"], 3, "{r}");

    // cpu = "20%": about a fifth of one CPU, throttled; the control without it, about all
    let ratio = |action: &str| {
        let (r, log) = res.run(action);
        assert_eq!(r["state"], "succeeded", "{r}\n{log}\n{ctx}");
        let l = kv(&log);
        let (cpu, wall) = (num(&l, "cpu_usec", &log), num(&l, "wall_usec", &log));
        (cpu / wall, l, log)
    };
    let (capped, l, log) = ratio("spin");
    assert_eq!(
        l.get("cpu.max").map(String::as_str),
        Some("20000 100000"),
        "{log}"
    );
    assert!(
        (0.05..=0.35).contains(&capped),
        "cpu = \"20%\" used {:.0} % of one CPU:\n{log}",
        capped * 100.0
    );
    assert!(num(&l, "nr_throttled", &log) > 0.0, "throttled:\n{log}");
    let (free, l, log) = ratio("spin-free");
    assert_eq!(
        l.get("cpu.max").map(String::as_str),
        Some("max 100000"),
        "{log}"
    );
    assert!(
        free >= 0.6,
        "the same loop without the limit used only {:.0} % of one CPU:\n{log}",
        free * 100.0
    );
    say(&format!(
        "e2e_vm_limits: oom-kill at 64M; {forked} forks under tasks = 16; cpu {:.0} % under 20 % \
         (control {:.0} %); suite {:.1} s",
        capped * 100.0,
        free * 100.0,
        t0.elapsed().as_secs_f64()
    ));
    let _ = std::fs::remove_dir_all(&work);
}
