//! The operations files under deploy/ and docs/ stay true to the code:
//!
//! - deploy/prometheus/alerts.yml passes `promtool check rules`, and so do the
//!   dashboard's queries (as recording rules);
//! - every metric that alerts.yml and deploy/grafana/dashboard.json name is
//!   exported by a running gateway or discovery (a histogram's `_bucket`,
//!   `_sum` and `_count` count as its name), and every label a selector
//!   matches on is one that metric carries;
//! - docs/openapi/discovery.json and docs/openapi/gateway-admin.json: every
//!   documented path and method answers a running service with one of its
//!   documented statuses (write endpoints get the spec's example body, which
//!   must be accepted), and no route the service serves is undocumented.
//!
//! How "no undocumented route" is found without a route table to read:
//! tide keeps its router private, so the test probes. The candidates are
//! every path-like string literal (`"/..."`) in the service's sources
//! (discovery/src or gateway/src, and shared/src, where the consoles mount
//! their assets), each with and without a trailing slash; each is sent GET,
//! POST, PUT, DELETE and PATCH with an empty body. A path is served when some
//! method answers anything but tide's "no route" 404 (an error body with code
//! `not_found`; a handler's own 404s say `unknown_instance` and the like),
//! and a method is served when it answers neither that nor 405. The served
//! set must equal the documented one, path by path and method by method. A
//! route added in the code is a new literal in those sources, so it is found
//! and the test fails until the spec documents it. A hand-written list of
//! today's routes (from `routes` in discovery/src/lib.rs and
//! gateway/src/admin/status.rs) is checked to be within what the probe finds, so
//! the scan cannot quietly stop finding routes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_std::io::{ReadExt, WriteExt};
use async_std::net::TcpStream;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn json_file(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

// ---------------------------------------------------------------- promtool

/// Runs `promtool check rules FILE`; a missing promtool fails naming the installer.
fn promtool_check_rules(file: &Path) {
    let out = match Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(file)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is missing: run `bash .ci/install-prometheus` (Debian's prometheus \
             package; `just test` runs it) to check {}",
            file.display()
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool check rules {} failed:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool() {
    promtool_check_rules(&root().join("deploy/prometheus/alerts.yml"));
}

/// The dashboard's queries, with Grafana's variables filled in, parse as
/// PromQL: each becomes a recording rule of a file promtool checks.
#[test]
fn dashboard_queries_pass_promtool() {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (panel, expr)) in dashboard_exprs().iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$namespace", ".*");
        assert!(
            !expr.contains('$'),
            "panel {panel:?}: a variable the test does not fill in: {expr}"
        );
        // A JSON string is a valid YAML double-quoted scalar.
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            Value::String(expr)
        ));
    }
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-queries.yml");
    std::fs::write(&file, rules).unwrap();
    promtool_check_rules(&file);
}

// ---------------------------------------------------------------- PromQL

/// The `expr:` values of a Prometheus rule file (inline, or a `|` / `>` block).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        i += 1;
        let Some(rest) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut block = String::new();
            while i < lines.len() {
                let l = lines[i];
                let t = l.trim_start();
                if !t.is_empty() && l.len() - t.len() <= indent {
                    break;
                }
                block.push_str(t);
                block.push('\n');
                i += 1;
            }
            exprs.push(block);
        } else if let Some(q) = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            exprs.push(q.replace("\\\"", "\""));
        } else if let Some(q) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            exprs.push(q.replace("''", "'"));
        } else {
            exprs.push(rest.to_string());
        }
    }
    exprs
}

/// Every query of the dashboard: (panel title, expression), rows' nested panels included.
fn dashboard_exprs() -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_else(|| {
                    panic!("panel {title:?}: a target without a PromQL expr: {t}")
                });
                out.push((title.clone(), expr.to_string()));
            }
            if let Some(nested) = p["panels"].as_array() {
                walk(nested, out);
            }
        }
    }
    let dash = json_file("deploy/grafana/dashboard.json");
    let mut out = Vec::new();
    walk(dash["panels"].as_array().expect("panels"), &mut out);
    assert!(!out.is_empty(), "the dashboard has no queries");
    out
}

