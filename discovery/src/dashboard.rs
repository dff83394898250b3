//! `GET /`: discovery's live console. A static page and script (no build
//! step, nothing fetched from elsewhere) that read `/api/services` and follow
//! `/api/watch`; the server renders no data into it, and the script writes
//! every value as text, so a hostile namespace or host cannot inject markup.
//! The Content-Security-Policy lets the page run only its own script and
//! talk only to this origin.

use tide::{Request, Response, StatusCode};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/console.js");
const STYLE: &str = include_str!("dashboard/console.css");

/// Only this origin's script, style and connections; no frames, forms or base.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Mounts the page at `/` and its script and style beside it.
pub fn routes<S: Clone + Send + Sync + 'static>(app: &mut tide::Server<S>) {
    app.at("/")
        .get(|_: Request<S>| async { Ok(asset(PAGE, "text/html; charset=utf-8")) });
    app.at("/console.js")
        .get(|_: Request<S>| async { Ok(asset(SCRIPT, "text/javascript; charset=utf-8")) });
    app.at("/console.css")
        .get(|_: Request<S>| async { Ok(asset(STYLE, "text/css; charset=utf-8")) });
}

fn asset(body: &'static str, content_type: &str) -> Response {
    let mut res = Response::new(StatusCode::Ok);
    res.set_body(body);
    res.set_content_type(content_type);
    res.insert_header("content-security-policy", CONTENT_SECURITY_POLICY);
    res.insert_header("x-content-type-options", "nosniff");
    res.insert_header("referrer-policy", "no-referrer");
    res.insert_header("cache-control", "no-cache");
    res
}

#[cfg(test)]
mod tests {
    use super::{PAGE, SCRIPT};

    #[test]
    fn the_page_has_nothing_inline_that_the_policy_would_block() {
        assert!(!PAGE.contains("<script>"), "inline script");
        assert!(!PAGE.contains("style="), "inline style");
        assert!(!PAGE.contains("<style"), "inline style sheet");
        assert!(!PAGE.contains("//"), "an external resource");
    }

    #[test]
    fn the_script_never_parses_data_as_markup() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!SCRIPT.contains(sink), "{sink} in console.js");
        }
    }
}
