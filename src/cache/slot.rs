//! One key's state: the [`Phase`] it is in, the token it publishes, and every transition between
//! phases. Nothing else in the crate changes a key's phase; each transition below states the
//! invariant it keeps.
//!
//! ```text
//!             ┌──────────── load flight ────────────┐
//!  Unloaded ──┤                                     ├─▶ Ready ◀──────────────┐
//!             └─▶ Loading ──────────────────────────┘     │ stale or rejected │ refresh
//!                                                         ▼                   │ succeeds
//!                       set_tokens (any phase) ───▶ Ready  Refreshing ────────┘
//!                                                         │ transient   │ terminal
//!                                                         ▼             ▼
//!                                                   CoolingDown     Terminal ─▶ (recheck finds
//!                                                                                newer tokens) Ready
//!
//!  revoke, or a save refused by another process's revocation (any phase) ───▶ Terminal (revoked)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::time::Instant;

use super::flight::{Outcome, Running};
use super::persist::{Origin, Produced, Standing};
use super::{Effects, Kind};
use crate::credential::{Credential, Unsendable};
use crate::error::{Error, RefreshError};
use crate::key::TokenKey;
use crate::policy::{self, Policy, Whose};
use crate::stats::{Counters, Event};
use crate::store::Revision;
use crate::token::{self, Freshness, TokenSet};

/// A token set as published, with its generation.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub(crate) tokens: Arc<TokenSet>,
    pub(crate) generation: u64,
    /// How this token is sent (its `Authorization` header, built once when it is published rather
    /// than on every request); or why it cannot be (a garbled token that was still saved because it
    /// came with a new refresh token, a DPoP-bound set whose key was lost).
    pub(crate) credential: Result<Credential, Unsendable>,
    /// The most of the skew window this token allows: half its lifetime, when its start is known
    /// (by the layer's clock: for tokens this layer fetched, and for tokens another process saved
    /// while this one waited to refresh, adopted under the lock, so just issued). It keeps
    /// short-lived tokens (20 s tokens, 30 s skew) from being refreshed on every request,
    /// whichever layer fetched them. `None` for loaded and installed tokens: the full window
    /// applies. Worked out once here, not on every request's freshness check.
    pub(crate) skew_cap: Option<Duration>,
    /// When this layer fetched it, by the monotonic clock; `None` for loaded, adopted or installed
    /// tokens. A fetched token rejected soon after holds back the next refresh.
    pub(crate) fetched: Option<Instant>,
}

impl Lease {
    pub(super) fn new(tokens: TokenSet, generation: u64, issued_at: Option<SystemTime>, fetched: bool) -> Self {
        let tokens = Arc::new(tokens);
        let credential = Credential::of(&tokens);
        let skew_cap = issued_at.and_then(|issued_at| token::skew_cap(issued_at, tokens.expires_at()));
        Lease { tokens, generation, credential, skew_cap, fetched: fetched.then(Instant::now) }
    }

    /// Whether sending this token can succeed at all: usable, and not past its expiry.
    pub(super) fn is_sendable(&self, now: SystemTime) -> bool {
        self.freshness(Duration::ZERO, now) != Freshness::Expired
    }

    pub(super) fn freshness(&self, skew: Duration, now: SystemTime) -> Freshness {
        if self.credential.is_err() {
            return Freshness::Expired;
        }
        let expires_at = self.tokens.expires_at();
        let skew = self.skew_cap.map_or(skew, |cap| skew.min(cap));
        token::freshness(expires_at, skew, now)
    }

    /// When this token's skew window opens: the first moment [`freshness`](Self::freshness) says
    /// it expires soon. `None` when it never does (no expiry known) or when the window opened
    /// before the clock's beginning (a window longer than the clock reaches back).
    pub(super) fn window_opens(&self, skew: Duration) -> Option<SystemTime> {
        let skew = self.skew_cap.map_or(skew, |cap| skew.min(cap));
        self.tokens.expires_at()?.checked_sub(skew)
    }
}

/// Where a key is. Each variant carries exactly what that phase has.
pub(super) enum Phase {
    /// Not read from the store yet: a new key, or one evicted since (with what it left behind).
    Unloaded(Option<Remembered>),
    /// Its first read of the store is in flight.
    Loading(Running, Option<Remembered>),
    /// Nothing runs; the current token (if any) is what requests get.
    Ready,
    /// A refresh is in flight. The current token, if still valid, is the fallback.
    Refreshing(Running),
    /// A refresh failed transiently; no token call until it ends.
    CoolingDown(CoolDown),
    /// The grant is dead; requests fail fast until new tokens are installed or found in the store.
    Terminal(Dead),
}

/// A cool-down: its length, and when it started by both clocks.
#[derive(Clone)]
pub(super) struct CoolDown {
    pub(super) length: Duration,
    pub(super) started_wall: SystemTime,
    pub(super) started: Instant,
}

impl CoolDown {
    pub(super) fn new(length: Duration, now: SystemTime) -> Self {
        Self { length, started_wall: now, started: Instant::now() }
    }

    /// What is left of it at `now`, the shorter of the wall clock's and the monotonic clock's
    /// reading (see [`policy::remaining`]).
    pub(super) fn remaining(&self, now: SystemTime) -> Duration {
        policy::remaining(self.length, self.started_wall, self.started.elapsed(), now)
    }
}

/// What an evicted key leaves behind, so that loading it again does not forget it: a dead grant
/// (the revision it died at: the same set read back is still dead, a newer one is not), or a
/// cool-down that has not ended.
#[derive(Clone)]
pub(super) enum Remembered {
    Dead { revision: Revision, reason: RefreshError, whose: Whose },
    CoolingDown { cool: CoolDown, failures: u32 },
}

impl Remembered {
    /// What `state` must leave behind if evicted; `None` when nothing outlives it.
    pub(super) fn of(state: &SlotState, now: SystemTime) -> Option<Remembered> {
        match &state.phase {
            Phase::Terminal(dead) => {
                Some(Remembered::Dead { revision: state.revision, reason: dead.reason.clone(), whose: dead.whose })
            }
            Phase::CoolingDown(cool) if !cool.remaining(now).is_zero() => {
                Some(Remembered::CoolingDown { cool: cool.clone(), failures: state.failures })
            }
            Phase::Unloaded(remembered) => remembered.clone(),
            _ => None,
        }
    }
}

/// A dead grant.
pub(super) struct Dead {
    pub(super) reason: RefreshError,
    pub(super) whose: Whose,
    /// When the store may next be looked at for tokens another process saved.
    pub(super) recheck_at: Instant,
    /// That look, while it runs.
    pub(super) recheck: Option<Running>,
}

