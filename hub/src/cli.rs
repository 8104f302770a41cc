//! Command line: `serve` and the admin client subcommands (`keys create`, `agents`,
//! `revoke`, `delete`), which talk to a running hub over HTTP with the admin token.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use outpost_proto::{AgentView, CreateKeyRequest, ErrorBody, KeyCreated, PackTrust, PackView};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::duration::{format_age, parse_secs};
use crate::error::HubError;
use crate::server::ServeConfig;

pub mod fleet;
pub mod runs;

/// Environment variable holding the admin token.
pub const ENV_ADMIN_TOKEN: &str = "OUTPOST_HUB_ADMIN_TOKEN";
/// Environment variable holding the hub URL for the client subcommands.
pub const ENV_HUB_URL: &str = "OUTPOST_HUB_URL";
/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Parser)]
#[command(
    name = "outpost-hub",
    version,
    about = "Control plane for outpost agents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
pub enum Cmd {
    /// Run the hub: API, dashboard and release files.
    Serve(ServeArgs),
    /// Manage enrollment keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// List agents.
    Agents {
        #[command(flatten)]
        client: ClientArgs,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an agent's token: its next heartbeat is refused and the agent stops.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// Agent id (a_…).
        id: String,
    },
    /// Delete an agent from the hub.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        /// Agent id (a_…).
        id: String,
    },
    /// List the packs agents advertise, pending and trusted (`packs trust` to trust one).
    Packs {
        #[command(subcommand)]
        cmd: Option<PacksCmd>,
        #[command(flatten)]
        client: ClientArgs,
        /// Only the pending ones.
        #[arg(long)]
        pending: bool,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Dispatch an action of a trusted pack: one run per targeted agent.
    Run(runs::RunArgs),
    /// List runs, newest first.
    Runs {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        /// Only runs in this state.
        #[arg(long)]
        state: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a run's log (--follow: until it ends, then its summary).
    Logs {
        #[command(flatten)]
        client: ClientArgs,
        /// Run id (r_…).
        id: String,
        #[arg(long)]
        follow: bool,
    },
    /// Cancel a run: a queued one at once, a running one at the agent's next poll.
    Cancel {
        #[command(flatten)]
        client: ClientArgs,
        /// Run id (r_…).
        id: String,
    },
    /// Drain an agent or a group: no new runs are offered to it, its runs in flight finish.
    Drain(fleet::DrainArgs),
    /// Show the kill switch, the limits and the drained agents; `stop` or `start` it.
    Dispatch {
        #[command(subcommand)]
        cmd: Option<fleet::DispatchCmd>,
        #[command(flatten)]
        client: ClientArgs,
        /// Print the API's JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Show the audit log (drains, the kill switch, pack trust, keys, revokes, deletes, run
    /// starts and cancels), newest first.
    Audit {
        #[command(flatten)]
        client: ClientArgs,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PacksCmd {
    /// Trust a pack at one tree hash; other trusted hashes of it stay trusted.
    Trust {
        #[command(flatten)]
        client: ClientArgs,
        /// Pack name.
        name: String,
        /// Its sha256, or a unique prefix of at least 12 hex digits.
        sha256: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Mint a single-use enrollment key (shown once).
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// Lifetime: 90s, 30m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Group the enrolled agent joins.
        #[arg(long)]
        group: Option<String>,
        /// Label for the enrolled agent, k=v (repeatable).
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// URL hosts use to reach the hub in the printed one-liner (default: --hub).
        #[arg(long)]
        public_url: Option<String>,
        #[command(flatten)]
        cloud_init: CloudInitArgs,
    },
}

/// `keys create --cloud-init`: print user-data for one host instead of the one-liner.
#[derive(Debug, Args)]
pub struct CloudInitArgs {
    /// Print cloud-init user-data (#cloud-config) that installs a pinned, verified release and
    /// enrolls one host with the new key, instead of the one-liner (stdout: only the user-data).
    #[arg(long)]
    pub cloud_init: bool,
    /// cloud-init: release root the host downloads from, or github:OWNER/REPO (default: the
    /// public hub URL).
    #[arg(long, value_name = "URL", requires = "cloud_init")]
    pub release_url: Option<String>,
    /// cloud-init: pin this exact version (default: the channel's current one).
    #[arg(
        long,
        value_name = "X.Y.Z",
        requires = "cloud_init",
        conflicts_with = "channel"
    )]
    pub version: Option<String>,
    /// cloud-init: channel whose current version to pin (default stable).
    #[arg(long, value_name = "CHANNEL", requires = "cloud_init", value_parser = ["stable", "beta"])]
    pub channel: Option<String>,
    /// cloud-init: target of the host.
    #[arg(long, value_name = "TRIPLE", requires = "cloud_init", default_value = "x86_64-unknown-linux-musl", value_parser = outpost_release::TARGETS)]
    pub target: String,
    /// cloud-init: trust this release public key (minisign base64 line) besides the compiled-in
    /// ones; repeatable (OUTPOST_RELEASE_PUBKEYS: one per line).
    #[arg(
        long = "release-pubkey",
        value_name = "KEY",
        env = "OUTPOST_RELEASE_PUBKEYS",
        value_delimiter = '\n'
    )]
    pub release_pubkeys: Vec<String>,
    /// cloud-init: service mode on the host.
    #[arg(long, value_name = "MODE", requires = "cloud_init", default_value = "system", value_parser = ["system", "user"])]
    pub mode: String,
    /// cloud-init: service user (system mode: default a new `outpost` user; user mode: required).
    #[arg(long, value_name = "USER", requires = "cloud_init")]
    pub run_as: Option<String>,
    /// PEM CA of the hub and release host: trusted by this command, and (with --cloud-init)
    /// written to the host for curl and outpost.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

fn release_err(e: outpost_release::Error) -> HubError {
    let hint = e.hint();
    let usage = e.exit_code() == outpost_core::exit::USAGE;
    match e {
        outpost_release::Error::Usage { message, .. } => HubError::usage(message, hint),
        e if usage => HubError::usage(e.to_string(), hint),
        e => HubError::Release {
            msg: e.to_string(),
            hint,
        },
    }
}

/// Pin the release for the user-data before a key is minted: nothing is wasted when the
/// release host is unreachable or its signatures do not verify. Returns params whose key is
/// still empty.
fn cloud_init_params(
    a: &CloudInitArgs,
    hub_url: &str,
) -> Result<outpost_cloudinit::Params, HubError> {
    let want: outpost_release::Want = match (&a.version, &a.channel) {
        (Some(v), _) => v.parse().map_err(release_err)?,
        (None, c) => outpost_release::Want::Channel(c.clone().unwrap_or_else(|| "stable".into())),
    };
    outpost_cloudinit::prepare(&outpost_cloudinit::Request {
        hub_url,
        enroll_key: None,
        release_url: a.release_url.as_deref(),
        release_pubkeys: &a.release_pubkeys,
        want,
        target: &a.target,
        mode: outpost_cloudinit::parse_mode(&a.mode).map_err(release_err)?,
        run_as: a.run_as.as_deref(),
        ca_file: a.ca_file.as_deref(),
    })
    .map_err(release_err)
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Hub URL.
    #[arg(long, env = ENV_HUB_URL, default_value = "http://127.0.0.1:8443")]
    pub hub: String,
    /// File holding the admin token (default: $OUTPOST_HUB_ADMIN_TOKEN).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// PEM CA to trust for an https hub behind a private CA.
    #[arg(long = "hub-ca-file", env = "OUTPOST_HUB_CA_FILE", value_name = "PEM")]
    pub hub_ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound URL is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// SQLite database file (created if missing).
    #[arg(long)]
    pub db: PathBuf,
    /// Release directory served at /install.sh, /manifest.json, /channels/*, /v*/*.
    #[arg(long)]
    pub releases: PathBuf,
    /// PEM certificate chain; with --tls-key, serve HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// File holding the admin token (default: $OUTPOST_HUB_ADMIN_TOKEN).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Heartbeat interval told to agents, in seconds.
    #[arg(long, default_value_t = 30)]
    pub heartbeat_interval: u64,
    /// Concurrent connections at most; past it, connections that have not sent a request
    /// yet are closed first, then new ones are refused.
    #[arg(long, default_value_t = crate::server::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (also how long an idle keep-alive
    /// connection stays open) and, separately, its body.
    #[arg(long, default_value_t = crate::server::DEFAULT_REQUEST_TIMEOUT_SECS)]
    pub request_timeout: u64,
    /// Enrollments per minute from one client address (0: unlimited).
    #[arg(long, default_value_t = 10)]
    pub enroll_rate: u32,
    /// Enrollments one client address may make at once.
    #[arg(long, default_value_t = 20)]
    pub enroll_burst: u32,
    /// Seconds a claimed run's lease lasts; polls holding it and uploads renew it.
    #[arg(long, default_value_t = crate::runs_api::DEFAULT_LEASE_SECS)]
    pub run_lease: u64,
    /// Seconds a run stays `unknown` (lease expired) before it is `lost`.
    #[arg(long, default_value_t = crate::runs_api::DEFAULT_LOST_AFTER_SECS)]
    pub lost_after: u64,
    /// Runs one agent may hold at once (claimed, running, unknown); polls offer queued runs
    /// only below it.
    #[arg(long, default_value_t = crate::runs_api::DEFAULT_MAX_IN_FLIGHT)]
    pub max_runs_in_flight: usize,
    /// Queued runs one agent may have; a create past it is refused (429 queue_full).
    #[arg(long, default_value_t = crate::runs_api::DEFAULT_MAX_QUEUED)]
    pub max_runs_queued: usize,
    /// How long finished runs and their logs are kept: 90s, 12h, 30d; 0 keeps them for ever.
    #[arg(long, default_value = "30d")]
    pub run_retention: String,
    /// Log bytes a second one run may upload (bursts of four seconds' worth); 0: no cap.
    #[arg(long, default_value_t = crate::runs_api::DEFAULT_LOG_RATE)]
    pub run_log_rate: u64,
    /// Most log bytes kept per run (at least 1 MiB); an upload past it is refused (413).
    #[arg(long, default_value_t = crate::runs_api::DEFAULT_LOG_CAP)]
    pub run_log_max: u64,
}

/// The admin token from `file` or the environment.
pub fn admin_token(file: Option<&PathBuf>) -> Result<String, HubError> {
    let tok = match file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|source| HubError::Io {
                path: f.display().to_string(),
                source,
            })?
            .trim()
            .to_string(),
        None => std::env::var(ENV_ADMIN_TOKEN)
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    if tok.is_empty() {
        return Err(HubError::NoAdminToken);
    }
    if tok.len() < MIN_ADMIN_TOKEN_LEN {
        return Err(HubError::usage(
            format!(
                "admin token is too short ({} characters, at least {MIN_ADMIN_TOKEN_LEN})",
                tok.len()
            ),
            "generate one with `head -c 32 /dev/urandom | base64`",
        ));
    }
    Ok(tok)
}

