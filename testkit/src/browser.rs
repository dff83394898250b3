//! A real headless Chromium for the consoles' tests, driven over the DevTools
//! protocol so a test can read a page's DOM while it lives (`--dump-dom`
//! only shows it once, after load).
//!
//! Chromium speaks the protocol over a pipe (`--remote-debugging-pipe`:
//! commands in on descriptor 3, answers and events out on descriptor 4, each
//! a JSON message ended by a NUL byte). Two FIFOs and `sh -c 'exec chromium
//! ... 3<in 4>out'` hand it those descriptors without unsafe code or a
//! websocket client. Chromium runs in a process group of its own, killed
//! whole when the [`Browser`] drops.
//!
//! Chromium missing is a test failure naming the package, never a skip.

use async_std::sync::Mutex;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long one protocol command may take.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// Names tried in order when `CHROMIUM` is not set.
const CANDIDATES: [&str; 4] = [
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];

/// A headless Chromium; dropping it kills it and removes its profile.
pub struct Browser {
    child: Child,
    dir: PathBuf,
    to_chromium: Mutex<File>,
    from_chromium: async_channel::Receiver<Value>,
    next_id: AtomicU64,
}

/// A tab, attached for `Runtime.evaluate`.
#[derive(Clone, Debug)]
pub struct Page {
    session: String,
}

/// The Chromium binary: `$CHROMIUM` (if it is a file), or the first of
/// [`CANDIDATES`] on `PATH`.
pub fn chromium_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let paths = std::env::var_os("PATH")?;
    CANDIDATES.iter().find_map(|name| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

impl Browser {
    /// Starts a headless Chromium; panics with the install command if there is none.
    pub fn launch() -> Browser {
        let binary = chromium_path().unwrap_or_else(|| {
            panic!(
                "Chromium is not installed, and the console tests need a real headless browser: \
                 run `apt-get install -y chromium` (.ci/run and `just test` do), or set CHROMIUM \
                 to its path (now {:?})",
                std::env::var_os("CHROMIUM").unwrap_or_default()
            )
        });
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "testkit-chromium-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("profile")).unwrap();
        // Chromium puts its singleton socket in a folder of its own under
        // TMPDIR, which a killed browser leaves behind: keep it in ours.
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        for fifo in ["in", "out"] {
            let made = Command::new("mkfifo").arg(dir.join(fifo)).status().unwrap();
            assert!(made.success(), "mkfifo {}", dir.join(fifo).display());
        }
        let stderr = File::create(dir.join("stderr")).unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"dir="$1"; shift; exec "$@" 3<"$dir/in" 4>"$dir/out""#)
            .arg("sh")
            .arg(&dir)
            .arg(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--mute-audio",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .arg("about:blank")
            .env("TMPDIR", dir.join("tmp"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let (to, from) = match open_pipes(&dir, &mut child) {
            Ok(pipes) => pipes,
            Err(why) => {
                kill_group(&mut child);
                panic!("{why}: {}", stderr_tail(&dir));
            }
        };
        let (tx, rx) = async_channel::unbounded();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from);
            let mut message = Vec::new();
            loop {
                message.clear();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if message.last() == Some(&0) {
                            message.pop();
                        }
                        if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                            if tx.send_blocking(value).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Browser {
            child,
            dir,
            to_chromium: Mutex::new(to),
            from_chromium: rx,
            next_id: AtomicU64::new(1),
        }
    }

    /// Opens `url` in a new tab.
    pub async fn open(&self, url: &str) -> Page {
        let target = self
            .call(None, "Target.createTarget", json!({"url": url}))
            .await;
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        Page {
            session: attached["sessionId"].as_str().unwrap().to_string(),
        }
    }

    /// The value of `expression` in the page, or the exception it threw.
    pub async fn evaluate(&self, page: &Page, expression: &str) -> Result<Value, String> {
        let answer = self
            .try_call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(exception) = answer.get("exceptionDetails") {
            return Err(exception.to_string());
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Evaluates `expression` (JSON, e.g. from `JSON.stringify`) every 100 ms
    /// until `done` holds for its value, and returns it; panics after `limit`
    /// naming `what` and showing the last value.
    pub async fn wait_for(
        &self,
        page: &Page,
        what: &str,
        expression: &str,
        limit: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let last = self.evaluate(page, expression).await;
            if let Ok(value) = &last {
                if done(value) {
                    return value.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting until {what}; the page last showed {last:?}"
            );
            async_std::task::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the whole page as a `width` pixels wide window shows it
    /// (DevTools `Page.captureScreenshot` beyond the viewport).
    pub async fn screenshot(&self, page: &Page, width: u32) -> Vec<u8> {
        let session = Some(page.session.as_str());
        let height = self
            .evaluate(page, "document.documentElement.scrollHeight")
            .await
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or(900)
            .clamp(600, 4000);
        self.call(
            session,
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        let shot = self
            .call(
                session,
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        decode_base64(shot["data"].as_str().unwrap_or_default())
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends one command and waits for its answer; events in between are dropped.
    async fn try_call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        // One command at a time: whoever holds the pipe reads the answers.
        let mut to = self.to_chromium.lock().await;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        to.write_all(&bytes)
            .map_err(|e| format!("{method}: cannot write to Chromium: {e}"))?;
        let deadline = Instant::now() + CALL_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = async_std::future::timeout(left, self.from_chromium.recv())
                .await
                .map_err(|_| format!("{method}: no answer from Chromium within {CALL_LIMIT:?}"))?
                .map_err(|_| {
                    format!(
                        "{method}: Chromium closed its pipe: {}",
                        stderr_tail(&self.dir)
                    )
                })?;
            if message["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(error) = message.get("error") {
                return Err(format!("{method}: {error}"));
            }
            return Ok(message["result"].clone());
        }
    }
}

/// Standard base64 (what DevTools sends binary data as); stops at the first
/// byte outside the alphabet (padding).
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().map_while(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Opens our ends of Chromium's pipe. Opening a FIFO blocks until its other
/// end opens, so it happens on a thread of its own, given up on (with the
/// thread left blocked) if Chromium exits or takes too long.
fn open_pipes(dir: &Path, child: &mut Child) -> Result<(File, File), String> {
    let (opened, fifos) = std::sync::mpsc::channel();
    let fifo_dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let to = std::fs::OpenOptions::new()
            .write(true)
            .open(fifo_dir.join("in"));
        let pipes = to.and_then(|to| File::open(fifo_dir.join("out")).map(|from| (to, from)));
        let _ = opened.send(pipes);
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match fifos.recv_timeout(Duration::from_millis(50)) {
            Ok(pipes) => return pipes.map_err(|e| format!("cannot open Chromium's pipe: {e}")),
            Err(_) => {
                if let Ok(Some(exit)) = child.try_wait() {
                    return Err(format!("Chromium exited at start ({exit})"));
                }
                if Instant::now() >= deadline {
                    return Err("Chromium did not open its DevTools pipe within 20 s".into());
                }
            }
        }
    }
}

/// The end of what Chromium wrote to stderr, for failure messages.
fn stderr_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    let mut start = text.len().saturating_sub(2000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// Kills Chromium's whole process group (its renderers and helpers too).
fn kill_group(child: &mut Child) {
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes_as_devtools_sends_it() {
        assert_eq!(super::decode_base64("aGVsbG8gd29ybGQ="), b"hello world");
        assert_eq!(super::decode_base64("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
        assert_eq!(super::decode_base64(""), b"");
    }
}
