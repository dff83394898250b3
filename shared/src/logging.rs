//! Logging set-up: every binary logs through femme (pretty in debug builds,
//! ndjson in release builds), with the level from `--log-level` or `LOG_LEVEL`.

use std::sync::Once;

static INIT: Once = Once::new();

/// Starts femme once; later calls are ignored, so tests may call it freely.
pub fn init(level: Option<&str>) {
    let env = std::env::var("LOG_LEVEL").ok();
    let name = level.or(env.as_deref()).unwrap_or("info");
    let filter = name.parse().unwrap_or(log::LevelFilter::Info);
    INIT.call_once(|| femme::with_level(filter));
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
