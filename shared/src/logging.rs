//! Logging set-up: every binary logs through the `log` macros into the small
//! logger here, as one JSON object a line (`--log-format json`, the default
//! when stdout is not a terminal) or as readable lines (`pretty`, the default
//! on a terminal), with the level from `--log-level` or `LOG_LEVEL` and the
//! format from `--log-format` or `LOG_FORMAT`.
//!
//! Why not femme (the stack's first choice, used at first): femme 2.2
//! picks pretty or ndjson at compile time (`debug_assertions`), its two
//! loggers are private so no flag can choose one at run time, and it
//! `unwrap()`s every write to stdout, so a closed stdout (`just up | tee log`,
//! then the `tee` ended) panics every logging call of every task. This logger
//! keeps femme's ndjson field names (`level` as femme's number, 10 trace to
//! 50 error, `msg`, the key-values beside them) so existing consumers keep
//! working, writes `time` as RFC 3339 UTC, adds `target`, escapes every
//! control character, groups repeated warnings (see [`repeats`]) and drops a
//! line it cannot write instead of panicking.

mod format;
mod repeats;
mod time;

pub use format::escape_controls;
pub(crate) use time::civil_from_days;
pub use time::{clock_ms, rfc3339};

use repeats::{Admit, Repeats, Summary};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

static INIT: Once = Once::new();

/// Identical warnings (same level, target and message) within this window
/// print once; the count follows when the window closes.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(5);

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `HH:MM:SS.mmm LEVEL target message  key=value ...`, coloured on a terminal.
    Pretty,
    /// One JSON object a line: `level`, `time`, `msg`, `target`, key-values.
    Json,
}

impl LogFormat {
    /// `pretty` or `json` (any case), as `LOG_FORMAT` gives it.
    pub fn parse(name: &str) -> Option<LogFormat> {
        match name.trim().to_ascii_lowercase().as_str() {
            "pretty" => Some(LogFormat::Pretty),
            "json" | "ndjson" => Some(LogFormat::Json),
            _ => None,
        }
    }

    /// Pretty for a person at a terminal, JSON for files, pipes and collectors.
    pub fn for_stdout() -> LogFormat {
        if std::io::stdout().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        }
    }
}

/// Starts logging once with the format from `LOG_FORMAT` or stdout's kind;
/// later calls are ignored, so tests may call it freely.
pub fn init(level: Option<&str>) {
    init_with(level, None);
}

/// Starts logging once: the flag beats the environment (`LOG_LEVEL`,
/// `LOG_FORMAT`), which beats the defaults (info; pretty on a terminal).
pub fn init_with(level: Option<&str>, format: Option<LogFormat>) {
    let env = std::env::var("LOG_LEVEL").ok();
    let name = level.or(env.as_deref()).unwrap_or("info");
    let filter = name.parse().unwrap_or(log::LevelFilter::Info);
    let env_format = std::env::var("LOG_FORMAT")
        .ok()
        .filter(|f| !f.trim().is_empty());
    let bad_env = env_format
        .as_deref()
        .filter(|f| format.is_none() && LogFormat::parse(f).is_none());
    let format = format
        .or_else(|| env_format.as_deref().and_then(LogFormat::parse))
        .unwrap_or_else(LogFormat::for_stdout);
    INIT.call_once(|| {
        let colour = format == LogFormat::Pretty
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none();
        let logger = Logger::new(format, colour, REPEAT_WINDOW, Box::new(write_stdout));
        logger.start_timer();
        if log::set_boxed_logger(Box::new(logger)).is_ok() {
            log::set_max_level(filter);
        }
    });
    if let Some(bad) = bad_env {
        log::warn!(value = bad; "LOG_FORMAT must be pretty or json; using the default");
    }
}

/// Where lines go: stdout, or a test's buffer.
type Sink = Box<dyn Fn(&str) + Send + Sync>;

/// What the logger and its timer thread share.
struct State {
    repeats: Mutex<Repeats>,
    /// Woken when a new group starts, so the timer knows its next deadline.
    wake: Condvar,
    sink: Sink,
}

impl State {
    fn write(&self, text: &str) {
        if !text.is_empty() {
            (self.sink)(text);
        }
    }
}

/// The `log::Log` of every binary: formats, groups repeats, writes to stdout.
struct Logger {
    format: LogFormat,
    colour: bool,
    state: Arc<State>,
}

impl Logger {
    fn new(format: LogFormat, colour: bool, window: Duration, sink: Sink) -> Logger {
        Logger {
            format,
            colour,
            state: Arc::new(State {
                repeats: Mutex::new(Repeats::new(window)),
                wake: Condvar::new(),
                sink,
            }),
        }
    }

    /// A thread that prints each group's count when its window closes, even
    /// if nothing else is logged; without it (spawn failed) counts still
    /// print before the next different warning.
    fn start_timer(&self) {
        let state = self.state.clone();
        let (format, colour) = (self.format, self.colour);
        let _ = std::thread::Builder::new()
            .name("log-repeats".into())
            .spawn(move || timer(&state, format, colour));
    }

    fn line(&self, line: &format::Line) -> String {
        match self.format {
            LogFormat::Json => format::json(line),
            LogFormat::Pretty => format::pretty(line, self.colour),
        }
    }

