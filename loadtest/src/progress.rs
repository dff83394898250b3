//! The live progress bar: a ticker task that reads the connections' counters,
//! so the hot loop never touches the terminal.

use crate::driver::Board;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(250);

/// Draws on stderr until the board says the load is done; the bar is cleared then.
pub async fn show(board: Arc<Board>, start: Instant, duration: Duration) {
    let bar = ProgressBar::new(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30.cyan/blue} {elapsed:>3}/{len_s}  {msg}")
    {
        bar.set_style(style.with_key(
            "len_s",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}s", s.len().unwrap_or(0) / 1000);
            },
        ));
    }
    let mut last = (Instant::now(), 0u64);
    while !board.done.load(Ordering::Relaxed) {
        async_std::task::sleep(TICK).await;
        let now = Instant::now();
        let (answered, failed) = board.totals();
        let rate = (answered - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, answered);
        let elapsed = u64::try_from(now.duration_since(start).as_millis()).unwrap_or(u64::MAX);
        bar.set_position(elapsed);
        bar.set_message(format!("{rate:.0} req/s, {failed} failed"));
    }
    bar.finish_and_clear();
}