/// Metrics the dashboard's variables query (`label_values(metric, label)`).
fn dashboard_variable_metrics() -> Vec<(String, String)> {
    let dash = json_file("deploy/grafana/dashboard.json");
    let mut out = Vec::new();
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .or(v["definition"].as_str())
            .unwrap_or_default();
        let args = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: not label_values(...): {q}", v["name"]));
        let (metric, label) = args.split_once(',').expect("label_values(metric, label)");
        out.push((metric.trim().to_string(), label.trim().to_string()));
    }
    out
}

/// A metric selector in a PromQL expression: its name and the labels it matches on.
#[derive(Debug)]
struct Selector {
    name: String,
    labels: Vec<String>,
}

const AGGREGATORS_AND_KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "Inf",
    "NaN",
];
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric selectors of a PromQL expression (a small lexer: strings,
/// ranges, label lists and function names are skipped).
fn selectors(expr: &str) -> Vec<Selector> {
    let c: Vec<char> = expr.chars().collect();
    let mut out: Vec<Selector> = Vec::new();
    // The selector a `{` right after it belongs to.
    let mut last: Option<usize> = None;
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let close = |mut i: usize, open: char, close: char| {
        let mut depth = 0;
        while i < c.len() {
            if c[i] == open {
                depth += 1;
            } else if c[i] == close {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            i += 1;
        }
        i
    };
    let ident = |i: usize| c[i].is_ascii_alphabetic() || c[i] == '_' || c[i] == ':';
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i += 1;
            while i < c.len() && c[i] != ch {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            last = None;
        } else if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '[' {
            i = close(i, '[', ']');
            last = None;
        } else if ch == '{' {
            let end = close(i, '{', '}');
            // label op "value", ...: the label names only.
            let mut labels = Vec::new();
            let mut k = i + 1;
            while k < end - 1 {
                if c[k].is_ascii_alphabetic() || c[k] == '_' {
                    let from = k;
                    while k < end && (c[k].is_ascii_alphanumeric() || c[k] == '_') {
                        k += 1;
                    }
                    labels.push(c[from..k].iter().collect::<String>());
                } else if c[k] == '"' || c[k] == '\'' || c[k] == '`' {
                    let quote = c[k];
                    k += 1;
                    while k < end && c[k] != quote {
                        k += if c[k] == '\\' { 2 } else { 1 };
                    }
                    k += 1;
                } else {
                    k += 1;
                }
            }
            if let Some(s) = last.and_then(|l| out.get_mut(l)) {
                s.labels.extend(labels);
            }
            last = None;
            i = end;
        } else if ch == '$' {
            // A dashboard variable outside a string or range: skip its name.
            i += 1;
            while i < c.len()
                && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == '{' || c[i] == '}')
            {
                i += 1;
            }
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
            last = None;
        } else if ident(i) {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = skip_ws(i);
            last = None;
            if LABEL_LIST_KEYWORDS.contains(&word.as_str()) {
                if c.get(next) == Some(&'(') {
                    i = close(next, '(', ')');
                }
            } else if AGGREGATORS_AND_KEYWORDS.contains(&word.as_str()) || c.get(next) == Some(&'(')
            {
                // A function, an aggregator or an operator keyword.
            } else {
                out.push(Selector {
                    name: word,
                    labels: Vec::new(),
                });
                last = Some(out.len() - 1);
            }
        } else {
            i += 1;
            last = None;
        }
    }
    out
}

