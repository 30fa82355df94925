//! The token cache: per key, the current token, its generation, and the single flight.
//!
//! # How one refresh serves a storm
//!
//! Every published token set gets a generation number. A request remembers the generation it
//! sent; when it comes back 401, it asks for a token newer than that generation. If one is
//! already published, it gets it at once (the 401 was stale). If a refresh is running, it waits
//! for that refresh. Only otherwise does it start one. While that refresh runs, the rejected token
//! is not handed out again: requests that start meanwhile wait for the refresh rather than collect
//! a 401 of their own first (and are sent with it after all if the refresh fails). A refresh runs in a task of its own and its outcome is broadcast to
//! every waiter, so dropping any request (even the one that started it) neither cancels the
//! refresh nor strands the others.
//!
//! # Why save before publish
//!
//! A rotating provider kills the old refresh token as soon as it issues the new one. The new set is
//! therefore saved to the store before any request may use it, and the single flight holds the
//! store's lock (when it has one) from re-reading the store to saving, so processes sharing a
//! store refresh once between them. A failed save does not stop the new token from being used
//! (the old refresh token is dead anyway); it is reported and retried until it succeeds.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::error::{Error, RefreshError, StoreError};
use crate::key::TokenKey;
use crate::source::TokenSource;
use crate::stats::Counters;
use crate::store::TokenStore;
use crate::token::{self, Freshness, TokenSet};

tokio::task_local! {
    /// Set while a refresh runs. A token source that sends its token request through a client
    /// wrapped in this same layer would otherwise wait for its own refresh forever.
    static REFRESHING: ();
}

/// Whether the current task is a refresh (see `REFRESHING`).
pub(crate) fn in_refresh() -> bool {
    REFRESHING.try_with(|_| ()).is_ok()
}

/// OAuth error codes from a refresh that mean the grant is dead for good.
pub(crate) const DEFAULT_TERMINAL_ERRORS: &[&str] = &["invalid_grant", "invalid_client", "unauthorized_client"];

/// Error codes that, even on a 400, say "try again later".
const RETRYABLE_ERRORS: &[&str] = &["temporarily_unavailable", "server_error", "slow_down"];

/// Callback on a new token set.
pub(crate) type RefreshHook = Arc<dyn Fn(&TokenKey, &TokenSet) + Send + Sync>;
/// Callback when a key needs re-authorization.
pub(crate) type ReauthorizationHook = Arc<dyn Fn(&TokenKey, &RefreshError) + Send + Sync>;
/// Callback when the store fails.
pub(crate) type StoreErrorHook = Arc<dyn Fn(&TokenKey, &StoreError) + Send + Sync>;

/// Everything the cache needs that the builder decides.
pub(crate) struct CacheConfig {
    pub(crate) source: Arc<dyn TokenSource>,
    pub(crate) store: Arc<dyn TokenStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) skew: Duration,
    pub(crate) min_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) max_retry_after: Duration,
    pub(crate) terminal_errors: Vec<String>,
    pub(crate) initial_tokens: Option<TokenSet>,
    /// How many keys to keep in memory; idle ones beyond it are evicted (the store keeps them).
    pub(crate) max_cached_keys: Option<usize>,
    pub(crate) on_refresh: Option<RefreshHook>,
    pub(crate) on_reauthorization_required: Option<ReauthorizationHook>,
    pub(crate) on_store_error: Option<StoreErrorHook>,
}

/// A token set as published, with its generation.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub(crate) tokens: Arc<TokenSet>,
    pub(crate) generation: u64,
    /// The `Authorization` header for this token, built once when it is published rather than on
    /// every request; or why the token cannot be sent (a garbled token that was still saved
    /// because it came with a new refresh token).
    pub(crate) header: Result<http::HeaderValue, String>,
    /// When it was fetched, if this layer fetched it: the token's lifetime is then known, and
    /// bounds the skew window for short-lived tokens. Unknown for loaded or installed tokens.
    pub(crate) fetched_at: Option<SystemTime>,
}

impl Lease {
    /// Whether sending this token can succeed at all: usable, and not past its expiry.
    fn is_sendable(&self, now: SystemTime) -> bool {
        self.freshness(Duration::ZERO, now) != Freshness::Expired
    }

    fn freshness(&self, skew: Duration, now: SystemTime) -> Freshness {
        if self.header.is_err() {
            return Freshness::Expired;
        }
        let expires_at = self.tokens.expires_at();
        let skew = match self.fetched_at {
            Some(fetched_at) => token::effective_skew(skew, fetched_at, expires_at),
            None => skew,
        };
        token::freshness(expires_at, skew, now)
    }
}

/// What a key's tokens are doing; see [`TokenRefresh::state`](crate::TokenRefresh::state).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TokenState {
    /// No token is held for this key (none loaded or set yet).
    Empty,
    /// A token is held and no refresh is running.
    Ready {
        /// The generation of the held token (1 for the first).
        generation: u64,
        /// When it expires, if known.
        expires_at: Option<SystemTime>,
    },
    /// A refresh is running.
    Refreshing {
        /// The generation being replaced (0 if none).
        generation: u64,
    },
    /// A refresh failed transiently; no token call is made until the cool-down ends.
    CoolingDown {
        /// The generation of the held token (0 if none).
        generation: u64,
        /// How long until a refresh may be attempted again.
        retry_after: Duration,
    },
    /// The refresh token is dead; the user must authorize again.
    ReauthorizationRequired {
        /// What the token source said.
        reason: RefreshError,
    },
}

