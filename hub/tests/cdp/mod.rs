//! A minimal Chrome DevTools Protocol client over `--remote-debugging-pipe` (the browser
//! reads commands on fd 3 and writes replies and events on fd 4, each message a JSON text
//! ending in NUL): enough to load pages, type, click and screenshot in headless Debian
//! chromium without a driver or a websocket library.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, PipeWriter, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";

unsafe extern "C" {
    fn dup2(old: i32, new: i32) -> i32;
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
}
const F_DUPFD_CLOEXEC: i32 = 1030;

/// `fd` duplicated to a number ≥ 10 (close-on-exec), so that moving it to 3 or 4 in the
/// child cannot clobber the other one.
fn high(fd: &OwnedFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a valid fd returns a new fd we then own.
    let n = unsafe { fcntl(fd.as_raw_fd(), F_DUPFD_CLOEXEC, 10) };
    assert!(n >= 10, "fcntl(F_DUPFD_CLOEXEC) failed");
    // SAFETY: n is a fresh descriptor owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(n) }
}

/// A headless chromium with a fresh profile; killed on drop.
pub struct Browser {
    child: Child,
    to: PipeWriter,
    from: Receiver<Value>,
    next_id: u64,
    pub events: Vec<Value>,
    _profile: tempfile::TempDir,
}

/// One attached page (tab).
pub struct Page<'a> {
    pub browser: &'a mut Browser,
    pub session: String,
}

impl Browser {
    pub fn available() -> bool {
        Path::new(CHROMIUM).exists()
    }

    pub fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (cmd_r, cmd_w) = std::io::pipe().unwrap();
        let (ev_r, ev_w) = std::io::pipe().unwrap();
        let (cmd_r, ev_w): (OwnedFd, OwnedFd) = (cmd_r.into(), ev_w.into());
        let (a, b) = (high(&cmd_r), high(&ev_w));
        let (a_fd, b_fd) = (a.as_raw_fd(), b.as_raw_fd());
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,800",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("HUB_TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
        // SAFETY: only async-signal-safe dup2 calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if dup2(a_fd, 3) != 3 || dup2(b_fd, 4) != 4 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        drop((a, b, cmd_r, ev_w));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(ev_r);
            loop {
                let mut buf = Vec::new();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Browser {
            child,
            to: cmd_w,
            from: rx,
            next_id: 0,
            events: Vec::new(),
            _profile: profile,
        }
    }

    /// Sends `method` (to `session`, or the browser) and waits for its result.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params)
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// [`Browser::call`], with Chromium's error answer as `Err`.
    pub fn try_call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.from.recv_timeout(left) {
                Ok(v) if v["id"] == id => {
                    return match v.get("error") {
                        Some(e) => Err(e.clone()),
                        None => Ok(v["result"].clone()),
                    };
                }
                Ok(v) => self.events.push(v),
                Err(RecvTimeoutError::Timeout) => panic!("{method}: no answer from chromium"),
                Err(RecvTimeoutError::Disconnected) => panic!("{method}: chromium went away"),
            }
        }
    }

    /// A new tab, attached.
    pub fn page(&mut self) -> Page<'_> {
        let t = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target = t["targetId"].as_str().unwrap().to_string();
        let a = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        let session = a["sessionId"].as_str().unwrap().to_string();
        let mut p = Page {
            browser: self,
            session,
        };
        p.call("Page.enable", json!({}));
        p.call("Network.enable", json!({}));
        p
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Page<'_> {
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.browser.call(Some(&s), method, params)
    }

    /// Evaluates `expr` in the page; its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `cond` (a JS boolean expression) until true; panics after 15 s. A page in the
    /// middle of a navigation (a form just submitted) has no context to evaluate in: that
    /// poll counts as not yet.
    pub fn wait_for(&mut self, cond: &str) {
        let end = Instant::now() + Duration::from_secs(15);
        let expr = format!("(() => {{ try {{ return document.readyState === 'complete' && !!({cond}); }} catch (e) {{ return false; }} }})()");
        let s = self.session.clone();
        while Instant::now() < end {
            let r = self.browser.try_call(
                Some(&s),
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            );
            if r.is_ok_and(|r| r["result"]["value"] == Value::Bool(true)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let html = self.html();
        panic!("timed out waiting for {cond}; page:\n{html}");
    }

    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        let want = url.to_string();
        self.wait_for(&format!("location.href.startsWith({})", json!(want)));
    }

    pub fn html(&mut self) -> String {
        self.eval("document.documentElement.outerHTML")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn path(&mut self) -> String {
        self.eval("location.pathname")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Focuses `selector` and types `text` into it (real input events).
    pub fn type_into(&mut self, selector: &str, text: &str) {
        self.eval(&format!(
            "document.querySelector({}).focus()",
            json!(selector)
        ));
        self.call("Input.insertText", json!({"text": text}));
    }

    /// Clicks the element at `selector` with the mouse (its centre).
    pub fn click(&mut self, selector: &str) {
        let r = self.eval(&format!(
            "(() => {{ const r = document.querySelector({}).getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
            json!(selector)
        ));
        let (x, y) = (r[0].as_f64().unwrap(), r[1].as_f64().unwrap());
        for t in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": t, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// The browser's cookies for `url`.
    pub fn cookies(&mut self, url: &str) -> Vec<Value> {
        self.call("Network.getCookies", json!({"urls": [url]}))["cookies"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Statuses of the responses received for `url` (from Network events so far).
    pub fn statuses(&mut self, url: &str) -> Vec<u64> {
        self.call("Runtime.evaluate", json!({"expression": "1"}));
        self.browser
            .events
            .iter()
            .filter(|e| e["method"] == "Network.responseReceived")
            .filter(|e| e["params"]["response"]["url"] == url)
            .filter_map(|e| e["params"]["response"]["status"].as_u64())
            .collect()
    }

    /// A PNG screenshot written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64_decode(r["data"].as_str().unwrap());
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5000,
            "bad screenshot for {}",
            path.display()
        );
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

/// Standard base64 (with padding), as CDP sends screenshots.
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|b| **b == b'=').count();
        let mut n = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            n |= if *b == b'=' { 0 } else { val(*b) } << (18 - 6 * i);
        }
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    out
}