#[test]
fn the_lexer_finds_metrics_and_their_matchers() {
    let found = selectors(
        "sum by (namespace, upstream) (rate(gateway_upstream_requests_total{code=~\"5..\", \
         upstream!='a,b=c'}[5m]) or rate(x_total{cause!=\"status_5xx\"}[$__rate_interval])) \
         / on (job) group_left (version) max(up) > 0.5 and bool 1e3 unless absent(y offset 5m)",
    );
    let names: Vec<(&str, Vec<&str>)> = found
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.labels.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("gateway_upstream_requests_total", vec!["code", "upstream"]),
            ("x_total", vec!["cause"]),
            ("up", vec![]),
            ("y", vec![]),
        ]
    );
    assert_eq!(
        rule_exprs("  - alert: A\n    expr: a > 0\n    for: 1m\n  - alert: B\n    expr: |\n      b\n        / c\n    for: 2m\n"),
        vec!["a > 0".to_string(), "b\n/ c\n".to_string()]
    );
}

// ---------------------------------------------------------------- scrape

/// What a scrape exports: metric name to the label names seen on its
/// series (empty when a family has no series yet).
fn exported(text: &str, into: &mut BTreeMap<String, BTreeSet<String>>) {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            into.entry(name.to_string()).or_default();
            let base = name.strip_suffix("_total").unwrap_or(name);
            match kind {
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        into.entry(format!("{name}{suffix}")).or_default();
                    }
                }
                "summary" => {
                    for suffix in ["_sum", "_count"] {
                        into.entry(format!("{name}{suffix}")).or_default();
                    }
                }
                // OpenMetrics names a counter family without _total.
                "counter" => {
                    into.entry(format!("{base}_total")).or_default();
                }
                _ => {}
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = into.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            let inner = &line[end + 1..line.rfind('}').unwrap_or(line.len())];
            let mut rest = inner;
            while let Some(eq) = rest.find('=') {
                labels.insert(rest[..eq].trim_start_matches(',').trim().to_string());
                // Past the quoted value ("..." with \" escapes).
                let after = &rest[eq + 2..];
                let mut k = 0;
                let b = after.as_bytes();
                while k < b.len() && b[k] != b'"' {
                    k += if b[k] == b'\\' { 2 } else { 1 };
                }
                rest = &after[(k + 1).min(after.len())..];
            }
        }
    }
}

/// A metric family that prints nothing until its first series (a
/// prometheus-client `Family` without children: failovers, skipped
/// upstreams, ...) counts as exported when the service's metrics module
/// registers it under that name: `gateway_failovers_total` is
/// `"failovers"` in gateway/src/observe/counters.rs.
fn registered_in_source(name: &str) -> bool {
    let (files, rest): (&[&str], &str) = if let Some(rest) = name.strip_prefix("gateway_") {
        (
            &[
                "gateway/src/observe/counters.rs",
                "gateway/src/admin/metrics.rs",
            ],
            rest,
        )
    } else if let Some(rest) = name.strip_prefix("discovery_") {
        (&["discovery/src/metrics.rs"], rest)
    } else {
        return false;
    };
    let source: String = files.iter().map(|f| read(f)).collect();
    let stem = ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| rest.strip_suffix(s))
        .unwrap_or(rest);
    source.contains(&format!("\"{stem}\""))
}

/// Series Prometheus makes itself for every target, not in any scrape.
const PROMETHEUS_MADE: &[&str] = &["up", "scrape_duration_seconds", "scrape_samples_scraped"];

