//! The result of a run: merged from every connection's tally, printed for a
//! person and written as JSON for a machine, with the pass/fail decision that
//! makes `loadtest` usable as a CI gate.

use crate::chaos::ChaosReport;
use crate::driver::{Sample, Tally, Transport};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// Distinct failures described in the summary.
const MAX_SAMPLES: usize = 10;

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// One instance's share of the answers.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Share {
    pub instance: String,
    pub count: u64,
    /// Percent of the attributed answers.
    pub share_pct: f64,
}

/// How evenly the answers spread over the instances (`x-served-by`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Spread {
    pub instances: Vec<Share>,
    /// Largest distance of one instance's count from an even share, in
    /// percent of that even share.
    pub max_deviation_pct: f64,
}

impl Spread {
    fn from_counts(mut counts: Vec<(String, u64)>) -> Spread {
        counts.sort();
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return Spread::default();
        }
        let even = total as f64 / counts.len() as f64;
        let max_deviation_pct = counts
            .iter()
            .map(|(_, n)| ((*n as f64 - even) / even * 100.0).abs())
            .fold(0.0, f64::max);
        Spread {
            instances: counts
                .into_iter()
                .map(|(instance, count)| Share {
                    instance,
                    count,
                    share_pct: count as f64 / total as f64 * 100.0,
                })
                .collect(),
            max_deviation_pct,
        }
    }
}

/// Requests that got no answer, with their total.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct TransportErrors {
    #[serde(flatten)]
    pub by_kind: Transport,
    pub total: u64,
}

/// How the run used TLS (an `https://` target).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct TlsUse {
    /// The version and cipher suite negotiated (the first connection's).
    pub negotiated: String,
    /// Full handshakes made: one per connection opened, including those
    /// opened again after the server or a fault closed one.
    pub handshakes: u64,
    /// The CA file trusted.
    pub ca: String,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    /// Method and URL the load went to.
    pub target: String,
    /// `closed` or `open`.
    pub mode: String,
    pub connections: usize,
    /// Open loop: the rate asked for.
    pub rate: Option<f64>,
    pub duration_s: f64,
    /// Wall time of the load, in-flight requests at the end included.
    pub elapsed_s: f64,
    pub body_size: usize,
    /// Whether echoes were compared and `x-served-by` required.
    pub verified: bool,
    /// Over TLS (`https://`): what was negotiated and how many handshakes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsUse>,
    /// Requests attempted, those without an answer included.
    pub requests: u64,
    pub answered: u64,
    pub ok: u64,
    /// Answered requests per second.
    pub throughput_rps: f64,
    /// Open loop: due requests never sent because every connection was busy until the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_sent: Option<u64>,
    /// From the write (closed loop) or the intended send time (open loop) to the whole answer.
    pub latency_us: Latency,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// 200s whose body was not the one sent.
    pub mismatches: u64,
    /// 200 echoes without `x-served-by`.
    pub unattributed: u64,
    pub transport_errors: TransportErrors,
    /// Requests that were not OK, for any reason.
    pub failed: u64,
    pub spread: Spread,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaos: Option<ChaosReport>,
    /// The first failure of each kind (by message), described.
    pub failure_samples: Vec<Sample>,
    /// The exit decision: every request OK, at least one answered, the chaos
    /// scenario (if any) carried out.
    pub passed: bool,
}

/// The run's facts the tallies do not hold.
#[derive(Clone, Debug)]
pub struct RunFacts {
    pub target: String,
    pub connections: usize,
    pub rate: Option<f64>,
    pub duration: Duration,
    pub elapsed: Duration,
    pub body_size: usize,
    pub verified: bool,
    /// The CA trusted, for an `https://` target; `None` for plain HTTP.
    pub cacert: Option<std::path::PathBuf>,
}

