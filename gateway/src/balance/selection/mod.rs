//! How a ring's member is chosen for a request's first try: the seam
//! between a ring and its turn order, in the spirit of Pingora's
//! `BackendSelection`.
//!
//! Each ring generation (one set of members from discovery) gets its own
//! [`Selection`], built by the route's [`Policy`] and shared by every worker:
//! one atomic add per pick, so sequential clients see the instances strictly
//! in turn whatever the worker count (HAProxy keeps its rotation across
//! threads the same way). A new generation starts where the old one stood
//! ([`Selection::position`]), so a change of the set does not restart the
//! rotation at the first member.
//!
//! Two implementations: [`RoundRobin`] (a cursor modulo the members) and
//! [`SmoothWeighted`] (nginx's smooth weighted round robin, with HAProxy's
//! slow start). Least connections would be one more file: each upstream
//! keeps its count of requests in flight ([`Upstream::in_flight`]).

mod round_robin;
mod weighted;

pub(crate) use round_robin::RoundRobin;
pub(crate) use weighted::SmoothWeighted;

use crate::balance::pool::Upstream;
use shared::config::{Balance, RouteConfig};
use std::sync::Arc;
use std::time::Duration;

/// Chooses which member of a ring a request tries first.
pub(crate) trait Selection: std::fmt::Debug + Send + Sync {
    /// An index into `members` (the ring's, never empty), for the next
    /// request; each call takes a turn.
    fn next(&self, members: &[Arc<Upstream>]) -> usize;

    /// How many turns were taken: where the next generation starts.
    fn position(&self) -> usize;
}

/// A member as a policy builds a selection from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Share {
    /// Its registered weight (1..=1000).
    pub(crate) weight: u32,
    /// [`crate::runtime::clock`] milliseconds when it joined the ring.
    pub(crate) joined_ms: u64,
}

/// A route's choice of selection (`balance` and `slow_start`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Policy {
    pub(crate) balance: Balance,
    pub(crate) slow_start: Duration,
}

impl Policy {
    pub(crate) fn of(route: &RouteConfig) -> Policy {
        Policy {
            balance: route.balance,
            slow_start: route.slow_start,
        }
    }

    /// The selection for a new ring generation of `shares` (one per member),
    /// continuing from `position`.
    pub(crate) fn build(&self, shares: &[Share], position: usize) -> Box<dyn Selection> {
        let weighted = self.balance == Balance::WeightedRoundRobin;
        if !weighted && self.slow_start.is_zero() {
            return Box::new(RoundRobin::starting_at(position));
        }
        let shares: Vec<Share> = shares
            .iter()
            .map(|s| Share {
                weight: if weighted { s.weight.max(1) } else { 1 },
                joined_ms: s.joined_ms,
            })
            .collect();
        Box::new(SmoothWeighted::new(shares, self.slow_start, position))
    }
}
