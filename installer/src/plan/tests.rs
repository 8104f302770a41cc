//! Plan + apply against a temp root and a recording fake service manager: install twice
//! (idempotent), keep the operator's edits, uninstall, purge.
use super::*;
use crate::apply::{apply_install, apply_uninstall, Host};
use crate::testing::Fake;
use outpost_systemd::{Logind, Scope, ServiceManager, SvcError};

struct Bed {
    dir: tempfile::TempDir,
    bin: PathBuf,
    fake: Fake,
}

fn bed() -> Bed {
    let dir = tempfile::tempdir().unwrap();
    for d in [
        "etc/systemd/system",
        "usr/local/bin",
        "var/lib",
        "opt",
        "etc/polkit-1/rules.d",
    ] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let bin = dir.path().join("outpost-src");
    std::fs::write(&bin, b"\x7fELF pretend binary").unwrap();
    Bed {
        dir,
        bin,
        fake: Fake::default(),
    }
}

/// Running as the test user, "owning" the service user means no chown.
fn inputs(b: &Bed, version: &str, create_user: bool) -> InstallInputs {
    let me = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    InstallInputs {
        layout: Layout::system(b.dir.path()),
        version: version.parse().unwrap(),
        binary: b.bin.clone(),
        binary_sha256: crate::fsx::sha256_file(&b.bin).unwrap(),
        service_user: ServiceUser {
            name: "outpost".into(),
            ids: if create_user { None } else { Some(me) },
            create: create_user,
        },
        admin_group: None,
        polkit: Some(PolkitFlavor::Rules),
        hub_url: None,
        enroll_key: Some("k-123".into()),
        start: true,
        release: ConfigSeed::default(),
    }
}

fn observe(b: &Bed, inp: &InstallInputs) -> Observed {
    let l = &inp.layout;
    Observed {
        paths: observe_paths(l, &install_paths(l, &inp.version)).unwrap(),
        unit: Some(b.fake.status(crate::UNIT).unwrap()),
        receipt: Receipt::load(l).unwrap(),
        users: b.fake.0.borrow().users.clone(),
        lingering: b.fake.lingering_users(),
    }
}

fn install(b: &Bed, inp: &InstallInputs) -> (InstallPlan, crate::apply::InstallOutcome) {
    let obs = observe(b, inp);
    let p = plan_install(inp, &obs);
    let me = rustix::process::geteuid().as_raw();
    let out = apply_install(&p, obs.receipt.clone(), &b.fake, me, &mut Vec::new()).unwrap();
    (p, out)
}

fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, p: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            let path = e.path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v.sort();
    v
}

fn me_user(b: &Bed) {
    let me = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    b.fake.0.borrow_mut().users.insert("outpost".into(), me);
}

#[test]
fn fresh_install_creates_everything_and_starts() {
    let b = bed();
    me_user(&b);
    let inp = inputs(&b, "1.0.0", false);
    let (p, out) = install(&b, &inp);
    assert!(
        p.items
            .iter()
            .filter(|i| i.change == Change::Create)
            .count()
            >= 10
    );
    assert_eq!(p.service, ServiceAction::Start);
    assert!(out.changed);
    let l = &inp.layout;
    let unit = std::fs::read_to_string(l.host(&l.unit_file)).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/outpost/current/outpost agent run"),
        "{unit}"
    );
    assert_eq!(
        std::fs::read_link(l.host(&l.current_link())).unwrap(),
        Path::new("versions/1.0.0")
    );
    let env = std::fs::read_to_string(l.host(&l.env_file)).unwrap();
    assert!(env.contains("OUTPOST_ENROLL_KEY=k-123"));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(l.host(&l.env_file)).unwrap().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(l.host(&l.unit_file)).unwrap().mode() & 0o777,
        0o644
    );
    assert!(l.host(Path::new(POLKIT_RULES)).exists());
    let calls = b.fake.0.borrow().calls.clone();
    let uid = rustix::process::geteuid().as_raw();
    assert_eq!(
        calls,
        vec![
            format!("linger {uid} true"),
            format!("wait user@{uid}"),
            "daemon-reload".into(),
            "enable outpost.service".into(),
            "daemon-reload".into(),
            "start outpost.service".into(),
        ]
    );
    // the receipt lists every file with its sha256
    let r = Receipt::load(l).unwrap().unwrap();
    let unit_entry = r.entry(&l.unit_file).unwrap();
    assert_eq!(
        unit_entry.sha256.as_deref(),
        Some(crate::fsx::sha256_bytes(unit.as_bytes()).as_str())
    );
    // the dry-run plan never prints the secret
    let json = serde_json::to_string(&p).unwrap();
    assert!(!json.contains("k-123"), "{json}");
}

