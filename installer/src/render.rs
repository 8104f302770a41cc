//! The text of the unit file, the system-mode hardening drop-in and the polkit rule (pure).
//!
//! Output is deterministic and carries no outpost version, so reinstalling another version
//! rewrites nothing unless the content really changes. Paths are escaped for systemd
//! (specifiers `%`, quoting of blanks and quotes, `$` in `ExecStart=`); what cannot be
//! represented at all (relative, non-UTF-8, control characters) is refused by [`validate`],
//! which the planner calls before rendering.
use crate::users::valid_username;
use outpost_core::layout::{Layout, Mode};
use outpost_core::{env, exit};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The whole environment of the `ExecStartPre=` resolver.
pub const RESOLVER_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Default `WatchdogSec=`.
pub const DEFAULT_WATCHDOG_SEC: u32 = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitParams {
    pub mode: Mode,
    /// `<base>/current/outpost`.
    pub exec: PathBuf,
    /// `<base>/last-good/outpost`: resolves an interrupted upgrade before every start
    /// (`ExecStartPre=`), from the version last confirmed healthy.
    pub resolver: PathBuf,
    pub config_file: PathBuf,
    /// The agent's own writable state dir (`<state>/agent`).
    pub state_dir: PathBuf,
    /// Root's journal of install and upgrade events (the agent reads it, never writes it).
    pub install_journal: PathBuf,
    pub env_file: PathBuf,
    /// System mode `User=` (ignored in user mode).
    pub user: Option<String>,
    /// System mode `Group=` (ignored in user mode).
    pub group: Option<String>,
    pub watchdog_sec: u32,
    pub revoked_exit_code: i32,
}

impl UnitParams {
    /// Parameters for `layout`, with the default watchdog and [`exit::REVOKED`].
    pub fn from_layout(layout: &Layout, user: Option<String>, group: Option<String>) -> UnitParams {
        UnitParams {
            mode: layout.mode,
            exec: layout.current_binary(),
            resolver: layout.resolver_binary(),
            config_file: layout.config_file.clone(),
            state_dir: layout.agent_dir.clone(),
            install_journal: layout.events_file(),
            env_file: layout.env_file.clone(),
            user,
            group,
            watchdog_sec: DEFAULT_WATCHDOG_SEC,
            revoked_exit_code: exit::REVOKED,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("cannot use {path} in a systemd unit: {why}")]
    Path { path: PathBuf, why: &'static str },
    #[error("invalid user or group name {name:?}: expected [a-z_][a-z0-9_-]{{0,31}}")]
    Name { name: String },
}

/// Check that every path can be written into a unit and every name is portable.
pub fn validate(p: &UnitParams) -> Result<(), RenderError> {
    for path in [
        &p.exec,
        &p.resolver,
        &p.config_file,
        &p.state_dir,
        &p.install_journal,
        &p.env_file,
    ] {
        check_path(path)?;
    }
    for name in [&p.user, &p.group].into_iter().flatten() {
        if !valid_username(name) {
            return Err(RenderError::Name { name: name.clone() });
        }
    }
    Ok(())
}

fn check_path(path: &Path) -> Result<(), RenderError> {
    let err = |why| {
        Err(RenderError::Path {
            path: path.to_path_buf(),
            why,
        })
    };
    let Some(s) = path.to_str() else {
        return err("not valid UTF-8");
    };
    if !path.is_absolute() {
        return err("not absolute");
    }
    if s.chars().any(char::is_control) {
        return err("contains a control character");
    }
    if s.ends_with(char::is_whitespace) {
        return err("ends with whitespace");
    }
    Ok(())
}

/// Escape systemd specifiers (`%` → `%%`).
fn spec(s: &str) -> String {
    s.replace('%', "%%")
}

/// One word for a setting that splits on blanks and unquotes (`Environment=`,
/// `ReadWritePaths=`, `ExecStart=`): bare when safe, else double-quoted with `\` and `"`
/// escaped. `dollar` also doubles `$` (`ExecStart=` expands `$VAR`).
fn word(s: &str, dollar: bool) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@=%".contains(c);
    let s = if dollar {
        s.replace('$', "$$")
    } else {
        s.to_owned()
    };
    if s.chars().all(safe) && !s.is_empty() {
        return spec(&s);
    }
    let mut q = String::from("\"");
    for c in s.chars() {
        if c == '\\' || c == '"' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    spec(&q)
}

fn path_str(p: &Path) -> std::borrow::Cow<'_, str> {
    debug_assert!(check_path(p).is_ok(), "unvalidated path {}", p.display());
    p.to_string_lossy()
}

fn edit_hint(mode: Mode) -> &'static str {
    match mode {
        Mode::System => "systemctl edit outpost",
        Mode::User => "systemctl --user edit outpost",
    }
}

