//! `outpost upgrade` and its resolution, against a temp root with a recording service manager
//! and a stub release host (the real-systemd runs are in tests/e2e_upgrade.rs and
//! tests/e2e_privsep.rs).
use super::*;
use crate::testing::{Fake, FakeStager};
use outpost_installer::receipt::{Receipt, SCHEMA};
use std::path::Path;

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

struct Bed {
    _dir: tempfile::TempDir,
    loc: Located,
    fake: Fake,
}

/// A user-mode install of 1.0.0 under a temp root (user mode: no root needed to run it).
fn bed() -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::user(dir.path(), Path::new("/home/alice"));
    let stager = FakeStager::default();
    let versions = layout.host(&layout.versions_dir());
    std::fs::create_dir_all(&versions).unwrap();
    stager.stage(&v("1.0.0"), &versions).unwrap();
    for link in [layout.current_link(), layout.last_good_link()] {
        std::os::unix::fs::symlink("versions/1.0.0", layout.host(&link)).unwrap();
    }
    for d in [&layout.config_dir, &layout.agent_dir] {
        std::fs::create_dir_all(layout.host(d)).unwrap();
    }
    std::fs::write(
        layout.host(&layout.config_file),
        "[upgrade]\nsoak_secs = 0\n",
    )
    .unwrap();
    let receipt = Receipt {
        schema: SCHEMA,
        mode: Mode::User,
        version: "1.0.0".into(),
        installed_at: "2026-01-01T00:00:00Z".into(),
        service_user: "alice".into(),
        created_user: None,
        linger_enabled_for: None,
        unit_enabled: true,
        uninstalled_at: None,
        entries: Vec::new(),
    };
    receipt.save(&layout, None).unwrap();
    let fake = Fake::default();
    {
        let mut s = fake.0.borrow_mut();
        s.loaded = true;
        s.active = true;
        s.enabled = true;
    }
    let config =
        outpost_core::Config::load_trusted(&layout.root, &layout.host(&layout.config_file))
            .unwrap();
    Bed {
        _dir: dir,
        loc: Located {
            layout,
            receipt: Some(receipt),
            config,
            euid: rustix::process::geteuid().as_raw(),
        },
        fake,
    }
}

impl Bed {
    fn link(&self, l: &Path) -> String {
        std::fs::read_link(self.loc.layout.host(l))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
    fn current(&self) -> String {
        self.link(&self.loc.layout.current_link())
    }
    fn last_good(&self) -> String {
        self.link(&self.loc.layout.last_good_link())
    }
    fn calls(&self) -> Vec<String> {
        self.fake.0.borrow().calls.clone()
    }
    fn events(&self) -> Vec<String> {
        outpost_core::journal::Journal::open(&self.loc.layout.host(&self.loc.layout.state_dir))
            .read_all()
            .unwrap()
            .into_iter()
            .map(|r| r.kind)
            .collect()
    }
    /// 1.1.0 staged; with `swapped`, `current` already points at it (as after the swap).
    fn stage_1_1_0(&self, swapped: bool) {
        FakeStager::default()
            .stage(
                &v("1.1.0"),
                &self.loc.layout.host(&self.loc.layout.versions_dir()),
            )
            .unwrap();
        if swapped {
            swap_current(&self.loc.layout, &v("1.1.0")).unwrap();
        }
    }
    fn record_exists(&self) -> bool {
        record::path(&self.loc.layout.host(&self.loc.layout.state_dir)).exists()
    }
    fn upgrade(&self, args: &UpgradeArgs, stager: &FakeStager) -> (Result<i32>, String) {
        let mut out = Vec::new();
        let r = run(args, &self.loc, &self.fake, stager, &mut out);
        (r, String::from_utf8_lossy(&out).into_owned())
    }
}

fn to(version: &str) -> UpgradeArgs {
    UpgradeArgs {
        target: Some(v(version)),
        ..Default::default()
    }
}

#[test]
fn orchestrated_upgrade_runs_every_step_and_confirms() {
    let b = bed();
    let stager = FakeStager::default();
    let (r, out) = b.upgrade(&to("1.1.0"), &stager);
    assert_eq!(r.unwrap(), 0, "{out}");
    assert!(
        out.contains("upgraded outpost from 1.0.0 to 1.1.0"),
        "{out}"
    );
    assert_eq!(b.current(), "versions/1.1.0");
    assert_eq!(b.last_good(), "versions/1.1.0");
    assert!(!b.record_exists(), "record left behind");
    let calls = b.calls();
    let pos = |prefix: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {calls:?}"))
    };
    // the guard runs before anything is stopped, from the last confirmed version
    assert!(pos("start-transient outpost-upgrade-guard.service") < pos("stop outpost.service"));
    assert!(calls[pos("start-transient")].contains("last-good/outpost upgrade --guard --user"));
    assert!(pos("stop outpost.service") < pos("start outpost.service"));
    assert_eq!(b.events(), vec!["service_upgraded"]);
    let receipt = Receipt::load(&b.loc.layout).unwrap().unwrap();
    assert_eq!(receipt.version, "1.1.0");
}

