//! `GET /`: a page of namespaces and instances that refreshes itself.

use crate::State;
use std::fmt::Write;
use tide::{Request, Response, StatusCode};

pub async fn page(req: Request<State>) -> tide::Result {
    let services = req.state().registry.services();
    let mut html = String::from(concat!(
        "<!doctype html><html><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"refresh\" content=\"2\"><title>discovery</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}",
        "td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}",
        ".available{color:#080}.unavailable{color:#b00}.pending{color:#888}</style>",
        "</head><body><h1>Discovery</h1>"
    ));
    if services.is_empty() {
        html.push_str("<p>No instance has registered yet.</p>");
    }
    for (namespace, instances) in &services {
        let up = instances
            .iter()
            .filter(|i| i.status == shared::wire::InstanceStatus::Available)
            .count();
        let _ = write!(
            html,
            "<h2>{}</h2><p>{up} of {} available</p><table><tr><th>id</th><th>address</th>\
             <th>status</th><th>last check</th><th>failures in a row</th><th>last error</th></tr>",
            escape(namespace),
            instances.len()
        );
        for i in instances {
            let latency = i
                .last_check_latency_ms
                .map(|ms| format!("{ms:.1} ms"))
                .unwrap_or_else(|| "-".into());
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td class=\"{s}\">{s}</td><td>{latency}</td><td>{}</td><td>{}</td></tr>",
                escape(&i.id),
                escape(&shared::wire::authority(&i.host, i.port)),
                i.consecutive_failures,
                escape(i.last_check_error.as_deref().unwrap_or("")),
                s = i.status.as_str(),
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</body></html>");
    let mut res = Response::new(StatusCode::Ok);
    res.set_body(html);
    res.set_content_type(tide::http::mime::HTML);
    Ok(res)
}

/// Escapes text for HTML: namespaces come from whoever registers.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::escape("<a href='x'>&"),
            "&lt;a href=&#39;x&#39;&gt;&amp;"
        );
    }
}