/// `outpost.service`.
pub fn unit(p: &UnitParams) -> String {
    debug_assert!(validate(p).is_ok(), "unvalidated unit params {p:?}");
    let system = p.mode == Mode::System;
    let mut u = String::new();
    let mut line = |s: String| {
        u.push_str(&s);
        u.push('\n');
    };
    line(format!(
        "# Managed by outpost — do not edit; use a drop-in ({})",
        edit_hint(p.mode)
    ));
    line("[Unit]".into());
    line("Description=outpost agent".into());
    // No Documentation=man:…: hosts rarely have the page installed and `systemd-analyze verify`
    // fails on a man page it cannot open. `outpost --help` and `outpost status` are the docs.
    if system {
        line("Wants=network-online.target".into());
        line("After=network-online.target".into());
    }
    line("StartLimitIntervalSec=300".into());
    line("StartLimitBurst=5".into());
    line(String::new());
    line("[Service]".into());
    line("Type=notify".into());
    line("NotifyAccess=main".into());
    // `-`: a resolver failure must not block the start; `+`: it may fix root-owned files.
    // `env -i`: the resolver runs with a fixed environment, never the service's (which
    // includes `EnvironmentFile=`), so nothing but the unit decides what it does.
    line(format!(
        "ExecStartPre=-+/usr/bin/env -i {RESOLVER_PATH} {} upgrade --resolve-pending --{}",
        word(&path_str(&p.resolver), true),
        p.mode.as_str()
    ));
    line(format!(
        "ExecStart={} agent run",
        word(&path_str(&p.exec), true)
    ));
    for (k, v) in [
        (env::MODE, p.mode.as_str().into()),
        (env::CONFIG, path_str(&p.config_file)),
        (env::STATE_DIR, path_str(&p.state_dir)),
        (env::INSTALL_JOURNAL, path_str(&p.install_journal)),
        (env::ENV_FILE, path_str(&p.env_file)),
    ] {
        line(format!("Environment={}", word(&format!("{k}={v}"), false)));
    }
    line(format!("EnvironmentFile=-{}", spec(&path_str(&p.env_file))));
    if system {
        if let Some(user) = &p.user {
            line(format!("User={user}"));
        }
        if let Some(group) = &p.group {
            line(format!("Group={group}"));
        }
    }
    line("Restart=always".into());
    line("RestartSec=5".into());
    line(format!("RestartPreventExitStatus={}", p.revoked_exit_code));
    line(format!("WatchdogSec={}", p.watchdog_sec));
    line("TimeoutStopSec=30".into());
    line(String::new());
    line("[Install]".into());
    line(format!(
        "WantedBy={}",
        if system {
            "multi-user.target"
        } else {
            "default.target"
        }
    ));
    u
}