/// Validates `serve` arguments into a configuration.
pub fn serve_config(a: ServeArgs) -> Result<ServeConfig, HubError> {
    let admin_token = admin_token(a.admin_token_file.as_ref())?;
    if a.heartbeat_interval == 0 || a.heartbeat_interval > 3600 {
        return Err(HubError::usage(
            format!(
                "--heartbeat-interval {} is out of range",
                a.heartbeat_interval
            ),
            "use a value between 1 and 3600 seconds (default 30)",
        ));
    }
    if a.max_connections == 0 {
        return Err(HubError::usage(
            "--max-connections must be at least 1",
            "use e.g. --max-connections 1024 (the default)",
        ));
    }
    if a.request_timeout == 0 || a.request_timeout > 3600 {
        return Err(HubError::usage(
            format!("--request-timeout {} is out of range", a.request_timeout),
            "use a value between 1 and 3600 seconds (default 10)",
        ));
    }
    if a.run_lease == 0 || a.run_lease > 86_400 {
        return Err(HubError::usage(
            format!("--run-lease {} is out of range", a.run_lease),
            "use a value between 1 and 86400 seconds (default 60)",
        ));
    }
    if a.lost_after > 7 * 86_400 {
        return Err(HubError::usage(
            format!("--lost-after {} is out of range", a.lost_after),
            "use a value between 0 and 604800 seconds (default 120)",
        ));
    }
    if a.run_log_max < 1 << 20 || a.run_log_max > 16 << 30 {
        return Err(HubError::usage(
            format!("--run-log-max {} is out of range", a.run_log_max),
            "use a value between 1048576 (1 MiB) and 17179869184 (16 GiB) bytes (default 134217728)",
        ));
    }
    if a.max_runs_in_flight == 0 || a.max_runs_in_flight > 256 {
        return Err(HubError::usage(
            format!(
                "--max-runs-in-flight {} is out of range",
                a.max_runs_in_flight
            ),
            "use a value between 1 and 256 (default 4; an agent polls with at most 256 held runs)",
        ));
    }
    if a.max_runs_queued == 0 || a.max_runs_queued > 100_000 {
        return Err(HubError::usage(
            format!("--max-runs-queued {} is out of range", a.max_runs_queued),
            "use a value between 1 and 100000 (default 100)",
        ));
    }
    let retention_secs = match a.run_retention.trim() {
        "0" => 0,
        r => parse_secs(r).ok_or_else(|| {
            HubError::usage(
                format!("--run-retention {r:?} is not a duration"),
                "use e.g. 12h, 30d or 90d, or 0 to keep finished runs for ever",
            )
        })?,
    };
    if a.enroll_burst == 0 {
        return Err(HubError::usage(
            "--enroll-burst must be at least 1",
            "use e.g. --enroll-burst 20 (the default)",
        ));
    }
    if !a.releases.is_dir() {
        return Err(HubError::usage(
            format!("release directory {} does not exist", a.releases.display()),
            "create it (it may be empty) or pass the directory `outpost-release publish` writes",
        ));
    }
    if let Some(parent) = a.db.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(HubError::usage(
                format!("database directory {} does not exist", parent.display()),
                "create the directory or pass another --db path",
            ));
        }
    }
    Ok(ServeConfig {
        listen: a.listen,
        db: a.db,
        releases: a.releases,
        tls: a.tls_cert.zip(a.tls_key),
        admin_token,
        interval_secs: a.heartbeat_interval,
        max_connections: a.max_connections,
        request_timeout: std::time::Duration::from_secs(a.request_timeout),
        enroll_per_min: a.enroll_rate,
        enroll_burst: a.enroll_burst,
        runs: crate::runs_api::RunLimits {
            lease_secs: a.run_lease,
            lost_after_secs: a.lost_after,
            max_in_flight: a.max_runs_in_flight,
            max_queued: a.max_runs_queued,
            retention_secs,
            log_rate: a.run_log_rate,
            log_max: a.run_log_max,
        },
    })
}

struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

/// Roots for a hub behind a private CA: the host's CA bundle plus `ca_file`.
fn tls_with_ca(ca_file: &std::path::Path) -> Result<ureq::tls::TlsConfig, HubError> {
    let io = |source| HubError::Io {
        path: ca_file.display().to_string(),
        source,
    };
    let pem = std::fs::read(ca_file).map_err(io)?;
    let mut certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(HubError::usage(
            format!("--ca-file {} has no PEM certificate", ca_file.display()),
            "pass a PEM file with one or more CERTIFICATE blocks",
        ));
    }
    for bundle in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ] {
        if let Ok(pem) = std::fs::read(bundle) {
            certs.extend(ureq::tls::parse_pem(&pem).filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            }));
            break;
        }
    }
    Ok(ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build())
}

impl Client {
    fn new(c: &ClientArgs) -> Result<Client, HubError> {
        Client::with_ca(c, c.hub_ca_file.as_deref())
    }

    /// Like [`Client::new`], also trusting the PEM CA in `ca_file`.
    fn with_ca(c: &ClientArgs, ca_file: Option<&std::path::Path>) -> Result<Client, HubError> {
        let token = admin_token(c.admin_token_file.as_ref())?;
        let base = c.hub.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(HubError::usage(
                format!("--hub {base} is not an http(s) URL"),
                "pass e.g. --hub https://hub.example.com:8443",
            ));
        }
        let mut cfg = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)));
        if let Some(ca) = ca_file.or(c.hub_ca_file.as_deref()) {
            cfg = cfg.tls_config(tls_with_ca(ca)?);
        }
        let agent = cfg.build().into();
        Ok(Client { base, token, agent })
    }

    /// Sends a request: the reply's body on success, the hub's error (its [`ErrorBody`]) as
    /// [`HubError::Api`] on a 4xx or 5xx.
    fn send(&self, method: &str, path: &str, body: Option<String>) -> Result<String, HubError> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let unreachable = |e: ureq::Error| HubError::Unreachable {
            url: self.base.clone(),
            detail: e.to_string(),
        };
        let mut resp = match (method, body) {
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(b),
            ("POST", None) => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .send_empty(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            _ => self.agent.get(&url).header("authorization", &auth).call(),
        }
        .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(unreachable)?;
        if status >= 400 {
            // Not an error body (a proxy's page, say): code, message and hint stay empty.
            let e: ErrorBody = serde_json::from_str(&text).unwrap_or_default();
            return Err(HubError::Api {
                status,
                code: e.error,
                message: e.message,
                hint: e.hint,
            });
        }
        Ok(text)
    }

    /// `GET path` as raw bytes (a run's log).
    fn bytes(&self, path: &str) -> Result<Vec<u8>, HubError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: ureq::Error| HubError::Unreachable {
            url: self.base.clone(),
            detail: e.to_string(),
        };
        let mut resp = self
            .agent
            .get(&url)
            .header("authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(2 * crate::runs_api::LOG_READ_MAX as u64)
            .read_to_vec()
            .map_err(unreachable)?;
        if status >= 400 {
            let e: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
            return Err(HubError::Api {
                status,
                code: e.error,
                message: e.message,
                hint: e.hint,
            });
        }
        Ok(body)
    }

    /// [`Client::send`], the reply parsed as the wire type `R`.
    fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<R, HubError> {
        let text = self.send(method, path, body)?;
        serde_json::from_str(&text).map_err(|e| HubError::BadReply {
            url: format!("{}{path}", self.base),
            detail: e.to_string(),
        })
    }

    /// `POST path` with the wire type `body` as JSON, the reply parsed as `R`.
    fn post<B: Serialize, R: DeserializeOwned>(&self, path: &str, body: &B) -> Result<R, HubError> {
        let text = serde_json::to_string(body)
            .map_err(|e| HubError::Internal(format!("cannot encode the request to {path}: {e}")))?;
        self.call("POST", path, Some(text))
    }
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, HubError> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(HubError::usage(
                format!("label {l:?} is not k=v"),
                "pass labels as --label key=value",
            )),
        })
        .collect()
}

