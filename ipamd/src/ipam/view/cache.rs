//! One watched prefix of the view: its records as listed and watched, each
//! decoded once, and the tombs that keep late events from undoing newer
//! state.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use crate::store::{Entry, WatchEvent};

/// A record decoded once, when it arrives (ADDs read them many times).
pub(super) type Value = Option<Arc<dyn Any + Send + Sync>>;

/// One watched prefix.
#[derive(Default)]
pub(super) struct Cache {
    pub(super) entries: HashMap<String, Entry>,
    /// `entries` decoded, by the type the prefix holds (None: the record
    /// does not decode; readers then go to the store, which reports it).
    pub(super) values: HashMap<String, Value>,
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
        self.put_decoded(key, value, revision, None);
    }

    /// `put`, with the record already decoded (`decoded`) when the caller
    /// has it: the node's own commits.
    pub(super) fn put_decoded(&mut self, key: &str, value: Vec<u8>, revision: u64, decoded: Value) {
        let newer = |v: u64| v >= revision;
        if self.entries.get(key).is_some_and(|e| newer(e.version))
            || self.tombs.get(key).is_some_and(|t| newer(*t))
        {
            return;
        }
        self.tombs.remove(key);
        let e = Entry {
            key: key.to_string(),
            value,
            version: revision,
        };
        let decoded = decoded.or_else(|| self.decoder.and_then(|d| d(&e)));
        self.values.insert(key.to_string(), decoded);
        self.entries.insert(key.to_string(), e);
    }

    pub(super) fn replace(&mut self, entries: Vec<Entry>) {
        self.values = entries
            .iter()
            .map(|e| (e.key.clone(), self.decoder.and_then(|d| d(e))))
            .collect();
        self.entries = entries.into_iter().map(|e| (e.key.clone(), e)).collect();
    }

    /// The record at `key`, decoded, and its entry.
    pub(super) fn get<T: 'static>(&self, key: &str) -> Option<Option<(&T, &Entry)>> {
        let Some(e) = self.entries.get(key) else {
            return Some(None);
        };
        let v = self.values.get(key)?.as_ref()?.downcast_ref::<T>()?;
        Some(Some((v, e)))
    }

    /// Every record, decoded; None if one does not decode.
    pub(super) fn values<T: 'static>(&self) -> Option<Vec<&T>> {
        self.entries
            .keys()
            .map(|k| self.values.get(k)?.as_ref()?.downcast_ref::<T>())
            .collect()
    }

    /// Every record, decoded (shared, not copied), with its version; None
    /// if one does not decode.
    pub(super) fn shared<T: Any + Send + Sync>(&self) -> Option<Vec<(Arc<T>, u64)>> {
        self.entries
            .iter()
            .map(|(k, e)| {
                let v = self.values.get(k)?.clone()?.downcast::<T>().ok()?;
                Some((v, e.version))
            })
            .collect()
    }

    pub(super) fn delete(&mut self, key: &str, revision: u64) {
        if self.entries.get(key).is_some_and(|e| e.version > revision) {
            return;
        }
        self.entries.remove(key);
        self.values.remove(key);
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
        self.tombs.retain(|_, t| *t >= seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_events_do_not_undo_newer_state() {
        let mut c = Cache::default();
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
            assert!(!c.entries.contains_key("k"), "rev {rev} came back");
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
        assert_eq!(c.entries["k"].value, b"8");
        assert_eq!(c.entries["k"].version, 8);
    }
}
