//! passwd/group lookups under a filesystem root, and the argv for creating the service user.
//!
//! Only the local files are consulted (not NSS): the service user outpost creates is always a
//! local system account, and detection falls back gracefully for directory-service users.
use crate::detect::Account;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// An fs_err error: its message names the path and the OS error on one line.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Parse `/etc/passwd` text. Blank lines, comments, NIS `+`/`-` entries and malformed lines
/// (fewer than 7 fields, non-numeric ids) are skipped.
pub fn parse_passwd(text: &str) -> Vec<Account> {
    text.lines().filter_map(parse_passwd_line).collect()
}

fn parse_passwd_line(line: &str) -> Option<Account> {
    if line.trim().is_empty() || line.starts_with(['#', '+', '-']) {
        return None;
    }
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 7 || f[0].is_empty() {
        return None;
    }
    Some(Account {
        name: f[0].to_owned(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: PathBuf::from(f[5]),
    })
}

/// Group names from `/etc/group` text (same skipping rules as [`parse_passwd`]).
pub fn parse_group_names(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(['#', '+', '-']))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && !f[0].is_empty() && f[2].parse::<u32>().is_ok())
                .then(|| f[0].to_owned())
        })
        .collect()
}

fn read_under(root: &Path, host_path: &str) -> Result<String, UsersError> {
    Ok(fs_err::read_to_string(
        root.join(host_path.trim_start_matches('/')),
    )?)
}

/// The passwd entry named `name` in `<root>/etc/passwd`.
pub fn by_name(root: &Path, name: &str) -> Result<Option<Account>, UsersError> {
    Ok(parse_passwd(&read_under(root, "/etc/passwd")?)
        .into_iter()
        .find(|a| a.name == name))
}

/// The first passwd entry with `uid` in `<root>/etc/passwd`.
pub fn by_uid(root: &Path, uid: u32) -> Result<Option<Account>, UsersError> {
    Ok(parse_passwd(&read_under(root, "/etc/passwd")?)
        .into_iter()
        .find(|a| a.uid == uid))
}

/// Whether `<root>/etc/group` has a group named `name`.
pub fn group_exists(root: &Path, name: &str) -> Result<bool, UsersError> {
    Ok(parse_group_names(&read_under(root, "/etc/group")?)
        .iter()
        .any(|g| g == name))
}

pub use outpost_core::names::valid_username;

/// argv for creating the system service user with its own group and no login shell.
/// `name` must satisfy [`valid_username`]; `home` is the host path (not created: the
/// executor creates the state directory itself). A non-UTF-8 home is converted lossily;
/// the layouts outpost uses are ASCII.
pub fn create_system_user_cmd(name: &str, home: &Path) -> Vec<String> {
    debug_assert!(valid_username(name), "invalid user name {name:?}");
    [
        "useradd",
        "--system",
        "--user-group",
        "--home-dir",
        &home.to_string_lossy(),
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        name,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// argv for deleting the service user (and, by `userdel`'s default `USERGROUPS_ENAB`, its
/// private group). The home is left alone: the executor removes the state directory.
pub fn delete_user_cmd(name: &str) -> Vec<String> {
    debug_assert!(valid_username(name), "invalid user name {name:?}");
    ["userdel", name].map(str::to_owned).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/passwd");
    const PASSWD: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/passwd/passwd"
    ));

    /// A root with the passwd fixtures at `etc/`.
    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        fs_err::create_dir_all(d.path().join("etc")).expect("mkdir");
        for f in ["passwd", "group"] {
            fs_err::copy(Path::new(FIXTURES).join(f), d.path().join("etc").join(f))
                .expect("copy fixture");
        }
        d
    }

    #[test]
    fn parses_passwd_fixture() {
        let accounts = parse_passwd(PASSWD);
        let names: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "root",
                "daemon",
                "bin",
                "sys",
                "nobody",
                "systemd-network",
                "messagebus",
                "polkitd",
                "outpost",
                "alice",
                "bob"
            ]
        );
        let bob = accounts.iter().find(|a| a.name == "bob").expect("bob");
        assert_eq!(
            (bob.uid, bob.gid, bob.home.as_path()),
            (1001, 1001, Path::new("/home/Bob Space"))
        );
    }

    #[test]
    fn lookups_under_root() {
        let r = root();
        let cases: &[(&str, Option<u32>)] = &[
            ("root", Some(0)),
            ("alice", Some(1000)),
            ("outpost", Some(996)),
            ("mallory", None),
            ("badpuid", None),
            ("+nisuser", None),
            ("", None),
        ];
        for (name, uid) in cases {
            assert_eq!(
                by_name(r.path(), name).expect("read").map(|a| a.uid),
                *uid,
                "{name}"
            );
        }
        let cases: &[(u32, Option<&str>)] = &[
            (0, Some("root")),
            (1000, Some("alice")),
            (65534, Some("nobody")),
            (4242, None),
        ];
        for (uid, name) in cases {
            assert_eq!(
                by_uid(r.path(), *uid)
                    .expect("read")
                    .map(|a| a.name)
                    .as_deref(),
                *name,
                "{uid}"
            );
        }
        let cases: &[(&str, bool)] = &[
            ("sudo", true),
            ("outpost-admins", true),
            ("outpost", true),
            ("wheel", false),
            ("alice,bob", false),
        ];
        for (g, want) in cases {
            assert_eq!(group_exists(r.path(), g).expect("read"), *want, "{g}");
        }
    }

    #[test]
    fn missing_file_error_names_path_once() {
        let d = tempfile::tempdir().expect("tempdir");
        let err = by_name(d.path(), "root")
            .expect_err("no passwd")
            .to_string();
        let path = d.path().join("etc/passwd").display().to_string();
        assert!(
            err.starts_with(&format!("failed to open file `{path}`: ")),
            "{err}"
        );
        assert_eq!(err.matches(&path).count(), 1, "{err}");
        assert!(!err.contains('\n'));
        let err = group_exists(d.path(), "sudo")
            .expect_err("no group")
            .to_string();
        assert!(err.contains("etc/group"), "{err}");
    }

    #[test]
    fn usernames() {
        let cases: &[(&str, bool)] = &[
            ("outpost", true),
            ("_outpost", true),
            ("out-post_2", true),
            ("a", true),
            (&"a".repeat(32), true),
            (&"a".repeat(33), false),
            ("", false),
            ("Outpost", false),
            ("1outpost", false),
            ("-outpost", false),
            ("outpost$", false),
            ("out post", false),
            ("out.post", false),
            ("outpöst", false),
            ("root\n", false),
        ];
        for (name, want) in cases {
            assert_eq!(valid_username(name), *want, "{name:?}");
        }
    }

    #[test]
    fn commands() {
        assert_eq!(
            create_system_user_cmd("outpost", Path::new("/var/lib/outpost")),
            [
                "useradd",
                "--system",
                "--user-group",
                "--home-dir",
                "/var/lib/outpost",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "outpost"
            ]
        );
        assert_eq!(delete_user_cmd("outpost"), ["userdel", "outpost"]);
    }
}
