//! Fault knobs, on with `--chaos` only: a delay before every business answer
//! and health check, a failing health check, and a share of business requests
//! answered 500. They let tests and demos make an instance slow or sick at run
//! time without restarting it.
//!
//! The knobs are atomics: the request path reads them without a lock. A
//! change is checked in full before any knob moves, so a 400 changes nothing.

use crate::State;
use serde::{Deserialize, Serialize};
use shared::api::{error_response, json_body, json_response};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tide::{Request, StatusCode};

/// Longest delay a `PUT /chaos` may set: beyond this a test is hung, not slow.
pub const MAX_DELAY_MS: u64 = 60_000;

/// Largest `PUT /chaos` body; the real ones are a few dozen bytes.
const MAX_BODY: usize = 4 * 1024;

/// The knobs in force.
#[derive(Debug, Default)]
pub struct Knobs {
    delay_ms: AtomicU64,
    failing: AtomicBool,
    /// An `f64` as its bits: std has no atomic float.
    fail_rate: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Health {
    Ok,
    Fail,
}

/// What `GET /chaos` and `PUT /chaos` answer.
#[derive(Debug, Serialize)]
struct Snapshot {
    delay_ms: u64,
    health: Health,
    fail_rate: f64,
}

/// A `PUT /chaos` body: any subset of the knobs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    delay_ms: Option<u64>,
    health: Option<Health>,
    fail_rate: Option<f64>,
}

impl Knobs {
    /// Sleeps for the configured delay, if any.
    pub async fn delay(&self) {
        let ms = self.delay_ms.load(Ordering::Relaxed);
        if ms > 0 {
            async_std::task::sleep(Duration::from_millis(ms)).await;
        }
    }

    pub fn healthy(&self) -> bool {
        !self.failing.load(Ordering::Relaxed)
    }

    /// True for `fail_rate` of the calls, at random.
    pub fn should_fail(&self) -> bool {
        let rate = f64::from_bits(self.fail_rate.load(Ordering::Relaxed));
        rate > 0.0 && fastrand::f64() < rate
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            delay_ms: self.delay_ms.load(Ordering::Relaxed),
            health: if self.healthy() {
                Health::Ok
            } else {
                Health::Fail
            },
            fail_rate: f64::from_bits(self.fail_rate.load(Ordering::Relaxed)),
        }
    }

    fn apply(&self, change: &Change) {
        if let Some(ms) = change.delay_ms {
            self.delay_ms.store(ms, Ordering::Relaxed);
        }
        if let Some(health) = change.health {
            self.failing
                .store(health == Health::Fail, Ordering::Relaxed);
        }
        if let Some(rate) = change.fail_rate {
            self.fail_rate.store(rate.to_bits(), Ordering::Relaxed);
        }
    }
}

impl Change {
    /// Range checks serde cannot express; the message names the field.
    fn validate(&self) -> Result<(), String> {
        if let Some(ms) = self.delay_ms.filter(|ms| *ms > MAX_DELAY_MS) {
            return Err(format!(
                "delay_ms must be from 0 to {MAX_DELAY_MS}, got {ms}"
            ));
        }
        if let Some(rate) = self.fail_rate.filter(|r| !(0.0..=1.0).contains(r)) {
            return Err(format!("fail_rate must be from 0.0 to 1.0, got {rate}"));
        }
        Ok(())
    }
}

/// `GET /chaos`: the knobs in force.
pub async fn show(req: Request<State>) -> tide::Result {
    let Some(knobs) = req.state().chaos.as_deref() else {
        return Ok(tide::Response::new(StatusCode::NotFound));
    };
    Ok(json_response(StatusCode::Ok, &knobs.snapshot()))
}

/// `PUT /chaos`: changes the knobs named in the body, answers those in force.
pub async fn set(mut req: Request<State>) -> tide::Result {
    let change: Change = match json_body(&mut req, MAX_BODY).await {
        Ok(c) => c,
        Err(res) => return Ok(res),
    };
    if let Err(message) = change.validate() {
        return Ok(error_response(
            StatusCode::BadRequest,
            "invalid_field",
            message,
        ));
    }
    let Some(knobs) = req.state().chaos.as_deref() else {
        return Ok(tide::Response::new(StatusCode::NotFound));
    };
    knobs.apply(&change);
    let now = knobs.snapshot();
    log::info!(delay_ms = now.delay_ms, health:? = now.health, fail_rate = now.fail_rate;
        "chaos knobs changed");
    Ok(json_response(StatusCode::Ok, &now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_rate_zero_never_fails_and_one_always_does() {
        let k = Knobs::default();
        assert!((0..1000).all(|_| !k.should_fail()));
        k.apply(&Change {
            delay_ms: None,
            health: None,
            fail_rate: Some(1.0),
        });
        assert!((0..1000).all(|_| k.should_fail()));
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let change = |d, r| Change {
            delay_ms: d,
            health: None,
            fail_rate: r,
        };
        assert!(change(Some(MAX_DELAY_MS), Some(0.0)).validate().is_ok());
        assert!(change(Some(MAX_DELAY_MS + 1), None).validate().is_err());
        assert!(change(None, Some(1.01)).validate().is_err());
        assert!(change(None, Some(-0.1)).validate().is_err());
    }
}
