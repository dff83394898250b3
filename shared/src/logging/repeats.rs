//! Groups repeated warnings: one slow instance used to produce 64 identical
//! WARN lines in a millisecond. A warning or error whose level, target and
//! message (key-values aside: request ids differ) were printed less than a
//! window ago is counted instead of printed; the count is printed as
//! `<msg> ... repeated N times in the last Xs` when the window closes or
//! before the next warning that is printed.

use super::format::{Field, Line};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

/// Distinct warnings tracked at once; beyond it a new one is printed ungrouped.
const MAX_GROUPS: usize = 256;

type Key = (log::Level, String, String);

struct Group {
    since: Instant,
    suppressed: u64,
}

/// What to do with a warning.
#[derive(Debug)]
pub enum Admit {
    /// A repeat inside its window: counted.
    Suppress,
    /// Print it, after these counts of other warnings; `new_group`: a window
    /// started (the timer should look at its deadline).
    Print {
        flushed: Vec<Summary>,
        new_group: bool,
    },
}

/// A count to print: `count` repeats of a line over `span`.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub level: log::Level,
    pub target: String,
    pub msg: String,
    pub count: u64,
    pub span: Duration,
}

impl Summary {
    /// The line that reports it, at the level of the repeated one.
    pub fn line(&self) -> Line {
        Line {
            level: self.level,
            target: self.target.clone(),
            msg: format!(
                "{} ... repeated {} times in the last {:.1}s",
                self.msg,
                self.count,
                self.span.as_secs_f64()
            ),
            fields: vec![("repeated".to_string(), Field::U64(self.count))],
            at: SystemTime::now(),
        }
    }
}

/// The open windows, one per distinct warning.
pub struct Repeats {
    window: Duration,
    groups: HashMap<Key, Group>,
}

impl Repeats {
    pub fn new(window: Duration) -> Repeats {
        Repeats {
            window,
            groups: HashMap::new(),
        }
    }

    /// Counts `line` if it repeats one printed within the window; otherwise
    /// says to print it, with the pending counts of the others first.
    pub fn admit(&mut self, line: &Line, now: Instant) -> Admit {
        let key = (line.level, line.target.clone(), line.msg.clone());
        if let Some(group) = self.groups.get_mut(&key) {
            if now.saturating_duration_since(group.since) < self.window {
                group.suppressed += 1;
                return Admit::Suppress;
            }
        }
        let window = self.window;
        let mut flushed = Vec::new();
        self.groups.retain(|k, g| {
            let span = now.saturating_duration_since(g.since);
            if g.suppressed > 0 {
                flushed.push(summary(k, g, span));
                false
            } else {
                span < window && *k != key
            }
        });
        let new_group = self.groups.len() < MAX_GROUPS;
        if new_group {
            self.groups.insert(
                key,
                Group {
                    since: now,
                    suppressed: 0,
                },
            );
        }
        Admit::Print { flushed, new_group }
    }

    /// Closes the windows that ended by `now`; the counts to print.
    pub fn expire(&mut self, now: Instant) -> Vec<Summary> {
        let window = self.window;
        let mut due = Vec::new();
        self.groups.retain(|k, g| {
            let span = now.saturating_duration_since(g.since);
            if span < window {
                return true;
            }
            if g.suppressed > 0 {
                due.push(summary(k, g, span));
            }
            false
        });
        due
    }

    /// When the next window ends, if one is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups.values().map(|g| g.since + self.window).min()
    }

    /// Every pending count now (at shutdown); all windows close.
    pub fn drain(&mut self, now: Instant) -> Vec<Summary> {
        let due = self
            .groups
            .iter()
            .filter(|(_, g)| g.suppressed > 0)
            .map(|(k, g)| summary(k, g, now.saturating_duration_since(g.since)))
            .collect();
        self.groups.clear();
        due
    }
}