/// One key's state; behind the slot's mutex.
pub(super) struct SlotState {
    pub(super) phase: Phase,
    /// The published token. Present in any phase once a token was loaded, fetched or installed.
    pub(super) current: Option<Lease>,
    /// The last generation published (0: none yet).
    pub(super) generation: u64,
    /// The store's revision the current token set rests on: the one it was saved as, or, while
    /// its save is pending, the one that save replaces.
    pub(super) revision: Revision,
    /// Whether the current set is saved (at `revision`). While not, a save retry runs.
    pub(super) saved: bool,
    /// Failed refreshes in a row, for the backoff.
    pub(super) failures: u32,
    /// The newest generation a server rejected. While a refresh replaces it, it is not handed out
    /// again: new requests wait for the refresh instead of collecting a rejection first, and are
    /// sent with it should the refresh fail.
    pub(super) rejected: u64,
    /// Fetched tokens rejected soon after they were fetched, in a row, and the newest generation
    /// counted so (each counts once).
    pub(super) quick_rejections: u32,
    pub(super) quick_generation: u64,
    /// How this key's flights release their waiters, from the connection the last answer that
    /// rejected its token came over (a window over HTTP/1.1 until one says otherwise).
    pub(super) release: super::flight::Release,
}

impl SlotState {
    pub(super) fn new() -> Self {
        Self {
            phase: Phase::Unloaded(None),
            current: None,
            generation: 0,
            revision: Revision::NONE,
            saved: true,
            failures: 0,
            rejected: 0,
            quick_rejections: 0,
            quick_generation: 0,
            release: super::flight::Release::Window,
        }
    }

    /// The current token if a request may send it without waiting: the key is loaded and not
    /// dead, the token is fresh, and it is not one a server rejected that a running refresh is
    /// replacing.
    pub(super) fn ready(&self, skew: Duration, now: SystemTime) -> Option<&Lease> {
        let replacing = match &self.phase {
            Phase::Ready | Phase::CoolingDown(_) => false,
            Phase::Refreshing(_) => true,
            Phase::Unloaded(_) | Phase::Loading(..) | Phase::Terminal(_) => return None,
        };
        let current = self.current.as_ref()?;
        let held_back = replacing && current.generation <= self.rejected;
        (!held_back && current.freshness(skew, now) == Freshness::Fresh).then_some(current)
    }

    /// The current token if it is still worth sending (not expired), as a fallback.
    pub(super) fn sendable(&self, now: SystemTime) -> Option<Lease> {
        self.current.as_ref().filter(|lease| lease.is_sendable(now)).cloned()
    }

    /// The running flight of this key, if any (a load, a refresh, or a dead grant's recheck).
    pub(super) fn flight(&self) -> Option<&Running> {
        match &self.phase {
            Phase::Loading(running, _) | Phase::Refreshing(running) => Some(running),
            Phase::Terminal(Dead { recheck: Some(running), .. }) => Some(running),
            _ => None,
        }
    }

    /// Publishes `tokens` as the next generation. Invariant: generations only grow, so a request
    /// that was rejected with generation g knows any lease above g is newer than its own.
    pub(super) fn publish(&mut self, tokens: TokenSet, issued_at: Option<SystemTime>, fetched: bool) -> Lease {
        self.generation += 1;
        let lease = Lease::new(tokens, self.generation, issued_at, fetched);
        self.current = Some(lease.clone());
        lease
    }

    /// Records where the current set stands in the store.
    pub(super) fn record_save(&mut self, revision: Revision, saved: bool) {
        self.revision = revision;
        self.saved = saved;
    }

    /// Ends any failure streak: the key is ready.
    pub(super) fn recover(&mut self) {
        self.failures = 0;
        self.phase = Phase::Ready;
    }

    /// Enters the cool-down after a transient failure. Returns its length. Invariant: the length
    /// is capped (backoff and `Retry-After` both), so a key cools down for a bounded time.
    pub(super) fn cool_down(&mut self, policy: &Policy, asked: Option<Duration>, now: SystemTime) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let length = policy.cool_down(self.failures, asked);
        self.phase = Phase::CoolingDown(CoolDown::new(length, now));
        length
    }

    /// Enters the terminal phase. Returns whether this is a new terminal event (for the hooks:
    /// they fire once per event, not once per request that learns of it).
    pub(super) fn die(&mut self, reason: RefreshError, whose: Whose, policy: &Policy) -> bool {
        let was_dead = matches!(self.phase, Phase::Terminal(_));
        self.phase = Phase::Terminal(Dead {
            reason,
            whose,
            recheck_at: Instant::now().checked_add(policy.terminal_recheck).unwrap_or_else(far_future),
            recheck: None,
        });
        !was_dead
    }

    /// Enters the terminal phase after a revocation, holding no token, on the store's `revision`
    /// (the removal's). Returns whether this is a new terminal event, as [`die`](Self::die).
    ///
    /// Invariant: nothing from before the revocation is published after it. The revocation takes
    /// a generation of its own, so a flight that started before it is overtaken, and what it
    /// brings back is published only if saved at a revision later than the removal's (see
    /// `newer`), which a set from before the removal never is.
    pub(super) fn revoke(&mut self, revision: Revision, policy: &Policy) -> bool {
        self.generation += 1;
        self.current = None;
        self.record_save(revision, true);
        self.die(RefreshError::Revoked, Whose::User, policy)
    }

    /// The error a request for a dead key fails fast with.
    pub(super) fn dead_error(key: &TokenKey, dead: &Dead) -> Error {
        terminal_error(key, dead.whose, &dead.reason)
    }

    /// The public view of the phase.
    pub(super) fn view(&self, now: SystemTime) -> crate::cache::TokenState {
        use crate::cache::TokenState;
        let ready = || match &self.current {
            Some(lease) => TokenState::Ready { generation: lease.generation, expires_at: lease.tokens.expires_at() },
            None => TokenState::Empty,
        };
        match &self.phase {
            Phase::Unloaded(_) => TokenState::Empty,
            Phase::Loading(..) => TokenState::Loading,
            Phase::Ready => ready(),
            Phase::Refreshing(_) => TokenState::Refreshing { generation: self.generation },
            Phase::CoolingDown(cool) => match cool.remaining(now) {
                Duration::ZERO => ready(),
                retry_after => TokenState::CoolingDown { generation: self.generation, retry_after },
            },
            Phase::Terminal(Dead { reason, whose: Whose::User, .. }) => {
                TokenState::ReauthorizationRequired { reason: reason.clone() }
            }
            Phase::Terminal(Dead { reason, whose: Whose::Client, .. }) => {
                TokenState::ClientRejected { reason: reason.clone() }
            }
        }
    }
}

