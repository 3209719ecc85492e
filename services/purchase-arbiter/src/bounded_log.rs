//! Bounded records: the newest entries of something that grows forever (the
//! event history, ended leases, idempotency answers), with a running total
//! of everything ever added. The total is what lets the journal carry only
//! what is new since the last write, even after the oldest entries fell
//! off: "added since total N" is the newest `total - N` entries.

use std::{
    collections::{HashMap, VecDeque, vec_deque},
    hash::Hash,
    iter::Skip,
};

/// A queue that keeps its newest `capacity` entries and counts every entry
/// ever added.
#[derive(Debug, Clone)]
pub struct BoundedLog<T> {
    entries: VecDeque<T>,
    capacity: usize,
    total: u64,
}

impl<T> BoundedLog<T> {
    /// An empty log keeping at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            total: 0,
        }
    }

    /// A log holding `entries` (oldest first) as read back from disk: the
    /// newest `capacity` of them, with the total starting at what is kept.
    pub fn restored(capacity: usize, entries: impl IntoIterator<Item = T>) -> Self {
        let mut log = Self::new(capacity);
        for e in entries {
            log.push(e);
        }
        log.total = log.entries.len() as u64;
        log
    }

    /// Adds `entry` as the newest; returns the oldest if it fell off.
    pub fn push(&mut self, entry: T) -> Option<T> {
        let dropped = if self.entries.len() == self.capacity {
            self.entries.pop_front()
        } else {
            None
        };
        self.entries.push_back(entry);
        self.total += 1;
        dropped
    }

    /// Entries ever added, including those that fell off.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Oldest first.
    pub fn iter(&self) -> vec_deque::Iter<'_, T> {
        self.entries.iter()
    }

    /// The newest `n` entries (all of them if fewer), oldest first.
    pub fn newest(&self, n: usize) -> Skip<vec_deque::Iter<'_, T>> {
        self.entries
            .iter()
            .skip(self.entries.len().saturating_sub(n))
    }

    /// The entries added since [`Self::total`] was `total_then`, as far as
    /// they are still kept, oldest first.
    pub fn added_since(&self, total_then: u64) -> Skip<vec_deque::Iter<'_, T>> {
        let added = self.total.saturating_sub(total_then);
        self.newest(usize::try_from(added).unwrap_or(usize::MAX))
    }

    /// The index of the first entry for which `pred` is false, for a log
    /// ordered by `pred` (every entry it holds for comes first).
    pub fn partition_point(&self, pred: impl FnMut(&T) -> bool) -> usize {
        self.entries.partition_point(pred)
    }

    /// The entries from index `start` on, oldest first.
    pub fn iter_from(&self, start: usize) -> Skip<vec_deque::Iter<'_, T>> {
        self.entries.iter().skip(start)
    }
}

/// A [`BoundedLog`] of keys with a value for each: the newest `capacity`
/// keys are answered, the oldest forgotten first.
#[derive(Debug, Clone)]
pub struct BoundedMap<K, V> {
    order: BoundedLog<K>,
    values: HashMap<K, V>,
}

