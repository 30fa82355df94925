//! Refresh ahead beside the code: the due points, the schedule's order and bound, the dormant keys
//! it drops, and the task's end. The whole layer's behaviour (1,000 keys over HTTP, replicas, the
//! on-demand fallback) is in `tests/all/refresh_ahead.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::cache::CacheConfig;
use crate::clock::{Clock, ManualClock};
use crate::key::TokenKey;
use crate::policy::Policy;
use crate::source::RefreshTokenGrant;
use crate::stats::Counters;
use crate::store::MemoryStore;
use crate::token::TokenSet;

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

/// A cache with refresh ahead on `clock`, whose token endpoint refuses connections (port 9 on
/// loopback): the tests here look at what is started, not at its answer.
fn cache(ahead: RefreshAhead, clock: &ManualClock) -> TokenCache {
    let config = CacheConfig {
        source: Arc::new(RefreshTokenGrant::new("http://127.0.0.1:9/token").client_id("client")),
        store: Arc::new(MemoryStore::new()),
        clock: Arc::new(clock.clone()),
        policy: Policy::default(),
        initial_tokens: None,
        max_cached_keys: None,
        on_refresh: None,
        on_reauthorization_required: None,
        on_client_rejected: None,
        on_store_error: None,
        name: None,
        on_event: None,
        refresh_ahead: Some(ahead),
    };
    TokenCache::new(config, Arc::new(Counters::default()))
}

/// Installs an hour-long token for `key` and uses it once, as a request would.
async fn install_and_use(cache: &TokenCache, clock: &ManualClock, key: &TokenKey) {
    let tokens = TokenSet::new(format!("a-{key}")).with_refresh_token("r").with_expires_at(clock.now() + HOUR);
    cache.set_tokens(key, tokens).await.expect("installed");
    cache.lease(key).await.expect("a token to send");
}

fn ahead(cache: &TokenCache) -> &Ahead {
    cache.inner.ahead.as_ref().expect("refresh ahead is on")
}

#[test]
fn the_due_point_falls_within_the_spread_before_the_window_opens() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let opens = now + HOUR;
    for random in [0, 1, u64::MAX / 3, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
        let due = due_point(opens, now, MINUTE, random).expect("a due point");
        assert!(due <= opens - MINUTE / 2 && due >= opens - MINUTE, "random {random}: {due:?}");
    }
    let latest = due_point(opens, now, MINUTE, u64::MAX);
    let just_before_half = opens - MINUTE / 2 - Duration::from_nanos(1);
    assert_eq!(latest, Some(just_before_half), "the latest: just over half the spread before the window opens");
    assert_eq!(due_point(opens, now, MINUTE, 0), Some(opens - MINUTE), "the earliest: a spread before");
    assert_eq!(due_point(opens, now, Duration::ZERO, u64::MAX), Some(opens), "no spread: as the window opens");
}

#[test]
fn random_due_points_spread_keys_over_the_window() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let opens = now + HOUR;
    // Six five-second buckets of the earlier half of the minute before the window: 6,000 draws
    // fill each.
    let mut buckets = [0usize; 6];
    for _ in 0..6_000 {
        let due = due_point(opens, now, MINUTE, random()).unwrap();
        let before = opens.duration_since(due).unwrap().as_secs() as usize;
        assert!((30..=60).contains(&before), "{before} s before");
        buckets[(before - 30).min(29) / 5] += 1;
    }
    for (bucket, count) in buckets.iter().enumerate() {
        assert!(*count > 500, "bucket {bucket} holds {count} of 6,000: {buckets:?}");
    }
}

#[test]
fn the_spread_is_cut_to_half_the_time_left() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let opens = now + Duration::from_secs(10);
    let earliest = due_point(opens, now, HOUR, 0).unwrap();
    assert_eq!(earliest, now + Duration::from_secs(5), "never earlier than halfway");
}

#[test]
fn a_window_already_open_is_not_scheduled() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(due_point(now, now, MINUTE, 7), None);
    assert_eq!(due_point(now - MINUTE, now, MINUTE, 7), None);
}

#[test]
fn extreme_spreads_and_times_never_panic() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let far = crate::clock::saturating_add(now, Duration::MAX);
    for random in [0, u64::MAX] {
        let due = due_point(far, now, Duration::MAX, random).expect("a due point");
        assert!(due > now && due <= far);
        assert!(due_point(far, SystemTime::UNIX_EPOCH, Duration::MAX, random).is_some());
    }
}

/// An entry for a slot that is gone, or for `slot` at `generation`.
fn entry(due: SystemTime, generation: u64, slot: Option<&Arc<Slot>>) -> Entry {
    Entry { due, generation, slot: slot.map_or_else(Weak::new, Arc::downgrade) }
}

