//! Runs suites' common parts: the e2e pack, enrolling a container's agent and trusting the
//! pack at the hub, starting runs and waiting for their states (tests/e2e_runs.rs,
//! tests/bench_runs.rs).
#![allow(dead_code)]

use super::hub::Hub;
use super::Container;
use std::time::{Duration, Instant};

pub const BIN: &str = "/srv/dist/outpost";

/// How bob's user-mode agent is installed inside [`enroll_and_trust`]'s closure.
pub struct UserInstall<'a> {
    /// The binary that runs `install --user` ([`BIN`], or a release's first version).
    pub installer: &'a str,
    /// The hub URL the agent is installed against (the hub's, or a proxy in front of it).
    pub hub_url: &'a str,
    /// Written after `[hub] url` as bob's whole config.toml (e.g. an `[upgrade]` section).
    pub config: Option<String>,
    /// The pack dir (written already, bob's) that `pack install --user` installs.
    pub pack_dir: &'a str,
}

impl UserInstall<'_> {
    /// The key handed over in a 0600 file (never on a command line), `install --user --hub`,
    /// the config (if any), then `pack install --user`.
    pub fn run(&self, c: &Container, key: &str) {
        c.exec_with_stdin(
            &[
                "bash",
                "-c",
                "umask 077; cat > /home/bob/k; chown bob /home/bob/k",
            ],
            key.as_bytes(),
        );
        let (bin, url) = (self.installer, self.hub_url);
        c.must_sh_as(
            "bob",
            &format!(
                "OUTPOST_ENROLL_KEY_FILE=/home/bob/k {bin} install --user --hub {url} && rm /home/bob/k"
            ),
        );
        if let Some(extra) = &self.config {
            c.must_sh_as(
                "bob",
                &format!(
                    "cat > ~/.config/outpost/config.toml <<'EOF'\n[hub]\nurl = \"{url}\"\n\n{extra}EOF"
                ),
            );
        }
        c.must_sh_as(
            "bob",
            &format!("~/.local/bin/outpost pack install --user {}", self.pack_dir),
        );
    }
}

