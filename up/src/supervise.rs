//! The supervisor: starts the plan's processes (each through the launcher, so
//! it dies with `up`), waits until the system serves, streams the logs,
//! restarts a process that crashes, and stops everything in order when asked.
//!
//! Asked to stop means: SIGINT (Ctrl-C), SIGTERM (`just down`), SIGHUP (the
//! terminal closed), or stdout gone (`just up | tee log` and the `tee` ended).
//! Children have their own process group, so a Ctrl-C in the terminal reaches
//! only `up`, which stops the gateway first (letting requests finish), then
//! the apps (which deregister), then discovery.
//!
//! A child that exits with a failure or dies of a signal is restarted after a
//! capped, jittered backoff (reset once it has run for a while). One that exits
//! cleanly (status 0) was asked to stop by someone (an operator, `loadtest
//! --chaos discovery`), and stays stopped; if the state file then names a new
//! pid for it (the load test restarted it), `up` follows that process and
//! stops it at exit too.

use crate::launch::{self, Spec};
use crate::logs::Tail;
use crate::out::Out;
use crate::pids;
use crate::plan::{Plan, Service};
use crate::ports::Listening;
use crate::stop::{self, Member};
use shared::backoff::Backoff;
use shared::runstate::{Process, RunState};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First restart after about this long, doubling up to `RESTART_CAP`.
const RESTART_BASE: Duration = Duration::from_millis(500);
const RESTART_CAP: Duration = Duration::from_secs(30);
/// A process that ran this long before dying starts its backoff over.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How often the loop looks at children, logs, signals and stdout.
const TICK: Duration = Duration::from_millis(100);

/// Why `up` stops.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    Signal(usize),
    StdoutClosed,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Stop::Signal(n) if n == signal_hook::consts::SIGINT as usize => f.write_str("SIGINT"),
            Stop::Signal(n) if n == signal_hook::consts::SIGTERM as usize => f.write_str("SIGTERM"),
            Stop::Signal(n) if n == signal_hook::consts::SIGHUP as usize => f.write_str("SIGHUP"),
            Stop::Signal(n) => write!(f, "signal {n}"),
            Stop::StdoutClosed => f.write_str("stdout closed"),
        }
    }
}

/// One service and the process that runs it now.
struct Slot {
    service: Service,
    /// Its command line: ports learned from its log are written in, so a
    /// restart listens where the others (and the state file) expect it.
    argv: Vec<String>,
    /// The process `up` started, until it is reaped.
    child: Option<Child>,
    /// A process another tool started for this service, followed by pid.
    adopted: Option<u32>,
    /// The pid last recorded in the state file for this service.
    pid: u32,
    started: Instant,
    backoff: Backoff,
    restart_at: Option<Instant>,
}

impl Member for Slot {
    fn name(&self) -> &str {
        &self.service.name
    }

    fn pid(&mut self) -> Option<u32> {
        if let Some(child) = &mut self.child {
            match child.try_wait() {
                Ok(None) => return Some(child.id()),
                _ => self.child = None,
            }
        }
        match self.adopted {
            Some(pid) if pids::alive(pid) => Some(pid),
            _ => {
                self.adopted = None;
                None
            }
        }
    }
}

struct Supervisor {
    plan: Plan,
    state: RunState,
    /// Whether this run wrote the state file yet (before that, a file there is stale).
    written: bool,
    slots: Vec<Slot>,
    tail: Tail,
    out: Out,
    signalled: Arc<AtomicUsize>,
}

pub fn run(plan: Plan, ready_within: Duration) -> Result<(), String> {
    std::fs::create_dir_all(&plan.dir)
        .map_err(|e| format!("cannot create {}: {e}", plan.dir.display()))?;
    let made = match &plan.tls {
        Some(t) => {
            let made = crate::tls::ensure(&t.files)?;
            plan.write_configs()?;
            Some(made)
        }
        None => None,
    };
    let signalled = Arc::new(AtomicUsize::new(0));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        let number = usize::try_from(signal).unwrap_or(usize::MAX);
        signal_hook::flag::register_usize(signal, signalled.clone(), number)
            .map_err(|e| format!("cannot listen for signals: {e}"))?;
    }
    let mut sup = Supervisor {
        state: RunState {
            cwd: std::env::current_dir().unwrap_or_default(),
            registration_token: Some(plan.registration_token.clone()),
            ca_file: plan.tls.as_ref().map(|t| t.files.ca.clone()),
            up_pid: Some(std::process::id()),
            ..RunState::default()
        },
        plan,
        written: false,
        slots: Vec::new(),
        tail: Tail::new(crate::logs::colour()),
        out: Out::default(),
        signalled,
    };
    if let Err(e) = sup.start(ready_within) {
        sup.tail.poll(&mut sup.out);
        sup.stop_all();
        return Err(e);
    }
    announce(&sup.plan, made.as_ref(), &mut sup.out);
    let why = sup.watch();
    sup.out.line(format_args!(
        "\nup: stopping ({why}): the gateway, then the apps, then discovery"
    ));
    sup.stop_all();
    sup.tail.poll(&mut sup.out);
    sup.out.line("up: stopped");
    Ok(())
}

