//! The wire types of the outpost hub API v1 (docs/PROTOCOL.md, docs/openapi.yaml), shared by
//! the agent (`outpost-agent`, which sends the requests) and the hub (`outpost-hub`, which
//! parses them and sends the responses), so both sides agree on one definition.
//!
//! Charter: serde and std only. No async runtime, HTTP stack or JSON library: the static
//! agent binary links this crate and has a size budget. Free-form JSON (a diagnostics
//! report) is a type parameter, filled in by each side with its own JSON value type.
//!
//! Field caps are checked by the `validate()` methods (the hub answers their
//! [`FieldError`] as 400 `field_too_long` / `field_invalid` naming the field); the agent cuts
//! its own strings with the `capped()` methods before sending, so an odd host still enrolls.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod error;
pub use error::{ErrorBody, ErrorCode, FieldError};
mod runs;
pub use runs::*;

/// Longest agent-supplied string (hostname, distro, kernel, version, …), in bytes.
pub const MAX_FIELD: usize = 255;
/// Longest id, key, token, nonce or journal hash accepted in a body.
pub const MAX_ID: usize = 128;
/// Most entries in an agent-supplied map (capabilities, last_upgrade) or in key labels.
pub const MAX_MAP_ENTRIES: usize = 32;
/// Longest key of such a map.
pub const MAX_MAP_KEY: usize = 64;
/// Shortest enrollment nonce accepted.
pub const MIN_NONCE: usize = 16;
/// Longest enrollment key lifetime accepted.
pub const MAX_KEY_TTL_SECS: u64 = 365 * 86_400;

/// `value` is at most `max` bytes, else `field_too_long` naming `field`.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(FieldError::too_long(field, max));
    }
    Ok(())
}

/// Like [`check_len`] for an optional value.
pub fn check_opt(field: &str, value: Option<&str>, max: usize) -> Result<(), FieldError> {
    value.map_or(Ok(()), |v| check_len(field, v, max))
}