/// Issue 13: upgrades do not consume the unit's start limit (StartLimitBurst=5 in 300 s):
/// the upgrader clears it (reset-failed) before it starts the new version, so ten upgrades in
/// a row (one minute of a busy host's life) all start. Without the reset the sixth start is
/// `start-limit-hit`.
#[test]
fn upgrades_do_not_consume_the_start_limit() {
    let b = bed();
    b.fake.0.borrow_mut().start_limit_burst = Some(5);
    let stager = FakeStager::default();
    for i in 0..10 {
        let (from, t) = if i % 2 == 0 {
            ("1.0.0", "1.1.0")
        } else {
            ("1.1.0", "1.0.0")
        };
        let (r, out) = b.upgrade(&to(t), &stager);
        assert_eq!(r.unwrap(), 0, "upgrade {}: {out}", i + 1);
        assert!(
            out.contains(&format!("upgraded outpost from {from} to {t}")),
            "upgrade {}: {out}",
            i + 1
        );
        assert_eq!(b.current(), format!("versions/{t}"));
    }
    let starts = b
        .calls()
        .iter()
        .filter(|c| *c == "start outpost.service")
        .count();
    assert_eq!(starts, 10, "{:?}", b.calls());
}

/// The fake's start limit bites without the reset (so the test above can fail).
#[test]
fn the_fake_start_limit_bites_without_a_reset() {
    let b = bed();
    b.fake.0.borrow_mut().start_limit_burst = Some(5);
    for _ in 0..5 {
        b.fake.start(outpost_installer::UNIT).unwrap();
    }
    let e = b.fake.start(outpost_installer::UNIT).unwrap_err();
    assert!(e.to_string().contains("start-limit-hit"), "{e}");
    b.fake.reset_failed(outpost_installer::UNIT).unwrap();
    b.fake.start(outpost_installer::UNIT).unwrap();
}

#[test]
fn a_new_version_that_fails_to_start_is_rolled_back() {
    let b = bed();
    b.fake.0.borrow_mut().fail_next_starts = 1;
    let (r, out) = b.upgrade(&to("1.1.0"), &FakeStager::default());
    let e = r.unwrap_err();
    assert!(
        e.to_string()
            .contains("rolled back, 1.0.0 is running again"),
        "{e}\n{out}"
    );
    assert_eq!(e.exit_code(), outpost_core::exit::FAILURE);
    assert_eq!(b.current(), "versions/1.0.0");
    assert_eq!(b.last_good(), "versions/1.0.0");
    assert!(!b.record_exists());
    assert_eq!(b.events(), vec!["service_upgrade_rolled_back"]);
}

#[test]
fn a_failed_rollback_prints_the_recovery_commands() {
    let b = bed();
    b.fake.0.borrow_mut().fail_start = true;
    let (r, out) = b.upgrade(&to("1.1.0"), &FakeStager::default());
    let e = r.unwrap_err();
    assert!(
        e.to_string().contains("the rollback to 1.0.0 failed too"),
        "{e}"
    );
    assert!(
        out.contains("ROLLBACK FAILED") && out.contains("ln -sfn versions/1.0.0"),
        "{out}"
    );
    assert_eq!(b.events(), vec!["service_upgrade_rollback_failed"]);
}

#[test]
fn a_version_whose_self_test_fails_is_refused_before_the_stop() {
    let b = bed();
    let stager = FakeStager {
        broken: vec![v("1.1.0")],
        ..Default::default()
    };
    let (r, _) = b.upgrade(&to("1.1.0"), &stager);
    let e = r.unwrap_err();
    assert!(e.to_string().contains("the service was not touched"), "{e}");
    assert!(
        !b.calls().iter().any(|c| c.starts_with("stop")),
        "{:?}",
        b.calls()
    );
    assert_eq!(b.current(), "versions/1.0.0");
    assert_eq!(b.events(), vec!["upgrade_aborted"]);
}

