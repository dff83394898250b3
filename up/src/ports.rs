//! Learning the ports a child got. With `--free-ports` each child binds port 0
//! itself (so no other process can take the port between a check and the
//! bind) and says where it listens in its log, as every service does:
//! `discovery listening on http://ADDR`, `app listening on ...`, `app admin
//! listening on ...`, `gateway listening on ...`, `gateway admin listening on
//! ...`. The same lines testkit's `Proc::listening` reads.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `ADDR` from a `<what> listening on http://ADDR` line (JSON or pretty log),
/// or `https://ADDR` (a service serving TLS), or the gateway's `gateway TLS
/// port on https://ADDR`.
pub fn listening_addr(line: &str, what: &str) -> Option<SocketAddr> {
    let rest = [
        format!("{what} listening on http://"),
        format!("{what} listening on https://"),
        format!("{what} on https://"),
    ]
    .iter()
    .find_map(|needle| Some(&line[line.find(needle.as_str())? + needle.len()..]))?;
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

/// A child's log, read as it grows, for its listening lines.
#[derive(Debug)]
pub struct Listening {
    log: PathBuf,
    offset: u64,
    partial: String,
}

impl Listening {
    pub fn new(log: &Path) -> Listening {
        Listening {
            log: log.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// Reads what the log gained; sets `found[i]` once `whats[i]`'s line shows.
    pub fn poll(&mut self, whats: &[&str], found: &mut [Option<SocketAddr>]) {
        let Ok(mut file) = File::open(&self.log) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        if let Ok(n) = file.read_to_end(&mut bytes) {
            self.offset += n as u64;
        }
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let line = shared::logging::strip_ansi(&line);
            for (what, slot) in whats.iter().zip(found.iter_mut()) {
                if slot.is_none() {
                    *slot = listening_addr(&line, what);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_listening_lines_give_their_addresses() {
        let json = r#"{"level":30,"time":"2026-11-26T01:02:03.004Z","msg":"app listening on http://127.0.0.1:41234","addr":"127.0.0.1:41234"}"#;
        assert_eq!(
            listening_addr(json, "app"),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(listening_addr(json, "app admin"), None);
        let admin =
            "app admin listening on http://[::1]:9 (chaos knobs, metrics; never registered)";
        assert_eq!(
            listening_addr(admin, "app admin"),
            Some("[::1]:9".parse().unwrap())
        );
        assert_eq!(listening_addr(admin, "app"), None);
        let pretty = "01:02:03.004 INFO  gateway gateway admin listening on http://127.0.0.1:5";
        assert_eq!(listening_addr(pretty, "gateway"), None);
        assert_eq!(
            listening_addr(pretty, "gateway admin"),
            Some("127.0.0.1:5".parse().unwrap())
        );
        let tls = "01:02:03.004 INFO  gateway gateway TLS port on https://127.0.0.1:6, opened with the client port";
        assert_eq!(
            listening_addr(tls, "gateway TLS port"),
            Some("127.0.0.1:6".parse().unwrap())
        );
        assert_eq!(listening_addr(tls, "gateway"), None);
        let https = "discovery listening on https://127.0.0.1:7";
        assert_eq!(
            listening_addr(https, "discovery"),
            Some("127.0.0.1:7".parse().unwrap())
        );
    }

    #[test]
    fn a_growing_log_is_read_line_by_line() {
        let path = testkit::tempdir::TempFile::new(format!("up-ports-{}.log", std::process::id()));
        std::fs::write(
            &path,
            "starting\n{\"msg\":\"app listening on http://127.0.0.1:4",
        )
        .unwrap();
        let mut l = Listening::new(&path);
        let mut found = [None, None];
        l.poll(&["app", "app admin"], &mut found);
        assert_eq!(found, [None, None], "half a line is not read yet");
        let more = "1\"}\n{\"msg\":\"app admin listening on http://127.0.0.1:42\"}\n";
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, more.as_bytes()).unwrap();
        l.poll(&["app", "app admin"], &mut found);
        assert_eq!(
            found,
            [
                Some("127.0.0.1:41".parse().unwrap()),
                Some("127.0.0.1:42".parse().unwrap())
            ]
        );
    }
}