#[async_std::test]
async fn every_metric_in_alerts_and_dashboard_is_exported() {
    let discovery = testkit::discovery().await;
    let apps = testkit::system::apps(&discovery.url(), 2).await;
    let gateway = gateway::spawn(testkit::system::gateway_config(&discovery.url()))
        .await
        .unwrap();
    let members: Vec<String> = apps.iter().map(|a| a.served_by().to_string()).collect();
    testkit::system::wait_ring(&gateway.admin_url(), &members, Duration::from_secs(5)).await;
    // Traffic, so more families have series: requests by status, lookups
    // and deregistrations by outcome, reloads by result. (Families that
    // only trouble fills, failovers or skipped upstreams, may have none:
    // see `registered_in_source`.)
    let _ = gateway
        .reload(Ok(testkit::system::gateway_config(&discovery.url())))
        .await;
    let (status, _) = testkit::client::get(&format!(
        "{}/api/lookup?namespace=service%20A",
        discovery.url()
    ))
    .await;
    assert_eq!(status, 200);
    let (status, _) = testkit::client::post(
        &format!("{}/api/deregister", discovery.url()),
        r#"{"namespace": "nobody", "host": "127.0.0.1", "port": 1}"#,
    )
    .await;
    assert_eq!(status, 404);
    for path in ["/orders", "/orders", "/orders"] {
        let res = testkit::system::post_once(gateway.addr(), path, br#"{"n": 1}"#).await;
        assert_eq!(res.status, 200);
    }
    let mut metrics = BTreeMap::new();
    let (status, gw) = testkit::client::get(&format!("{}/metrics", gateway.admin_url())).await;
    assert_eq!(status, 200);
    exported(gw.as_str().unwrap(), &mut metrics);
    let (status, d) = testkit::client::get(&format!("{}/metrics", discovery.url())).await;
    assert_eq!(status, 200);
    exported(d.as_str().unwrap(), &mut metrics);

    let mut used: Vec<(String, Selector)> = Vec::new();
    for expr in rule_exprs(&read("deploy/prometheus/alerts.yml")) {
        for s in selectors(&expr) {
            used.push((format!("alerts.yml: {}", expr.trim()), s));
        }
    }
    for (panel, expr) in dashboard_exprs() {
        for s in selectors(&expr) {
            used.push((format!("dashboard panel {panel:?}: {expr}"), s));
        }
    }
    for (metric, label) in dashboard_variable_metrics() {
        used.push((
            format!("dashboard variable label_values({metric}, {label})"),
            Selector {
                name: metric,
                labels: vec![label],
            },
        ));
    }
    assert!(used.len() > 40, "too few metrics found: {used:?}");

    let mut problems = Vec::new();
    let mut unseen = BTreeSet::new();
    for (whereabouts, s) in &used {
        if PROMETHEUS_MADE.contains(&s.name.as_str()) {
            continue;
        }
        let Some(labels) = metrics.get(&s.name) else {
            if registered_in_source(&s.name) {
                unseen.insert(s.name.clone());
            } else {
                problems.push(format!("{} is not exported ({whereabouts})", s.name));
            }
            continue;
        };
        // Label names can be checked only where the family has series now.
        if labels.is_empty() {
            continue;
        }
        for l in &s.labels {
            if l != "job" && l != "instance" && !labels.contains(l) {
                problems.push(format!(
                    "{} has no label {l} (it has {labels:?}) ({whereabouts})",
                    s.name
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "metrics the ops files name that the services do not export:\n{}",
        problems.join("\n")
    );
    if !unseen.is_empty() {
        eprintln!(
            "without series in this scrape (registered in the metrics sources, labels not checked): {unseen:?}"
        );
    }

    // What the files must cover: the alerts and panels operators rely on.
    let alert_metrics: BTreeSet<&str> = used
        .iter()
        .filter(|(w, _)| w.starts_with("alerts.yml"))
        .map(|(_, s)| s.name.as_str())
        .collect();
    for m in [
        "gateway_requests_total",
        "gateway_upstream_requests_total",
        "gateway_upstream_failovers_total",
        "gateway_upstream_faults_total",
        "gateway_upstreams_skipped_total",
        "gateway_local_shortages_total",
        "gateway_ring_size",
        "gateway_watch_connected",
        "gateway_ready",
        "discovery_store_connected",
        "discovery_store_writable",
        "discovery_store_set_aside",
        "discovery_instances",
        "discovery_health_checks_total",
        "up",
    ] {
        assert!(alert_metrics.contains(m), "alerts.yml has no rule on {m}");
    }
    let panel_metrics: BTreeSet<&str> = used
        .iter()
        .filter(|(w, _)| w.starts_with("dashboard panel"))
        .map(|(_, s)| s.name.as_str())
        .collect();
    for m in [
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_failovers_total",
        "gateway_upstream_faults_total",
        "gateway_ring_size",
        "gateway_watch_connected",
        "discovery_instances",
        "discovery_health_checks_total",
        "discovery_store_connected",
        "discovery_store_writable",
    ] {
        assert!(
            panel_metrics.contains(m),
            "the dashboard has no panel on {m}"
        );
    }

    gateway.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
    discovery.shutdown().await;
}

// ---------------------------------------------------------------- HTTP probe

/// What came back: status, content type, and the error code of an error body.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    error_code: Option<String>,
}

impl Answer {
    /// tide's own 404: no route matched the path.
    fn unrouted(&self) -> bool {
        self.status == 404 && self.error_code.as_deref() == Some("not_found")
    }
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~:,".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One request on a fresh connection; reads the head, and the body unless it
/// is an event stream (which never ends).
async fn probe(addr: SocketAddr, method: &str, target: &str, body: Option<&str>) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "{method} {target}: closed before a full head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{method} {target}: bad head {head}"));
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let content_type = header("content-type").unwrap_or_default();
        let mut error_code = None;
        if status >= 400 && !content_type.starts_with("text/event-stream") {
            let mut body = buf[head_end..].to_vec();
            match header("content-length").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => {
                    while body.len() < n {
                        let k = stream.read(&mut chunk).await.unwrap();
                        if k == 0 {
                            break;
                        }
                        body.extend_from_slice(&chunk[..k]);
                    }
                }
                None => {
                    let _ = stream.read_to_end(&mut body).await;
                }
            }
            error_code = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
        }
        Answer {
            status,
            content_type,
            error_code,
        }
    };
    async_std::future::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("{method} {target}: no answer within 10 s"))
}

