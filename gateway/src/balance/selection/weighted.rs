//! Smooth weighted round robin (nginx's algorithm) with slow start
//! (HAProxy's `slowstart`).
//!
//! nginx walks every member on every pick under a lock (its shared zone).
//! Here the walk is done once per ring generation: the whole cycle of
//! picks is laid out as a schedule (weights 1/2/3 give `c b a c b c`,
//! interleaved, never a run where it can be avoided), and a pick is one
//! atomic add into it, shared by every worker like [`super::RoundRobin`].
//!
//! Slow start: while a member is younger in the ring than `slow_start`, its
//! effective weight is its weight times its age over `slow_start` (at least
//! a twentieth of it), and the schedule is laid out again every twentieth of
//! `slow_start`, by whichever pick finds it due. Equal weights and no member
//! ramping give plain round robin.

use super::{Selection, Share};
use crate::balance::pool::Upstream;
use crate::runtime::clock;
use crate::runtime::slots::Padded;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Steps of a ramp: effective weights move in twentieths of a weight.
const RAMP_STEPS: u64 = 20;
/// Longest schedule laid out; heavier weight sums are scaled down to fit
/// (shares then hold to within one pick in this many).
const MAX_SCHEDULE: u64 = 1 << 16;
/// No rebuild due.
const NEVER: u64 = u64::MAX;

/// Picks along a precomputed smooth weighted cycle.
#[derive(Debug)]
pub(crate) struct SmoothWeighted {
    shares: Vec<Share>,
    slow_start_ms: u64,
    /// Member indexes in pick order: one whole cycle.
    schedule: ArcSwap<Vec<u32>>,
    cursor: Padded<AtomicUsize>,
    /// [`clock`] milliseconds when the schedule is laid out again, while a
    /// member ramps up; [`NEVER`] otherwise.
    rebuild_at: AtomicU64,
}

impl SmoothWeighted {
    pub(crate) fn new(shares: Vec<Share>, slow_start: Duration, position: usize) -> Self {
        let slow_start_ms = u64::try_from(slow_start.as_millis()).unwrap_or(u64::MAX);
        let made = SmoothWeighted {
            shares,
            slow_start_ms,
            schedule: ArcSwap::from_pointee(Vec::new()),
            cursor: Padded::new(AtomicUsize::new(position)),
            rebuild_at: AtomicU64::new(NEVER),
        };
        made.lay_out(clock());
        made
    }

    /// Lays out the schedule for the effective weights at `now_ms`, and
    /// when the next one is due.
    fn lay_out(&self, now_ms: u64) {
        let (weights, ramping) = effective_weights(&self.shares, self.slow_start_ms, now_ms);
        self.schedule.store(Arc::new(schedule(&weights)));
        let step = (self.slow_start_ms / RAMP_STEPS).max(50);
        let next = if ramping {
            now_ms.saturating_add(step)
        } else {
            NEVER
        };
        self.rebuild_at.store(next, Ordering::Release);
    }

    /// The member for the next pick, as at `now_ms`.
    fn pick_at(&self, now_ms: u64, members: usize) -> usize {
        let due = self.rebuild_at.load(Ordering::Acquire);
        // One pick lays the schedule out again; the others go on with the
        // old one meanwhile.
        if now_ms >= due
            && self
                .rebuild_at
                .compare_exchange(due, NEVER, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.lay_out(now_ms);
        }
        let schedule = self.schedule.load();
        let turn = self.cursor.fetch_add(1, Ordering::Relaxed);
        match schedule.get(turn % schedule.len().max(1)) {
            Some(at) => *at as usize % members.max(1),
            None => turn % members.max(1),
        }
    }
}

impl Selection for SmoothWeighted {
    fn next(&self, members: &[Arc<Upstream>]) -> usize {
        self.pick_at(clock(), members.len())
    }

    fn position(&self) -> usize {
        self.cursor.load(Ordering::Relaxed)
    }
}

