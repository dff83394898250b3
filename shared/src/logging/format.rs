//! One log record as a line of JSON or of readable text. Both escape every
//! control character (a logged header or path may hold ESC, CR or NUL), so
//! a line stays one line and a terminal showing it obeys no escape sequence.

use super::time;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::SystemTime;

/// A key-value's value, typed as far as `log` tells it.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
}

/// A record taken apart, owned so repeats can be kept and counted later.
#[derive(Clone, Debug)]
pub struct Line {
    pub level: log::Level,
    pub target: String,
    pub msg: String,
    pub fields: Vec<(String, Field)>,
    pub at: SystemTime,
}

impl Line {
    pub fn of(record: &log::Record<'_>) -> Line {
        struct Collect(Vec<(String, Field)>);
        impl<'kvs> log::kv::VisitSource<'kvs> for Collect {
            fn visit_pair(
                &mut self,
                key: log::kv::Key<'kvs>,
                value: log::kv::Value<'kvs>,
            ) -> Result<(), log::kv::Error> {
                self.0.push((key.as_str().to_string(), Field::of(&value)));
                Ok(())
            }
        }
        let mut fields = Collect(Vec::new());
        let _ = record.key_values().visit(&mut fields);
        let msg = match record.args().as_str() {
            Some(s) => s.to_string(),
            None => record.args().to_string(),
        };
        Line {
            level: record.level(),
            target: record.target().to_string(),
            msg,
            fields: fields.0,
            at: SystemTime::now(),
        }
    }
}

impl Field {
    fn of(value: &log::kv::Value<'_>) -> Field {
        if let Some(s) = value.to_borrowed_str() {
            Field::Str(s.to_string())
        } else if let Some(b) = value.to_bool() {
            Field::Bool(b)
        } else if let Some(n) = value.to_u64() {
            Field::U64(n)
        } else if let Some(n) = value.to_i64() {
            Field::I64(n)
        } else if let Some(x) = value.to_f64().filter(|x| x.is_finite()) {
            Field::F64(x)
        } else {
            Field::Str(value.to_string())
        }
    }
}

/// femme's numbers for the levels (pino's): 10 trace to 50 error.
pub fn level_number(level: log::Level) -> u8 {
    match level {
        log::Level::Trace => 10,
        log::Level::Debug => 20,
        log::Level::Info => 30,
        log::Level::Warn => 40,
        log::Level::Error => 50,
    }
}

/// Keys the line itself uses; a key-value of the same name is written as `field_<name>`.
const RESERVED: [&str; 4] = ["level", "time", "msg", "target"];

/// `{"level":40,"time":"2026-...Z","msg":"...","target":"...",<key-values>}` and a newline.
pub fn json(line: &Line) -> String {
    let mut out = String::with_capacity(96 + line.msg.len());
    let _ = write!(
        out,
        "{{\"level\":{},\"time\":\"{}\",\"msg\":",
        level_number(line.level),
        time::rfc3339(line.at)
    );
    json_str(&mut out, &line.msg);
    out.push_str(",\"target\":");
    json_str(&mut out, &line.target);
    for (key, value) in &line.fields {
        out.push(',');
        if RESERVED.contains(&key.as_str()) {
            json_str(&mut out, &format!("field_{key}"));
        } else {
            json_str(&mut out, key);
        }
        out.push(':');
        match value {
            Field::Str(s) => json_str(&mut out, s),
            Field::U64(n) => {
                let _ = write!(out, "{n}");
            }
            Field::I64(n) => {
                let _ = write!(out, "{n}");
            }
            Field::F64(x) => {
                let _ = write!(out, "{x}");
            }
            Field::Bool(b) => {
                let _ = write!(out, "{b}");
            }
        }
    }
    out.push_str("}\n");
    out
}

/// A JSON string; beyond what JSON requires it escapes DEL, the C1 controls
/// and the bidi controls, so the file is safe to `cat` as well as to parse.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Control characters (C0, DEL, C1) and the invisible bidi and direction marks.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with control and bidi characters written as Rust escapes (`\n`,
/// `\u{1b}`), for text bound for a terminal.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

const RESET: &str = "\x1b[0m";