/// The error for a dead grant: the user's re-authorization, or the client's misconfiguration.
pub(super) fn terminal_error(key: &TokenKey, whose: Whose, reason: &RefreshError) -> Error {
    match whose {
        Whose::User => Error::ReauthorizationRequired { key: key.clone(), reason: reason.clone() },
        Whose::Client => Error::ClientRejected { key: key.clone(), reason: reason.clone() },
    }
}

/// An instant so far ahead that it never comes (for durations too long to add).
pub(super) fn far_future() -> Instant {
    Instant::now() + FAR
}

/// A hundred years: farther than any process runs, near enough for every clock to add.
const FAR: Duration = Duration::from_secs(3_153_600_000);

/// One key: its name, its state, and what eviction needs to know of it.
pub(super) struct Slot {
    pub(super) key: TokenKey,
    /// The newest generation a server answered without rejecting it: a token that was accepted
    /// once is not one the API refuses outright. Written once per generation, not per request.
    pub(super) accepted: AtomicU64,
    /// Whether a request used it since eviction last looked (the second chance of the clock
    /// algorithm); only kept up when the cache is bounded.
    pub(super) referenced: AtomicBool,
    /// When a request last used it, in whole seconds of the layer's clock since the Unix epoch (0:
    /// never); only kept up with refresh ahead, which leaves keys idle longer than its `idle` to
    /// the on-demand path. Written at most once a second, not per request.
    pub(super) used: AtomicU64,
    /// The newest generation refresh ahead has scheduled (0: none), so that a generation enters
    /// the schedule once however many requests use it. An entry for an older one is stale.
    pub(super) scheduled: AtomicU64,
    pub(super) state: Mutex<SlotState>,
}

impl Slot {
    /// A key not loaded yet, with what an earlier eviction of it left behind.
    pub(super) fn new(key: TokenKey, remembered: Option<Remembered>) -> Self {
        let mut state = SlotState::new();
        state.phase = Phase::Unloaded(remembered);
        Self {
            key,
            accepted: AtomicU64::new(0),
            referenced: AtomicBool::new(false),
            used: AtomicU64::new(0),
            scheduled: AtomicU64::new(0),
            state: Mutex::new(state),
        }
    }
}

/// Applies a run's result to a key's state: the one place where a load, a refresh, a recheck or
/// `set_tokens` (`flight: None`) changes a key's phase. Returns what the flight's waiters get.
pub(super) fn apply(
    state: &mut SlotState,
    key: &TokenKey,
    flight: Option<u64>,
    produced: Produced,
    policy: &Policy,
    stats: &Counters,
    now: SystemTime,
) -> (Outcome, Effects) {
    let mut effects = Effects::default();
    // Which of the key's flights this answers; `None` for set_tokens, or for a flight that was
    // already answered (a runtime shutting down under it answers twice).
    let answered = match flight {
        Some(id) => match state.flight() {
            Some(running) if running.id == id => Some((kind_of(&state.phase), running.base)),
            _ => return (current_or_state_error(key, state, now), effects),
        },
        None => None,
    };
    let kind = answered.map(|(kind, _)| kind);
    // A flight whose key published something newer since it started (set_tokens) is moot: its
    // failure changes nothing.
    let moot = answered.is_some_and(|(_, base)| base < state.generation);
    match produced {
        Produced::Publish { tokens, origin, standing, failure } => {
            if !newer(state, origin, &standing, answered.map(|(_, base)| base)) {
                tracing::debug!(key = %key, ?origin, ?standing, "not published: the key already holds a newer set");
                settle(state, kind, policy);
                return (current_or_state_error(key, state, now), effects);
            }
            let issued_at = matches!(origin, Origin::Fetched | Origin::Adopted).then_some(now);
            let lease = state.publish(tokens, issued_at, origin == Origin::Fetched && failure.is_none());
            match standing {
                Standing::At(revision) => state.record_save(revision, true),
                Standing::Pending { replaces, error } => {
                    // Counted and reported where the save failed; here it becomes a retry.
                    tracing::warn!(key = %key, generation = lease.generation, error = %error, "the new tokens are used from memory and their save is retried");
                    state.record_save(replaces, false);
                    effects.retry_save = Some((lease.generation, origin == Origin::Installed));
                }
            }
            if origin == Origin::Adopted {
                stats.count(Event::Adopted);
                tracing::info!(key = %key, generation = lease.generation, "adopted tokens another process saved");
            }
            // A garbled access token is the token call's failure. So is a DPoP-bound set without
            // its key that the token call itself returned (a source that bound tokens it cannot
            // prove): refreshing again at once would get the same. A loaded or installed set whose
            // key was lost is the next refresh's to find (terminal, before anything is sent).
            let failure = failure.or_else(|| match &lease.credential {
                Err(Unsendable::Header(problem)) => Some(RefreshError::InvalidResponse {
                    status: http::StatusCode::OK,
                    reason: problem.clone(),
                    body: String::new(),
                    rotated_refresh_token: None,
                }),
                #[cfg(feature = "dpop")]
                Err(Unsendable::KeyLost) if origin == Origin::Fetched => {
                    Some(RefreshError::Dpop(crate::dpop::DpopError::KeyLost))
                }
                _ => None,
            });
            if let Some(failure) = failure {
                return (Err(fail_transiently(state, key, failure, policy, stats, now)), effects);
            }
            if kind.is_none() {
                // set_tokens: the requests waiting for a running flight take these tokens now.
                if let Some(running) = state.flight() {
                    running.answer_early(Ok(Some(lease.clone())), state.release);
                }
            }
            match kind {
                Some(Kind::Load) => {
                    if let Some(dead) = loaded(state, key, policy) {
                        return (Err(dead), effects);
                    }
                }
                Some(Kind::Refresh | Kind::Recheck) => state.recover(),
                // set_tokens leaves a running flight to end on its own (its waiters were answered).
                None if state.flight().is_some() && !matches!(state.phase, Phase::Terminal(_)) => {}
                None => state.recover(),
            }
            if origin == Origin::Fetched {
                tracing::info!(key = %key, generation = lease.generation, "token refreshed");
            }
            if matches!(origin, Origin::Fetched | Origin::Adopted) {
                effects.refreshed = Some(lease.tokens.clone());
            }
            (Ok(Some(lease)), effects)
        }
        Produced::Nothing => match kind {
            Some(Kind::Recheck) => {
                settle(state, kind, policy);
                (current_or_state_error(key, state, now), effects)
            }
            Some(Kind::Load) => match loaded(state, key, policy) {
                Some(dead) => (Err(dead), effects),
                None => (Ok(state.sendable(now)), effects),
            },
            _ => {
                settle(state, kind, policy);
                (Ok(state.sendable(now)), effects)
            }
        },
        Produced::Saved(revision) => {
            state.record_save(revision, true);
            (Ok(state.current.clone()), effects)
        }
        Produced::Revoked { revision, .. } => {
            if moot {
                settle(state, kind, policy);
                return (current_or_state_error(key, state, now), effects);
            }
            (Err(revoked(state, key, revision, policy, &mut effects)), effects)
        }
        Produced::Failed(error) => {
            if moot {
                settle(state, kind, policy);
                return (current_or_state_error(key, state, now), effects);
            }
            match kind {
                Some(Kind::Load) => {
                    // The load is tried again by the next request.
                    let remembered = match std::mem::replace(&mut state.phase, Phase::Unloaded(None)) {
                        Phase::Loading(_, remembered) => remembered,
                        _ => None,
                    };
                    state.phase = Phase::Unloaded(remembered);
                    (Err(error), effects)
                }
                Some(Kind::Recheck) | None => {
                    settle(state, kind, policy);
                    (Err(error), effects)
                }
                Some(Kind::Refresh) => {
                    let error = match error {
                        Error::ReauthorizationRequired { reason, .. } => {
                            fail_terminally(state, key, Whose::User, reason, policy, stats, &mut effects)
                        }
                        Error::ClientRejected { reason, .. } => {
                            fail_terminally(state, key, Whose::Client, reason, policy, stats, &mut effects)
                        }
                        Error::Refresh { source, .. } => fail_transiently(state, key, source, policy, stats, now),
                        other => {
                            stats.count(Event::RefreshFailure);
                            // A store that cannot be locked or read backs off like a token endpoint
                            // that fails.
                            let wait = state.cool_down(policy, None, now);
                            tracing::warn!(key = %key, error = %other, cool_down_ms = wait.as_millis() as u64, "refresh could not start");
                            other
                        }
                    };
                    (Err(error), effects)
                }
            }
        }
    }
}

