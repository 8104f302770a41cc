use super::*;
use std::os::unix::fs::PermissionsExt;

const GOOD: &str = r#"
[pack]
name = "linux-core"
version = "1.0.0"
description = "host basics"

[[action]]
id = "restart-service"
description = "restart a unit"
command = ["bin/restart.sh", "--unit={service}", "{now}"]
env = ["NOMAD_TOKEN"]
idempotent = true
limits = { timeout = "5m", memory = "64M", cpu = "50%", tasks = 32, log_size = "1M" }

[[action.param]]
name = "service"
type = "string"
pattern = "[a-z0-9@._-]+"
max_len = 64
required = true

[[action.param]]
name = "now"
type = "bool"
default = false

[[action.param]]
name = "level"
type = "enum"
values = ["info", "debug"]
default = "info"
as = "env"

[[action]]
id = "df"
command = ["/usr/bin/df", "-h"]
"#;

fn pack_dir(manifest: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join(MANIFEST), manifest).unwrap();
    std::fs::create_dir(d.path().join("bin")).unwrap();
    let s = d.path().join("bin/restart.sh");
    std::fs::write(&s, "#!/bin/sh\necho restart \"$@\"\n").unwrap();
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn given(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_good_pack_loads_with_its_catalog() {
    let d = pack_dir(GOOD);
    let p = load(d.path(), None).unwrap();
    assert_eq!(p.name, "linux-core");
    assert_eq!(p.sha256.len(), 64);
    let a = p.action("restart-service").unwrap();
    assert_eq!(
        a.limits,
        Limits {
            timeout_secs: 300,
            memory_bytes: Some(64 << 20),
            cpu_percent: Some(50),
            tasks: Some(32),
            log_bytes: 1 << 20,
        }
    );
    assert_eq!(p.action("df").unwrap().limits.timeout_secs, 3600);
    let c = p.catalog();
    assert_eq!(c.actions.len(), 2);
    assert_eq!(c.actions[0].params[0].kind, "string");
    assert!(c.actions[0].idempotent && !c.actions[0].privileged);
}

#[test]
fn invocation_table() {
    let d = pack_dir(GOOD);
    let p = load(d.path(), None).unwrap();
    let a = p.action("restart-service").unwrap();
    let script = d
        .path()
        .join("bin/restart.sh")
        .to_string_lossy()
        .into_owned();
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        Result<(Vec<&'a str>, &'a str), &'a str>,
    );
    let cases: &[Case] = &[
        (
            &[("service", "nginx.service")],
            Ok((vec!["--unit=nginx.service", "false"], "info")),
        ),
        (
            &[("service", "a@b"), ("now", "true"), ("level", "debug")],
            Ok((vec!["--unit=a@b", "true"], "debug")),
        ),
        (&[], Err("parameter service is required")),
        (&[("service", "x; rm -rf /")], Err("does not match")),
        (&[("service", "$(id)")], Err("does not match")),
        (
            &[("service", "ok"), ("now", "yes")],
            Err("not true or false"),
        ),
        (
            &[("service", "ok"), ("level", "trace")],
            Err("not one of info, debug"),
        ),
        (
            &[("service", "ok"), ("extra", "1")],
            Err("no parameter \"extra\""),
        ),
        (&[("service", &"a".repeat(65))], Err("longer than 64")),
    ];
    for (g, want) in cases {
        let got = a.invocation(d.path(), &given(g));
        match (want, got) {
            (Ok((args, level)), Ok(inv)) => {
                assert_eq!(inv.argv[0], script);
                assert_eq!(&inv.argv[1..], &args[..], "{g:?}");
                assert_eq!(inv.env["OUTPOST_PARAM_LEVEL"], *level, "{g:?}");
                assert_eq!(inv.env.len(), 1, "{g:?}");
            }
            (Err(e), Err(got)) => assert!(got.contains(e), "{g:?}: {got}"),
            (w, g2) => panic!("{g:?}: want {w:?}, got {g2:?}"),
        }
    }
    let df = p
        .action("df")
        .unwrap()
        .invocation(d.path(), &given(&[]))
        .unwrap();
    assert_eq!(df.argv, ["/usr/bin/df", "-h"]);
}

