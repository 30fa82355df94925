//! Refresh ahead: a key whose token is in use gets its next token in the background, before the
//! token's skew window opens, so that no request of it waits for a refresh. What lives here: the
//! option ([`RefreshAhead`]), the schedule (one deadline-ordered heap for every key of a layer),
//! and the one task that works through it.
//!
//! # One timer for every key
//!
//! A layer may hold a million keys. A task or a timer per key would cost memory and a wake-up per
//! key, in use or not; instead a key enters one heap, ordered by when it is due, once per
//! generation: the first time a request uses that generation's token. One task per layer sleeps
//! until the earliest entry is due, starts the refreshes that are, and sleeps again. An entry
//! holds its key weakly, so the schedule never keeps a key from eviction, and entries whose key
//! was evicted or has moved on to a newer generation are dropped when they come due, or sooner
//! when they have come to outnumber the live ones (see [`Schedule::push`]): the heap stays within
//! twice the keys held, which `max_cached_keys` bounds.
//!
//! # Which keys
//!
//! Only keys a request used within [`RefreshAhead::idle`] of their due point are refreshed: a key
//! used once and then left alone (a user who synced once, a million dormant accounts) is dropped
//! from the schedule when it comes due and costs nothing more; its next request, if any, takes the
//! on-demand path. Keys that never had a request never enter the schedule at all.
//!
//! # When
//!
//! A token is due at a point drawn at random from the earlier half of the
//! [`RefreshAhead::spread`] before its skew window opens (the spread at most half the time left
//! until then), so that keys whose tokens were issued together (a restart, a batch of users who
//! signed in at once) are not all refreshed in the same instant, and replicas of a service
//! sharing a store seldom reach a key at once (when they do, the store's lock makes the later one
//! adopt what the first saved). The later half is left for the refresh to finish (a slow token
//! endpoint, a lock a replica holds): a request that reached the window while the refresh still
//! ran would wait for it.
//!
//! # An ordinary refresh
//!
//! A due key starts the refresh a request would start (`TokenCache::join_or_start_refresh`): the
//! same single flight, the same store protocol (lock, re-read, adopt a newer stored set, fetch,
//! save), the same hooks, stats and terminal and transient handling. While it runs, the key's
//! still-fresh token goes on being sent. If it fails, nothing more is done here: the failure is
//! the ordinary transient one (its backoff, during which the valid token is still sent), and the
//! key is left to the on-demand path, which refreshes it when its skew window opens.
//!
//! # Two clocks
//!
//! Expiry is wall time, read from the layer's [`Clock`](crate::Clock); the task sleeps on tokio's
//! timer. It converts the one into the other when it goes to sleep, and looks at the wall clock
//! again at least every [`LOOK_AT_LEAST_EVERY`] while entries are scheduled, so that a wall clock
//! that jumps (a suspended machine, a corrected clock, a test's `ManualClock`) delays a refresh by
//! that long at most.
//!
//! # When it stops
//!
//! The task holds the cache weakly and ends as soon as the cache is gone: the cache holds the
//! sending half of a channel whose closing wakes the task wherever it sleeps.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::slot::{Lease, Phase, Slot};
use super::{Inner, TokenCache};
use crate::stats::Event;

/// How long a key may go without a request and still be refreshed ahead, unless set otherwise:
/// 15 minutes. Keys idle longer are left to the on-demand path.
pub const DEFAULT_REFRESH_AHEAD_IDLE: Duration = Duration::from_secs(15 * 60);

/// How far before a token's skew window opens its background refresh may be, unless set
/// otherwise: 60 seconds. Each token's refresh is due between 60 and 30 seconds before the window
/// opens (at most half the time the token has left until then).
pub const DEFAULT_REFRESH_AHEAD_SPREAD: Duration = Duration::from_secs(60);

/// The longest the task sleeps without looking at the wall clock while keys are scheduled: 1
/// second (see "Two clocks").
const LOOK_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// How many due keys the task starts refreshing before it lets other tasks run.
const BATCH: usize = 256;

