//! The token cache: per key, the published token, its generation, its phase and its single
//! flight. What lives where:
//!
//! - `slot.rs`: one key's state, the [`TokenState`] phases and every transition between them;
//! - `flight.rs`: the single flight (one task per key at a time, its deadline, its waiters);
//! - `persist.rs`: the store protocol (lock, read, fetch, save, adopt), written once;
//! - `evict.rs`: which keys stay in memory under `max_cached_keys`;
//! - `ahead.rs`: refresh ahead, the schedule of keys in use refreshed before their skew window.
//!
//! This file is the cache's entry points: the token for a request, a newer one after a
//! rejection, `set_tokens`, and the views (`tokens`, `state`).
//!
//! # How one refresh serves a storm
//!
//! Every published token set gets a generation number. A request remembers the generation it
//! sent; when it comes back 401, it asks for a token newer than that generation. If one is
//! already published, it gets it at once (the 401 was stale). If a refresh is running, it waits
//! for that refresh. Only otherwise does it start one. While that refresh runs, the rejected token
//! is not handed out again: requests that start meanwhile wait for the refresh rather than collect
//! a 401 of their own first (and are sent with it after all if the refresh fails).

mod ahead;
mod evict;
mod flight;
mod persist;
mod slot;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::clock::Clock;
use crate::credential::{Credential, Unsendable};
use crate::error::{Error, RefreshError, StoreError};
use crate::event::TokenEvent;
use crate::key::TokenKey;
use crate::policy::{Policy, Whose};
use crate::source::TokenSource;
use crate::stats::{Counters, Event};
use crate::store::TokenStore;
use crate::token::{self, TokenSet};

pub use ahead::{DEFAULT_REFRESH_AHEAD_IDLE, DEFAULT_REFRESH_AHEAD_SPREAD, RefreshAhead};
pub(crate) use flight::{flight_clock, in_refresh, paced};
pub(crate) use slot::Lease;

use ahead::Ahead;
use evict::Keys;
use flight::Pass;
use flight::{Outcome, Waiter};
use persist::{Intent, Produced};
use slot::{Phase, Slot, SlotState};

/// Callback on a new token set.
pub(crate) type RefreshHook = Arc<dyn Fn(&TokenKey, &TokenSet) + Send + Sync>;
/// Callback when a key's grant is dead (the user's re-authorization, or the client's rejection).
pub(crate) type TerminalHook = Arc<dyn Fn(&TokenKey, &RefreshError) + Send + Sync>;
/// Callback when the store fails.
pub(crate) type StoreErrorHook = Arc<dyn Fn(&TokenKey, &StoreError) + Send + Sync>;

/// Everything the cache needs that the builder decides.
pub(crate) struct CacheConfig {
    pub(crate) source: Arc<dyn TokenSource>,
    pub(crate) store: Arc<dyn TokenStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) policy: Policy,
    /// The default key's tokens to start from; they only seed an empty store.
    pub(crate) initial_tokens: Option<TokenSet>,
    /// How many keys to keep in memory; idle ones beyond it are evicted (the store keeps them).
    pub(crate) max_cached_keys: Option<usize>,
    pub(crate) on_refresh: Option<RefreshHook>,
    pub(crate) on_reauthorization_required: Option<TerminalHook>,
    pub(crate) on_client_rejected: Option<TerminalHook>,
    pub(crate) on_store_error: Option<StoreErrorHook>,
    /// The layer's name in its spans and metrics.
    pub(crate) name: Option<String>,
    /// The async hook, run in a task of its own for each event.
    pub(crate) on_event: Option<crate::event::EventHook>,
    /// Refresh keys in use in the background before their skew window opens (`None`: on demand).
    pub(crate) refresh_ahead: Option<RefreshAhead>,
}

