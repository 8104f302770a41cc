//! `outpost pack …`: what the host's admin allows to run here (docs/PACKS.md). The logic is
//! `outpost_pack`; this is flags, output and the journal.
use clap::Subcommand;
use outpost_core::journal::{kind, Journal};
use outpost_core::layout::{Layout, Mode};
use outpost_core::{exit, Hint};
use outpost_installer::apply::Host;
use outpost_installer::detect::Probe;
use outpost_installer::error::{Error, Result};
use outpost_pack::store::{self, Installed};
use outpost_pack::Pack;
use outpost_release::packrel::{self, PackSource};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum PackCommand {
    /// Check a pack directory and print its actions and tree hash (changes nothing)
    Validate {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Install (or update) a pack into this host's pack dir and reload the agent: from a pack
    /// DIR, or a signed pack release (an https:// URL of SITE/packs/NAME, a release directory,
    /// or a pack bundle file), verified with the host's trusted release keys
    Install {
        /// A pack directory, a pack release URL or directory, or a pack bundle
        #[arg(required_unless_present = "bundle", value_name = "DIR|URL|BUNDLE")]
        source: Option<String>,
        /// A pack bundle (`outpost-release pack bundle`), read offline
        #[arg(long, conflicts_with = "source", value_name = "FILE")]
        bundle: Option<PathBuf>,
        /// The pack release version to install [default: the signed manifest's latest]
        #[arg(long)]
        version: Option<semver::Version>,
        #[command(flatten)]
        mode: super::ModeFlags,
        #[arg(long)]
        json: bool,
    },
    /// List the installed packs, their hashes and privileged grants
    List {
        #[command(flatten)]
        mode: super::ModeFlags,
        #[arg(long)]
        json: bool,
    },
    /// Remove an installed pack (and its privileged grant) and reload the agent
    Remove {
        name: String,
        #[command(flatten)]
        mode: super::ModeFlags,
    },
    /// Let the pack's `privileged = true` actions run as root, at its current tree hash
    /// (a changed pack loses the grant until trusted again)
    Trust {
        name: String,
        /// Required: what is granted is running as root
        #[arg(long, required = true)]
        privileged: bool,
        #[command(flatten)]
        mode: super::ModeFlags,
    },
}

fn pack_err(e: outpost_pack::PackError) -> Error {
    Error::from_hint(&e)
}

/// Who must own the installed packs, and as whom they are written.
fn owner(layout: &Layout, euid: u32) -> (u32, Option<(u32, u32)>) {
    match layout.mode {
        Mode::System => (0, Some((0, 0))),
        Mode::User => (euid, None),
    }
}

fn need_root(layout: &Layout, euid: u32, what: &str) -> Result<()> {
    if layout.mode == Mode::System && euid != 0 {
        return Err(Error::usage(
            format!(
                "{what} changes root's pack dir {}",
                store::packs_dir(&layout.config_dir).display()
            ),
            format!("run it with sudo: `sudo outpost pack {what} …`"),
        ));
    }
    Ok(())
}

fn summary(p: &Pack) -> serde_json::Value {
    json!({
        "name": p.name,
        "version": p.version.to_string(),
        "sha256": p.sha256,
        "actions": p.actions.iter().map(|a| json!({
            "id": a.id,
            "description": a.description,
            "privileged": a.privileged,
            "idempotent": a.idempotent,
            "params": a.params.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
            "limits": a.limits,
        })).collect::<Vec<_>>(),
    })
}

fn print_pack(out: &mut dyn Write, p: &Pack) {
    writeln!(out, "pack {} {} (sha256 {})", p.name, p.version, p.sha256).ok();
    for a in &p.actions {
        let mut flags = Vec::new();
        if a.privileged {
            flags.push("privileged");
        }
        if a.idempotent {
            flags.push("idempotent");
        }
        let params: Vec<&str> = a.params.iter().map(|p| p.name.as_str()).collect();
        writeln!(
            out,
            "  {}({}){}{}",
            a.id,
            params.join(", "),
            if flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", flags.join(", "))
            },
            if a.description.is_empty() {
                String::new()
            } else {
                format!(": {}", a.description)
            }
        )
        .ok();
    }
}

