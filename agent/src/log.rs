//! The agent's log lines: stdout/stderr, which systemd sends to the journal. Under systemd
//! (`JOURNAL_STREAM` set) lines carry an sd-daemon(3) priority prefix (`<4>` = warning).
//! Nothing logged here may contain a secret (enrollment key, token); a test captures the
//! output to check that.
use std::sync::Mutex;

static CAPTURE: Mutex<Option<String>> = Mutex::new(None);

fn emit(prio: u8, text: &str, to_err: bool) {
    if let Some(buf) = CAPTURE.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        buf.push_str(text);
        buf.push('\n');
    }
    let prefix = if std::env::var_os("JOURNAL_STREAM").is_some() {
        format!("<{prio}>")
    } else {
        String::new()
    };
    for line in text.lines() {
        if to_err {
            eprintln!("{prefix}{line}");
        } else {
            println!("{prefix}{line}");
        }
    }
}

pub fn info(msg: &str) {
    emit(6, msg, false);
}

pub fn warn(msg: &str, hint: &str) {
    emit(4, &format!("warning: {msg}\nhint: {hint}"), true);
}

pub fn error(msg: &str, hint: &str) {
    emit(3, &format!("error: {msg}\nhint: {hint}"), true);
}

/// Test seam: start copying every log line of this process into a buffer.
#[doc(hidden)]
pub fn capture_start() {
    let mut c = CAPTURE.lock().unwrap_or_else(|p| p.into_inner());
    if c.is_none() {
        *c = Some(String::new());
    }
}

/// Test seam: everything logged since [`capture_start`].
#[doc(hidden)]
pub fn captured() -> String {
    CAPTURE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default()
}
