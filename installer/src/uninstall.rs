//! `outpost uninstall [--purge]`, and finding which install a command is about.
use crate::apply::{self, Host};
use crate::detect::{self, Probe};
use crate::error::{Error, Result};
use crate::plan::{self, Observed, RemoveAction};
use crate::receipt::Receipt;
use outpost_core::layout::{Layout, Mode};
use outpost_systemd::Scope;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The install a command acts on: `--system`/`--user` if given, else the one with a receipt
/// (the caller's own user install first for non-root callers, the system one for root).
pub fn find_install(
    probe: &dyn Probe,
    root: &Path,
    mode: Option<Mode>,
) -> Result<(Layout, Option<Receipt>)> {
    let det = detect::probe::detect(probe);
    let euid = probe.euid();
    let user_layout = det
        .topology
        .target_user
        .as_ref()
        .map(|t| Layout::user(root, &t.account.home));
    let system = Layout::system(root);
    let candidates: Vec<Layout> = match (mode, euid) {
        (Some(Mode::System), _) => vec![system],
        (Some(Mode::User), 0) if det.topology.sudo_user.is_none() => {
            return Err(Error::usage(
                "root has no user install",
                "run the command as the user who installed outpost",
            ))
        }
        (Some(Mode::User), _) => user_layout.into_iter().collect(),
        (None, 0) => vec![system],
        (None, _) => user_layout.into_iter().chain([system]).collect(),
    };
    for l in &candidates {
        match Receipt::load(l) {
            Ok(Some(r)) => return Ok((l.clone(), Some(r))),
            Ok(None) => {}
            // A receipt that is merely unreadable JSON (a torn disk) must not block every
            // command: say so and carry on without it (install writes a new one; uninstall
            // refuses). An unsafe or altered one is refused outright.
            Err(e @ crate::receipt::ReceiptError::Corrupt { .. }) => {
                eprintln!(
                    "warning: {e}\nhint: `sudo outpost install` rewrites it; until then uninstall cannot run"
                );
                return Ok((l.clone(), None));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let l = candidates
        .into_iter()
        .next()
        .ok_or_else(|| Error::usage("no install location for this user", "pass --system"))?;
    Ok((l, None))
}

pub fn scope(layout: &Layout, euid: u32) -> Scope {
    match layout.mode {
        Mode::System => Scope::System,
        Mode::User => Scope::User { uid: euid },
    }
}

#[derive(Debug, Clone, Default)]
pub struct UninstallArgs {
    pub mode: Option<Mode>,
    pub purge: bool,
    pub dry_run: bool,
    pub json: bool,
    pub root: PathBuf,
}

/// Whether `dir` holds anything but empty directories, our enable symlink and paths this
/// uninstall removes.
/// (systemd leaves an empty `default.target.wants/` behind after disable; that is not the
/// operator's.)
fn dir_has_foreign(layout: &Layout) -> impl Fn(&Path, &[PathBuf]) -> bool + '_ {
    move |dir: &Path, removed: &[PathBuf]| {
        fn foreign(host_dir: &Path, dir: &Path, removed: &[PathBuf]) -> bool {
            let Ok(rd) = std::fs::read_dir(host_dir) else {
                return true;
            };
            rd.flatten().any(|e| {
                let p = dir.join(e.file_name());
                // Our enable symlink (`*.wants/outpost.service`) goes with the disable.
                let wants_link =
                    e.file_name() == crate::UNIT && dir.extension().is_some_and(|x| x == "wants");
                if removed.contains(&p) || wants_link {
                    return false;
                }
                match e.file_type() {
                    Ok(t) if t.is_dir() => foreign(&e.path(), &p, removed),
                    _ => true,
                }
            })
        }
        foreign(&layout.host(dir), dir, removed)
    }
}

pub fn run(
    args: &UninstallArgs,
    probe: &dyn Probe,
    host: &dyn Host,
    out: &mut dyn Write,
) -> Result<()> {
    let euid = probe.euid();
    let (layout, receipt) = find_install(probe, &args.root, args.mode)?;
    let receipt = receipt.ok_or_else(|| {
        Error::failed(
            format!("outpost is not installed here: no receipt at {}", layout.receipt_file().display()),
            "nothing to uninstall; `outpost status` shows what is installed (pass --system or --user to pick one)",
        )
    })?;
    if layout.mode == Mode::System && euid != 0 {
        return Err(Error::usage(
            "uninstalling the system service needs root",
            "run `sudo outpost uninstall`",
        ));
    }
    let obs = observe(&layout, &receipt, host, euid)?;
    let p = plan::plan_uninstall(
        &layout,
        &receipt,
        &obs,
        args.purge,
        &dir_has_foreign(&layout),
    );
    let verb = if args.purge { "purge" } else { "uninstall" };
    if args.dry_run {
        if args.json {
            print_json(&p, out);
        } else {
            write!(out, "{}", render_uninstall_plan(&p, verb)).ok();
        }
        return Ok(());
    }
    let outcome = apply::apply_uninstall(&p, &receipt, host, euid, out)?;
    if args.json {
        print_json(&outcome, out);
        return Ok(());
    }
    write!(
        out,
        "{}",
        render_outcome(&outcome, verb, layout.mode, args.purge)
    )
    .ok();
    Ok(())
}

/// What is on disk at the paths uninstall looks at, and the unit's state when the service
/// manager can be asked.
fn observe(layout: &Layout, receipt: &Receipt, host: &dyn Host, euid: u32) -> Result<Observed> {
    let paths = plan::uninstall_paths(layout, receipt);
    let mut obs = Observed {
        paths: plan::observe_paths(layout, &paths)
            .map_err(|e| Error::failed(e.to_string(), "check permissions"))?,
        ..Default::default()
    };
    if let Ok(svc) = host.service_manager(scope(layout, euid)) {
        obs.unit = Some(svc.status(crate::UNIT)?);
    }
    Ok(obs)
}

fn print_json(v: &impl serde::Serialize, out: &mut dyn Write) {
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_default()
    )
    .ok();
}

/// How `--dry-run` names what uninstall would do with a path.
fn action_label(a: RemoveAction) -> &'static str {
    match a {
        RemoveAction::Remove => "remove",
        RemoveAction::RemoveTree => "remove -r",
        RemoveAction::KeepModified => "keep (modified)",
        RemoveAction::KeepUserData => "keep (your data)",
        RemoveAction::KeepNotEmpty => "keep (not empty)",
        RemoveAction::Missing => "gone already",
    }
}

