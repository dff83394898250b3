//! The standard `process_*` metrics (open descriptors, resident memory, CPU
//! time, start time), read from `/proc/self` at scrape time, in the
//! Prometheus text format. Every service appends them to its `/metrics`.
//!
//! Linux only: elsewhere, or when `/proc` cannot be read, the metrics that
//! cannot be read are left out rather than reported as zero.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// The Prometheus text format's content type: what scrapers expect, and what
/// a browser shows instead of downloading.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Turns prometheus-client's OpenMetrics text into the Prometheus text
/// format 0.0.4: a counter's `# HELP`/`# TYPE` name its `_total` samples,
/// `# UNIT` and `# EOF` go, an `info` family becomes a gauge. Samples stay
/// as they are.
pub fn text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(line.trim_end()),
            None if line.starts_with("# TYPE ") && line.ends_with(" info") => {
                out.push_str(&line[..line.len() - " info".len()]);
                out.push_str(" gauge");
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, which the
/// kernel fixes at 100 for user space on every architecture Rust targets).
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Process {
    pub open_fds: Option<u64>,
    pub resident_memory_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    /// Unix time the process started, in seconds.
    pub start_time_seconds: Option<f64>,
    pub max_fds: Option<u64>,
}

impl Process {
    /// Reads the figures now; what cannot be read is `None`.
    pub fn read() -> Process {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let fields = stat.as_deref().and_then(stat_fields);
        // Fields after the command name, counted from 3 (`state`) as in proc(5).
        let field = |n: usize| -> Option<f64> { fields.as_ref()?.get(n - 3)?.parse().ok() };
        let cpu_seconds = match (field(14), field(15)) {
            (Some(user), Some(system)) => Some((user + system) / USER_HZ),
            _ => None,
        };
        let start_time_seconds = match (field(22), boot_time()) {
            (Some(ticks), Some(boot)) => Some(boot + ticks / USER_HZ),
            _ => None,
        };
        Process {
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
            resident_memory_bytes: status_kib("VmRSS:").map(|kib| kib * 1024),
            cpu_seconds,
            start_time_seconds,
            max_fds: max_fds(),
        }
    }

    /// Appends the metrics in the Prometheus text format (version 0.0.4).
    pub fn render(&self, out: &mut String) {
        let mut metric = |name: &str, kind: &str, help: &str, value: Option<f64>| {
            if let Some(value) = value {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
                );
            }
        };
        metric(
            "process_open_fds",
            "gauge",
            "Open file descriptors",
            self.open_fds.map(|n| n as f64),
        );
        metric(
            "process_max_fds",
            "gauge",
            "Limit of open file descriptors",
            self.max_fds.map(|n| n as f64),
        );
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes",
            self.resident_memory_bytes.map(|n| n as f64),
        );
        metric(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent in seconds",
            self.cpu_seconds,
        );
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch in seconds",
            self.start_time_seconds,
        );
    }
}

/// Reads `/proc/self` and appends the `process_*` metrics to `out`.
pub fn render(out: &mut String) {
    Process::read().render(out);
}

/// The fields of `/proc/self/stat` after the command name, which is in
/// parentheses and may itself hold spaces and parentheses.
fn stat_fields(stat: &str) -> Option<Vec<String>> {
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// A `kB` figure of `/proc/self/status`, e.g. `VmRSS:`.
fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Unix time of the boot (`btime` of `/proc/stat`), which start times count from.
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    let btime: f64 = line["btime ".len()..].trim().parse().ok()?;
    // A sanity check against a clock far off from what /proc says.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    (btime > 0.0 && btime <= now).then_some(btime)
}

fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let p = Process::read();
        if !std::path::Path::new("/proc/self/stat").exists() {
            return; // not Linux
        }
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(
            p.resident_memory_bytes.is_some_and(|n| n > 1024 * 1024),
            "{p:?}"
        );
        assert!(p.cpu_seconds.is_some_and(|s| s >= 0.0), "{p:?}");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = p.start_time_seconds.unwrap();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started} vs {now}"
        );
        let mut out = String::new();
        p.render(&mut out);
        assert!(
            out.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total ")
        );
        assert!(out.contains("\nprocess_open_fds "), "{out}");
    }

    #[test]
    fn openmetrics_becomes_the_text_format() {
        let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{code=\"200\"} 3\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n# EOF\n";
        assert_eq!(
            text_format(om),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{code=\"200\"} 3\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n"
        );
    }

    #[test]
    fn a_command_name_with_parentheses_and_spaces_does_not_shift_fields() {
        let fields = stat_fields("42 (a) b (c) S 1 2 3").unwrap();
        assert_eq!(fields[0], "S");
        assert_eq!(fields[1], "1");
    }
}