/// `07:45:01.123 WARN  gateway::failover failing over  request_id=ab attempt=1`
/// and a newline; like femme's pretty lines, the target is bold in the
/// level's colour, and key-values follow on the same line so one grep finds all.
pub fn pretty(line: &Line, colour: bool) -> String {
    let paint = |code: &str, text: &str| -> String {
        if colour {
            format!("\x1b[{code}m{text}{RESET}")
        } else {
            text.to_string()
        }
    };
    let level_colour = match line.level {
        log::Level::Error => "31",
        log::Level::Warn => "33",
        log::Level::Info => "32",
        log::Level::Debug | log::Level::Trace => "34",
    };
    let mut out = format!(
        "{} {} {} {}",
        paint("2", &time::clock(line.at)),
        paint(level_colour, &format!("{:<5}", line.level)),
        paint(&format!("1;{level_colour}"), &escape_controls(&line.target)),
        escape_controls(&line.msg)
    );
    if !line.fields.is_empty() {
        let fields: Vec<String> = line
            .fields
            .iter()
            .map(|(key, value)| {
                let value = match value {
                    Field::Str(s) => escape_controls(s).into_owned(),
                    Field::U64(n) => n.to_string(),
                    Field::I64(n) => n.to_string(),
                    Field::F64(x) => x.to_string(),
                    Field::Bool(b) => b.to_string(),
                };
                format!("{}={value}", escape_controls(key))
            })
            .collect();
        out.push_str("  ");
        out.push_str(&paint("2", &fields.join(" ")));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// A line as `log::warn!(request_id = "ab", attempt = 1; "{msg}")` makes it.
    fn record(level: log::Level, msg: &str, kvs: &[(&str, log::kv::Value<'_>)]) -> Line {
        let mut line = Line::of(
            &log::Record::builder()
                .level(level)
                .target("gateway::failover")
                .args(format_args!("{msg}"))
                .key_values(&kvs)
                .build(),
        );
        line.at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        line
    }

    fn parse(text: &str) -> serde_json::Map<String, serde_json::Value> {
        assert!(text.ends_with('\n'), "{text:?}");
        assert_eq!(text.matches('\n').count(), 1, "one line: {text:?}");
        match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => map,
            other => panic!("not a JSON object: {text:?}: {other:?}"),
        }
    }

    #[test]
    fn json_keeps_femmes_fields_and_types_the_key_values() {
        let line = record(
            log::Level::Warn,
            "failing over: 127.0.0.1:8081 timed out",
            &[
                ("request_id", log::kv::Value::from("ab12")),
                ("attempt", log::kv::Value::from(2u32)),
                ("delta", log::kv::Value::from(-3i64)),
                ("ratio", log::kv::Value::from(0.5f64)),
                ("replayable", log::kv::Value::from(true)),
                ("msg", log::kv::Value::from("clash")),
            ],
        );
        let text = json(&line);
        let map = parse(&text);
        assert_eq!(map["level"], 40);
        assert_eq!(map["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(map["msg"], "failing over: 127.0.0.1:8081 timed out");
        assert_eq!(map["target"], "gateway::failover");
        assert_eq!(map["request_id"], "ab12");
        assert_eq!(map["attempt"], 2);
        assert_eq!(map["delta"], -3);
        assert_eq!(map["ratio"], 0.5);
        assert_eq!(map["replayable"], true);
        assert_eq!(map["field_msg"], "clash");
        let addr: std::net::SocketAddr = "[::1]:8080".parse().unwrap();
        let line = record(
            log::Level::Info,
            "app listening on http://[::1]:8080",
            &[("addr", log::kv::Value::from_display(&addr))],
        );
        assert_eq!(parse(&json(&line))["addr"], "[::1]:8080");
    }

    #[test]
    fn json_escapes_control_characters_and_stays_one_valid_line() {
        let hostile = "a\"b\\c\nd\re\tf\u{0}g\u{1b}[31mh\u{7f}i\u{85}j\u{202e}k ünï 🦀";
        let line = record(
            log::Level::Error,
            hostile,
            &[
                ("path", log::kv::Value::from(hostile)),
                ("k\"\n", log::kv::Value::from(1u8)),
            ],
        );
        let text = json(&line);
        for c in text.trim_end_matches('\n').chars() {
            assert!(!needs_escape(c), "raw {c:?} in {text:?}");
        }
        assert!(text.contains("\\u001b") && text.contains("\\u007f") && text.contains("\\u202e"));
        let map = parse(&text);
        assert_eq!(map["msg"], hostile, "escaped, not altered");
        assert_eq!(map["path"], hostile);
        assert_eq!(map["k\"\n"], 1);
    }

    #[test]
    fn bytes_that_are_not_utf8_arrive_replaced_never_raw() {
        let bytes = b"GET /\xff\xfe\x80 HTTP/1.1";
        let lossy = String::from_utf8_lossy(bytes);
        let line = record(
            log::Level::Warn,
            &format!("bad head {lossy}"),
            &[("head", log::kv::Value::from_debug(&bytes.as_slice()))],
        );
        let text = json(&line);
        let map = parse(&text);
        assert_eq!(
            map["msg"],
            "bad head GET /\u{fffd}\u{fffd}\u{fffd} HTTP/1.1"
        );
        assert!(map["head"].as_str().unwrap().starts_with("[71, 69, 84"));
        let pretty = pretty(&line, false);
        assert!(pretty.contains("bad head GET /\u{fffd}\u{fffd}\u{fffd} HTTP/1.1"));
    }

    #[test]
    fn pretty_is_one_readable_line_with_escapes_and_optional_colour() {
        let line = record(
            log::Level::Warn,
            "failing over\n\u{1b}[2Jforged",
            &[
                ("request_id", log::kv::Value::from("ab")),
                ("attempt", log::kv::Value::from(1u8)),
            ],
        );
        assert_eq!(
            pretty(&line, false),
            "22:13:20.123 WARN  gateway::failover failing over\\n\\u{1b}[2Jforged  request_id=ab attempt=1\n"
        );
        let coloured = pretty(&line, true);
        assert!(
            coloured.contains("\u{1b}[33mWARN \u{1b}[0m"),
            "{coloured:?}"
        );
        assert_eq!(crate::logging::strip_ansi(&coloured), pretty(&line, false));
        // What testkit and loadtest parse out of a pretty line.
        let listening = record(
            log::Level::Info,
            "discovery listening on http://127.0.0.1:8500",
            &[],
        );
        assert_eq!(
            crate::logging::strip_ansi(&pretty(&listening, true)),
            "22:13:20.123 INFO  gateway::failover discovery listening on http://127.0.0.1:8500\n"
        );
    }

    #[test]
    fn escape_controls_leaves_clean_text_alone() {
        assert!(matches!(escape_controls("plain ünï"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\u{1b}b\u{2066}"), "a\\u{1b}b\\u{2066}");
    }
}