pub fn run(
    command: PackCommand,
    probe: &dyn Probe,
    host: &dyn Host,
    root: &Path,
    out: &mut dyn Write,
) -> Result<i32> {
    match command {
        PackCommand::Validate { dir, json } => validate(&dir, json, out),
        PackCommand::Install {
            source,
            bundle,
            version,
            mode,
            json,
        } => {
            let from = match (bundle, source) {
                (Some(b), _) => {
                    if !b.is_file() {
                        return Err(Error::usage(
                            format!("pack bundle {} is not a file", b.display()),
                            "give the file `outpost-release pack bundle` wrote",
                        ));
                    }
                    PackSource::Release(outpost_release::Source::Bundle(b))
                }
                (None, Some(s)) => PackSource::parse(&s).map_err(Error::from)?,
                (None, None) => {
                    return Err(Error::usage(
                        "no pack to install",
                        "give a pack DIR, a pack release URL, or --bundle FILE",
                    ))
                }
            };
            let (layout, _) = outpost_installer::uninstall::find_install(probe, root, mode.mode())?;
            let euid = probe.euid();
            match from {
                PackSource::Dir(dir) => {
                    if version.is_some() {
                        return Err(Error::usage(
                            "--version is for a pack release, not a pack directory",
                            "drop --version: a pack directory installs the version its pack.toml says",
                        ));
                    }
                    let src = outpost_pack::load(&dir, None).map_err(pack_err)?;
                    need_root(&layout, euid, "install")?;
                    install(&layout, &src, euid, host, json, out)
                }
                PackSource::Release(source) => {
                    install_release(&layout, source, version.as_ref(), euid, host, json, out)
                }
            }
        }
        PackCommand::List { mode, json } => {
            let (layout, _) = outpost_installer::uninstall::find_install(probe, root, mode.mode())?;
            list(&layout, probe.euid(), json, out)
        }
        PackCommand::Remove { name, mode } => {
            let (layout, _) = outpost_installer::uninstall::find_install(probe, root, mode.mode())?;
            remove(&layout, &name, probe.euid(), host, out)
        }
        PackCommand::Trust { name, mode, .. } => {
            let (layout, _) = outpost_installer::uninstall::find_install(probe, root, mode.mode())?;
            trust(&layout, &name, probe.euid(), host, out)
        }
    }
}

fn validate(dir: &Path, json: bool, out: &mut dyn Write) -> Result<i32> {
    let p = outpost_pack::load(dir, None).map_err(pack_err)?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&summary(&p)).unwrap_or_default()
        )
        .ok();
    } else {
        print_pack(out, &p);
        writeln!(
            out,
            "ok: {} action(s); install it with `sudo outpost pack install {}`",
            p.actions.len(),
            dir.display()
        )
        .ok();
    }
    Ok(exit::OK)
}

fn journal(layout: &Layout) -> Journal {
    Journal::open(&layout.host(&layout.state_dir))
}

fn check_name(name: &str) -> Result<()> {
    if outpost_pack::valid_name(name) {
        return Ok(());
    }
    Err(Error::usage(
        format!("invalid pack name {name:?}"),
        "use a name `outpost pack list` shows",
    ))
}

/// SIGHUP the agent so it re-reads its packs (no run is dropped); a stopped agent reads them
/// when it starts.
fn reload_agent(layout: &Layout, euid: u32, host: &dyn Host, out: &mut dyn Write) {
    let scope = outpost_installer::uninstall::scope(layout, euid);
    let r = host.service_manager(scope).and_then(|s| {
        s.kill(
            outpost_installer::UNIT,
            outpost_systemd::Whom::Main,
            rustix::process::Signal::HUP.as_raw(),
        )
    });
    match r {
        Ok(()) => writeln!(
            out,
            "agent reloaded (SIGHUP): it advertises the new catalog"
        )
        .ok(),
        Err(e) => writeln!(
            out,
            "warning: cannot reload the agent: {e}\nhint: {}",
            e.hint()
        )
        .ok(),
    };
}