impl Supervisor {
    fn stop_requested(&mut self) -> Option<Stop> {
        match self.signalled.load(Ordering::Relaxed) {
            0 if self.out.closed() => Some(Stop::StdoutClosed),
            0 => None,
            n => Some(Stop::Signal(n)),
        }
    }

    /// Starts every service in order, each listening before the next starts
    /// (a port 0 learned from its log, a fixed one by connecting), then waits
    /// until the gateway routes to every app.
    fn start(&mut self, ready_within: Duration) -> Result<(), String> {
        for i in 0..self.plan.services.len() {
            let service = self.plan.services[i].clone();
            let mut slot = Slot {
                argv: service.argv(&self.plan.discovery_url),
                service,
                child: None,
                adopted: None,
                pid: 0,
                started: Instant::now(),
                backoff: Backoff::new(RESTART_BASE, RESTART_CAP),
                restart_at: None,
            };
            self.launch(&mut slot, false)?;
            self.tail.follow(&slot.service.name, &slot.service.log);
            self.slots.push(slot);
            let service = self.plan.services[i].clone();
            let whats: Vec<&str> = service.binds.iter().map(|b| b.what).collect();
            let mut found: Vec<Option<SocketAddr>> = service
                .binds
                .iter()
                .map(|b| (b.addr.port() != 0).then_some(b.addr))
                .collect();
            let mut log = Listening::new(&service.log);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                log.poll(&whats, &mut found);
                let fixed_up = service
                    .binds
                    .iter()
                    .all(|b| b.addr.port() == 0 || TcpStream::connect(b.addr).is_ok());
                if fixed_up && found.iter().all(Option::is_some) {
                    break;
                }
                self.died()?;
                self.tail.poll(&mut self.out);
                if let Some(why) = self.stop_requested() {
                    return Err(format!("stopped during start-up ({why})"));
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} did not start listening within 20s (see {})",
                        service.name,
                        service.log.display()
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if service.unresolved() {
                let addrs: Vec<SocketAddr> = found.into_iter().flatten().collect();
                self.learned(i, &addrs)?;
            }
        }
        let deadline = Instant::now() + ready_within;
        let want: Vec<String> = self.plan.apps.iter().map(ToString::to_string).collect();
        while !routes_to_all(&self.plan.admin_url, &want) {
            self.died()?;
            self.tail.poll(&mut self.out);
            if let Some(why) = self.stop_requested() {
                return Err(format!("stopped during start-up ({why})"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the gateway did not route to every app within {ready_within:?}"
                ));
            }
            std::thread::sleep(TICK);
        }
        self.tail.poll(&mut self.out);
        Ok(())
    }

    /// Service `i` reported where it listens: its ports go into the plan, its
    /// command line (for restarts) and the state file; a numbered app takes
    /// its port's name, its log file moving with it.
    fn learned(&mut self, i: usize, addrs: &[SocketAddr]) -> Result<(), String> {
        let old_name = self.plan.services[i].name.clone();
        let moved = self.plan.learned(i, addrs);
        // The gateway's TLS port is in its config: a restart must bind the one learned.
        self.plan.write_configs()?;
        let service = self.plan.services[i].clone();
        if let Some(old) = moved {
            // The child keeps writing to the same file under its new name.
            std::fs::rename(&old, &service.log).map_err(|e| {
                format!(
                    "cannot rename {} to {}: {e}",
                    old.display(),
                    service.log.display()
                )
            })?;
            self.tail.rename(&old_name, &service.name, &service.log);
        }
        let argv = service.argv(&self.plan.discovery_url);
        let Some(slot) = self.slots.get_mut(i) else {
            return Err(format!("no process for {}", service.name));
        };
        slot.service = service.clone();
        slot.argv = argv.clone();
        let pid = slot.pid;
        self.record(
            &service.name,
            Process {
                pid,
                argv,
                log: service.log.clone(),
            },
        )
    }

