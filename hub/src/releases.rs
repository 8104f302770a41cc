//! The release layout (docs/RELEASES.md) served from `--releases DIR`. Only these shapes
//! exist: `/install.sh`, `/manifest.json`, `/manifest.json.minisig`,
//! `/channels/{stable,beta}` and `/v{version}/{file}`; names with `..`, slashes or a leading
//! dot are refused, and the resolved file must stay inside the directory. Signed pack
//! releases (docs/PACKS.md) live under `packs/NAME/`: `/packs/{name}/manifest.json`,
//! `/packs/{name}/manifest.json.minisig` and `/packs/{name}/v{version}/{file}`.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::api::Hub;
use crate::error::ApiError;

/// Routes for the release files.
pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route(
            "/install.sh",
            get(|s: State<Arc<Hub>>| serve(s, "install.sh".into())),
        )
        .route(
            "/manifest.json",
            get(|s: State<Arc<Hub>>| serve(s, "manifest.json".into())),
        )
        .route(
            "/manifest.json.minisig",
            get(|s: State<Arc<Hub>>| serve(s, "manifest.json.minisig".into())),
        )
        .route("/channels/{name}", get(channel))
        .route("/{dir}/{file}", get(versioned))
        .route("/packs/{name}/{file}", get(pack_root_file))
        // `{sha256}` is the version dir here: the path shape is shared with the dashboard's
        // POST `/packs/{name}/{sha256}/trust`, and the router needs one name per position.
        .route("/packs/{name}/{sha256}/{file}", get(pack_versioned))
}

/// `packs/NAME/FILE` for a pack release's root files, or `None`.
pub fn pack_root_rel(name: &str, file: &str) -> Option<String> {
    let root_file = file == "manifest.json" || file == "manifest.json.minisig";
    (safe_name(name) && root_file).then(|| format!("packs/{name}/{file}"))
}

/// `packs/NAME/vV/FILE` for a pack release's versioned files, or `None`.
pub fn pack_versioned_rel(name: &str, dir: &str, file: &str) -> Option<String> {
    (safe_name(name) && version_dir(dir) && safe_name(file))
        .then(|| format!("packs/{name}/{dir}/{file}"))
}

async fn pack_root_file(
    s: State<Arc<Hub>>,
    Path((name, file)): Path<(String, String)>,
) -> Response {
    match pack_root_rel(&name, &file) {
        Some(rel) => serve(s, rel).await,
        None => ApiError::not_found("no such path").into_response(),
    }
}

async fn pack_versioned(
    s: State<Arc<Hub>>,
    Path((name, dir, file)): Path<(String, String, String)>,
) -> Response {
    match pack_versioned_rel(&name, &dir, &file) {
        Some(rel) => serve(s, rel).await,
        None => ApiError::not_found("no such path").into_response(),
    }
}

/// Versioned files never change (a fix is a new version): cache them for a day.
fn immutable(rel: &str) -> bool {
    rel.starts_with('v') || (rel.starts_with("packs/") && rel.split('/').count() == 4)
}

/// A safe single path component: `[A-Za-z0-9._+-]`, not starting with a dot.
pub fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('.')
        && !s.contains("..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

/// `v1.2.3` or `v1.2.3-rc.1`: a `v` then a digit then safe characters.
pub fn version_dir(s: &str) -> bool {
    s.strip_prefix('v')
        .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()) && safe_name(v))
}

fn content_type(rel: &str) -> &'static str {
    if rel.starts_with("channels/") || rel.ends_with("/SHA256SUMS") {
        return "text/plain; charset=utf-8";
    }
    let name = rel.rsplit('/').next().unwrap_or(rel);
    if name.ends_with(".sh") {
        "text/x-shellscript; charset=utf-8"
    } else if name.ends_with(".json") {
        "application/json"
    } else if [".minisig", ".sha256", ".txt", ".asc"]
        .iter()
        .any(|x| name.ends_with(x))
    {
        "text/plain; charset=utf-8"
    } else if name.ends_with(".gz") || name.ends_with(".tgz") {
        "application/gzip"
    } else if name.ends_with(".zst") {
        "application/zstd"
    } else {
        "application/octet-stream"
    }
}

