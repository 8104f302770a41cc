//! Packs: what the host's admin allows to run on this host.
//!
//! A pack is a directory with `pack.toml` and the scripts it names. [`load`] reads one from
//! disk and refuses, naming the file and the rule: a symlink or anything that is not a
//! regular file or directory, a command that escapes the pack root, a duplicate action id,
//! an unknown field, a parameter without bounds. [`Pack::sha256`] is the hash of the whole
//! tree (every path, its executable bit and its contents), advertised to the hub with the
//! catalog; the hub keeps a new or changed hash pending until an admin trusts it.
//!
//! [`Action::invocation`] turns request parameters into an argv and env (never a shell
//! string), checking each value against its declared type and bounds. Everything here is
//! pure over the directory it is given: no process is started and nothing is written.
//!
//! The format is a public contract: docs/PACKS.md.
use regex_lite::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

mod limits;
pub mod store;
pub mod supervise;
pub use limits::{parse_bytes, Limits, RawLimits};
pub use supervise::{RawSupervise, Supervise};

/// The manifest's file name at the pack root.
pub const MANIFEST: &str = "pack.toml";
/// Largest `pack.toml` accepted.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 10;
/// Largest pack tree (all files) accepted.
pub const MAX_TREE_BYTES: u64 = 64 << 20;
/// Most files and directories in one pack.
pub const MAX_TREE_ENTRIES: usize = 4096;
/// Most actions in one pack, parameters in one action, env names in one allowlist.
pub const MAX_ACTIONS: usize = 256;
pub const MAX_PARAMS: usize = 32;
pub const MAX_ENV: usize = 64;
/// Longest parameter value accepted in a request.
pub const MAX_VALUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The tree breaks a rule (symlink, special file, too big).
    #[error("pack {}: {}: {rule}", root.display(), entry.display())]
    Tree {
        root: PathBuf,
        entry: PathBuf,
        rule: String,
    },
    /// `pack.toml` does not parse or breaks a rule.
    #[error("{}: {detail}", path.display())]
    Manifest { path: PathBuf, detail: String },
}

impl outpost_core::Hint for PackError {
    fn hint(&self) -> String {
        match self {
            PackError::Io { .. } => "check the pack directory exists and is readable".into(),
            PackError::Tree { .. } => {
                "a pack holds only regular files and directories inside its root: copy the target in place of a link, remove the rest".into()
            }
            PackError::Manifest { .. } => {
                "fix pack.toml (its format: docs/PACKS.md), then run `outpost pack validate DIR`".into()
            }
        }
    }
    fn exit_code(&self) -> i32 {
        match self {
            PackError::Io { .. } => outpost_core::exit::FAILURE,
            _ => outpost_core::exit::USAGE,
        }
    }
}

/// `pack.toml` as written (unknown fields are refused).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    pub pack: RawPackInfo,
    #[serde(default, rename = "action")]
    pub actions: Vec<RawAction>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPackInfo {
    pub name: String,
    pub version: semver::Version,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    pub id: String,
    #[serde(default)]
    pub description: String,
    /// argv: the first element is a path inside the pack (`bin/x`, `./x.sh`) or an
    /// absolute path on the host; `{name}` in an element is replaced by a parameter.
    pub command: Vec<String>,
    #[serde(default, rename = "param")]
    pub params: Vec<RawParam>,
    /// Names taken from the runner's env file into the run's environment.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default = "one")]
    pub max_concurrency: u32,
    #[serde(default)]
    pub idempotent: bool,
    #[serde(default)]
    pub privileged: bool,
    /// A supervised workload: the command is one round (docs/WORKLOADS.md).
    pub supervise: Option<RawSupervise>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParam {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub required: bool,
    pub default: Option<toml::Value>,
    /// string: a regex the whole value must match.
    pub pattern: Option<String>,
    /// string: longest value (default and cap: [`MAX_VALUE`]).
    pub max_len: Option<usize>,
    /// int: bounds (both required for an int).
    pub min: Option<i64>,
    pub max: Option<i64>,
    /// enum: the allowed values.
    pub values: Option<Vec<String>>,
    /// `argv` (substituted into `{name}` of the command) or `env` (`OUTPOST_PARAM_<NAME>`).
    #[serde(default = "argv", rename = "as")]
    pub pass_as: String,
}

fn argv() -> String {
    "argv".into()
}

/// How a parameter reaches the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PassAs {
    Argv,
    Env,
}

