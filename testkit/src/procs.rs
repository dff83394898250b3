//! Workspace binaries run as child processes, for tests that signal or kill them.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The path of a workspace binary, built first (once per test process) so it is current.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap();
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", name, "--bin", name]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "cargo build of {name} failed");
        built.push(name.to_string());
    }
    dir.join(name)
}

/// A running child process whose stdout and stderr lines are collected.
pub struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    pub name: String,
}

impl Proc {
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Proc::start_with_env(name, args, &[])
    }

    /// Like `start`, with extra environment variables (e.g. `REGISTRATION_TOKEN`).
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::spawn(name, Command::new(bin(name)), args, env)
    }

    /// Like `start_with_env`, under `ulimit -n descriptors`: for tests of what a
    /// service does when it runs out of file descriptors.
    pub fn start_limited(
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        descriptors: u32,
    ) -> Proc {
        let mut shell = Command::new("sh");
        shell
            .args([
                "-c",
                &format!("ulimit -n {descriptors} && exec \"$0\" \"$@\""),
            ])
            .arg(bin(name));
        Proc::spawn(name, shell, args, env)
    }

    fn spawn(name: &str, mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = command
            .args(args)
            .env("LOG_LEVEL", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let mut readers = Vec::new();
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let lines = lines.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines
                        .lock()
                        .unwrap()
                        .push(shared::logging::strip_ansi(&line));
                }
            }));
        }
        Proc {
            child,
            lines,
            readers,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many file descriptors the process holds now (0 once it is gone).
    pub fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until a printed line contains `needle`; returns that line.
    pub async fn wait_for_line(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {needle:?} within {limit:?}; it printed:\n{}",
                self.name,
                self.output()
            );
            async_std::task::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The address from its "listening on http://ADDR" (or https://) line (pretty or ndjson log).
    pub async fn listening(&self, what: &str) -> std::net::SocketAddr {
        let needle = format!("{what} listening on http");
        let line = self.wait_for_line(&needle, Duration::from_secs(20)).await;
        let rest = &line[line.find(&needle).unwrap() + needle.len()..];
        let rest = rest.strip_prefix('s').unwrap_or(rest);
        let rest = rest.strip_prefix("://").unwrap();
        let addr: String = rest
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
            .collect();
        addr.parse().unwrap()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// SIGKILL: no chance to deregister or finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit within `limit`.
    pub async fn exited(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The pipes close with the process: collect its last lines before answering.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}; it printed:\n{}",
                self.name,
                self.output()
            );
            async_std::task::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The system started the way `just up` starts it: the `up` binary with the
/// service binaries beside it and the shipped config files, on free ports
/// (`--free-ports`), its state file and logs in a temporary folder.
pub struct UpSystem {
    /// `up` itself (killed on drop, before the folder goes).
    pub up: Proc,
    pub state_path: PathBuf,
    /// The state `up` wrote once it said everything runs.
    pub state: shared::runstate::RunState,
    _dir: crate::tempdir::TempDir,
}

/// Starts [`UpSystem`] (its folder named after `tag`) and waits until `up`
/// says everything runs.
pub async fn up_system(tag: &str) -> UpSystem {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for service in ["discovery", "app", "gateway"] {
        bin(service);
    }
    let bin_dir = bin("up").parent().unwrap().to_path_buf();
    let dir = crate::tempdir::TempDir::new(tag);
    let state_path = dir.join("state.json");
    let up = Proc::start(
        "up",
        &[
            "--free-ports",
            "--config-dir",
            root.join("config").to_str().unwrap(),
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            "--state",
            state_path.to_str().unwrap(),
        ],
    );
    up.wait_for_line("Ctrl-C stops everything", Duration::from_secs(60))
        .await;
    let state = shared::runstate::RunState::load(&state_path).unwrap();
    UpSystem {
        up,
        state_path,
        state,
        _dir: dir,
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
