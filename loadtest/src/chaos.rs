//! The faults a run can inject, and the timeline of each, so the summary shows
//! not only how many requests failed across the fault (the goal: none) but
//! how long the system took to route around it and to take the instance back.
//!
//! - kill: an extra app instance of this run's own, SIGKILLed (no chance to
//!   deregister) and restarted on the same port;
//! - slow: a registered instance answering after 3 s, past the gateway's
//!   upstream timeout, through its `PUT /chaos` knob. The knob is on the
//!   app's admin port, which discovery never lists: the state file of `just
//!   up` names each app's admin URL; without one, the run starts an instance
//!   of its own (as kill does) and slows that. The instances are read from
//!   discovery's `/api/services`, over https trusting `discovery_ca` when
//!   discovery's URL is `https://`;
//! - discovery: the registry itself stopped and restarted from `just up`'s
//!   state file, while the gateway serves from its last ring.
//!
//! Instances this run starts are started as `up` starts its apps when the
//! state file lists a running one: with its arguments, so its config (under
//! `up --tls` with everything: HTTPS on the instance's port, discovery over
//! https with the CA and the apps' client certificate), on ports of their
//! own ([`Launch`]). They register with the token discovery may require:
//! `REGISTRATION_TOKEN` from this process's environment, else the state file's.

use crate::driver::Watched;
use crate::http::{call, get_json, get_json_with, Trust};
use crate::options::{Chaos, Options};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use serde_json::Value;
use shared::runstate::RunState;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The delay of a slow instance: past the shipped upstream timeout (2 s).
pub const SLOW_DELAY_MS: u64 = 3000;
/// How long the own app may take to listen, and to appear in the gateway's ring.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long a stopped process may take to exit before it is SIGKILLed.
const EXIT_WITHIN: Duration = Duration::from_secs(15);
/// How long after the load the gateway's watch may take to reconnect.
const RECONNECT_WITHIN: Duration = Duration::from_secs(15);
/// Poll interval of every wait here.
const POLL: Duration = Duration::from_millis(20);

/// When things happened, in seconds since the load started.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Timeline {
    /// The fault began (kill sent, delay set, discovery signalled).
    pub injected_s: Option<f64>,
    /// Discovery's process was gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_exited_s: Option<f64>,
    /// The last answer the instance served before the fault was lifted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_s: Option<f64>,
    /// The fault ended (instance restarted, delay cleared, discovery restarted).
    pub lifted_s: Option<f64>,
    /// The first answer the instance served after that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejoined_s: Option<f64>,
    /// The gateway's watch stream was connected again (discovery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_reconnected_s: Option<f64>,
}

/// What the summary shows of a fault.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ChaosReport {
    pub kind: String,
    /// What was hit: the instance's `host:port`, or discovery and its pid.
    pub target: String,
    pub timeline: Timeline,
    /// Failed requests from the injection until the instance rejoined (or the
    /// watch reconnected), or the end of the run if it never did.
    pub errors_during_fault: u64,
    /// Steps of the scenario that did not work; any fails the run.
    pub problems: Vec<String>,
}

impl ChaosReport {
    /// The window `errors_during_fault` counts, in seconds since start.
    pub fn window(&self, run_end_s: f64) -> Option<(f64, f64)> {
        let t = &self.timeline;
        let from = t.injected_s?;
        let to = t.rejoined_s.or(t.watch_reconnected_s).unwrap_or(run_end_s);
        Some((from, to.max(from)))
    }
}

/// A prepared fault: set up before the load starts, played during it.
pub struct Fault {
    scenario: Scenario,
    watched: Option<Arc<Watched>>,
    report: ChaosReport,
}

enum Scenario {
    Kill {
        app: OwnApp,
        launch: Launch,
        port: u16,
    },
    Slow {
        /// The instance slowed, `host:port` as registered.
        instance: String,
        /// `http://admin-host:port/chaos`.
        knob: String,
        lifted: bool,
        /// The instance this run started for it, when no admin URL was known.
        own: Option<OwnApp>,
    },
    Discovery {
        state_path: PathBuf,
        state: RunState,
        admin_url: String,
        namespace: String,
    },
}