/// Each member's weight at `now_ms` in twentieths, ramped while younger
/// than `slow_start_ms`, reduced by their greatest common divisor; and
/// whether any is still ramping.
fn effective_weights(shares: &[Share], slow_start_ms: u64, now_ms: u64) -> (Vec<u64>, bool) {
    let mut ramping = false;
    let mut weights: Vec<u64> = shares
        .iter()
        .map(|s| {
            let full = u64::from(s.weight.max(1)) * RAMP_STEPS;
            let age = now_ms.saturating_sub(s.joined_ms);
            if slow_start_ms == 0 || age >= slow_start_ms {
                return full;
            }
            ramping = true;
            let ramped = u128::from(full) * u128::from(age) / u128::from(slow_start_ms);
            (ramped as u64).max(u64::from(s.weight.max(1)))
        })
        .collect();
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    for w in &mut weights {
        *w /= divisor;
    }
    (weights, ramping)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One cycle of nginx's smooth weighted round robin over `weights`: each
/// pick adds every member's weight to its current value, takes the largest
/// (the first on a tie) and subtracts the total from it.
fn schedule(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let weights: Vec<u64> = if total > MAX_SCHEDULE {
        weights
            .iter()
            .map(|w| (w * MAX_SCHEDULE / total).max(1))
            .collect()
    } else {
        weights.to_vec()
    };
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(weights: &[u32], joined_ms: u64) -> Vec<Share> {
        weights
            .iter()
            .map(|w| Share {
                weight: *w,
                joined_ms,
            })
            .collect()
    }

    #[test]
    fn weights_one_two_three_interleave_smoothly() {
        assert_eq!(schedule(&[1, 2, 3]), [2, 1, 0, 2, 1, 2]);
        let s = SmoothWeighted::new(shares(&[1, 2, 3], 0), Duration::ZERO, 0);
        let mut counts = [0; 3];
        for _ in 0..600 {
            counts[s.pick_at(0, 3)] += 1;
        }
        assert_eq!(counts, [100, 200, 300]);
    }

    #[test]
    fn equal_weights_are_plain_round_robin() {
        assert_eq!(schedule(&[1, 1, 1, 1]), [0, 1, 2, 3]);
        assert_eq!(effective_weights(&shares(&[5, 5], 0), 0, 0).0, [1, 1]);
        let s = SmoothWeighted::new(shares(&[7, 7, 7], 0), Duration::ZERO, 0);
        let picks: Vec<usize> = (0..6).map(|_| s.pick_at(0, 3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_new_member_ramps_up_over_slow_start() {
        // Two members in the ring for long; a third joins at 10 s with a
        // 10 s slow start.
        let mut all = shares(&[1, 1], 0);
        all.push(Share {
            weight: 1,
            joined_ms: 10_000,
        });
        let s = SmoothWeighted::new(all, Duration::from_secs(10), 0);
        let share_at = |now: u64| {
            let picks = 3000;
            let new = (0..picks).filter(|_| s.pick_at(now, 3) == 2).count();
            new as f64 / picks as f64
        };
        let quarter = share_at(12_500);
        let half = share_at(15_000);
        let three_quarters = share_at(17_500);
        let full = share_at(20_000);
        // Effective weights 1/4, 1/2, 3/4 and 1 against two of 1.
        assert!((quarter - 0.25 / 2.25).abs() < 0.02, "{quarter}");
        assert!((half - 0.5 / 2.5).abs() < 0.02, "{half}");
        assert!(
            (three_quarters - 0.75 / 2.75).abs() < 0.02,
            "{three_quarters}"
        );
        assert!((full - 1.0 / 3.0).abs() < 0.01, "{full}");
        assert_eq!(s.rebuild_at.load(Ordering::Relaxed), NEVER, "ramp over");
    }

    #[test]
    fn heavy_weight_sums_are_scaled_to_a_bounded_schedule() {
        let weights: Vec<u64> = (0..200).map(|_| 1000 * RAMP_STEPS).collect();
        let (reduced, _) = effective_weights(&shares(&[1000; 200], 0), 0, 0);
        assert!(reduced.iter().all(|w| *w == 1), "reduced by their divisor");
        let mixed: Vec<u64> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| w + i as u64)
            .collect();
        let order = schedule(&mixed);
        assert!(order.len() as u64 <= MAX_SCHEDULE + 200);
        assert!(
            (0..200).all(|i| order.contains(&i)),
            "everyone still gets turns"
        );
    }
}