    /// Starts (or restarts) a slot's process and records its pid (once its
    /// ports are known: a child on port 0 is recorded when it reported them).
    fn launch(&mut self, slot: &mut Slot, restart: bool) -> Result<u32, String> {
        let s = &slot.service;
        let child = launch::spawn(&Spec {
            argv: &slot.argv,
            env: &s.env,
            log: &s.log,
            append: restart,
        })?;
        let pid = child.id();
        slot.child = Some(child);
        slot.adopted = None;
        slot.pid = pid;
        slot.started = Instant::now();
        if !s.unresolved() {
            self.record(
                &s.name,
                Process {
                    pid,
                    argv: slot.argv.clone(),
                    log: s.log.clone(),
                },
            )?;
        }
        Ok(pid)
    }

    /// Writes a process and the URLs known so far into the state file,
    /// keeping what others wrote since (`loadtest` records a discovery it restarted).
    fn record(&mut self, name: &str, process: Process) -> Result<(), String> {
        self.state.discovery_url = self.plan.discovery_url.clone();
        self.state.gateway_url = self.plan.gateway_url.clone();
        self.state.admin_url = self.plan.admin_url.clone();
        self.state.app_admin_urls = self.plan.app_admins.clone();
        self.state
            .processes
            .insert(name.to_string(), process.clone());
        let mut file = if self.written {
            RunState::load(&self.plan.state).unwrap_or_else(|_| self.state.clone())
        } else {
            self.state.clone()
        };
        file.discovery_url = self.state.discovery_url.clone();
        file.gateway_url = self.state.gateway_url.clone();
        file.admin_url = self.state.admin_url.clone();
        file.app_admin_urls = self.state.app_admin_urls.clone();
        file.ca_file.clone_from(&self.state.ca_file);
        file.processes.insert(name.to_string(), process);
        file.save(&self.plan.state)?;
        self.written = true;
        Ok(())
    }

    /// During start-up, any exit is fatal: it is a set-up problem, not a crash to ride out.
    fn died(&mut self) -> Result<(), String> {
        for slot in &mut self.slots {
            if let Some(Ok(Some(status))) = slot.child.as_mut().map(Child::try_wait) {
                let log = std::fs::read_to_string(&slot.service.log).unwrap_or_default();
                let taken = slot.service.binds.iter().find(|b| {
                    log.contains("in use") && log.contains(&format!(":{}", b.addr.port()))
                });
                let hint = match taken {
                    Some(b) if b.addr.port() != 0 => format!(
                        "\n{}",
                        crate::plan::port_taken(
                            b.addr.port(),
                            &slot.service.name,
                            b.flag,
                            "by the time it bound it"
                        )
                    ),
                    _ => String::new(),
                };
                return Err(format!(
                    "{} exited during start-up ({status}); its log is above{hint}",
                    slot.service.name
                ));
            }
        }
        Ok(())
    }

    /// The steady state: logs, crashed children, restarts; returns why it ends.
    fn watch(&mut self) -> Stop {
        loop {
            if let Some(why) = self.stop_requested() {
                return why;
            }
            self.tail.poll(&mut self.out);
            let recorded = RunState::load(&self.plan.state).ok();
            let mut slots = std::mem::take(&mut self.slots);
            for slot in &mut slots {
                self.tend(slot, recorded.as_ref());
            }
            self.slots = slots;
            std::thread::sleep(TICK);
        }
    }

    fn tend(&mut self, slot: &mut Slot, recorded: Option<&RunState>) {
        let name = slot.service.name.clone();
        let now = Instant::now();
        if let Some(Ok(Some(status))) = slot.child.as_mut().map(Child::try_wait) {
            slot.child = None;
            self.tail.poll(&mut self.out); // its last words first
            if status.success() {
                self.out.line(format_args!(
                    "up: {name} exited ({status}): it stopped cleanly, so something asked it to; not restarting it"
                ));
            } else {
                if slot.started.elapsed() >= STABLE_AFTER {
                    slot.backoff.reset();
                }
                let delay = slot.backoff.next_delay();
                self.out.line(format_args!(
                    "up: {name} exited ({status}), restarting in {:.1}s",
                    delay.as_secs_f64()
                ));
                slot.restart_at = Some(now + delay);
            }
        }
        if slot.restart_at.is_some_and(|at| now >= at) {
            slot.restart_at = None;
            match self.launch(slot, true) {
                Ok(pid) => self
                    .out
                    .line(format_args!("up: {name} restarted (pid {pid})")),
                Err(e) => {
                    let delay = slot.backoff.next_delay();
                    self.out.line(format_args!(
                        "up: cannot restart {name}: {e}; trying again in {:.1}s",
                        delay.as_secs_f64()
                    ));
                    slot.restart_at = Some(now + delay);
                }
            }
        }
        if slot.child.is_some() || slot.restart_at.is_some() {
            return;
        }
        if let Some(pid) = slot.adopted.filter(|p| !pids::alive(*p)) {
            slot.adopted = None;
            self.out.line(format_args!(
                "up: {name} (pid {pid}, started outside up) exited; not restarting it"
            ));
        }
        if let Some(pid) = adoptable(slot, recorded) {
            slot.adopted = Some(pid);
            slot.pid = pid;
            self.out.line(format_args!(
                "up: {name} runs again as pid {pid}, started outside up; up stops it at exit"
            ));
        }
    }