#[test]
fn dry_run_and_nothing_to_do_change_nothing() {
    let b = bed();
    // (args, newest on the channel, expected output)
    let cases = [
        (
            UpgradeArgs {
                dry_run: true,
                ..Default::default()
            },
            Some("1.2.0"),
            "would upgrade outpost from 1.0.0 to 1.2.0",
        ),
        (
            to("1.0.0"),
            None,
            "nothing to do: 1.0.0 is already installed",
        ),
        (
            UpgradeArgs::default(),
            Some("1.0.0"),
            "nothing to do: 1.0.0 is the newest version on the channel",
        ),
    ];
    for (args, newest, want) in cases {
        let stager = FakeStager {
            newest: newest.map(v),
            ..Default::default()
        };
        let (r, out) = b.upgrade(&args, &stager);
        assert_eq!(r.unwrap(), 0);
        assert!(out.contains(want), "{out}");
        assert!(
            stager.staged.borrow().is_empty(),
            "{want}: staged something"
        );
    }
    assert_eq!(b.current(), "versions/1.0.0");
    assert!(
        !b.calls().iter().any(|c| !c.starts_with("status")),
        "{:?}",
        b.calls()
    );
    assert!(b.events().is_empty());
}

#[test]
fn no_restart_swaps_the_package_only() {
    let b = bed();
    let args = UpgradeArgs {
        no_restart: true,
        ..to("1.1.0")
    };
    let (r, out) = b.upgrade(&args, &FakeStager::default());
    assert_eq!(r.unwrap(), 0);
    assert!(out.contains("was not restarted (--no-restart)"), "{out}");
    assert_eq!(b.current(), "versions/1.1.0");
    assert!(!b.calls().iter().any(|c| c.starts_with("stop")));
    assert_eq!(b.events(), vec!["package_upgraded"]);
}

/// A record left by an upgrader that is gone (pid that cannot exist).
fn leave_record(b: &Bed, step: Step) {
    let rec = Record {
        from: v("1.0.0"),
        to: v("1.1.0"),
        step,
        started_at: "t".into(),
        upgrader_pid: u32::MAX - 1,
        upgrader_start: 0,
        starts: 0,
        orchestrated: true,
    };
    save_record(&b.loc.layout, &rec).unwrap();
}

#[test]
fn resolution_table() {
    // (step the upgrader died at, context, resolution, current afterwards, restarted)
    let cases = [
        (
            Step::Stopping,
            ResolveContext::Cli,
            Resolution::Abandon,
            "1.0.0",
            false,
        ),
        (
            Step::Swapped,
            ResolveContext::Cli,
            Resolution::Revert,
            "1.0.0",
            true,
        ),
        (
            Step::HealthCheck,
            ResolveContext::Cli,
            Resolution::Revert,
            "1.0.0",
            true,
        ),
        (
            Step::HealthCheck,
            ResolveContext::ServiceStart,
            Resolution::Revert,
            "1.0.0",
            false,
        ),
        (
            Step::Confirmed,
            ResolveContext::Cli,
            Resolution::Finish,
            "1.1.0",
            false,
        ),
    ];
    for (step, ctx, want, current, restarted) in cases {
        let b = bed();
        b.stage_1_1_0(step >= Step::Swapped);
        leave_record(&b, step);
        let mut out = Vec::new();
        let r = resolve_pending(&b.loc.layout, &b.fake, b.loc.euid, ctx, &mut out).unwrap();
        assert_eq!(r, want, "{step:?} {ctx:?}");
        assert_eq!(
            b.current(),
            format!("versions/{current}"),
            "{step:?} {ctx:?}"
        );
        assert!(!b.record_exists(), "{step:?} {ctx:?}");
        let did_restart = b.calls().iter().any(|c| c.starts_with("restart"));
        assert_eq!(did_restart, restarted, "{step:?} {ctx:?}: {:?}", b.calls());
        if want == Resolution::Finish {
            assert_eq!(b.last_good(), "versions/1.1.0");
        }
        let receipt = Receipt::load(&b.loc.layout).unwrap().unwrap();
        assert_eq!(
            receipt.version, current,
            "{step:?} {ctx:?}: receipt not synced"
        );
    }
}