    fn summaries(&self, summaries: &[Summary]) -> String {
        summaries
            .iter()
            .map(|s| self.line(&s.line()))
            .collect::<String>()
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format::Line::of(record);
        if record.level() > log::Level::Warn {
            self.state.write(&self.line(&line));
            return;
        }
        // Warnings and errors: hold the lock while writing, so a group's
        // count is printed before the line that closed it.
        let mut repeats = lock(&self.state.repeats);
        match repeats.admit(&line, Instant::now()) {
            Admit::Suppress => {}
            Admit::Print { flushed, new_group } => {
                let mut text = self.summaries(&flushed);
                text.push_str(&self.line(&line));
                self.state.write(&text);
                if new_group {
                    self.state.wake.notify_one();
                }
            }
        }
    }

    /// Prints every pending count now (at shutdown).
    fn flush(&self) {
        let pending = lock(&self.state.repeats).drain(Instant::now());
        self.state.write(&self.summaries(&pending));
        let _ = std::io::stdout().lock().flush();
    }
}

/// Prints each group's count when its window closes.
fn timer(state: &State, format: LogFormat, colour: bool) {
    let mut repeats = lock(&state.repeats);
    loop {
        let now = Instant::now();
        let due = repeats.expire(now);
        if !due.is_empty() {
            let text: String = due
                .iter()
                .map(|s| match format {
                    LogFormat::Json => format::json(&s.line()),
                    LogFormat::Pretty => format::pretty(&s.line(), colour),
                })
                .collect();
            state.write(&text);
        }
        repeats = match repeats.next_deadline() {
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                match state.wake.wait_timeout(repeats, wait) {
                    Ok((guard, _)) => guard,
                    Err(poisoned) => poisoned.into_inner().0,
                }
            }
            None => match state.wake.wait(repeats) {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            },
        };
    }
}

fn lock(repeats: &Mutex<Repeats>) -> std::sync::MutexGuard<'_, Repeats> {
    repeats
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One write of whole lines; a closed or full stdout loses them, nothing
/// more (femme panicked here).
fn write_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
}

/// A fresh request id: 16 hex digits, unique enough to find one request in the logs.
pub fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u64(..);
    (0..16)
        .map(|i| char::from(HEX[((n >> (60 - 4 * i)) & 0xf) as usize]))
        .collect()
}

/// Accepts a client's request id if it is short printable ASCII, so it is safe to log and echo.
pub fn valid_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 128 && id.iter().all(|b| b.is_ascii_graphic())
}

/// `line` without ANSI colour codes, so pretty logs can be searched as text.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;

    fn captured(window: Duration) -> (Logger, Arc<Mutex<String>>) {
        let out = Arc::new(Mutex::new(String::new()));
        let sink = out.clone();
        let logger = Logger::new(
            LogFormat::Json,
            false,
            window,
            Box::new(move |text| lock_text(&sink).push_str(text)),
        );
        logger.start_timer();
        (logger, out)
    }

    fn lock_text(text: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
        text.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log(logger: &Logger, level: log::Level, msg: &str, request_id: &str) {
        logger.log(
            &log::Record::builder()
                .level(level)
                .target("gateway::failover")
                .args(format_args!("{msg}"))
                .key_values(&[("request_id", request_id)])
                .build(),
        );
    }

    fn lines(out: &Mutex<String>) -> Vec<serde_json::Value> {
        lock_text(out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn the_timer_prints_the_count_when_the_window_closes() {
        log::set_max_level(log::LevelFilter::Trace);
        let (logger, out) = captured(Duration::from_millis(100));
        for i in 0..64 {
            log(
                &logger,
                log::Level::Warn,
                "failing over: 127.0.0.1:8081 timed out",
                &i.to_string(),
            );
        }
        log(
            &logger,
            log::Level::Info,
            "an info line is never grouped",
            "x",
        );
        log(
            &logger,
            log::Level::Info,
            "an info line is never grouped",
            "y",
        );
        let printed = lines(&out);
        assert_eq!(printed.len(), 3, "{printed:?}");
        assert_eq!(printed[0]["request_id"], "0");
        // Nothing else is logged: the timer closes the window.
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines(&out).len() < 4 {
            assert!(
                Instant::now() < deadline,
                "no count printed: {:?}",
                lines(&out)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let count = &lines(&out)[3];
        assert_eq!(count["level"], 40);
        assert_eq!(count["repeated"], 63);
        let msg = count["msg"].as_str().unwrap();
        assert!(
            msg.starts_with(
                "failing over: 127.0.0.1:8081 timed out ... repeated 63 times in the last "
            ),
            "{msg}"
        );
        // A new window: the same warning prints again.
        log(
            &logger,
            log::Level::Warn,
            "failing over: 127.0.0.1:8081 timed out",
            "64",
        );
        assert_eq!(lines(&out).len(), 5);
    }

    #[test]
    fn a_different_warning_or_a_flush_prints_the_count_first() {
        log::set_max_level(log::LevelFilter::Trace);
        let (logger, out) = captured(Duration::from_secs(60));
        for id in ["1", "2", "3"] {
            log(&logger, log::Level::Warn, "slow", id);
        }
        log(&logger, log::Level::Error, "down", "4");
        log(&logger, log::Level::Error, "down", "5");
        logger.flush();
        let msgs: Vec<String> = lines(&out)
            .iter()
            .map(|l| {
                l["msg"]
                    .as_str()
                    .unwrap()
                    .split(" in the last")
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            msgs,
            [
                "slow",
                "slow ... repeated 2 times",
                "down",
                "down ... repeated 1 times"
            ]
        );
    }

    #[test]
    fn log_format_names() {
        assert_eq!(LogFormat::parse(" JSON "), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("pretty"), Some(LogFormat::Pretty));
        assert_eq!(LogFormat::parse("xml"), None);
    }
}