const METHODS: &[&str] = &["get", "post", "put", "delete", "patch"];

/// Resolves a local `$ref` (`#/components/...`).
fn deref<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            deref(
                spec,
                spec.pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling $ref {r}")),
            )
        }
        None => v,
    }
}

/// Every documented path and its methods.
fn documented(spec: &Value) -> BTreeMap<String, BTreeSet<String>> {
    spec["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let item = deref(spec, item);
            let methods = METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_string())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// The order write operations are tried in: register before anything needs
/// the instance, deregister last.
fn rank(path: &str, method: &str) -> u8 {
    match (path.trim_end_matches('/'), method) {
        ("/api/register", _) => 0,
        ("/api/maintenance", "put") => 2,
        ("/api/maintenance", "delete") => 3,
        ("/api/deregister" | "/api/unregister", _) => 4,
        _ => 1,
    }
}

/// Calls every documented operation with its examples and checks the status
/// is one it documents; an example body must be accepted (2xx, or 404 for an
/// instance an alias already removed).
async fn check_operations(addr: SocketAddr, spec: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ops: Vec<(String, String)> = documented(spec)
        .into_iter()
        .flat_map(|(p, ms)| ms.into_iter().map(move |m| (p.clone(), m)))
        .collect();
    ops.sort_by_key(|(p, m)| (rank(p, m), p.clone(), m.clone()));
    for (path, method) in ops {
        let op = deref(spec, &spec["paths"][&path])[&method].clone();
        let mut query = Vec::new();
        for param in op["parameters"].as_array().into_iter().flatten() {
            let param = deref(spec, param);
            if param["in"] == "query" && param["required"] == true {
                let example = param["example"].as_str().unwrap_or_else(|| {
                    panic!("{method} {path}: required query parameter without an example")
                });
                query.push(format!(
                    "{}={}",
                    param["name"].as_str().unwrap(),
                    encode(example)
                ));
            }
        }
        let target = if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{}", query.join("&"))
        };
        let body = op["requestBody"]["content"]["application/json"]["example"].clone();
        let has_body = !body.is_null();
        if op.get("requestBody").is_some() {
            assert!(
                has_body,
                "{method} {path}: a request body without an application/json example"
            );
        }
        let answer = probe(
            addr,
            &method.to_uppercase(),
            &target,
            has_body.then(|| body.to_string()).as_deref(),
        )
        .await;
        let responses = op["responses"].as_object().expect("responses");
        let code = answer.status.to_string();
        let class = format!("{}XX", &code[..1]);
        let Some(documented) = responses
            .get(&code)
            .or(responses.get(&class))
            .or(responses.get("default"))
        else {
            problems.push(format!(
                "{method} {target} answered {} (error {:?}), documented: {:?}",
                answer.status,
                answer.error_code,
                responses.keys().collect::<Vec<_>>()
            ));
            continue;
        };
        if has_body && !(answer.status < 400 || answer.status == 404) {
            problems.push(format!(
                "{method} {target}: the spec's example body {body} was refused: {} {:?}",
                answer.status, answer.error_code
            ));
        }
        let documented = deref(spec, documented);
        if let Some(content) = documented["content"].as_object() {
            let essence = |t: &str| t.split(';').next().unwrap_or_default().trim().to_string();
            let got = essence(&answer.content_type);
            if !content.keys().any(|k| essence(k) == got) {
                problems.push(format!(
                    "{method} {target} answered {} as {:?}; documented: {:?}",
                    answer.status,
                    answer.content_type,
                    content.keys().collect::<Vec<_>>()
                ));
            }
        }
    }
    problems
}