/// Runs a client subcommand, printing to stdout.
pub fn run_client(cmd: Cmd) -> Result<(), HubError> {
    match cmd {
        Cmd::Serve(_) => Ok(()),
        Cmd::Keys {
            cmd:
                KeysCmd::Create {
                    client,
                    ttl,
                    group,
                    labels,
                    public_url,
                    cloud_init,
                },
        } => keys_create(&client, &ttl, group, &labels, public_url, &cloud_init),
        Cmd::Agents { client, json } => {
            let agents: Vec<AgentView> =
                Client::new(&client)?.call("GET", "/api/v1/agents", None)?;
            if json {
                let text = serde_json::to_string_pretty(&agents)
                    .map_err(|e| HubError::Internal(format!("cannot encode the agents: {e}")))?;
                println!("{}", json_terminal_safe(&text));
                return Ok(());
            }
            print!("{}", agents_table(&agents));
            Ok(())
        }
        Cmd::Revoke { client, id } => {
            let _: AgentView =
                Client::new(&client)?.call("POST", &format!("/api/v1/agents/{id}/revoke"), None)?;
            println!("revoked {id}");
            Ok(())
        }
        Cmd::Delete { client, id } => {
            Client::new(&client)?.send("DELETE", &format!("/api/v1/agents/{id}"), None)?;
            println!("deleted {id}");
            Ok(())
        }
        Cmd::Packs {
            cmd:
                Some(PacksCmd::Trust {
                    client,
                    name,
                    sha256,
                }),
            ..
        } => packs_trust(&client, &name, &sha256),
        Cmd::Packs {
            cmd: None,
            client,
            pending,
            json,
        } => packs_list(&client, pending, json),
        Cmd::Run(a) => runs::run(&a),
        Cmd::Runs {
            client,
            agent,
            state,
            json,
        } => runs::list(&client, agent.as_deref(), state.as_deref(), json),
        Cmd::Logs { client, id, follow } => runs::logs(&client, &id, follow),
        Cmd::Cancel { client, id } => runs::cancel(&client, &id),
        Cmd::Drain(a) => fleet::drain(&a),
        Cmd::Dispatch { cmd, client, json } => fleet::dispatch(cmd, &client, json),
        Cmd::Audit { client, json } => fleet::audit(&client, json),
    }
}

