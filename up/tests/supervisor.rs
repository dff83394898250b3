//! `up` as a supervisor: started as the README starts it (the `up` binary,
//! the service binaries, the shipped config files; free ports), its children
//! never outlive it, whatever ends it (SIGKILL, a closed stdout, SIGHUP);
//! `up down` stops it from elsewhere; a crashed child is restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shared::runstate::RunState;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};
use testkit::procs::bin;
use testkit::tempdir::TempDir;

/// Printed once the gateway routes to every app.
const READY: &str = "Ctrl-C stops everything";

struct Up {
    child: Child,
    /// Removed when the test ends (after `drop` below has stopped everything).
    dir: TempDir,
    state_path: PathBuf,
    /// The state as it was once ready (up removes the file when it stops).
    state: RunState,
    /// Where stdout goes, unless the test holds the pipe.
    stdout_file: PathBuf,
}

fn scratch(name: &str) -> TempDir {
    TempDir::new(&format!("up-test-{name}"))
}

fn command(dir: &Path) -> Command {
    for service in ["discovery", "app", "gateway"] {
        bin(service);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let up = PathBuf::from(env!("CARGO_BIN_EXE_up"));
    let mut cmd = Command::new(&up);
    cmd.args(["--free-ports", "--config-dir"])
        .arg(root.join("config"))
        .arg("--bin-dir")
        .arg(up.parent().unwrap())
        .arg("--state")
        .arg(dir.join("state.json"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// Starts `up` with stdout to a file; returns once it said it is ready.
fn start(name: &str) -> Up {
    let dir = scratch(name);
    let stdout_file = dir.join("up.out");
    let child = command(&dir)
        .stdout(std::fs::File::create(&stdout_file).unwrap())
        .spawn()
        .unwrap();
    let mut up = Up {
        child,
        state_path: dir.join("state.json"),
        dir,
        state: RunState::default(),
        stdout_file,
    };
    wait_until("up is ready", Duration::from_secs(60), || {
        up.output().contains(READY)
    });
    up.ready();
    up
}

/// Starts `up` with stdout piped to the test; returns once it said it is ready.
fn start_piped(name: &str) -> (Up, BufReader<ChildStdout>) {
    let dir = scratch(name);
    let mut child = command(&dir).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut up = Up {
        child,
        state_path: dir.join("state.json"),
        stdout_file: dir.join("up.out"),
        dir,
        state: RunState::default(),
    };
    let mut line = String::new();
    while !line.contains(READY) {
        line.clear();
        let n = lines.read_line(&mut line).unwrap();
        assert!(n > 0, "up ended its output before it was ready");
    }
    up.ready();
    (up, lines)
}

impl Up {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout_file).unwrap_or_default()
    }

    /// Reads the state and checks the whole system serves through the gateway.
    fn ready(&mut self) {
        self.state = RunState::load(&self.state_path).unwrap();
        assert_eq!(self.state.processes.len(), 5, "{:?}", self.state.processes);
        let token = self.state.registration_token.clone().unwrap_or_default();
        assert_eq!(token.len(), 32, "a generated token is recorded: {token:?}");
        assert_eq!(self.state.up_pid, Some(self.child.id()));
        assert_eq!(
            post(&self.state.gateway_url, "/api/x", "{\"a\":1}"),
            Some(200)
        );
        // Each app's fault knobs are on an admin port of its own, recorded for loadtest.
        assert_eq!(self.state.app_admin_urls.len(), 3, "{:?}", self.state);
        for admin in self.state.app_admin_urls.values() {
            assert_eq!(request(admin, "GET /chaos", ""), Some(200), "{admin}");
        }
    }

    fn pids(&self) -> Vec<(String, u32)> {
        self.state
            .processes
            .iter()
            .map(|(n, p)| (n.clone(), p.pid))
            .collect()
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for up to exit (and reaps it).
    fn exited(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "up did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asserts every child `up` listed is gone within `limit`.
    fn no_child_left(&self, limit: Duration) {
        let pids = self.pids();
        let deadline = Instant::now() + limit;
        loop {
            let left: Vec<&(String, u32)> = pids.iter().filter(|(_, p)| running(*p)).collect();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still running {limit:?} after up ended: {left:?}\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // A failed test must not leave a system behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (_, pid) in self.pids() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// Whether `pid` runs (a zombie, exited but not reaped, does not).
fn running(pid: u32) -> bool {
    if kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string());
            !state.is_some_and(|r| r.starts_with('Z') || r.starts_with('X'))
        })
        .unwrap_or(false)
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A blocking request with `Connection: close`; the status code.
fn request(base: &str, head: &str, body: &str) -> Option<u16> {
    let host = base.strip_prefix("http://")?;
    let mut s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{head} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.get(9..12)?.parse().ok()
}

fn post(base: &str, path: &str, body: &str) -> Option<u16> {
    request(base, &format!("POST {path}"), body)
}

fn down(state: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_up"))
        .arg("down")
        .arg("--state")
        .arg(state)
        .output()
        .unwrap()
}

#[test]
fn killing_up_with_sigkill_leaves_no_child() {
    let mut up = start("sigkill");
    up.signal(Signal::SIGKILL);
    up.exited(Duration::from_secs(5));
    up.no_child_left(Duration::from_secs(2));
}

#[test]
fn closing_ups_stdout_stops_it_and_leaves_no_child() {
    let (mut up, stdout) = start_piped("stdout");
    // The reader goes away, as `tee` does on Ctrl-C; up must notice without writing.
    drop(stdout);
    let status = up.exited(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    up.no_child_left(Duration::from_secs(2));
    assert!(!up.state_path.exists(), "the state file is removed");
}

#[test]
fn a_closed_stdout_and_ctrl_c_do_not_crash_up() {
    let (mut up, stdout) = start_piped("stdout-int");
    drop(stdout);
    up.signal(Signal::SIGINT);
    let status = up.exited(Duration::from_secs(20));
    assert!(status.success(), "{status:?} (a panic on EPIPE exits 101)");
    up.no_child_left(Duration::from_secs(2));
}

#[test]
fn sighup_stops_up_in_order_and_leaves_no_child() {
    let mut up = start("sighup");
    up.signal(Signal::SIGHUP);
    let status = up.exited(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", up.output());
    up.no_child_left(Duration::from_secs(2));
    assert!(up.output().contains("stopping (SIGHUP)"), "{}", up.output());
    // Ordered: discovery still ran while each app deregistered.
    for (name, _) in up.pids().iter().filter(|(n, _)| n.starts_with("app-")) {
        let log = up.log(name);
        assert!(log.contains("deregistered"), "{name}:\n{log}");
        assert!(!log.contains("cannot deregister"), "{name}:\n{log}");
    }
}

#[test]
fn just_down_stops_a_running_system() {
    let mut up = start("down");
    let out = down(&up.state_path);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("up: stopped"), "{text}");
    // down returns once everything has exited.
    for (name, pid) in up.pids() {
        assert!(!running(pid), "{name} (pid {pid}) still runs after down");
    }
    let status = up.exited(Duration::from_secs(5));
    assert!(status.success(), "{status:?}\n{}", up.output());
    assert!(
        up.output().contains("stopping (SIGTERM)"),
        "{}",
        up.output()
    );
    assert!(!up.state_path.exists());

    let again = down(&up.state_path);
    assert!(again.status.success(), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing is running"),
        "{again:?}"
    );
}

#[test]
fn down_stops_what_the_state_file_lists_when_up_is_gone() {
    bin("discovery");
    let dir = scratch("down-orphans");
    let program = bin("discovery").display().to_string();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut orphan = Command::new(&program)
        .args(["--listen", &listen])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Listening means its signal handling is in place.
    wait_until("discovery listens", Duration::from_secs(20), || {
        TcpStream::connect(&listen).is_ok()
    });
    let mut state = RunState::default();
    state.processes.insert(
        "discovery".into(),
        shared::runstate::Process {
            pid: orphan.id(),
            argv: vec![program, "--listen".into(), listen.clone()],
            log: dir.join("discovery.log"),
        },
    );
    // A pid that is gone and one that runs another program are left alone.
    state.up_pid = Some(u32::MAX - 1);
    state.processes.insert(
        "gateway".into(),
        shared::runstate::Process {
            pid: std::process::id(),
            argv: vec!["/not/the/gateway".into()],
            log: dir.join("gateway.log"),
        },
    );
    let path = dir.join("state.json");
    state.save(&path).unwrap();
    let out = down(&path);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("stopping discovery"), "{text}");
    assert!(!text.contains("gateway"), "{text}");
    let status = orphan.wait().unwrap();
    assert!(
        status.success(),
        "discovery stopped by SIGTERM, cleanly: {status:?}"
    );
    assert!(!path.exists());
}

#[test]
fn a_child_that_dies_is_restarted() {
    let mut up = start("restart");
    let (name, pid) = up
        .pids()
        .into_iter()
        .find(|(n, _)| n.starts_with("app-"))
        .unwrap();
    let port = name.trim_start_matches("app-").to_string();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let mut new_pid = 0;
    wait_until("the app runs again", Duration::from_secs(10), || {
        new_pid = RunState::load(&up.state_path)
            .ok()
            .and_then(|s| s.processes.get(&name).map(|p| p.pid))
            .unwrap_or(pid);
        new_pid != pid
            && running(new_pid)
            && request(&format!("http://127.0.0.1:{port}"), "GET /health_check", "") == Some(200)
    });
    let out = up.output();
    assert!(
        out.contains(&format!(
            "{name} exited (signal: 9 (SIGKILL)), restarting in"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{name} restarted (pid {new_pid})")),
        "{out}"
    );
    up.signal(Signal::SIGTERM);
    assert!(up.exited(Duration::from_secs(20)).success());
    up.state.processes.get_mut(&name).unwrap().pid = new_pid;
    up.no_child_left(Duration::from_secs(2));
}

/// The inodes of the TCP sockets listening on `port` (IPv4 and IPv6), from /proc/net.
fn listening_inodes(port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN; the inode is field 9.
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && f.get(3) == Some(&"0A") {
                inodes.push(f[9].to_string());
            }
        }
    }
    inodes
}

/// Whether process `pid` holds a socket listening on `port`.
fn listens(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|link| {
            let link = link.to_string_lossy().to_string();
            inodes.iter().any(|i| link == format!("socket:[{i}]"))
        })
}

/// The ports a recorded command line names (`--listen`, `--admin-listen`, `--port`, `--admin-port`).
fn argv_ports(argv: &[String]) -> Vec<u16> {
    argv.windows(2)
        .filter_map(|w| match w[0].as_str() {
            "--listen" | "--admin-listen" => {
                w[1].rsplit_once(':').and_then(|(_, p)| p.parse().ok())
            }
            "--port" | "--admin-port" => w[1].parse().ok(),
            _ => None,
        })
        .collect()
}

/// `--free-ports` end to end: every child was started on port 0 (its own
/// command line says so: up chose no number anyone could take first), the
/// ports the state file records are the ones each child listens on, and two
/// systems started at once both come up, on ports of their own.
#[test]
fn two_systems_on_free_ports_come_up_at_once_on_the_ports_their_children_report() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| start("twin-a"));
        let b = start("twin-b");
        (a.join().unwrap(), b)
    });
    let mut all_ports = Vec::new();
    for up in [&a, &b] {
        for (name, p) in &up.state.processes {
            // What the child was started with: port 0 throughout.
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap();
            let started: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).to_string())
                .collect();
            let zeros = argv_ports(&started);
            assert!(
                !zeros.is_empty() && zeros.iter().all(|p| *p == 0),
                "{name} was started with {started:?}"
            );
            // What up recorded, learned from the child: where it listens.
            let ports = argv_ports(&p.argv);
            assert_eq!(ports.len(), zeros.len(), "{name}: {:?}", p.argv);
            for port in &ports {
                assert_ne!(*port, 0, "{name}: {:?}", p.argv);
                assert!(
                    listens(p.pid, *port),
                    "{name} (pid {}) does not listen on {port}, which up recorded",
                    p.pid
                );
            }
            if let Some(port) = name.strip_prefix("app-") {
                assert_eq!(port.parse::<u16>().unwrap(), ports[0], "{name}");
                let admin = &up.state.app_admin_urls[&format!("127.0.0.1:{}", ports[0])];
                assert_eq!(admin, &format!("http://127.0.0.1:{}", ports[1]));
                assert!(up.dir.join(format!("{name}.log")).is_file(), "{name}'s log");
            }
            all_ports.extend(ports);
        }
        let urls = [
            &up.state.discovery_url,
            &up.state.gateway_url,
            &up.state.admin_url,
        ];
        for url in urls {
            let port: u16 = url.rsplit_once(':').unwrap().1.parse().unwrap();
            assert!(all_ports.contains(&port), "{url} is a child's port");
        }
    }
    let mut distinct = all_ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), all_ports.len(), "{all_ports:?}");
    let banner = a.output();
    assert!(
        banner.contains(&format!("console: {}/", a.state.admin_url)),
        "{banner}"
    );
}