/// A parameter's type and bounds, checked.
#[derive(Debug, Clone)]
pub enum ParamKind {
    String {
        pattern: Option<Regex>,
        pattern_src: Option<String>,
        max_len: usize,
    },
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    Enum {
        values: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub description: String,
    pub kind: ParamKind,
    pub required: bool,
    /// The default, already rendered as the string passed to the process.
    pub default: Option<String>,
    pub pass_as: PassAs,
}

#[derive(Debug, Clone)]
pub struct Action {
    pub id: String,
    pub description: String,
    pub command: Vec<String>,
    pub params: Vec<Param>,
    pub env: Vec<String>,
    pub limits: Limits,
    pub max_concurrency: u32,
    pub idempotent: bool,
    pub privileged: bool,
    /// Rounds and stop conditions of a supervised action.
    pub supervise: Option<Supervise>,
}

/// A loaded, validated pack.
#[derive(Debug, Clone)]
pub struct Pack {
    pub root: PathBuf,
    pub name: String,
    pub version: semver::Version,
    pub description: String,
    pub actions: Vec<Action>,
    /// sha256 of the tree ([`tree_hash`]), hex.
    pub sha256: String,
}

/// One file of the tree: its path relative to the root, executable bit and contents' hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    pub path: PathBuf,
    pub dir: bool,
    pub executable: bool,
    pub sha256: String,
}

/// A pack name or action id: 1-64 of `a-z 0-9 - _ .`, starting with a letter or digit.
pub fn valid_name(s: &str) -> bool {
    valid_id(s, 64)
}

fn valid_id(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

fn valid_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

/// Names a pack may never take from the env file: the agent's own secrets and settings,
/// and what the run's environment is built from.
pub fn reserved_env(name: &str) -> bool {
    name.starts_with("OUTPOST_")
        || [
            "PATH",
            "LANG",
            "HOME",
            "USER",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
        ]
        .contains(&name)
}

/// Who must own a pack for it to be trusted: `Some(euid)` checks every entry (and the root)
/// like sshd's StrictModes for a process running as `euid` (root-owned for a system
/// install, where euid 0 is asked for); `None` only validates (`pack validate`).
pub type Owner = Option<u32>;

/// Walk `root` in path order, refusing links and special files, bounded.
pub fn walk(root: &Path, owner: Owner) -> Result<Vec<TreeEntry>, PackError> {
    let mut out = Vec::new();
    let mut total = 0u64;
    if let Some(euid) = owner {
        let meta = std::fs::symlink_metadata(root).map_err(|source| PackError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        check_owner(root, Path::new("."), &meta, euid)?;
    }
    walk_dir(root, Path::new(""), owner, &mut out, &mut total)?;
    Ok(out)
}

fn check_owner(
    root: &Path,
    rel: &Path,
    meta: &std::fs::Metadata,
    euid: u32,
) -> Result<(), PackError> {
    use std::os::unix::fs::MetadataExt;
    match outpost_core::trust::strict_modes(meta.uid(), meta.mode(), meta.is_dir(), euid) {
        Some(why) => Err(PackError::Tree {
            root: root.to_path_buf(),
            entry: rel.to_path_buf(),
            rule: format!("cannot be trusted: {why}"),
        }),
        None => Ok(()),
    }
}

fn walk_dir(
    root: &Path,
    rel: &Path,
    owner: Owner,
    out: &mut Vec<TreeEntry>,
    total: &mut u64,
) -> Result<(), PackError> {
    let dir = root.join(rel);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Io { path, source }
    };
    let mut names: Vec<_> = fs_err::read_dir(&dir)
        .map_err(|e| PackError::Io {
            path: dir.clone(),
            source: std::io::Error::new(e.kind(), e.to_string()),
        })?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io(&dir))?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let tree = |rule: &str| PackError::Tree {
            root: root.to_path_buf(),
            entry: rel.clone(),
            rule: rule.into(),
        };
        if name.to_str().is_none() {
            return Err(tree("file name is not UTF-8"));
        }
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if out.len() >= MAX_TREE_ENTRIES {
            return Err(tree(&format!("more than {MAX_TREE_ENTRIES} entries")));
        }
        let ft = meta.file_type();
        if let (Some(euid), false) = (owner, ft.is_symlink()) {
            check_owner(root, &rel, &meta, euid)?;
        }
        if ft.is_symlink() {
            return Err(tree("is a symlink (packs may not contain links)"));
        } else if ft.is_dir() {
            out.push(TreeEntry {
                path: rel.clone(),
                dir: true,
                executable: false,
                sha256: String::new(),
            });
            walk_dir(root, &rel, owner, out, total)?;
        } else if ft.is_file() {
            *total += meta.len();
            if *total > MAX_TREE_BYTES {
                return Err(tree(&format!(
                    "the pack is larger than {MAX_TREE_BYTES} bytes"
                )));
            }
            let sha = hash_file(&path).map_err(io(&path))?;
            out.push(TreeEntry {
                path: rel,
                dir: false,
                executable: meta.permissions().mode() & 0o111 != 0,
                sha256: sha,
            });
        } else {
            return Err(tree("is not a regular file or directory"));
        }
    }
    Ok(())
}

