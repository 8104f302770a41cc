//! `outpost privileged-run RUN_ID` (hidden): root's half of a privileged run, started only by
//! the root-owned template `outpost-run-privileged@RUN_ID.service` (docs/RUNS.md,
//! *Privileged actions*).
//!
//! Everything it acts on is root's: the receipt (who the service user is), the packs in
//! `/etc/outpost/packs` (root-owned, StrictModes-checked), the admin's grants, the env file.
//! The one thing the agent supplies is the request in its run directory, read without
//! following a link, owned by the service user, bounded, parsed with unknown fields refused
//! and [`admit`](outpost_agent::runs::privileged::admit)ted only for a privileged action of a
//! granted pack at its granted hash with parameters that pass the action's schema. Root never
//! writes into the agent's directory: the run's files (log, refusal) are in root's
//! `/var/lib/outpost/runs/RUN_ID/`, 0750 root:<service group>.
use outpost_agent::runs::{
    plan::{self, Host, PrivilegedHost},
    privileged::{self, MAX_REQUEST, REFUSED_FILE, REQUEST_FILE},
};
use outpost_core::exit;
use outpost_core::journal::{kind, Journal};
use outpost_core::layout::Layout;
use outpost_installer::error::{Error, Result};
use outpost_pack::store;
use outpost_systemd::{RunManager, Scope, SvcError};
use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Root's run directories older than this, whose unit is gone, are removed.
const RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// Largest env file read.
const MAX_ENV: u64 = 1 << 20;

pub fn run(root: &Path, id: &str, out: &mut dyn Write) -> Result<i32> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Err(Error::usage(
            "privileged-run must run as root",
            "outpost-run-privileged@RUN_ID.service starts it; the agent asks for it, never a user",
        ));
    }
    if !plan::valid_run_id(id) {
        return Err(Error::usage(
            format!("invalid run id {id:?}: 1-64 of A-Za-z0-9_-"),
            "the template's instance name is the run id the hub assigned",
        ));
    }
    let layout = Layout::system(root);
    let receipt = outpost_installer::receipt::Receipt::load(&layout)?.ok_or_else(|| {
        Error::failed(
            "no system-mode install here (no receipt)",
            "privileged runs need `sudo outpost install`",
        )
    })?;
    let account = outpost_installer::users::by_name(root, &receipt.service_user)
        .map_err(|e| Error::failed(e.to_string(), "check /etc/passwd"))?
        .ok_or_else(|| {
            Error::failed(
                format!("service user {} does not exist", receipt.service_user),
                "reinstall with `sudo outpost install`",
            )
        })?;
    let mgr = outpost_systemd::dbus::SystemdBus::connect(Scope::System)
        .map_err(|e| Error::failed(e.to_string(), e.hint()))?;
    let unit = plan::unit_name(id);
    let state = layout.host(&layout.state_dir);
    let runs = state.join("runs");
    outpost_core::atomic::create_dirs(&runs, 0o755, None).map_err(|e| {
        Error::failed(
            format!("cannot create {}: {e}", runs.display()),
            "check free space",
        )
    })?;
    let dir = runs.join(id);
    let journal = Journal::open(&state);
    if std::fs::symlink_metadata(&dir).is_ok() {
        // A second start of the same instance (a restarted agent): the run is already there.
        let loaded = mgr.unit_status(&unit).is_ok_and(|s| s.is_loaded());
        if loaded && !dir.join(REFUSED_FILE).exists() {
            writeln!(out, "run {id} was admitted already: {unit}").ok();
            return Ok(exit::OK);
        }
        return Err(Error::failed(
            format!(
                "run {id} was handled already (root's {} exists); a run id is admitted once",
                dir.display()
            ),
            "the hub assigns a new id to every run",
        ));
    }
    mkdir(&dir, 0o750, account.gid)?;
    mkdir(&dir.join("work"), 0o700, 0)?;
    let refuse = |why: String| -> Result<i32> {
        let path = dir.join(REFUSED_FILE);
        let _ = outpost_core::atomic::write_atomic(
            &path,
            format!("{why}\n").as_bytes(),
            0o640,
            Some((0, account.gid)),
        );
        let _ = journal.append(
            kind::PRIVILEGED_RUN_REFUSED,
            json!({"run": id, "reason": why}),
        );
        Err(Error::failed(
            format!("privileged run {id} refused: {why}"),
            "the agent reports the run as rejected with this reason",
        ))
    };
    let request_path = layout
        .host(&layout.agent_dir)
        .join("runs")
        .join(id)
        .join(REQUEST_FILE);
    let request = match read_request(&request_path, account.uid) {
        Ok(b) => b,
        Err(why) => return refuse(why),
    };
    let cfg = layout.host(&layout.config_dir);
    let mut packs = Vec::new();
    let mut grants = std::collections::BTreeMap::new();
    let entries =
        store::installed(&store::packs_dir(&cfg), Some(0)).map_err(|e| Error::from_hint(&e))?;
    for (name, p) in entries {
        let Ok(p) = p else { continue };
        if let Ok(Some(sha)) = store::privileged_grant(root, &cfg, &name, 0) {
            grants.insert(name, sha);
        }
        packs.push(p);
    }
    let env =
        match outpost_core::trust::read_trusted(root, &layout.host(&layout.env_file), 0, MAX_ENV) {
            Ok(b) => b
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .lines()
                        .filter_map(outpost_core::kv::assignment)
                        .map(|(k, v)| (k.to_string(), v))
                        .collect()
                })
                .unwrap_or_default(),
            Err(e) => return refuse(format!("cannot read the env file: {e}")),
        };
    let cgroup = match mgr.manager_cgroup() {
        Ok(c) if !c.is_empty() => c,
        _ => "/".to_string(),
    };
    let host = Host {
        state_dir: layout.agent_dir.clone(),
        env,
        controllers: Default::default(),
        cgroup: String::new(),
        privileged: Some(PrivilegedHost {
            state_dir: layout.state_dir.clone(),
            grants,
            controllers: outpost_agent::runs::engine::read_controllers(&cgroup),
            cgroup,
        }),
        // Root's runs are the admin's: no fence from the agent's files (docs/RUNS.md).
        isolation: None,
    };
    let (p, req) = match privileged::admit(id, &request, &packs, &host) {
        Ok(x) => x,
        Err(why) => return refuse(why),
    };
    match mgr.start_transient_unit(&p.unit, &p.props) {
        Ok(()) => {}
        Err(SvcError::Job { result, .. }) if result == "exists" => {}
        Err(e) => return refuse(format!("cannot start {}: {e}", p.unit)),
    }
    let _ = journal.append(
        kind::PRIVILEGED_RUN_STARTED,
        json!({"run": id, "unit": p.unit, "pack": req.pack, "action": req.action, "sha256": req.sha256, "params": req.params}),
    );
    writeln!(out, "run {id} admitted: {} started as root", p.unit).ok();
    prune(&runs, &mgr, id);
    Ok(exit::OK)
}

