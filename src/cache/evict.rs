//! Which keys stay in memory. Unbounded by default; with `max_cached_keys`, at most that many
//! keys are held, evicted by the clock (second-chance) algorithm.
//!
//! # Why the clock algorithm
//!
//! A key's slot is found in a hash map; eviction walks a ring of keys from its oldest end. A key
//! used again since eviction last passed it gets a second chance (its mark is cleared and it goes
//! to the back); a key in use (a request, a flight or a save retry holds its slot) is passed over;
//! the first other key goes. Each step of the walk is paid for by a use that set a mark, so the
//! cost per request stays flat however many keys come and go, unlike a scan for the least recently
//! used key under the map's lock. New keys start unmarked, so a stream of keys seen once (100,000
//! users each syncing once) evicts them in arrival order without disturbing keys in steady use.
//!
//! # What eviction keeps
//!
//! The store keeps an evicted key's tokens, and its next request loads them again. What the store
//! does not know is kept in a small record beside the map (as many records as keys at most,
//! oldest dropped first): a dead grant (so the same dead set read back is not refreshed again and
//! its hook does not fire again) and a cool-down that has not ended.
//!
//! # The trade-off
//!
//! The records are bounded too, so memory stays bounded however many keys die: with more dead
//! keys cycling through than the capacity holds, the oldest records go, and such a key, asked for
//! again, tries its dead refresh token once more (one token call, answered `invalid_grant` again,
//! and its hook fires again). Remembering every dead key would make memory grow with the number
//! of users who ever lost their grant, which is what `max_cached_keys` exists to prevent.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use parking_lot::Mutex;

use super::slot::{Remembered, Slot};
use crate::clock::Clock;
use crate::key::TokenKey;

/// The keys held in memory.
pub(super) struct Keys {
    capacity: Option<usize>,
    clock: Arc<dyn Clock>,
    map: Mutex<Map>,
    /// The default key's slot, once created: most clients use only that key, and their requests
    /// find it without the map's lock or a hash. Holding it here also keeps it from eviction.
    default: OnceLock<Arc<Slot>>,
}

#[derive(Default)]
struct Map {
    slots: HashMap<TokenKey, Arc<Slot>>,
    /// The clock's ring: every key in `slots` once, oldest first.
    ring: VecDeque<TokenKey>,
    remembered: HashMap<TokenKey, Remembered>,
    /// Arrival order of `remembered`, for dropping the oldest record.
    remembered_order: VecDeque<TokenKey>,
}

impl Keys {
    pub(super) fn new(capacity: Option<usize>, clock: Arc<dyn Clock>) -> Self {
        Self { capacity, clock, map: Mutex::new(Map::default()), default: OnceLock::new() }
    }

    /// The default key's slot, if a request created it.
    pub(super) fn default_slot(&self) -> Option<&Arc<Slot>> {
        let slot = self.default.get()?;
        self.touch(slot);
        Some(slot)
    }

    /// `key`'s slot, created (and others evicted) if need be.
    pub(super) fn slot(&self, key: &TokenKey) -> Arc<Slot> {
        if key.is_default()
            && let Some(slot) = self.default_slot()
        {
            return slot.clone();
        }
        let mut map = self.map.lock();
        if let Some(slot) = map.slots.get(key) {
            let slot = slot.clone();
            self.touch(&slot);
            return slot;
        }
        let remembered = map.remembered.remove(key);
        if remembered.is_some() {
            map.remembered_order.retain(|k| k != key);
        }
        let slot = Arc::new(Slot::new(key.clone(), remembered));
        map.slots.insert(key.clone(), slot.clone());
        map.ring.push_back(key.clone());
        if key.is_default() {
            let _ = self.default.set(slot.clone());
        }
        if let Some(capacity) = self.capacity {
            map.evict_down_to(capacity, self.clock.now());
        }
        slot
    }

    /// `key`'s slot if it is held; creates nothing.
    pub(super) fn get(&self, key: &TokenKey) -> Option<Arc<Slot>> {
        if key.is_default()
            && let Some(slot) = self.default.get()
        {
            return Some(slot.clone());
        }
        self.map.lock().slots.get(key).cloned()
    }

    /// How many keys are held.
    pub(super) fn len(&self) -> usize {
        self.map.lock().slots.len()
    }

    /// Records a use of the slot, for its second chance; nothing to record when unbounded.
    fn touch(&self, slot: &Slot) {
        if self.capacity.is_some() && !slot.referenced.load(Ordering::Relaxed) {
            slot.referenced.store(true, Ordering::Relaxed);
        }
    }
}

impl Map {
    /// Evicts until at most `capacity` keys are held, or no key can go (all in use). Walks the
    /// ring at most twice: once may be spent clearing marks.
    fn evict_down_to(&mut self, capacity: usize, now: SystemTime) {
        let mut steps = self.ring.len().saturating_mul(2);
        while self.slots.len() > capacity && steps > 0 {
            steps -= 1;
            let Some(key) = self.ring.pop_front() else { return };
            let Some(slot) = self.slots.get(&key) else { continue };
            // In use: the map's own reference is the only one of an idle key (the default key's
            // slot is also held by `Keys::default`, so it never goes).
            let busy = Arc::strong_count(slot) > 1;
            if busy || slot.referenced.swap(false, Ordering::Relaxed) {
                self.ring.push_back(key);
                continue;
            }
            let Some(slot) = self.slots.remove(&key) else { continue };
            let remembered = Remembered::of(&slot.state.lock(), now);
            if let Some(remembered) = remembered {
                self.remember(key, remembered, capacity);
            }
        }
        if self.slots.len() > capacity {
            tracing::debug!(held = self.slots.len(), capacity, "every key over the capacity is in use; evicting later");
        }
    }