impl Summary {
    /// Merges the tallies and decides pass or fail.
    pub fn new(facts: RunFacts, tallies: &[Tally], chaos: Option<ChaosReport>) -> Summary {
        let mut all = Tally::default();
        for t in tallies {
            all.merge(t);
        }
        let h = &all.latency;
        let latency = if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50: h.value_at_quantile(0.5),
                p90: h.value_at_quantile(0.9),
                p99: h.value_at_quantile(0.99),
                p999: h.value_at_quantile(0.999),
                max: h.max(),
                mean: (h.mean() * 10.0).round() / 10.0,
            }
        };
        let duration_s = facts.duration.as_secs_f64();
        let chaos = chaos.map(|mut report| {
            if let Some((from, to)) = report.window(duration_s) {
                let (from, to) = ((from * 1e6) as u64, (to * 1e6) as u64);
                report.errors_during_fault = all
                    .failure_times
                    .iter()
                    .filter(|t| (from..=to).contains(*t))
                    .count() as u64;
            }
            report
        });
        // The first of each kind of failure, earliest first.
        all.samples.sort_by_key(|(at, _)| *at);
        let mut failure_samples: Vec<Sample> = Vec::new();
        for (at, what) in &all.samples {
            if failure_samples.len() == MAX_SAMPLES {
                break;
            }
            if !failure_samples.iter().any(|s| &s.what == what) {
                failure_samples.push(Sample {
                    at_s: (*at as f64 / 1000.0).round() / 1000.0,
                    what: what.clone(),
                });
            }
        }
        let transport = all.transport.total();
        let failed = all.sent - all.ok;
        let chaos_ok = chaos.as_ref().is_none_or(|c| c.problems.is_empty());
        let elapsed_s = facts.elapsed.as_secs_f64();
        Summary {
            target: facts.target,
            mode: if facts.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .into(),
            connections: facts.connections,
            rate: facts.rate,
            duration_s,
            elapsed_s,
            body_size: facts.body_size,
            verified: facts.verified,
            tls: facts.cacert.map(|ca| TlsUse {
                negotiated: all.tls_params.clone().unwrap_or_else(|| "none".into()),
                handshakes: all.opened,
                ca: ca.display().to_string(),
            }),
            requests: all.sent,
            answered: all.answered,
            ok: all.ok,
            throughput_rps: if elapsed_s > 0.0 {
                all.answered as f64 / elapsed_s
            } else {
                0.0
            },
            not_sent: facts.rate.map(|rate| {
                let due = (rate * duration_s).ceil() as u64;
                due.saturating_sub(all.sent)
            }),
            latency_us: latency,
            statuses: all.statuses.iter().copied().collect(),
            mismatches: all.mismatched,
            unattributed: all.unattributed,
            transport_errors: TransportErrors {
                by_kind: all.transport,
                total: transport,
            },
            failed,
            spread: Spread::from_counts(all.served_by),
            chaos,
            failure_samples,
            passed: failed == 0 && all.answered > 0 && chaos_ok,
        }
    }

    /// The process exit code: 0 only if the run passed.
    pub fn exit_code(&self) -> u8 {
        if self.passed {
            0
        } else {
            1
        }
    }

    /// Writes the summary as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// Microseconds, readably.
fn us(v: u64) -> String {
    if v >= 1_000_000 {
        format!("{:.2} s", v as f64 / 1e6)
    } else if v >= 1000 {
        format!("{:.2} ms", v as f64 / 1000.0)
    } else {
        format!("{v} µs")
    }
}