/// How many more entries than live ones the heap may hold before it is compacted: with fewer
/// keys than this, compaction never runs, and the dead entries go when they come due.
const COMPACT_SLACK: usize = 1024;

/// Refreshing keys in use in the background before their tokens' skew window opens; see
/// [`TokenRefreshBuilder::refresh_ahead`](crate::TokenRefreshBuilder::refresh_ahead).
///
/// ```
/// use std::time::Duration;
/// use reqwest_token_refresh::RefreshAhead;
///
/// // Users who made a request in the last 5 minutes, refreshed up to 2 minutes before the
/// // skew window of their token opens.
/// let ahead = RefreshAhead::new().idle(Duration::from_secs(300)).spread(Duration::from_secs(120));
/// # let _ = ahead;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshAhead {
    idle: Duration,
    spread: Duration,
}

impl RefreshAhead {
    /// The defaults: [`DEFAULT_REFRESH_AHEAD_IDLE`] and [`DEFAULT_REFRESH_AHEAD_SPREAD`].
    pub fn new() -> Self {
        Self { idle: DEFAULT_REFRESH_AHEAD_IDLE, spread: DEFAULT_REFRESH_AHEAD_SPREAD }
    }

    /// A key last used longer ago than this when its refresh comes due is not refreshed ahead:
    /// its next request, if any, refreshes it on demand. Measured by the layer's clock, to the
    /// second. Any length is fine ([`Duration::MAX`]: every key ever used).
    ///
    /// Default: 15 minutes ([`DEFAULT_REFRESH_AHEAD_IDLE`]).
    #[must_use = "a builder method returns the changed value; on its own the call changes nothing"]
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// How far before a token's skew window opens its refresh may be: each token is refreshed at
    /// a point drawn at random between this long and half this long before the window opens, so
    /// that tokens issued together are not all refreshed at once, and each refresh has the other
    /// half to finish before any request would have to wait for it. Never more than half the time
    /// the token has left until its skew window opens; zero refreshes every token just as the
    /// window opens (requests that come meanwhile wait for it). Any length is fine.
    ///
    /// Default: 60 seconds ([`DEFAULT_REFRESH_AHEAD_SPREAD`]).
    #[must_use = "a builder method returns the changed value; on its own the call changes nothing"]
    pub fn spread(mut self, spread: Duration) -> Self {
        self.spread = spread;
        self
    }
}

impl Default for RefreshAhead {
    fn default() -> Self {
        Self::new()
    }
}

/// When a token whose skew window opens at `opens`, first used at `now`, is due for its refresh
/// ahead: `random` (uniform over `u64`) picks the point in the earlier half of the `spread` before
/// `opens`, the spread cut to half the time left (and to 2^64 nanoseconds, some 584 years). The
/// later half is the refresh's own time to finish, so that no request reaches the window while
/// it runs. `None` when the window is already open (the on-demand path has the key).
pub(super) fn due_point(opens: SystemTime, now: SystemTime, spread: Duration, random: u64) -> Option<SystemTime> {
    let left = opens.duration_since(now).ok().filter(|left| !left.is_zero())?;
    let spread = u64::try_from(spread.min(left / 2).as_nanos()).unwrap_or(u64::MAX);
    let half = spread / 2;
    // `(spread - half) * random / 2^64` is in [0, spread - half), so `before` is in (half, spread]
    // (zero only for a zero spread). Exact in integers, where a float would round the ends away.
    let offset = (u128::from(spread - half) * u128::from(random)) >> 64;
    let before = spread - u64::try_from(offset).unwrap_or(spread - half);
    opens.checked_sub(Duration::from_nanos(before))
}

/// A random `u64` for [`due_point`]; the middle of the spread should the OS have none to give.
fn random() -> u64 {
    getrandom::u64().unwrap_or(u64::MAX / 2)
}

/// Whole seconds of `now` since the Unix epoch (0 before it), as [`Slot::used`] keeps them.
fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// One key's refresh ahead, for one generation of its token.
pub(super) struct Entry {
    due: SystemTime,
    generation: u64,
    slot: Weak<Slot>,
}

