//! The load generator behind `just loadtest`: JSON POSTs through the gateway
//! on keep-alive connections, every echo checked byte for byte, with latency
//! percentiles, the spread over instances, and faults injected on request.
//!
//! [`run`] is the whole program without its flags, so tests drive it
//! in-process: [`options`] says what to do, [`driver`] runs the connections
//! (closed or open loop) on [`connection`]s with bodies from [`body`],
//! [`chaos`] plays a fault beside them, and [`summary`] merges, prints and
//! judges the result. [`idempotency`] is `--idempotency`'s run instead of
//! the load: keyed POSTs sent several times, each key checked to run
//! exactly once. [`http`] holds the URL handling and the few
//! control-plane calls; [`progress`] the live bar.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod body;
pub mod chaos;
pub mod connection;
pub mod driver;
pub mod http;
pub mod idempotency;
pub mod options;
pub mod progress;
pub mod summary;

pub use options::{Chaos, Options};
pub use summary::Summary;

use driver::{Board, Plan};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

/// Runs the load (and the fault, if any) and returns what it measured.
///
/// An error means the run could not start or set up its fault; failed
/// requests are not errors but counts in the summary (see [`Summary::passed`]).
pub async fn run(options: Options) -> Result<Summary, String> {
    options.validate()?;
    let url = http::Url::parse(&options.url)?;
    let addr = url.resolve()?;
    let target = url.target(&options.path);
    let tls = match (url.tls, &options.cacert) {
        (true, Some(ca)) => Some(connection::TlsDialer::new(
            &ca.display().to_string(),
            url.host(),
        )?),
        // `validate` refuses https without a CA.
        (true, None) => return Err("an https:// URL needs --cacert".into()),
        (false, _) => None,
    };
    let mut fault = match options.chaos {
        Some(kind) => Some(chaos::prepare(kind, &options).await?),
        None => None,
    };
    let board = Arc::new(Board::new(options.connections));
    let start = Instant::now();
    let end = start + options.duration;
    let plan = Arc::new(Plan {
        addr,
        tls,
        host: url.authority.clone(),
        target: target.clone(),
        body_size: options.body_size,
        verify: options.verify,
        start,
        end,
        rate: options.rate,
        next_slot: AtomicU64::new(0),
        watched: fault.as_ref().and_then(chaos::Fault::watched),
    });
    let progress = options
        .progress
        .then(|| async_std::task::spawn(progress::show(board.clone(), start, options.duration)));
    let load = async {
        let tallies = driver::drive(plan, board.clone(), options.drain_timeout).await;
        (tallies, start.elapsed())
    };
    let (at, lasting) = options.chaos_window();
    let play = async {
        if let Some(fault) = fault.as_mut() {
            fault.play(start, at, lasting, end).await;
        }
    };
    let ((tallies, elapsed), ()) = futures_lite::future::zip(load, play).await;
    if let Some(progress) = progress {
        progress.await;
    }
    let report = match fault {
        Some(fault) => Some(fault.finish().await),
        None => None,
    };
    let facts = summary::RunFacts {
        target: format!("POST {}://{}{target}", url.scheme(), url.authority),
        cacert: options.cacert.clone().filter(|_| url.tls),
        connections: options.connections,
        rate: options.rate,
        duration: options.duration,
        elapsed,
        body_size: options.body_size,
        verified: options.verify,
    };
    Ok(Summary::new(facts, &tallies, report))
}