#[test]
fn second_install_is_a_no_op() {
    let b = bed();
    me_user(&b);
    let inp = inputs(&b, "1.0.0", false);
    install(&b, &inp);
    let before = listing(b.dir.path());
    let unit1 = std::fs::read(inp.layout.host(&inp.layout.unit_file)).unwrap();
    b.fake.0.borrow_mut().calls.clear();
    let (p, out) = install(&b, &inp);
    assert!(
        !p.changes_anything(),
        "{}",
        crate::install::render_plan(&p, "would")
    );
    assert!(!out.changed);
    assert!(matches!(p.service, ServiceAction::None { .. }));
    assert!(
        b.fake.0.borrow().calls.is_empty(),
        "{:?}",
        b.fake.0.borrow().calls
    );
    assert_eq!(listing(b.dir.path()), before);
    assert_eq!(
        std::fs::read(inp.layout.host(&inp.layout.unit_file)).unwrap(),
        unit1
    );
}

#[test]
fn reinstall_keeps_edited_config_and_secrets() {
    let b = bed();
    me_user(&b);
    let inp = inputs(&b, "1.0.0", false);
    install(&b, &inp);
    let l = &inp.layout;
    std::fs::write(l.host(&l.config_file), "[agent]\nlog_interval_secs = 7\n").unwrap();
    std::fs::write(l.host(&l.env_file), "OUTPOST_ENROLL_KEY=mine\n").unwrap();
    let mut inp2 = inputs(&b, "1.0.0", false);
    inp2.enroll_key = Some("other".into());
    let (p, _) = install(&b, &inp2);
    assert!(p.items.iter().any(|i| i.change == Change::Keep));
    assert!(matches!(p.service, ServiceAction::None { .. }));
    assert_eq!(
        std::fs::read_to_string(l.host(&l.config_file)).unwrap(),
        "[agent]\nlog_interval_secs = 7\n"
    );
    assert_eq!(
        std::fs::read_to_string(l.host(&l.env_file)).unwrap(),
        "OUTPOST_ENROLL_KEY=mine\n"
    );
    assert!(p.warnings.iter().any(|w| w.contains("enrollment key")));
}

#[test]
fn new_version_swaps_current_and_restarts() {
    let b = bed();
    me_user(&b);
    install(&b, &inputs(&b, "1.0.0", false));
    std::fs::write(&b.bin, b"\x7fELF newer").unwrap();
    let inp = inputs(&b, "1.1.0", false);
    let (p, _) = install(&b, &inp);
    assert_eq!(p.service, ServiceAction::Restart);
    let l = &inp.layout;
    assert_eq!(
        std::fs::read_link(l.host(&l.current_link())).unwrap(),
        Path::new("versions/1.1.0")
    );
    assert!(
        l.host(&l.version_dir(&"1.0.0".parse().unwrap())).exists(),
        "old version kept for rollback"
    );
}

#[test]
fn failed_restart_of_an_update_restores_the_old_files() {
    let b = bed();
    me_user(&b);
    install(&b, &inputs(&b, "1.0.0", false));
    std::fs::write(&b.bin, b"\x7fELF broken").unwrap();
    b.fake.0.borrow_mut().fail_start = true;
    let inp = inputs(&b, "1.1.0", false);
    let obs = observe(&b, &inp);
    let p = plan_install(&inp, &obs);
    let err = apply_install(&p, obs.receipt.clone(), &b.fake, 0, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("restored"), "{err}");
    let l = &inp.layout;
    assert_eq!(
        std::fs::read_link(l.host(&l.current_link())).unwrap(),
        Path::new("versions/1.0.0")
    );
    assert_eq!(Receipt::load(l).unwrap().unwrap().version, "1.0.0");
}