/// Sets the fault up: kill starts its own instance and waits until the
/// gateway routes to it; slow picks an instance; discovery checks the state file.
pub async fn prepare(kind: Chaos, options: &Options) -> Result<Fault, String> {
    // Read whenever there is one: chaos kill and slow use it too.
    let state = RunState::load(&options.state).ok();
    let scenario = match kind {
        Chaos::Kill => {
            let launch = Launch::new(options, state.as_ref())?;
            let (app, addr, _) = start_own_app(&launch, options).await?;
            Scenario::Kill {
                app,
                launch,
                port: addr.port(),
            }
        }
        Chaos::Slow => {
            let trust = match &options.discovery_ca {
                Some(ca) if options.discovery_url.starts_with("https://") => Some(Trust::new(ca)?),
                _ => None,
            };
            let available =
                available(&options.discovery_url, &options.namespace, trust.as_ref()).await?;
            match knob_of_running(&available, state.as_ref()).await {
                Some((instance, knob)) => Scenario::Slow {
                    instance,
                    knob,
                    lifted: true,
                    own: None,
                },
                None => {
                    // No admin port known (no state file, or one from an older
                    // `up`): slow an instance of this run's own.
                    let launch = Launch::new(options, state.as_ref())?;
                    let (app, addr, admin) = start_own_app(&launch, options).await?;
                    Scenario::Slow {
                        instance: addr.to_string(),
                        knob: format!("http://{admin}/chaos"),
                        lifted: true,
                        own: Some(app),
                    }
                }
            }
        }
        Chaos::Discovery => {
            let state = RunState::load(&options.state)?;
            let Some(process) = state.processes.get("discovery") else {
                return Err(format!(
                    "{} lists no discovery process",
                    options.state.display()
                ));
            };
            if !alive(process.pid) {
                return Err(format!(
                    "discovery (pid {}, from {}) is not running",
                    process.pid,
                    options.state.display()
                ));
            }
            // A stale state file may name a pid the system has since given to another program.
            if !runs(process.pid, process.argv.first().map(String::as_str)) {
                return Err(format!(
                    "pid {} (from {}) is not the discovery it lists: is the state file stale?",
                    process.pid,
                    options.state.display()
                ));
            }
            watch_status(&options.admin_url, &options.namespace).await?;
            Scenario::Discovery {
                state_path: options.state.clone(),
                state,
                admin_url: options.admin_url.clone(),
                namespace: options.namespace.clone(),
            }
        }
    };
    let target = match &scenario {
        Scenario::Kill { port, .. } => format!("127.0.0.1:{port} (own app instance)"),
        Scenario::Slow {
            instance,
            own: Some(_),
            ..
        } => format!("{instance} (own app instance)"),
        Scenario::Slow { instance, .. } => instance.clone(),
        Scenario::Discovery {
            state, state_path, ..
        } => format!(
            "pid {} (from {})",
            state.processes.get("discovery").map_or(0, |p| p.pid),
            state_path.display()
        ),
    };
    let watched = match &scenario {
        Scenario::Kill { port, .. } => Some(Arc::new(Watched::new(format!("127.0.0.1:{port}")))),
        Scenario::Slow { instance, .. } => Some(Arc::new(Watched::new(instance.clone()))),
        Scenario::Discovery { .. } => None,
    };
    Ok(Fault {
        scenario,
        watched,
        report: ChaosReport {
            kind: kind.to_string(),
            target,
            ..ChaosReport::default()
        },
    })
}

impl Fault {
    /// The instance whose answers mark when it left and rejoined.
    pub fn watched(&self) -> Option<Arc<Watched>> {
        self.watched.clone()
    }