impl TokenState {
    /// Whether the user must authorize again before this key's requests can succeed.
    pub fn is_reauthorization_required(&self) -> bool {
        matches!(self, TokenState::ReauthorizationRequired { .. })
    }
}

type Outcome = Result<Lease, Error>;

/// A waiter's hold on a flight: its id and a receiver for its outcome.
struct Flight {
    id: u64,
    rx: watch::Receiver<Option<Outcome>>,
}

/// The flight a slot is running. The sender is the flight task's; the slot holds it weakly, so
/// that waiters still learn when the task is gone without an answer (a runtime shutting down),
/// and `set_tokens` can answer them when it overtakes the flight.
struct Running {
    id: u64,
    rx: watch::Receiver<Option<Outcome>>,
    tx: Weak<watch::Sender<Option<Outcome>>>,
}

#[derive(Default)]
struct SlotState {
    current: Option<Lease>,
    generation: u64,
    flight: Option<Running>,
    terminal: Option<RefreshError>,
    cooldown_until: Option<SystemTime>,
    failures: u32,
    /// The generation whose save failed and is being retried.
    unsaved: Option<u64>,
    /// The newest generation a server answered 401 to (a 401 that `RefreshOn` accepts). While a
    /// refresh replaces it, it is not handed out again: new requests wait for the refresh instead
    /// of collecting a 401 first, and are sent with it should the refresh fail.
    rejected: u64,
}

impl SlotState {
    /// The current token if a request may send it without waiting: the key is not dead, the
    /// token is fresh, and it is not one a server rejected that a running refresh is replacing.
    fn ready(&self, skew: Duration, now: SystemTime) -> Option<&Lease> {
        if self.terminal.is_some() {
            return None;
        }
        let current = self.current.as_ref()?;
        let replaced = self.flight.is_some() && current.generation <= self.rejected;
        (!replaced && current.freshness(skew, now) == Freshness::Fresh).then_some(current)
    }
}

struct Slot {
    key: TokenKey,
    /// When a request last asked for this key, on the cache's own tick counter; for eviction, so
    /// kept only when the cache is bounded (and never for the default key, which stays).
    last_used: AtomicU64,
    loaded: tokio::sync::OnceCell<()>,
    /// Held around every store save and the publish that follows it, so that a retried save of
    /// an older set can never land after the save of a newer one.
    save_lock: tokio::sync::Mutex<()>,
    state: Mutex<SlotState>,
}

struct Inner {
    config: CacheConfig,
    stats: Arc<Counters>,
    slots: Mutex<HashMap<TokenKey, Arc<Slot>>>,
    flight_ids: AtomicU64,
    ticks: AtomicU64,
    /// The default key's slot, once created: most clients use only that key, and their requests
    /// find it without the map's lock or a hash. Holding it here also keeps it from eviction.
    default_slot: std::sync::OnceLock<Arc<Slot>>,
}

/// A request's hold on a key: the token it sends and the slot it came from. Holding the slot
/// keeps the key in memory (not evicted) until the request is done with it.
pub(crate) struct Ticket {
    pub(crate) lease: Lease,
    slot: Arc<Slot>,
}

impl Ticket {
    /// The ticket as a request uses it: the header to send (or why the token cannot be sent),
    /// and what a 401 will need.
    pub(crate) fn into_parts(self) -> (Result<http::HeaderValue, String>, Sent<'static>) {
        (self.lease.header, Sent { generation: self.lease.generation, slot: Cow::Owned(self.slot) })
    }
}

/// A request that went out with a key's token: the token's generation, and the key's slot (held
/// against eviction; the default key's, never evicted, is borrowed).
pub(crate) struct Sent<'a> {
    generation: u64,
    slot: Cow<'a, Arc<Slot>>,
}

impl Sent<'_> {
    /// The generation of the token the request carried.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The key the request used.
    pub(crate) fn key(&self) -> &TokenKey {
        &self.slot.key
    }
}

/// Per-key tokens, generations and single flights. Cheap to clone.
#[derive(Clone)]
pub(crate) struct TokenCache {
    inner: Arc<Inner>,
}

/// What one flight produced, before it is applied to the slot.
enum Produced {
    /// New tokens, the result of saving them, and, for tokens salvaged from an otherwise unusable
    /// answer (a new refresh token beside a garbled access token), why the refresh still failed.
    Fetched(TokenSet, Result<(), StoreError>, Option<RefreshError>),
    Adopted(TokenSet),
    Failed(Error),
    /// `set_tokens` replaced the slot's tokens while the flight ran; its result is dropped.
    Overtaken,
}

/// What applying a flight's result leaves to do once no lock is held: hooks, a save retry.
#[derive(Default)]
#[must_use]
struct Effects {
    refreshed: Option<Arc<TokenSet>>,
    terminal: Option<RefreshError>,
    retry_save: Option<(u64, StoreError)>,
}