fn summary(key: &Key, group: &Group, span: Duration) -> Summary {
    Summary {
        level: key.0,
        target: key.1.clone(),
        msg: key.2.clone(),
        count: group.suppressed,
        span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warn(msg: &str, request_id: &str) -> Line {
        Line {
            level: log::Level::Warn,
            target: "gateway::failover".into(),
            msg: msg.into(),
            fields: vec![("request_id".into(), Field::Str(request_id.into()))],
            at: SystemTime::now(),
        }
    }

    fn printed(admit: Admit) -> Vec<Summary> {
        match admit {
            Admit::Print { flushed, .. } => flushed,
            Admit::Suppress => panic!("suppressed, expected printed"),
        }
    }

    const WINDOW: Duration = Duration::from_secs(5);

    #[test]
    fn identical_warnings_print_once_then_a_count_when_the_window_closes() {
        let mut r = Repeats::new(WINDOW);
        let t0 = Instant::now();
        let slow = "failing over: 127.0.0.1:8081 timed out";
        assert!(printed(r.admit(&warn(slow, "id0"), t0)).is_empty());
        for i in 1..64 {
            let at = t0 + Duration::from_micros(i);
            assert!(matches!(
                r.admit(&warn(slow, &format!("id{i}")), at),
                Admit::Suppress
            ));
        }
        assert_eq!(r.next_deadline(), Some(t0 + WINDOW));
        assert!(
            r.expire(t0 + Duration::from_secs(4)).is_empty(),
            "window still open"
        );
        let due = r.expire(t0 + WINDOW);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 63);
        assert_eq!(due[0].msg, slow);
        let line = due[0].line();
        assert_eq!(line.level, log::Level::Warn);
        assert_eq!(
            line.msg,
            format!("{slow} ... repeated 63 times in the last 5.0s")
        );
        assert_eq!(line.fields, vec![("repeated".to_string(), Field::U64(63))]);
        assert_eq!(r.next_deadline(), None);
        // After the window the same warning prints again, opening a new one.
        assert!(printed(r.admit(&warn(slow, "id64"), t0 + WINDOW)).is_empty());
        assert!(matches!(
            r.admit(&warn(slow, "id65"), t0 + WINDOW),
            Admit::Suppress
        ));
    }

    #[test]
    fn a_different_warning_prints_the_pending_count_first() {
        let mut r = Repeats::new(WINDOW);
        let t0 = Instant::now();
        printed(r.admit(&warn("a", "1"), t0));
        printed(r.admit(&warn("b", "1"), t0));
        // Interleaved repeats of a and b are both counted...
        for i in 0..3 {
            let at = t0 + Duration::from_millis(i);
            assert!(matches!(r.admit(&warn("a", "2"), at), Admit::Suppress));
            assert!(matches!(r.admit(&warn("b", "2"), at), Admit::Suppress));
        }
        // ...and a new warning prints both counts before itself.
        let mut flushed = printed(r.admit(&warn("c", "1"), t0 + Duration::from_millis(500)));
        flushed.sort_by(|x, y| x.msg.cmp(&y.msg));
        let counts: Vec<(&str, u64)> = flushed.iter().map(|s| (s.msg.as_str(), s.count)).collect();
        assert_eq!(counts, vec![("a", 3), ("b", 3)]);
        assert_eq!(flushed[0].span, Duration::from_millis(500));
        // Their windows closed with the count: the next "a" prints again.
        assert!(printed(r.admit(&warn("a", "3"), t0 + Duration::from_millis(600))).is_empty());
    }

    #[test]
    fn level_and_target_are_part_of_what_repeats() {
        let mut r = Repeats::new(WINDOW);
        let t0 = Instant::now();
        printed(r.admit(&warn("same", "1"), t0));
        let mut error = warn("same", "1");
        error.level = log::Level::Error;
        printed(r.admit(&error, t0));
        let mut other = warn("same", "1");
        other.target = "discovery::checker".into();
        printed(r.admit(&other, t0));
    }

    #[test]
    fn drain_reports_every_pending_count_and_the_map_stays_bounded() {
        let mut r = Repeats::new(WINDOW);
        let t0 = Instant::now();
        for i in 0..(MAX_GROUPS + 50) {
            printed(r.admit(&warn(&format!("distinct {i}"), "x"), t0));
        }
        assert_eq!(r.groups.len(), MAX_GROUPS);
        // Ungrouped beyond the bound: printed every time, never lost.
        printed(r.admit(&warn(&format!("distinct {}", MAX_GROUPS + 10), "x"), t0));
        assert!(matches!(
            r.admit(&warn("distinct 0", "y"), t0),
            Admit::Suppress
        ));
        let due = r.drain(t0 + Duration::from_secs(1));
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].msg.as_str(), due[0].count), ("distinct 0", 1));
        assert!(r.groups.is_empty());
    }
}