/// Path-like string literals in the Rust files under `dirs`.
fn path_literals(dirs: &[&str]) -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices("\"/") {
                    let lit: String = text[i + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || "/_.-".contains(*c))
                        .collect();
                    let closed = text[i + 1 + lit.len()..].starts_with('"');
                    // Dot segments are resolved before routing ("/a/.." is "/").
                    let dots = lit.split('/').any(|seg| seg == "." || seg == "..");
                    if closed && !lit.starts_with("//") && !dots {
                        out.insert(lit);
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for d in dirs {
        walk(&root().join(d), &mut out);
    }
    out.insert("/".into());
    let variants: Vec<String> = out
        .iter()
        .filter(|p| p.len() > 1)
        .map(|p| match p.strip_suffix('/') {
            Some(bare) => bare.to_string(),
            None => format!("{p}/"),
        })
        .collect();
    out.extend(variants);
    out
}

/// The routes a service serves among `candidates`, with the methods each takes.
async fn served(
    addr: SocketAddr,
    candidates: &BTreeSet<String>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut found = BTreeMap::new();
    for path in candidates {
        let mut methods = BTreeSet::new();
        let mut routed = false;
        for m in METHODS {
            let a = probe(addr, &m.to_uppercase(), path, None).await;
            if a.unrouted() {
                continue;
            }
            routed = true;
            if a.status != 405 {
                methods.insert(m.to_string());
            }
        }
        if routed {
            found.insert(path.clone(), methods);
        }
    }
    found
}

/// Compares what the service serves with the spec, and with the hand list.
async fn check_routes(
    addr: SocketAddr,
    spec: &Value,
    sources: &[&str],
    by_hand: &[(&str, &[&str])],
) -> Vec<String> {
    let mut problems = Vec::new();
    let candidates = path_literals(sources);
    let live = served(addr, &candidates).await;
    let docs = documented(spec);
    for (path, methods) in &live {
        match docs.get(path) {
            None => problems.push(format!(
                "undocumented route: {path} ({methods:?}) is served but not in the spec"
            )),
            Some(d) if d != methods => problems.push(format!(
                "{path}: served methods {methods:?}, documented {d:?}"
            )),
            Some(_) => {}
        }
    }
    for path in docs.keys() {
        if !live.contains_key(path) {
            problems.push(format!(
                "{path} is documented but not served (or not a literal in {sources:?})"
            ));
        }
    }
    for (path, methods) in by_hand {
        let want: BTreeSet<String> = methods.iter().map(|m| m.to_string()).collect();
        if live.get(*path) != Some(&want) {
            problems.push(format!(
                "the probe found {path} as {:?}, the hand list says {want:?}: the route scan misses routes",
                live.get(*path)
            ));
        }
    }
    problems
}

/// Discovery's routes, from `routes` in discovery/src/lib.rs and the console.
const DISCOVERY_ROUTES: &[(&str, &[&str])] = &[
    ("/", &["get"]),
    ("/console.js", &["get"]),
    ("/console-common.js", &["get"]),
    ("/console.css", &["get"]),
    ("/health_check", &["get"]),
    ("/ready", &["get"]),
    ("/metrics", &["get"]),
    ("/api/register", &["post"]),
    ("/api/register/", &["post"]),
    ("/api/deregister", &["post"]),
    ("/api/deregister/", &["post"]),
    ("/api/unregister", &["post"]),
    ("/api/lookup", &["get", "post"]),
    ("/api/lookup/", &["get", "post"]),
    ("/api/maintenance", &["delete", "put"]),
    ("/api/maintenance/", &["delete", "put"]),
    ("/api/services", &["get"]),
    ("/api/store", &["get"]),
    ("/api/watch", &["get"]),
];

/// The gateway admin port's routes, from gateway/src/admin/status.rs, ready.rs and the console.
const GATEWAY_ADMIN_ROUTES: &[(&str, &[&str])] = &[
    ("/", &["get"]),
    ("/console.js", &["get"]),
    ("/console-common.js", &["get"]),
    ("/console.css", &["get"]),
    ("/health_check", &["get"]),
    ("/ready", &["get"]),
    ("/metrics", &["get"]),
    ("/status", &["get"]),
];

fn check_spec_shape(spec: &Value, name: &str) {
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{name}: not OpenAPI 3.1"
    );
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (m, op) in deref(spec, item).as_object().unwrap() {
            if !METHODS.contains(&m.as_str()) {
                continue;
            }
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{name}: {m} {path} documents no response"
            );
            assert!(
                op["operationId"].is_string(),
                "{name}: {m} {path} has no operationId"
            );
        }
    }
}