    /// Injects the fault at `start + at`, lifts it `lasting` later, and (for
    /// discovery) waits for the gateway's watch to reconnect.
    pub async fn play(&mut self, start: Instant, at: Duration, lasting: Duration, end: Instant) {
        let since = |t: Instant| Some(secs(t.saturating_duration_since(start)));
        sleep_until(start + at).await;
        let report = &mut self.report;
        match &mut self.scenario {
            Scenario::Kill { app, launch, port } => {
                app.kill();
                report.timeline.injected_s = since(Instant::now());
                sleep_until(start + at + lasting).await;
                let restarted = Instant::now();
                if let Some(w) = &self.watched {
                    w.lifted(restarted - start);
                }
                match restart_app(launch, *port).await {
                    Ok(new) => {
                        *app = new;
                        report.timeline.lifted_s = since(restarted);
                    }
                    Err(e) => report.problems.push(e),
                }
            }
            Scenario::Slow { knob, lifted, .. } => {
                let slow = format!("{{\"delay_ms\": {SLOW_DELAY_MS}}}");
                match set_knob(knob, &slow).await {
                    Ok(()) => {
                        *lifted = false;
                        report.timeline.injected_s = since(Instant::now());
                    }
                    Err(e) => report.problems.push(e),
                }
                sleep_until(start + at + lasting).await;
                if !*lifted {
                    match set_knob(knob, "{\"delay_ms\": 0}").await {
                        Ok(()) => {
                            *lifted = true;
                            let now = Instant::now();
                            if let Some(w) = &self.watched {
                                w.lifted(now - start);
                            }
                            report.timeline.lifted_s = since(now);
                        }
                        Err(e) => report.problems.push(e),
                    }
                }
            }
            Scenario::Discovery {
                state_path,
                state,
                admin_url,
                namespace,
            } => {
                let before = match watch_status(admin_url, namespace).await {
                    Ok((_, reconnects)) => reconnects,
                    Err(e) => {
                        report.problems.push(e);
                        return;
                    }
                };
                let pid = state.processes.get("discovery").map_or(0, |p| p.pid);
                if let Err(e) = signal(pid, Signal::SIGTERM) {
                    report.problems.push(format!("cannot stop discovery: {e}"));
                    return;
                }
                report.timeline.injected_s = since(Instant::now());
                match exited(pid).await {
                    Ok(at) => report.timeline.discovery_exited_s = since(at),
                    Err(e) => {
                        report.problems.push(e);
                        return;
                    }
                }
                sleep_until(start + at + lasting).await;
                match restart_discovery(state_path, state) {
                    Ok(()) => report.timeline.lifted_s = since(Instant::now()),
                    Err(e) => {
                        report.problems.push(e);
                        return;
                    }
                }
                match reconnected(admin_url, namespace, before, end + RECONNECT_WITHIN).await {
                    Ok(at) => report.timeline.watch_reconnected_s = since(at),
                    Err(e) => report.problems.push(e),
                }
            }
        }
    }

    /// Cleans up after the load (stops the own instance, lifts a fault left
    /// on) and gives the report, `errors_during_fault` still to be counted.
    pub async fn finish(mut self) -> ChaosReport {
        match &mut self.scenario {
            Scenario::Kill { app, .. } => {
                if let Err(e) = app.terminate().await {
                    self.report.problems.push(e);
                }
            }
            Scenario::Slow {
                knob, lifted, own, ..
            } => {
                if !*lifted {
                    if let Err(e) = set_knob(knob, "{\"delay_ms\": 0}").await {
                        self.report.problems.push(e);
                    }
                }
                if let Some(app) = own {
                    if let Err(e) = app.terminate().await {
                        self.report.problems.push(e);
                    }
                }
            }
            Scenario::Discovery { .. } => {}
        }
        if let Some(w) = &self.watched {
            self.report.timeline.left_s = w.left().map(secs);
            self.report.timeline.rejoined_s = w.rejoined().map(secs);
        }
        self.report
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

async fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        async_std::task::sleep(t - now).await;
    }
}

/// The `app` binary this run starts instances of (absolute: an instance
/// started as `up` started its apps runs in `up`'s folder).
fn app_bin(options: &Options) -> Result<PathBuf, String> {
    match &options.app_bin {
        Some(bin) if bin.is_relative() => std::env::current_dir()
            .map(|cwd| cwd.join(bin))
            .map_err(|e| format!("cannot tell the current folder: {e}")),
        Some(bin) => Ok(bin.clone()),
        None => beside_this_executable("app"),
    }
}

