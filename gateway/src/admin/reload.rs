//! Reloading the configuration (SIGHUP) without dropping a connection.
//!
//! Everything the request path reads (the config and the router) is in a
//! [`Context`]; a reload builds a new one that shares everything else (pools,
//! metrics, triggers, the watchdog) and swaps it in with arc-swap. Each
//! connection looks at the swap once per request, so a request runs start
//! to end on one config, and the next one on the new config.
//!
//! Routes: the balancer of a namespace still routed is kept (its ring,
//! cursor, pooled connections and watch go on); a new namespace gets a new
//! balancer whose watch starts before the swap, so its ring is filled (within
//! [`FIRST_RING_WAIT`]) by the time a request can be routed to it. A
//! namespace no longer routed keeps its watch running and is reused if it
//! is routed again.
//!
//! TLS certificates (`tls`) are read again and checked before anything is
//! swapped: one that is missing, unreadable, expired or whose key does not
//! match refuses the whole reload, and the old certificates stay. Good ones
//! serve every handshake after the swap; open connections keep theirs.
//! The TLS port itself (`tls.listen`, and whether there is one) needs a restart.
//!
//! What cannot change without a restart (`listen`, `admin_listen`,
//! `worker_threads`, `idle_spin`, `reuse_port`, `discovery_ca`, the idempotency store and its bounds,
//! and the pool and buffer sizes that
//! existing objects were built with) keeps its old value, and the reload says so in the log. A
//! config that does not parse or validate is refused whole: the old one stays.
//! So is a path that is not a regular file (a FIFO, `/dev/zero` behind a
//! symlink) or a file over 1 MiB: `shared::config::load` refuses them without
//! blocking or growing, and [`apply`] logs the reason with the path.

use crate::balance::ring::{Balancer, Router};
use crate::context::{lock, Context};
use async_std::task::{self};
use shared::config::GatewayConfig;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a reload waits for the first ring of a new namespace before it
/// swaps the routes in anyway (discovery may be away).
pub(crate) const FIRST_RING_WAIT: Duration = Duration::from_millis(800);

/// Applies `next` (read from the file, the command line's flags applied
/// again): swaps it in, or refuses it and keeps the old one. Counted in
/// `gateway_config_reloads_total{result}`.
pub async fn apply(ctx: &Context, next: Result<GatewayConfig, String>) -> Result<(), String> {
    let live = &ctx.live;
    let _one = live.reloading.lock().await;
    let Some(old) = live.current() else {
        return Err("the gateway is stopping".into());
    };
    let next = next.and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()));
    let mut next = match next {
        Ok(next) => next,
        Err(why) => {
            old.metrics.reload("error");
            log::error!(error = why.as_str(); "configuration refused, the old one stays in force: {why}");
            return Err(why);
        }
    };
    let kept = keep_restart_only(&old.config, &mut next);
    let certificates = match (&old.tls, &next.tls) {
        (Some(_), Some(tls)) => match crate::http::tls::load_certificates(tls) {
            Ok(certificates) => Some(certificates),
            Err(why) => {
                old.metrics.reload("error");
                log::error!(error = why.as_str(); "configuration refused, the old one and its certificates stay in force: {why}");
                return Err(why);
            }
        },
        _ => None,
    };
    let upstream_tls = match crate::http::upstream_tls::load_all(&next.routes) {
        Ok(loaded) => loaded,
        Err(why) => {
            old.metrics.reload("error");
            log::error!(error = why.as_str(); "configuration refused, the old one and its upstream_tls files stay in force: {why}");
            return Err(why);
        }
    };
    let mut kept = kept;
    {
        let known = lock(&live.known);
        let routed = |ns: &str| known.iter().any(|b| b.namespace == ns);
        let wanted: Vec<&str> = upstream_tls.iter().map(|(ns, _)| ns.as_str()).collect();
        // Whether a namespace's instances speak TLS is fixed when they are
        // first made: turning it on or off needs a restart.
        let toggled = next.routes.iter().any(|r| {
            routed(&r.namespace)
                && old.upstreams.has_tls(&r.namespace) != wanted.contains(&r.namespace.as_str())
        });
        if toggled {
            kept.push("upstream_tls (on or off for a namespace already routed)");
        }
        for (namespace, tls) in upstream_tls {
            if old.upstreams.has_tls(&namespace) || !routed(&namespace) {
                old.upstreams.set_tls(&namespace, tls);
            }
        }
    }
    if !kept.is_empty() {
        log::warn!(settings = kept.join(", ").as_str();
            "configuration: {} changed but cannot change without a restart; ignored", kept.join(", "));
    }
    let (router, made) = {
        let mut known = lock(&live.known);
        let (router, made) = Router::rebuilt(&next.routes, &known);
        known.extend(made.iter().cloned());
        (router, made)
    };
    let new = Arc::new(Context {
        config: next,
        router: Arc::new(router),
        ..old.share()
    });
    if !made.is_empty() {
        let mut tasks = Vec::new();
        for balancer in &made {
            tasks.extend(crate::discover::watch::spawn_watch(&new, balancer));
        }
        lock(&live.tasks).extend(tasks);
        first_rings(&made).await;
    }
    if let (Some(tls), Some(certificates)) = (&new.tls, certificates) {
        tls.replace(certificates);
    }
    live.router.store(Some(new.router.clone()));
    live.current.store(Some(new.clone()));
    old.metrics.reload("ok");
    let routes: Vec<String> = new
        .config
        .routes
        .iter()
        .map(|r| format!("{} -> {}", r.prefix, r.namespace))
        .collect();
    log::info!(routes = routes.join(", ").as_str(), new_namespaces = made.len();
        "configuration reloaded");
    Ok(())
}