/// `outpost.service.d/10-hardening.conf` (system mode): sandboxing that leaves the agent
/// its state directory, the network and `/proc/meminfo` (hence no `ProcSubset=pid`).
pub fn hardening_dropin(p: &UnitParams) -> String {
    debug_assert!(validate(p).is_ok(), "unvalidated unit params {p:?}");
    // Only the agent's own state dir: config, secrets and root's state stay read-only to it
    // (and are root's on disk too).
    let rw = format!("ReadWritePaths={}", word(&path_str(&p.state_dir), false));
    let settings: [(&str, &str); 26] = [
        (
            "NoNewPrivileges=yes",
            "no setuid or file-capability escalation",
        ),
        (
            "ProtectSystem=strict",
            "the whole file system is read-only…",
        ),
        (&rw, "…except the agent's own state directory"),
        (
            "InaccessiblePaths=-/home -/root",
            "no access to /home and /root (`-`: a missing one is no error). Not ProtectHome=yes:\n\
             that also hides /run/user, and the agent talks to its own user manager on\n\
             /run/user/UID/bus (other users' dirs there are 0700). /run/user stays the host's (a\n\
             mount slave of it), so the /run/user/UID tmpfs that user@UID mounts after the agent\n\
             started, or again later, shows up here too. (ProtectHome=tmpfs + BindPaths=/run/user\n\
             propagates as well, but with ProtectSystem=strict leaves /home and /root as writable\n\
             empty tmpfs.)",
        ),
        ("PrivateTmp=yes", "own /tmp and /var/tmp"),
        (
            "PrivateDevices=yes",
            "only pseudo devices (null, zero, random, …)",
        ),
        ("ProtectKernelTunables=yes", "/proc/sys, /sys are read-only"),
        ("ProtectKernelModules=yes", "no module loading"),
        ("ProtectKernelLogs=yes", "no kernel log access"),
        ("ProtectControlGroups=yes", "cgroup tree read-only"),
        ("ProtectClock=yes", "cannot set the clock"),
        ("ProtectHostname=yes", "cannot change the hostname"),
        ("RestrictNamespaces=yes", "cannot create namespaces"),
        ("RestrictRealtime=yes", "no realtime scheduling"),
        ("RestrictSUIDSGID=yes", "cannot create setuid/setgid files"),
        ("LockPersonality=yes", "cannot change the execution domain"),
        (
            "MemoryDenyWriteExecute=yes",
            "no writable and executable memory",
        ),
        (
            "SystemCallArchitectures=native",
            "native system call ABI only",
        ),
        (
            "SystemCallFilter=@system-service",
            "system calls a typical service needs…",
        ),
        (
            "SystemCallErrorNumber=EPERM",
            "…others fail with EPERM instead of killing the agent",
        ),
        (
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "local sockets, IP, netlink (interface state)",
        ),
        (
            "CapabilityBoundingSet=",
            "no capabilities, even if started as root",
        ),
        ("AmbientCapabilities=", "and none passed in"),
        ("UMask=0077", "files the agent creates are private"),
        (
            "ProtectProc=invisible",
            "other users' processes are hidden in /proc",
        ),
        ("KeyringMode=private", "own kernel keyring"),
    ];
    let mut out = String::new();
    // Writing to a String cannot fail, so the fmt::Result is ignored below.
    let _ = writeln!(
        out,
        "# Managed by outpost — do not edit; use another drop-in ({})",
        edit_hint(p.mode)
    );
    let _ = writeln!(out, "[Service]");
    for (setting, why) in settings {
        for line in why.lines() {
            let _ = writeln!(out, "# {line}");
        }
        let _ = writeln!(out, "{setting}");
    }
    out
}

/// `/etc/systemd/system/outpost-run-privileged@.service` (system mode): the one way the
/// service user can make root run something. Its instance name is a run id; root's
/// `outpost privileged-run ID` reads the agent's request as untrusted bytes, re-validates it
/// against the root-owned pack at the admin's grant, and starts the run's unit
/// (docs/RUNS.md, *Privileged actions*). The helper itself needs no network, and writes only
/// root's state dir.
pub fn privileged_template(layout: &Layout) -> String {
    let exec = word(&path_str(&layout.current_binary()), false);
    let state = word(&path_str(&layout.state_dir), false);
    format!(
        r#"# Managed by outpost — do not edit.
# Admits one privileged run: `outpost privileged-run RUN_ID` checks the service user's request
# against the root-owned pack and the admin's grant (`outpost pack trust NAME --privileged`),
# then starts outpost-run-RUN_ID.service as root, or refuses it with the reason.
[Unit]
Description=outpost: admit privileged run %i
Documentation=man:outpost(1)
RefuseManualStop=yes

[Service]
Type=oneshot
ExecStart={exec} privileged-run %i
TimeoutStartSec=60
NoNewPrivileges=yes
PrivateNetwork=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectSystem=strict
ReadWritePaths={state}
ProtectHome=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
"#
    )
}