impl Effects {
    fn run(self, cache: &TokenCache, slot: &Arc<Slot>) {
        let config = &cache.inner.config;
        // The save retry first: a panicking hook must not cost a rotated refresh token.
        if let Some((generation, err)) = self.retry_save {
            cache.report_store_error_hook(&slot.key, &err);
            cache.spawn_save_retry(slot.clone(), generation);
        }
        if let (Some(tokens), Some(hook)) = (self.refreshed, &config.on_refresh) {
            hook(&slot.key, &tokens);
        }
        if let (Some(reason), Some(hook)) = (self.terminal, &config.on_reauthorization_required) {
            hook(&slot.key, &reason);
        }
    }
}

impl TokenCache {
    pub(crate) fn new(config: CacheConfig, stats: Arc<Counters>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                stats,
                slots: Mutex::new(HashMap::new()),
                flight_ids: AtomicU64::new(0),
                ticks: AtomicU64::new(0),
                default_slot: std::sync::OnceLock::new(),
            }),
        }
    }

    fn slot(&self, key: &TokenKey) -> Arc<Slot> {
        if key.is_default()
            && let Some(slot) = self.inner.default_slot.get()
        {
            self.touch(slot);
            return slot.clone();
        }
        let mut slots = self.inner.slots.lock();
        let slot = slots
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    key: key.clone(),
                    last_used: AtomicU64::new(0),
                    loaded: tokio::sync::OnceCell::new(),
                    save_lock: tokio::sync::Mutex::new(()),
                    state: Mutex::new(SlotState::default()),
                })
            })
            .clone();
        self.touch(&slot);
        if key.is_default() {
            let _ = self.inner.default_slot.set(slot.clone());
        }
        if let Some(capacity) = self.inner.config.max_cached_keys {
            // Evict in batches (an eighth of the capacity over it) so that the scan is amortised.
            if slots.len() > capacity + (capacity / 8).max(16) {
                evict_idle(&mut slots, capacity);
            }
        }
        slot
    }

    /// Records a use of the slot, for eviction; nothing to record when the cache is unbounded.
    fn touch(&self, slot: &Slot) {
        if self.inner.config.max_cached_keys.is_some() {
            let tick = self.inner.ticks.fetch_add(1, Ordering::Relaxed);
            slot.last_used.store(tick, Ordering::Relaxed);
        }
    }

    /// How many keys are held in memory.
    pub(crate) fn cached_keys(&self) -> usize {
        self.inner.slots.lock().len()
    }

    /// The fast path of [`lease`](Self::lease) for `key` (`None`: the default key): the current
    /// token's header when the key is loaded and its token ready (see `SlotState::ready`), without
    /// waiting (and without the future a wait needs). `None` when [`lease`](Self::lease) has work
    /// to do.
    ///
    /// The default key's slot is borrowed, not cloned: every request of a client with one token set
    /// would otherwise bump the same reference count, a cache line the cores pass around.
    pub(crate) fn lease_ready(&self, key: Option<&TokenKey>) -> Option<(http::HeaderValue, Sent<'_>)> {
        let slot = match key {
            Some(key) if !key.is_default() => Cow::Owned(self.slot(key)),
            _ => Cow::Borrowed(self.inner.default_slot.get()?),
        };
        if !slot.loaded.initialized() {
            return None;
        }
        let config = &self.inner.config;
        let (header, generation) = {
            let state = slot.state.lock();
            let ready = state.ready(config.skew, config.clock.now())?;
            (ready.header.clone().ok()?, ready.generation)
        };
        Some((header, Sent { generation, slot }))
    }

    /// The token a request should send now: the current one if fresh, else the outcome of a
    /// refresh (started or joined). A token inside the skew window is still used when the refresh
    /// fails transiently.
    pub(crate) async fn lease(&self, key: &TokenKey) -> Result<Ticket, Error> {
        let slot = self.slot(key);
        let lease = self.lease_in(&slot).await?;
        Ok(Ticket { lease, slot })
    }

    async fn lease_in(&self, slot: &Arc<Slot>) -> Result<Lease, Error> {
        let key = &slot.key;
        if !slot.loaded.initialized() {
            // Once per key: boxed, so that waiting for a refresh does not carry its size.
            Box::pin(self.ensure_loaded(slot)).await?;
        }
        let config = &self.inner.config;
        let (flight, fallback) = {
            let mut state = slot.state.lock();
            if let Some(reason) = &state.terminal {
                Counters::bump(&self.inner.stats.fail_fast);
                return Err(reauthorization(key, reason));
            }
            let now = config.clock.now();
            if let Some(ready) = state.ready(config.skew, now) {
                return Ok(ready.clone());
            }
            // A token held back but not expired (inside the skew window, or rejected by a server
            // while its refresh runs) is still sent should the refresh fail: the request then
            // fares as it would have without the hold-back.
            let fallback = state.current.as_ref().filter(|lease| lease.is_sendable(now)).cloned();
            match self.join_or_start(slot, &mut state, now) {
                Ok(flight) => (flight, fallback),
                Err(cooling) => {
                    if let Some(fallback) = fallback {
                        return Ok(fallback);
                    }
                    Counters::bump(&self.inner.stats.fail_fast);
                    return Err(cooling);
                }
            }
        };
        match self.wait(slot, flight).await {
            Err(err @ (Error::Refresh { .. } | Error::Store { .. })) => match fallback {
                Some(fallback) => {
                    tracing::debug!(key = %key, error = %err, "refresh failed; the unexpired token is sent");
                    Ok(fallback)
                }
                None => Err(err),
            },
            other => other,
        }
    }

    /// A token newer than `rejected` (the generation a server just answered 401 to): the already
    /// published one if there is one, else the outcome of the refresh this starts or joins.
    pub(crate) async fn renew(&self, sent: &Sent<'_>) -> Result<Lease, Error> {
        let slot: &Arc<Slot> = &sent.slot;
        let (key, rejected) = (&slot.key, sent.generation);
        let flight = {
            let mut state = slot.state.lock();
            if let Some(reason) = &state.terminal {
                Counters::bump(&self.inner.stats.fail_fast);
                return Err(reauthorization(key, reason));
            }
            state.rejected = state.rejected.max(rejected);
            if state.generation > rejected {
                let now = self.inner.config.clock.now();
                if let Some(current) = state.current.clone().filter(|lease| lease.is_sendable(now)) {
                    tracing::debug!(key = %key, rejected, current = current.generation, "stale 401: a newer token is already published");
                    return Ok(current);
                }
            }
            let now = self.inner.config.clock.now();
            match self.join_or_start(slot, &mut state, now) {
                Ok(flight) => flight,
                Err(cooling) => {
                    Counters::bump(&self.inner.stats.fail_fast);
                    return Err(cooling);
                }
            }
        };
        self.wait(slot, flight).await
    }

    fn join_or_start(&self, slot: &Arc<Slot>, state: &mut SlotState, now: SystemTime) -> Result<Flight, Error> {
        if let Some(flight) = &state.flight {
            return Ok(Flight { id: flight.id, rx: flight.rx.clone() });
        }
        if let Some(until) = state.cooldown_until
            && let Ok(retry_after) = until.duration_since(now)
            && !retry_after.is_zero()
        {
            return Err(Error::Refresh { key: slot.key.clone(), source: RefreshError::CoolingDown { retry_after } });
        }
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        let id = self.inner.flight_ids.fetch_add(1, Ordering::Relaxed);
        state.flight = Some(Running { id, rx: rx.clone(), tx: Arc::downgrade(&tx) });
        let base = state.current.clone();
        let trust_store = state.unsaved.is_none();
        tracing::debug!(key = %slot.key, generation = state.generation, "refresh started");
        // The flight runs in its own task, and the refresh inside a second one, so that a panic
        // in a user's token source or store still ends the flight with an answer.
        let cache = self.clone();
        let slot = slot.clone();
        tokio::spawn(async move {
            let work = tokio::spawn({
                let (cache, slot) = (cache.clone(), slot.clone());
                async move { REFRESHING.scope((), cache.fly(&slot, base, trust_store, id)).await }
            });
            let outcome = match work.await {
                Ok(outcome) => outcome,
                Err(join_error) => {
                    tracing::error!(key = %slot.key, panicked = join_error.is_panic(), "refresh task ended without an answer");
                    let aborted = Error::Refresh { key: slot.key.clone(), source: RefreshError::Aborted };
                    let (outcome, effects) = cache.apply(&slot, id, Produced::Failed(aborted));
                    effects.run(&cache, &slot);
                    outcome
                }
            };
            tx.send_replace(Some(outcome));
        });
        Ok(Flight { id, rx })
    }

    async fn wait(&self, slot: &Arc<Slot>, mut flight: Flight) -> Outcome {
        loop {
            if let Some(outcome) = flight.rx.borrow_and_update().clone() {
                return outcome;
            }
            if flight.rx.changed().await.is_err() {
                if let Some(outcome) = flight.rx.borrow().clone() {
                    return outcome;
                }
                // The runtime is shutting down under the flight; make sure the slot is not left
                // waiting for it forever.
                let error = Error::Refresh { key: slot.key.clone(), source: RefreshError::Aborted };
                let (outcome, effects) = self.apply(slot, flight.id, Produced::Failed(error));
                effects.run(self, slot);
                return outcome;
            }
        }
    }

    /// One refresh: lock the store, re-read it, fetch, save, publish.
    async fn fly(&self, slot: &Arc<Slot>, base: Option<Lease>, trust_store: bool, id: u64) -> Outcome {
        let config = &self.inner.config;
        let key = &slot.key;
        let lock = match config.store.lock(key).await {
            Ok(lock) => lock,
            Err(source) => {
                self.report_store_error(key, &source);
                let (outcome, effects) =
                    self.apply(slot, id, Produced::Failed(Error::Store { key: key.clone(), source }));
                effects.run(self, slot);
                return outcome;
            }
        };
        let produced = self.produce(slot, base, trust_store).await;
        let (outcome, effects) = {
            // Save and publish as one step under the save lock (see `Slot::save_lock`), and only
            // while this flight is still the slot's own: `set_tokens` may have overtaken it, and
            // then its tokens must not replace the user's, in memory or in the store.
            let _save = slot.save_lock.lock().await;
            let produced = match produced {
                Produced::Fetched(tokens, _, failure) if self.is_current_flight(slot, id) => {
                    match config.store.save(key, &tokens).await {
                        // A fenced store says another process saved newer tokens while this one
                        // refreshed (its lease expired): those win, ours are dropped.
                        Err(StoreError::Superseded) => match config.store.load(key).await {
                            Ok(Some(stored)) => {
                                tracing::warn!(key = %key, "save superseded by another process; adopting its tokens");
                                Produced::Adopted(stored)
                            }
                            Ok(None) => Produced::Fetched(tokens, Err(StoreError::Superseded), failure),
                            Err(source) => {
                                self.report_store_error(key, &source);
                                Produced::Failed(Error::Store { key: key.clone(), source })
                            }
                        },
                        saved => Produced::Fetched(tokens, saved, failure),
                    }
                }
                Produced::Fetched(..) => Produced::Overtaken,
                other => other,
            };
            self.apply(slot, id, produced)
        };
        if let Some(lock) = lock
            && let Err(err) = lock.unlock().await
        {
            self.report_store_error(key, &err);
        }
        // Hooks and follow-up work run with no lock held.
        effects.run(self, slot);
        outcome
    }

    /// Decides what the flight brings: tokens another process saved, new tokens, or an error.
    async fn produce(&self, slot: &Slot, base: Option<Lease>, trust_store: bool) -> Produced {
        let config = &self.inner.config;
        let key = &slot.key;
        let mut base_tokens = base.as_ref().map(|lease| (*lease.tokens).clone());
        // Another process may have refreshed while this one waited for the lock. A set in the
        // store that differs from ours is newer: adopt it when fresh, else refresh from it (our
        // refresh token may already have been rotated away). Not when our own last save failed:
        // then the store holds an older set than memory does.
        if trust_store && let Some(stored) = self.reload(key, base_tokens.as_ref()).await {
            if token::freshness(stored.expires_at(), config.skew, config.clock.now()) == Freshness::Fresh {
                return Produced::Adopted(stored);
            }
            base_tokens = Some(stored);
        }
        Counters::bump(&self.inner.stats.refreshes);
        match config.source.fetch(base_tokens.as_ref()).await {
            Ok(tokens) => Produced::Fetched(tokens.inherit_refresh_token(base_tokens.as_ref()), Ok(()), None),
            Err(RefreshError::InvalidResponse { status, reason, body, rotated_refresh_token: Some(rotated) }) => {
                // The answer is unusable but carries a new refresh token, and a rotating provider
                // has already spent ours: keep the new one (saved like any new set), with the old
                // access token marked expired so that the next refresh, after the cool-down,
                // spends the new refresh token.
                tracing::warn!(key = %key, reason = %reason, "unusable token answer carried a new refresh token; keeping it");
                let salvaged = base_tokens
                    .unwrap_or_else(|| TokenSet::new(String::new()))
                    .with_refresh_token(rotated)
                    .with_expires_at(config.clock.now());
                let failure = RefreshError::InvalidResponse { status, reason, body, rotated_refresh_token: None };
                Produced::Fetched(salvaged, Ok(()), Some(failure))
            }
            Err(reason) if self.is_terminal(&reason) => {
                // Check before declaring death: another process may have rotated the refresh
                // token we just spent a stale copy of.
                // Not when our own last save failed: the store then holds an older set, whose
                // refresh token was rotated away.
                if trust_store && let Some(stored) = self.reload(key, base_tokens.as_ref()).await {
                    let now = config.clock.now();
                    if token::freshness(stored.expires_at(), Duration::ZERO, now) != Freshness::Expired {
                        tracing::info!(key = %key, "refresh token was rejected but the store holds newer tokens; adopting them");
                        return Produced::Adopted(stored);
                    }
                }
                Produced::Failed(reauthorization(key, &reason))
            }
            Err(source) => Produced::Failed(Error::Refresh { key: key.clone(), source }),
        }
    }

    /// The stored set for `key` when it differs from `ours`.
    async fn reload(&self, key: &TokenKey, ours: Option<&TokenSet>) -> Option<TokenSet> {
        match self.inner.config.store.load(key).await {
            Ok(Some(stored)) if !same_grant(Some(&stored), ours) => Some(stored),
            Ok(_) => None,
            Err(err) => {
                self.report_store_error(key, &err);
                None
            }
        }
    }

    fn is_terminal(&self, reason: &RefreshError) -> bool {
        match reason {
            RefreshError::NoRefreshToken => true,
            RefreshError::Protocol { status, error, .. } => {
                let code = error.as_ref().map(|e| e.error.as_str());
                if let Some(code) = code {
                    if DEFAULT_TERMINAL_ERRORS.contains(&code)
                        || self.inner.config.terminal_errors.iter().any(|t| t == code)
                    {
                        return true;
                    }
                    if RETRYABLE_ERRORS.contains(&code) {
                        return false;
                    }
                }
                // Any other 400/401 from a token request means the request itself is refused
                // (Kroger answers a spent refresh token with a plain-text 400): retrying the same
                // grant cannot succeed, and retrying it in a loop is what revokes token families.
                *status == http::StatusCode::BAD_REQUEST || *status == http::StatusCode::UNAUTHORIZED
            }
            _ => false,
        }
    }

    /// Applies a flight's result to its slot (once: a second apply for the same flight is a
    /// no-op that reports the slot as it is) and returns what the waiters get.
    fn apply(&self, slot: &Arc<Slot>, id: u64, produced: Produced) -> (Outcome, Effects) {
        let config = &self.inner.config;
        let stats = &self.inner.stats;
        let key = &slot.key;
        let mut effects = Effects::default();
        let outcome = {
            let mut state = slot.state.lock();
            if state.flight.as_ref().map(|f| f.id) != Some(id) {
                // Already applied (a panic after publishing), or overtaken by `set_tokens`.
                return (current_or_state_error(key, &state, config), effects);
            }
            state.flight = None;
            match produced {
                Produced::Overtaken => current_or_state_error(key, &state, config),
                Produced::Fetched(tokens, saved, failure) => {
                    let fetched_at = failure.is_none().then(|| config.clock.now());
                    let lease = publish(&mut state, tokens, fetched_at);
                    if let Err(err) = saved {
                        Counters::bump(&stats.store_failures);
                        tracing::error!(key = %key, generation = lease.generation, error = %err, "saving the new tokens failed; they are used from memory and the save is retried");
                        state.unsaved = Some(lease.generation);
                        effects.retry_save = Some((lease.generation, err));
                    } else {
                        state.unsaved = None;
                    }
                    match (lease.header.as_ref().err(), failure) {
                        (_, Some(failure)) => Err(self.fail_transiently(&mut state, key, failure)),
                        (None, None) => {
                            tracing::info!(key = %key, generation = lease.generation, "token refreshed");
                            recovered(&mut state);
                            effects.refreshed = Some(lease.tokens.clone());
                            Ok(lease)
                        }
                        (Some(problem), None) => {
                            let reason = RefreshError::InvalidResponse {
                                status: http::StatusCode::OK,
                                reason: problem.clone(),
                                body: String::new(),
                                rotated_refresh_token: None,
                            };
                            Err(self.fail_transiently(&mut state, key, reason))
                        }
                    }
                }
                Produced::Adopted(tokens) => {
                    Counters::bump(&stats.adopted);
                    state.unsaved = None;
                    let lease = publish(&mut state, tokens, None);
                    recovered(&mut state);
                    tracing::info!(key = %key, generation = lease.generation, "adopted tokens another process saved");
                    effects.refreshed = Some(lease.tokens.clone());
                    Ok(lease)
                }
                Produced::Failed(Error::ReauthorizationRequired { key, reason }) => {
                    Counters::bump(&stats.refresh_failures);
                    if state.terminal.is_none() {
                        tracing::warn!(key = %key, reason = %reason, "refresh token is dead: re-authorization required");
                        effects.terminal = Some(reason.clone());
                    }
                    state.terminal = Some(reason.clone());
                    Err(Error::ReauthorizationRequired { key, reason })
                }
                Produced::Failed(Error::Refresh { source, .. }) => Err(self.fail_transiently(&mut state, key, source)),
                Produced::Failed(other) => {
                    // A store that cannot be locked backs off like a token endpoint that fails.
                    Counters::bump(&stats.refresh_failures);
                    let wait = self.cool_down(&mut state, None);
                    tracing::warn!(key = %key, error = %other, cool_down_ms = wait.as_millis() as u64, "refresh could not start");
                    Err(other)
                }
            }
        };
        (outcome, effects)
    }

    /// Records a transient failure: a cool-down with exponential backoff that honours
    /// `Retry-After`.
    fn fail_transiently(&self, state: &mut SlotState, key: &TokenKey, mut source: RefreshError) -> Error {
        Counters::bump(&self.inner.stats.refresh_failures);
        let wait = self.cool_down(state, source.retry_after());
        // The caller is told the wait the layer keeps: a broken `Retry-After` capped.
        if let RefreshError::Protocol { retry_after: Some(asked), .. } = &mut source {
            *asked = (*asked).min(self.inner.config.max_retry_after);
        }
        tracing::warn!(key = %key, error = %source, cool_down_ms = wait.as_millis() as u64, "refresh failed");
        Error::Refresh { key: key.clone(), source }
    }

    /// Starts the cool-down after a failure: the backoff doubles with each consecutive failure,
    /// and a server's `Retry-After` (capped) wins when longer. Returns its length.
    fn cool_down(&self, state: &mut SlotState, asked: Option<Duration>) -> Duration {
        let config = &self.inner.config;
        state.failures = state.failures.saturating_add(1);
        let exponent = state.failures.saturating_sub(1).min(16);
        let backoff = config.min_backoff.saturating_mul(1 << exponent).min(config.max_backoff);
        let wait = backoff.max(asked.map(|d| d.min(config.max_retry_after)).unwrap_or_default());
        state.cooldown_until = config.clock.now().checked_add(wait);
        wait
    }

    fn is_current_flight(&self, slot: &Slot, id: u64) -> bool {
        slot.state.lock().flight.as_ref().is_some_and(|flight| flight.id == id)
    }

    async fn ensure_loaded(&self, slot: &Arc<Slot>) -> Result<(), Error> {
        slot.loaded
            .get_or_try_init(|| async {
                let config = &self.inner.config;
                let key = &slot.key;
                let stored = config.store.load(key).await.map_err(|source| {
                    self.report_store_error(key, &source);
                    Error::Store { key: key.clone(), source }
                })?;
                // Tokens already in the store win over the initial ones, which only seed an empty
                // store: a restart must never bring back a refresh token that was rotated away.
                let (tokens, seeded) = match stored {
                    Some(tokens) => (Some(tokens), false),
                    None if key.is_default() => (config.initial_tokens.clone(), true),
                    None => (None, false),
                };
                let Some(mut tokens) = tokens else { return Ok(()) };
                let mut seeded = seeded;
                // Seeding races with other processes' refreshes: take the store's lock and re-read
                // under it, so that initial tokens never overwrite tokens another process has
                // rotated meanwhile.
                let lock = if seeded {
                    let lock = config.store.lock(key).await.unwrap_or_else(|err| {
                        self.report_store_error(key, &err);
                        None
                    });
                    if lock.is_some() {
                        match config.store.load(key).await {
                            Ok(Some(stored)) => {
                                tokens = stored;
                                seeded = false;
                            }
                            Ok(None) => {}
                            Err(source) => {
                                if let Some(lock) = lock {
                                    let _ = lock.unlock().await;
                                }
                                self.report_store_error(key, &source);
                                return Err(Error::Store { key: key.clone(), source });
                            }
                        }
                    }
                    lock
                } else {
                    None
                };
                let _save = slot.save_lock.lock().await;
                // Decide under the save lock, before writing anything: tokens installed by
                // `set_tokens` meanwhile must win, in the store as in memory.
                if slot.state.lock().generation != 0 {
                    if let Some(lock) = lock {
                        let _ = lock.unlock().await;
                    }
                    return Ok(());
                }
                let mut saved = if seeded { config.store.save(key, &tokens).await } else { Ok(()) };
                if let Err(StoreError::Superseded) = saved
                    && let Ok(Some(stored)) = config.store.load(key).await
                {
                    tokens = stored;
                    saved = Ok(());
                }
                if let Some(lock) = lock
                    && let Err(err) = lock.unlock().await
                {
                    self.report_store_error(key, &err);
                }
                let generation = {
                    let mut state = slot.state.lock();
                    let lease = publish(&mut state, tokens, None);
                    state.unsaved = saved.is_err().then_some(lease.generation);
                    lease.generation
                };
                if let Err(err) = saved {
                    self.report_store_error(key, &err);
                    self.spawn_save_retry(slot.clone(), generation);
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Installs tokens from outside (after the user authorized again): saves them, publishes them
    /// and clears a terminal state or cool-down.
    pub(crate) async fn set_tokens(&self, key: &TokenKey, tokens: TokenSet) -> Result<u64, Error> {
        if let Err(problem) = token::check_header_safe(tokens.access_token().secret()) {
            return Err(Error::InvalidAccessToken { key: key.clone(), problem: problem.to_string() });
        }
        let config = &self.inner.config;
        let slot = self.slot(key);
        // Without the cross-process lock the tokens are still installed: the user has just
        // authorized, and dropping their tokens would be worse than a save another process races.
        let lock = config.store.lock(key).await.unwrap_or_else(|err| {
            self.report_store_error(key, &err);
            None
        });
        let save = slot.save_lock.lock().await;
        let saved = config.store.save(key, &tokens).await;
        let tokens_for_retry = tokens.clone();
        let generation = {
            let mut state = slot.state.lock();
            let lease = publish(&mut state, tokens, None);
            recovered(&mut state);
            state.terminal = None;
            // A running flight is overtaken: its result will not replace these tokens, and the
            // requests waiting for it take these now.
            if let Some(overtaken) = state.flight.take()
                && let Some(tx) = overtaken.tx.upgrade()
            {
                tx.send_replace(Some(Ok(lease.clone())));
            }
            state.unsaved = saved.is_err().then_some(lease.generation);
            lease.generation
        };
        drop(save);
        let _ = slot.loaded.set(());
        if let Some(lock) = lock
            && let Err(err) = lock.unlock().await
        {
            self.report_store_error(key, &err);
        }
        // A fenced store may refuse a save under its lock when a save without the lock landed in
        // between. The user has just authorized: these tokens win, unconditionally.
        let saved = match saved {
            Err(StoreError::Superseded) => config.store.save(key, &tokens_for_retry).await,
            other => other,
        };
        tracing::info!(key = %key, generation, "tokens set");
        match saved {
            Ok(()) => {
                let mut state = slot.state.lock();
                if state.unsaved == Some(generation) {
                    state.unsaved = None;
                }
                Ok(generation)
            }
            Err(source) => {
                self.report_store_error(key, &source);
                self.spawn_save_retry(slot, generation);
                Err(Error::Store { key: key.clone(), source })
            }
        }
    }

    pub(crate) fn tokens(&self, key: &TokenKey) -> Option<TokenSet> {
        let slots = self.inner.slots.lock();
        let slot = slots.get(key)?;
        let state = slot.state.lock();
        state.current.as_ref().map(|lease| (*lease.tokens).clone())
    }

    pub(crate) fn state(&self, key: &TokenKey) -> TokenState {
        let slot = match self.inner.slots.lock().get(key) {
            Some(slot) => slot.clone(),
            None => return TokenState::Empty,
        };
        let state = slot.state.lock();
        let now = self.inner.config.clock.now();
        if let Some(reason) = &state.terminal {
            return TokenState::ReauthorizationRequired { reason: reason.clone() };
        }
        if state.flight.is_some() {
            return TokenState::Refreshing { generation: state.generation };
        }
        if let Some(retry_after) = state.cooldown_until.and_then(|until| until.duration_since(now).ok())
            && !retry_after.is_zero()
        {
            return TokenState::CoolingDown { generation: state.generation, retry_after };
        }
        match &state.current {
            Some(lease) => TokenState::Ready { generation: lease.generation, expires_at: lease.tokens.expires_at() },
            None => TokenState::Empty,
        }
    }

    fn report_store_error(&self, key: &TokenKey, err: &StoreError) {
        Counters::bump(&self.inner.stats.store_failures);
        tracing::error!(key = %key, error = %err, "token store failed");
        self.report_store_error_hook(key, err);
    }

    fn report_store_error_hook(&self, key: &TokenKey, err: &StoreError) {
        if let Some(hook) = &self.inner.config.on_store_error {
            hook(key, err);
        }
    }

    /// Retries saving `generation` until it is saved or superseded, with capped exponential
    /// backoff. Stops when the layer is dropped.
    fn spawn_save_retry(&self, slot: Arc<Slot>, generation: u64) {
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        let mut delay = self.inner.config.min_backoff.max(Duration::from_millis(50));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(delay).await;
                let Some(inner) = inner.upgrade() else { return };
                let cache = TokenCache { inner };
                let _save = slot.save_lock.lock().await;
                let tokens = {
                    let state = slot.state.lock();
                    match (&state.current, state.unsaved) {
                        (Some(lease), Some(unsaved)) if unsaved == generation && lease.generation == generation => {
                            lease.tokens.clone()
                        }
                        _ => return,
                    }
                };
                match cache.inner.config.store.save(&slot.key, &tokens).await {
                    Ok(()) => {
                        let mut state = slot.state.lock();
                        if state.unsaved == Some(generation) {
                            state.unsaved = None;
                        }
                        tracing::info!(key = %slot.key, generation, "saving the tokens succeeded on retry");
                        return;
                    }
                    Err(StoreError::Superseded) => {
                        // Newer tokens are in the store; the next refresh adopts them.
                        slot.state.lock().unsaved = None;
                        tracing::warn!(key = %slot.key, generation, "retried save superseded by newer tokens in the store");
                        return;
                    }
                    Err(err) => {
                        cache.report_store_error(&slot.key, &err);
                        delay = (delay * 2).min(cache.inner.config.max_backoff.max(Duration::from_secs(1)));
                    }
                }
            }
        });
    }
}

