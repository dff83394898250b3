//! `loadtest [--duration 10s] [--connections 64 | --rate R] [--chaos kill|slow|discovery] ...`:
//! POST load through the running system's gateway; exits non-zero if any
//! request failed, so it can gate CI. `loadtest --idempotency`: each keyed
//! POST sent several times, each key checked to run exactly once.

use clap::Parser;
use loadtest::options::Endpoints;
use loadtest::{Chaos, Options};
use shared::config::parse_duration;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// JSON POST load through the gateway, every echo checked, with latency
/// percentiles, the spread over instances and optional faults.
#[derive(Parser)]
#[command(
    version,
    after_help = "Exit status: 0 if every request was answered 200 with its exact echo, \
                  1 if any failed or mismatched (or a chaos step did not work; with \
                  --idempotency: a key not run exactly once or a replay not identical), 2 if \
                  the run could not start (with --idempotency: the route does not honour keys)."
)]
struct Flags {
    /// How long to send: 10s, 500ms, 2m or bare seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Keep-alive connections (closed loop: requests in flight).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Open loop: requests per second in total, latency from the intended send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Bytes of every JSON body.
    #[arg(long, default_value_t = 256)]
    body_size: usize,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Gateway URL, http:// or https:// (default: from the state file, else http://127.0.0.1:8000).
    #[arg(long)]
    url: Option<String>,
    /// For an https:// URL: the PEM file of the CA the gateway's certificate
    /// chains to; the system's roots are not used (default: the state file's
    /// CA when the URL is the state file's, as `just up --tls` writes).
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Gateway admin URL (default: from the state file, else http://127.0.0.1:8001);
    /// comma-separated, every gateway sharing the port (--idempotency checks each).
    #[arg(long)]
    admin_url: Option<String>,
    /// Discovery URL (default: from the state file, else http://127.0.0.1:8500).
    #[arg(long)]
    discovery_url: Option<String>,
    /// For an https:// discovery URL (chaos slow reads its instances): the
    /// PEM file of the CA its certificate chains to (default: the state
    /// file's CA when the discovery URL is the state file's, as `just up
    /// --tls` writes).
    #[arg(long)]
    discovery_ca: Option<PathBuf>,
    /// The state file `just up` writes.
    #[arg(long, default_value = shared::runstate::DEFAULT_PATH)]
    state: PathBuf,
    /// Namespace the path is routed to (chaos picks and watches its instances).
    #[arg(long, default_value = "service A")]
    namespace: String,
    /// Executor threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar (it only shows on a terminal anyway).
    #[arg(long)]
    no_progress: bool,
    /// Don't compare echoed bodies or require x-served-by (for a fixed-answer target).
    #[arg(long)]
    no_verify: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Inject a fault during the run: kill, slow or discovery.
    #[arg(long)]
    chaos: Option<Chaos>,
    /// When the fault starts (default: a third into the run).
    #[arg(long, value_parser = parse_duration)]
    chaos_at: Option<Duration>,
    /// How long the fault lasts (default: a third of the duration).
    #[arg(long, value_parser = parse_duration)]
    chaos_for: Option<Duration>,
    /// Instead of load: send each keyed POST 3 times at once and 2 times after
    /// the answer, and check that each key ran exactly once (the apps'
    /// GET /executions) and every replay was identical.
    #[arg(long)]
    idempotency: bool,
    /// Each app's admin URL, comma-separated, for --idempotency (default: from the state file).
    #[arg(long, value_delimiter = ',')]
    app_admin_urls: Vec<String>,
    /// How long requests in flight at the end may take before they count as timeouts.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
}

fn main() -> ExitCode {
    let flags: Flags = shared::cli::parse();
    init_executor(flags.threads);
    let cacert_flag = flags.cacert.is_some();
    let endpoints = Endpoints::resolve_with_ca(
        flags.url,
        flags.cacert,
        flags.admin_url,
        flags.discovery_url,
        &flags.state,
    );
    if cacert_flag && !endpoints.url.starts_with("https://") {
        eprintln!(
            "loadtest: --cacert is for an https:// gateway, and {} is not one",
            endpoints.url
        );
        return ExitCode::from(2);
    }
    if flags.discovery_ca.is_some() && !endpoints.discovery_url.starts_with("https://") {
        eprintln!(
            "loadtest: --discovery-ca is for an https:// discovery, and {} is not one",
            endpoints.discovery_url
        );
        return ExitCode::from(2);
    }
    let options = Options {
        url: endpoints.url,
        cacert: endpoints.cacert,
        admin_url: endpoints.admin_url,
        discovery_url: endpoints.discovery_url,
        discovery_ca: flags.discovery_ca.or(endpoints.discovery_ca),
        path: flags.path,
        duration: flags.duration,
        connections: flags.connections,
        rate: flags.rate,
        body_size: flags.body_size,
        verify: !flags.no_verify,
        state: flags.state,
        namespace: flags.namespace,
        chaos: flags.chaos,
        chaos_at: flags.chaos_at,
        chaos_for: flags.chaos_for,
        app_bin: None,
        drain_timeout: flags.drain_timeout,
        progress: !flags.no_progress && std::io::stderr().is_terminal(),
        idempotency: flags.idempotency,
        gateway_admin_urls: endpoints.gateway_admin_urls,
        app_admin_urls: if flags.app_admin_urls.is_empty() {
            endpoints.app_admin_urls
        } else {
            flags.app_admin_urls
        },
    };
    if options.idempotency {
        let summary = match futures_lite::future::block_on(async_std::task::spawn(async move {
            loadtest::idempotency::run(&options).await
        })) {
            Ok(summary) => summary,
            Err(e) => {
                eprintln!("loadtest: {e}");
                return ExitCode::from(2);
            }
        };
        print!("{summary}");
        if let Some(path) = flags.json {
            if let Err(e) = summary.write_json(&path) {
                eprintln!("loadtest: {e}");
                return ExitCode::from(2);
            }
        }
        return ExitCode::from(summary.exit_code());
    }
    // The run is a task on the executor; this thread only waits (and so never
    // takes the I/O reactor away from the executor threads).
    let summary =
        match futures_lite::future::block_on(async_std::task::spawn(loadtest::run(options))) {
            Ok(summary) => summary,
            Err(e) => {
                eprintln!("loadtest: {e}");
                return ExitCode::from(2);
            }
        };
    print!("{summary}");
    if let Some(path) = flags.json {
        if let Err(e) = summary.write_json(&path) {
            eprintln!("loadtest: {e}");
            return ExitCode::from(2);
        }
    }
    ExitCode::from(summary.exit_code())
}

/// Sizes async-std's executor; must run before the first task is spawned.
fn init_executor(threads: Option<usize>) {
    let mut config = async_global_executor::GlobalExecutorConfig::default()
        .with_env_var("ASYNC_STD_THREAD_COUNT");
    if let Some(n) = threads.filter(|n| *n > 0) {
        config = config.with_min_threads(n).with_max_threads(n);
    }
    async_global_executor::init_with_config(config);
}