/// How this run starts an app instance of its own.
///
/// As `up` started its apps when the state file lists one still running:
/// with that app's arguments, which name its config (under `up --tls` with
/// everything, the copy with `tls`, `discovery_ca` and the client
/// certificate), in `up`'s folder; only the port, the admin port (any free
/// one), discovery's URL and `--chaos` are this run's. Else with those
/// flags alone, which cannot reach an `https://` discovery.
#[derive(Clone, Debug, PartialEq)]
struct Launch {
    bin: PathBuf,
    /// The listed app's arguments, less the ones this run sets.
    args: Vec<String>,
    /// `up`'s folder, which the listed arguments may be relative to.
    cwd: Option<PathBuf>,
    discovery_url: String,
    token: Option<String>,
}

/// The app's flags a [`Launch`] sets itself, each with its value.
const OWN_FLAGS: [&str; 3] = ["--port", "--admin-port", "--discovery-url"];

impl Launch {
    fn new(options: &Options, state: Option<&RunState>) -> Result<Launch, String> {
        let listed = state.and_then(|s| running_app(s).map(|args| (args, s.cwd.clone())));
        if listed.is_none() && options.discovery_url.starts_with("https://") {
            return Err(format!(
                "discovery at {} is https: an own app instance is started as `up` starts its \
                 apps (the command line of a running app in {}, naming a config that reaches \
                 discovery over TLS), and the state file lists none",
                options.discovery_url,
                options.state.display()
            ));
        }
        let (args, cwd) = match listed {
            Some((args, cwd)) => (args, Some(cwd).filter(|c| !c.as_os_str().is_empty())),
            None => (Vec::new(), None),
        };
        Ok(Launch {
            bin: app_bin(options)?,
            args,
            cwd,
            discovery_url: options.discovery_url.clone(),
            token: own_token(state),
        })
    }

    /// Its arguments for `port` (0: any free one).
    fn args(&self, port: u16) -> Vec<String> {
        let mut args = self.args.clone();
        args.extend([
            "--port".to_string(),
            port.to_string(),
            "--admin-port".to_string(),
            "0".to_string(),
            "--discovery-url".to_string(),
            self.discovery_url.clone(),
            "--chaos".to_string(),
        ]);
        args
    }
}

/// The arguments of the first app in the state file that still runs, less
/// the ones a [`Launch`] sets itself.
fn running_app(state: &RunState) -> Option<Vec<String>> {
    state.processes.values().find_map(|p| {
        let (program, args) = p.argv.split_first()?;
        let is_app = Path::new(program).file_name().is_some_and(|n| n == "app");
        (is_app && alive(p.pid) && runs(p.pid, Some(program))).then(|| without_own_flags(args))
    })
}

/// `args` without [`OWN_FLAGS`] (and their values, `--flag V` or
/// `--flag=V`) and without `--chaos` (`--chaos` or `--chaos=V`).
fn without_own_flags(args: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let name = arg.split_once('=').map_or(arg.as_str(), |(name, _)| name);
        if name == "--chaos" {
            continue;
        }
        if OWN_FLAGS.contains(&name) {
            if !arg.contains('=') {
                args.next();
            }
            continue;
        }
        kept.push(arg.clone());
    }
    kept
}

/// The token to hand an own instance: none when this process's environment
/// has one (the child inherits it), else the one `just up` ran with.
fn own_token(state: Option<&RunState>) -> Option<String> {
    if std::env::var_os("REGISTRATION_TOKEN").is_some_and(|t| !t.is_empty()) {
        return None;
    }
    state.and_then(|s| s.registration_token.clone())
}