#[test]
fn creates_the_system_user_and_purge_deletes_it() {
    let b = bed();
    let inp = inputs(&b, "1.0.0", true);
    // pretend useradd gives the test user's ids so chown works unprivileged
    let (p, out) = {
        let obs = observe(&b, &inp);
        let p = plan_install(&inp, &obs);
        let me = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        struct MeHost(Fake, (u32, u32));
        impl Host for MeHost {
            fn service_manager(&self, s: Scope) -> Result<Box<dyn ServiceManager>, SvcError> {
                self.0.service_manager(s)
            }
            fn logind(&self) -> Result<Box<dyn Logind>, SvcError> {
                self.0.logind()
            }
            fn wait_user_manager(&self, u: u32, t: std::time::Duration) -> Result<(), SvcError> {
                self.0.wait_user_manager(u, t)
            }
            fn run(&self, a: &[String]) -> Result<(), String> {
                self.0.run(a)?;
                if a[0] == "useradd" {
                    self.0
                         .0
                        .borrow_mut()
                        .users
                        .insert("outpost".into(), self.1);
                }
                Ok(())
            }
            fn user_ids(&self, n: &str) -> Option<(u32, u32)> {
                self.0.user_ids(n)
            }
        }
        let out = apply_install(&p, None, &MeHost(b.fake.clone(), me), 0, &mut Vec::new()).unwrap();
        (p, out)
    };
    assert!(matches!(p.items[0].op, Op::CreateUser { .. }));
    assert!(matches!(p.items[1].op, Op::EnableLinger { uid: None, .. }));
    assert_eq!(out.receipt.created_user.as_deref(), Some("outpost"));
    assert_eq!(out.receipt.linger_enabled_for.as_deref(), Some("outpost"));
    // the new user's uid, looked up after useradd, is the one linger is turned on for
    let uid = me_uid();
    let calls = b.fake.0.borrow().calls.clone();
    let at = |c: &str| calls.iter().position(|x| x == c);
    assert!(
        at(&format!("linger {uid} true")) < at(&format!("wait user@{uid}")),
        "{calls:?}"
    );
    assert!(b
        .fake
        .0
        .borrow()
        .calls
        .iter()
        .any(|c| c.starts_with("useradd") && c.ends_with(" outpost")));

    let l = Layout::system(b.dir.path());
    let r = Receipt::load(&l).unwrap().unwrap();
    let obs = Observed {
        paths: observe_paths(&l, &uninstall_paths(&l, &r)).unwrap(),
        unit: Some(b.fake.status("x").unwrap()),
        ..Default::default()
    };
    let up = plan_uninstall(&l, &r, &obs, true, &|_, _| false);
    assert_eq!(up.delete_user.as_deref(), Some("outpost"));
    apply_uninstall(&up, &r, &b.fake, 0, &mut Vec::new()).unwrap();
    // linger off, then the user's manager stopped (userdel refuses a user with processes)
    let calls = b.fake.0.borrow().calls.clone();
    let at = |c: &str| calls.iter().position(|x| x == c);
    let (off, stop, del) = (
        at(&format!("linger {uid} false")),
        at(&format!("stop user@{uid}.service")),
        at("userdel outpost"),
    );
    assert!(off.is_some() && off < stop && stop < del, "{calls:?}");
}

