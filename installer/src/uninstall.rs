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
    let paths = plan::uninstall_paths(&layout, &receipt);
    let mut obs = Observed {
        paths: plan::observe_paths(&layout, &paths)
            .map_err(|e| Error::failed(e.to_string(), "check permissions"))?,
        ..Default::default()
    };
    if let Ok(svc) = host.service_manager(scope(&layout, euid)) {
        obs.unit = Some(svc.status(crate::UNIT)?);
    }
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
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&p).unwrap_or_default()
            )
            .ok();
        } else {
            writeln!(out, "would {verb} outpost ({} mode)", layout.mode).ok();
            if p.stop_and_disable {
                writeln!(out, "  stop and disable {}", crate::UNIT).ok();
            }
            for r in &p.removals {
                let a = match r.action {
                    RemoveAction::Remove => "remove",
                    RemoveAction::RemoveTree => "remove -r",
                    RemoveAction::KeepModified => "keep (modified)",
                    RemoveAction::KeepUserData => "keep (your data)",
                    RemoveAction::KeepNotEmpty => "keep (not empty)",
                    RemoveAction::Missing => "gone already",
                };
                writeln!(out, "  {a:<17} {}", r.path.display()).ok();
            }
            if let Some(u) = &p.disable_linger {
                writeln!(out, "  disable linger for {u}").ok();
            }
            if let Some(u) = &p.delete_user {
                writeln!(out, "  delete system user {u}").ok();
            }
        }
        return Ok(());
    }
    let outcome = apply::apply_uninstall(&p, &receipt, host, euid, out)?;
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&outcome).unwrap_or_default()
        )
        .ok();
        return Ok(());
    }
    writeln!(
        out,
        "{verb}: removed {} path(s) ({} mode)",
        outcome.removed.len(),
        layout.mode
    )
    .ok();
    for (path, why) in &outcome.kept {
        writeln!(out, "  kept {} ({why})", path.display()).ok();
    }
    if !args.purge && !outcome.kept.is_empty() {
        let sudo = if layout.mode == Mode::System {
            "sudo "
        } else {
            ""
        };
        writeln!(out, "next: `{sudo}outpost install` to reinstall with this config, or `{sudo}outpost uninstall --purge` to remove it too").ok();
    }
    Ok(())
}