/// Starts an own app instance and waits until the gateway routes to it; its
/// business and admin addresses.
async fn start_own_app(
    launch: &Launch,
    options: &Options,
) -> Result<(OwnApp, SocketAddr, SocketAddr), String> {
    let mut app = OwnApp::spawn(launch, 0)?;
    let (addr, admin) = app.listening(READY_WITHIN).await?;
    wait_in_ring(&options.admin_url, &options.namespace, &addr.to_string()).await?;
    Ok((app, addr, admin))
}

/// The first available instance whose admin URL the state file names and
/// whose knobs answer: its `host:port` and `/chaos` URL.
async fn knob_of_running(
    available: &[String],
    state: Option<&RunState>,
) -> Option<(String, String)> {
    let admin_urls = &state?.app_admin_urls;
    for instance in available {
        let Some(admin) = admin_urls.get(instance) else {
            continue;
        };
        let knob = format!("{}/chaos", admin.trim_end_matches('/'));
        match call("GET", &knob, None).await {
            Ok((200, _)) => return Some((instance.clone(), knob)),
            // Without --chaos, or a stale file: try the next one.
            Ok(_) | Err(_) => continue,
        }
    }
    None
}

/// A sibling binary of the running executable (where cargo builds them all).
fn beside_this_executable(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot tell where I run from: {e}"))?;
    let bin = exe
        .parent()
        .map(|dir| dir.join(name))
        .ok_or_else(|| format!("{} has no folder", exe.display()))?;
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: build it first (cargo build --release -p {name})",
            bin.display()
        ))
    }
}

/// An app instance this run started, with its last output lines.
struct OwnApp {
    child: Option<Child>,
    output: Arc<Mutex<Output>>,
}

#[derive(Default)]
struct Output {
    listening: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    last: VecDeque<String>,
}

impl OwnApp {
    /// `app [up's arguments] --port PORT --admin-port 0 --discovery-url URL
    /// --chaos` ([`Launch`]; the admin port is read from its log), its output
    /// read by two threads. The token goes in its environment, never on its
    /// command line.
    fn spawn(launch: &Launch, port: u16) -> Result<OwnApp, String> {
        let bin = &launch.bin;
        let mut command = Command::new(bin);
        command
            .args(launch.args(port))
            // The "listening" lines are logged at info.
            .env("LOG_LEVEL", "info");
        if let Some(cwd) = &launch.cwd {
            command.current_dir(cwd);
        }
        if let Some(token) = &launch.token {
            command.env("REGISTRATION_TOKEN", token);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let output = Arc::new(Mutex::new(Output::default()));
        let pipes: [Option<Box<dyn std::io::Read + Send>>; 2] = [
            child.stdout.take().map(|p| Box::new(p) as _),
            child.stderr.take().map(|p| Box::new(p) as _),
        ];
        for pipe in pipes.into_iter().flatten() {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let line = shared::logging::strip_ansi(&line);
                    let mut out = match output.lock() {
                        Ok(out) => out,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                    if out.listening.is_none() {
                        out.listening = listening_addr(&line, BUSINESS_LINE);
                    }
                    if out.admin.is_none() {
                        out.admin = listening_addr(&line, ADMIN_LINE);
                    }
                    if out.last.len() == 20 {
                        out.last.pop_front();
                    }
                    out.last.push_back(line);
                }
            });
        }
        Ok(OwnApp {
            child: Some(child),
            output,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Output> {
        match self.output.lock() {
            Ok(out) => out,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The business and admin addresses it prints once it listens; an error
    /// if it exits first.
    async fn listening(&mut self, limit: Duration) -> Result<(SocketAddr, SocketAddr), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let (Some(addr), Some(admin)) = {
                let out = self.lock();
                (out.listening, out.admin)
            } {
                return Ok((addr, admin));
            }
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            if exited.is_some() || Instant::now() > deadline {
                // Its pipes close with it: give the readers a moment for the last lines.
                async_std::task::sleep(Duration::from_millis(50)).await;
                let why = exited.unwrap_or_else(|| format!("not listening within {limit:?}"));
                let last: Vec<String> = self.lock().last.iter().cloned().collect();
                return Err(format!(
                    "the app instance failed to start ({why}); it printed:\n{}",
                    last.join("\n")
                ));
            }
            async_std::task::sleep(POLL).await;
        }
    }

    /// SIGKILL: no chance to deregister or drain.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `EXIT_WITHIN`.
    async fn terminate(&mut self) -> Result<(), String> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        signal(child.id(), Signal::SIGTERM)?;
        let deadline = Instant::now() + EXIT_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return Ok(());
            }
            async_std::task::sleep(POLL).await;
        }
        self.kill();
        Err(format!(
            "the own app instance did not exit within {EXIT_WITHIN:?} of SIGTERM: killed"
        ))
    }
}