/// Install a signed pack release: verified with the host's trusted release keys (the
/// compiled-in ones and `[release] public_keys` of the root-owned config, exactly what
/// `outpost upgrade` uses), unpacked into a private temp dir, then installed like a pack
/// directory. Nothing on disk changes before every check passed; the pack's replay
/// timestamp is recorded only once it is installed.
fn install_release(
    layout: &Layout,
    source: outpost_release::Source,
    version: Option<&semver::Version>,
    euid: u32,
    host: &dyn Host,
    json: bool,
    out: &mut dyn Write,
) -> Result<i32> {
    need_root(layout, euid, "install")?;
    let config =
        outpost_core::Config::load_trusted(&layout.root, &layout.host(&layout.config_file))?;
    let keys = outpost_upgrade::stage::trusted_keys(&config)?;
    let source = source.with_ca_file(config.release.ca_file.clone());
    // The replay state decides which pack manifests are accepted: root's state dir only.
    let sd = layout.host(&layout.state_dir);
    outpost_core::trust::check_trusted(&layout.root, &sd, euid)
        .map_err(|e| Error::failed(e.to_string(), e.hint()))?;
    let replay_dir = sd.join(outpost_core::layout::files::PACK_RELEASE_REPLAY);
    let work = packrel::work_dir()?;
    let v = packrel::fetch_pack(&source, &keys, Some(&replay_dir), version, work.path())?;
    if !json {
        writeln!(
            out,
            "verified pack release {} {}: signed by a trusted key ({}), tarball sha256 {}, tree sha256 {}",
            v.pack.name, v.pack.version, v.manifest_location, v.tarball_sha256, v.pack.sha256
        )
        .ok();
    }
    let code = install(layout, &v.pack, euid, host, json, out)?;
    // The pack is installed: a replay state that cannot be written is said, not an error.
    if let Err(e) = packrel::record_replay(&replay_dir, &v.pack.name, v.manifest_timestamp) {
        writeln!(out, "warning: {e}\nhint: {}", e.hint()).ok();
    }
    Ok(code)
}

fn install(
    layout: &Layout,
    src: &Pack,
    euid: u32,
    host: &dyn Host,
    json: bool,
    out: &mut dyn Write,
) -> Result<i32> {
    let (_, ids) = owner(layout, euid);
    let pd = layout.host(&store::packs_dir(&layout.config_dir));
    let done = store::install(src, &pd, ids).map_err(pack_err)?;
    let what = match &done {
        Installed::New => "installed".to_string(),
        Installed::Replaced { old_sha256 } => format!("updated (was sha256 {old_sha256})"),
        Installed::Unchanged => "unchanged".to_string(),
    };
    if done != Installed::Unchanged {
        let _ = journal(layout).append(
            kind::PACK_INSTALLED,
            json!({"pack": src.name, "version": src.version.to_string(), "sha256": src.sha256, "replaced": matches!(done, Installed::Replaced { .. })}),
        );
    }
    if json {
        let mut v = summary(src);
        v["result"] = json!(what);
        writeln!(out, "{v}").ok();
    } else {
        writeln!(
            out,
            "pack {} {} {what}: {}",
            src.name,
            src.version,
            pd.join(&src.name).display()
        )
        .ok();
        writeln!(out, "the hub lists a new or changed hash as pending until an admin trusts it (`outpost-hub packs trust`)").ok();
    }
    if done != Installed::Unchanged {
        reload_agent(layout, euid, host, out);
    }
    Ok(exit::OK)
}