/// What a key's tokens are doing; see [`TokenRefresh::state`](crate::TokenRefresh::state). This is
/// the key's phase as the layer holds it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TokenState {
    /// No token is held for this key (none loaded or set yet).
    Empty,
    /// The key's tokens are being read from the store for the first time.
    Loading,
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
    /// The token endpoint refuses this client (`invalid_client`, `unauthorized_client`): its
    /// credentials or registration are wrong, which no user can fix.
    ClientRejected {
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

struct Inner {
    config: CacheConfig,
    stats: Arc<Counters>,
    keys: Keys,
    flight_ids: AtomicU64,
    /// Refresh ahead's schedule and task, when it is on.
    ahead: Option<Ahead>,
}

/// A request's hold on a key: the token it sends and the slot it came from. Holding the slot
/// keeps the key in memory (not evicted) until the request is done with it.
pub(crate) struct Ticket {
    pub(crate) lease: Lease,
    slot: Arc<Slot>,
    /// The request's place in the window of the flight it waited for (see [`flight::paced`]).
    pass: Option<Pass>,
}

impl Ticket {
    /// The ticket as a request uses it: the credential to send (or why the token cannot be sent),
    /// what a rejection will need, and the place to keep while the request is sent.
    pub(crate) fn into_parts(self) -> (Result<Credential, Unsendable>, Sent<'static>, Option<Pass>) {
        (self.lease.credential, Sent { generation: self.lease.generation, slot: Cow::Owned(self.slot) }, self.pass)
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

/// What applying a run's result leaves to do once no lock is held: hooks, a save retry.
#[derive(Default)]
#[must_use]
pub(super) struct Effects {
    pub(super) refreshed: Option<Arc<TokenSet>>,
    pub(super) terminal: Option<(Whose, RefreshError)>,
    /// The generation whose save failed, and whether `set_tokens` installed it (its retry then
    /// installs again: the user's tokens win, they are not adopted over).
    pub(super) retry_save: Option<(u64, bool)>,
}

impl Effects {
    fn run(self, cache: &TokenCache, slot: &Arc<Slot>) {
        let config = &cache.inner.config;
        // The save retry first: a panicking hook must not cost a rotated refresh token.
        if let Some((generation, installed)) = self.retry_save {
            cache.spawn_save_retry(slot.clone(), generation, installed);
        }
        let key = &slot.key;
        if let Some(tokens) = self.refreshed {
            if let Some(hook) = &config.on_refresh {
                hook(key, &tokens);
            }
            cache.emit(|| TokenEvent::Refreshed { key: key.clone(), tokens: (*tokens).clone() });
        }
        match self.terminal {
            Some((Whose::User, reason)) => {
                if let Some(hook) = &config.on_reauthorization_required {
                    hook(key, &reason);
                }
                cache.emit(|| TokenEvent::ReauthorizationRequired { key: key.clone(), reason });
            }
            Some((Whose::Client, reason)) => {
                if let Some(hook) = &config.on_client_rejected {
                    hook(key, &reason);
                }
                cache.emit(|| TokenEvent::ClientRejected { key: key.clone(), reason });
            }
            None => {}
        }
    }
}

impl TokenCache {
    pub(crate) fn new(config: CacheConfig, stats: Arc<Counters>) -> Self {
        let keys = Keys::new(config.max_cached_keys, config.clock.clone());
        let ahead = config.refresh_ahead.map(Ahead::new);
        Self { inner: Arc::new(Inner { config, stats, keys, flight_ids: AtomicU64::new(0), ahead }) }
    }

    fn slot(&self, key: &TokenKey) -> Arc<Slot> {
        self.inner.keys.slot(key)
    }

    /// How many keys are held in memory.
    pub(crate) fn cached_keys(&self) -> usize {
        self.inner.keys.len()
    }

    pub(crate) fn now(&self) -> SystemTime {
        self.inner.config.clock.now()
    }

    /// The fast path of [`lease`](Self::lease) for `key` (`None`: the default key): the current
    /// token's credential when the key's token is ready (see `SlotState::ready`), without waiting (and
    /// without the future a wait needs). `None` when [`lease`](Self::lease) has work to do.
    ///
    /// The default key's slot is borrowed, not cloned: every request of a client with one token set
    /// would otherwise bump the same reference count, a cache line the cores pass around.
    pub(crate) fn lease_ready(&self, key: Option<&TokenKey>) -> Option<(Credential, Sent<'_>)> {
        let slot = match key {
            Some(key) if !key.is_default() => Cow::Owned(self.slot(key)),
            _ => Cow::Borrowed(self.inner.keys.default_slot()?),
        };
        let now = self.now();
        let (credential, generation) = {
            let state = slot.state.lock();
            let ready = state.ready(self.inner.config.policy.skew, now)?;
            let credential = ready.credential.clone().ok()?;
            self.note_use(&slot, ready, now);
            (credential, ready.generation)
        };
        Some((credential, Sent { generation, slot }))
    }

    /// The token a request should send now: the current one if fresh, else the outcome of a load
    /// or refresh (started or joined). A token inside the skew window (or held back while its
    /// refresh runs) is still sent when that refresh fails transiently.
    pub(crate) async fn lease(&self, key: &TokenKey) -> Result<Ticket, Error> {
        let slot = self.slot(key);
        let (lease, pass) = self.lease_in(&slot).await?;
        if self.inner.ahead.is_some() {
            self.note_use(&slot, &lease, self.now());
        }
        Ok(Ticket { lease, slot, pass })
    }

    /// The lease, and the request's place in the window of the flight it waited for, if it did.
    /// A request that waits at all is counted once in [`Stats::waited`](crate::Stats::waited).
    async fn lease_in(&self, slot: &Arc<Slot>) -> Result<(Lease, Option<Pass>), Error> {
        let mut step = self.next_step(slot)?;
        let waits = matches!(step, Step::Wait { .. });
        if waits {
            self.inner.stats.count(Event::Waited);
        }
        if let Step::Wait { waiter, loading: true, .. } = step {
            // A key's first load, or a dead key's look at the store: wait for it, then decide
            // again with what it found (the request holds the slot, so it cannot be evicted and
            // need loading twice). Its place in the load's window goes back at once.
            flight::wait(self, slot, waiter).await.0?;
            step = self.next_step(slot)?;
        }
        let (waiter, fallback) = match step {
            Step::Send(lease) => return Ok((lease, None)),
            Step::Wait { waiter, fallback, .. } => (waiter, fallback),
        };
        let (outcome, pass) = flight::wait(self, slot, waiter).await;
        match outcome {
            Ok(Some(lease)) => Ok((lease, pass)),
            Ok(None) => Err(Error::Refresh { key: slot.key.clone(), source: RefreshError::NoRefreshToken }),
            Err(err @ (Error::Refresh { .. } | Error::Store { .. })) => match fallback {
                Some(fallback) => {
                    tracing::debug!(key = %slot.key, error = %err, "refresh failed; the unexpired token is sent");
                    Ok((fallback, pass))
                }
                None => Err(err),
            },
            Err(err) => Err(err),
        }
    }

    /// What a request for `slot` does next, decided under the slot's lock.
    fn next_step(&self, slot: &Arc<Slot>) -> Result<Step, Error> {
        let config = &self.inner.config;
        let now = self.now();
        let mut state = slot.state.lock();
        match &state.phase {
            Phase::Unloaded(_) => {
                let seed = slot.key.is_default().then(|| config.initial_tokens.clone()).flatten();
                let waiter = self.launch_in(slot, &mut state, Intent::Load { seed });
                return Ok(Step::Wait { waiter, fallback: None, loading: true });
            }
            Phase::Loading(running, _) => {
                return Ok(Step::Wait { waiter: running.waiter(), fallback: None, loading: true });
            }
            Phase::Terminal(dead) => {
                if dead.recheck.is_none() && tokio::time::Instant::now() >= dead.recheck_at {
                    let revision = state.revision;
                    let waiter = self.launch_in(slot, &mut state, Intent::Recheck { revision });
                    return Ok(Step::Wait { waiter, fallback: None, loading: true });
                }
                self.inner.stats.count(Event::FailFast);
                return Err(SlotState::dead_error(&slot.key, dead));
            }
            _ => {}
        }
        if let Some(ready) = state.ready(config.policy.skew, now) {
            return Ok(Step::Send(ready.clone()));
        }
        // A token held back but not expired (inside the skew window, or rejected by a server
        // while its refresh runs) is still sent should the refresh fail: the request then fares
        // as it would have without the hold-back.
        let fallback = state.sendable(now);
        match self.join_or_start_refresh(slot, &mut state, now) {
            Ok(waiter) => Ok(Step::Wait { waiter, fallback, loading: false }),
            Err(cooling) => match fallback {
                Some(fallback) => Ok(Step::Send(fallback)),
                None => {
                    self.inner.stats.count(Event::FailFast);
                    Err(cooling)
                }
            },
        }
    }

    /// Whether a rejection of the token `sent` carried should go back without a refresh: when
    /// that token was fetched only moments ago and no answer has accepted it yet. An API that rejects a token minted a moment
    /// ago rejects it for another reason (a wrong audience, a scope, a replica that has not seen
    /// it yet); another refresh cannot help, and one per request is what trips a provider's rate
    /// limit. The hold-back doubles with each such token in a row.
    ///
    /// A token that some answer already accepted is not held back: it was good, and has died.
    pub(crate) fn refresh_held_back(&self, sent: &Sent<'_>) -> bool {
        let policy = &self.inner.config.policy;
        let mut state = sent.slot.state.lock();
        let state = &mut *state;
        let Some(current) = state.current.as_ref().filter(|lease| lease.generation == sent.generation) else {
            return false;
        };
        let Some(fetched) = current.fetched else { return false };
        if sent.slot.accepted.load(Ordering::Relaxed) >= current.generation {
            // Accepted before: the API takes this client's tokens, and this one has died since.
            return false;
        }
        let age = fetched.elapsed();
        if age < policy.min_refresh_interval && state.quick_generation != current.generation {
            state.quick_rejections = state.quick_rejections.saturating_add(1);
            state.quick_generation = current.generation;
        } else if state.quick_generation != current.generation {
            // A token that lived a while before its rejection: the API accepts new tokens.
            state.quick_rejections = 0;
            return false;
        }
        let held = age < policy.refresh_interval(state.quick_rejections);
        if held {
            self.inner.stats.count(Event::HeldBack);
            tracing::debug!(key = %sent.key(), generation = current.generation, age_ms = age.as_millis() as u64, "a token fetched moments ago was rejected; not refreshing again yet");
        }
        held
    }

    /// Records that a server answered `sent`'s key's token of `generation` without rejecting it.
    pub(crate) fn accepted(&self, sent: &Sent<'_>, generation: u64) {
        let accepted = &sent.slot.accepted;
        // A read first: the write happens once per generation, not once per request, so the
        // default key's slot is not a cache line every request writes.
        if accepted.load(Ordering::Relaxed) < generation {
            accepted.fetch_max(generation, Ordering::Relaxed);
        }
    }

    /// A token newer than the one `sent` carried (which a server just rejected): the already
    /// published one if there is one, else the outcome of the refresh this starts or joins, with
    /// the retry's place in that refresh's window. `over` is the version of the connection the
    /// rejection came over, which decides how the refresh releases its waiters.
    pub(crate) async fn renew(&self, sent: &Sent<'_>, over: http::Version) -> Result<(Lease, Option<Pass>), Error> {
        let slot: &Arc<Slot> = &sent.slot;
        let (key, rejected) = (&slot.key, sent.generation);
        let waiter = {
            let now = self.now();
            let mut state = slot.state.lock();
            if let Phase::Terminal(dead) = &state.phase {
                self.inner.stats.count(Event::FailFast);
                return Err(SlotState::dead_error(key, dead));
            }
            state.rejected = state.rejected.max(rejected);
            state.release = flight::Release::over(over);
            if state.generation > rejected
                && let Some(current) = state.sendable(now)
            {
                tracing::debug!(key = %key, rejected, current = current.generation, "stale 401: a newer token is already published");
                return Ok((current, None));
            }
            match self.join_or_start_refresh(slot, &mut state, now) {
                Ok(waiter) => waiter,
                Err(cooling) => {
                    self.inner.stats.count(Event::FailFast);
                    return Err(cooling);
                }
            }
        };
        let (outcome, pass) = flight::wait(self, slot, waiter).await;
        match outcome? {
            Some(lease) => Ok((lease, pass)),
            None => Err(Error::Refresh { key: key.clone(), source: RefreshError::NoRefreshToken }),
        }
    }

    /// Joins the key's running refresh, or starts one unless the key is cooling down.
    fn join_or_start_refresh(&self, slot: &Arc<Slot>, state: &mut SlotState, now: SystemTime) -> Result<Waiter, Error> {
        match &state.phase {
            Phase::Refreshing(running) => return Ok(running.waiter()),
            Phase::CoolingDown(cool) => {
                let retry_after = cool.remaining(now);
                if !retry_after.is_zero() {
                    return Err(Error::Refresh {
                        key: slot.key.clone(),
                        source: RefreshError::CoolingDown { retry_after },
                    });
                }
            }
            _ => {}
        }
        let intent = Intent::Refresh {
            base: state.current.as_ref().map(|lease| lease.tokens.clone()),
            revision: state.revision,
        };
        tracing::debug!(key = %slot.key, generation = state.generation, "refresh started");
        Ok(self.launch_in(slot, state, intent))
    }

    /// Starts a flight for `intent` and puts it into the key's phase: a load into `Loading`, a
    /// recheck into the dead grant's phase, a refresh into `Refreshing`.
    fn launch_in(&self, slot: &Arc<Slot>, state: &mut SlotState, intent: Intent) -> Waiter {
        let kind = match &intent {
            Intent::Load { .. } => Kind::Load,
            Intent::Recheck { .. } => Kind::Recheck,
            _ => Kind::Refresh,
        };
        let (running, waiter) = flight::launch(self, slot, intent, state.generation);
        match kind {
            Kind::Load => {
                let remembered = match std::mem::replace(&mut state.phase, Phase::Ready) {
                    Phase::Unloaded(remembered) => remembered,
                    _ => None,
                };
                state.phase = Phase::Loading(running, remembered);
            }
            Kind::Recheck => {
                if let Phase::Terminal(dead) = &mut state.phase {
                    dead.recheck = Some(running);
                }
            }
            Kind::Refresh => state.phase = Phase::Refreshing(running),
        }
        waiter
    }

    /// Applies a flight's result to its key (see `slot::apply`) and returns what its waiters get.
    fn finish(&self, slot: &Arc<Slot>, id: u64, produced: Produced) -> (Outcome, Effects) {
        let config = &self.inner.config;
        let mut state = slot.state.lock();
        slot::apply(&mut state, &slot.key, Some(id), produced, &config.policy, &self.inner.stats, self.now())
    }

    /// Installs tokens from outside (after the user authorized again): saves them, publishes them
    /// and clears a terminal state or cool-down. Never waits for a running flight: it takes no
    /// lock, and its save is a compare-and-set like every other.
    pub(crate) async fn set_tokens(&self, key: &TokenKey, tokens: TokenSet) -> Result<u64, Error> {
        if let Err(problem) = token::check_header_safe(tokens.access_token().secret()) {
            return Err(Error::InvalidAccessToken { key: key.clone(), problem: problem.to_string() });
        }
        let slot = self.slot(key);
        // In a task of its own, so that a caller who gives up on `set_tokens` does not cut a save
        // in half.
        let produced = {
            let (cache, slot) = (self.clone(), slot.clone());
            tokio::spawn(async move { persist::run(&cache, &slot, Intent::Install(tokens)).await })
                .await
                .unwrap_or_else(|_| {
                    Produced::Failed(Error::Refresh { key: key.clone(), source: RefreshError::Aborted })
                })
        };
        let store_error = match &produced {
            Produced::Publish { standing: persist::Standing::Pending { error, .. }, .. } => Some(error.clone()),
            _ => None,
        };
        let (outcome, effects) = {
            let mut state = slot.state.lock();
            slot::apply(&mut state, key, None, produced, &self.inner.config.policy, &self.inner.stats, self.now())
        };
        effects.run(self, &slot);
        let lease = outcome?.ok_or_else(|| Error::Refresh { key: key.clone(), source: RefreshError::Aborted })?;
        tracing::info!(key = %key, generation = lease.generation, "tokens set");
        match store_error {
            Some(source) => Err(Error::Store { key: key.clone(), source }),
            None => Ok(lease.generation),
        }
    }

    /// Revokes `key`'s tokens (see `persist::revoke`) and moves the key to the terminal state,
    /// holding no token, until new ones are installed. A provider that refuses leaves the key as
    /// it was. Like `set_tokens`, the run goes on in a task of its own if the caller gives up.
    pub(crate) async fn revoke(&self, key: &TokenKey) -> Result<(), Error> {
        let slot = self.slot(key);
        // What the key holds, if the store holds nothing: the published set, or for a default key
        // not loaded yet the initial tokens its first load would have seeded the store with.
        let base = {
            let state = slot.state.lock();
            match (&state.current, &state.phase) {
                (Some(lease), _) => Some(lease.tokens.clone()),
                (None, Phase::Unloaded(_) | Phase::Loading(..)) if key.is_default() => {
                    self.inner.config.initial_tokens.clone().map(Arc::new)
                }
                (None, _) => None,
            }
        };
        let produced = {
            let (cache, slot) = (self.clone(), slot.clone());
            tokio::spawn(async move { persist::run(&cache, &slot, Intent::Revoke { base }).await })
                .await
                .unwrap_or_else(|_| {
                    Produced::Failed(Error::Revocation { key: key.clone(), source: RefreshError::Aborted })
                })
        };
        let store_error = match &produced {
            Produced::Revoked { failure: Some(error), .. } => Some(error.clone()),
            _ => None,
        };
        let (outcome, effects) = {
            let mut state = slot.state.lock();
            slot::apply(&mut state, key, None, produced, &self.inner.config.policy, &self.inner.stats, self.now())
        };
        effects.run(self, &slot);
        match outcome {
            // Revoked: the key fails fast from now on, which is the point.
            Err(Error::ReauthorizationRequired { reason: RefreshError::Revoked, .. }) => match store_error {
                Some(source) => Err(Error::Store { key: key.clone(), source }),
                None => Ok(()),
            },
            Err(error) => Err(error),
            Ok(_) => Err(Error::Revocation { key: key.clone(), source: RefreshError::Aborted }),
        }
    }

    pub(crate) fn tokens(&self, key: &TokenKey) -> Option<TokenSet> {
        let slot = self.inner.keys.get(key)?;
        let state = slot.state.lock();
        state.current.as_ref().map(|lease| (*lease.tokens).clone())
    }

    pub(crate) fn state(&self, key: &TokenKey) -> TokenState {
        match self.inner.keys.get(key) {
            Some(slot) => slot.state.lock().view(self.now()),
            None => TokenState::Empty,
        }
    }

    fn count_refresh(&self) {
        self.inner.stats.count(Event::TokenCall);
    }

    /// Gives the event `make` builds to the async hook, if there is one, in a task of its own (so
    /// that a slow or panicking hook holds up nothing).
    fn emit(&self, make: impl FnOnce() -> TokenEvent) {
        if let Some(hook) = &self.inner.config.on_event {
            tokio::spawn(hook(make()));
        }
    }

    fn report_store_error(&self, key: &TokenKey, err: &StoreError) {
        self.inner.stats.count(Event::StoreFailure);
        tracing::error!(key = %key, error = %err, "token store failed");
        if let Some(hook) = &self.inner.config.on_store_error {
            // Called in the middle of the store protocol, perhaps with a rotated refresh token not
            // yet saved: a panicking hook must not unwind through it and lose that token.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(key, err))).is_err() {
                tracing::error!(key = %key, "the on_store_error hook panicked; the layer goes on");
            }
        }
        self.emit(|| TokenEvent::StoreFailed { key: key.clone(), error: err.clone() });
    }

    /// Retries saving `generation` until it is saved, superseded or replaced, with the policy's
    /// backoff. Stops when the layer is dropped.
    fn spawn_save_retry(&self, slot: Arc<Slot>, generation: u64, installed: bool) {
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut attempt: u32 = 0;
            loop {
                let Some(cache) = inner.upgrade().map(|inner| TokenCache { inner }) else { return };
                attempt = attempt.saturating_add(1);
                let policy = &cache.inner.config.policy;
                let delay = policy.cool_down(attempt, None).max(Duration::from_millis(50));
                drop(cache);
                tokio::time::sleep(delay).await;
                let Some(cache) = inner.upgrade().map(|inner| TokenCache { inner }) else { return };
                let intent = {
                    let state = slot.state.lock();
                    match &state.current {
                        Some(lease) if lease.generation == generation && !state.saved => match installed {
                            true => Intent::Install((*lease.tokens).clone()),
                            false => Intent::Resave { tokens: lease.tokens.clone(), replaces: state.revision },
                        },
                        _ => return,
                    }
                };
                let produced = persist::run(&cache, &slot, intent).await;
                // Still unsaved (the store failed, or saves kept landing in between): go on.
                let failed = matches!(
                    &produced,
                    Produced::Failed(Error::Store { .. })
                        | Produced::Publish { standing: persist::Standing::Pending { .. }, .. }
                );
                let (_, effects) = {
                    let mut state = slot.state.lock();
                    slot::apply_save(
                        &mut state,
                        &slot.key,
                        generation,
                        produced,
                        &cache.inner.stats,
                        &cache.inner.config.policy,
                    )
                };
                effects.run(&cache, &slot);
                if !failed {
                    return;
                }
            }
        });
    }
}

/// What a request does next.
enum Step {
    /// Send this token now.
    Send(Lease),
    /// Wait for a flight; send `fallback` if it fails transiently. `loading`: the flight is the
    /// key's first load (or a recheck), after which the request decides again.
    Wait { waiter: Waiter, fallback: Option<Lease>, loading: bool },
}

/// Which phase a new flight goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Load,
    Recheck,
    Refresh,
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