fn mkdir(path: &Path, mode: u32, gid: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let e = |e: std::io::Error| {
        Error::failed(
            format!("cannot create {}: {e}", path.display()),
            "check free space",
        )
    };
    std::fs::create_dir(path).map_err(e)?;
    rustix::fs::chown(
        path,
        Some(rustix::process::Uid::ROOT),
        Some(rustix::process::Gid::from_raw(gid)),
    )
    .map_err(|x| e(x.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(e)
}

/// The agent's request: a regular file (never through a link), the service user's, bounded.
fn read_request(path: &Path, uid: u32) -> std::result::Result<Vec<u8>, String> {
    let file = match outpost_core::trust::open_untrusted(path) {
        Ok(Some(f)) => f,
        Ok(None) => return Err(format!("no request at {}", path.display())),
        Err(e) => return Err(e.to_string()),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.uid() != uid {
        return Err(format!(
            "{} is owned by uid {}, not the service user ({uid})",
            path.display(),
            meta.uid()
        ));
    }
    if meta.len() > MAX_REQUEST {
        return Err(format!(
            "{} is larger than {MAX_REQUEST} bytes",
            path.display()
        ));
    }
    let mut buf = Vec::new();
    file.take(MAX_REQUEST + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_REQUEST {
        return Err(format!(
            "{} is larger than {MAX_REQUEST} bytes",
            path.display()
        ));
    }
    Ok(buf)
}

/// Remove root's run directories past [`RETENTION`] whose unit is gone.
fn prune(runs: &Path, mgr: &dyn RunManager, keep: &str) {
    let Ok(rd) = std::fs::read_dir(runs) else {
        return;
    };
    let now = SystemTime::now();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name == keep || !plan::valid_run_id(&name) {
            continue;
        }
        let old = e
            .metadata()
            .ok()
            .filter(|m| m.is_dir())
            .and_then(|m| m.modified().ok())
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > RETENTION);
        let loaded = mgr
            .unit_status(&plan::unit_name(&name))
            .map_or(true, |s| s.is_loaded());
        if old && !loaded {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