fn list(layout: &Layout, euid: u32, json: bool, out: &mut dyn Write) -> Result<i32> {
    let (trust_uid, _) = owner(layout, euid);
    let cfg = layout.host(&layout.config_dir);
    let packs = store::installed(&store::packs_dir(&cfg), Some(trust_uid)).map_err(pack_err)?;
    let mut rows = Vec::new();
    let mut broken = false;
    for (name, r) in &packs {
        let grant =
            store::privileged_grant(&layout.root, &cfg, name, trust_uid).map_err(pack_err)?;
        match r {
            Ok(p) => {
                let granted = grant.as_deref() == Some(p.sha256.as_str());
                let drifted = grant.is_some() && !granted;
                if json {
                    let mut v = summary(p);
                    v["privileged_granted"] = json!(granted);
                    v["privileged_grant_drifted"] = json!(drifted);
                    rows.push(v);
                } else {
                    print_pack(out, p);
                    if granted {
                        writeln!(out, "  privileged actions: granted at this hash").ok();
                    } else if drifted {
                        writeln!(out, "  privileged actions: NOT granted (the pack changed since `pack trust`; re-check it, then `sudo outpost pack trust {name} --privileged`)").ok();
                    }
                }
            }
            Err(e) => {
                broken = true;
                if json {
                    rows.push(json!({"name": name, "error": e.to_string(), "hint": e.hint()}));
                } else {
                    writeln!(out, "pack {name}: REFUSED: {e}\n  hint: {}", e.hint()).ok();
                }
            }
        }
    }
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        )
        .ok();
    } else if packs.is_empty() {
        writeln!(
            out,
            "no packs installed; add one with `sudo outpost pack install DIR` (docs/PACKS.md)"
        )
        .ok();
    }
    Ok(if broken { exit::FAILURE } else { exit::OK })
}

fn remove(
    layout: &Layout,
    name: &str,
    euid: u32,
    host: &dyn Host,
    out: &mut dyn Write,
) -> Result<i32> {
    check_name(name)?;
    need_root(layout, euid, "remove")?;
    let cfg = layout.host(&layout.config_dir);
    if !store::remove(&cfg, name).map_err(pack_err)? {
        return Err(Error::usage(
            format!("no pack {name:?} is installed"),
            "see `outpost pack list`",
        ));
    }
    let _ = journal(layout).append(kind::PACK_REMOVED, json!({"pack": name}));
    writeln!(out, "pack {name} removed").ok();
    reload_agent(layout, euid, host, out);
    Ok(exit::OK)
}

fn trust(
    layout: &Layout,
    name: &str,
    euid: u32,
    host: &dyn Host,
    out: &mut dyn Write,
) -> Result<i32> {
    need_root(layout, euid, "trust")?;
    let (trust_uid, ids) = owner(layout, euid);
    let cfg = layout.host(&layout.config_dir);
    let dir = store::packs_dir(&cfg).join(name);
    check_name(name)?;
    if !dir.is_dir() {
        return Err(Error::usage(
            format!("no pack {name:?} is installed"),
            "see `outpost pack list`",
        ));
    }
    let p = outpost_pack::load(&dir, Some(trust_uid)).map_err(pack_err)?;
    let privileged: Vec<&str> = p
        .actions
        .iter()
        .filter(|a| a.privileged)
        .map(|a| a.id.as_str())
        .collect();
    if privileged.is_empty() {
        return Err(Error::usage(
            format!("pack {name} has no privileged action"),
            "only actions with `privileged = true` need this grant; the others run as the service user already",
        ));
    }
    store::grant_privileged(&cfg, &p, ids).map_err(pack_err)?;
    let _ = journal(layout).append(
        kind::PACK_PRIVILEGED_GRANTED,
        json!({"pack": name, "sha256": p.sha256, "actions": privileged}),
    );
    writeln!(
        out,
        "pack {name}: {} may run as root at sha256 {} (a changed pack loses this grant)",
        privileged.join(", "),
        p.sha256
    )
    .ok();
    reload_agent(layout, euid, host, out);
    Ok(exit::OK)
}
