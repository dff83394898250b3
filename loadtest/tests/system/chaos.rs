//! The three faults against a real system: no failed request across any of
//! them, and a timeline that tells when the instance left and came back.

use crate::common::{exclusive, members, System};
use loadtest::{Chaos, Options};
use shared::runstate::{Process, RunState};
use std::time::Duration;
use testkit::procs::Proc;
use testkit::system::{apps, gateway_config, wait_ring};
use testkit::tempdir::TempDir;

#[async_std::test]
async fn a_slow_instance_is_routed_around_without_errors() {
    let _one = exclusive().await;
    let system = System::start(|c| c.upstream_timeout = Duration::from_millis(500)).await;
    // The knobs are on the apps' admin ports, which the state file names.
    let state = system.write_state("slow");
    let options = Options {
        chaos: Some(Chaos::Slow),
        chaos_at: Some(Duration::from_secs(1)),
        chaos_for: Some(Duration::from_millis(1500)),
        state: state.to_path_buf(),
        ..system.options(Duration::from_secs(4))
    };
    let summary = loadtest::run(options).await.unwrap();
    println!("{summary}");
    assert!(summary.passed, "{summary}");
    assert_eq!(summary.failed, 0, "{summary}");
    let chaos = summary.chaos.as_ref().unwrap();
    assert_eq!(chaos.kind, "slow");
    assert!(chaos.problems.is_empty(), "{:?}", chaos.problems);
    assert_eq!(chaos.errors_during_fault, 0);
    assert!(members(&system.apps).contains(&chaos.target), "{summary}");
    let t = &chaos.timeline;
    let injected = t.injected_s.unwrap();
    let left = t.left_s.unwrap();
    let lifted = t.lifted_s.unwrap();
    let rejoined = t.rejoined_s.unwrap();
    assert!((0.95..1.5).contains(&injected), "{summary}");
    // Its answers stop around the injection (those already under way still arrive)...
    assert!(left > 0.5 && left < injected + 0.5, "{summary}");
    assert!((2.45..3.0).contains(&lifted), "{summary}");
    // ... and start again once the health check passes and the ring takes it back.
    assert!(rejoined > lifted && rejoined < 4.0, "{summary}");
    // The instance is fast again afterwards.
    let app = system
        .apps
        .iter()
        .find(|a| a.served_by() == chaos.target)
        .unwrap();
    let (status, knobs) = testkit::client::get(&format!("{}/chaos", app.admin_url())).await;
    assert_eq!((status, knobs["delay_ms"].as_u64()), (200, Some(0)));
    system.stop().await;
}

#[async_std::test]
async fn without_admin_urls_slow_chaos_slows_an_instance_of_its_own() {
    let _one = exclusive().await;
    // Discovery wants a token: the own instance gets it from the state file.
    let token = "loadtest-own-instance-token";
    let system = System::start_with_token(Some(token), |c| {
        c.upstream_timeout = Duration::from_millis(500)
    })
    .await;
    let state = system.write_state_with("own-slow", |s| {
        s.app_admin_urls.clear();
        s.registration_token = Some(token.into());
    });
    let options = Options {
        chaos: Some(Chaos::Slow),
        chaos_at: Some(Duration::from_secs(1)),
        chaos_for: Some(Duration::from_millis(1500)),
        app_bin: Some(testkit::procs::bin("app")),
        state: state.to_path_buf(),
        ..system.options(Duration::from_secs(4))
    };
    let summary = loadtest::run(options).await.unwrap();
    println!("{summary}");
    assert!(summary.passed, "{summary}");
    let chaos = summary.chaos.as_ref().unwrap();
    assert!(chaos.problems.is_empty(), "{:?}", chaos.problems);
    assert_eq!(chaos.errors_during_fault, 0);
    let own = chaos.target.split_whitespace().next().unwrap().to_string();
    assert!(chaos.target.ends_with("(own app instance)"), "{summary}");
    assert!(!members(&system.apps).contains(&own), "{summary}");
    let t = &chaos.timeline;
    assert!(t.injected_s.is_some() && t.lifted_s.is_some(), "{summary}");
    assert!(t.rejoined_s.unwrap() > t.lifted_s.unwrap(), "{summary}");
    // Stopped at the end: it deregistered and left the ring.
    wait_ring(
        &system.gateway.admin_url(),
        &members(&system.apps),
        Duration::from_secs(5),
    )
    .await;
    system.stop().await;
}