/// `/etc/polkit-1/rules.d/50-outpost.rules` (polkit ≥ 0.106): `user`, and members of
/// `admin_group`, may start, stop and restart `outpost.service`, nothing else. Names must
/// satisfy [`valid_username`] (they are embedded in JavaScript string literals).
pub fn polkit_rules(user: &str, admin_group: Option<&str>) -> String {
    debug_assert!(valid_username(user), "invalid user {user:?}");
    if let Some(g) = admin_group {
        debug_assert!(valid_username(g), "invalid group {g:?}");
    }
    let who = match admin_group {
        Some(g) => format!("(subject.user == \"{user}\" || subject.isInGroup(\"{g}\"))"),
        None => format!("subject.user == \"{user}\""),
    };
    let also = match admin_group {
        Some(g) => format!(" and members of group {g}"),
        None => String::new(),
    };
    format!(
        r#"// Managed by outpost — do not edit.
// Lets user {user}{also} start, stop and restart {unit}; and user {user} start (and
// reset-failed) outpost-run-privileged@RUN_ID.service, which admits one privileged run
// after root re-validates it, and stop (and reset-failed) the runs' units
// outpost-run-RUN_ID.service. Nothing else: no transient units, no other unit or verb.
polkit.addRule(function(action, subject) {{
    if (action.id != "org.freedesktop.systemd1.manage-units") {{
        return polkit.Result.NOT_HANDLED;
    }}
    var unit = action.lookup("unit"), verb = action.lookup("verb");
    if (unit == "{unit}" &&
        ["start", "stop", "restart"].indexOf(verb) >= 0 &&
        {who}) {{
        return polkit.Result.YES;
    }}
    if (subject.user == "{user}" && typeof unit == "string") {{
        if (/^outpost-run-privileged@[A-Za-z0-9_-]{{1,64}}\.service$/.test(unit) &&
            (verb == "start" || verb == "reset-failed")) {{
            return polkit.Result.YES;
        }}
        if (/^outpost-run-[A-Za-z0-9_-]{{1,64}}\.service$/.test(unit) &&
            (verb == "stop" || verb == "reset-failed")) {{
            return polkit.Result.YES;
        }}
    }}
    return polkit.Result.NOT_HANDLED;
}});
"#,
        unit = crate::UNIT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system() -> UnitParams {
        UnitParams::from_layout(
            &Layout::system(Path::new("/")),
            Some("outpost".into()),
            Some("outpost".into()),
        )
    }
    fn user(home: &str) -> UnitParams {
        UnitParams::from_layout(&Layout::user(Path::new("/"), Path::new(home)), None, None)
    }

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    #[test]
    fn system_unit_lines() {
        let u = unit(&system());
        let l = lines(&u);
        for want in [
            "# Managed by outpost — do not edit; use a drop-in (systemctl edit outpost)",
            "[Unit]",
            "Description=outpost agent",
            "StartLimitIntervalSec=300",
            "StartLimitBurst=5",
            "Wants=network-online.target",
            "After=network-online.target",
            "[Service]",
            "Type=notify",
            "NotifyAccess=main",
            "ExecStart=/opt/outpost/current/outpost agent run",
            "Environment=OUTPOST_MODE=system",
            "Environment=OUTPOST_CONFIG=/etc/outpost/config.toml",
            "Environment=OUTPOST_STATE_DIR=/var/lib/outpost/agent",
            "Environment=OUTPOST_INSTALL_JOURNAL=/var/lib/outpost/events.jsonl",
            "EnvironmentFile=-/etc/outpost/outpost.env",
            "ExecStartPre=-+/usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /opt/outpost/last-good/outpost upgrade --resolve-pending --system",
            "User=outpost",
            "Group=outpost",
            "Restart=always",
            "RestartSec=5",
            "RestartPreventExitStatus=10",
            "WatchdogSec=30",
            "TimeoutStopSec=30",
            "[Install]",
            "WantedBy=multi-user.target",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{u}");
        }
        // Settings sit in the right sections.
        let section = |key: &str| {
            let i = l.iter().position(|x| x.starts_with(key)).expect(key);
            *l[..i]
                .iter()
                .rev()
                .find(|x| x.starts_with('['))
                .expect("section")
        };
        for (key, sec) in [
            ("StartLimitBurst=", "[Unit]"),
            ("After=", "[Unit]"),
            ("WatchdogSec=", "[Service]"),
            ("WantedBy=", "[Install]"),
        ] {
            assert_eq!(section(key), sec, "{key}");
        }
        assert!(!u.contains("0.1"), "no version in the unit");
    }

    #[test]
    fn user_unit_differs() {
        let u = unit(&user("/home/alice"));
        let l = lines(&u);
        for want in [
            "# Managed by outpost — do not edit; use a drop-in (systemctl --user edit outpost)",
            "ExecStart=/home/alice/.local/share/outpost/current/outpost agent run",
            "Environment=OUTPOST_MODE=user",
            "Environment=OUTPOST_CONFIG=/home/alice/.config/outpost/config.toml",
            "Environment=OUTPOST_STATE_DIR=/home/alice/.local/state/outpost/agent",
            "EnvironmentFile=-/home/alice/.config/outpost/outpost.env",
            "WantedBy=default.target",
            "Type=notify",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{u}");
        }
        for absent in [
            "User=",
            "Group=",
            "After=network-online.target",
            "Wants=",
            "multi-user.target",
        ] {
            assert!(
                !l.iter().any(|x| x.starts_with(absent)),
                "unexpected {absent:?} in\n{u}"
            );
        }
        // User/group are ignored in user mode even if set.
        let mut p = user("/home/alice");
        p.user = Some("alice".into());
        assert!(!unit(&p).contains("User="));
    }

    #[test]
    fn escapes_paths() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "/home/Bob Space",
                "ExecStart=\"/home/Bob Space/.local/share/outpost/current/outpost\" agent run",
                "Environment=\"OUTPOST_CONFIG=/home/Bob Space/.config/outpost/config.toml\"",
                "EnvironmentFile=-/home/Bob Space/.config/outpost/outpost.env",
            ),
            (
                "/home/100%",
                "ExecStart=/home/100%%/.local/share/outpost/current/outpost agent run",
                "Environment=OUTPOST_CONFIG=/home/100%%/.config/outpost/config.toml",
                "EnvironmentFile=-/home/100%%/.config/outpost/outpost.env",
            ),
            (
                "/home/$HOME",
                "ExecStart=\"/home/$$HOME/.local/share/outpost/current/outpost\" agent run",
                "Environment=\"OUTPOST_CONFIG=/home/$HOME/.config/outpost/config.toml\"",
                "EnvironmentFile=-/home/$HOME/.config/outpost/outpost.env",
            ),
            (
                "/home/a\"b\\c",
                "ExecStart=\"/home/a\\\"b\\\\c/.local/share/outpost/current/outpost\" agent run",
                "Environment=\"OUTPOST_CONFIG=/home/a\\\"b\\\\c/.config/outpost/config.toml\"",
                "EnvironmentFile=-/home/a\"b\\c/.config/outpost/outpost.env",
            ),
        ];
        for (home, exec, config, env_file) in cases {
            let p = user(home);
            assert_eq!(validate(&p), Ok(()), "{home}");
            let u = unit(&p);
            let l = lines(&u);
            for want in [exec, config, env_file] {
                assert!(l.contains(want), "{home}: missing {want:?} in\n{u}");
            }
        }
        let mut p = system();
        p.state_dir = PathBuf::from("/srv/out post");
        assert!(lines(&hardening_dropin(&p)).contains(&"ReadWritePaths=\"/srv/out post\""));
    }

    #[test]
    fn validate_refuses() {
        type Edit = fn(&mut UnitParams);
        let cases: Vec<(&str, Edit, &str)> = vec![
            (
                "relative",
                |p| p.exec = "opt/outpost".into(),
                "cannot use opt/outpost in a systemd unit: not absolute",
            ),
            (
                "newline",
                |p| p.config_file = "/etc/a\nb".into(),
                "contains a control character",
            ),
            (
                "trailing blank",
                |p| p.env_file = "/etc/env ".into(),
                "ends with whitespace",
            ),
            (
                "bad user",
                |p| p.user = Some("Bad User".into()),
                "invalid user or group name \"Bad User\"",
            ),
            (
                "bad group",
                |p| p.group = Some("g$".into()),
                "invalid user or group name \"g$\"",
            ),
        ];
        for (name, f, want) in cases {
            let mut p = system();
            f(&mut p);
            let err = validate(&p).expect_err(name).to_string();
            assert!(err.contains(want), "{name}: {err}");
            assert!(!err.contains('\n') || name == "newline", "{name}: {err}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let mut p = system();
            p.state_dir = PathBuf::from(std::ffi::OsStr::from_bytes(b"/var/lib/\xff"));
            assert!(validate(&p)
                .expect_err("non-utf8")
                .to_string()
                .contains("not valid UTF-8"));
        }
        assert_eq!(validate(&system()), Ok(()));
    }

    #[test]
    fn dropin_lines() {
        let d = hardening_dropin(&system());
        let l = lines(&d);
        assert_eq!(l[1], "[Service]");
        for want in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/outpost/agent",
            "InaccessiblePaths=-/home -/root",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "RestrictNamespaces=yes",
            "RestrictRealtime=yes",
            "RestrictSUIDSGID=yes",
            "LockPersonality=yes",
            "MemoryDenyWriteExecute=yes",
            "SystemCallArchitectures=native",
            "SystemCallFilter=@system-service",
            "SystemCallErrorNumber=EPERM",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "CapabilityBoundingSet=",
            "AmbientCapabilities=",
            "UMask=0077",
            "ProtectProc=invisible",
            "KeyringMode=private",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{d}");
        }
        assert!(!d.contains("ProcSubset"), "the agent reads /proc/meminfo");
        // /run/user stays visible: the agent talks to its own user manager there.
        assert!(
            !l.iter().any(|x| x.starts_with("ProtectHome=")),
            "ProtectHome= hides /run/user\n{d}"
        );
        // Every setting has a comment right above it.
        for (i, s) in l.iter().enumerate().skip(2) {
            if !s.starts_with('#') {
                assert!(l[i - 1].starts_with("# "), "no comment above {s:?}");
            }
        }
    }

    #[test]
    fn polkit_rule_text() {
        let r = polkit_rules("outpost", Some("outpost-admins"));
        for want in [
            "if (action.id != \"org.freedesktop.systemd1.manage-units\")",
            "if (unit == \"outpost.service\" &&",
            "[\"start\", \"stop\", \"restart\"].indexOf(verb) >= 0 &&",
            "(subject.user == \"outpost\" || subject.isInGroup(\"outpost-admins\"))",
            "if (subject.user == \"outpost\" && typeof unit == \"string\")",
            r#"/^outpost-run-privileged@[A-Za-z0-9_-]{1,64}\.service$/.test(unit) &&"#,
            r#"(verb == "start" || verb == "reset-failed")"#,
            r#"/^outpost-run-[A-Za-z0-9_-]{1,64}\.service$/.test(unit) &&"#,
            r#"(verb == "stop" || verb == "reset-failed")"#,
            "return polkit.Result.YES;",
        ] {
            assert!(r.contains(want), "missing {want:?} in\n{r}");
        }
        // Three grants: outpost.service, admitting a privileged run, stopping a run.
        assert_eq!(
            r.matches("polkit.Result.YES").count(),
            3,
            "grants nothing else"
        );
        assert!(!r.contains("systemd1.manage-unit-files"));
        let r = polkit_rules("outpost", None);
        assert!(r.contains("        subject.user == \"outpost\")"), "{r}");
        assert!(!r.contains("isInGroup"));
        assert!(!r.contains("members of"));
    }

    #[test]
    fn privileged_template_text() {
        let t = privileged_template(&Layout::system(Path::new("/")));
        for want in [
            "Type=oneshot",
            "ExecStart=/opt/outpost/current/outpost privileged-run %i",
            "ReadWritePaths=/var/lib/outpost",
            "PrivateNetwork=yes",
            "NoNewPrivileges=yes",
        ] {
            assert!(t.lines().any(|l| l == want), "missing {want:?} in\n{t}");
        }
        assert!(!t.contains("User="), "root's: the helper must be root");
        assert!(Layout::user(Path::new("/"), Path::new("/home/a"))
            .privileged_template()
            .is_none());
    }

    #[test]
    fn text_hygiene() {
        let texts = [
            unit(&system()),
            unit(&user("/home/alice")),
            unit(&user("/home/Bob Space")),
            hardening_dropin(&system()),
            polkit_rules("outpost", Some("sudo")),
            polkit_rules("outpost", None),
        ];
        for t in &texts {
            assert!(t.ends_with('\n') && !t.ends_with("\n\n"), "{t}");
            for l in t.lines() {
                assert_eq!(l, l.trim_end(), "trailing whitespace in {l:?}");
            }
        }
        // Deterministic.
        assert_eq!(unit(&system()), texts[0]);
        assert_eq!(hardening_dropin(&system()), texts[3]);
        assert_eq!(polkit_rules("outpost", Some("sudo")), texts[4]);
    }
}