async fn channel(s: State<Arc<Hub>>, Path(name): Path<String>) -> Response {
    if name != "stable" && name != "beta" {
        return ApiError::not_found("no such channel").into_response();
    }
    serve(s, format!("channels/{name}")).await
}

async fn versioned(s: State<Arc<Hub>>, Path((dir, file)): Path<(String, String)>) -> Response {
    if !version_dir(&dir) || !safe_name(&file) {
        return ApiError::not_found("no such path").into_response();
    }
    serve(s, format!("{dir}/{file}")).await
}

fn inside(root: &FsPath, p: &FsPath) -> Option<PathBuf> {
    let c = std::fs::canonicalize(p).ok()?;
    (c.starts_with(root) && c.is_file()).then_some(c)
}

async fn serve(State(hub): State<Arc<Hub>>, rel: String) -> Response {
    let root = hub.releases.clone();
    let ct = content_type(&rel);
    let joined = root.join(&rel);
    let found = tokio::task::spawn_blocking(move || inside(&root, &joined))
        .await
        .ok()
        .flatten();
    let Some(path) = found else {
        return ApiError::not_found(format!("/{rel} is not published")).into_response();
    };
    // Streamed in chunks (a release tarball is never held in memory whole).
    let opened = match tokio::fs::File::open(&path).await {
        Ok(f) => f.metadata().await.map(|m| (f, m.len())),
        Err(e) => Err(e),
    };
    match opened {
        Ok((file, len)) => {
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
            let mut r = axum::body::Body::from_stream(stream).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            let cache = if immutable(&rel) {
                "public, max-age=86400, immutable"
            } else {
                "no-cache"
            };
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
            r
        }
        Err(_) => ApiError::not_found(format!("/{rel} is not published")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(version_dir("v1.2.0"));
        assert!(version_dir("v1.2.0-rc.1+b5"));
        for bad in ["v", "vx", "1.2.0", "v..", "v1/../x", "v1.2.0/x", "api"] {
            assert!(!version_dir(bad), "{bad}");
        }
        assert!(safe_name("outpost-x86_64-linux.tar.gz"));
        for bad in ["", ".", "..", ".hidden", "a/b", "a\\b", "..%2f", "a..b"] {
            assert!(!safe_name(bad), "{bad}");
        }
        assert_eq!(
            pack_root_rel("demo", "manifest.json").as_deref(),
            Some("packs/demo/manifest.json")
        );
        assert_eq!(
            pack_versioned_rel("demo", "v1.0.0", "demo-1.0.0.tar.gz").as_deref(),
            Some("packs/demo/v1.0.0/demo-1.0.0.tar.gz")
        );
        for (name, file) in [
            ("demo", "install.sh"),
            ("..", "manifest.json"),
            (".x", "manifest.json"),
        ] {
            assert_eq!(pack_root_rel(name, file), None, "{name}/{file}");
        }
        for (name, dir, file) in [
            ("demo", "1.0.0", "f"),
            ("demo", "v1.0.0", ".."),
            ("..", "v1", "f"),
        ] {
            assert_eq!(
                pack_versioned_rel(name, dir, file),
                None,
                "{name}/{dir}/{file}"
            );
        }
        assert!(immutable("packs/demo/v1.0.0/demo-1.0.0.tar.gz") && immutable("v1.0.0/SHA256SUMS"));
        assert!(!immutable("packs/demo/manifest.json") && !immutable("manifest.json"));
        assert_eq!(
            content_type("install.sh"),
            "text/x-shellscript; charset=utf-8"
        );
        assert_eq!(content_type("channels/stable"), "text/plain; charset=utf-8");
        assert_eq!(content_type("v1.2.0/outpost"), "application/octet-stream");
        assert_eq!(
            content_type("v1.2.0/SHA256SUMS"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            content_type("v1.2.0/SHA256SUMS.minisig"),
            "text/plain; charset=utf-8"
        );
    }
}