#[test]
fn int_bounds() {
    let m = GOOD.replace(
        "[[action]]\nid = \"df\"\ncommand = [\"/usr/bin/df\", \"-h\"]",
        "[[action]]\nid = \"df\"\ncommand = [\"/usr/bin/df\", \"-n{n}\"]\n[[action.param]]\nname = \"n\"\ntype = \"int\"\nmin = -2\nmax = 10\nrequired = true",
    );
    let d = pack_dir(&m);
    let p = load(d.path(), None).unwrap();
    let a = p.action("df").unwrap();
    for (v, ok) in [
        ("0", true),
        ("-2", true),
        ("10", true),
        ("11", false),
        ("-3", false),
        ("1e3", false),
        ("", false),
    ] {
        let r = a.invocation(d.path(), &given(&[("n", v)]));
        assert_eq!(r.is_ok(), ok, "{v}: {r:?}");
    }
}

/// Each broken manifest is refused with a message naming the rule.
#[test]
fn manifest_rules() {
    let base = |action: &str| format!("[pack]\nname = \"p\"\nversion = \"1.0.0\"\n{action}");
    let cases: &[(String, &str)] = &[
        (GOOD.replace("id = \"df\"", "id = \"restart-service\""), "duplicate action id \"restart-service\""),
        (base("[[action]]\nid = \"a\"\ncommand = [\"../x\"]\n"), "escapes the pack root"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"bin/../../x\"]\n"), "escapes the pack root"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/usr/../bin/x\"]\n"), "has `..`"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"bin/none.sh\"]\n"), "is not a file of the pack"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"pack.toml\"]\n"), "is not executable"),
        (base("[[action]]\nid = \"a\"\ncommand = []\n"), "command is empty"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"{x}\"]\n"), "cannot be a parameter"),
        (base("[[action]]\nid = \"A b\"\ncommand = [\"/bin/true\"]\n"), "id: use"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/echo\", \"{x}\"]\n"), "{x} in command is not a parameter"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/echo\", \"{x\"]\n"), "unmatched `{`"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/true\"]\n[[action.param]]\nname = \"x\"\ntype = \"string\"\nmax_len = 3\n"), "{x} is not in command"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/echo\", \"{x}\"]\n[[action.param]]\nname = \"x\"\ntype = \"string\"\n"), "needs a pattern or a max_len"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/echo\", \"{x}\"]\n[[action.param]]\nname = \"x\"\ntype = \"string\"\npattern = \"(\"\n"), "pattern \"(\""),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/echo\", \"{x}\"]\n[[action.param]]\nname = \"x\"\ntype = \"int\"\nmin = 1\n"), "needs min and max"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/echo\", \"{x}\"]\n[[action.param]]\nname = \"x\"\ntype = \"float\"\n"), "type \"float\""),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/echo\", \"{x}\"]\n[[action.param]]\nname = \"x\"\ntype = \"enum\"\nvalues = [\"a\"]\ndefault = \"b\"\n"), "default: not one of a"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/true\"]\nenv = [\"OUTPOST_TOKEN\"]\n"), "is reserved"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/true\"]\nenv = [\"LD_PRELOAD\"]\n"), "is reserved"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/true\"]\nenv = [\"A-B\"]\n"), "not a variable name"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/true\"]\nlimits = { timeout = \"8d\" }\n"), "limits.timeout"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/true\"]\nlimits = { memory = \"12\" }\n"), "limits.memory"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/true\"]\nlimits = { cpu = \"50\" }\n"), "limits.cpu"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/true\"]\nlimits = { swap = \"1G\" }\n"), "unknown field"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/true\"]\nshell = true\n"), "unknown field"),
        (base("[[action]]\nid = \"a\"\ncommand = [\"/bin/true\"]\nmax_concurrency = 0\n"), "max_concurrency"),
        (base(""), "no [[action]]"),
        ("[pack]\nname = \"P Q\"\nversion = \"1.0.0\"\n[[action]]\nid = \"a\"\ncommand = [\"/bin/true\"]\n".into(), "pack name"),
        ("[pack]\nname = \"p\"\nversion = \"one\"\n".into(), "pack.toml"),
    ];
    for (m, want) in cases {
        let d = pack_dir(m);
        let e = load(d.path(), None).unwrap_err();
        assert!(matches!(e, PackError::Manifest { .. }), "{m}: {e}");
        assert!(e.to_string().contains(want), "{m}\nwant {want:?}, got: {e}");
        assert_eq!(outpost_core::Hint::exit_code(&e), outpost_core::exit::USAGE);
    }
}