    fn stop_all(&mut self) {
        // Last look at the state file: a process another tool restarted is stopped too.
        let recorded = RunState::load(&self.plan.state).ok();
        for slot in &mut self.slots {
            if slot.child.is_none() && slot.adopted.is_none() {
                slot.adopted = adoptable(slot, recorded.as_ref());
            }
        }
        stop::in_order(&mut self.slots, stop::GRACE, &mut self.out);
        if self.written {
            let _ = std::fs::remove_file(&self.plan.state);
        }
    }
}

/// A live pid the state file records for this slot's service that is not the
/// one `up` knows, running the same program.
fn adoptable(slot: &Slot, recorded: Option<&RunState>) -> Option<u32> {
    let p = recorded?.processes.get(&slot.service.name)?;
    let program = &slot.service.program;
    (p.pid != slot.pid && pids::alive(p.pid) && pids::runs(p.pid, program)).then_some(p.pid)
}

/// Whether the gateway's ring holds every app, from its admin `/status`.
fn routes_to_all(admin_url: &str, apps: &[String]) -> bool {
    let Some(body) = get(admin_url, "/status") else {
        return false;
    };
    let Ok(status) = serde_json::from_str::<serde_json::Value>(&body) else {
        return false;
    };
    let members: Vec<&str> = status["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| n["members"].as_array().into_iter().flatten())
        .filter_map(|m| m["upstream"].as_str())
        .collect();
    apps.iter().all(|a| members.contains(&a.as_str()))
}

/// A blocking GET with `Connection: close`; the body, if it answered 200.
fn get(base: &str, path: &str) -> Option<String> {
    let host = base.strip_prefix("http://")?;
    let mut stream = TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

fn announce(plan: &Plan, made: Option<&crate::tls::Made>, out: &mut Out) {
    let scheme = if plan.services_tls() { "https" } else { "http" };
    let apps: Vec<String> = plan
        .apps
        .iter()
        .map(|a| format!("{scheme}://{a}"))
        .collect();
    let admins: Vec<String> = plan
        .apps
        .iter()
        .filter_map(|a| plan.app_admins.get(&a.to_string()))
        .cloned()
        .collect();
    out.line("");
    out.line(format_args!(
        "  discovery  {}        dashboard: {}/",
        plan.discovery_url, plan.discovery_url
    ));
    out.line(format_args!("  apps       {}", apps.join("  ")));
    out.line(format_args!(
        "  app admin  {}   (/chaos, /metrics; never registered)",
        admins.join("  ")
    ));
    out.line(format_args!(
        "  gateway    {}        console: {}/   admin: {}/status  {}/metrics",
        plan.gateway_url, plan.admin_url, plan.admin_url, plan.admin_url
    ));
    match &plan.tls {
        Some(t) => {
            out.line(format_args!(
                "             plain HTTP too: {} (the gateway always has its plain port)",
                plan.plain_url
            ));
            out.line("");
            let port = plan.gateway_url.rsplit(':').next().unwrap_or_default();
            out.line(format_args!(
                "  try:  curl -s --cacert {} https://localhost:{port}/api/example -d '{{\"hello\": \"tls\"}}'",
                t.files.ca.display()
            ));
            out.line("  load: just loadtest   (over HTTPS: the state file names the https URL and the CA)");
            out.line("");
            let how = match made {
                Some(crate::tls::Made::Reused) => "reused from an earlier run".to_string(),
                Some(crate::tls::Made::Replaced(why)) => format!("made anew ({why})"),
                Some(crate::tls::Made::New) | None => "made for this run".to_string(),
            };
            out.line(format_args!(
                "  TLS: a local CA and certificates for {} in {}, {how}",
                crate::tls::NAMES.join(", "),
                t.files.dir.display()
            ));
            out.line(
                "       everything over TLS: the gateway's client port, gateway to apps, apps and gateway to discovery, discovery's checks",
            );
        }
        None => {
            out.line("");
            out.line(format_args!(
                "  try:  curl -s {}/api/example -d '{{\"hello\": \"world\"}}'",
                plan.gateway_url
            ));
            out.line("  load: just loadtest");
        }
    }
    out.line("");
    out.line(format_args!(
        "  registration token: generated for this run, in {} (registration_token)",
        plan.state.display()
    ));
    out.line(format_args!(
        "  logs follow; Ctrl-C stops everything, as does `just down` elsewhere (state and logs in {})",
        plan.dir.display()
    ));
    out.line("");
}