/// `packs [--pending] [--json]`.
fn packs_list(client: &ClientArgs, pending: bool, json: bool) -> Result<(), HubError> {
    let mut packs: Vec<PackView> = Client::new(client)?.call("GET", "/api/v1/packs", None)?;
    if pending {
        packs.retain(|p| p.state == PackTrust::Pending);
    }
    if json {
        let text = serde_json::to_string_pretty(&packs)
            .map_err(|e| HubError::Internal(format!("cannot encode the packs: {e}")))?;
        println!("{}", json_terminal_safe(&text));
        return Ok(());
    }
    print!("{}", packs_table(&packs));
    Ok(())
}

/// `packs trust NAME SHA256`: the prefix is resolved against the hub's list first, so an
/// ambiguous or unknown one trusts nothing (exit 2).
fn packs_trust(client: &ClientArgs, name: &str, prefix: &str) -> Result<(), HubError> {
    use crate::packs::{resolve_prefix, PrefixError, MIN_PREFIX};
    let c = Client::new(client)?;
    let packs: Vec<PackView> = c.call("GET", "/api/v1/packs", None)?;
    let found = resolve_prefix(&packs, name, prefix).map_err(|e| match e {
        PrefixError::Malformed => HubError::usage(
            format!("sha256 {prefix:?} is not {MIN_PREFIX} to 64 hex digits"),
            "pass the sha256 `outpost-hub packs --pending` shows, or at least its first 12 digits",
        ),
        PrefixError::Unknown => HubError::usage(
            format!("no pack {name} with a sha256 starting {prefix}"),
            "list what agents advertise with `outpost-hub packs --pending`",
        ),
        PrefixError::Ambiguous(all) => HubError::usage(
            format!(
                "sha256 prefix {prefix} of pack {name} matches {} hashes",
                all.len()
            ),
            format!("give more digits: {}", all.join(", ")),
        ),
    })?;
    let path = format!("/api/v1/packs/{}/{}/trust", found.name, found.sha256);
    let v: PackView = c.call("POST", &path, None)?;
    println!(
        "trusted {} {} ({}), advertised by {} agents",
        terminal_safe(&v.name),
        terminal_safe(&v.version),
        v.sha256,
        v.agents
    );
    Ok(())
}

