//! Starts the plan's processes, waits until the system serves, streams the
//! logs, and stops everything by pid on Ctrl-C or SIGTERM.
//!
//! Children get their own process group, so a Ctrl-C in the terminal reaches
//! only `up`, which then stops the gateway first (letting requests finish),
//! then the apps (which deregister), then discovery.

use crate::logs::Tail;
use crate::plan::Plan;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shared::runstate::{Process, RunState};
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether a process with this pid exists (a zombie child counts: use try_wait for those).
pub fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| kill(Pid::from_raw(pid), None).is_ok())
}

struct Running {
    name: String,
    child: Child,
    exited: bool,
}

pub fn run(plan: &Plan, ready_within: Duration) -> Result<(), String> {
    std::fs::create_dir_all(&plan.dir)
        .map_err(|e| format!("cannot create {}: {e}", plan.dir.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("cannot listen for signals: {e}"))?;
    }
    let mut state = RunState {
        discovery_url: plan.discovery_url.clone(),
        gateway_url: plan.gateway_url.clone(),
        admin_url: plan.admin_url.clone(),
        cwd: std::env::current_dir().unwrap_or_default(),
        processes: Default::default(),
    };
    let mut running = Vec::new();
    let mut tail = Tail::new(crate::logs::colour());
    let started = start_all(
        plan,
        &mut state,
        &mut running,
        &mut tail,
        &stop,
        ready_within,
    );
    if let Err(e) = started {
        tail.poll();
        stop_all(&plan.state, &mut running);
        return Err(e);
    }
    announce(plan);
    while !stop.load(Ordering::Relaxed) {
        tail.poll();
        for r in running.iter_mut().filter(|r| !r.exited) {
            if let Ok(Some(status)) = r.child.try_wait() {
                r.exited = true;
                println!("up: {} exited ({status})", r.name);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("\nup: stopping every process");
    stop_all(&plan.state, &mut running);
    tail.poll();
    println!("up: stopped");
    Ok(())
}

fn start_all(
    plan: &Plan,
    state: &mut RunState,
    running: &mut Vec<Running>,
    tail: &mut Tail,
    stop: &AtomicBool,
    ready_within: Duration,
) -> Result<(), String> {
    for service in &plan.services {
        let log = File::create(&service.log)
            .map_err(|e| format!("cannot create {}: {e}", service.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&service.argv[0])
            .args(&service.argv[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", service.argv[0]))?;
        state.processes.insert(
            service.name.clone(),
            Process {
                pid: child.id(),
                argv: service.argv.clone(),
                log: service.log.clone(),
            },
        );
        state.save(&plan.state)?;
        tail.follow(&service.name, &service.log);
        running.push(Running {
            name: service.name.clone(),
            child,
            exited: false,
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !service.binds.iter().all(|a| TcpStream::connect(a).is_ok()) {
            died(running)?;
            tail.poll();
            if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                return Err(format!(
                    "{} did not start listening (see {})",
                    service.name,
                    service.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let deadline = Instant::now() + ready_within;
    let want: Vec<String> = plan.apps.iter().map(ToString::to_string).collect();
    while !routes_to_all(&plan.admin_url, &want) {
        died(running)?;
        tail.poll();
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return Err(format!(
                "the gateway did not route to every app within {ready_within:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tail.poll();
    Ok(())
}

fn died(running: &mut [Running]) -> Result<(), String> {
    for r in running.iter_mut() {
        if let Ok(Some(status)) = r.child.try_wait() {
            return Err(format!(
                "{} exited during start-up ({status}); its log is above",
                r.name
            ));
        }
    }
    Ok(())
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

fn announce(plan: &Plan) {
    let apps: Vec<String> = plan.apps.iter().map(|a| format!("http://{a}")).collect();
    println!();
    println!(
        "  discovery  {}        dashboard: {}/",
        plan.discovery_url, plan.discovery_url
    );
    println!("  apps       {}", apps.join("  "));
    println!(
        "  gateway    {}        admin: {}/status  {}/metrics",
        plan.gateway_url, plan.admin_url, plan.admin_url
    );
    println!();
    println!(
        "  try:  curl -s {}/api/example -d '{{\"hello\": \"world\"}}'",
        plan.gateway_url
    );
    println!("  load: just loadtest");
    println!();
    println!(
        "  logs follow; Ctrl-C stops everything (state and logs in {})",
        plan.dir.display()
    );
    println!();
}

/// SIGTERM to every process in the state file (a restarted one included), the
/// gateway first, discovery last; SIGKILL for whatever is left after 10 s.
fn stop_all(state_path: &std::path::Path, running: &mut [Running]) {
    let state = RunState::load(state_path).unwrap_or_default();
    let mut order: Vec<(&String, &Process)> = state.processes.iter().collect();
    order.sort_by_key(|(name, _)| match name.as_str() {
        "gateway" => 0,
        "discovery" => 2,
        _ => 1,
    });
    for (_, p) in &order {
        signal(p.pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for r in running.iter_mut() {
            if let Ok(Some(_)) = r.child.try_wait() {
                r.exited = true;
            }
        }
        let ours_left = running.iter().any(|r| !r.exited);
        let others_left = order
            .iter()
            .filter(|(_, p)| !running.iter().any(|r| r.child.id() == p.pid))
            .any(|(_, p)| alive(p.pid));
        if !ours_left && !others_left {
            break;
        }
        if Instant::now() > deadline {
            for (name, p) in &order {
                if alive(p.pid) {
                    println!("up: {name} did not stop in time: killing it");
                    signal(p.pid, Signal::SIGKILL);
                }
            }
            for r in running.iter_mut() {
                let _ = r.child.wait();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(state_path);
}

fn signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}