/// Ends a key's first load: the key is ready, unless what an earlier eviction left behind says
/// otherwise. The same dead set read back (same revision) is still dead, and not a new terminal
/// event; a cool-down that has not ended goes on. Returns the error when the key is dead.
fn loaded(state: &mut SlotState, key: &TokenKey, policy: &Policy) -> Option<Error> {
    let remembered = match std::mem::replace(&mut state.phase, Phase::Ready) {
        Phase::Loading(_, remembered) => remembered,
        _ => None,
    };
    match remembered? {
        Remembered::Dead { revision, reason, whose } if revision == state.revision => {
            state.die(reason, whose, policy);
            let Phase::Terminal(dead) = &state.phase else { unreachable!("just died") };
            Some(SlotState::dead_error(key, dead))
        }
        Remembered::CoolingDown { cool, failures } => {
            state.failures = failures;
            state.phase = Phase::CoolingDown(cool);
            None
        }
        Remembered::Dead { .. } => None,
    }
}

/// Applies a save retry's result: the retried generation is saved, or the store held something
/// newer, which is adopted, or the key's tokens were revoked meanwhile (by another process), and
/// the set is not saved back.
pub(super) fn apply_save(
    state: &mut SlotState,
    key: &TokenKey,
    generation: u64,
    produced: Produced,
    stats: &Counters,
    policy: &Policy,
) -> (Outcome, Effects) {
    let mut effects = Effects::default();
    match produced {
        Produced::Revoked { revision, .. } if state.generation == generation && !state.saved => {
            tracing::warn!(key = %key, generation, %revision, "the tokens whose save was retried were revoked by another process");
            return (Err(revoked(state, key, revision, policy, &mut effects)), effects);
        }
        // An installed set saved on retry (it reports itself, like the first install).
        Produced::Publish { origin: Origin::Installed, standing: Standing::At(revision), .. }
            if state.generation == generation && !state.saved =>
        {
            tracing::info!(key = %key, generation, %revision, "saving the installed tokens succeeded on retry");
            state.record_save(revision, true);
        }
        Produced::Saved(revision) if state.generation == generation && !state.saved => {
            tracing::info!(key = %key, generation, %revision, "saving the tokens succeeded on retry");
            state.record_save(revision, true);
        }
        // What the store holds now is the truth: a revision other than the one the unsaved set
        // rests on was saved by someone else (after a store that lost its data, even a lower one).
        Produced::Publish { tokens, standing: Standing::At(revision), .. }
            if revision != state.revision && state.generation == generation && !state.saved =>
        {
            tracing::warn!(key = %key, generation, "retried save superseded by newer tokens in the store; adopting them");
            stats.count(Event::Adopted);
            let lease = state.publish(tokens, None, false);
            state.record_save(revision, true);
            effects.refreshed = Some(lease.tokens);
        }
        _ => {}
    }
    (Ok(state.current.clone()), effects)
}

/// Whether a produced set may replace what the key holds.
///
/// - `set_tokens` (`base: None`): always; the user has just authorized.
/// - A flight during which nothing was published (`base` is the current generation): always;
///   what it produced is the newest this key has, whatever revision a store that lost its data
///   gave it.
/// - A flight overtaken by a publish (`set_tokens`, a set a save retry adopted): only a set saved
///   at a later revision than the current one, itself saved. Then both revisions come from the
///   same store order; an unsaved set, or one over an unsaved current set, cannot be ordered and
///   loses to the set that overtook it.
///
/// A first load publishes only into a key that holds nothing yet.
fn newer(state: &SlotState, origin: Origin, standing: &Standing, base: Option<u64>) -> bool {
    if origin == Origin::Loaded && state.generation != 0 {
        return false;
    }
    match base {
        None => true,
        Some(base) if base == state.generation => true,
        Some(_) => state.saved && matches!(standing, Standing::At(revision) if *revision > state.revision),
    }
}

/// Ends a flight's phase without a new token: a load leaves the key ready (with or without
/// tokens), a recheck leaves the grant dead until the next one, a refresh leaves the key ready.
fn settle(state: &mut SlotState, kind: Option<Kind>, policy: &Policy) {
    match (kind, &mut state.phase) {
        (Some(Kind::Recheck), Phase::Terminal(dead)) => {
            // The next look is an interval away: between looks, requests fail fast.
            dead.recheck = None;
            dead.recheck_at = Instant::now().checked_add(policy.terminal_recheck).unwrap_or_else(far_future);
        }
        (Some(Kind::Load | Kind::Refresh), _) => state.phase = Phase::Ready,
        _ => {}
    }
}

