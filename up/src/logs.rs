//! Follows the processes' log files and prints them readably. The children
//! write JSON lines (their stdout is a file, so that is their default):
//! `level` (femme's numbers, or a name), `time` (RFC 3339, or the epoch
//! milliseconds older builds wrote), `msg`, `target`, key-values. A child
//! started with `LOG_FORMAT=pretty` writes readable lines already; those are
//! shown as they are, with the process name after their time.

use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use shared::logging::{escape_controls, strip_ansi};

/// Whether to colour the output (a terminal, and NO_COLOR unset).
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

struct Followed {
    name: String,
    path: PathBuf,
    offset: u64,
    partial: String,
}

/// The log files being followed.
pub struct Tail {
    files: Vec<Followed>,
    colour: bool,
    width: usize,
}

impl Tail {
    pub fn new(colour: bool) -> Tail {
        Tail {
            files: Vec::new(),
            colour,
            width: 9,
        }
    }

    pub fn follow(&mut self, name: &str, path: &Path) {
        self.width = self.width.max(name.len());
        self.files.push(Followed {
            name: name.to_string(),
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        });
    }

    /// Follows `old` under a new name and path (its file was renamed: the offset holds).
    pub fn rename(&mut self, old: &str, name: &str, path: &Path) {
        self.width = self.width.max(name.len());
        for f in self.files.iter_mut().filter(|f| f.name == old) {
            f.name = name.to_string();
            f.path = path.to_path_buf();
        }
    }

    /// Prints whatever was appended since the last call. The files are opened
    /// afresh each time, so a process restarted by someone else still shows.
    pub fn poll(&mut self, out: &mut crate::out::Out) {
        for f in &mut self.files {
            let Ok(mut file) = File::open(&f.path) else {
                continue;
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len < f.offset {
                f.offset = 0; // truncated: start over
            }
            if file.seek(SeekFrom::Start(f.offset)).is_err() {
                continue;
            }
            let mut bytes = Vec::new();
            if let Ok(n) = file.read_to_end(&mut bytes) {
                f.offset += n as u64;
            }
            f.partial.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(end) = f.partial.find('\n') {
                let line: String = f.partial.drain(..=end).collect();
                out.line(render(&f.name, line.trim_end(), self.width, self.colour));
            }
        }
    }
}

/// One readable line: time, process, level, message, fields. Control
/// characters a child logged (escaped in its JSON) stay escaped here, so no
/// log line can drive the operator's terminal.
pub fn render(name: &str, line: &str, width: usize, colour: bool) -> String {
    let paint = |code: &str, text: &str| {
        if colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    let who = paint("36", &format!("{name:<width$}"));
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str::<serde_json::Value>(line)
    else {
        return plain(&who, line);
    };
    let level = match fields.remove("level") {
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(50..) => "ERROR",
            Some(40..=49) => "WARN",
            Some(30..=39) => "INFO",
            Some(20..=29) => "DEBUG",
            _ => "TRACE",
        },
        Some(serde_json::Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "error" | "fatal" => "ERROR",
            "warn" | "warning" => "WARN",
            "info" => "INFO",
            "debug" => "DEBUG",
            _ => "TRACE",
        },
        _ => "INFO",
    };
    let level = match level {
        "ERROR" => paint("31", "ERROR"),
        "WARN" => paint("33", "WARN "),
        other => format!("{other:<5}"),
    };
    let time = match fields.remove("time") {
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .map(shared::logging::clock_ms)
            .unwrap_or_default(),
        Some(serde_json::Value::String(s)) => rfc3339_clock(&s).unwrap_or_default(),
        _ => String::new(),
    };
    let msg = match fields.remove("msg") {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    // The process name says where a line comes from; the module is noise here.
    fields.remove("target");
    let rest: Vec<String> = fields
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            v => format!("{k}={v}"),
        })
        .collect();
    let msg = escape_controls(&msg);
    let rest = escape_controls(&rest.join(" ")).into_owned();
    format!("{time:<12} {who} {level} {msg}  {}", paint("2", &rest))
}

/// A line that is not JSON: a child's pretty log line (`HH:MM:SS.mmm ...`,
/// its time put first) or anything else it printed (a panic's message),
/// colour codes dropped and control characters escaped.
fn plain(who: &str, line: &str) -> String {
    let text = strip_ansi(line);
    let text = escape_controls(&text);
    match text.split_once(' ') {
        Some((time, rest)) if is_clock(time) => format!("{time} {who} {rest}"),
        _ => format!("             {who} {text}"),
    }
}

/// `HH:MM:SS.mmm`.
fn is_clock(s: &str) -> bool {
    s.len() == 12
        && s.bytes().enumerate().all(|(i, b)| match i {
            2 | 5 => b == b':',
            8 => b == b'.',
            _ => b.is_ascii_digit(),
        })
}

/// `HH:MM:SS.mmm` of an RFC 3339 time (`2026-11-26T07:45:01.123Z`).
fn rfc3339_clock(time: &str) -> Option<String> {
    let clock = time.get(11..)?;
    let clock: String = clock
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, ':' | '.'))
        .take(12)
        .collect();
    (clock.len() >= 8).then_some(clock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_become_readable() {
        let line = r#"{"level":40,"time":"2026-11-26T01:02:03.004Z","msg":"failing over","target":"gateway::failover","request_id":"ab","attempt":1}"#;
        assert_eq!(
            render("gateway", line, 9, false),
            "01:02:03.004 gateway   WARN  failing over  attempt=1 request_id=ab"
        );
        // What femme wrote before: epoch milliseconds.
        let femme = r#"{"level":30,"time":3723004,"msg":"app listening on http://127.0.0.1:8080"}"#;
        assert_eq!(
            render("app", femme, 4, false),
            "01:02:03.004 app  INFO  app listening on http://127.0.0.1:8080  "
        );
        let named = r#"{"level":"error","time":"2026-11-26T01:02:03Z","msg":"x"}"#;
        assert_eq!(
            render("app", named, 4, false),
            "01:02:03     app  ERROR x  "
        );
    }

    #[test]
    fn escaped_control_characters_stay_escaped() {
        let line = r#"{"level":40,"time":"2026-11-26T01:02:03.004Z","msg":"bad \u001b[2J head\r\n","path":"/\u0007"}"#;
        let shown = render("gateway", line, 9, false);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert!(shown.contains(r"bad \u{1b}[2J head\r\n"), "{shown:?}");
        assert!(shown.contains(r"path=/\u{7}"), "{shown:?}");
    }

    #[test]
    fn other_lines_are_shown_as_they_are() {
        assert_eq!(
            render("app", "panicked at 'x\r\u{7}'", 4, false),
            r"             app  panicked at 'x\r\u{7}'"
        );
        // A child forced to LOG_FORMAT=pretty: its own time goes first.
        let pretty = "\u{1b}[2m01:02:03.004\u{1b}[0m \u{1b}[33mWARN \u{1b}[0m gateway::failover failing over";
        assert_eq!(
            render("gateway", pretty, 9, false),
            "01:02:03.004 gateway   WARN  gateway::failover failing over"
        );
    }
}
