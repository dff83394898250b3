//! Follows the processes' log files and prints them readably: femme writes
//! ndjson in release builds, which is for machines.

use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

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

/// One readable line: time, process, level, message, fields.
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
        return format!("             {who} {line}");
    };
    let level = match fields.remove("level").and_then(|l| l.as_u64()) {
        Some(50) => paint("31", "ERROR"),
        Some(40) => paint("33", "WARN "),
        Some(30) => "INFO ".to_string(),
        Some(20) => "DEBUG".to_string(),
        _ => "TRACE".to_string(),
    };
    let time = fields
        .remove("time")
        .and_then(|t| t.as_u64())
        .map(clock)
        .unwrap_or_default();
    let msg = match fields.remove("msg") {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let rest: Vec<String> = fields
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            v => format!("{k}={v}"),
        })
        .collect();
    format!(
        "{time} {who} {level} {msg}  {}",
        paint("2", &rest.join(" "))
    )
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
fn clock(ms: u64) -> String {
    let day = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3_600_000,
        day / 60_000 % 60,
        day / 1000 % 60,
        day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_becomes_readable() {
        let line =
            r#"{"level":40,"time":3723004,"msg":"failing over","request_id":"ab","attempt":1}"#;
        assert_eq!(
            render("gateway", line, 9, false),
            "01:02:03.004 gateway   WARN  failing over  attempt=1 request_id=ab"
        );
        assert_eq!(
            render("app", "panicked at x", 4, false),
            "             app  panicked at x"
        );
    }
}