/// Records a dead grant: the key goes terminal, and a new terminal event gets its hook.
fn fail_terminally(
    state: &mut SlotState,
    key: &TokenKey,
    whose: Whose,
    reason: RefreshError,
    policy: &Policy,
    stats: &Counters,
    effects: &mut Effects,
) -> Error {
    stats.count(Event::RefreshFailure);
    if state.die(reason.clone(), whose, policy) {
        match whose {
            Whose::User => {
                tracing::warn!(key = %key, reason = %reason, "refresh token is dead: re-authorization required")
            }
            Whose::Client => {
                tracing::error!(key = %key, reason = %reason, "the token endpoint refuses this client: check its credentials and registration")
            }
        }
        effects.terminal = Some((whose, reason.clone()));
    }
    terminal_error(key, whose, &reason)
}

/// Records a revocation: the key goes terminal holding no token (`SlotState::revoke`), the
/// requests waiting for a flight learn it now, and a new terminal event gets its hook.
fn revoked(state: &mut SlotState, key: &TokenKey, revision: Revision, policy: &Policy, effects: &mut Effects) -> Error {
    let error = Error::ReauthorizationRequired { key: key.clone(), reason: RefreshError::Revoked };
    if let Some(running) = state.flight() {
        running.answer_early(Err(error.clone()), state.release);
    }
    if state.revoke(revision, policy) {
        tracing::info!(key = %key, %revision, "tokens revoked: re-authorization required");
        effects.terminal = Some((Whose::User, RefreshError::Revoked));
    }
    error
}

/// Records a transient failure: a cool-down with exponential backoff that honours `Retry-After`.
fn fail_transiently(
    state: &mut SlotState,
    key: &TokenKey,
    mut source: RefreshError,
    policy: &Policy,
    stats: &Counters,
    now: SystemTime,
) -> Error {
    stats.count(Event::RefreshFailure);
    let wait = state.cool_down(policy, source.retry_after(), now);
    // The caller is told the wait the layer keeps: a broken `Retry-After` capped.
    if let RefreshError::Protocol { retry_after: Some(asked), .. } = &mut source {
        *asked = (*asked).min(policy.max_retry_after);
    }
    tracing::warn!(key = %key, error = %source, cool_down_ms = wait.as_millis() as u64, "refresh failed");
    Error::Refresh { key: key.clone(), source }
}

/// What a request gets when a flight's result does not change the key: its current token if
/// still sendable, else why there is none.
fn current_or_state_error(key: &TokenKey, state: &SlotState, now: SystemTime) -> Outcome {
    if let Phase::Terminal(dead) = &state.phase {
        return Err(SlotState::dead_error(key, dead));
    }
    match state.sendable(now) {
        Some(lease) => Ok(Some(lease)),
        None => Err(Error::Refresh { key: key.clone(), source: RefreshError::Aborted }),
    }
}