/// Formats packs as a table: name, version, short sha256, state, agents.
pub fn packs_table(packs: &[PackView]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "VERSION".into(),
        "SHA256".into(),
        "STATE".into(),
        "AGENTS".into(),
    ]];
    for p in packs {
        rows.push([
            terminal_safe(&p.name),
            terminal_safe(&p.version),
            terminal_safe(p.sha256.get(..12).unwrap_or(&p.sha256)),
            p.state.as_str().to_string(),
            p.agents.to_string(),
        ]);
    }
    format_table(&rows)
}

/// `keys create`: mints a key ([`CreateKeyRequest`] → [`KeyCreated`]) and prints the
/// one-liner, or with `--cloud-init` the user-data (the release pinned first, so nothing is
/// minted for a release that does not verify).
fn keys_create(
    client: &ClientArgs,
    ttl: &str,
    group: Option<String>,
    labels: &[String],
    public_url: Option<String>,
    cloud_init: &CloudInitArgs,
) -> Result<(), HubError> {
    let ttl_secs = parse_secs(ttl).ok_or_else(|| {
        HubError::usage(
            format!("--ttl {ttl:?} is not a duration"),
            "use e.g. 90s, 30m, 1h or 2d",
        )
    })?;
    let labels = parse_labels(labels)?;
    let c = Client::with_ca(client, cloud_init.ca_file.as_deref())?;
    let public = public_url
        .as_deref()
        .unwrap_or(&c.base)
        .trim_end_matches('/')
        .to_string();
    let pinned = if cloud_init.cloud_init {
        Some(cloud_init_params(cloud_init, &public)?)
    } else {
        None
    };
    let req = CreateKeyRequest {
        ttl_secs,
        group,
        labels,
    };
    let created: KeyCreated = c.post("/api/v1/keys", &req)?;
    match pinned {
        Some(params) => print_user_data(params, &created),
        None => {
            print_one_liner(&created, &public);
            Ok(())
        }
    }
}

/// The cloud-init user-data with the new key on stdout (alone: `> host1.yaml`), the rest on
/// stderr.
fn print_user_data(
    mut params: outpost_cloudinit::Params,
    created: &KeyCreated,
) -> Result<(), HubError> {
    params.enroll_key = created.key.clone();
    let text = outpost_cloudinit::render(&params).map_err(release_err)?;
    print!("{text}");
    eprintln!(
        "key {} (expires {}) is in the user-data: keep the file secret; it enrolls exactly one host",
        terminal_safe(&created.id),
        terminal_safe(&created.expires_at)
    );
    eprintln!(
        "pinned outpost {} ({}, sha256 {}) from {}",
        params.release.version, params.release.target, params.release.sha256, params.release_url
    );
    Ok(())
}