/// What a run tries against the agent's files (`e2e/snoop`; a workload round on trixie): one
/// `WHAT: yes|no` line each, and the runs it can see. Writes are probed with access(2)
/// (`test -w`: EROFS on a read-only mount), never done.
pub const SNOOP_SH: &str = r#"#!/bin/sh
# The agent's state dir, from the run's work dir (<agent>/runs/<id>/work).
A=${OUTPOST_RUN_DIR%/runs/*}
case $A in
  /var/lib/outpost/*) CFG=/etc/outpost; BASE=/opt/outpost; UNITS=/etc/systemd/system ;;
  *) H=${A%/.local/state/outpost/agent}; CFG=$H/.config/outpost; BASE=$H/.local/share/outpost; UNITS=$H/.config/systemd/user ;;
esac
try() { if sh -c "$2" >/dev/null 2>&1; then echo "$1: yes"; else echo "$1: no"; fi; }
try read-token "cat $A/identity.json"
try read-journal "cat $A/events.jsonl"
try write-journal "test -w $A/events.jsonl"
try write-record "test -w $A/runs/$OUTPOST_RUN_ID/run.json"
try read-env "cat $CFG/outpost.env"
try write-config "test -w $CFG/config.toml"
try write-binary "test -w $BASE/current/outpost"
try write-units "test -w $UNITS"
try write-work "echo ok > $OUTPOST_RUN_DIR/f"
echo "runs-seen: $(ls $A/runs 2>/dev/null | tr '\n' ' ')"
"#;

/// The pack of these tests, owned by `owner` at `dir`.
pub fn write_pack(c: &Container, dir: &str, owner: &str) {
    c.must_sh(&format!(
        r#"set -e; rm -rf {dir}; mkdir -p {dir}/bin
cat > {dir}/pack.toml <<'EOF'
[pack]
name = "e2e"
version = "1.0.0"
description = "runs e2e"

[[action]]
id = "hello"
description = "greet and show the environment's names"
command = ["bin/hello.sh", "{{who}}"]
env = ["ALLOWED_VAR"]
[[action.param]]
name = "who"
type = "string"
pattern = "[a-z]+"
max_len = 16
required = true
[[action.param]]
name = "tone"
type = "enum"
values = ["calm", "loud"]
as = "env"
default = "calm"

[[action]]
id = "count"
description = "print N lines, one every 100 ms"
command = ["bin/count.sh", "{{n}}"]
[[action.param]]
name = "n"
type = "int"
min = 1
max = 1000
required = true

[[action]]
id = "stubborn"
description = "ignore SIGTERM and leave a setsid grandchild behind"
command = ["bin/stubborn.sh"]

[[action]]
id = "sleepy"
description = "sleep past its timeout"
command = ["/bin/sleep", "30"]
[action.limits]
timeout = "4s"

[[action]]
id = "stamp"
description = "print the wall clock (ns) the moment it starts (dispatch latency)"
command = ["/bin/date", "+%s%N"]

[[action]]
id = "flood"
description = "print 100 MiB"
command = ["bin/flood.sh"]
[action.limits]
log_size = "200M"

[[action]]
id = "idle"
description = "sleep"
command = ["/bin/sleep", "20"]
max_concurrency = 4

[[action]]
id = "capped"
description = "a CPU limit"
command = ["/bin/true"]
[action.limits]
cpu = "50%"

[[action]]
id = "whoami"
description = "print who it runs as (privileged: root, after the host's trust)"
command = ["bin/whoami.sh", "{{tag}}"]
env = ["ALLOWED_VAR"]
privileged = true
[[action.param]]
name = "tag"
type = "string"
pattern = "[a-z]+"
max_len = 8
required = true

[[action]]
id = "rootnap"
description = "sleep as root (privileged; canceled by the agent)"
command = ["/bin/sleep", "60"]
privileged = true

[[action]]
id = "snoop"
description = "try what a run must not do to the agent's files (isolation)"
command = ["bin/snoop.sh"]
EOF
cat > {dir}/bin/snoop.sh <<'EOF'
{SNOOP_SH}EOF
cat > {dir}/bin/whoami.sh <<'EOF'
#!/bin/sh
echo "uid=$(id -u) tag=$1 dir=$OUTPOST_RUN_DIR allowed=$ALLOWED_VAR"
env | cut -d= -f1 | sort | sed 's/^/ENV /'
EOF
cat > {dir}/bin/hello.sh <<'EOF'
#!/bin/sh
echo "hello $1 ($OUTPOST_PARAM_TONE)"
env | cut -d= -f1 | sort | sed 's/^/ENV /'
echo "allowed=$ALLOWED_VAR"
id -u
EOF
cat > {dir}/bin/count.sh <<'EOF'
#!/bin/sh
i=1
while [ $i -le $1 ]; do echo "line $i of $1"; i=$((i+1)); sleep 0.1; done
EOF
cat > {dir}/bin/flood.sh <<'EOF'
#!/bin/sh
yes 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef012345678 2>/dev/null | head -c 104857600
EOF
cat > {dir}/bin/stubborn.sh <<'EOF'
#!/bin/sh
trap '' TERM
setsid sh -c 'trap "" TERM; while :; do sleep 1; done' &
echo $! > "$OUTPOST_RUN_DIR/child.pid"
echo $$ > "$OUTPOST_RUN_DIR/main.pid"
echo started
while :; do sleep 1; done
EOF
chmod 0755 {dir}/bin/*.sh
chown -R {owner} {dir}"#
    ));
}

pub fn run_views(hub: &Hub) -> Vec<serde_json::Value> {
    let o = hub.cli(&["runs", "--json"]);
    assert!(o.status.success(), "runs: {o:?}");
    serde_json::from_slice(&o.stdout).unwrap()
}

/// One run as the hub shows it.
pub fn run_view(hub: &Hub, id: &str) -> serde_json::Value {
    run_views(hub)
        .into_iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("run {id} not at the hub"))
}

pub fn wait_run(
    s: &Setup,
    id: &str,
    secs: u64,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = run_view(&s.hub, id);
        if pred(&r) {
            return r;
        }
        if Instant::now() > until {
            let agent = s.c.sh(&s.journal).stdout;
            panic!("run {id} did not get there in {secs}s: {r}\nagent:\n{agent}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn wait_final(s: &Setup, id: &str, secs: u64) -> serde_json::Value {
    wait_run(s, id, secs, |r| {
        !matches!(
            r["state"].as_str(),
            Some("queued" | "claimed" | "running" | "unknown")
        ) && r["log_bytes"] == r["result_log_bytes"]
    })
}

/// `outpost-hub run AGENT ACTION --param …`: the run id.
pub fn start(hub: &Hub, agent: &str, action: &str, params: &[&str]) -> String {
    let mut args = vec!["run", agent, action];
    for p in params {
        args.push("--param");
        args.push(p);
    }
    let o = hub.cli(&args);
    assert!(o.status.success(), "run {action}: {o:?}");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    out.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("no run id: {out}"))
        .to_string()
}

pub fn hub_log(hub: &Hub, id: &str) -> String {
    let o = hub.cli(&["logs", id]);
    assert!(o.status.success(), "logs: {o:?}");
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Enroll the container's agent (installed by `install`) and trust the pack at the hub.
pub struct Setup<'a> {
    pub c: &'a Container,
    pub hub: Hub,
    pub agent: String,
    /// Prints the agent's log (on a failure).
    pub journal: String,
}

pub fn enroll_and_trust<'a>(
    c: &'a Container,
    hub: Hub,
    journal: &str,
    install: &dyn Fn(&str, &str),
) -> Setup<'a> {
    enroll_and_trust_pack(c, hub, journal, "e2e", install)
}

/// [`enroll_and_trust`] for the pack named `pack`.
pub fn enroll_and_trust_pack<'a>(
    c: &'a Container,
    hub: Hub,
    journal: &str,
    pack: &str,
    install: &dyn Fn(&str, &str),
) -> Setup<'a> {
    let key = hub.mint_key();
    install(&key, &hub.url);
    let agents = hub
        .wait_agents(15, |a| a.len() == 1 && a[0]["status"] == "online")
        .unwrap_or_else(|| panic!("agent not online: {:?}\n{}", hub.agents(), hub.log()));
    let agent = agents[0]["id"].as_str().unwrap().to_string();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let o = hub.cli(&["packs", "--json"]);
        let p: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if let Some(sha) = p
            .iter()
            .find(|x| x["name"] == pack)
            .and_then(|x| x["sha256"].as_str())
        {
            let o = hub.cli(&["packs", "trust", pack, &sha[..16]]);
            assert!(o.status.success(), "trust: {o:?}");
            break;
        }
        assert!(
            Instant::now() < until,
            "the pack never reached the hub: {p:?}"
        );
        // The heartbeat carries the catalog: ask for one now.
        c.sh("pkill -USR1 -f 'outpost agent run' || true");
        std::thread::sleep(Duration::from_millis(300));
    }
    Setup {
        c,
        hub,
        agent,
        journal: journal.to_string(),
    }
}

/// A run cannot read the agent's token or journal, change its records, config, binary or
/// units, or see the other runs; its own work dir is its own. With `isolated` false (the
/// host cannot isolate runs), the same run reads the token: the check sees the difference.
pub fn snoop(s: &Setup, isolated: bool) -> String {
    let id = start(&s.hub, &s.agent, "e2e/snoop", &[]);
    let r = wait_final(s, &id, 30);
    assert_eq!(
        r["state"],
        "succeeded",
        "{r}\nagent:\n{}",
        s.c.sh(&s.journal).stdout
    );
    let log = hub_log(&s.hub, &id);
    snoop_verdict(&log, &id, isolated);
    id
}

/// Check what [`SNOOP_SH`] printed (in run `id`'s log): everything refused and only its own
/// run seen when `isolated`, the token readable when not.
pub fn snoop_verdict(log: &str, id: &str, isolated: bool) {
    let line = |what: &str| -> String {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("{what}: ")))
            .unwrap_or_else(|| panic!("no {what} in {log}"))
            .trim()
            .to_string()
    };
    assert_eq!(line("write-work"), "yes", "{log}");
    if isolated {
        for what in [
            "read-token",
            "read-journal",
            "write-journal",
            "write-record",
            "read-env",
            "write-config",
            "write-binary",
            "write-units",
        ] {
            assert_eq!(line(what), "no", "a run could {what}:\n{log}");
        }
        assert_eq!(line("runs-seen"), id, "a run saw other runs:\n{log}");
    } else {
        assert_eq!(line("read-token"), "yes", "{log}");
        assert_ne!(line("runs-seen"), id, "{log}");
    }
}
