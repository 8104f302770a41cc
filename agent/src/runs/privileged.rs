//! Privileged runs: the agent asks, root decides (docs/RUNS.md, *Privileged actions*).
//!
//! The agent (the service user) cannot start a unit as root. For an action with
//! `privileged = true` it writes a [`Request`] into its run's directory and starts
//! `outpost-run-privileged@<run id>.service`, a root-owned template unit that the polkit rule
//! lets the service user start and nothing else. The template runs `outpost privileged-run
//! <run id>` as root, which reads the request as untrusted bytes and [`admit`]s it only when
//! the root-owned pack, at the hash the host's admin granted, has that privileged action and
//! the parameters pass the action's schema. The unit it then starts is planned by the same
//! [`super::plan::decide`] from root's own inputs (pack, env file, grants), so no property,
//! path or argument of the agent's choosing reaches it: the run id names it, everything else
//! comes from what root trusts.
use super::plan::{self, Decision, Host, UnitPlan};
use outpost_pack::Pack;
use outpost_proto::RunOffer;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The request, in the agent's `runs/<id>/`.
pub const REQUEST_FILE: &str = "privileged.json";
/// Why root refused a request, in root's `runs/<id>/` (one line).
pub const REFUSED_FILE: &str = "refused";
/// Largest request root reads (params are at most 8 KiB at the hub).
pub const MAX_REQUEST: u64 = 64 << 10;

/// What the agent asks root to run: the hub's offer, nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub run_id: String,
    pub pack: String,
    pub sha256: String,
    pub action: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// The template instance that admits run `id`.
pub fn instance(id: &str) -> String {
    format!("outpost-run-privileged@{id}.service")
}

