//! `outpost upgrade` as a type with one method per step: locate (once) → choose → stage →
//! smoke → record + guard → stop → swap → start → health gate → confirm, or roll back.
use super::decide::{self, Target, Topology};
use super::record::{self, Record, Step};
use super::{
    event, health_gate, load_record, prune, save_record, set_last_good, smoke, start_guard,
    swap_current, sync_receipt, Stager, Timings, UpgradeArgs, GUARD_UNIT,
};
use outpost_core::exit;
use outpost_core::layout::{Layout, Mode};
use outpost_installer::apply::Host;
use outpost_installer::error::{Error, Result};
use outpost_installer::receipt::Receipt;
use outpost_systemd::{ServiceManager, UnitStatus};
use semver::Version;
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};

/// The install an upgrade acts on, located once: its layout, receipt and config (read
/// through the StrictModes checks).
pub struct Located {
    pub layout: Layout,
    pub receipt: Option<Receipt>,
    pub config: outpost_core::Config,
    pub euid: u32,
}

impl Located {
    /// Detect the host once, find the install and load its config.
    pub fn find(
        probe: &dyn outpost_installer::detect::Probe,
        root: &std::path::Path,
        mode: Option<Mode>,
    ) -> Result<Located> {
        let (layout, receipt) = outpost_installer::uninstall::find_install(probe, root, mode)?;
        let config =
            outpost_core::Config::load_trusted(&layout.root, &layout.host(&layout.config_file))?;
        Ok(Located {
            layout,
            receipt: receipt.filter(|r| r.uninstalled_at.is_none()),
            config,
            euid: probe.euid(),
        })
    }
}

/// Run `outpost upgrade` on the located install.
pub fn run(
    args: &UpgradeArgs,
    loc: &Located,
    host: &dyn Host,
    stager: &dyn Stager,
    out: &mut dyn Write,
) -> Result<i32> {
    let Some(mut up) = Upgrade::choose(args, loc, host, stager, out)? else {
        return Ok(exit::OK);
    };
    let vdir = up.stage(stager, out)?;
    up.smoke(&vdir, out)?;
    match up.svc.take() {
        Some(svc) if up.orchestrated() => up.orchestrate(svc.as_ref(), out),
        _ => up.package_only(out),
    }
}

/// The version `current` points at; an error when there is none (not installed here).
fn installed_version(layout: &Layout) -> Result<Version> {
    super::current_version(layout)?.ok_or_else(|| {
        Error::failed(
            format!(
                "outpost is not installed here ({} has no `current` link)",
                layout.base.display()
            ),
            "install it first: `sudo outpost install` or the install.sh one-liner",
        )
    })
}

/// How this upgrade may run (orchestrated or package only); a refused topology is an error.
fn upgrade_topology(
    args: &UpgradeArgs,
    loc: &Located,
    svc: Option<&dyn ServiceManager>,
    can_write: bool,
) -> Result<Topology> {
    let unit_loaded = match svc {
        Some(s) => s.status(outpost_installer::UNIT)?.is_loaded(),
        None => false,
    };
    let topology = decide::topology(
        loc.receipt.as_ref().map(|r| r.mode),
        unit_loaded,
        loc.euid,
        can_write,
        args.no_restart,
    );
    if let Topology::Refused { message, hint } = &topology {
        return Err(Error::usage(message.clone(), hint.clone()));
    }
    Ok(topology)
}

/// Another upgrader that is still alive owns the install: refuse.
fn refuse_concurrent_upgrade(layout: &Layout) -> Result<()> {
    if let Some(r) = load_record(layout)? {
        if record::upgrader_alive(&r) {
            return Err(Error::failed(
                format!(
                    "an upgrade from {} to {} is already running (pid {})",
                    r.from, r.to, r.upgrader_pid
                ),
                "wait for it to finish; `outpost events --follow` shows its progress",
            ));
        }
    }
    Ok(())
}

/// The version to go to: `--to`, else the newest on the channel. `None` (printed) when there
/// is nothing to do.
fn target(
    args: &UpgradeArgs,
    loc: &Located,
    stager: &dyn Stager,
    current: &Version,
    out: &mut dyn Write,
) -> Result<Option<Version>> {
    let channel = args
        .channel
        .clone()
        .unwrap_or_else(|| loc.config.release.channel.clone());
    let newest = match &args.target {
        Some(_) => None,
        None => stager.newest(&channel)?,
    };
    match decide::choose_target(current, args.target.as_ref(), newest.as_ref()) {
        Target::Nothing { reason } => {
            writeln!(out, "nothing to do: {reason}").ok();
            Ok(None)
        }
        Target::Upgrade(v) | Target::Downgrade(v) => Ok(Some(v)),
    }
}

