//! `GET /` on the admin port: the gateway's console. Its script polls
//! `/status` every second and draws each route's ring with per-instance rates
//! and latencies, and per route that honours `Idempotency-Key` what happened
//! to keyed requests, keeping its last view, marked stale, while the gateway
//! is away. Served by [`shared::console`], which explains the safety rules.

use shared::console::Assets;

const ASSETS: Assets = Assets {
    page: include_str!("console/index.html"),
    script: include_str!("console/console.js"),
    style: include_str!("console/console.css"),
};

/// Mounts the page at `/` and its script and style beside it.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(app: &mut tide::Server<S>) {
    shared::console::routes(app, ASSETS);
}

#[cfg(test)]
mod tests {
    #[test]
    fn nothing_the_policy_blocks_and_no_markup_sink() {
        assert_eq!(
            shared::console::problems(&super::ASSETS),
            Vec::<String>::new()
        );
    }
}
