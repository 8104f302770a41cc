//! cloud-init/bootstrap.sh keeps the enrollment key out of every command's argv and
//! environment (/proc/PID/cmdline is world-readable): its key handling (read_key,
//! write_user_key, scrub_cloud_init, cleanup) runs here against stand-in cloud-init
//! directories with every external command it could call wrapped by a logger of argv and
//! environment. No testbed needed; tests/e2e_cloudinit.rs boots the whole thing.
use std::path::Path;
use std::process::Command;

const KEY: &str = "opk_AbC-123_xyz789";
/// Commands the key handling may run (the wrappers log them, then run the real one).
const WRAPPED: &[&str] = &[
    "grep", "sed", "rm", "mktemp", "chown", "chmod", "cat", "tr", "head", "cut", "stat", "mv",
    "cp", "id", "env",
];

fn script() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../cloud-init/bootstrap.sh"),
    )
    .unwrap()
}

fn real(cmd: &str) -> Option<String> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| format!("{d}/{cmd}"))
        .find(|p| Path::new(p).exists())
}

#[test]
fn key_never_in_argv_or_environment() {
    let text = script();
    let body = text.trim_end();
    let (funcs, last) = body.rsplit_once('\n').unwrap();
    assert_eq!(last, "{ main \"$@\"; }", "main must stay the last line");
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::write(dir.join("funcs.sh"), funcs).unwrap();
    let log = dir.join("log");
    std::fs::create_dir(&log).unwrap();
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    // The wrappers call only builtins and absolute paths (a wrapper calling `env` through
    // PATH would run itself).
    let real_env = real("env").expect("env is installed");
    for cmd in WRAPPED {
        let Some(real) = real(cmd) else { continue };
        let wrapper = format!(
            "#!/bin/sh\n{{ printf '%s' {cmd:?}; for a in \"$@\"; do printf ' %s' \"$a\"; done; printf '\\n'; }} >>{argv}\n{real_env} >>{env}\nexec {real} \"$@\"\n",
            argv = log.join("argv").display(),
            env = log.join("env").display(),
        );
        let p = bin.join(cmd);
        std::fs::write(&p, wrapper).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // cloud-init's copies of the user-data, a pickled cache, and a file without the key
    let cloud = dir.join("var-lib-cloud");
    let run_ci = dir.join("run-cloud-init");
    std::fs::create_dir_all(cloud.join("instance")).unwrap();
    std::fs::create_dir_all(&run_ci).unwrap();
    let user_data =
        format!("#cloud-config\nwrite_files:\n  - content: |\n      OUTPOST_ENROLL_KEY={KEY}\n");
    std::fs::write(cloud.join("instance/user-data.txt"), &user_data).unwrap();
    std::fs::write(
        cloud.join("instance/obj.pkl"),
        format!("\x04pickle{KEY}\x00"),
    )
    .unwrap();
    std::fs::write(
        run_ci.join("instance-data-sensitive.json"),
        format!("{{\"userdata\": \"OUTPOST_ENROLL_KEY={KEY}\"}}\n"),
    )
    .unwrap();
    std::fs::write(cloud.join("instance/other.txt"), "nothing secret\n").unwrap();
    // the secrets file as an operator might have written it by hand: a commented-out line
    // first, then the key quoted, indented, with a CRLF ending
    std::fs::write(
        dir.join("outpost.env"),
        format!(
            "# OUTPOST_ENROLL_KEY=not-this-one\nOUTPOST_HUB=x\n  OUTPOST_ENROLL_KEY=\"{KEY}\"\r\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.join("run")).unwrap();
    let harness = r#"
set -eu
. "$DIR/funcs.sh"
SECRETS_FILE=$DIR/outpost.env
CLOUD_DIRS="$DIR/var-lib-cloud $DIR/run-cloud-init"
KEY_PARENT=$DIR/run
trap cleanup EXIT
read_key
printf 'parsed=%s\n' "$KEY"
key_files
chmod 0711 "$KEY_DIR"
write_user_key "$KEY_DIR/enroll.key" "$(id -u)" "$(id -g)"
read -r k <"$KEY_DIR/enroll.key"
printf 'userkey=%s\n' "$k"
stat -c 'mode %a %n' "$KEY_DIR" "$KEY_DIR/key.grep" "$KEY_DIR/key.sed" "$KEY_DIR/enroll.key"
scrub_cloud_init
"#;
    let o = Command::new("timeout")
        .args(["120", "sh", "-c", harness])
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin:/usr/sbin:/sbin", bin.display()),
        )
        .env("DIR", dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}");
    let parsed = format!("parsed={KEY}\n");
    let user_key = format!("userkey={KEY}\n");
    for want in [
        parsed.as_str(),
        user_key.as_str(),
        "removed the enrollment key from cloud-init's cached user-data",
    ] {
        assert!(out.contains(want), "no {want:?}:\n{out}");
    }
    // private files: the directory 0700 (0711 while the user's key file is in it), files 0600
    let modes: Vec<&str> = out.lines().filter(|l| l.starts_with("mode ")).collect();
    assert_eq!(modes.len(), 4, "{out}");
    assert!(modes[0].starts_with("mode 711 "), "{out}");
    for m in &modes[1..] {
        assert!(m.starts_with("mode 600 "), "{out}");
    }
    // the copies are scrubbed, the pickle is gone, the unrelated file is untouched
    let scrubbed = std::fs::read_to_string(cloud.join("instance/user-data.txt")).unwrap();
    assert_eq!(scrubbed, user_data.replace(KEY, "REDACTED"));
    assert!(
        std::fs::read_to_string(run_ci.join("instance-data-sensitive.json"))
            .unwrap()
            .contains("OUTPOST_ENROLL_KEY=REDACTED")
    );
    assert!(
        !cloud.join("instance/obj.pkl").exists(),
        "the pickled cache was kept"
    );
    assert_eq!(
        std::fs::read_to_string(cloud.join("instance/other.txt")).unwrap(),
        "nothing secret\n"
    );
    // nothing holding the key is left behind
    let left: Vec<_> = std::fs::read_dir(dir.join("run")).unwrap().collect();
    assert!(left.is_empty(), "KEY_DIR was not removed: {left:?}");
    // the point: the wrappers saw grep and sed do the work, and never saw the key
    let argv = std::fs::read_to_string(log.join("argv")).unwrap();
    assert!(
        !argv.contains(KEY),
        "the key was in a command line:\n{argv}"
    );
    assert!(
        argv.contains("grep -rlF -f "),
        "grep was not wrapped:\n{argv}"
    );
    assert!(argv.contains("sed -i -f "), "sed was not wrapped:\n{argv}");
    let env = std::fs::read_to_string(log.join("env")).unwrap();
    assert!(!env.contains(KEY), "the key was in a command's environment");
}

/// POSIX sh (shellcheck -s sh, dash, busybox) for both shell scripts this package ships.
#[test]
fn shell_scripts_are_posix_sh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for script in ["scripts/install.sh", "cloud-init/bootstrap.sh"] {
        let path = root.join(script);
        for (tool, args) in [
            ("shellcheck", vec!["-s", "sh"]),
            ("dash", vec!["-n"]),
            ("busybox", vec!["sh", "-n"]),
        ] {
            let o = match Command::new(tool).args(&args).arg(&path).output() {
                Ok(o) => o,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    assert!(
                        std::env::var_os("CI").is_none(),
                        "{tool} is not installed but CI is set (ci/setup.sh installs it)"
                    );
                    eprintln!("SKIPPED: {tool} not installed (apt-get install {tool})");
                    continue;
                }
                Err(e) => panic!("running {tool}: {e}"),
            };
            assert!(
                o.status.success(),
                "{tool} {args:?} {script}:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}