impl Drop for OwnApp {
    /// Never leave the instance behind, even when the run is cut short.
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the app again on its port; retries while the port is not free yet.
async fn restart_app(launch: &Launch, port: u16) -> Result<OwnApp, String> {
    let mut last = String::new();
    for _ in 0..5 {
        let mut app = OwnApp::spawn(launch, port)?;
        match app.listening(READY_WITHIN).await {
            Ok(_) => return Ok(app),
            Err(e) => last = e,
        }
        async_std::task::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("cannot restart the app on port {port}: {last}"))
}

/// What the app logs once its business port listens (then `http://ADDR`,
/// or `https://ADDR` with its `tls` key).
const BUSINESS_LINE: &str = "app listening on ";
/// What the app logs once its admin port listens (always plain).
const ADMIN_LINE: &str = "app admin listening on ";

/// `ADDR` from a `<needle>http://ADDR` or `<needle>https://ADDR` line,
/// pretty or ndjson.
fn listening_addr(line: &str, needle: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(needle)? + needle.len()..];
    let rest = rest
        .strip_prefix("http://")
        .or_else(|| rest.strip_prefix("https://"))?;
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

/// Waits until the gateway routes `namespace` to `member` too.
async fn wait_in_ring(admin_url: &str, namespace: &str, member: &str) -> Result<(), String> {
    let deadline = Instant::now() + READY_WITHIN;
    let url = format!("{admin_url}/status");
    loop {
        let last = match get_json(&url).await {
            Ok(status) => {
                let members = shared::wire::ring_members(&status, namespace);
                if members.iter().any(|m| m == member) {
                    return Ok(());
                }
                format!("ring is {members:?}")
            }
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(format!(
                "the gateway did not route to {member} within {READY_WITHIN:?} ({last})"
            ));
        }
        async_std::task::sleep(POLL).await;
    }
}

/// The available instances of `namespace`, as `host:port`; at least one.
/// Discovery over https with `trust`.
async fn available(
    discovery_url: &str,
    namespace: &str,
    trust: Option<&Trust>,
) -> Result<Vec<String>, String> {
    let services = get_json_with(&format!("{discovery_url}/api/services"), trust).await?;
    let found: Vec<String> = services[namespace]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["status"] == "available")
        .filter_map(|i| {
            let host = i["host"].as_str()?;
            let port = match &i["port"] {
                Value::String(p) => p.parse().ok()?,
                Value::Number(p) => u16::try_from(p.as_u64()?).ok()?,
                _ => return None,
            };
            Some(shared::wire::authority(host, shared::wire::Port(port)))
        })
        .collect();
    if found.is_empty() {
        return Err(format!(
            "discovery lists no available instance of {namespace:?}"
        ));
    }
    Ok(found)
}

async fn set_knob(knob: &str, body: &str) -> Result<(), String> {
    match call("PUT", knob, Some(body)).await? {
        (200, _) => Ok(()),
        (status, answer) => Err(format!("PUT {knob} {body}: {status} {answer}")),
    }
}