/// Puts back the old value of each setting that only a restart can change;
/// names those that differed.
fn keep_restart_only(old: &GatewayConfig, next: &mut GatewayConfig) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($($field:ident),*) => {$(
            if next.$field != old.$field {
                kept.push(stringify!($field));
                next.$field = old.$field.clone();
            }
        )*};
    }
    keep!(
        listen,
        admin_listen,
        worker_threads,
        idle_spin,
        pool_max_idle,
        pool_idle_timeout,
        passive_health_failures,
        allowed_upstreams,
        max_buffered_bytes,
        reuse_port,
        idempotency_store,
        idempotency_max_entries,
        idempotency_max_bytes,
        idempotency_fail_open,
        discovery_ca
    );
    match (&old.tls, &mut next.tls) {
        (Some(old), Some(next)) if next.listen != old.listen => {
            kept.push("tls.listen");
            next.listen = old.listen.clone();
        }
        (old, next) if old.is_some() != next.is_some() => {
            kept.push("tls");
            next.clone_from(old);
        }
        _ => {}
    }
    kept
}

/// Waits until every new balancer has its first ring from discovery, or
/// [`FIRST_RING_WAIT`] passed.
async fn first_rings(made: &[Arc<Balancer>]) {
    let until = Instant::now() + FIRST_RING_WAIT;
    while Instant::now() < until {
        let ready = made
            .iter()
            .all(|b| b.ring().version > 0 || b.watch.last_event_ms.load(Ordering::Relaxed) > 0);
        if ready {
            return;
        }
        task::sleep(Duration::from_millis(5)).await;
    }
    log::warn!("reload: a new namespace has no instances from discovery yet; routing to it anyway");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_settings_keep_their_old_values() {
        let old = GatewayConfig::default();
        let mut next = GatewayConfig {
            listen: "127.0.0.1:1".into(),
            worker_threads: 3,
            max_attempts: 5,
            ..GatewayConfig::default()
        };
        assert_eq!(
            keep_restart_only(&old, &mut next),
            vec!["listen", "worker_threads"]
        );
        assert_eq!(next.listen, old.listen);
        assert_eq!(next.worker_threads, old.worker_threads);
        assert_eq!(next.max_attempts, 5, "the rest is taken");
    }
}