/// The record is cleared only after the receipt is synced: a resolver that cannot finish the
/// bookkeeping (here the receipt cannot be written; in CI the guard killed by a reboot) leaves
/// the record, and the next resolver finishes the same way.
#[test]
fn a_resolution_that_cannot_sync_the_receipt_keeps_the_record() {
    for (step, current) in [(Step::Confirmed, "1.1.0"), (Step::HealthCheck, "1.0.0")] {
        let b = bed();
        b.stage_1_1_0(true);
        leave_record(&b, step);
        let receipt = b.loc.layout.host(&b.loc.layout.receipt_file());
        let saved = std::fs::read(&receipt).unwrap();
        std::fs::remove_file(&receipt).unwrap();
        std::fs::create_dir(&receipt).unwrap();
        let mut out = Vec::new();
        let ctx = ResolveContext::ServiceStart;
        let r = resolve_pending(&b.loc.layout, &b.fake, b.loc.euid, ctx, &mut out);
        assert!(r.is_err(), "{step:?}: {r:?}");
        assert!(
            b.record_exists(),
            "{step:?}: record cleared before the receipt was synced"
        );
        std::fs::remove_dir(&receipt).unwrap();
        std::fs::write(&receipt, saved).unwrap();
        let r = resolve_pending(&b.loc.layout, &b.fake, b.loc.euid, ctx, &mut out).unwrap();
        assert!(
            matches!(r, Resolution::Finish | Resolution::Revert),
            "{r:?}"
        );
        assert!(!b.record_exists());
        assert_eq!(b.current(), format!("versions/{current}"));
        let rc = Receipt::load(&b.loc.layout).unwrap().unwrap();
        assert_eq!(rc.version, current, "{step:?}");
    }
}

#[test]
fn a_corrupt_record_is_set_aside_and_current_goes_back_to_last_good() {
    let b = bed();
    b.stage_1_1_0(true);
    let sd = b.loc.layout.host(&b.loc.layout.state_dir);
    std::fs::write(record::path(&sd), "{\"to\": \"/var/lib/outpost/agent/x\"").unwrap();
    let mut out = Vec::new();
    let r = resolve_pending(
        &b.loc.layout,
        &b.fake,
        b.loc.euid,
        ResolveContext::Cli,
        &mut out,
    )
    .unwrap();
    assert_eq!(r, Resolution::Revert);
    assert_eq!(b.current(), "versions/1.0.0");
    assert!(sd.join("upgrade.json.corrupt").exists());
    assert!(!b.record_exists());
    assert_eq!(b.events(), vec!["upgrade_record_corrupt"]);
}

#[test]
fn the_guard_resolves_the_record_of_a_dead_upgrader() {
    let b = bed();
    b.stage_1_1_0(true);
    b.fake.0.borrow_mut().active = false;
    leave_record(&b, Step::Starting);
    let mut out = Vec::new();
    let r = guard(&b.loc.layout, &b.fake, b.loc.euid, &mut out).unwrap();
    assert_eq!(r, Resolution::Revert);
    assert_eq!(b.current(), "versions/1.0.0");
    assert!(b.fake.0.borrow().active, "the service was not brought back");
    // with no record, the guard exits at once
    let r = guard(&b.loc.layout, &b.fake, b.loc.euid, &mut out).unwrap();
    assert_eq!(r, Resolution::Nothing);
}

#[test]
fn after_resolution_table() {
    use ResolveContext::{Cli, ServiceStart};
    // (resolution, context, bring the service back (with a restart))
    let cases = [
        (Resolution::Nothing, Cli, None),
        (Resolution::InProgress { pid: 7 }, Cli, None),
        (Resolution::Abandon, Cli, Some(false)),
        (Resolution::Abandon, ServiceStart, None),
        (Resolution::Drop, Cli, None),
        (Resolution::Revert, Cli, Some(true)),
        (Resolution::Revert, ServiceStart, None),
        (Resolution::Finish, Cli, None),
        (Resolution::Finish, ServiceStart, None),
    ];
    for (res, ctx, back) in cases {
        assert_eq!(after_resolution(&res, ctx), back, "{res:?} {ctx:?}");
    }
}

#[test]
fn counts_start_table() {
    use ResolveContext::{Cli, ServiceStart};
    for (ctx, step, want) in [
        (ServiceStart, Step::Pending, false),
        (ServiceStart, Step::Swapping, false),
        (ServiceStart, Step::Swapped, true),
        (ServiceStart, Step::HealthCheck, true),
        (ServiceStart, Step::RollingBack, true),
        (Cli, Step::Swapped, false),
        (Cli, Step::HealthCheck, false),
    ] {
        assert_eq!(counts_start(ctx, step), want, "{ctx:?} {step:?}");
    }
}
