//! What every task of the gateway shares ([`Context`]), and the newest
//! generation of it after reloads ([`Live`]).
//!
//! The request path reads its config and router from a context; a reload
//! ([`crate::admin::reload`]) builds a new one that shares everything else
//! and swaps it in, so a request runs start to end on one config.

use crate::balance::pool::Upstreams;
use crate::balance::ring::{Balancer, Router};
use crate::http::budget::Budget;
use crate::http::tls::Tls;
use crate::idempotency::Idempotency;
use crate::observe::counters::Metrics;
use crate::runtime::deadline::Watchdog;
use crate::runtime::listen::Gate;
use crate::runtime::slots::PerWorker;
use arc_swap::ArcSwapOption;
use async_std::task::JoinHandle;
use shared::config::GatewayConfig;
use shared::panics::Panics;
use shared::shutdown::Trigger;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

/// What every task of the gateway shares.
#[derive(Debug)]
pub struct Context {
    pub(crate) config: GatewayConfig,
    pub(crate) router: Arc<Router>,
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) metrics: Arc<Metrics>,
    /// Client for discovery: the watch streams and lookups after a timeout.
    pub(crate) discovery: surf::Client,
    /// Fired at shutdown: stop accepting, finish the current requests.
    pub(crate) stop: Trigger,
    /// Fired when the drain time is over: cut what is left.
    pub(crate) kill: Trigger,
    /// `Host` for HTTP/1.0 requests that carry none.
    pub(crate) default_host: String,
    /// Requests seen per worker, for access log sampling.
    pub(crate) requests: Arc<PerWorker<AtomicU64>>,
    /// The request path's deadlines: kept by each worker, ended at the stop and the kill.
    pub(crate) watchdog: Arc<Watchdog>,
    /// Panics caught in connections and background loops.
    pub(crate) panics: Panics,
    /// Request bytes buffered across all connections (`max_buffered_bytes`).
    pub(crate) budget: Arc<Budget>,
    /// The newest context after reloads ([`crate::admin::reload`]); shared by every generation.
    pub(crate) live: Arc<Live>,
    /// The client port: listened on once ready, closed first at shutdown.
    pub(crate) gate: Arc<Gate>,
    /// Idempotency records (`idempotency_store`), kept across reloads.
    pub(crate) idempotency: Arc<Idempotency>,
    /// The TLS port's server (`tls`), kept across reloads, which swap its
    /// certificates; `None` without a `tls` key at start.
    pub(crate) tls: Option<Arc<Tls>>,
}

impl Context {
    /// A copy for a new generation: the same config and router (which a
    /// reload then replaces), everything else shared.
    pub(crate) fn share(&self) -> Context {
        Context {
            config: self.config.clone(),
            router: self.router.clone(),
            upstreams: self.upstreams.clone(),
            metrics: self.metrics.clone(),
            discovery: self.discovery.clone(),
            stop: self.stop.clone(),
            kill: self.kill.clone(),
            default_host: self.default_host.clone(),
            requests: self.requests.clone(),
            watchdog: self.watchdog.clone(),
            panics: self.panics.clone(),
            budget: self.budget.clone(),
            live: self.live.clone(),
            gate: self.gate.clone(),
            idempotency: self.idempotency.clone(),
            tls: self.tls.clone(),
        }
    }

    /// The context in force now: the newest generation, or this one once stopped.
    pub(crate) fn current(self: &Arc<Self>) -> Arc<Context> {
        self.live.current().unwrap_or_else(|| self.clone())
    }
}

/// What every generation of the [`Context`] shares: the newest one, and the
/// balancers and tasks reloads made.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) current: ArcSwapOption<Context>,
    /// Every balancer ever routed, its watch running.
    pub(crate) known: Mutex<Vec<Arc<Balancer>>>,
    /// Watch tasks started by reloads, awaited at shutdown.
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// One reload at a time.
    pub(crate) reloading: async_std::sync::Mutex<()>,
    /// The router in force, for the admin port's readers.
    pub(crate) router: ArcSwapOption<Router>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    /// The context in force; `None` once the gateway has stopped.
    pub(crate) fn current(&self) -> Option<Arc<Context>> {
        self.current.load_full()
    }

    /// The swap itself, for readers that cache what they loaded.
    pub(crate) fn swap(&self) -> &ArcSwapOption<Context> {
        &self.current
    }

    /// The router in force (empty before start and after stop).
    pub(crate) fn router(&self) -> Option<Arc<Router>> {
        self.router.load_full()
    }

    /// Records the first context, at start.
    pub(crate) fn start(&self, ctx: &Arc<Context>) {
        lock(&self.known).extend(ctx.router.balancers().iter().cloned());
        self.router.store(Some(ctx.router.clone()));
        self.current.store(Some(ctx.clone()));
    }

    /// Forgets the context (it refers back to this), and gives the watch
    /// tasks that reloads started, to be awaited.
    pub(crate) fn stop(&self) -> Vec<JoinHandle<()>> {
        self.current.store(None);
        std::mem::take(&mut *lock(&self.tasks))
    }
}
