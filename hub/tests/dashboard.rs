//! Dashboard test with headless Debian chromium: the page lists a live agent as online, and
//! a screenshot lands in target/test-artifacts/dashboard.png. Without chromium the test is
//! skipped loudly, unless CI is set (then it fails: ci/setup.sh must install chromium).

mod common;

use std::path::Path;
use std::process::Command;

use common::{target_dir, Hub};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium(url: &str, extra: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap()
}

#[test]
fn dashboard_lists_live_agent_in_chromium() {
    if !Path::new(CHROMIUM).exists() {
        if std::env::var_os("CI").is_some() {
            panic!("{CHROMIUM} is missing and CI is set: add `chromium` to ci/setup.sh packages");
        }
        eprintln!("\n\n!!!!! SKIPPED dashboard_lists_live_agent_in_chromium: {CHROMIUM} not installed (apt-get install -y chromium) !!!!!\n\n");
        return;
    }
    let hub = Hub::start();
    let (id, token) = hub.new_agent("dash-host-1");
    assert_eq!(hub.heartbeat(&id, &token, 1, "a").0, 200);
    let (id2, token2) = hub.new_agent("<b>evil</b>");
    assert_eq!(hub.heartbeat(&id2, &token2, 1, "a").0, 200);
    assert_eq!(
        hub.admin("POST", &format!("/api/v1/agents/{id2}/revoke"), None)
            .0,
        200
    );
    let (s, _) = hub.req(
        "POST",
        "/api/v1/diagnostics",
        Some(&token),
        Some(&json!({"agent_id": id, "report": {}})),
    );
    assert_eq!(s, 202);

    let dom = chromium(&format!("{}/", hub.url), &["--dump-dom"]);
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(
        html.contains("dash-host-1"),
        "hostname missing from the DOM:\n{html}"
    );
    assert!(
        html.contains("badge online\">online<"),
        "online badge missing:\n{html}"
    );
    assert!(
        html.contains("badge revoked\">revoked<"),
        "revoked badge missing:\n{html}"
    );
    assert!(
        html.contains("&lt;b&gt;evil&lt;/b&gt;") && !html.contains("<b>evil</b>"),
        "hostname not escaped:\n{html}"
    );
    assert!(html.contains("6.1.0-test") && html.contains("debian 12"));

    let dir = target_dir().join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    let shot = chromium(
        &format!("{}/", hub.url),
        &[&format!("--screenshot={}", png.display())],
    );
    assert!(
        shot.status.success(),
        "chromium screenshot failed: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 5000,
        "bad screenshot {}",
        png.display()
    );
    eprintln!("dashboard screenshot: {}", png.display());
}