#[async_std::test]
async fn discovery_openapi_matches_the_service() {
    let spec = json_file("docs/openapi/discovery.json");
    check_spec_shape(&spec, "discovery.json");
    let discovery = testkit::discovery().await;
    let apps = testkit::system::apps(&discovery.url(), 2).await;
    testkit::wait_until(
        "both apps are available",
        Duration::from_secs(5),
        || async {
            let (_, services) =
                testkit::client::get(&format!("{}/api/services", discovery.url())).await;
            services["service A"]
                .as_array()
                .is_some_and(|a| a.iter().filter(|i| i["status"] == "available").count() == 2)
        },
    )
    .await;
    let mut problems = check_operations(discovery.addr(), &spec).await;
    problems.extend(
        check_routes(
            discovery.addr(),
            &spec,
            &["discovery/src", "shared/src"],
            DISCOVERY_ROUTES,
        )
        .await,
    );
    assert!(
        problems.is_empty(),
        "docs/openapi/discovery.json and discovery disagree:\n{}",
        problems.join("\n")
    );
    for a in apps {
        a.shutdown().await;
    }
    discovery.shutdown().await;
}

#[async_std::test]
async fn gateway_admin_openapi_matches_the_service() {
    let spec = json_file("docs/openapi/gateway-admin.json");
    check_spec_shape(&spec, "gateway-admin.json");
    let discovery = testkit::discovery().await;
    let apps = testkit::system::apps(&discovery.url(), 1).await;
    let gateway = gateway::spawn(testkit::system::gateway_config(&discovery.url()))
        .await
        .unwrap();
    let members: Vec<String> = apps.iter().map(|a| a.served_by().to_string()).collect();
    testkit::system::wait_ring(&gateway.admin_url(), &members, Duration::from_secs(5)).await;
    let mut problems = check_operations(gateway.admin_addr(), &spec).await;
    problems.extend(
        check_routes(
            gateway.admin_addr(),
            &spec,
            &["gateway/src", "shared/src"],
            GATEWAY_ADMIN_ROUTES,
        )
        .await,
    );
    assert!(
        problems.is_empty(),
        "docs/openapi/gateway-admin.json and the gateway's admin port disagree:\n{}",
        problems.join("\n")
    );
    gateway.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
    discovery.shutdown().await;
}
