//! The connections a listener holds, so it can stay under `max_connections`
//! without being locked out by sockets that send nothing.
//!
//! Each connection marks itself idle while it waits for a request (a fresh
//! connection that has sent nothing counts as idle too). At the cap the
//! accept loop stops accepting, as the kernel's backlog holds the rest, and
//! closes connections idle for longer than a short grace, as nginx reuses
//! keep-alive connections when out of them: a flood of idle sockets then
//! cannot keep real clients out for long.

use crate::shutdown::Trigger;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One connection's entry: since when it is idle, and how to close it.
#[derive(Debug)]
pub struct Slot {
    /// Milliseconds since the registry's epoch, plus one, since the
    /// connection waits for a request; 0 while it is serving one.
    idle_since: AtomicU64,
    /// Fired to close the connection the next time it is idle (at once if it is).
    pub close: Trigger,
    epoch: Instant,
}

impl Slot {
    pub fn idle(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.idle_since.store(ms + 1, Ordering::Release);
    }

    pub fn busy(&self) {
        self.idle_since.store(0, Ordering::Release);
    }

    fn idle_for(&self, now_ms: u64) -> Option<u64> {
        match self.idle_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(now_ms.saturating_sub(since - 1)),
        }
    }
}

/// The live connections of one listener.
#[derive(Debug)]
pub struct Slots {
    live: Mutex<HashMap<u64, Arc<Slot>>>,
    next: AtomicU64,
    epoch: Instant,
    /// Signalled when a connection ends, to wake an accept loop at the cap.
    freed_tx: async_channel::Sender<()>,
    freed_rx: async_channel::Receiver<()>,
}

impl Default for Slots {
    fn default() -> Self {
        let (freed_tx, freed_rx) = async_channel::bounded(1);
        Slots {
            live: Mutex::default(),
            next: AtomicU64::new(0),
            epoch: Instant::now(),
            freed_tx,
            freed_rx,
        }
    }
}

/// A connection's hold on its slot; leaving it frees the slot.
#[derive(Debug)]
pub struct Held {
    slots: Arc<Slots>,
    id: u64,
    pub slot: Arc<Slot>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.slots.table().remove(&self.id);
        let _ = self.slots.freed_tx.try_send(());
    }
}

impl Slots {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        // The table holds no invariant a panic could break mid-way.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for a new connection, marked idle (it has sent nothing yet).
    pub fn enter(self: &Arc<Self>) -> Held {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            idle_since: AtomicU64::new(0),
            close: Trigger::new(),
            epoch: self.epoch,
        });
        slot.idle();
        self.table().insert(id, slot.clone());
        Held {
            slots: self.clone(),
            id,
            slot,
        }
    }

    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Closes every connection idle for at least `grace`; returns how many.
    pub fn reap_idle(&self, grace: Duration) -> usize {
        let now = self.epoch.elapsed().as_millis() as u64;
        let grace = grace.as_millis() as u64;
        let mut reaped = 0;
        for slot in self.table().values() {
            if slot.idle_for(now).is_some_and(|idle| idle >= grace) && !slot.close.is_fired() {
                slot.close.fire();
                reaped += 1;
            }
        }
        reaped
    }

    /// Tells every connection to close once idle (shutting down).
    pub fn close_all_when_idle(&self) {
        for slot in self.table().values() {
            slot.close.fire();
        }
    }

    /// Waits until a connection ends, or `limit` passes.
    pub async fn freed(&self, limit: Duration) {
        let _ = async_std::future::timeout(limit, self.freed_rx.recv()).await;
    }
}