#[test]
fn tree_rules() {
    type Plant = fn(&Path);
    let cases: &[(&str, Plant, &str)] = &[
        (
            "link to a file",
            |d| std::os::unix::fs::symlink("/etc/passwd", d.join("bin/p")).unwrap(),
            "bin/p: is a symlink",
        ),
        (
            "link to a dir",
            |d| std::os::unix::fs::symlink("/etc", d.join("etc")).unwrap(),
            "etc: is a symlink",
        ),
        (
            "fifo",
            |d| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    d.join("f"),
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o644),
                    0,
                )
                .unwrap()
            },
            "f: is not a regular file",
        ),
        (
            "no manifest",
            |d| std::fs::remove_file(d.join(MANIFEST)).unwrap(),
            "not found",
        ),
    ];
    for (what, plant, want) in cases {
        let d = pack_dir(GOOD);
        plant(d.path());
        let e = load(d.path(), None).unwrap_err();
        assert!(e.to_string().contains(want), "{what}: {e}");
    }
}

#[test]
fn the_hash_covers_paths_contents_and_the_exec_bit() {
    let d = pack_dir(GOOD);
    let h0 = load(d.path(), None).unwrap().sha256;
    assert_eq!(load(d.path(), None).unwrap().sha256, h0, "stable");
    let script = d.path().join("bin/restart.sh");
    let mut seen = BTreeSet::from([h0.clone()]);
    std::fs::write(d.path().join("README"), "x").unwrap();
    assert!(
        seen.insert(load(d.path(), None).unwrap().sha256),
        "added file"
    );
    std::fs::rename(d.path().join("README"), d.path().join("README.md")).unwrap();
    assert!(
        seen.insert(load(d.path(), None).unwrap().sha256),
        "renamed file"
    );
    std::fs::write(d.path().join("README.md"), "y").unwrap();
    assert!(
        seen.insert(load(d.path(), None).unwrap().sha256),
        "changed contents"
    );
    std::fs::set_permissions(
        d.path().join("README.md"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    assert!(
        seen.insert(load(d.path(), None).unwrap().sha256),
        "chmod +x"
    );
    std::fs::remove_file(d.path().join("README.md")).unwrap();
    assert_eq!(
        load(d.path(), None).unwrap().sha256,
        h0,
        "back to the original tree"
    );
    std::fs::create_dir(d.path().join("empty")).unwrap();
    assert!(
        seen.insert(load(d.path(), None).unwrap().sha256),
        "added dir"
    );
    let _ = script;
}

#[test]
fn bytes_and_limits() {
    for (s, want) in [
        ("1", Some(1)),
        ("2K", Some(2048)),
        ("64M", Some(64 << 20)),
        ("1G", Some(1 << 30)),
        ("0", None),
        ("1T", None),
        ("M", None),
        ("-1M", None),
    ] {
        assert_eq!(parse_bytes(s), want, "{s}");
    }
}

#[test]
fn a_trusted_load_checks_every_owner_and_mode() {
    let me = rustix::process::geteuid().as_raw();
    let d = pack_dir(GOOD);
    load(d.path(), Some(me)).unwrap();
    for (entry, mode) in [
        ("bin/restart.sh", 0o757),
        ("bin", 0o777),
        (MANIFEST, 0o646),
        (".", 0o775),
    ] {
        let p = d.path().join(entry);
        let old = std::fs::metadata(&p).unwrap().permissions().mode();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = load(d.path(), Some(me)).unwrap_err();
        assert!(e.to_string().contains("cannot be trusted"), "{entry}: {e}");
        assert!(load(d.path(), None).is_ok(), "{entry}: validate only");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(old)).unwrap();
    }
    if me == 0 {
        // A file the service user owns is not root's pack.
        rustix::fs::chown(
            d.path().join("bin/restart.sh"),
            Some(rustix::process::Uid::from_raw(4242)),
            None,
        )
        .unwrap();
        let e = load(d.path(), Some(0)).unwrap_err();
        assert!(e.to_string().contains("owned by uid 4242"), "{e}");
    }
}