fn kind_of(phase: &Phase) -> Kind {
    match phase {
        Phase::Loading(..) => Kind::Load,
        Phase::Terminal(_) => Kind::Recheck,
        _ => Kind::Refresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{OAuthError, StoreError};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn key() -> TokenKey {
        TokenKey::new("k")
    }

    fn publish(tokens: &str, origin: Origin, standing: Standing) -> Produced {
        Produced::Publish { tokens: TokenSet::new(tokens), origin, standing, failure: None }
    }

    fn dead_reason() -> RefreshError {
        RefreshError::protocol(http::StatusCode::BAD_REQUEST, OAuthError::new("invalid_grant"))
    }

    fn access(state: &SlotState) -> Option<&str> {
        state.current.as_ref().map(|lease| lease.tokens.access_token().secret())
    }

    #[test]
    fn set_tokens_always_publishes_and_records_where_the_set_stands() {
        let (policy, stats) = (Policy::default(), Counters::default());
        let mut state = SlotState::new();
        state.phase = Phase::Ready;
        let (outcome, _) = apply(
            &mut state,
            &key(),
            None,
            publish("a5", Origin::Installed, Standing::At(Revision::new(5))),
            &policy,
            &stats,
            at(0),
        );
        assert_eq!(outcome.unwrap().unwrap().generation, 1);
        assert_eq!((state.revision, state.saved), (Revision::new(5), true));
        // A store that lost its data numbers from 1 again: the user's tokens still win.
        let (outcome, _) = apply(
            &mut state,
            &key(),
            None,
            publish("a1", Origin::Installed, Standing::At(Revision::new(1))),
            &policy,
            &stats,
            at(0),
        );
        assert_eq!(outcome.unwrap().unwrap().generation, 2);
        assert_eq!((access(&state), state.revision), (Some("a1"), Revision::new(1)));
        let (_, effects) = apply(
            &mut state,
            &key(),
            None,
            publish(
                "a2-unsaved",
                Origin::Installed,
                Standing::Pending { replaces: Revision::new(1), error: StoreError::LockTimeout },
            ),
            &policy,
            &stats,
            at(0),
        );
        assert_eq!(access(&state), Some("a2-unsaved"));
        assert_eq!((state.revision, state.saved), (Revision::new(1), false));
        assert_eq!(effects.retry_save, Some((3, true)), "its save is retried, as an install");
    }

    #[test]
    fn a_flight_publishes_what_it_produced_unless_a_newer_set_overtook_it() {
        let (policy, stats) = (Policy::default(), Counters::default());
        let refresh = |state: &mut SlotState, id: u64, produced: Produced| {
            let (running, _waiter) = test_flight(id, state.generation);
            state.phase = Phase::Refreshing(running);
            apply(state, &key(), Some(id), produced, &policy, &stats, at(0))
        };
        let mut state = SlotState::new();
        state.phase = Phase::Ready;
        state.publish(TokenSet::new("a57"), None, false);
        state.record_save(Revision::new(57), true);
        // Nothing published while it ran: its set wins, even at a lower revision (a store that
        // lost the key numbers from 1 again).
        let (outcome, _) = refresh(&mut state, 1, publish("b1", Origin::Fetched, Standing::At(Revision::new(1))));
        assert_eq!(outcome.unwrap().unwrap().tokens.access_token().secret(), "b1");
        assert_eq!(state.revision, Revision::new(1));

        // Overtaken by set_tokens (saved at r3): an older or unsaved flight result loses...
        for (produced, why) in [
            (publish("c2", Origin::Fetched, Standing::At(Revision::new(2))), "saved at an older revision"),
            (publish("c3", Origin::Fetched, Standing::At(Revision::new(3))), "saved at the same revision"),
            (
                publish(
                    "c-unsaved",
                    Origin::Fetched,
                    Standing::Pending { replaces: Revision::new(3), error: StoreError::LockTimeout },
                ),
                "not saved",
            ),
        ] {
            let (running, _waiter) = test_flight(9, state.generation);
            state.phase = Phase::Refreshing(running);
            let _ = apply(
                &mut state,
                &key(),
                None,
                publish("user", Origin::Installed, Standing::At(Revision::new(3))),
                &policy,
                &stats,
                at(0),
            );
            let (outcome, _) = apply(&mut state, &key(), Some(9), produced, &policy, &stats, at(0));
            assert_eq!(outcome.unwrap().unwrap().tokens.access_token().secret(), "user", "{why}");
            assert_eq!(access(&state), Some("user"), "{why}");
            assert!(matches!(state.phase, Phase::Ready));
        }
        // ...and one saved at a later revision, refreshed from the user's set, wins.
        let (running, _waiter) = test_flight(10, state.generation);
        state.phase = Phase::Refreshing(running);
        let _ = apply(
            &mut state,
            &key(),
            None,
            publish("user-2", Origin::Installed, Standing::At(Revision::new(4))),
            &policy,
            &stats,
            at(0),
        );
        let (outcome, _) = apply(
            &mut state,
            &key(),
            Some(10),
            publish("d5", Origin::Fetched, Standing::At(Revision::new(5))),
            &policy,
            &stats,
            at(0),
        );
        assert_eq!(outcome.unwrap().unwrap().tokens.access_token().secret(), "d5");
        // Over an unsaved current set, even a later revision cannot be ordered: the current stays.
        let (running, _waiter) = test_flight(11, state.generation);
        state.phase = Phase::Refreshing(running);
        let pending = Standing::Pending { replaces: Revision::new(5), error: StoreError::LockTimeout };
        let _ = apply(&mut state, &key(), None, publish("user-3", Origin::Installed, pending), &policy, &stats, at(0));
        let (_, _) = apply(
            &mut state,
            &key(),
            Some(11),
            publish("e9", Origin::Fetched, Standing::At(Revision::new(9))),
            &policy,
            &stats,
            at(0),
        );
        assert_eq!(access(&state), Some("user-3"));
    }

    #[test]
    fn a_first_load_publishes_only_into_a_key_that_holds_nothing() {
        let mut state = SlotState::new();
        state.generation = 3;
        assert!(!newer(&state, Origin::Loaded, &Standing::At(Revision::new(9)), Some(3)));
        assert!(newer(&state, Origin::Adopted, &Standing::At(Revision::new(9)), Some(3)));
        let empty = SlotState::new();
        assert!(newer(&empty, Origin::Loaded, &Standing::At(Revision::new(1)), Some(0)));
        assert!(newer(&empty, Origin::Loaded, &Standing::At(Revision::NONE), Some(0)), "a key with no token takes any");
    }

    #[test]
    fn dying_is_a_terminal_event_once_and_the_view_says_whose_fault() {
        let policy = Policy::default();
        let mut state = SlotState::new();
        assert!(state.die(dead_reason(), Whose::User, &policy), "the first death is an event");
        assert!(!state.die(dead_reason(), Whose::User, &policy), "dying again is not");
        assert!(state.view(at(0)).is_reauthorization_required());
        state.phase = Phase::Ready;
        assert!(state.die(dead_reason(), Whose::Client, &policy));
        assert!(matches!(state.view(at(0)), TokenStateView::ClientRejected { .. }));
        assert!(!state.view(at(0)).is_reauthorization_required());
    }

    use crate::cache::TokenState as TokenStateView;

    #[test]
    fn a_token_is_ready_only_when_loaded_alive_fresh_and_not_being_replaced_after_a_rejection() {
        let skew = Duration::from_secs(30);
        let mut state = SlotState::new();
        state.publish(TokenSet::new("a").with_expires_at(at(3600)), None, false);
        assert!(state.ready(skew, at(0)).is_none(), "not loaded yet");
        state.phase = Phase::Ready;
        assert!(state.ready(skew, at(0)).is_some());
        assert!(state.ready(skew, at(3580)).is_none(), "inside the skew window");
        assert!(state.ready(skew, at(3569)).is_some(), "just outside it");
        assert!(state.sendable(at(3580)).is_some(), "still worth sending as a fallback");
        assert!(state.sendable(at(3600)).is_none(), "not once expired");
        let (running, _waiter) = test_flight(1, state.generation);
        state.phase = Phase::Refreshing(running);
        assert!(state.ready(skew, at(0)).is_some(), "a proactive refresh does not hold a fresh token back");
        state.rejected = state.generation;
        assert!(state.ready(skew, at(0)).is_none(), "a token a server rejected waits for its replacement");
        state.rejected = state.generation - 1;
        assert!(state.ready(skew, at(0)).is_some(), "only the rejected generation is held back");
        state.phase = Phase::CoolingDown(CoolDown::new(Duration::from_secs(5), at(0)));
        state.rejected = state.generation;
        assert!(state.ready(skew, at(0)).is_some(), "a cool-down does not hold a fresh token back");
        state.die(dead_reason(), Whose::User, &Policy::default());
        assert!(state.ready(skew, at(0)).is_none(), "a dead key sends nothing");
    }

    #[test]
    fn a_short_lived_token_whose_lifetime_is_known_is_judged_by_half_of_it() {
        let skew = Duration::from_secs(30);
        let issued = Lease::new(TokenSet::new("a").with_expires_at(at(20)), 1, Some(at(0)), true);
        assert_eq!(issued.freshness(skew, at(9)), Freshness::Fresh, "a 20 s token: the window is 10 s");
        assert_eq!(issued.freshness(skew, at(11)), Freshness::ExpiresSoon);
        let loaded = Lease::new(TokenSet::new("a").with_expires_at(at(20)), 1, None, false);
        assert_eq!(loaded.freshness(skew, at(0)), Freshness::ExpiresSoon, "unknown lifetime: the whole window");
        let garbled = Lease::new(TokenSet::new("a b"), 1, None, false);
        assert_eq!(garbled.freshness(skew, at(0)), Freshness::Expired, "a token that cannot be sent");
        assert!(!garbled.is_sendable(at(0)));
    }

    #[test]
    fn an_evicted_dead_key_read_back_at_the_same_revision_is_still_dead_without_a_new_event() {
        let policy = Policy::default();
        let stats = Counters::default();
        let remembered = Remembered::Dead { revision: Revision::new(4), reason: dead_reason(), whose: Whose::User };
        let mut state = SlotState::new();
        let (running, _waiter) = test_flight(7, 0);
        state.phase = Phase::Loading(running, Some(remembered.clone()));
        let (outcome, effects) = apply(
            &mut state,
            &key(),
            Some(7),
            publish("a", Origin::Loaded, Standing::At(Revision::new(4))),
            &policy,
            &stats,
            at(0),
        );
        assert!(outcome.unwrap_err().is_reauthorization_required());
        assert!(effects.terminal.is_none(), "no second terminal event");
        assert!(matches!(state.phase, Phase::Terminal(_)));

        // A newer set in the store: alive.
        let mut state = SlotState::new();
        let (running, _waiter) = test_flight(8, 0);
        state.phase = Phase::Loading(running, Some(remembered));
        let (outcome, _) = apply(
            &mut state,
            &key(),
            Some(8),
            publish("b", Origin::Loaded, Standing::At(Revision::new(5))),
            &policy,
            &stats,
            at(0),
        );
        assert_eq!(outcome.unwrap().unwrap().tokens.access_token().secret(), "b");
        assert!(matches!(state.phase, Phase::Ready));
    }

    #[test]
    fn a_load_that_fails_keeps_what_eviction_remembered_for_the_next_load() {
        let (policy, stats) = (Policy::default(), Counters::default());
        let remembered = Remembered::Dead { revision: Revision::new(4), reason: dead_reason(), whose: Whose::User };
        let mut state = SlotState::new();
        let (running, _waiter) = test_flight(9, 0);
        state.phase = Phase::Loading(running, Some(remembered));
        let failed = Produced::Failed(Error::Store {
            key: key(),
            source: StoreError::io("reading tokens", std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        });
        let (outcome, _) = apply(&mut state, &key(), Some(9), failed, &policy, &stats, at(0));
        assert!(matches!(outcome, Err(Error::Store { .. })), "{outcome:?}");
        // The next request loads again, and still knows the grant was dead at revision 4.
        assert!(matches!(
            &state.phase,
            Phase::Unloaded(Some(Remembered::Dead { revision, .. })) if *revision == Revision::new(4)
        ));
    }

    #[test]
    fn a_refresh_that_fails_after_set_tokens_published_is_moot() {
        let (policy, stats) = (Policy::default(), Counters::default());
        let mut state = SlotState::new();
        state.phase = Phase::Ready;
        state.publish(TokenSet::new("old"), None, false);
        let (running, _waiter) = test_flight(1, state.generation);
        state.phase = Phase::Refreshing(running);
        // set_tokens publishes meanwhile.
        let _ = apply(
            &mut state,
            &key(),
            None,
            publish("user", Origin::Installed, Standing::At(Revision::new(2))),
            &policy,
            &stats,
            at(0),
        );
        assert!(matches!(state.phase, Phase::Refreshing(_)), "the flight ends on its own");
        let failed = Produced::Failed(Error::ReauthorizationRequired { key: key(), reason: dead_reason() });
        let (outcome, effects) = apply(&mut state, &key(), Some(1), failed, &policy, &stats, at(0));
        assert_eq!(outcome.unwrap().unwrap().tokens.access_token().secret(), "user");
        assert!(effects.terminal.is_none());
        assert!(matches!(state.phase, Phase::Ready), "not dead: the user's tokens are in use");
    }

    #[test]
    fn a_retried_save_records_its_revision_or_adopts_what_the_store_holds() {
        let stats = Counters::default();
        let mut state = SlotState::new();
        state.publish(TokenSet::new("ours"), None, true);
        state.record_save(Revision::new(3), false);
        let _ = apply_save(&mut state, &key(), 1, Produced::Saved(Revision::new(4)), &stats, &Policy::default());
        assert_eq!((state.revision, state.saved), (Revision::new(4), true));

        state.record_save(Revision::new(4), false);
        let _ = apply_save(&mut state, &key(), 99, Produced::Saved(Revision::new(5)), &stats, &Policy::default());
        assert_eq!(
            (state.revision, state.saved),
            (Revision::new(4), false),
            "another generation's save changes nothing"
        );

        let (_, effects) = apply_save(
            &mut state,
            &key(),
            1,
            publish("theirs", Origin::Adopted, Standing::At(Revision::new(6))),
            &stats,
            &Policy::default(),
        );
        assert_eq!(access(&state), Some("theirs"));
        assert_eq!((state.revision, state.saved), (Revision::new(6), true));
        assert!(effects.refreshed.is_some());
        assert_eq!(stats.snapshot().adopted, 1);
    }

    #[test]
    fn an_evicted_key_remembers_a_cool_down_only_while_it_lasts_and_a_dead_grant_always() {
        let mut state = SlotState::new();
        state.publish(TokenSet::new("a1"), None, false);
        state.phase = Phase::CoolingDown(CoolDown::new(Duration::from_secs(10), at(0)));
        state.failures = 3;
        match Remembered::of(&state, at(9)) {
            Some(Remembered::CoolingDown { failures: 3, cool }) => {
                assert_eq!(cool.remaining(at(9)), Duration::from_secs(1))
            }
            _ => panic!("a cool-down with a second left is remembered"),
        }
        assert!(Remembered::of(&state, at(10)).is_none(), "an ended cool-down leaves nothing behind");
        state.phase = Phase::Ready;
        assert!(Remembered::of(&state, at(10)).is_none());
        state.die(dead_reason(), Whose::User, &Policy::default());
        assert!(matches!(Remembered::of(&state, at(1_000)), Some(Remembered::Dead { whose: Whose::User, .. })));
    }

    #[test]
    fn a_key_evicted_again_before_it_loaded_keeps_what_it_remembered() {
        let mut state = SlotState::new();
        let dead = Remembered::Dead { revision: Revision::new(4), reason: dead_reason(), whose: Whose::Client };
        state.phase = Phase::Unloaded(Some(dead));
        assert!(matches!(
            Remembered::of(&state, at(0)),
            Some(Remembered::Dead { whose: Whose::Client, revision, .. }) if revision == Revision::new(4)
        ));
        state.phase = Phase::Unloaded(None);
        assert!(Remembered::of(&state, at(0)).is_none());
    }

    #[test]
    fn a_recheck_that_finds_nothing_new_leaves_the_grant_dead_until_the_next_look() {
        let (policy, stats) = (Policy::default(), Counters::default());
        let mut state = SlotState::new();
        state.publish(TokenSet::new("a1"), None, false);
        state.die(dead_reason(), Whose::User, &policy);
        let (running, _waiter) = test_flight(7, state.generation);
        let before = Instant::now();
        if let Phase::Terminal(dead) = &mut state.phase {
            dead.recheck = Some(running);
            dead.recheck_at = before;
        }
        let (outcome, _) = apply(&mut state, &key(), Some(7), Produced::Nothing, &policy, &stats, at(0));
        assert!(matches!(outcome, Err(Error::ReauthorizationRequired { .. })), "{outcome:?}");
        match &state.phase {
            Phase::Terminal(dead) => {
                assert!(dead.recheck.is_none(), "the recheck is over");
                assert!(dead.recheck_at >= before + policy.terminal_recheck, "the next look is an interval away");
            }
            _ => panic!("still dead"),
        }
    }

    #[test]
    fn a_late_retry_answer_for_an_older_generation_or_a_saved_set_changes_nothing() {
        let stats = Counters::default();
        let mut state = SlotState::new();
        state.publish(TokenSet::new("a1"), None, false);
        state.publish(TokenSet::new("a2"), None, false);
        state.record_save(Revision::new(7), false);
        // The retry of generation 1's save finds revision 5 in the store: generation 2 is current.
        let late = publish("stored-r5", Origin::Fetched, Standing::At(Revision::new(5)));
        let (_, effects) = apply_save(&mut state, &key(), 1, late, &stats, &Policy::default());
        assert_eq!((access(&state), state.generation, state.revision), (Some("a2"), 2, Revision::new(7)));
        assert!(effects.refreshed.is_none());
        // The current set is saved already: what a retry finds is no news either.
        state.record_save(Revision::new(7), true);
        let late = publish("stored-r9", Origin::Fetched, Standing::At(Revision::new(9)));
        let (_, effects) = apply_save(&mut state, &key(), 2, late, &stats, &Policy::default());
        assert_eq!((access(&state), state.revision), (Some("a2"), Revision::new(7)));
        assert!(effects.refreshed.is_none());
        assert_eq!(stats.snapshot().adopted, 0);
    }

    #[test]
    fn a_retried_save_that_lands_for_an_older_generation_leaves_the_newer_set_unsaved() {
        let stats = Counters::default();
        let mut state = SlotState::new();
        state.publish(TokenSet::new("installed"), None, true);
        // A refresh published generation 2 while the installed set's save was being retried; its
        // own save has not landed.
        state.publish(TokenSet::new("refreshed"), None, false);
        state.record_save(Revision::new(7), false);
        for landed in
            [publish("installed", Origin::Installed, Standing::At(Revision::new(8))), Produced::Saved(Revision::new(8))]
        {
            let (_, effects) = apply_save(&mut state, &key(), 1, landed, &stats, &Policy::default());
            assert!(!state.saved, "generation 2 is still to be saved: its own retry must go on");
            assert_eq!((access(&state), state.revision), (Some("refreshed"), Revision::new(7)));
            assert!(effects.refreshed.is_none());
        }
        // The current generation's own retry landing is recorded.
        let (outcome, effects) =
            apply_save(&mut state, &key(), 2, Produced::Saved(Revision::new(9)), &stats, &Policy::default());
        assert_eq!(outcome.unwrap().unwrap().tokens.access_token().secret(), "refreshed");
        assert!(effects.refreshed.is_none());
        assert!(state.saved);
        assert_eq!(state.revision, Revision::new(9));
    }

    #[test]
    fn an_answer_from_a_flight_that_no_longer_runs_changes_nothing() {
        let (policy, stats) = (Policy::default(), Counters::default());
        let mut state = SlotState::new();
        state.publish(TokenSet::new("a1"), None, false);
        let (running, _waiter) = test_flight(2, state.generation);
        state.phase = Phase::Refreshing(running);
        // Flight 1 answers late (a runtime shutting down under it answers twice): flight 2's
        // phase stays, with no cool-down and no new token.
        let failed = Produced::Failed(Error::Refresh { key: key(), source: RefreshError::Aborted });
        let (outcome, _) = apply(&mut state, &key(), Some(1), failed, &policy, &stats, at(0));
        assert!(matches!(state.phase, Phase::Refreshing(ref running) if running.id == 2));
        assert_eq!(state.failures, 0);
        assert!(outcome.is_ok());
        let late = publish("b1", Origin::Fetched, Standing::At(Revision::new(9)));
        let (_, effects) = apply(&mut state, &key(), Some(1), late, &policy, &stats, at(0));
        assert_eq!((access(&state), state.generation), (Some("a1"), 1));
        assert!(effects.refreshed.is_none());
        assert!(matches!(state.phase, Phase::Refreshing(ref running) if running.id == 2));
    }

    #[test]
    fn a_refresh_that_answers_after_a_revocation_publishes_nothing() {
        let (policy, stats) = (Policy::default(), Counters::default());
        let mut state = SlotState::new();
        state.phase = Phase::Ready;
        state.publish(TokenSet::new("a1").with_refresh_token("r1"), None, false);
        state.record_save(Revision::new(4), true);
        let (running, _waiter) = test_flight(1, state.generation);
        state.phase = Phase::Refreshing(running);
        // The revocation applies first (its run found the refresh's set in the store, saved as r5,
        // and removed it as r6).
        let (outcome, effects) = apply(
            &mut state,
            &key(),
            None,
            Produced::Revoked { revision: Revision::new(6), failure: None },
            &policy,
            &stats,
            at(0),
        );
        assert!(matches!(outcome, Err(Error::ReauthorizationRequired { reason: RefreshError::Revoked, .. })));
        assert!(matches!(effects.terminal, Some((Whose::User, RefreshError::Revoked))), "a terminal event");
        assert_eq!((access(&state), state.revision), (None, Revision::new(6)));
        // The refresh's own answer arrives late: its set is older than the removal.
        let late = publish("a2", Origin::Fetched, Standing::At(Revision::new(5)));
        let (outcome, effects) = apply(&mut state, &key(), Some(1), late, &policy, &stats, at(0));
        assert!(matches!(outcome, Err(Error::ReauthorizationRequired { .. })), "{outcome:?}");
        assert!(effects.refreshed.is_none() && effects.terminal.is_none());
        assert_eq!(access(&state), None, "nothing came back");
        assert!(matches!(state.view(at(0)), TokenStateView::ReauthorizationRequired { reason: RefreshError::Revoked }));
        // Even a flight that started after the revocation's generation cannot publish a set
        // older than the removal.
        assert!(!newer(&state, Origin::Fetched, &Standing::At(Revision::new(5)), Some(state.generation - 1)));
    }

    #[test]
    fn a_save_retry_refused_by_a_removal_ends_in_the_revoked_state_not_a_second_save() {
        let (policy, stats) = (Policy::default(), Counters::default());
        let mut state = SlotState::new();
        state.phase = Phase::Ready;
        state.publish(TokenSet::new("ours"), None, true);
        state.record_save(Revision::new(3), false);
        let removed = Produced::Revoked { revision: Revision::new(4), failure: None };
        let (outcome, effects) = apply_save(&mut state, &key(), 1, removed, &stats, &policy);
        assert!(matches!(outcome, Err(Error::ReauthorizationRequired { reason: RefreshError::Revoked, .. })));
        assert!(effects.retry_save.is_none(), "no further retry");
        assert!(effects.terminal.is_some());
        assert_eq!((access(&state), state.revision, state.saved), (None, Revision::new(4), true));
        assert!(matches!(state.phase, Phase::Terminal(_)));
    }

    fn test_flight(id: u64, base: u64) -> (Running, super::super::flight::Waiter) {
        Running::for_tests(id, base)
    }
}