/// The new key and the install one-liner for hosts reaching the hub at `public`.
fn print_one_liner(created: &KeyCreated, public: &str) {
    println!("key:     {}", created.key);
    println!("id:      {}", terminal_safe(&created.id));
    println!("expires: {}", terminal_safe(&created.expires_at));
    println!("(the key is shown only once; it enrolls exactly one host)");
    println!();
    // The key goes through a private mktemp file read from the terminal: not in shell
    // history, `ps`, sudo's environment or its log, and not at a predictable path.
    println!("install on a host (paste the key above at the silent prompt):");
    println!(
        "f=$(mktemp) && printf 'enrollment key: ' && read -rs k && printf '%s\\n' \"$k\" >\"$f\" && unset k && echo && curl -sSL {public}/install.sh | sudo OUTPOST_ENROLL_KEY_FILE=\"$f\" OUTPOST_HUB_URL={public} sh; rm -f \"$f\""
    );
}

pub use outpost_core::text::{json_terminal_safe, terminal_safe};

/// Formats agents as a table: id, hostname, status, version, age. Cells are
/// [`terminal_safe`].
pub fn agents_table(agents: &[AgentView]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "HOSTNAME".into(),
        "STATUS".into(),
        "VERSION".into(),
        "AGE".into(),
    ]];
    for a in agents {
        let age = a
            .last_heartbeat_age_secs
            .map(format_age)
            .unwrap_or_else(|| "-".into());
        let status = if a.drained {
            format!("{}, drained", a.status.as_str())
        } else {
            a.status.as_str().to_string()
        };
        rows.push([
            terminal_safe(&a.id),
            terminal_safe(&a.hostname),
            status,
            terminal_safe(&a.version),
            age,
        ]);
    }
    format_table(&rows)
}

