//! Serving a live console: a static page, its script and its style (no build
//! step, nothing fetched from elsewhere), the same for discovery's `/` and the
//! gateway's admin `/`. The server renders no data into them: each script
//! fetches JSON and writes every value as text, so a hostile namespace or host
//! cannot inject markup. The Content-Security-Policy lets a page run only its
//! own script and talk only to its own origin.

use tide::{Request, Response, StatusCode};

/// Only this origin's script, style and connections; no frames, forms or base.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The style both consoles start from; each appends its own rules.
pub const BASE_STYLE: &str = include_str!("../assets/console.css");

/// The script both consoles load before their own (`/console-common.js`):
/// elements from text, the clock, the live or stale state.
pub const COMMON_SCRIPT: &str = include_str!("../assets/console-common.js");

/// One console's files.
#[derive(Clone, Copy, Debug)]
pub struct Assets {
    pub page: &'static str,
    pub script: &'static str,
    pub style: &'static str,
}

/// Mounts the page at `/` and its scripts and style beside it.
pub fn routes<S: Clone + Send + Sync + 'static>(app: &mut tide::Server<S>, assets: Assets) {
    let style = format!("{BASE_STYLE}{}", assets.style);
    app.at("/").get(move |_: Request<S>| async move {
        Ok(asset(assets.page, "text/html; charset=utf-8"))
    });
    app.at("/console-common.js")
        .get(|_: Request<S>| async { Ok(asset(COMMON_SCRIPT, "text/javascript; charset=utf-8")) });
    app.at("/console.js").get(move |_: Request<S>| async move {
        Ok(asset(assets.script, "text/javascript; charset=utf-8"))
    });
    app.at("/console.css").get(move |_: Request<S>| {
        let style = style.clone();
        async move { Ok(asset(&style, "text/css; charset=utf-8")) }
    });
}

fn asset(body: &str, content_type: &str) -> Response {
    let mut res = Response::new(StatusCode::Ok);
    res.set_body(body);
    res.set_content_type(content_type);
    res.insert_header("content-security-policy", CONTENT_SECURITY_POLICY);
    res.insert_header("x-content-type-options", "nosniff");
    res.insert_header("referrer-policy", "no-referrer");
    res.insert_header("cache-control", "no-cache");
    res
}

/// What the policy would block or what could turn data into markup: a
/// console's unit tests call this on its files; the list of problems is empty
/// when all is well.
pub fn problems(assets: &Assets) -> Vec<String> {
    let mut found = Vec::new();
    for (needle, what) in [
        ("<script>", "an inline script"),
        ("style=", "an inline style"),
        ("<style", "an inline style sheet"),
        ("//", "an external resource"),
    ] {
        if assets.page.contains(needle) {
            found.push(format!("the page has {what} ({needle})"));
        }
    }
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        for (script, which) in [
            (assets.script, "the script"),
            (COMMON_SCRIPT, "the common script"),
        ] {
            if script.contains(sink) {
                found.push(format!("{which} uses {sink}"));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_code_and_markup_sinks_are_found() {
        let bad = Assets {
            page: "<p style=\"x\"><script>alert(1)</script>",
            script: "el.innerHTML = data;",
            style: "",
        };
        assert_eq!(problems(&bad).len(), 3, "{:?}", problems(&bad));
        let good = Assets {
            page: "<script src=\"/console.js\"></script>",
            script: "el.textContent = data;",
            style: "",
        };
        assert!(problems(&good).is_empty());
    }
}