fn at(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |s| format!("{s:.2} s"))
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.rate {
            Some(rate) => format!(
                "open loop at {rate} req/s over {} connections",
                self.connections
            ),
            None => format!("closed loop, {} connections", self.connections),
        };
        writeln!(
            f,
            "{} for {:.1} s, {mode}, {}-byte JSON bodies",
            self.target, self.duration_s, self.body_size
        )?;
        if let Some(tls) = &self.tls {
            writeln!(
                f,
                "tls          {}, {} handshakes, trusting {}",
                tls.negotiated, tls.handshakes, tls.ca
            )?;
        }
        if !self.verified {
            writeln!(
                f,
                "verification OFF (--no-verify): bodies not compared, x-served-by not required"
            )?;
        }
        writeln!(
            f,
            "requests     {} sent, {} answered, {} OK in {:.2} s: {:.0} req/s",
            self.requests, self.answered, self.ok, self.elapsed_s, self.throughput_rps
        )?;
        if let Some(n) = self.not_sent.filter(|n| *n > 0) {
            writeln!(
                f,
                "not sent     {n} due requests: every connection was busy until the end"
            )?;
        }
        let l = &self.latency_us;
        if self.answered == 0 {
            writeln!(f, "latency      none: no answer")?;
        } else {
            writeln!(
                f,
                "latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}{}",
                us(l.p50),
                us(l.p90),
                us(l.p99),
                us(l.p999),
                us(l.max),
                if self.rate.is_some() {
                    "  (from the intended send time)"
                } else {
                    ""
                }
            )?;
        }
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(code, n)| format!("{code}: {n}"))
            .collect();
        writeln!(
            f,
            "statuses     {}",
            if statuses.is_empty() {
                "none".into()
            } else {
                statuses.join(", ")
            }
        )?;
        let t = &self.transport_errors.by_kind;
        writeln!(
            f,
            "transport    {} errors (connect {}, write {}, read {}, closed {}, timeout {})",
            self.transport_errors.total, t.connect, t.write, t.read, t.closed, t.timeout
        )?;
        if self.verified {
            writeln!(
                f,
                "mismatches   {} (200 with another body){}",
                self.mismatches,
                if self.unattributed > 0 {
                    format!("; {} echoes without x-served-by", self.unattributed)
                } else {
                    String::new()
                }
            )?;
        }
        if self.spread.instances.is_empty() {
            writeln!(f, "spread       no x-served-by seen")?;
        } else {
            writeln!(
                f,
                "spread       {} instances, largest deviation from an even share {:.1}%",
                self.spread.instances.len(),
                self.spread.max_deviation_pct
            )?;
            for s in &self.spread.instances {
                writeln!(
                    f,
                    "             {:<24} {:>10}  {:5.1}%",
                    s.instance, s.count, s.share_pct
                )?;
            }
        }
        if let Some(c) = &self.chaos {
            let tl = &c.timeline;
            writeln!(f, "chaos        {}: {}", c.kind, c.target)?;
            writeln!(f, "             {:>9}  fault injected", at(tl.injected_s))?;
            if c.kind == "discovery" {
                writeln!(
                    f,
                    "             {:>9}  discovery exited",
                    at(tl.discovery_exited_s)
                )?;
                writeln!(
                    f,
                    "             {:>9}  discovery restarted",
                    at(tl.lifted_s)
                )?;
                writeln!(
                    f,
                    "             {:>9}  gateway's watch reconnected",
                    at(tl.watch_reconnected_s)
                )?;
            } else {
                writeln!(
                    f,
                    "             {:>9}  instance left the traffic (its last answer)",
                    at(tl.left_s)
                )?;
                writeln!(f, "             {:>9}  fault lifted", at(tl.lifted_s))?;
                writeln!(
                    f,
                    "             {:>9}  instance rejoined the traffic (its first answer)",
                    at(tl.rejoined_s)
                )?;
            }
            writeln!(
                f,
                "             errors across the fault: {}",
                c.errors_during_fault
            )?;
            for p in &c.problems {
                writeln!(f, "             problem: {p}")?;
            }
        }
        for s in &self.failure_samples {
            writeln!(f, "failure      first at {:.3} s: {}", s.at_s, s.what)?;
        }
        if self.passed {
            writeln!(f, "result       PASS")
        } else {
            let mut why = Vec::new();
            if self.failed > 0 {
                why.push(format!(
                    "{} of {} requests failed",
                    self.failed, self.requests
                ));
            }
            if self.answered == 0 {
                why.push("no request was answered".to_string());
            }
            if self.chaos.as_ref().is_some_and(|c| !c.problems.is_empty()) {
                why.push("the chaos scenario did not run as planned".to_string());
            }
            writeln!(f, "result       FAIL: {}", why.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> RunFacts {
        RunFacts {
            target: "POST http://x/".into(),
            connections: 2,
            rate: None,
            duration: Duration::from_secs(1),
            elapsed: Duration::from_secs(1),
            body_size: 256,
            verified: true,
            cacert: None,
        }
    }

    #[test]
    fn spread_reports_shares_and_the_largest_deviation() {
        let s = Spread::from_counts(vec![("b".into(), 90), ("a".into(), 110), ("c".into(), 100)]);
        assert_eq!(s.instances[0].instance, "a");
        assert!((s.max_deviation_pct - 10.0).abs() < 1e-9);
        assert!((s.instances[1].share_pct - 30.0).abs() < 1e-9);
        assert_eq!(Spread::from_counts(vec![]), Spread::default());
    }

    #[test]
    fn any_failure_fails_the_run_and_chaos_errors_are_counted_in_the_window() {
        let mut t = Tally {
            sent: 10,
            answered: 10,
            ok: 10,
            ..Tally::default()
        };
        let s = Summary::new(facts(), std::slice::from_ref(&t), None);
        assert!(s.passed);
        assert_eq!(s.exit_code(), 0);
        assert!(s.to_string().contains("PASS"));
        t.ok = 9;
        t.mismatched = 1;
        t.failure_times = vec![100_000, 600_000];
        t.samples = vec![(600_000, "200 with a different body".into())];
        let mut chaos = ChaosReport::default();
        chaos.timeline.injected_s = Some(0.5);
        let s = Summary::new(facts(), &[t], Some(chaos));
        assert!(!s.passed);
        assert_eq!(s.exit_code(), 1);
        assert_eq!(s.mismatches, 1);
        assert_eq!(s.chaos.as_ref().unwrap().errors_during_fault, 1);
        let text = s.to_string();
        assert!(text.contains("FAIL: 1 of 10 requests failed"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(json["mismatches"], 1);
        assert_eq!(json["passed"], false);
        assert_eq!(json["failure_samples"][0]["at_s"], 0.6);
    }

    #[test]
    fn nothing_answered_is_a_failure_too() {
        let s = Summary::new(facts(), &[Tally::default()], None);
        assert!(!s.passed);
        assert!(s.to_string().contains("no request was answered"));
    }
}