/// Open for reading, never through a link swapped in after the walk looked.
fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

pub(crate) fn read_nofollow(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut open_nofollow(path)?, &mut buf)?;
    Ok(buf)
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = open_nofollow(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// The tree hash: sha256 over one line per entry, in path order:
/// `d <path>\n` for a directory, `f <mode> <sha256> <path>\n` for a file (`mode` is `x` when
/// executable, else `-`). A renamed, added, removed or chmod +x'd file changes it.
pub fn tree_hash(entries: &[TreeEntry]) -> String {
    let mut h = Sha256::new();
    for e in entries {
        let p = e.path.to_string_lossy();
        if e.dir {
            h.update(format!("d {p}\n"));
        } else {
            let x = if e.executable { 'x' } else { '-' };
            h.update(format!("f {x} {} {p}\n", e.sha256));
        }
    }
    hex::encode(h.finalize())
}

/// Read and validate the pack at `root` (`owner`: see [`Owner`]).
pub fn load(root: &Path, owner: Owner) -> Result<Pack, PackError> {
    let entries = walk(root, owner)?;
    let mpath = root.join(MANIFEST);
    let manifest_entry = entries
        .iter()
        .find(|e| e.path == Path::new(MANIFEST) && !e.dir);
    if manifest_entry.is_none() {
        return Err(PackError::Manifest {
            path: mpath,
            detail: "not found: a pack has pack.toml at its root".into(),
        });
    }
    let meta = std::fs::metadata(&mpath).map_err(|source| PackError::Io {
        path: mpath.clone(),
        source,
    })?;
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(PackError::Manifest {
            path: mpath,
            detail: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
        });
    }
    let text = fs_err::read_to_string(&mpath).map_err(|e| PackError::Io {
        path: mpath.clone(),
        source: std::io::Error::new(e.kind(), e.to_string()),
    })?;
    let raw: RawManifest = toml::from_str(&text).map_err(|e| PackError::Manifest {
        path: mpath.clone(),
        detail: e.message().to_string(),
    })?;
    let files: BTreeMap<&Path, &TreeEntry> = entries
        .iter()
        .filter(|e| !e.dir)
        .map(|e| (e.path.as_path(), e))
        .collect();
    let pack =
        check(root, raw, &files, tree_hash(&entries)).map_err(|detail| PackError::Manifest {
            path: mpath.clone(),
            detail,
        })?;
    Ok(pack)
}

/// Validate a parsed manifest against the tree's files. Pure.
pub fn check(
    root: &Path,
    raw: RawManifest,
    files: &BTreeMap<&Path, &TreeEntry>,
    sha256: String,
) -> Result<Pack, String> {
    if !valid_id(&raw.pack.name, 64) {
        return Err(format!(
            "pack name {:?}: use 1-64 of a-z 0-9 - _ . starting with a letter or digit",
            raw.pack.name
        ));
    }
    if raw.actions.is_empty() {
        return Err("no [[action]]: a pack declares at least one action".into());
    }
    if raw.actions.len() > MAX_ACTIONS {
        return Err(format!("more than {MAX_ACTIONS} actions"));
    }
    let mut seen = BTreeSet::new();
    let mut actions = Vec::new();
    for a in raw.actions {
        if !seen.insert(a.id.clone()) {
            return Err(format!("duplicate action id {:?}", a.id));
        }
        let id = a.id.clone();
        actions.push(check_action(a, files).map_err(|e| format!("action {id:?}: {e}"))?);
    }
    Ok(Pack {
        root: root.to_path_buf(),
        name: raw.pack.name,
        version: raw.pack.version,
        description: raw.pack.description,
        actions,
        sha256,
    })
}