/// Evicts the least recently used idle keys until `capacity` remain (or no idle key is left).
///
/// Idle means nothing else holds the slot (no request, no refresh task, no save retry: each of
/// those keeps a clone; the default key's slot is held by the cache itself, so never evicted) and
/// it is neither terminal nor waiting for a save. The store stays the
/// source of truth: an evicted key is loaded again on its next request.
fn evict_idle(slots: &mut HashMap<TokenKey, Arc<Slot>>, capacity: usize) {
    let mut idle: Vec<(u64, TokenKey)> = slots
        .iter()
        .filter(|(_, slot)| Arc::strong_count(slot) == 1)
        .filter(|(_, slot)| {
            let state = slot.state.lock();
            state.flight.is_none() && state.terminal.is_none() && state.unsaved.is_none()
        })
        .map(|(key, slot)| (slot.last_used.load(Ordering::Relaxed), key.clone()))
        .collect();
    let excess = slots.len().saturating_sub(capacity);
    idle.sort_unstable_by_key(|(tick, _)| *tick);
    for (_, key) in idle.into_iter().take(excess) {
        slots.remove(&key);
    }
    tracing::debug!(remaining = slots.len(), capacity, "evicted idle token keys");
}

fn publish(state: &mut SlotState, tokens: TokenSet, fetched_at: Option<SystemTime>) -> Lease {
    state.generation += 1;
    let header = token::bearer_header(tokens.access_token()).map_err(|problem| problem.to_string());
    let lease = Lease { tokens: Arc::new(tokens), generation: state.generation, header, fetched_at };
    state.current = Some(lease.clone());
    lease
}

/// Ends the backoff after a success.
fn recovered(state: &mut SlotState) {
    state.failures = 0;
    state.cooldown_until = None;
}

fn current_or_state_error(key: &TokenKey, state: &SlotState, config: &CacheConfig) -> Outcome {
    if let Some(reason) = &state.terminal {
        return Err(reauthorization(key, reason));
    }
    match state.current.as_ref().filter(|lease| lease.is_sendable(config.clock.now())) {
        Some(lease) => Ok(lease.clone()),
        None => Err(Error::Refresh { key: key.clone(), source: RefreshError::Aborted }),
    }
}

fn reauthorization(key: &TokenKey, reason: &RefreshError) -> Error {
    Error::ReauthorizationRequired { key: key.clone(), reason: reason.clone() }
}

/// Whether two sets hold the same grant (same access and refresh token).
fn same_grant(a: Option<&TokenSet>, b: Option<&TokenSet>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.access_token() == b.access_token() && a.refresh_token() == b.refresh_token(),
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_send_and_sync() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<TokenCache>();
        check::<TokenState>();
    }
}