/// Root's decision on the bytes the agent wrote for run `id`: the unit to start, or why not
/// (one line), with the parsed request. `host.privileged` holds root's grants; without it
/// nothing is admitted.
pub fn admit(
    id: &str,
    request: &[u8],
    packs: &[Pack],
    host: &Host,
) -> Result<(UnitPlan, Request), String> {
    if !plan::valid_run_id(id) {
        return Err(format!("run id {id:?} is not 1-64 of A-Za-z0-9_-"));
    }
    if host.privileged.is_none() {
        return Err("privileged actions are not set up on this host".into());
    }
    let req: Request = serde_json::from_slice(request)
        .map_err(|e| format!("the request for run {id} is not a privileged run request: {e}"))?;
    if req.run_id != id {
        return Err(format!(
            "the request in run {id}'s directory names run {:?}",
            req.run_id
        ));
    }
    let offer = RunOffer {
        run_id: req.run_id.clone(),
        pack: req.pack.clone(),
        sha256: req.sha256.clone(),
        action: req.action.clone(),
        params: req.params.clone(),
        lease_secs: 0,
    };
    match plan::decide(&offer, packs, host) {
        Decision::Start(p) if p.privileged => Ok((*p, req)),
        Decision::Start(_) => Err(format!(
            "action {}/{} is not privileged: root runs only actions marked `privileged = true` (the agent runs the others as its service user)",
            offer.pack, offer.action
        )),
        Decision::Reject(why) => Err(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::plan::PrivilegedHost;
    use outpost_systemd::PropValue;
    use std::path::Path;

    const TOML: &str = r#"
[pack]
name = "ops"
version = "1.0.0"

[[action]]
id = "whoami"
command = ["/usr/bin/id", "-u"]
privileged = true

[[action]]
id = "restart"
command = ["/bin/systemctl", "restart", "{unit}"]
privileged = true
[[action.param]]
name = "unit"
type = "string"
pattern = "[a-z]+\\.service"
max_len = 32
required = true

[[action]]
id = "plain"
command = ["/bin/true"]
"#;

    fn pack(dir: &Path) -> Pack {
        std::fs::write(dir.join("pack.toml"), TOML).unwrap();
        outpost_pack::load(dir, None).unwrap()
    }

    fn host(grant: Option<&str>) -> Host {
        Host {
            state_dir: "/var/lib/outpost/agent".into(),
            env: BTreeMap::new(),
            controllers: Default::default(),
            cgroup: String::new(),
            privileged: Some(PrivilegedHost {
                state_dir: "/var/lib/outpost".into(),
                grants: grant
                    .map(|g| [("ops".to_string(), g.to_string())].into())
                    .unwrap_or_default(),
                controllers: Default::default(),
                cgroup: "/".into(),
            }),
            isolation: None,
        }
    }

    fn req(p: &Pack, id: &str, action: &str, params: &[(&str, &str)]) -> Vec<u8> {
        serde_json::to_vec(&Request {
            run_id: id.into(),
            pack: p.name.clone(),
            sha256: p.sha256.clone(),
            action: action.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn forged_requests_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = pack(d.path());
        let g = Some(p.sha256.as_str());
        let zeros = "0".repeat(64);
        let mut wrong_sha: serde_json::Value =
            serde_json::from_slice(&req(&p, "r1", "whoami", &[])).unwrap();
        wrong_sha["sha256"] = "f".repeat(64).into();
        let mut extra: serde_json::Value =
            serde_json::from_slice(&req(&p, "r1", "whoami", &[])).unwrap();
        extra["props"] = serde_json::json!({"User": "root", "ExecStart": "/bin/sh"});
        // (what, id, request bytes, grant, Ok(argv) or Err(substring))
        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, &str, Vec<u8>, Option<&str>, Result<&[&str], &str>)> = vec![
            (
                "granted",
                "r1",
                req(&p, "r1", "whoami", &[]),
                g,
                Ok(&["/usr/bin/id", "-u"]),
            ),
            (
                "with a valid parameter",
                "r1",
                req(&p, "r1", "restart", &[("unit", "nginx.service")]),
                g,
                Ok(&["/bin/systemctl", "restart", "nginx.service"]),
            ),
            (
                "not granted",
                "r1",
                req(&p, "r1", "whoami", &[]),
                None,
                Err("has not granted"),
            ),
            (
                "granted at another hash",
                "r1",
                req(&p, "r1", "whoami", &[]),
                Some(zeros.as_str()),
                Err("has not granted"),
            ),
            (
                "an unprivileged action through the root path",
                "r1",
                req(&p, "r1", "plain", &[]),
                g,
                Err("is not privileged"),
            ),
            (
                "a parameter outside its pattern",
                "r1",
                req(&p, "r1", "restart", &[("unit", "x; rm -rf /")]),
                g,
                Err("parameter unit"),
            ),
            (
                "an extra parameter",
                "r1",
                req(&p, "r1", "whoami", &[("cmd", "/bin/sh")]),
                g,
                Err("no parameter"),
            ),
            (
                "another run's request",
                "r2",
                req(&p, "r1", "whoami", &[]),
                g,
                Err("names run \"r1\""),
            ),
            (
                "the request's hash is not the pack's",
                "r1",
                serde_json::to_vec(&wrong_sha).unwrap(),
                g,
                Err("(drifted)"),
            ),
            (
                "unit properties smuggled in",
                "r1",
                serde_json::to_vec(&extra).unwrap(),
                g,
                Err("unknown field `props`"),
            ),
            (
                "not JSON",
                "r1",
                b"{\"run_id\":".to_vec(),
                g,
                Err("not a privileged run request"),
            ),
            (
                "a bad id",
                "../x",
                req(&p, "../x", "whoami", &[]),
                g,
                Err("is not 1-64"),
            ),
            (
                "an unknown action",
                "r1",
                req(&p, "r1", "sh", &[]),
                g,
                Err("has no action sh"),
            ),
        ];
        for (what, id, bytes, grant, want) in cases {
            match (
                admit(id, &bytes, std::slice::from_ref(&p), &host(grant)),
                want,
            ) {
                (Ok((plan, _)), Ok(argv)) => {
                    let exec = plan.props.iter().find(|(k, _)| k == "ExecStart");
                    assert_eq!(
                        exec.map(|(_, v)| v),
                        Some(&PropValue::Exec(
                            argv.iter().map(|s| s.to_string()).collect()
                        )),
                        "{what}"
                    );
                    assert!(plan.privileged, "{what}");
                    assert!(
                        plan.paths.dir.starts_with("/var/lib/outpost/runs"),
                        "{what}"
                    );
                    assert!(
                        !plan.props.iter().any(|(k, _)| k == "User"),
                        "{what}: root's unit"
                    );
                }
                (Err(why), Err(sub)) => {
                    assert!(why.contains(sub), "{what}: {why}");
                    assert!(!why.contains('\n'), "{what}: one line");
                }
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
        // Without root's privileged setup nothing is admitted, even a granted action.
        let mut h = host(g);
        h.privileged = None;
        assert!(admit(
            "r1",
            &req(&p, "r1", "whoami", &[]),
            std::slice::from_ref(&p),
            &h
        )
        .is_err());
    }
}