impl<K: Clone + Eq + Hash, V> BoundedMap<K, V> {
    /// An empty map keeping at most `capacity` keys (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            order: BoundedLog::new(capacity),
            values: HashMap::new(),
        }
    }

    /// A map holding `entries` (oldest first) as read back from disk; see
    /// [`BoundedLog::restored`].
    pub fn restored(capacity: usize, entries: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut map = Self::new(capacity);
        for (k, v) in entries {
            map.insert(k, v);
        }
        map.order.total = map.order.len() as u64;
        map
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.values.get(key)
    }

    /// Adds `key` as the newest, forgetting the oldest key if the map is
    /// full. A key already present keeps its place and gets the new value
    /// (and does not count as added).
    pub fn insert(&mut self, key: K, value: V) {
        if let Some(v) = self.values.get_mut(&key) {
            *v = value;
            return;
        }
        if let Some(old) = self.order.push(key.clone()) {
            self.values.remove(&old);
        }
        self.values.insert(key, value);
    }

    /// Keys ever added, including those forgotten.
    pub fn total(&self) -> u64 {
        self.order.total()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.with_values(self.order.iter())
    }

    /// The entries added since [`Self::total`] was `total_then`, as far as
    /// they are still kept, oldest first.
    pub fn added_since(&self, total_then: u64) -> impl Iterator<Item = (&K, &V)> {
        self.with_values(self.order.added_since(total_then))
    }

    fn with_values<'a>(
        &'a self,
        keys: impl Iterator<Item = &'a K>,
    ) -> impl Iterator<Item = (&'a K, &'a V)> {
        // Every kept key has its value: insert and forget change both.
        keys.filter_map(|k| self.values.get(k).map(|v| (k, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect<'a>(i: impl Iterator<Item = &'a u32>) -> Vec<u32> {
        i.copied().collect()
    }

    #[test]
    fn a_full_log_drops_its_oldest_and_keeps_counting() {
        let mut log = BoundedLog::new(3);
        assert_eq!(log.push(1), None);
        assert_eq!(log.push(2), None);
        assert_eq!(log.push(3), None);
        assert_eq!(log.push(4), Some(1));
        assert_eq!(collect(log.iter()), [2, 3, 4]);
        assert_eq!((log.len(), log.total()), (3, 4));
        assert_eq!(collect(log.newest(2)), [3, 4]);
        assert_eq!(collect(log.newest(10)), [2, 3, 4]);
    }

    #[test]
    fn added_since_gives_what_is_new_even_after_the_oldest_fell_off() {
        let mut log = BoundedLog::new(3);
        log.push(1);
        let mark = log.total();
        assert_eq!(collect(log.added_since(mark)), Vec::<u32>::new());
        log.push(2);
        log.push(3);
        assert_eq!(collect(log.added_since(mark)), [2, 3]);
        // More was added than the log keeps: what is left of it.
        for i in 4..=9 {
            log.push(i);
        }
        assert_eq!(collect(log.added_since(mark)), [7, 8, 9]);
        assert_eq!(collect(log.added_since(log.total())), Vec::<u32>::new());
    }

    #[test]
    fn a_restored_log_keeps_the_newest_and_counts_what_it_kept() {
        let log = BoundedLog::restored(2, [1, 2, 3]);
        assert_eq!(collect(log.iter()), [2, 3]);
        assert_eq!(log.total(), 2);
        assert_eq!(BoundedLog::<u32>::new(0).capacity, 1);
    }

    #[test]
    fn partition_point_and_iter_from_find_a_place_in_an_ordered_log() {
        let log = BoundedLog::restored(10, [10, 20, 30, 40]);
        let start = log.partition_point(|e| *e < 25);
        assert_eq!(start, 2);
        assert_eq!(collect(log.iter_from(start)), [30, 40]);
        assert_eq!(collect(log.iter_from(9)), Vec::<u32>::new());
    }

    #[test]
    fn a_bounded_map_forgets_its_oldest_key_with_its_value() {
        let mut m = BoundedMap::new(2);
        m.insert("a", 1);
        m.insert("b", 2);
        let mark = m.total();
        m.insert("c", 3);
        assert_eq!(m.get(&"a"), None);
        assert_eq!(m.get(&"c"), Some(&3));
        assert_eq!(m.iter().collect::<Vec<_>>(), [(&"b", &2), (&"c", &3)]);
        assert_eq!(m.added_since(mark).collect::<Vec<_>>(), [(&"c", &3)]);
        assert_eq!((m.iter().count(), m.total()), (2, 3));
    }

    #[test]
    fn inserting_a_present_key_replaces_its_value_in_place() {
        let mut m = BoundedMap::new(2);
        m.insert("a", 1);
        m.insert("b", 2);
        m.insert("a", 10);
        assert_eq!(m.iter().collect::<Vec<_>>(), [(&"a", &10), (&"b", &2)]);
        assert_eq!(m.total(), 2);
        let r = BoundedMap::restored(1, [("x", 1), ("y", 2)]);
        assert_eq!(r.iter().collect::<Vec<_>>(), [(&"y", &2)]);
        assert_eq!(r.total(), 1);
    }
}