/// One upgrade from `from` to `to`, between the decision and its outcome.
struct Upgrade<'a> {
    loc: &'a Located,
    host: &'a dyn Host,
    svc: Option<Box<dyn ServiceManager>>,
    topology: Topology,
    from: Version,
    to: Version,
    timings: Timings,
    /// Bounded by `Config::parse` (MAX_SOAK_SECS), so no timeout derived from it overflows.
    soak: Duration,
    hub: bool,
}

impl<'a> Upgrade<'a> {
    /// Decide what to do. `None` when there is nothing to do or it was a dry run (printed).
    fn choose(
        args: &UpgradeArgs,
        loc: &'a Located,
        host: &'a dyn Host,
        stager: &dyn Stager,
        out: &mut dyn Write,
    ) -> Result<Option<Upgrade<'a>>> {
        let layout = &loc.layout;
        let current = installed_version(layout)?;
        let versions_dir = layout.host(&layout.versions_dir());
        let can_write = rustix::fs::access(&versions_dir, rustix::fs::Access::WRITE_OK).is_ok();
        let svc = host
            .service_manager(outpost_installer::uninstall::scope(layout, loc.euid))
            .ok();
        let topology = upgrade_topology(args, loc, svc.as_deref(), can_write)?;
        refuse_concurrent_upgrade(layout)?;
        let Some(to) = target(args, loc, stager, &current, out)? else {
            return Ok(None);
        };
        let up = Upgrade {
            loc,
            host,
            svc,
            topology,
            from: current,
            to,
            timings: Timings::default(),
            soak: Duration::from_secs(
                loc.config
                    .upgrade
                    .soak_secs
                    .min(outpost_core::config::MAX_SOAK_SECS),
            ),
            hub: loc.config.hub.url.is_some(),
        };
        if args.dry_run {
            up.print_dry_run(args.json, out);
            return Ok(None);
        }
        Ok(Some(up))
    }

    fn orchestrated(&self) -> bool {
        matches!(self.topology, Topology::Orchestrated)
    }

    fn how(&self) -> String {
        match &self.topology {
            Topology::Orchestrated => {
                "stop → swap → start → health gate, rollback on failure".to_string()
            }
            Topology::PackageOnly { reason } => format!("package only ({reason})"),
            Topology::Refused { message, .. } => format!("refused ({message})"),
        }
    }

    fn print_dry_run(&self, json_out: bool, out: &mut dyn Write) {
        let (from, to, how) = (&self.from, &self.to, self.how());
        if json_out {
            writeln!(out, "{}", json!({"from": from.to_string(), "to": to.to_string(), "orchestrated": self.orchestrated(), "how": how})).ok();
        } else {
            writeln!(
                out,
                "would upgrade outpost from {from} to {to} ({} mode; {how})",
                self.loc.layout.mode
            )
            .ok();
        }
    }

    fn layout(&self) -> &'a Layout {
        &self.loc.layout
    }

    /// Journal `upgrade_aborted` and build the error: nothing was touched.
    fn abort(&mut self, reason: String, hint: String, out: &mut dyn Write) -> Error {
        let data = json!({"from": self.from, "to": self.to, "reason": reason, "timings": self.timings.json()});
        event(self.layout(), "upgrade_aborted", data, out);
        Error::failed(
            format!(
                "upgrade to {} aborted: {reason}; the service was not touched",
                self.to
            ),
            hint,
        )
    }

    /// 1. Download, verify, unpack: the service is untouched.
    fn stage(&mut self, stager: &dyn Stager, out: &mut dyn Write) -> Result<std::path::PathBuf> {
        self.timings.begin("fetch");
        writeln!(out, "fetching and verifying outpost {}", self.to).ok();
        let versions_dir = self.layout().host(&self.layout().versions_dir());
        stager.stage(&self.to, &versions_dir).map_err(|e| {
            let hint = e.hint();
            self.abort(e.to_string(), hint, out)
        })
    }

    /// 2. The new binary's self-test with the live config, as the service user.
    fn smoke(&mut self, vdir: &std::path::Path, out: &mut dyn Write) -> Result<()> {
        self.timings.begin("smoke");
        let service_ids = self
            .loc
            .receipt
            .as_ref()
            .and_then(|r| self.host.user_ids(&r.service_user));
        smoke(self.layout(), vdir, service_ids).map(drop).map_err(|e| {
            self.abort(
                e,
                "the new version cannot run with this host's config; fix the config or pick another version".into(),
                out,
            )
        })
    }

    /// Package only: swap `current`, leave the running service alone.
    fn package_only(&mut self, out: &mut dyn Write) -> Result<i32> {
        let layout = self.layout();
        let how = self.how();
        self.timings.begin("swap");
        swap_current(layout, &self.to)?;
        let data = json!({"from": self.from, "to": self.to, "reason": how, "timings": self.timings.json()});
        event(layout, "package_upgraded", data, out);
        sync_receipt(layout)?;
        let restart = match layout.mode {
            Mode::System => "sudo systemctl restart outpost.service",
            Mode::User => "systemctl --user restart outpost.service",
        };
        let (from, to) = (&self.from, &self.to);
        let why = match &self.topology {
            Topology::PackageOnly { reason } => reason.clone(),
            _ => how,
        };
        writeln!(out, "upgraded the package from {from} to {to}; the running service was not restarted ({why})").ok();
        writeln!(out, "next: `{restart}` to run {to}").ok();
        Ok(exit::OK)
    }

    /// Write the record at step `s` (atomically) before doing it.
    fn step(&self, rec: &mut Record, s: Step) -> Result<()> {
        rec.step = s;
        save_record(self.layout(), rec)?;
        // Test builds only: stop here so the suite can kill us at exactly this step.
        crate::fault::pause_at(self.layout(), s);
        Ok(())
    }

    fn new_record(&self) -> Record {
        let me = std::process::id();
        Record {
            from: self.from.clone(),
            to: self.to.clone(),
            step: Step::Pending,
            started_at: outpost_core::time::now_rfc3339(),
            upgrader_pid: me,
            upgrader_start: record::process_start(me).unwrap_or(0),
            starts: 0,
            orchestrated: true,
        }
    }

    /// 3–8: record, guard, stop → swap → start → health gate, then confirm or roll back.
    fn orchestrate(&mut self, svc: &dyn ServiceManager, out: &mut dyn Write) -> Result<i32> {
        let mut rec = self.new_record();
        self.step(&mut rec, Step::Pending)?;
        // From here on the upgrade must not depend on this process staying alive: a guard in
        // its own transient unit (started once the record exists) resolves the record as soon
        // as this process is gone (Ctrl-C, SSH drop, OOM kill, panic), so the service is never
        // left stopped or running a version nobody confirmed.
        if let Err(e) = start_guard(svc, self.layout()) {
            record::clear(&self.layout().host(&self.layout().state_dir)).ok();
            return Err(self.abort(
                format!("cannot start the upgrade guard unit {GUARD_UNIT}: {e}"),
                "the upgrade needs it to finish or revert if this command is interrupted; check `systemctl status` for the manager's state".into(),
                out,
            ));
        }
        let mut downtime_ms = 0;
        match self.attempt(svc, &mut rec, &mut downtime_ms) {
            Ok(_) => self.confirm(&mut rec, downtime_ms, out),
            Err(reason) => self.roll_back(svc, &mut rec, reason, out),
        }
    }

    /// stop → swap → start (ends at READY) → health gate; `Err` is why it is not healthy.
    fn attempt(
        &mut self,
        svc: &dyn ServiceManager,
        rec: &mut Record,
        downtime_ms: &mut u128,
    ) -> std::result::Result<UnitStatus, String> {
        let s = |e: Error| e.to_string();
        self.timings.begin("stop");
        self.step(rec, Step::Stopping).map_err(s)?;
        let down_since = Instant::now();
        svc.stop(outpost_installer::UNIT)
            .map_err(|e| e.to_string())?;
        self.timings.begin("swap");
        self.step(rec, Step::Swapping).map_err(s)?;
        swap_current(self.layout(), &self.to).map_err(s)?;
        self.step(rec, Step::Swapped).map_err(s)?;
        self.timings.begin("start");
        self.step(rec, Step::Starting).map_err(s)?;
        let since = std::time::SystemTime::now();
        svc.reset_failed(outpost_installer::UNIT)
            .map_err(|e| e.to_string())?;
        // Type=notify: the start job ends at READY; a version that never sends it fails here.
        svc.start_within(outpost_installer::UNIT, self.soak + Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        *downtime_ms = down_since.elapsed().as_millis();
        self.timings.begin("health");
        self.step(rec, Step::HealthCheck).map_err(s)?;
        health_gate(svc, self.layout(), self.soak, self.hub, since)
    }

    /// The new version passed: `last-good` → it, prune, journal, clear the record.
    fn confirm(&mut self, rec: &mut Record, downtime_ms: u128, out: &mut dyn Write) -> Result<i32> {
        let layout = self.layout();
        self.step(rec, Step::Confirmed)?;
        set_last_good(layout, &self.to)?;
        let removed = prune(
            layout,
            self.loc.config.upgrade.keep_versions.max(1),
            &[&self.to.to_string(), &self.from.to_string()],
        );
        let data = json!({"from": self.from, "to": self.to, "downtime_ms": downtime_ms, "timings": self.timings.json(), "removed_versions": removed});
        // The receipt before the record: a kill in between leaves a `confirmed` record that
        // the next resolver finishes (the same bookkeeping, idempotent).
        sync_receipt(layout)?;
        event(layout, "service_upgraded", data, out);
        let sd = layout.host(&layout.state_dir);
        record::clear(&sd).map_err(|e| Error::io("clear", &record::path(&sd), e))?;
        writeln!(
            out,
            "upgraded outpost from {} to {}: service healthy for {}s",
            self.from,
            self.to,
            self.soak.as_secs()
        )
        .ok();
        Ok(exit::OK)
    }

    /// Put `from` back and start it; an error either way (the upgrade failed).
    fn roll_back(
        &mut self,
        svc: &dyn ServiceManager,
        rec: &mut Record,
        reason: String,
        out: &mut dyn Write,
    ) -> Result<i32> {
        let layout = self.layout();
        let (from, to) = (self.from.clone(), self.to.clone());
        writeln!(
            out,
            "the new version {to} is not healthy: {reason}; rolling back to {from}"
        )
        .ok();
        self.timings.begin("rollback");
        rec.step = Step::RollingBack;
        save_record(layout, rec)?;
        let failed_at = Instant::now();
        let back = (|| -> std::result::Result<u128, String> {
            let _ = svc.stop(outpost_installer::UNIT);
            swap_current(layout, &from).map_err(|e| e.to_string())?;
            svc.reset_failed(outpost_installer::UNIT)
                .map_err(|e| e.to_string())?;
            svc.start(outpost_installer::UNIT)
                .map_err(|e| e.to_string())?;
            let restored_ms = failed_at.elapsed().as_millis();
            health_gate(
                svc,
                layout,
                Duration::from_secs(1).min(self.soak),
                false,
                std::time::SystemTime::now(),
            )
            .map(|_| restored_ms)
        })();
        let user = if layout.mode == Mode::User {
            "--user "
        } else {
            ""
        };
        match back {
            Ok(restored_ms) => {
                // restored_ms: health failure → old version active and READY again.
                let data = json!({"from": from, "to": to, "reason": reason, "restored_ms": restored_ms, "timings": self.timings.json()});
                sync_receipt(layout)?;
                event(layout, "service_upgrade_rolled_back", data, out);
                record::clear(&layout.host(&layout.state_dir)).ok();
                Err(Error::failed(
                    format!(
                        "upgrade to {to} failed ({reason}); rolled back, {from} is running again"
                    ),
                    format!("see `journalctl {user}-u outpost -n 50` for why {to} failed"),
                ))
            }
            Err(e2) => {
                let data = json!({"from": from, "to": to, "reason": reason, "rollback_error": e2, "timings": self.timings.json()});
                event(layout, "service_upgrade_rollback_failed", data, out);
                let sudo = if layout.mode == Mode::System {
                    "sudo "
                } else {
                    ""
                };
                writeln!(out, "ROLLBACK FAILED: {e2}").ok();
                writeln!(out, "recover by hand:").ok();
                writeln!(
                    out,
                    "  {sudo}ln -sfn versions/{from} {}",
                    layout.current_link().display()
                )
                .ok();
                writeln!(out, "  {sudo}systemctl {user}reset-failed outpost.service").ok();
                writeln!(out, "  {sudo}systemctl {user}start outpost.service").ok();
                writeln!(out, "  journalctl {user}-u outpost -n 100").ok();
                Err(Error::Usage {
                    message: format!("upgrade to {to} failed ({reason}) and the rollback to {from} failed too ({e2})"),
                    hint: "the host has no working agent: run the commands printed above".into(),
                })
            }
        }
    }
}