impl Entry {
    /// Whether the entry still stands: its key is held and no newer generation was scheduled.
    fn stands(&self) -> bool {
        self.slot.upgrade().is_some_and(|slot| slot.scheduled.load(Ordering::Relaxed) == self.generation)
    }
}

// Ordered by when they are due (the heap's order); the generation only breaks ties.
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.due.cmp(&other.due).then(self.generation.cmp(&other.generation))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Entry {}

/// Every scheduled refresh of a layer, earliest first.
#[derive(Default)]
pub(super) struct Schedule {
    heap: BinaryHeap<Reverse<Entry>>,
    /// How many entries stood at the last compaction (0 before the first).
    stood: usize,
}

impl Schedule {
    /// Adds `entry`; returns whether it is now the earliest (the task must wake to sleep less).
    ///
    /// Entries that no longer stand (an evicted key, a generation replaced) are dropped when
    /// they come due; should they come to outnumber the standing ones by more than
    /// [`COMPACT_SLACK`] (keys evicted faster than they come due), they are dropped here, at a
    /// cost paid for by the pushes since the last compaction.
    fn push(&mut self, entry: Entry) -> bool {
        if self.heap.len() >= self.stood.saturating_mul(2).saturating_add(COMPACT_SLACK) {
            self.heap.retain(|Reverse(entry)| entry.stands());
            self.stood = self.heap.len();
        }
        let earliest = self.heap.peek().is_none_or(|Reverse(first)| entry < *first);
        self.heap.push(Reverse(entry));
        earliest
    }

    /// Moves up to `max` entries due by `now` into `due`, earliest first.
    fn pop_due(&mut self, now: SystemTime, due: &mut Vec<Entry>, max: usize) {
        while due.len() < max && self.heap.peek().is_some_and(|Reverse(first)| first.due <= now) {
            let Some(Reverse(entry)) = self.heap.pop() else { break };
            due.push(entry);
        }
    }

    /// When the earliest entry is due.
    fn next_due(&self) -> Option<SystemTime> {
        self.heap.peek().map(|Reverse(first)| first.due)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }
}

/// A layer's refresh ahead: its option, its schedule, and its task.
pub(super) struct Ahead {
    config: RefreshAhead,
    schedule: Mutex<Schedule>,
    /// Wakes the task when an entry earlier than the one it sleeps for is added.
    wake: Arc<Notify>,
    /// Never sent on: dropped with the cache, which ends the task wherever it sleeps.
    alive: watch::Sender<()>,
    /// The task, started by the first entry (in the runtime of the request that added it), and
    /// started again by a later one should that runtime have ended.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Ahead {
    pub(super) fn new(config: RefreshAhead) -> Self {
        Self {
            config,
            schedule: Mutex::new(Schedule::default()),
            wake: Arc::new(Notify::new()),
            alive: watch::Sender::new(()),
            task: Mutex::new(None),
        }
    }
}

impl TokenCache {
    /// Records that a request is about to send `lease`, `slot`'s token, at `now`: the key's last
    /// use, and, the first time its generation is used, its entry in the schedule. Nothing
    /// without refresh ahead. Called on every request, so it writes only when something changed.
    pub(super) fn note_use(&self, slot: &Arc<Slot>, lease: &Lease, now: SystemTime) {
        let Some(ahead) = &self.inner.ahead else { return };
        let seconds = unix_seconds(now);
        if slot.used.load(Ordering::Relaxed) != seconds {
            slot.used.store(seconds, Ordering::Relaxed);
        }
        if slot.scheduled.load(Ordering::Relaxed) >= lease.generation
            || slot.scheduled.fetch_max(lease.generation, Ordering::Relaxed) >= lease.generation
        {
            return;
        }
        let skew = self.inner.config.policy.skew;
        let Some(due) = lease.window_opens(skew).and_then(|opens| due_point(opens, now, ahead.config.spread, random()))
        else {
            return;
        };
        let entry = Entry { due, generation: lease.generation, slot: Arc::downgrade(slot) };
        let earliest = ahead.schedule.lock().push(entry);
        self.start_ahead_task(ahead);
        if earliest {
            ahead.wake.notify_one();
        }
    }

