//! `GET /`: discovery's live console. Its script reads `/api/services` and
//! `/api/store`, follows `/api/watch` for each namespace, and keeps its last
//! view, marked stale, while discovery is away. Served by
//! [`shared::console`], which explains the safety rules.

use shared::console::Assets;

const ASSETS: Assets = Assets {
    page: include_str!("dashboard/index.html"),
    script: include_str!("dashboard/console.js"),
    style: "",
};

/// Mounts the page at `/` and its script and style beside it.
pub fn routes<S: Clone + Send + Sync + 'static>(app: &mut tide::Server<S>) {
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
