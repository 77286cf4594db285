//! One watched prefix of the view: its records as listed and watched, each
//! decoded once, and the tombs that keep late events from undoing newer
//! state.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use crate::store::{Entry, WatchEvent};

/// A record decoded once, when it arrives (ADDs read them many times).
pub(super) type Value = Option<Arc<dyn Any + Send + Sync>>;

/// One record of the prefix: its version (what a compare checks) and its
/// value decoded (None: the record does not decode; readers then go to the
/// store, which reports it). The raw bytes are not kept: nothing reads them.
pub(super) struct Slot {
    pub(super) version: u64,
    pub(super) value: Value,
}

/// One watched prefix.
#[derive(Default)]
pub(super) struct Cache {
    /// By key: one map, so a reader finds a record's version and value
    /// with one lookup (an ADD reads every lease of its pool).
    pub(super) slots: HashMap<String, Slot>,
    pub(super) decoder: Option<fn(&Entry) -> Value>,
    /// Listed and watched: readers may trust it (up to the compare).
    pub(super) live: bool,
    /// Keys this node deleted, and at which revision, until the watch has
    /// passed it: an older put arriving late must not bring them back.
    pub(super) tombs: HashMap<String, u64>,
    /// The newest revision the watch delivered.
    pub(super) seen: u64,
}

impl Cache {
    pub(super) fn put(&mut self, key: &str, value: Vec<u8>, revision: u64) {
        if self.stale(key, revision) {
            return;
        }
        let e = Entry {
            key: key.to_string(),
            value,
            version: revision,
        };
        let decoded = self.decoder.and_then(|d| d(&e));
        self.set(e.key, revision, decoded);
    }

    /// `put` of a record the caller has decoded already (the node's own
    /// commits): nothing is decoded or copied.
    pub(super) fn put_decoded(&mut self, key: &str, revision: u64, decoded: Value) {
        if !self.stale(key, revision) {
            self.set(key.to_string(), revision, decoded);
        }
    }

    /// Whether the view holds `key` at `revision` or newer (or deleted it
    /// there): a put of `revision` is older news.
    fn stale(&self, key: &str, revision: u64) -> bool {
        self.slots.get(key).is_some_and(|s| s.version >= revision)
            || self.tombs.get(key).is_some_and(|t| *t >= revision)
    }

    fn set(&mut self, key: String, version: u64, value: Value) {
        if !self.tombs.is_empty() {
            self.tombs.remove(&key);
        }
        self.slots.insert(key, Slot { version, value });
    }

    pub(super) fn replace(&mut self, entries: Vec<Entry>) {
        self.slots = entries
            .iter()
            .map(|e| {
                let value = self.decoder.and_then(|d| d(e));
                (
                    e.key.clone(),
                    Slot {
                        version: e.version,
                        value,
                    },
                )
            })
            .collect();
    }

    /// The record at `key`, decoded, and its version.
    pub(super) fn get<T: 'static>(&self, key: &str) -> Option<Option<(&T, u64)>> {
        let Some(s) = self.slots.get(key) else {
            return Some(None);
        };
        let v = s.value.as_ref()?.downcast_ref::<T>()?;
        Some(Some((v, s.version)))
    }

    /// The record at `key`, decoded (shared, not copied), and its version.
    pub(super) fn get_shared<T: Any + Send + Sync>(
        &self,
        key: &str,
    ) -> Option<Option<(Arc<T>, u64)>> {
        let Some(s) = self.slots.get(key) else {
            return Some(None);
        };
        let v = s.value.clone()?.downcast::<T>().ok()?;
        Some(Some((v, s.version)))
    }

    /// Every record, decoded; None if one does not decode.
    pub(super) fn values<T: 'static>(&self) -> Option<Vec<&T>> {
        self.slots
            .values()
            .map(|s| s.value.as_ref()?.downcast_ref::<T>())
            .collect()
    }

    /// Every record, decoded (shared, not copied), with its version; None
    /// if one does not decode.
    pub(super) fn shared<T: Any + Send + Sync>(&self) -> Option<Vec<(Arc<T>, u64)>> {
        self.slots
            .values()
            .map(|s| Some((s.value.clone()?.downcast::<T>().ok()?, s.version)))
            .collect()
    }

    pub(super) fn delete(&mut self, key: &str, revision: u64) {
        if self.slots.get(key).is_some_and(|s| s.version > revision) {
            return;
        }
        self.slots.remove(key);
        let t = self.tombs.entry(key.to_string()).or_default();
        *t = (*t).max(revision);
    }

    pub(super) fn event(&mut self, ev: WatchEvent) {
        match ev.value {
            Some(v) => self.put(&ev.key, v, ev.revision),
            None => self.delete(&ev.key, ev.revision),
        }
        self.seen = self.seen.max(ev.revision);
        let seen = self.seen;
        // Events of one revision (one transaction) come one after another:
        // a tomb goes once the watch is past its revision.
        if !self.tombs.is_empty() {
            self.tombs.retain(|_, t| *t >= seen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_events_do_not_undo_newer_state() {
        let mut c = Cache {
            decoder: Some(|e| Some(Arc::new(e.value.clone()) as Arc<dyn Any + Send + Sync>)),
            ..Cache::default()
        };
        c.put("k", b"1".to_vec(), 5);
        // Our own delete at 7, then the watch delivers the put of 5 and a
        // put of 6 (older), then the delete of 7.
        c.delete("k", 7);
        for (v, rev) in [(Some(b"1".to_vec()), 5), (Some(b"2".to_vec()), 6)] {
            c.event(WatchEvent {
                key: "k".into(),
                value: v,
                revision: rev,
            });
            assert!(!c.slots.contains_key("k"), "rev {rev} came back");
        }
        c.event(WatchEvent {
            key: "k".into(),
            value: None,
            revision: 7,
        });
        assert!(c.tombs.contains_key("k"), "kept through its own revision");
        c.event(WatchEvent {
            key: "other".into(),
            value: Some(b"1".to_vec()),
            revision: 8,
        });
        assert!(c.tombs.is_empty(), "the watch passed the delete");
        // A newer put wins; an older one after it does not.
        c.put("k", b"8".to_vec(), 8);
        c.event(WatchEvent {
            key: "k".into(),
            value: Some(b"x".to_vec()),
            revision: 7,
        });
        assert_eq!(c.get::<Vec<u8>>("k"), Some(Some((&b"8".to_vec(), 8))));
    }
}