/// Rows as left-aligned columns two spaces apart.
pub(crate) fn format_table(rows: &[[String; 5]]) -> String {
    let mut w = [0usize; 5];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::AgentStatus;
    use serde_json::{json, Value};

    /// An agent view with these cells and nothing else known.
    fn view(id: &str, hostname: &str, version: &str, age: Option<u64>) -> AgentView {
        AgentView {
            id: id.into(),
            hostname: hostname.into(),
            status: AgentStatus::Online,
            version: version.into(),
            distro: String::new(),
            arch: String::new(),
            kernel: String::new(),
            mode: String::new(),
            group: None,
            labels: BTreeMap::new(),
            machine_id: String::new(),
            enrolled_at: "2024-05-01T10:00:00Z".into(),
            revoked_at: None,
            last_heartbeat_at: None,
            last_heartbeat_age_secs: age,
            uptime_secs: None,
            capabilities: None,
            journal_head: None,
            last_upgrade: None,
            flags: Vec::new(),
            drained: false,
        }
    }

    #[test]
    fn table() {
        let t = agents_table(&[view("a_1", "web-1", "1.2.0", Some(4))]);
        assert_eq!(
            t,
            "ID   HOSTNAME  STATUS  VERSION  AGE\na_1  web-1     online  1.2.0    4s\n"
        );
        let never = AgentView {
            status: AgentStatus::Revoked,
            ..view("a_22", "db", "", None)
        };
        assert_eq!(
            agents_table(&[never]),
            "ID    HOSTNAME  STATUS   VERSION  AGE\na_22  db        revoked           -\n"
        );
        let drained = AgentView {
            drained: true,
            ..view("a_3", "web-3", "1.2.0", Some(4))
        };
        assert_eq!(
            agents_table(&[drained]),
            "ID   HOSTNAME  STATUS           VERSION  AGE\na_3  web-3     online, drained  1.2.0    4s\n"
        );
    }

    #[test]
    fn requests_are_the_wire_types() {
        let req = CreateKeyRequest {
            ttl_secs: 1800,
            group: None,
            labels: parse_labels(&["env=prod".into()]).unwrap(),
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"ttl_secs": 1800, "group": null, "labels": {"env": "prod"}})
        );
        // A reply that is not an error body leaves the fields empty.
        assert_eq!(
            serde_json::from_str::<ErrorBody>("<html>").unwrap_or_default(),
            ErrorBody::default()
        );
    }

    #[test]
    fn control_characters_are_escaped_in_the_table() {
        assert_eq!(terminal_safe("a\u{1b}[31mb"), "a\\x1b[31mb");
        assert_eq!(
            terminal_safe("x\ny\r\t\u{7}\u{7f}"),
            "x\\ny\\r\\t\\x07\\x7f"
        );
        assert_eq!(
            terminal_safe("\u{9b}2J\u{202e}txt"),
            "\\u{9b}2J\\u{202e}txt"
        );
        assert_eq!(terminal_safe("héllo\\ ünï"), "héllo\\ ünï");
        let t = agents_table(&[view(
            "a_1",
            "evil\u{1b}]0;pwned\u{7}\u{1b}[2J",
            "1\n2",
            Some(4),
        )]);
        assert!(!t.contains('\u{1b}') && !t.contains('\u{7}'), "{t:?}");
        assert!(t.contains("evil\\x1b]0;pwned\\x07\\x1b[2J"), "{t}");
        assert!(t.contains("1\\n2"), "{t}");
        assert_eq!(t.lines().count(), 2, "{t}");
    }

    #[test]
    fn json_output_escapes_what_serde_leaves_raw() {
        let v = json!({"hostname": "a\u{1b}b\u{9b}c\u{202e}d\u{7f}é"});
        let out = json_terminal_safe(&serde_json::to_string(&v).unwrap());
        assert!(out.chars().all(|c| !c.is_control()), "{out:?}");
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap(),
            v,
            "same value"
        );
        assert!(out.contains("\\u009b") && out.contains("\\u202e") && out.contains('é'));
    }

    #[test]
    fn packs_table_shortens_hashes() {
        let p = PackView {
            name: "web".into(),
            sha256: "0123456789abcdef".repeat(4),
            version: "1.2.0".into(),
            state: PackTrust::Pending,
            actions: Vec::new(),
            first_seen: "2024-05-01T10:00:00Z".into(),
            first_seen_by: "a_1".into(),
            trusted_at: None,
            trusted_by: None,
            agents: 3,
        };
        assert_eq!(
            packs_table(&[p]),
            "NAME  VERSION  SHA256        STATE    AGENTS\nweb   1.2.0    0123456789ab  pending  3\n"
        );
    }

    #[test]
    fn serve_run_limits() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("token");
        std::fs::write(&tok, "0123456789abcdef0123").unwrap();
        let (tok, rel) = (tok.to_str().unwrap(), dir.path().to_str().unwrap());
        let db = dir.path().join("hub.db");
        let db = db.to_str().unwrap();
        let cfg = |extra: &[&str]| {
            let mut args = vec![
                "h",
                "serve",
                "--db",
                db,
                "--releases",
                rel,
                "--admin-token-file",
                tok,
            ];
            args.extend_from_slice(extra);
            let Cmd::Serve(a) = Cli::try_parse_from(args).unwrap().cmd else {
                panic!("not serve")
            };
            serve_config(a)
        };
        let d = cfg(&[]).unwrap().runs;
        assert_eq!(
            (d.max_in_flight, d.max_queued, d.retention_secs, d.log_rate),
            (4, 100, 30 * 86_400, 32 * 1024 * 1024)
        );
        assert_eq!(d.log_max, 128 << 20);
        assert_eq!(
            cfg(&["--run-log-max", "200000000"]).unwrap().runs.log_max,
            200_000_000
        );
        assert!(cfg(&["--run-log-max", "1000"]).is_err());
        #[rustfmt::skip]
        type Limits = (usize, usize, u64, u64);
        let cases: [(&[&str], Option<Limits>); 9] = [
            (
                &["--max-runs-in-flight", "1", "--max-runs-queued", "7"],
                Some((1, 7, 30 * 86_400, 32 << 20)),
            ),
            (
                &["--run-retention", "12h", "--run-log-rate", "0"],
                Some((4, 100, 43_200, 0)),
            ),
            (&["--run-retention", "0"], Some((4, 100, 0, 32 << 20))),
            (&["--max-runs-in-flight", "0"], None),
            (&["--max-runs-in-flight", "257"], None),
            (&["--max-runs-queued", "0"], None),
            (&["--run-retention", "30x"], None),
            (&["--run-retention=-1d"], None),
            (&["--run-retention", ""], None),
        ];
        for (extra, want) in cases {
            match (cfg(extra), want) {
                (Ok(c), Some(w)) => {
                    let r = c.runs;
                    assert_eq!(
                        (r.max_in_flight, r.max_queued, r.retention_secs, r.log_rate),
                        w,
                        "{extra:?}"
                    );
                }
                (Err(e), None) => {
                    assert_eq!(e.exit_code(), 2, "{extra:?}");
                    assert!(!e.hint().is_empty());
                }
                (got, want) => panic!("{extra:?}: {:?} vs {want:?}", got.map(|c| c.runs)),
            }
        }
    }

    #[test]
    fn labels() {
        assert_eq!(parse_labels(&["a=b".into(), "c=".into()]).unwrap().len(), 2);
        assert!(parse_labels(&["=b".into()]).is_err());
        assert!(parse_labels(&["ab".into()]).is_err());
    }
}