    fn remember(&mut self, key: TokenKey, remembered: Remembered, capacity: usize) {
        if self.remembered.insert(key.clone(), remembered).is_none() {
            self.remembered_order.push_back(key);
        }
        while self.remembered.len() > capacity.max(1) {
            let Some(oldest) = self.remembered_order.pop_front() else { break };
            self.remembered.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn keys(capacity: usize) -> Keys {
        Keys::new(Some(capacity), Arc::new(ManualClock::starting_now()))
    }

    fn key(i: usize) -> TokenKey {
        TokenKey::new(format!("k{i}"))
    }

    fn held(keys: &Keys, i: usize) -> bool {
        keys.get(&key(i)).is_some()
    }

    #[test]
    fn keys_seen_once_go_in_arrival_order() {
        let keys = keys(3);
        for i in 0..5 {
            drop(keys.slot(&key(i)));
        }
        assert_eq!(keys.len(), 3);
        assert!(!held(&keys, 0) && !held(&keys, 1), "the oldest went first");
        assert!(held(&keys, 2) && held(&keys, 3) && held(&keys, 4));
    }

    #[test]
    fn a_key_used_again_gets_a_second_chance() {
        let keys = keys(3);
        for i in 0..3 {
            drop(keys.slot(&key(i)));
        }
        drop(keys.slot(&key(0))); // used again: marked
        drop(keys.slot(&key(3)));
        assert_eq!(keys.len(), 3);
        assert!(held(&keys, 0), "the key in use again stays");
        assert!(!held(&keys, 1), "the oldest key seen once goes instead");
    }

    #[test]
    fn a_key_in_use_is_never_evicted_and_the_bound_returns_once_it_is_idle() {
        let keys = keys(2);
        let in_use: Vec<_> = (0..3).map(|i| keys.slot(&key(i))).collect();
        assert_eq!(keys.len(), 3, "all three are in use: none can go");
        drop(in_use);
        drop(keys.slot(&key(3)));
        assert_eq!(keys.len(), 2);
        assert!(held(&keys, 3), "the newest key stays");
    }

    #[test]
    fn the_default_key_is_never_evicted() {
        let keys = keys(1);
        drop(keys.slot(&TokenKey::default()));
        for i in 0..4 {
            drop(keys.slot(&key(i)));
        }
        assert!(keys.get(&TokenKey::default()).is_some());
        assert!(keys.default_slot().is_some());
    }

    #[test]
    fn unbounded_keys_are_all_kept_and_never_marked() {
        let keys = Keys::new(None, Arc::new(ManualClock::starting_now()));
        for i in 0..100 {
            let slot = keys.slot(&key(i));
            assert!(!slot.referenced.load(Ordering::Relaxed));
        }
        drop(keys.slot(&key(0)));
        assert_eq!(keys.len(), 100);
        assert!(!keys.get(&key(0)).unwrap().referenced.load(Ordering::Relaxed), "no bookkeeping without a bound");
    }

    #[test]
    fn a_record_taken_back_by_its_key_leaves_the_others_in_their_order() {
        let keys = keys(2);
        let cooling = || Remembered::CoolingDown {
            cool: super::super::slot::CoolDown::new(std::time::Duration::from_secs(60), SystemTime::now()),
            failures: 1,
        };
        keys.map.lock().remember(key(0), cooling(), 2);
        keys.map.lock().remember(key(1), cooling(), 2);
        drop(keys.slot(&key(0))); // k0 comes back: its record goes with it
        let mut map = keys.map.lock();
        assert!(!map.remembered.contains_key(&key(0)));
        map.remember(key(2), cooling(), 2);
        map.remember(key(3), cooling(), 2);
        // The oldest record left was k1's: it goes first, the newest two stay.
        assert!(!map.remembered.contains_key(&key(1)));
        assert!(map.remembered.contains_key(&key(2)) && map.remembered.contains_key(&key(3)));
        assert_eq!(map.remembered_order.len(), map.remembered.len());
    }

    #[test]
    fn what_evicted_keys_leave_behind_is_bounded_too() {
        let capacity = 2;
        let mut map = Map::default();
        for i in 0..10 {
            let remembered = Remembered::CoolingDown {
                cool: super::super::slot::CoolDown::new(std::time::Duration::from_secs(60), SystemTime::now()),
                failures: 1,
            };
            map.remember(key(i), remembered, capacity);
        }
        assert_eq!(map.remembered.len(), capacity);
        assert_eq!(map.remembered_order.len(), capacity);
        assert!(
            map.remembered.contains_key(&key(9)) && map.remembered.contains_key(&key(8)),
            "the newest records stay"
        );
    }
}