/// The program of a command: a path inside the pack (no `..`, no absolute path that is
/// not a host program) that is an executable regular file of the tree.
fn check_program(program: &str, files: &BTreeMap<&Path, &TreeEntry>) -> Result<(), String> {
    let p = Path::new(program);
    if p.is_absolute() {
        if p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(format!("command {program:?} has `..`"));
        }
        return Ok(());
    }
    let mut rel = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::CurDir => {}
            _ => return Err(format!("command {program:?} escapes the pack root")),
        }
    }
    match files.get(rel.as_path()) {
        None => Err(format!("command {program:?} is not a file of the pack")),
        Some(e) if !e.executable => Err(format!(
            "command {program:?} is not executable (chmod +x it)"
        )),
        Some(_) => Ok(()),
    }
}

fn check_action(a: RawAction, files: &BTreeMap<&Path, &TreeEntry>) -> Result<Action, String> {
    if !valid_id(&a.id, 64) {
        return Err("id: use 1-64 of a-z 0-9 - _ . starting with a letter or digit".into());
    }
    let Some(program) = a.command.first() else {
        return Err("command is empty".into());
    };
    if program.contains('{') {
        return Err("the program (first element of command) cannot be a parameter".into());
    }
    check_program(program, files)?;
    if a.params.len() > MAX_PARAMS {
        return Err(format!("more than {MAX_PARAMS} parameters"));
    }
    let mut params: Vec<Param> = Vec::new();
    for p in a.params {
        if params.iter().any(|q| q.name == p.name) {
            return Err(format!("duplicate parameter {:?}", p.name));
        }
        let name = p.name.clone();
        params.push(check_param(p).map_err(|e| format!("parameter {name:?}: {e}"))?);
    }
    check_placeholders(&a.command, &params)?;
    if a.env.len() > MAX_ENV {
        return Err(format!("more than {MAX_ENV} env names"));
    }
    for n in &a.env {
        if !valid_env_name(n) {
            return Err(format!("env name {n:?} is not a variable name"));
        }
        if reserved_env(n) {
            return Err(format!(
                "env name {n:?} is reserved (the run's environment is built from it)"
            ));
        }
    }
    if a.max_concurrency == 0 || a.max_concurrency > 64 {
        return Err("max_concurrency: 1 to 64".into());
    }
    let supervise = a.supervise.as_ref().map(RawSupervise::check).transpose()?;
    if supervise.is_some() && a.privileged {
        return Err(
            "a supervised action cannot be privileged: its rounds run as the service user".into(),
        );
    }
    Ok(Action {
        id: a.id,
        description: a.description,
        command: a.command,
        params,
        env: a.env,
        limits: a.limits.check()?,
        max_concurrency: a.max_concurrency,
        idempotent: a.idempotent,
        privileged: a.privileged,
        supervise,
    })
}

/// Every `{name}` in the command is an argv parameter, every argv parameter is used, and no
/// brace is left unmatched.
fn check_placeholders(command: &[String], params: &[Param]) -> Result<(), String> {
    let mut used = BTreeSet::new();
    for arg in command {
        for name in placeholders(arg)? {
            match params.iter().find(|p| p.name == name) {
                Some(p) if p.pass_as == PassAs::Argv => {
                    used.insert(name);
                }
                Some(_) => return Err(format!("{{{name}}} is an env parameter (as = \"env\")")),
                None => return Err(format!("{{{name}}} in command is not a parameter")),
            }
        }
    }
    for p in params.iter().filter(|p| p.pass_as == PassAs::Argv) {
        if !used.contains(&p.name) {
            return Err(format!(
                "parameter {:?} is passed as argv but {{{}}} is not in command",
                p.name, p.name
            ));
        }
    }
    Ok(())
}