fn me_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// System mode: linger for the service user is turned on (and recorded) when it is off, also
/// by an update, and uninstall turns it off again.
#[test]
fn system_install_turns_linger_on_and_uninstall_turns_it_off() {
    let b = bed();
    me_user(&b);
    let inp = inputs(&b, "1.0.0", false);
    let (p, out) = install(&b, &inp);
    let linger = Op::EnableLinger {
        user: "outpost".into(),
        uid: Some(me_uid()),
    };
    assert!(p.items.contains(&Item {
        op: linger.clone(),
        change: Change::Create
    }));
    assert!(p.wait_user_manager);
    assert_eq!(out.receipt.linger_enabled_for.as_deref(), Some("outpost"));
    let dry = crate::install::render_plan(&p, "would install");
    assert!(
        dry.contains("  create    linger   outpost (user@")
            && dry.contains("  wait      outpost's user manager and its bus"),
        "{dry}"
    );
    // the admin turned it off: an update turns it on again
    b.fake.0.borrow_mut().lingering.clear();
    b.fake.0.borrow_mut().calls.clear();
    let (p, out) = install(&b, &inp);
    assert!(p.changes_anything());
    assert_eq!(
        b.fake.0.borrow().calls[..2],
        [
            format!("linger {} true", me_uid()),
            format!("wait user@{}", me_uid())
        ]
    );
    assert_eq!(out.receipt.linger_enabled_for.as_deref(), Some("outpost"));
    // on: unchanged, still recorded as install's
    let (p, out) = install(&b, &inp);
    assert!(p.items.contains(&Item {
        op: linger,
        change: Change::Unchanged
    }));
    assert!(!p.wait_user_manager);
    assert_eq!(out.receipt.linger_enabled_for.as_deref(), Some("outpost"));
    b.fake.0.borrow_mut().calls.clear();
    let (up, _) = uninstall(&b, false);
    assert_eq!(up.disable_linger.as_deref(), Some("outpost"));
    let off = format!("linger {} false", me_uid());
    assert!(b.fake.0.borrow().calls.contains(&off));
    assert!(b.fake.lingering_users().is_empty());
}

/// Linger someone else turned on is theirs: not recorded, so uninstall leaves it on.
#[test]
fn linger_already_on_is_left_to_the_admin() {
    let b = bed();
    me_user(&b);
    b.fake.0.borrow_mut().lingering.insert(me_uid());
    let (p, out) = install(&b, &inputs(&b, "1.0.0", false));
    assert!(!p.wait_user_manager);
    assert_eq!(out.receipt.linger_enabled_for, None);
    let calls = b.fake.0.borrow().calls.clone();
    assert!(!calls.iter().any(|c| c.starts_with("linger")), "{calls:?}");
    let dry = crate::install::render_plan(&p, "would install");
    assert!(dry.contains("  unchanged linger   outpost"), "{dry}");
    assert!(!dry.contains("wait"), "{dry}");
    let (up, _) = uninstall(&b, true);
    assert_eq!(up.disable_linger, None);
    let calls = b.fake.0.borrow().calls.clone();
    assert!(!calls.iter().any(|c| c.starts_with("linger")), "{calls:?}");
    assert_eq!(b.fake.lingering_users().len(), 1);
}

fn uninstall(b: &Bed, purge: bool) -> (UninstallPlan, crate::apply::UninstallOutcome) {
    let l = Layout::system(b.dir.path());
    let r = Receipt::load(&l).unwrap().unwrap();
    let obs = Observed {
        paths: observe_paths(&l, &uninstall_paths(&l, &r)).unwrap(),
        unit: Some(b.fake.status("x").unwrap()),
        ..Default::default()
    };
    let host_l = l.clone();
    let foreign = move |dir: &Path, removed: &[PathBuf]| {
        std::fs::read_dir(host_l.host(dir))
            .map(|rd| {
                rd.flatten()
                    .any(|e| !removed.contains(&dir.join(e.file_name())))
            })
            .unwrap_or(true)
    };
    let p = plan_uninstall(&l, &r, &obs, purge, &foreign);
    let out = apply_uninstall(&p, &r, &b.fake, 0, &mut Vec::new()).unwrap();
    (p, out)
}