/// `s` cut to at most [`MAX_FIELD`] bytes at a character boundary.
pub fn cap(s: &mut String) {
    if s.len() > MAX_FIELD {
        let mut end = MAX_FIELD;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// One value of a flat agent-supplied object (`capabilities`, `last_upgrade`): null, a
/// boolean, a number or a string. A nested array or object parses as [`FlatValue::Nested`]
/// so that `validate()` can name the field (`field_invalid`) instead of failing the whole
/// body; it is never stored.
#[derive(Debug, Clone, PartialEq)]
pub enum FlatValue {
    Null,
    Bool(bool),
    /// A non-negative integer.
    UInt(u64),
    /// A negative integer.
    Int(i64),
    Float(f64),
    String(String),
    /// A nested array or object (refused by `validate()`; serialized as `null`).
    Nested,
}

impl Serialize for FlatValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FlatValue::Null | FlatValue::Nested => s.serialize_unit(),
            FlatValue::Bool(b) => s.serialize_bool(*b),
            FlatValue::UInt(n) => s.serialize_u64(*n),
            FlatValue::Int(n) => s.serialize_i64(*n),
            FlatValue::Float(f) => s.serialize_f64(*f),
            FlatValue::String(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for FlatValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FlatValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("null, a boolean, a number or a string")
            }
            fn visit_unit<E: de::Error>(self) -> Result<FlatValue, E> {
                Ok(FlatValue::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<FlatValue, E> {
                Ok(FlatValue::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<FlatValue, D::Error> {
                FlatValue::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<FlatValue, E> {
                Ok(FlatValue::Bool(b))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<FlatValue, E> {
                Ok(FlatValue::UInt(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<FlatValue, E> {
                Ok(u64::try_from(n).map_or(FlatValue::Int(n), FlatValue::UInt))
            }
            fn visit_f64<E: de::Error>(self, f: f64) -> Result<FlatValue, E> {
                Ok(FlatValue::Float(f))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FlatValue, E> {
                Ok(FlatValue::String(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<FlatValue, E> {
                Ok(FlatValue::String(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<FlatValue, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FlatValue::Nested)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<FlatValue, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(FlatValue::Nested)
            }
        }
        d.deserialize_any(V)
    }
}

/// The extra (not named by the protocol) entries of a flat object, kept as sent.
pub type FlatMap = BTreeMap<String, FlatValue>;

/// The caps of a flat object of `known` named fields (counted always: they are always sent
/// back, as `null` when unknown) plus `extra` entries: at most [`MAX_MAP_ENTRIES`] in all,
/// keys of at most [`MAX_MAP_KEY`] bytes, string values of at most [`MAX_FIELD`] bytes, no
/// nested values.
fn check_flat<'a>(
    field: &str,
    known: &[(&str, Option<&'a str>)],
    extra: &'a FlatMap,
) -> Result<(), FieldError> {
    if known.len() + extra.len() > MAX_MAP_ENTRIES {
        return Err(FieldError::invalid(
            field,
            &format!("has more than {MAX_MAP_ENTRIES} entries"),
        ));
    }
    for (k, v) in known {
        check_opt(&format!("{field}.{k}"), *v, MAX_FIELD)?;
    }
    for (k, v) in extra {
        if k.len() > MAX_MAP_KEY {
            return Err(FieldError::too_long(&format!("{field} key"), MAX_MAP_KEY));
        }
        match v {
            FlatValue::String(s) => check_len(&format!("{field}.{k}"), s, MAX_FIELD)?,
            FlatValue::Nested => {
                return Err(FieldError::invalid(
                    &format!("{field}.{k}"),
                    "must be a string, number, boolean or null",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Cuts every string of `extra` to [`MAX_FIELD`] bytes.
fn cap_flat(extra: &mut FlatMap) {
    for v in extra.values_mut() {
        if let FlatValue::String(s) = v {
            cap(s);
        }
    }
}

/// Host facts sent at enrollment (`Facts`: all strings; `hostname` required and non-empty,
/// the others default to `""`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub hostname: String,
    #[serde(default)]
    pub machine_id: String,
    #[serde(default)]
    pub distro: String,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub mode: String,
}

impl Facts {
    /// Field caps: every string at most [`MAX_FIELD`] bytes, hostname non-empty.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.hostname.trim().is_empty() {
            return Err(FieldError::invalid("facts.hostname", "must not be empty"));
        }
        for (name, v) in [
            ("facts.hostname", &self.hostname),
            ("facts.machine_id", &self.machine_id),
            ("facts.distro", &self.distro),
            ("facts.arch", &self.arch),
            ("facts.version", &self.version),
            ("facts.mode", &self.mode),
        ] {
            check_len(name, v, MAX_FIELD)?;
        }
        Ok(())
    }

    /// Every field cut to [`MAX_FIELD`] bytes.
    pub fn capped(mut self) -> Self {
        for f in [
            &mut self.hostname,
            &mut self.machine_id,
            &mut self.distro,
            &mut self.arch,
            &mut self.version,
            &mut self.mode,
        ] {
            cap(f);
        }
        self
    }
}

/// The body of `POST /api/v1/enroll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub key: String,
    /// The per-host idempotency nonce: a random value the agent generates once per host and
    /// reuses for every retry; the same key with the same nonce returns the same agent id
    /// (docs/PROTOCOL.md). Optional for older agents, which then get `key_used` on a retry;
    /// not sent when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    pub facts: Facts,
}

impl EnrollRequest {
    /// Field caps and the nonce's shape ([`MIN_NONCE`] to [`MAX_ID`] of `[A-Za-z0-9_-]`).
    pub fn validate(&self) -> Result<(), FieldError> {
        check_len("key", &self.key, MAX_ID)?;
        if let Some(n) = &self.nonce {
            check_len("nonce", n, MAX_ID)?;
            if n.len() < MIN_NONCE
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(FieldError::invalid(
                    "nonce",
                    "must be 16 to 128 characters of [A-Za-z0-9_-]",
                ));
            }
        }
        self.facts.validate()
    }
}

/// The reply to `POST /api/v1/enroll` (201 new, 200 the same identity again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    pub agent_id: String,
    /// The agent token, shown only in this response.
    pub token: String,
    /// Always sent by the hub; optional for the agent reading it.
    #[serde(default)]
    pub heartbeat_interval_secs: Option<u64>,
}

/// `(seq, hash)` of the newest entry of an agent's local journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalHead {
    pub seq: u64,
    pub hash: String,
}

/// Host capabilities: a flat object. The named fields are always sent (`null` when
/// unknown); other flat entries are kept and sent back as they came.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub cpus: Option<u64>,
    #[serde(default)]
    pub mem_total_bytes: Option<u64>,
    #[serde(default)]
    pub mem_available_bytes: Option<u64>,
    #[serde(default)]
    pub disk_free_bytes: Option<u64>,
    #[serde(default)]
    pub docker_version: Option<String>,
    #[serde(flatten)]
    pub extra: FlatMap,
}

impl Capabilities {
    /// Flat-object caps, naming `capabilities…` fields.
    pub fn validate(&self) -> Result<(), FieldError> {
        let known = [
            ("cpus", None),
            ("mem_total_bytes", None),
            ("mem_available_bytes", None),
            ("disk_free_bytes", None),
            ("docker_version", self.docker_version.as_deref()),
        ];
        check_flat("capabilities", &known, &self.extra)
    }

    /// Every string cut to [`MAX_FIELD`] bytes.
    pub fn capped(mut self) -> Self {
        if let Some(d) = &mut self.docker_version {
            cap(d);
        }
        cap_flat(&mut self.extra);
        self
    }
}

/// The last upgrade the agent recorded: a flat object like [`Capabilities`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastUpgrade {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// The journal kind: `service_upgraded`, `service_upgrade_rolled_back`,
    /// `package_upgraded`.
    #[serde(default)]
    pub result: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub at: Option<String>,
    #[serde(flatten)]
    pub extra: FlatMap,
}

impl LastUpgrade {
    /// Flat-object caps, naming `last_upgrade…` fields.
    pub fn validate(&self) -> Result<(), FieldError> {
        let known = [
            ("from", self.from.as_deref()),
            ("to", self.to.as_deref()),
            ("result", self.result.as_deref()),
            ("at", self.at.as_deref()),
        ];
        check_flat("last_upgrade", &known, &self.extra)
    }

    /// Every string cut to [`MAX_FIELD`] bytes.
    pub fn capped(mut self) -> Self {
        for f in [&mut self.from, &mut self.to, &mut self.result, &mut self.at]
            .into_iter()
            .flatten()
        {
            cap(f);
        }
        cap_flat(&mut self.extra);
        self
    }
}

/// The body of `POST /api/v1/heartbeat`. Only `agent_id` is required; an absent (or null)
/// field keeps its stored value. The agent sends every field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub agent_id: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub distro: Option<String>,
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub uptime_secs: Option<u64>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub journal_head: Option<JournalHead>,
    #[serde(default)]
    pub last_upgrade: Option<LastUpgrade>,
    /// The catalog: every pack the host's admin installed and the agent loaded, with its
    /// tree hash. Absent (null) keeps the stored catalog; `[]` means no packs. The hub keeps a
    /// new or changed hash pending until an admin trusts it (docs/PROTOCOL.md, Packs).
    #[serde(default)]
    pub packs: Option<Vec<PackAdvert>>,
}

/// Most packs in one catalog.
pub const MAX_PACKS: usize = 64;
/// Most actions in one catalog (all packs together).
pub const MAX_CATALOG_ACTIONS: usize = 1024;
/// Most parameters of one action.
pub const MAX_ACTION_PARAMS: usize = 32;

/// One pack of a heartbeat's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackAdvert {
    /// 1-64 of `a-z 0-9 - _ .`.
    pub name: String,
    /// SemVer of the pack.
    pub version: String,
    /// sha256 (hex) of the pack's tree (docs/PACKS.md).
    pub sha256: String,
    pub actions: Vec<ActionAdvert>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionAdvert {
    pub id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub params: Vec<ParamAdvert>,
    #[serde(default)]
    pub idempotent: bool,
    /// Runs as root (only where the host's admin granted it at this hash).
    #[serde(default)]
    pub privileged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamAdvert {
    pub name: String,
    /// `string`, `int`, `bool` or `enum`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub required: bool,
}

fn pack_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// A catalog's bounds: at most [`MAX_PACKS`] packs and [`MAX_CATALOG_ACTIONS`] actions,
/// names and ids of the pack format, 64-hex hashes, strings at most [`MAX_FIELD`] bytes.
pub fn validate_catalog(packs: &[PackAdvert]) -> Result<(), FieldError> {
    if packs.len() > MAX_PACKS {
        return Err(FieldError::invalid("packs", "more than 64 packs"));
    }
    let actions: usize = packs.iter().map(|p| p.actions.len()).sum();
    if actions > MAX_CATALOG_ACTIONS {
        return Err(FieldError::invalid("packs", "more than 1024 actions"));
    }
    let mut names = std::collections::BTreeSet::new();
    for p in packs {
        if !pack_name_ok(&p.name) || !names.insert(p.name.as_str()) {
            return Err(FieldError::invalid(
                "packs.name",
                "a pack name (a-z 0-9 - _ .), once",
            ));
        }
        check_len("packs.version", &p.version, MAX_FIELD)?;
        if p.sha256.len() != 64
            || !p
                .sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(FieldError::invalid(
                "packs.sha256",
                "64 lowercase hex digits",
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        for a in &p.actions {
            if !pack_name_ok(&a.id) || !ids.insert(a.id.as_str()) {
                return Err(FieldError::invalid(
                    "packs.actions.id",
                    "an action id (a-z 0-9 - _ .), once per pack",
                ));
            }
            check_len("packs.actions.description", &a.description, MAX_FIELD)?;
            if a.params.len() > MAX_ACTION_PARAMS {
                return Err(FieldError::invalid(
                    "packs.actions.params",
                    "more than 32 parameters",
                ));
            }
            for prm in &a.params {
                check_len("packs.actions.params.name", &prm.name, MAX_MAP_KEY)?;
                if !["string", "int", "bool", "enum"].contains(&prm.kind.as_str()) {
                    return Err(FieldError::invalid(
                        "packs.actions.params.type",
                        "string, int, bool or enum",
                    ));
                }
            }
        }
    }
    Ok(())
}

impl Heartbeat {
    /// Field caps: strings at most [`MAX_FIELD`] bytes (ids and hashes [`MAX_ID`]),
    /// capabilities and last_upgrade flat objects of bounded size.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_len("agent_id", &self.agent_id, MAX_ID)?;
        for (name, v) in [
            ("version", &self.version),
            ("distro", &self.distro),
            ("kernel", &self.kernel),
            ("arch", &self.arch),
            ("mode", &self.mode),
        ] {
            check_opt(name, v.as_deref(), MAX_FIELD)?;
        }
        if let Some(j) = &self.journal_head {
            check_len("journal_head.hash", &j.hash, MAX_ID)?;
        }
        if let Some(c) = &self.capabilities {
            c.validate()?;
        }
        if let Some(u) = &self.last_upgrade {
            u.validate()?;
        }
        if let Some(p) = &self.packs {
            validate_catalog(p)?;
        }
        Ok(())
    }

    /// Every agent-supplied string cut to [`MAX_FIELD`] bytes.
    pub fn capped(mut self) -> Self {
        for f in [
            &mut self.version,
            &mut self.distro,
            &mut self.kernel,
            &mut self.arch,
            &mut self.mode,
        ]
        .into_iter()
        .flatten()
        {
            cap(f);
        }
        self.capabilities = self.capabilities.map(Capabilities::capped);
        self.last_upgrade = self.last_upgrade.map(LastUpgrade::capped);
        for p in self.packs.iter_mut().flatten() {
            cap(&mut p.version);
            for a in &mut p.actions {
                cap(&mut a.description);
            }
        }
        self
    }
}

/// The reply to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    pub interval_secs: u64,
    /// Always sent by the hub (RFC 3339); optional for the agent reading it.
    #[serde(default)]
    pub server_time: Option<String>,
}

/// The body of `POST /api/v1/diagnostics`; `R` is the free-form report (a JSON object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticsUpload<R> {
    pub agent_id: String,
    pub report: R,
}

impl<R> DiagnosticsUpload<R> {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_len("agent_id", &self.agent_id, MAX_ID)
    }
}

/// The reply to `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    #[serde(default)]
    pub version: Option<String>,
}

/// The body of `POST /api/v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub ttl_secs: u64,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl CreateKeyRequest {
    /// `ttl_secs` in 1..=[`MAX_KEY_TTL_SECS`] (`bad_request`), group and labels capped.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.ttl_secs == 0 || self.ttl_secs > MAX_KEY_TTL_SECS {
            return Err(FieldError {
                code: ErrorCode::BadRequest,
                field: None,
                message: format!("ttl_secs must be between 1 and {MAX_KEY_TTL_SECS}"),
            });
        }
        check_opt("group", self.group.as_deref(), MAX_FIELD)?;
        if self.labels.len() > MAX_MAP_ENTRIES {
            return Err(FieldError::invalid(
                "labels",
                &format!("has more than {MAX_MAP_ENTRIES} entries"),
            ));
        }
        for (k, v) in &self.labels {
            check_len("labels key", k, MAX_MAP_KEY)?;
            check_len(&format!("labels.{k}"), v, MAX_FIELD)?;
        }
        Ok(())
    }
}

/// The reply to `POST /api/v1/keys` (the key is shown only here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCreated {
    pub id: String,
    pub key: String,
    pub expires_at: String,
    pub group: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Agent status as shown by the API and the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Online,
    Stale,
    Offline,
    Revoked,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Stale => "stale",
            AgentStatus::Offline => "offline",
            AgentStatus::Revoked => "revoked",
        }
    }
}

/// The API view of an agent (`GET /api/v1/agents`, `POST /api/v1/agents/{id}/revoke`).
/// `group`, `revoked_at`, `last_heartbeat_at`, `last_heartbeat_age_secs`, `uptime_secs`,
/// `capabilities`, `journal_head` and `last_upgrade` are `null` until known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    pub id: String,
    pub hostname: String,
    pub status: AgentStatus,
    pub version: String,
    pub distro: String,
    pub arch: String,
    pub kernel: String,
    pub mode: String,
    pub group: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub machine_id: String,
    pub enrolled_at: String,
    pub revoked_at: Option<String>,
    pub last_heartbeat_at: Option<String>,
    pub last_heartbeat_age_secs: Option<u64>,
    pub uptime_secs: Option<u64>,
    pub capabilities: Option<Capabilities>,
    pub journal_head: Option<JournalHead>,
    pub last_upgrade: Option<LastUpgrade>,
    /// `journal_went_backwards`, `journal_forked`.
    pub flags: Vec<String>,
    /// Drained by an admin: no new runs are offered to it (its runs in flight finish).
    #[serde(default)]
    pub drained: bool,
}

/// The last diagnostics report of an agent; `R` is the report (a JSON value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticsReport<R> {
    pub received_at: String,
    pub report: R,
}