#[async_std::test]
async fn a_killed_instance_costs_no_request_and_comes_back_on_its_port() {
    let _one = exclusive().await;
    let system = System::start(|_| {}).await;
    let options = Options {
        chaos: Some(Chaos::Kill),
        chaos_at: Some(Duration::from_secs(1)),
        chaos_for: Some(Duration::from_secs(1)),
        app_bin: Some(testkit::procs::bin("app")),
        ..system.options(Duration::from_secs(4))
    };
    let summary = loadtest::run(options).await.unwrap();
    println!("{summary}");
    assert!(summary.passed, "{summary}");
    let chaos = summary.chaos.as_ref().unwrap();
    assert_eq!(chaos.errors_during_fault, 0);
    let own = chaos.target.split_whitespace().next().unwrap().to_string();
    // The own instance took part: four instances in the spread.
    assert_eq!(summary.spread.instances.len(), 4, "{summary}");
    assert!(
        summary.spread.instances.iter().any(|s| s.instance == own),
        "{summary}"
    );
    let t = &chaos.timeline;
    let (injected, left) = (t.injected_s.unwrap(), t.left_s.unwrap());
    let (lifted, rejoined) = (t.lifted_s.unwrap(), t.rejoined_s.unwrap());
    assert!(left <= injected + 0.1 && left > 0.5, "{summary}");
    assert!((1.95..2.5).contains(&lifted), "{summary}");
    assert!(rejoined > lifted && rejoined < 4.0, "{summary}");
    // Stopped at the end: it deregistered and left the ring.
    wait_ring(
        &system.gateway.admin_url(),
        &members(&system.apps),
        Duration::from_secs(5),
    )
    .await;
    system.stop().await;
}

#[async_std::test]
async fn the_gateway_serves_through_a_discovery_restart() {
    let _one = exclusive().await;
    // Discovery as a process on a fixed port, listed in a state file as `just up` writes it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Declared before the discovery processes: removed after they stop, also on a failure.
    let dir = TempDir::new("loadtest-chaos");
    let config = dir.join("discovery.json");
    std::fs::write(
        &config,
        r#"{"health_check_time_interval": "200ms", "timeout_threshold": "100ms"}"#,
    )
    .unwrap();
    let listen = format!("127.0.0.1:{port}");
    let argv: Vec<String> = vec![
        testkit::procs::bin("discovery").display().to_string(),
        "--config".into(),
        config.display().to_string(),
        "--listen".into(),
        listen.clone(),
    ];
    let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    let first = Proc::start("discovery", &args);
    assert_eq!(first.listening("discovery").await.port(), port);
    let url = format!("http://{listen}");
    let apps = apps(&url, 3).await;
    let gateway = gateway::spawn(gateway_config(&url)).await.unwrap();
    wait_ring(
        &gateway.admin_url(),
        &members(&apps),
        Duration::from_secs(5),
    )
    .await;
    let state_path = dir.join("state.json");
    let mut state = RunState {
        discovery_url: url.clone(),
        gateway_url: gateway.url(),
        admin_url: gateway.admin_url(),
        cwd: dir.to_path_buf(),
        ..RunState::default()
    };
    state.processes.insert(
        "discovery".into(),
        Process {
            pid: first.pid(),
            argv,
            log: "discovery.log".into(),
        },
    );
    state.save(&state_path).unwrap();

    let options = Options {
        url: gateway.url(),
        admin_url: gateway.admin_url(),
        discovery_url: url.clone(),
        state: state_path.clone(),
        duration: Duration::from_secs(4),
        connections: 16,
        chaos: Some(Chaos::Discovery),
        chaos_at: Some(Duration::from_secs(1)),
        chaos_for: Some(Duration::from_secs(1)),
        ..Options::default()
    };
    let summary = loadtest::run(options).await;
    // Whatever happened, the restarted discovery (its pid is in the state file now) is stopped.
    let new_pid = RunState::load(&state_path).unwrap().processes["discovery"].pid;
    let restarted_discovery = StopOnDrop(new_pid);
    let summary = summary.unwrap();
    println!("{summary}");
    assert!(summary.passed, "{summary}");
    assert_ne!(new_pid, first.pid(), "the new pid is written back");
    let chaos = summary.chaos.as_ref().unwrap();
    assert_eq!(chaos.errors_during_fault, 0);
    let t = &chaos.timeline;
    let (injected, exited) = (t.injected_s.unwrap(), t.discovery_exited_s.unwrap());
    let (restarted, reconnected) = (t.lifted_s.unwrap(), t.watch_reconnected_s.unwrap());
    assert!(injected < exited && exited < restarted, "{summary}");
    assert!((1.95..2.5).contains(&restarted), "{summary}");
    assert!(reconnected > restarted, "{summary}");
    // The restarted discovery serves, and wrote to the log named in the state file.
    let (status, _) = testkit::client::get(&format!("{url}/health_check")).await;
    assert_eq!(status, 200);
    assert!(dir.join("discovery.log").exists());
    gateway.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
    drop(restarted_discovery);
    drop(first);
}

/// SIGTERMs a process this test did not start as a child (the restarted discovery).
struct StopOnDrop(u32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let _ = kill(nix::unistd::Pid::from_raw(self.0 as i32), Signal::SIGTERM);
    }
}