    /// Starts the schedule's task unless it runs.
    fn start_ahead_task(&self, ahead: &Ahead) {
        let mut task = ahead.task.lock();
        if task.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("no tokio runtime to run refresh ahead in; keys are refreshed on demand");
            return;
        };
        let work = run(Arc::downgrade(&self.inner), ahead.wake.clone(), ahead.alive.subscribe());
        *task = Some(runtime.spawn(work));
    }

    /// Starts the refreshes due by `now`, up to `max`, and says what the task does next.
    fn refresh_due(&self, ahead: &Ahead, now: SystemTime, max: usize) -> Next {
        let mut due = Vec::new();
        let next = {
            let mut schedule = ahead.schedule.lock();
            schedule.pop_due(now, &mut due, max);
            schedule.next_due()
        };
        let more = due.len() == max;
        for entry in due {
            self.refresh_ahead(ahead, entry, now);
        }
        if more {
            return Next::More;
        }
        Next::Sleep(next.map(|next| next.duration_since(now).unwrap_or_default().min(LOOK_AT_LEAST_EVERY)))
    }

    /// Starts `entry`'s refresh if it still stands and its key was used within `idle`.
    fn refresh_ahead(&self, ahead: &Ahead, entry: Entry, now: SystemTime) {
        // Evicted, or a newer generation scheduled since: nothing to do for this one.
        let Some(slot) = entry.slot.upgrade() else { return };
        if slot.scheduled.load(Ordering::Relaxed) != entry.generation {
            return;
        }
        // Evicted while a request still holds it: the key's tokens are the store's now.
        if !self.inner.keys.get(&slot.key).is_some_and(|held| Arc::ptr_eq(&held, &slot)) {
            return;
        }
        let idle_for = unix_seconds(now).saturating_sub(slot.used.load(Ordering::Relaxed));
        if u128::from(idle_for) > ahead.config.idle.as_millis() / 1000 {
            tracing::trace!(key = %slot.key, idle_for, "idle key not refreshed ahead");
            return;
        }
        let mut state = slot.state.lock();
        let current = state.current.as_ref().map(|lease| lease.generation);
        // Only from a key at rest on the generation scheduled: a flight already running, a dead
        // grant, a key that moved on are the on-demand path's.
        if current != Some(entry.generation) || !matches!(state.phase, Phase::Ready | Phase::CoolingDown(_)) {
            return;
        }
        match self.join_or_start_refresh(&slot, &mut state, now) {
            // Nobody waits for it: requests go on with the token they have until it is published.
            Ok(_waiter) => {
                self.inner.stats.count(Event::RefreshAhead);
                tracing::debug!(key = %slot.key, generation = entry.generation, "refresh ahead started");
            }
            Err(cooling) => {
                tracing::debug!(key = %slot.key, error = %cooling, "not refreshed ahead: cooling down; left to the on-demand path");
            }
        }
    }
}

/// What the schedule's task does after a round of due refreshes.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// More are due: go on once other tasks have run.
    More,
    /// Sleep this long, or until woken (`None`: nothing is scheduled).
    Sleep(Option<Duration>),
}

/// The schedule's task: starts the refreshes that are due, sleeps until the next one is (or it is
/// woken), and ends when the cache is gone.
async fn run(cache: Weak<Inner>, wake: Arc<Notify>, mut alive: watch::Receiver<()>) {
    loop {
        let next = {
            // Held only while refreshes are started, never across a wait.
            let Some(inner) = cache.upgrade() else { return };
            let cache = TokenCache { inner };
            let Some(ahead) = &cache.inner.ahead else { return };
            cache.refresh_due(ahead, cache.now(), BATCH)
        };
        match next {
            Next::More => tokio::task::yield_now().await,
            Next::Sleep(sleep) => {
                let sleep = async {
                    match sleep {
                        Some(sleep) => tokio::time::sleep(sleep).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    // Never sent on: the cache is gone.
                    _ = alive.changed() => return,
                    () = wake.notified() => {}
                    () = sleep => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
