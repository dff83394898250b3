//! The instance records a mirror holds, and which of them it serves.
//!
//! One rule on every replica, whatever order the records arrived in (a full
//! read at start-up, or watch events one by one): a record that cannot be
//! read, whose key does not match its namespace and `host:port`, or that
//! breaks the registration policy (a denied address included) is set aside
//! as *invalid*; of the valid ones, the oldest (by create revision, then key:
//! both the same on every replica) are served up to the caps, and the rest
//! are set aside as *over cap*. Oldest first, rather than by key order, so
//! that a bulk write of new keys can never push out an instance already
//! served. A set-aside record never reaches the core (lookups, watchers,
//! checks); it stays here, counted and shown, until it is overwritten (a
//! registration of that instance does so) or deleted.

use crate::store::{Caps, Record, SetAside, SetAsideRecord, Sink, SET_ASIDE_SHOWN};
use std::collections::{BTreeSet, HashMap};

/// What the mirror holds for one instance key.
#[derive(Clone, Debug)]
pub(crate) enum Held {
    /// Valid and within the caps: pushed to the core.
    Served(Record),
    /// Valid, but beyond a cap.
    OverCap(Record),
    /// Unreadable or outside the policy: why.
    Invalid(String),
}

impl Held {
    /// What a judge said of it, to put it again (a reload keeping a newer local write).
    fn judged(&self) -> Result<Record, String> {
        match self {
            Held::Served(r) | Held::OverCap(r) => Ok(r.clone()),
            Held::Invalid(why) => Err(why.clone()),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The revision it was last written at.
    pub rev: i64,
    /// The revision its key was created at: its place in the cap order.
    pub create: i64,
    pub held: Held,
}

/// Every instance key under the prefix, and the core's share of them.
#[derive(Debug, Default)]
pub(crate) struct Records {
    entries: HashMap<Vec<u8>, Entry>,
    /// Valid records, oldest first: the order the caps are applied in.
    order: BTreeSet<(i64, Vec<u8>)>,
    /// (namespace, id) → key, served records only.
    by_id: HashMap<(String, String), Vec<u8>>,
    /// Served records per namespace, for the caps.
    per_namespace: HashMap<String, usize>,
    served: usize,
    over_cap: usize,
    invalid: usize,
    /// Deleted keys → the revision of the delete, until the watch passes it.
    pub tombstones: HashMap<Vec<u8>, i64>,
    /// The revision the mirror is complete up to (from the watch or a full read).
    pub revision: i64,
}

impl Records {
    /// Empty, complete up to `revision` (a full read's).
    pub fn at(revision: i64) -> Records {
        Records {
            revision,
            ..Records::default()
        }
    }

    /// The served record at `key` and its mod revision.
    pub fn served(&self, key: &[u8]) -> Option<(i64, &Record)> {
        match self.entries.get(key)? {
            Entry {
                rev,
                held: Held::Served(r),
                ..
            } => Some((*rev, r)),
            _ => None,
        }
    }

    /// The mod revision of the record at `key` if it is held but set aside.
    pub fn set_aside_rev(&self, key: &[u8]) -> Option<i64> {
        let entry = self.entries.get(key)?;
        (!matches!(entry.held, Held::Served(_))).then_some(entry.rev)
    }

    pub fn key_of(&self, namespace: &str, id: &str) -> Option<&Vec<u8>> {
        self.by_id.get(&(namespace.to_string(), id.to_string()))
    }

    /// Served instances in `namespace`, served in all, namespaces served.
    pub fn counts(&self, namespace: &str) -> (usize, usize, usize) {
        (
            self.per_namespace.get(namespace).copied().unwrap_or(0),
            self.served,
            self.per_namespace.len(),
        )
    }

    /// Every served record (for a reset of the core).
    pub fn served_records(&self) -> Vec<Record> {
        self.entries
            .values()
            .filter_map(|e| match &e.held {
                Held::Served(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether a change of `key` at `rev` is newer than what is held.
    pub fn newer(&self, key: &[u8], rev: i64) -> bool {
        let held = self.entries.get(key).map_or(0, |e| e.rev);
        let dead = self.tombstones.get(key).copied().unwrap_or(0);
        rev > held && rev > dead
    }

    /// The create revision held for `key`: kept by etcd across overwrites.
    pub fn created(&self, key: &[u8]) -> Option<i64> {
        self.entries.get(key).map(|e| e.create)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Vec<u8>, &Entry)> {
        self.entries.iter()
    }

    fn fits(&self, namespace: &str, caps: &Caps) -> bool {
        self.served < caps.max_instances
            && self.per_namespace.get(namespace).copied().unwrap_or(0)
                < caps.max_instances_per_namespace
    }

    fn serve(&mut self, key: &[u8], r: &Record) {
        self.by_id
            .insert((r.namespace.clone(), r.id.clone()), key.to_vec());
        *self.per_namespace.entry(r.namespace.clone()).or_default() += 1;
        self.served += 1;
    }

    fn unserve(&mut self, r: &Record) {
        self.by_id.remove(&(r.namespace.clone(), r.id.clone()));
        if let Some(n) = self.per_namespace.get_mut(&r.namespace) {
            *n -= 1;
            if *n == 0 {
                self.per_namespace.remove(&r.namespace);
            }
        }
        self.served -= 1;
    }

    /// Takes `key`'s entry out, undoing its counts.
    fn take(&mut self, key: &[u8]) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        match &entry.held {
            Held::Served(r) => {
                self.order.remove(&(entry.create, key.to_vec()));
                self.unserve(r);
            }
            Held::OverCap(_) => {
                self.order.remove(&(entry.create, key.to_vec()));
                self.over_cap -= 1;
            }
            Held::Invalid(_) => self.invalid -= 1,
        }
        Some(entry)
    }

    /// Puts what `key` holds now (at `rev`, created at `create`), as judged,
    /// and tells `sink` what the core must change.
    pub fn put(
        &mut self,
        key: Vec<u8>,
        (rev, create): (i64, i64),
        judged: Result<Record, String>,
        caps: &Caps,
        sink: &dyn Sink,
    ) {
        self.tombstones.remove(&key);
        let old = self.take(&key);
        let same_place = old.as_ref().is_some_and(|e| e.create == create);
        let was = old.and_then(|e| match e.held {
            Held::Served(r) => Some(r),
            _ => None,
        });
        let regroup;
        let held = match judged {
            Err(why) => {
                self.invalid += 1;
                // A served record turned invalid: one over cap may take its place.
                regroup = was.is_some() && self.over_cap > 0;
                Held::Invalid(why)
            }
            Ok(record) => {
                self.order.insert((create, key.clone()));
                let last = self
                    .order
                    .last()
                    .is_some_and(|(c, k)| *c == create && *k == key);
                let fits = self.fits(&record.namespace, caps);
                // The quick answers are those the oldest-first rule gives
                // without walking the order: appended at its end, or a record
                // taking back its own place, or nothing set aside to reorder.
                let settled = last || (same_place && was.is_some()) || self.over_cap == 0;
                regroup = !(settled && (fits || last));
                if fits && !regroup {
                    self.serve(&key, &record);
                    Held::Served(record)
                } else {
                    self.over_cap += 1;
                    Held::OverCap(record)
                }
            }
        };
        let now = match &held {
            Held::Served(r) => Some(r.clone()),
            _ => None,
        };
        self.entries.insert(key, Entry { rev, create, held });
        notify(sink, was, now);
        if regroup {
            self.regroup(caps, sink);
        }
    }

    /// Deletes `key` at `rev`; the served record it held, if any.
    pub fn delete(&mut self, key: &[u8], rev: i64, caps: &Caps, sink: &dyn Sink) -> Option<Record> {
        self.tombstones.insert(key.to_vec(), rev);
        let entry = self.take(key)?;
        let Held::Served(gone) = entry.held else {
            return None;
        };
        sink.remove(&gone.namespace, &gone.id);
        if self.over_cap > 0 {
            self.regroup(caps, sink);
        }
        Some(gone)
    }

    /// Applies the oldest-first rule over every valid record: O(records),
    /// so only when a quick answer could be wrong (a slot freed while some
    /// are over cap, a record placed before others).
    fn regroup(&mut self, caps: &Caps, sink: &dyn Sink) {
        let order: Vec<Vec<u8>> = self.order.iter().map(|(_, k)| k.clone()).collect();
        let mut served = 0;
        let mut per_namespace: HashMap<String, usize> = HashMap::new();
        for key in order {
            let (namespace, is_served) = match self.entries.get(&key).map(|e| &e.held) {
                Some(Held::Served(r)) => (r.namespace.clone(), true),
                Some(Held::OverCap(r)) => (r.namespace.clone(), false),
                _ => continue,
            };
            let n = per_namespace.entry(namespace).or_default();
            let fits = served < caps.max_instances && *n < caps.max_instances_per_namespace;
            if fits {
                served += 1;
                *n += 1;
            }
            if fits != is_served {
                self.flip(&key, fits, sink);
            }
        }
    }

    /// Moves `key` between served and over cap.
    fn flip(&mut self, key: &[u8], serve: bool, sink: &dyn Sink) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let record = match &entry.held {
            Held::Served(r) | Held::OverCap(r) => r.clone(),
            Held::Invalid(_) => return,
        };
        if serve {
            entry.held = Held::Served(record.clone());
            self.over_cap -= 1;
            self.serve(key, &record);
            sink.put(record);
        } else {
            entry.held = Held::OverCap(record.clone());
            self.over_cap += 1;
            self.unserve(&record);
            sink.remove(&record.namespace, &record.id);
        }
    }

    /// Puts `entry` again (a reload keeping this replica's newer write).
    pub fn put_entry(&mut self, key: Vec<u8>, entry: &Entry, caps: &Caps, sink: &dyn Sink) {
        self.put(
            key,
            (entry.rev, entry.create),
            entry.held.judged(),
            caps,
            sink,
        );
    }

    /// What is set aside, for `/api/store`: counts, and the first few by key.
    pub fn set_aside(&self) -> SetAside {
        let mut aside: Vec<(&Vec<u8>, &Held)> = self
            .entries
            .iter()
            .filter(|(_, e)| !matches!(e.held, Held::Served(_)))
            .map(|(k, e)| (k, &e.held))
            .collect();
        aside.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let records = aside
            .into_iter()
            .take(SET_ASIDE_SHOWN)
            .map(|(key, held)| SetAsideRecord {
                key: String::from_utf8_lossy(key).into_owned(),
                reason: match held {
                    Held::Invalid(why) => why.clone(),
                    _ => "beyond max_instances or max_instances_per_namespace \
                          (the oldest records are served first)"
                        .into(),
                },
            })
            .collect();
        SetAside {
            invalid: self.invalid,
            over_cap: self.over_cap,
            records,
        }
    }
}

/// Tells the core that `key` went from serving `was` to serving `now`.
fn notify(sink: &dyn Sink, was: Option<Record>, now: Option<Record>) {
    match (was, now) {
        (Some(w), Some(n)) => {
            if w.id != n.id {
                // Deregistered and registered again while this replica looked away.
                sink.remove(&w.namespace, &w.id);
            }
            sink.put(n);
        }
        (Some(w), None) => sink.remove(&w.namespace, &w.id),
        (None, Some(n)) => sink.put(n),
        (None, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::wire::{InstanceStatus, Port};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<BTreeSet<String>>);

    impl Sink for Seen {
        fn put(&self, r: Record) {
            self.0.lock().unwrap().insert(r.id);
        }
        fn remove(&self, _: &str, id: &str) {
            self.0.lock().unwrap().remove(id);
        }
        fn reset(&self, _: Vec<Record>) {}
    }

    fn record(ns: &str, port: u16) -> Record {
        Record {
            id: format!("{ns}-{port}"),
            namespace: ns.into(),
            host: "127.0.0.1".into(),
            port: Port(port),
            health_check_path: "/health_check".into(),
            weight: 1,
            status: InstanceStatus::Pending,
            since_unix_ms: 0,
            maintenance_since_unix_ms: None,
        }
    }

    fn key(r: &Record) -> Vec<u8> {
        format!("{}/{}", r.namespace, r.port).into_bytes()
    }

    const CAPS: Caps = Caps {
        max_instances: 4,
        max_instances_per_namespace: 2,
    };

    /// Applies (create revision, record) in the given order; the ids served.
    fn served_after(puts: &[(i64, Record)], deletes: &[usize]) -> BTreeSet<String> {
        let (mut records, sink) = (Records::default(), Seen::default());
        for (create, r) in puts {
            records.put(key(r), (*create, *create), Ok(r.clone()), &CAPS, &sink);
        }
        for d in deletes {
            let r = &puts[*d].1;
            records.delete(&key(r), 1000, &CAPS, &sink);
        }
        let from_sink = sink.0.lock().unwrap().clone();
        let held: BTreeSet<String> = records.served_records().into_iter().map(|r| r.id).collect();
        assert_eq!(from_sink, held, "the core sees exactly what is served");
        assert_eq!(
            records.served + records.over_cap,
            puts.len() - deletes.len()
        );
        held
    }

    #[test]
    fn the_oldest_records_are_served_whatever_order_they_arrive_in() {
        let puts: Vec<(i64, Record)> = [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1), ("c", 2)]
            .iter()
            .enumerate()
            .map(|(i, (ns, p))| (i as i64 + 1, record(ns, *p)))
            .collect();
        let in_order = served_after(&puts, &[]);
        let want: BTreeSet<String> = ["a-1", "a-2", "b-1", "c-1"].map(String::from).into();
        assert_eq!(
            in_order, want,
            "a-3 over its namespace's cap, c-2 over the total"
        );
        let mut reversed = puts.clone();
        reversed.reverse();
        assert_eq!(
            served_after(&reversed, &[]),
            want,
            "the same from any arrival order"
        );
        // Freeing a slot serves the oldest record waiting for one, everywhere.
        let freed: BTreeSet<String> = ["a-2", "a-3", "b-1", "c-1"].map(String::from).into();
        assert_eq!(served_after(&puts, &[0]), freed);
        assert_eq!(served_after(&reversed, &[5]), freed);
    }

    #[test]
    fn an_invalid_record_is_set_aside_and_its_slot_goes_to_the_next() {
        let (mut records, sink) = (Records::default(), Seen::default());
        let caps = Caps {
            max_instances: 1,
            max_instances_per_namespace: 1,
        };
        let (a, b) = (record("a", 1), record("a", 2));
        records.put(key(&a), (1, 1), Ok(a.clone()), &caps, &sink);
        records.put(key(&b), (2, 2), Ok(b.clone()), &caps, &sink);
        assert_eq!(records.set_aside().over_cap, 1);
        records.put(key(&a), (3, 1), Err("unreadable".into()), &caps, &sink);
        let aside = records.set_aside();
        assert_eq!((aside.invalid, aside.over_cap), (1, 0));
        assert_eq!(aside.records[0].reason, "unreadable");
        assert_eq!(records.set_aside_rev(&key(&a)), Some(3));
        assert!(records.served(&key(&b)).is_some(), "b took the freed slot");
        assert_eq!(*sink.0.lock().unwrap(), BTreeSet::from(["a-2".to_string()]));
    }
}