/// The state of the gateway's watch stream for `namespace` and its reconnect count.
async fn watch_status(admin_url: &str, namespace: &str) -> Result<(String, u64), String> {
    let status = get_json(&format!("{admin_url}/status")).await?;
    status["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["namespace"] == namespace)
        .map(|n| {
            (
                n["watch"]["state"].as_str().unwrap_or_default().to_string(),
                n["watch"]["reconnects"].as_u64().unwrap_or(0),
            )
        })
        .ok_or_else(|| format!("the gateway's /status has no namespace {namespace:?}"))
}

/// When the watch is connected again after more than `before` reconnects.
async fn reconnected(
    admin_url: &str,
    namespace: &str,
    before: u64,
    deadline: Instant,
) -> Result<Instant, String> {
    loop {
        if let Ok((state, reconnects)) = watch_status(admin_url, namespace).await {
            if state == "connected" && reconnects > before {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the gateway's watch of {namespace:?} did not reconnect in time"
            ));
        }
        async_std::task::sleep(POLL).await;
    }
}

fn signal(pid: u32, signal: Signal) -> Result<(), String> {
    let raw = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    kill(Pid::from_raw(raw), signal).map_err(|e| format!("{signal} to pid {pid}: {e}"))
}

/// Whether `pid` is a live process (a zombie, exited but not yet reaped by
/// its parent, counts as gone).
fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Whether `pid` runs the program `program` (compared by file name).
fn runs(pid: u32, program: Option<&str>) -> bool {
    let Some(want) = program.and_then(|p| Path::new(p).file_name()) else {
        return false;
    };
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|cmdline| {
            let first = cmdline.split(|b| *b == 0).next()?.to_vec();
            let first = String::from_utf8(first).ok()?;
            Path::new(&first).file_name().map(|name| name == want)
        })
        .unwrap_or(false)
}

/// Waits for `pid` to exit, SIGKILLing it after `EXIT_WITHIN`; when it was gone.
async fn exited(pid: u32) -> Result<Instant, String> {
    let deadline = Instant::now() + EXIT_WITHIN;
    let mut killed = false;
    loop {
        if !alive(pid) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            if killed {
                return Err(format!(
                    "discovery (pid {pid}) did not exit, even on SIGKILL"
                ));
            }
            signal(pid, Signal::SIGKILL)?;
            killed = true;
        }
        async_std::task::sleep(POLL).await;
    }
}

