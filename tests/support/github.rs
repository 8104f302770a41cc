//! A github.com stand-in on 127.0.0.1 serving a release root (as `outpost-release publish`
//! writes it) the way GitHub Releases would, for repository `o/r` (docs/RELEASES.md):
//! `/o/r/releases/download/vV/NAME` is the asset NAME of release vV (`vV/NAME`, or a root file
//! uploaded with that release: `manifest.json`, `install.sh`, `channel-C` = `channels/C`);
//! `/o/r/releases/latest/download/NAME` answers 302 to the release the stable channel names,
//! as GitHub does for the release marked *Latest*. Every request path is logged.
use super::http_stub::{safe_segment, serve, Reply};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct GitHub {
    /// Base URL (`OUTPOST_GITHUB_URL`), like `http://127.0.0.1:PORT`.
    pub url: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl GitHub {
    pub fn serve(root: &Path) -> GitHub {
        let log = Arc::new(Mutex::new(Vec::new()));
        let root = root.to_path_buf();
        let url = serve(Arc::clone(&log), move |path, origin| {
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            match parts.as_slice() {
                ["o", "r", "releases", "latest", "download", name] if safe_segment(name) => {
                    match std::fs::read_to_string(root.join("channels/stable")) {
                        Ok(v) => Reply::Found(format!(
                            "{origin}/o/r/releases/download/v{}/{name}",
                            v.trim()
                        )),
                        Err(_) => Reply::NotFound,
                    }
                }
                ["o", "r", "releases", "download", tag, name]
                    if safe_segment(tag) && safe_segment(name) =>
                {
                    std::fs::read(asset(&root, tag, name)).map_or(Reply::NotFound, Reply::Ok)
                }
                _ => Reply::NotFound,
            }
        });
        GitHub { url, log }
    }

    /// The request paths so far.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// The file behind asset `name` of release `tag`.
fn asset(root: &Path, tag: &str, name: &str) -> PathBuf {
    let own = root.join(tag).join(name);
    if own.is_file() {
        return own;
    }
    match name.strip_prefix("channel-") {
        Some(channel) => root.join("channels").join(channel),
        None => root.join(name),
    }
}