/// The `{name}`s of one argv element.
fn placeholders(arg: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(i) = rest.find(['{', '}']) {
        if rest.as_bytes()[i] == b'}' {
            return Err(format!("unmatched `}}` in {arg:?}"));
        }
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else {
            return Err(format!("unmatched `{{` in {arg:?}"));
        };
        out.push(after[..j].to_string());
        rest = &after[j + 1..];
    }
    Ok(out)
}

fn check_param(p: RawParam) -> Result<Param, String> {
    if !valid_env_name(&p.name)
        || p.name.len() > 64
        || p.name.bytes().any(|b| b.is_ascii_uppercase())
    {
        return Err("name: use 1-64 of a-z 0-9 _ not starting with a digit".into());
    }
    let bound = |what: &str| format!("{what} is not allowed for type {:?}", p.kind);
    let kind = match p.kind.as_str() {
        "string" => {
            if p.min.is_some() || p.max.is_some() || p.values.is_some() {
                return Err(bound("min/max/values"));
            }
            let max_len = p.max_len.unwrap_or(MAX_VALUE);
            if max_len == 0 || max_len > MAX_VALUE {
                return Err(format!("max_len: 1 to {MAX_VALUE}"));
            }
            let pattern = match &p.pattern {
                Some(src) => Some(
                    Regex::new(&format!("^(?:{src})$"))
                        .map_err(|e| format!("pattern {src:?}: {e}"))?,
                ),
                None => None,
            };
            if pattern.is_none() && p.max_len.is_none() {
                return Err("a string parameter needs a pattern or a max_len".into());
            }
            ParamKind::String {
                pattern,
                pattern_src: p.pattern.clone(),
                max_len,
            }
        }
        "int" => {
            if p.pattern.is_some() || p.max_len.is_some() || p.values.is_some() {
                return Err(bound("pattern/max_len/values"));
            }
            match (p.min, p.max) {
                (Some(min), Some(max)) if min <= max => ParamKind::Int { min, max },
                (Some(_), Some(_)) => return Err("min is above max".into()),
                _ => return Err("an int parameter needs min and max".into()),
            }
        }
        "bool" => {
            if p.pattern.is_some()
                || p.max_len.is_some()
                || p.values.is_some()
                || p.min.is_some()
                || p.max.is_some()
            {
                return Err(bound("bounds"));
            }
            ParamKind::Bool
        }
        "enum" => {
            if p.pattern.is_some() || p.max_len.is_some() || p.min.is_some() || p.max.is_some() {
                return Err(bound("pattern/max_len/min/max"));
            }
            let values = p.values.clone().unwrap_or_default();
            if values.is_empty() || values.iter().any(|v| v.is_empty() || v.len() > 255) {
                return Err("an enum parameter needs values (1-255 bytes each)".into());
            }
            ParamKind::Enum { values }
        }
        other => return Err(format!("type {other:?}: use string, int, bool or enum")),
    };
    let pass_as = match p.pass_as.as_str() {
        "argv" => PassAs::Argv,
        "env" => PassAs::Env,
        other => return Err(format!("as = {other:?}: use \"argv\" or \"env\"")),
    };
    let mut param = Param {
        name: p.name,
        description: p.description,
        kind,
        required: p.required,
        default: None,
        pass_as,
    };
    if let Some(d) = p.default {
        if p.required {
            return Err("a required parameter has no default".into());
        }
        let text = match d {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => return Err("default: a string, integer or boolean".into()),
        };
        param.default = Some(
            param
                .check_value(&text)
                .map_err(|e| format!("default: {e}"))?,
        );
    }
    Ok(param)
}

impl Param {
    /// `value` as passed to the process, or why it is refused.
    pub fn check_value(&self, value: &str) -> Result<String, String> {
        if value.len() > MAX_VALUE {
            return Err(format!("longer than {MAX_VALUE} bytes"));
        }
        if value.contains('\0') {
            return Err("contains a NUL byte".into());
        }
        match &self.kind {
            ParamKind::String {
                pattern,
                pattern_src,
                max_len,
            } => {
                if value.len() > *max_len {
                    return Err(format!("longer than {max_len} bytes"));
                }
                if let (Some(re), Some(src)) = (pattern, pattern_src) {
                    if !re.is_match(value) {
                        return Err(format!("does not match {src:?}"));
                    }
                }
                Ok(value.to_string())
            }
            ParamKind::Int { min, max } => match value.parse::<i64>() {
                Ok(n) if n >= *min && n <= *max => Ok(n.to_string()),
                Ok(_) => Err(format!("not between {min} and {max}")),
                Err(_) => Err("not an integer".into()),
            },
            ParamKind::Bool => match value {
                "true" | "false" => Ok(value.to_string()),
                _ => Err("not true or false".into()),
            },
            ParamKind::Enum { values } => {
                if values.iter().any(|v| v == value) {
                    Ok(value.to_string())
                } else {
                    Err(format!("not one of {}", values.join(", ")))
                }
            }
        }
    }