#[test]
fn uninstall_keeps_user_data_and_edited_files_then_purge_removes_all() {
    let b = bed();
    me_user(&b);
    let before = listing(b.dir.path());
    let inp = inputs(&b, "1.0.0", false);
    install(&b, &inp);
    let l = &inp.layout;
    std::fs::write(l.host(&l.state_dir.join("data.db")), "x").unwrap();
    std::fs::write(l.host(Path::new(POLKIT_RULES)), "// edited by the admin\n").unwrap();
    let (_, out) = uninstall(&b, false);
    assert!(!l.host(&l.unit_file).exists());
    assert!(!l.host(&l.current_link()).exists());
    assert!(l.host(&l.config_file).exists());
    assert!(l.host(&l.env_file).exists());
    assert!(l.host(&l.state_dir.join("data.db")).exists());
    assert!(
        l.host(Path::new(POLKIT_RULES)).exists(),
        "edited file is kept"
    );
    assert!(out
        .kept
        .iter()
        .any(|(p, why)| p == Path::new(POLKIT_RULES) && why.contains("modified")));
    assert!(!b.fake.0.borrow().active);
    // a second plain uninstall is harmless, purge afterwards still knows the leftovers
    uninstall(&b, false);
    uninstall(&b, true);
    assert_eq!(listing(b.dir.path()), before);
}

#[test]
fn purge_right_after_install_leaves_nothing() {
    let b = bed();
    me_user(&b);
    let before = listing(b.dir.path());
    install(&b, &inputs(&b, "1.0.0", false));
    uninstall(&b, true);
    assert_eq!(listing(b.dir.path()), before);
}

#[test]
fn user_mode_plan_enables_linger_and_creates_home_dirs() {
    let b = bed();
    std::fs::create_dir_all(b.dir.path().join("home/alice")).unwrap();
    let mut inp = inputs(&b, "1.0.0", false);
    inp.layout = Layout::user(b.dir.path(), Path::new("/home/alice"));
    inp.service_user = ServiceUser {
        name: "alice".into(),
        ids: Some((1000, 1000)),
        create: false,
    };
    let obs = observe(&b, &inp);
    let p = plan_install(&inp, &obs);
    assert!(matches!(
        p.items[0].op,
        Op::EnableLinger {
            uid: Some(1000),
            ..
        }
    ));
    assert!(p.wait_user_manager);
    let dirs: Vec<_> = p
        .items
        .iter()
        .filter_map(|i| match &i.op {
            Op::Dir { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    assert!(
        dirs.contains(&PathBuf::from("/home/alice/.local")),
        "{dirs:?}"
    );
    assert!(!dirs.contains(&PathBuf::from("/home/alice")));
    assert!(!dirs.contains(&PathBuf::from("/home")));
    assert!(!p.items.iter().any(|i| matches!(
        &i.op,
        Op::File {
            role: Role::Polkit,
            ..
        }
    )));
}

#[test]
fn initial_config_carries_the_seed_and_parses() {
    let seed = ConfigSeed {
        hub_url: Some("https://hub.example.net".into()),
        insecure_http: false,
        release_url: Some("https://rel.example.net/outpost".into()),
        release_keys: vec!["RWQk1".into(), "RWQk2".into()],
        ca_file: Some("/etc/outpost/ca.pem".into()),
    };
    let text = initial_config(&seed);
    let c = outpost_core::Config::parse(&text, Path::new("t")).unwrap();
    assert_eq!(c.hub.url.as_deref(), Some("https://hub.example.net"));
    assert_eq!(
        c.release.url.as_deref(),
        Some("https://rel.example.net/outpost")
    );
    assert_eq!(
        c.release.public_keys,
        vec!["RWQk1".to_string(), "RWQk2".to_string()]
    );
    assert_eq!(
        c.release.ca_file.as_deref(),
        Some(Path::new("/etc/outpost/ca.pem"))
    );
    assert_eq!(
        outpost_core::Config::parse(&initial_config(&ConfigSeed::default()), Path::new("t"))
            .unwrap(),
        outpost_core::Config::default()
    );
}

#[test]
fn initial_config_records_insecure_http() {
    let seed = ConfigSeed {
        hub_url: Some("http://10.1.2.3:8080".into()),
        insecure_http: true,
        ..Default::default()
    };
    let c = outpost_core::Config::parse(&initial_config(&seed), Path::new("t")).unwrap();
    assert!(c.hub.insecure_http);
    let refused = ConfigSeed {
        insecure_http: false,
        ..seed
    };
    assert!(outpost_core::Config::parse(&initial_config(&refused), Path::new("t")).is_err());
}