#[test]
fn the_schedule_gives_back_what_is_due_earliest_first_and_no_more() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let mut schedule = Schedule::default();
    assert!(schedule.push(entry(now + Duration::from_secs(30), 1, None)), "the first is the earliest");
    assert!(schedule.push(entry(now + Duration::from_secs(10), 2, None)), "earlier: the task must wake");
    assert!(!schedule.push(entry(now + Duration::from_secs(20), 3, None)), "later: it need not");
    assert_eq!(schedule.next_due(), Some(now + Duration::from_secs(10)));

    let mut due = Vec::new();
    schedule.pop_due(now + Duration::from_secs(5), &mut due, 10);
    assert!(due.is_empty(), "nothing due yet");
    schedule.pop_due(now + Duration::from_secs(20), &mut due, 10);
    assert_eq!(due.iter().map(|e| e.generation).collect::<Vec<_>>(), [2, 3], "earliest first, both due");
    due.clear();
    schedule.pop_due(now + HOUR, &mut due, 10);
    assert_eq!(due.iter().map(|e| e.generation).collect::<Vec<_>>(), [1]);
    assert_eq!(schedule.next_due(), None);

    for i in 0..10 {
        schedule.push(entry(now, i, None));
    }
    due.clear();
    schedule.pop_due(now, &mut due, 4);
    assert_eq!(due.len(), 4, "at most a batch at a time");
    assert_eq!(schedule.len(), 6);
}

#[test]
fn entries_that_no_longer_stand_are_compacted_away() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let mut schedule = Schedule::default();
    let live: Vec<Arc<Slot>> = (0..100).map(|i| Arc::new(Slot::new(TokenKey::new(format!("k{i}")), None))).collect();
    for slot in &live {
        slot.scheduled.store(1, Ordering::Relaxed);
        schedule.push(entry(now + HOUR, 1, Some(slot)));
    }
    // A million keys evicted after one use each, and the live keys' older generations: none of
    // them stands, and the schedule never holds many more entries than the hundred that do.
    for i in 0..1_000_000u64 {
        let stale = match i % 10 {
            0 => entry(now + HOUR, 0, Some(&live[(i / 10 % 100) as usize])),
            _ => entry(now + HOUR, i, None),
        };
        schedule.push(stale);
        assert!(schedule.len() <= 2 * 100 + COMPACT_SLACK + 1, "{} entries after {i} pushes", schedule.len());
    }
    schedule.heap.retain(|Reverse(entry)| entry.stands());
    assert_eq!(schedule.len(), 100, "every live key's entry survived the compactions");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_task_ends_when_the_cache_is_dropped_even_mid_sleep() {
    let clock = ManualClock::starting_now();
    let cache = cache(RefreshAhead::new(), &clock);
    install_and_use(&cache, &clock, &TokenKey::new("user")).await;
    let task = ahead(&cache).task.lock().take().expect("the first use started the task");
    // Let it run to its sleep (the one key is due in an hour).
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!task.is_finished(), "it runs while the cache lives");
    let dropped = tokio::time::Instant::now();
    drop(cache);
    let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
    ended.expect("the task ends once the cache is gone").expect("and does not panic");
    // On the paused clock, a task that only noticed at its next look would have slept a second.
    assert!(dropped.elapsed() < LOOK_AT_LEAST_EVERY, "woken by the drop: {:?}", dropped.elapsed());
}

#[tokio::test(flavor = "current_thread")]
async fn a_task_gone_with_its_runtime_is_started_again() {
    let clock = ManualClock::starting_now();
    let cache = cache(RefreshAhead::new(), &clock);
    install_and_use(&cache, &clock, &TokenKey::new("first")).await;
    let task = ahead(&cache).task.lock().take().expect("started");
    task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await.expect("aborted");
    *ahead(&cache).task.lock() = None;
    install_and_use(&cache, &clock, &TokenKey::new("second")).await;
    let again = ahead(&cache).task.lock().take().expect("a new key's entry started it again");
    assert!(!again.is_finished());
    again.abort();
}

#[tokio::test(flavor = "current_thread")]
async fn dormant_keys_come_due_and_go_without_a_refresh() {
    let clock = ManualClock::starting_now();
    let idle = 10 * MINUTE;
    let cache = cache(RefreshAhead::new().idle(idle), &clock);
    let dormant = 10_000;
    for i in 0..dormant {
        install_and_use(&cache, &clock, &TokenKey::new(format!("dormant-{i}"))).await;
    }
    // Fifty minutes on, another key is installed and used; the dormant ones are not used again.
    clock.advance(50 * MINUTE);
    let active = TokenKey::new("active");
    install_and_use(&cache, &clock, &active).await;
    assert_eq!(ahead(&cache).schedule.lock().len(), dormant + 1, "each key used once entered once");

    // Every dormant key is due (a minute before its skew window opens, at most); they go.
    clock.advance(10 * MINUTE);
    let now = clock.now();
    while ahead(&cache).schedule.lock().next_due().is_some_and(|due| due <= now) {
        let _ = cache.refresh_due(ahead(&cache), now, BATCH);
    }
    assert_eq!(cache.inner.stats.snapshot().refreshes_ahead, 0, "no dormant key was refreshed");
    assert_eq!(ahead(&cache).schedule.lock().len(), 1, "the dormant keys went, at no cost; the active one waits");
    assert!(matches!(cache.state(&TokenKey::new("dormant-0")), crate::TokenState::Ready { .. }));

    // The active key, used again shortly before its own due point: refreshed ahead.
    clock.advance(48 * MINUTE);
    cache.lease(&active).await.expect("a token to send");
    clock.advance(MINUTE + Duration::from_secs(30));
    let _ = cache.refresh_due(ahead(&cache), clock.now(), BATCH);
    assert_eq!(cache.inner.stats.snapshot().refreshes_ahead, 1);
    assert!(matches!(cache.state(&active), crate::TokenState::Refreshing { .. }), "{:?}", cache.state(&active));
}