    /// The variable an env parameter is passed in.
    pub fn env_name(&self) -> String {
        format!("OUTPOST_PARAM_{}", self.name.to_ascii_uppercase())
    }
}

/// What a run executes: argv (the program resolved inside the pack) and the parameter
/// variables. The allowlisted env-file variables are added by the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invocation {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl Action {
    /// Check `given` (name → value) against the parameters and build the invocation. Unknown
    /// names, missing required values and values out of bounds are refused, naming the
    /// parameter.
    pub fn invocation(
        &self,
        pack_root: &Path,
        given: &BTreeMap<String, String>,
    ) -> Result<Invocation, String> {
        if let Some(unknown) = given
            .keys()
            .find(|k| !self.params.iter().any(|p| &p.name == *k))
        {
            return Err(format!("action {} has no parameter {unknown:?}", self.id));
        }
        let mut values = BTreeMap::new();
        for p in &self.params {
            let v = match (given.get(&p.name), &p.default) {
                (Some(v), _) => p
                    .check_value(v)
                    .map_err(|e| format!("parameter {}: {e}", p.name))?,
                (None, Some(d)) => d.clone(),
                (None, None) if p.required => {
                    return Err(format!("parameter {} is required", p.name))
                }
                (None, None) => String::new(),
            };
            values.insert(p.name.as_str(), (p, v));
        }
        let mut argv = Vec::with_capacity(self.command.len());
        for (i, arg) in self.command.iter().enumerate() {
            if i == 0 {
                let p = Path::new(arg);
                argv.push(if p.is_absolute() {
                    arg.clone()
                } else {
                    pack_root.join(p).to_string_lossy().into_owned()
                });
                continue;
            }
            let mut out = String::new();
            let mut rest = arg.as_str();
            while let Some(i) = rest.find('{') {
                out.push_str(&rest[..i]);
                // Invariant: check_placeholders accepted this command at load, so every `{`
                // has its `}` and names an argv parameter.
                let j = rest[i..].find('}').map(|j| i + j).unwrap_or(rest.len() - 1);
                let name = &rest[i + 1..j];
                out.push_str(values.get(name).map(|(_, v)| v.as_str()).unwrap_or(""));
                rest = &rest[j + 1..];
            }
            out.push_str(rest);
            argv.push(out);
        }
        let env = values
            .values()
            .filter(|(p, _)| p.pass_as == PassAs::Env)
            .map(|(p, v)| (p.env_name(), v.clone()))
            .collect();
        Ok(Invocation { argv, env })
    }
}

/// The catalog entry of a pack, as advertised to the hub (no paths, no scripts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatalogPack {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub actions: Vec<CatalogAction>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatalogAction {
    pub id: String,
    pub description: String,
    pub params: Vec<CatalogParam>,
    pub idempotent: bool,
    pub privileged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatalogParam {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub required: bool,
}

impl Pack {
    pub fn action(&self, id: &str) -> Option<&Action> {
        self.actions.iter().find(|a| a.id == id)
    }

    pub fn catalog(&self) -> CatalogPack {
        CatalogPack {
            name: self.name.clone(),
            version: self.version.to_string(),
            sha256: self.sha256.clone(),
            actions: self
                .actions
                .iter()
                .map(|a| CatalogAction {
                    id: a.id.clone(),
                    description: a.description.clone(),
                    params: a
                        .params
                        .iter()
                        .map(|p| CatalogParam {
                            name: p.name.clone(),
                            kind: match p.kind {
                                ParamKind::String { .. } => "string",
                                ParamKind::Int { .. } => "int",
                                ParamKind::Bool => "bool",
                                ParamKind::Enum { .. } => "enum",
                            }
                            .into(),
                            required: p.required,
                        })
                        .collect(),
                    idempotent: a.idempotent,
                    privileged: a.privileged,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