/// Starts discovery again as `just up` did (same argv, cwd and log, in its own
/// process group so it outlives this run) and records its new pid.
fn restart_discovery(state_path: &Path, state: &mut RunState) -> Result<(), String> {
    let Some(process) = state.processes.get("discovery").cloned() else {
        return Err("the state file lists no discovery".into());
    };
    let Some((program, args)) = process.argv.split_first() else {
        return Err("the state file has no command line for discovery".into());
    };
    let in_cwd = |p: &Path| {
        if p.is_relative() {
            state.cwd.join(p)
        } else {
            p.to_path_buf()
        }
    };
    let program = if program.contains('/') {
        in_cwd(Path::new(program))
    } else {
        PathBuf::from(program)
    };
    let log_path = in_cwd(&process.log);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let log_too = log
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let mut command = Command::new(&program);
    // The token travels in the environment, as `up` passes it, never in argv.
    if let Some(token) = &state.registration_token {
        command.env("DISCOVERY_REGISTRATION_TOKEN", token);
    }
    let child = command
        .args(args)
        .current_dir(&state.cwd)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_too)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot restart {}: {e}", program.display()))?;
    let pid = child.id();
    // Not waited for: it belongs to the system now, not to this run.
    drop(child);
    // Reread the file: `up` may have written it since.
    let mut fresh = RunState::load(state_path).unwrap_or_else(|_| state.clone());
    if let Some(p) = fresh.processes.get_mut("discovery") {
        p.pid = pid;
    }
    if let Some(p) = state.processes.get_mut("discovery") {
        p.pid = pid;
    }
    fresh.save(state_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_address_is_read_from_pretty_and_ndjson_logs() {
        let pretty = "\u{1b}[32minfo\u{1b}[0m app listening on http://127.0.0.1:41234";
        assert_eq!(
            listening_addr(&shared::logging::strip_ansi(pretty), BUSINESS_LINE),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        let ndjson =
            r#"{"level":30,"msg":"app listening on http://[::1]:8080","addr":"[::1]:8080"}"#;
        assert_eq!(
            listening_addr(ndjson, BUSINESS_LINE),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(
            listening_addr("gateway listening on http://1.2.3.4:5", BUSINESS_LINE),
            None
        );
        let tls = "app listening on https://127.0.0.1:41235";
        assert_eq!(
            listening_addr(tls, BUSINESS_LINE),
            Some("127.0.0.1:41235".parse().unwrap())
        );
        assert_eq!(listening_addr(tls, ADMIN_LINE), None);
        assert_eq!(
            listening_addr("app listening on ftp://127.0.0.1:1", BUSINESS_LINE),
            None
        );
        let admin = "app admin listening on http://127.0.0.1:9 (chaos knobs, metrics)";
        assert_eq!(listening_addr(admin, BUSINESS_LINE), None);
        assert_eq!(
            listening_addr(admin, ADMIN_LINE),
            Some("127.0.0.1:9".parse().unwrap())
        );
    }

    #[test]
    fn an_own_instance_takes_ups_arguments_with_ports_discovery_and_chaos_of_its_own() {
        let up = [
            "--config",
            "/state/config/app.json",
            "--port",
            "8080",
            "--admin-port=8180",
            "--discovery-url",
            "https://127.0.0.1:8500",
            "--chaos",
            "--namespace",
            "service A",
        ]
        .map(String::from);
        let kept = without_own_flags(&up);
        assert_eq!(
            kept,
            [
                "--config",
                "/state/config/app.json",
                "--namespace",
                "service A"
            ]
        );
        let launch = Launch {
            bin: "/bin/app".into(),
            args: kept,
            cwd: Some("/state".into()),
            discovery_url: "https://localhost:9500".into(),
            token: None,
        };
        assert_eq!(
            launch.args(41000),
            [
                "--config",
                "/state/config/app.json",
                "--namespace",
                "service A",
                "--port",
                "41000",
                "--admin-port",
                "0",
                "--discovery-url",
                "https://localhost:9500",
                "--chaos"
            ]
        );
        assert!(without_own_flags(&["--chaos=false".to_string()]).is_empty());
    }

    #[test]
    fn without_a_running_app_listed_an_https_discovery_cannot_take_an_own_instance() {
        let state = RunState {
            processes: [(
                "app-8080".to_string(),
                shared::runstate::Process {
                    // Not running: its command line is not used.
                    pid: u32::MAX,
                    argv: vec!["/bin/app".into(), "--config".into(), "app.json".into()],
                    log: "app-8080.log".into(),
                },
            )]
            .into(),
            ..RunState::default()
        };
        assert_eq!(running_app(&state), None);
        let mut options = Options {
            app_bin: Some("/bin/app".into()),
            ..Options::default()
        };
        let plain = Launch::new(&options, Some(&state)).unwrap();
        assert!(plain.args.is_empty() && plain.cwd.is_none());
        assert_eq!(plain.args(0)[..2], ["--port", "0"]);
        options.discovery_url = "https://127.0.0.1:8500".into();
        let err = Launch::new(&options, Some(&state)).unwrap_err();
        assert!(err.contains("lists none"), "{err}");
    }

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(alive(std::process::id()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!alive(pid));
    }

    #[test]
    fn a_pid_is_checked_against_the_program_it_should_run() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        // The kernel sets the new command line a moment after spawn returns.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !runs(child.id(), Some("/usr/bin/sleep")) {
            assert!(Instant::now() < deadline, "sleep never showed as running");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(runs(child.id(), Some("sleep")));
        assert!(!runs(child.id(), Some("/work/target/release/discovery")));
        assert!(!runs(child.id(), None));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn the_fault_window_runs_from_injection_to_rejoining() {
        let mut r = ChaosReport::default();
        assert_eq!(r.window(10.0), None);
        r.timeline.injected_s = Some(3.0);
        assert_eq!(r.window(10.0), Some((3.0, 10.0)));
        r.timeline.rejoined_s = Some(6.5);
        assert_eq!(r.window(10.0), Some((3.0, 6.5)));
    }
}