/// `GET /api/v1/agents/{id}`: the [`AgentView`] plus `diagnostics` (`null` before the
/// first report) and `packs`, the agent's catalog with each pack's state (`null` before the
/// agent advertised one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentDetail<R> {
    #[serde(flatten)]
    pub agent: AgentView,
    pub diagnostics: Option<DiagnosticsReport<R>>,
    #[serde(default)]
    pub packs: Option<Vec<AgentPack>>,
}

/// The hub's trust in one (pack name, sha256): `pending` from the first catalog that
/// advertised it until an admin trusts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackTrust {
    Pending,
    Trusted,
}

impl PackTrust {
    pub fn as_str(self) -> &'static str {
        match self {
            PackTrust::Pending => "pending",
            PackTrust::Trusted => "trusted",
        }
    }
}

/// The state of one pack of an agent's catalog: its (name, sha256) is `trusted`; or another
/// hash of that name is trusted (`drifted`: the host runs a tree nobody approved); or no hash
/// of it is trusted yet (`pending`). Only `trusted` packs may be dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogState {
    Trusted,
    Pending,
    Drifted,
}

impl CatalogState {
    pub fn as_str(self) -> &'static str {
        match self {
            CatalogState::Trusted => "trusted",
            CatalogState::Pending => "pending",
            CatalogState::Drifted => "drifted",
        }
    }
}

/// One (pack name, sha256) the hub has seen (`GET /api/v1/packs`, the reply of
/// `POST /api/v1/packs/{name}/{sha256}/trust`). `version` and `actions` are as first seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackView {
    pub name: String,
    pub sha256: String,
    pub version: String,
    pub state: PackTrust,
    pub actions: Vec<ActionAdvert>,
    /// RFC 3339: when a catalog first carried it.
    pub first_seen: String,
    /// The agent whose catalog first carried it.
    pub first_seen_by: String,
    /// RFC 3339; `null` while pending.
    pub trusted_at: Option<String>,
    /// Who trusted it (`admin token`, `dashboard session …`); `null` while pending.
    pub trusted_by: Option<String>,
    /// Agents whose current catalog advertises it.
    pub agents: u64,
}

/// One pack of an agent's catalog, with its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPack {
    #[serde(flatten)]
    pub pack: PackAdvert,
    pub state: CatalogState,
}

#[cfg(test)]
mod tests;