/// `uninstall --dry-run`: what would be stopped, removed, kept and undone.
fn render_uninstall_plan(p: &plan::UninstallPlan, verb: &str) -> String {
    let mut s = format!("would {verb} outpost ({} mode)\n", p.layout.mode);
    if p.stop_and_disable {
        s.push_str(&format!("  stop and disable {}\n", crate::UNIT));
    }
    for r in &p.removals {
        let a = action_label(r.action);
        s.push_str(&format!("  {a:<17} {}\n", r.path.display()));
    }
    if let Some(u) = &p.disable_linger {
        s.push_str(&format!("  disable linger for {u}\n"));
    }
    if let Some(u) = &p.delete_user {
        s.push_str(&format!("  delete system user {u}\n"));
    }
    s
}

/// The summary after an uninstall: how much went, what was kept and why, what next.
fn render_outcome(
    outcome: &apply::UninstallOutcome,
    verb: &str,
    mode: Mode,
    purge: bool,
) -> String {
    let mut s = format!(
        "{verb}: removed {} path(s) ({mode} mode)\n",
        outcome.removed.len()
    );
    for (path, why) in &outcome.kept {
        s.push_str(&format!("  kept {} ({why})\n", path.display()));
    }
    if !purge && !outcome.kept.is_empty() {
        let sudo = if mode == Mode::System { "sudo " } else { "" };
        s.push_str(&format!("next: `{sudo}outpost install` to reinstall with this config, or `{sudo}outpost uninstall --purge` to remove it too\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Removal, UninstallPlan};
    use crate::receipt::{Kind, Role};

    #[test]
    fn action_label_table() {
        use RemoveAction::*;
        for (a, want) in [
            (Remove, "remove"),
            (RemoveTree, "remove -r"),
            (KeepModified, "keep (modified)"),
            (KeepUserData, "keep (your data)"),
            (KeepNotEmpty, "keep (not empty)"),
            (Missing, "gone already"),
        ] {
            assert_eq!(action_label(a), want);
        }
    }

    fn plan(stop: bool, linger: Option<&str>, user: Option<&str>) -> UninstallPlan {
        let layout = Layout::system(Path::new("/r"));
        UninstallPlan {
            mode: layout.mode,
            purge: user.is_some(),
            removals: vec![
                Removal {
                    path: layout.unit_file.clone(),
                    kind: Kind::File,
                    role: Role::Unit,
                    action: RemoveAction::Remove,
                },
                Removal {
                    path: layout.config_file.clone(),
                    kind: Kind::File,
                    role: Role::Config,
                    action: RemoveAction::KeepUserData,
                },
            ],
            layout,
            stop_and_disable: stop,
            delete_user: user.map(str::to_owned),
            disable_linger: linger.map(str::to_owned),
        }
    }

    #[test]
    fn dry_run_rendering_table() {
        let removals = "  remove            /etc/systemd/system/outpost.service\n  keep (your data)  /etc/outpost/config.toml\n";
        // (plan, verb, expected)
        let cases = [
            (
                plan(false, None, None),
                "uninstall",
                format!("would uninstall outpost (system mode)\n{removals}"),
            ),
            (
                plan(true, Some("alice"), Some("outpost")),
                "purge",
                format!("would purge outpost (system mode)\n  stop and disable outpost.service\n{removals}  disable linger for alice\n  delete system user outpost\n"),
            ),
        ];
        for (p, verb, want) in cases {
            assert_eq!(render_uninstall_plan(&p, verb), want);
        }
    }

    #[test]
    fn outcome_rendering_table() {
        let kept = apply::UninstallOutcome {
            removed: vec![PathBuf::from("/a"), PathBuf::from("/b")],
            kept: vec![(
                PathBuf::from("/etc/outpost"),
                "your data (use --purge to remove)".into(),
            )],
        };
        let none_kept = apply::UninstallOutcome {
            removed: vec![PathBuf::from("/a")],
            kept: Vec::new(),
        };
        let next = |sudo: &str| {
            format!("next: `{sudo}outpost install` to reinstall with this config, or `{sudo}outpost uninstall --purge` to remove it too\n")
        };
        let kept_line = "  kept /etc/outpost (your data (use --purge to remove))\n";
        // (outcome, verb, mode, purge, expected)
        let cases = [
            (
                &kept,
                "uninstall",
                Mode::System,
                false,
                format!(
                    "uninstall: removed 2 path(s) (system mode)\n{kept_line}{}",
                    next("sudo ")
                ),
            ),
            (
                &kept,
                "uninstall",
                Mode::User,
                false,
                format!(
                    "uninstall: removed 2 path(s) (user mode)\n{kept_line}{}",
                    next("")
                ),
            ),
            (
                &kept,
                "purge",
                Mode::System,
                true,
                format!("purge: removed 2 path(s) (system mode)\n{kept_line}"),
            ),
            (
                &none_kept,
                "uninstall",
                Mode::System,
                false,
                "uninstall: removed 1 path(s) (system mode)\n".to_string(),
            ),
        ];
        for (o, verb, mode, purge, want) in cases {
            assert_eq!(
                render_outcome(o, verb, mode, purge),
                want,
                "{verb} {mode} {purge}"
            );
        }
    }
}
