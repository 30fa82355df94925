//! The store protocol, written once: lock (for a refresh), read, decide, fetch, save
//! (compare-and-set on the store's revision), and on `Superseded` adopt what the store holds.
//! Used by the first load, the refresh, `set_tokens`, the save retry, a dead grant's recheck and
//! a revocation; each says what it wants as an [`Intent`] and gets back what to publish as
//! [`Produced`].
//!
//! # Why every save names a revision
//!
//! The revision is the one order every process agrees on. A save over the revision it read
//! either lands (and the set is the newest) or is refused because somebody saved in between, and
//! then what the store holds is newer: it is adopted, never overwritten. So a replica whose lock
//! expired, a save retried after an outage, and a refresh overtaken by `set_tokens` all end the
//! same way, with the newest set in the store and in memory.
//!
//! # Why save before publish
//!
//! A rotating provider kills the old refresh token as soon as it issues the new one. The new set
//! is therefore saved before any request may use it. A failed save does not stop the new token
//! from being used (the old refresh token is dead anyway); it is reported and retried, over the
//! same revision, until it lands or the store turns out to hold something newer.
//!
//! # Why a failed read or save under the lock is tried again before the lock goes
//!
//! While a refresh holds the store's lock, no other process refreshes the key. Once the lock
//! goes, another process reads the store and refreshes from what it finds. If this refresh's save
//! failed, what it finds is the set whose refresh token the provider has just rotated away, and
//! presenting that one again is reuse: a provider that detects it revokes the whole grant, for
//! every process. A read that fails under the lock is as bad in the other direction: refreshing
//! from memory instead may spend a token another process has already rotated. So under a lock a
//! failed read or save is tried twice more, after the refresh backoff (`min_backoff`, then twice
//! that), before the refresh goes on without it: a store that fails for a moment (a reset
//! connection, a pool briefly exhausted) costs a short wait, not the grant.
//!
//! # Why a revocation leaves the key's revision behind
//!
//! `revoke` revokes at the provider and then removes the key's tokens from the store, under the
//! lock a refresh takes: a refresh of the key (in this process or another) runs wholly before it
//! or wholly after it, and what it revokes is the newest set, the one in the store. The removal
//! is a compare-and-set like a save and keeps the key's revision, so that a set older than it
//! (a save retried after an outage, a replica's refresh from the revoked set) is refused with
//! [`StoreError::Removed`] instead of being saved back: that refusal moves the key to the same
//! terminal state as the revocation did. A provider that refuses the revocation leaves
//! everything as it was, in memory and in the store.
//!
//! # Deadlines
//!
//! Taking the lock and the token call share the flight's deadline. A save after a token call has
//! a deadline of its own: the token call may have rotated the refresh token, and cutting its save
//! short would lose it; a save that runs out is retried from memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::TokenCache;
use super::slot::{Lease, Slot};
use crate::error::{Error, RefreshError, StoreError};
use crate::policy::{Verdict, Whose};
use crate::stats::RefreshOutcome;
use crate::store::{Revision, StoreGuard, Stored, TokenStore};
use crate::token::{self, Freshness, TokenSet};

/// What a run of the protocol is for.
pub(super) enum Intent {
    /// A key's first read of the store. `seed`: tokens to save if the store has none (the
    /// default key's initial tokens).
    Load { seed: Option<TokenSet> },
    /// Replace `base` (the published set, resting on `revision`) with newer tokens: adopt what
    /// another process saved since, or fetch.
    Refresh { base: Option<Arc<TokenSet>>, revision: Revision },
    /// Install tokens from outside (`set_tokens`): they win over whatever is stored.
    Install(TokenSet),
    /// Save again a set whose save failed, over the revision it rests on.
    Resave { tokens: Arc<TokenSet>, replaces: Revision },
    /// A dead grant resting on `revision`: has another process saved newer tokens?
    Recheck { revision: Revision },
    /// Revoke the key's tokens at the provider and remove them from the store: the stored set
    /// (the newest), or `base` (the published set) when the store holds none.
    Revoke { base: Option<Arc<TokenSet>> },
}

impl Intent {
    /// What the flight's span calls it.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Intent::Load { .. } => "load",
            Intent::Refresh { .. } => "refresh",
            Intent::Install(_) => "install",
            Intent::Resave { .. } => "resave",
            Intent::Recheck { .. } => "recheck",
            Intent::Revoke { .. } => "revoke",
        }
    }
}

/// Where a set came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// Read from the store on the first load (or seeded into it).
    Loaded,
    /// Fetched by this layer's token source.
    Fetched,
    /// Saved by another process or layer, found in the store.
    Adopted,
    /// Installed by `set_tokens`.
    Installed,
}

/// Where a set stands in the store.
#[derive(Debug)]
pub(super) enum Standing {
    /// Saved as this revision.
    At(Revision),
    /// Not saved: the save over `replaces` failed with `error`, and is retried.
    Pending { replaces: Revision, error: StoreError },
}

/// What a run produced, for the key's state to apply.
pub(super) enum Produced {
    /// Tokens to publish (if newer than what the key holds). `failure`: the refresh still failed
    /// (tokens salvaged from an otherwise unusable answer: a new refresh token beside a garbled
    /// access token).
    Publish { tokens: TokenSet, origin: Origin, standing: Standing, failure: Option<RefreshError> },
    /// The store holds nothing for the key (a load), or nothing newer (a recheck).
    Nothing,
    /// A retried save landed as this revision.
    Saved(Revision),
    /// The key's tokens are revoked: by this run (`revoke`), or by another process, found when
    /// the store refused a save over its removal. `revision` is the removal's, or, when the
    /// removal failed with `failure`, the revision of the revoked set the store still holds.
    Revoked { revision: Revision, failure: Option<StoreError> },
    /// The run failed.
    Failed(Error),
}

/// How many times `set_tokens` re-reads a revision when saves keep landing between its read and
/// its save, before it reports the contention.
const INSTALL_ATTEMPTS: usize = 8;

/// How many times a save re-reads and tries again over a revision that turned out to be its own
/// (see `Io::save_or_adopt`), or after a failure under the lock, before it is left to the save
/// retry.
const SAVE_ATTEMPTS: usize = 4;

/// How many more times a read or save that failed under the store's lock is tried before the
/// lock goes (see the module docs).
const RETRIES_UNDER_LOCK: u32 = 2;

/// Runs the protocol for `intent` on `slot`'s key.
pub(super) async fn run(cache: &TokenCache, slot: &Slot, intent: Intent) -> Produced {
    let config = &cache.inner.config;
    let store: &dyn TokenStore = &*config.store;
    let key = &slot.key;
    let policy = &config.policy;
    let deadline = Instant::now().checked_add(policy.flight_deadline).unwrap_or_else(super::slot::far_future);
    let save_window = policy.flight_deadline;
    let mut io = Io { cache, store, slot, guard: None, deadline };

    match intent {
        Intent::Load { seed } => match io.read().await {
            Ok(Some(stored)) => publish(stored, Origin::Loaded),
            Ok(None) => match seed {
                Some(seed) => io.save_or_adopt(seed, Revision::NONE, Origin::Loaded, None, None, save_window).await,
                None => Produced::Nothing,
            },
            Err(source) => Produced::Failed(Error::Store { key: key.clone(), source }),
        },
        Intent::Refresh { base, revision } => {
            let started = Instant::now();
            match io.lock().await {
                Ok(()) => {}
                Err(source) => return Produced::Failed(Error::Store { key: key.clone(), source }),
            }
            let (produced, called) = refresh(&mut io, base, revision, save_window).await;
            io.unlock().await;
            if let Some(outcome) = called {
                let took = started.elapsed();
                let span = tracing::Span::current();
                span.record("outcome", outcome.as_str());
                span.record("duration_ms", u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
                cache.inner.stats.refreshed(outcome, took);
            }
            produced
        }
        Intent::Install(tokens) => install(&mut io, tokens, save_window).await,
        Intent::Resave { tokens, replaces } => {
            // Under the lock, like a refresh: a refresh of this key in another process (or in this
            // one, from the set being saved) and this save then happen one after the other.
            if let Err(source) = io.lock().await {
                return Produced::Failed(Error::Store { key: key.clone(), source });
            }
            let produced =
                io.save_or_adopt((*tokens).clone(), replaces, Origin::Fetched, None, None, save_window).await;
            io.unlock().await;
            match produced {
                Produced::Publish { standing: Standing::At(revision), origin: Origin::Fetched, .. } => {
                    Produced::Saved(revision)
                }
                Produced::Publish { standing: Standing::Pending { error, .. }, origin: Origin::Fetched, .. } => {
                    Produced::Failed(Error::Store { key: key.clone(), source: error })
                }
                adopted => adopted,
            }
        }
        Intent::Revoke { base } => {
            if let Err(source) = io.lock().await {
                return Produced::Failed(Error::Store { key: key.clone(), source });
            }
            let produced = revoke(&mut io, base, save_window).await;
            io.unlock().await;
            produced
        }
        Intent::Recheck { revision } => match io.read().await {
            Ok(Some(stored)) if stored.revision != revision => publish(stored, Origin::Adopted),
            Ok(_) => Produced::Nothing,
            Err(source) => {
                cache.report_store_error(key, &source);
                Produced::Nothing
            }
        },
    }
}

/// The refresh, under the lock: adopt what another process saved since `revision`, or fetch.
/// With the outcome of the token call, when one was made.
async fn refresh(
    io: &mut Io<'_>,
    base: Option<Arc<TokenSet>>,
    revision: Revision,
    save_window: Duration,
) -> (Produced, Option<RefreshOutcome>) {
    let cache = io.cache;
    let config = &cache.inner.config;
    let key = &io.slot.key;
    // Another process may have refreshed while this one waited for the lock: a revision other than
    // ours is newer. Adopt it when fresh, else refresh from it (our refresh token may already have
    // been rotated away).
    let (from, replaces) = match io.read_under_lock().await {
        Ok(Some(stored)) if stored.revision != revision => {
            let now = config.clock.now();
            // Saved since our read, so just issued: judged as the tokens this layer fetches are.
            let fresh = Lease::new(stored.tokens.clone(), 0, Some(now), false).freshness(config.policy.skew, now);
            if fresh == Freshness::Fresh {
                return (publish(stored, Origin::Adopted), None);
            }
            (Some(stored.tokens), stored.revision)
        }
        // A store that cannot be read (reported as it failed) leaves ours as the best we know:
        // refreshing from it keeps the key working, and the save that follows is a
        // compare-and-set, so it cannot overwrite what it could not read.
        Ok(_) | Err(_) => (base.map(|base| (*base).clone()), revision),
    };
    cache.count_refresh();
    let fetched = match tokio::time::timeout_at(io.deadline, config.source.fetch(from.as_ref())).await {
        Ok(fetched) => fetched,
        Err(_) => {
            let after = config.policy.flight_deadline;
            tracing::warn!(key = %key, ?after, "the token source did not answer before the flight's deadline");
            let timed_out = Error::Refresh { key: key.clone(), source: RefreshError::TimedOut { after } };
            return (Produced::Failed(timed_out), Some(RefreshOutcome::Transient));
        }
    };
    // The token call is done: what follows (the save, a re-read) has a window of its own, since
    // the answer may carry a rotated refresh token that must not be lost to an expired deadline.
    io.deadline = Instant::now().checked_add(save_window).unwrap_or_else(super::slot::far_future);
    // Whatever the source (a user-written one too), an error never shows the tokens it was given.
    let fetched = fetched.map_err(|mut error| {
        if let Some(from) = &from {
            let mut secrets = vec![from.access_token().secret()];
            secrets.extend(from.refresh_token().map(|refresh| refresh.secret()));
            error.redact(&secrets);
        }
        error
    });
    match fetched {
        Ok(tokens) => {
            let tokens = tokens.inherit_refresh_token(from.as_ref());
            // From the token answer's last byte (the source has parsed it) to the save being
            // durable: with single-use refresh tokens, a crash inside this window loses the grant.
            let answered = Instant::now();
            let produced = io.save_or_adopt(tokens, replaces, Origin::Fetched, from.as_ref(), None, save_window).await;
            if let Produced::Publish { standing: Standing::At(revision), .. } = &produced {
                let rotation_to_durable_us = u64::try_from(answered.elapsed().as_micros()).unwrap_or(u64::MAX);
                tracing::debug!(key = %key, %revision, rotation_to_durable_us, "new tokens durable");
            }
            (produced, Some(RefreshOutcome::Ok))
        }
        Err(RefreshError::InvalidResponse { status, reason, body, rotated_refresh_token: Some(rotated) }) => {
            // The answer is unusable but carries a new refresh token, and a rotating provider has
            // already spent ours: keep the new one (saved like any new set), with the old access
            // token marked expired so that the next refresh, after the cool-down, spends it.
            tracing::warn!(key = %key, reason = %reason, "unusable token answer carried a new refresh token; keeping it");
            let salvaged = from
                .clone()
                .unwrap_or_else(|| TokenSet::new(String::new()))
                .with_refresh_token(rotated)
                .with_expires_at(config.clock.now());
            let failure = RefreshError::InvalidResponse { status, reason, body, rotated_refresh_token: None };
            let produced =
                io.save_or_adopt(salvaged, replaces, Origin::Fetched, from.as_ref(), Some(failure), save_window).await;
            (produced, Some(RefreshOutcome::Transient))
        }
        Err(reason) => match config.policy.verdict(&reason) {
            Verdict::Terminal(whose) => {
                let outcome = match whose {
                    Whose::User => RefreshOutcome::Terminal,
                    Whose::Client => RefreshOutcome::ClientError,
                };
                // Check before declaring death: another process may have rotated the refresh
                // token we just spent a stale copy of.
                if let Ok(Some(stored)) = io.read().await
                    && stored.revision != replaces
                    && token::freshness(stored.tokens.expires_at(), Duration::ZERO, config.clock.now())
                        != Freshness::Expired
                {
                    tracing::info!(key = %key, "refresh token was rejected but the store holds newer tokens; adopting them");
                    return (publish(stored, Origin::Adopted), Some(outcome));
                }
                (Produced::Failed(super::slot::terminal_error(key, whose, &reason)), Some(outcome))
            }
            Verdict::Transient => {
                (Produced::Failed(Error::Refresh { key: key.clone(), source: reason }), Some(RefreshOutcome::Transient))
            }
        },
    }
}

/// The revocation, under the lock: revoke the newest set at the provider, then remove it from the
/// store over the revision it was read as. A set saved meanwhile (only a store without a lock lets
/// one in) is revoked and removed in turn.
async fn revoke(io: &mut Io<'_>, base: Option<Arc<TokenSet>>, window: Duration) -> Produced {
    let key = &io.slot.key;
    let (mut tokens, mut replaces) = match io.read_under_lock().await {
        Ok(Some(stored)) => (Some(stored.tokens), stored.revision),
        // Nothing stored (never saved, or removed already): the published set is what the
        // provider may still honour. A removal over nothing still leaves the key's revision.
        Ok(None) => (base.map(|base| (*base).clone()), Revision::NONE),
        // What the store holds cannot be known, so neither which set to revoke: nothing changes.
        Err(source) => return Produced::Failed(Error::Store { key: key.clone(), source }),
    };
    let mut revoked_any = false;
    let mut retries = 0;
    for _ in 0..SAVE_ATTEMPTS {
        if let Some(set) = tokens.take() {
            if let Err(source) = io.revoke_at_provider(&set).await {
                if !revoked_any {
                    tracing::warn!(key = %key, error = %source, "the provider did not revoke the tokens; they are kept");
                    return Produced::Failed(Error::Revocation { key: key.clone(), source });
                }
                // Ours is revoked; the set saved since is not, and stays in the store.
                tracing::warn!(key = %key, error = %source, "tokens saved during the revocation could not be revoked");
                return Produced::Revoked { revision: replaces, failure: Some(StoreError::Superseded) };
            }
            revoked_any = true;
            tracing::info!(key = %key, "tokens revoked at the provider");
        }
        let error = loop {
            match io.remove(replaces, window).await {
                Ok(revision) | Err(StoreError::Removed { revision }) => {
                    return Produced::Revoked { revision, failure: None };
                }
                Err(StoreError::Superseded) => break None,
                Err(_) if retries < RETRIES_UNDER_LOCK && io.pause_under_lock(retries + 1).await => retries += 1,
                Err(error) => break Some(error),
            }
        };
        if let Some(error) = error {
            return Produced::Revoked { revision: replaces, failure: Some(error) };
        }
        // Saved over since it was read: revoke what is there now, then remove that.
        match io.read().await {
            Ok(Some(stored)) => {
                tokens = Some(stored.tokens);
                replaces = stored.revision;
            }
            Ok(None) => replaces = Revision::NONE,
            Err(error) => return Produced::Revoked { revision: replaces, failure: Some(error) },
        }
    }
    Produced::Revoked { revision: replaces, failure: Some(StoreError::Superseded) }
}

/// `set_tokens`: save over whatever revision the store holds (the user has just authorized: these
/// tokens win), re-reading when another save lands in between.
async fn install(io: &mut Io<'_>, tokens: TokenSet, save_window: Duration) -> Produced {
    let key = &io.slot.key;
    // The revision of a removal the last save ran into: saved over next, with no read between
    // (a read finds no tokens there, and says no revision).
    let mut removed = None;
    for _ in 0..INSTALL_ATTEMPTS {
        let read = match removed.take() {
            Some(revision) => Ok(revision),
            None => io.read().await.map(|stored| stored.map_or(Revision::NONE, |stored| stored.revision)),
        };
        let replaces = match read {
            Ok(revision) => revision,
            Err(error) => {
                // The store cannot say what it holds: install from memory, save later over the
                // revision memory rests on.
                let replaces = io.slot.state.lock().revision;
                return Produced::Publish {
                    tokens,
                    origin: Origin::Installed,
                    standing: Standing::Pending { replaces, error },
                    failure: None,
                };
            }
        };
        match io.save(tokens.clone(), replaces, save_window).await {
            Ok(revision) => {
                return Produced::Publish {
                    tokens,
                    origin: Origin::Installed,
                    standing: Standing::At(revision),
                    failure: None,
                };
            }
            Err(StoreError::Superseded) => continue,
            Err(StoreError::Removed { revision }) => {
                // Revoked before: the user's new tokens go over the removal.
                removed = Some(revision);
                continue;
            }
            Err(error) => {
                return Produced::Publish {
                    tokens,
                    origin: Origin::Installed,
                    standing: Standing::Pending { replaces, error },
                    failure: None,
                };
            }
        }
    }
    tracing::warn!(key = %key, attempts = INSTALL_ATTEMPTS, "other saves kept landing while installing tokens; installed from memory, saved later");
    let replaces = io.slot.state.lock().revision;
    Produced::Publish {
        tokens,
        origin: Origin::Installed,
        standing: Standing::Pending { replaces, error: StoreError::Superseded },
        failure: None,
    }
}

fn publish(stored: Stored, origin: Origin) -> Produced {
    Produced::Publish { tokens: stored.tokens, origin, standing: Standing::At(stored.revision), failure: None }
}

/// The store operations of one run: through the lock's guard while one is held, else on the store.
struct Io<'a> {
    cache: &'a TokenCache,
    store: &'a dyn TokenStore,
    slot: &'a Slot,
    guard: Option<Box<dyn StoreGuard + 'a>>,
    deadline: Instant,
}

impl<'a> Io<'a> {
    /// Takes the store's lock for the key, within the flight's deadline.
    async fn lock(&mut self) -> Result<(), StoreError> {
        let key = &self.slot.key;
        match tokio::time::timeout_at(self.deadline, self.store.lock(key)).await {
            Ok(Ok(guard)) => {
                self.guard = guard;
                Ok(())
            }
            Ok(Err(err)) => {
                self.cache.report_store_error(key, &err);
                Err(err)
            }
            Err(_) => {
                self.cache.report_store_error(key, &StoreError::LockTimeout);
                Err(StoreError::LockTimeout)
            }
        }
    }

    async fn unlock(&mut self) {
        if let Some(guard) = self.guard.take() {
            let unlocked = tokio::time::timeout(self.cache.inner.config.policy.flight_deadline, guard.unlock()).await;
            let failure = match unlocked {
                Ok(Ok(())) => return,
                Ok(Err(err)) => err,
                Err(_) => StoreError::LockTimeout,
            };
            self.cache.report_store_error(&self.slot.key, &failure);
        }
    }

    /// Reads the key's tokens, within the flight's deadline.
    async fn read(&mut self) -> Result<Option<Stored>, StoreError> {
        let read = async {
            match &mut self.guard {
                Some(guard) => guard.load().await,
                None => self.store.load(&self.slot.key).await,
            }
        };
        let read = match tokio::time::timeout_at(self.deadline, read).await {
            Ok(read) => read,
            Err(_) => Err(StoreError::io("reading tokens", std::io::Error::from(std::io::ErrorKind::TimedOut))),
        };
        if let Err(err) = &read {
            self.cache.report_store_error(&self.slot.key, err);
        }
        read
    }

    /// Reads, and under the lock tries a failed read again (see the module docs).
    async fn read_under_lock(&mut self) -> Result<Option<Stored>, StoreError> {
        let mut retries = 0;
        loop {
            match self.read().await {
                Err(_) if retries < RETRIES_UNDER_LOCK && self.pause_under_lock(retries + 1).await => retries += 1,
                read => return read,
            }
        }
    }

    /// Under the lock, waits the refresh backoff for the `retry`-th try of a failed read or save,
    /// and says whether to try; without a lock, or when the wait would outlast the deadline, it
    /// does not wait.
    async fn pause_under_lock(&mut self, retry: u32) -> bool {
        let at = match &self.guard {
            Some(_) => Instant::now().checked_add(self.cache.inner.config.policy.cool_down(retry, None)),
            None => None,
        };
        match at.filter(|at| *at < self.deadline) {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                true
            }
            None => false,
        }
    }

    /// Saves over `replaces`, within `window` (a deadline of its own: see the module docs).
    async fn save(&mut self, tokens: TokenSet, replaces: Revision, window: Duration) -> Result<Revision, StoreError> {
        let save = async {
            match &mut self.guard {
                Some(guard) => guard.save(&tokens, replaces).await,
                None => self.store.save(&self.slot.key, &tokens, replaces).await,
            }
        };
        let saved = match tokio::time::timeout(window, save).await {
            Ok(saved) => saved,
            Err(_) => Err(StoreError::io("saving tokens", std::io::Error::from(std::io::ErrorKind::TimedOut))),
        };
        // Refused saves are the protocol working, not the store failing.
        if let Err(err) = &saved
            && !matches!(err, StoreError::Superseded | StoreError::Removed { .. })
        {
            self.cache.report_store_error(&self.slot.key, err);
        }
        saved
    }

    /// Removes the key's tokens over `replaces`, within `window`, as [`save`](Self::save) saves.
    async fn remove(&mut self, replaces: Revision, window: Duration) -> Result<Revision, StoreError> {
        let remove = async {
            match &mut self.guard {
                Some(guard) => guard.remove(replaces).await,
                None => self.store.remove(&self.slot.key, replaces).await,
            }
        };
        let removed = match tokio::time::timeout(window, remove).await {
            Ok(removed) => removed,
            Err(_) => Err(StoreError::io("removing tokens", std::io::Error::from(std::io::ErrorKind::TimedOut))),
        };
        if let Err(err) = &removed
            && !matches!(err, StoreError::Superseded | StoreError::Removed { .. })
        {
            self.cache.report_store_error(&self.slot.key, err);
        }
        removed
    }

    /// Revokes `tokens` at the provider through the token source, within the run's deadline; an
    /// error never shows the tokens, whatever the source.
    async fn revoke_at_provider(&mut self, tokens: &TokenSet) -> Result<(), RefreshError> {
        let config = &self.cache.inner.config;
        match tokio::time::timeout_at(self.deadline, config.source.revoke(tokens)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(mut error)) => {
                let mut secrets = vec![tokens.access_token().secret()];
                secrets.extend(tokens.refresh_token().map(|refresh| refresh.secret()));
                error.redact(&secrets);
                Err(error)
            }
            Err(_) => Err(RefreshError::TimedOut { after: config.policy.flight_deadline }),
        }
    }

    /// Saves a new set over `replaces`; if the store holds something newer, that is adopted.
    ///
    /// Two stored sets are not "newer" though: this very set (a save that timed out here but
    /// landed, or a retry's), which means it is saved; and `from`, the set this one was fetched
    /// from, saved by this layer's own save retry while the fetch ran, which this set replaces.
    /// A store that lost the key (a Redis restarted without persistence, a row deleted by hand)
    /// gets ours saved over nothing.
    async fn save_or_adopt(
        &mut self,
        tokens: TokenSet,
        replaces: Revision,
        origin: Origin,
        from: Option<&TokenSet>,
        failure: Option<RefreshError>,
        window: Duration,
    ) -> Produced {
        let mut replaces = replaces;
        let mut retries = 0;
        let standing = 'attempts: {
            for _ in 0..SAVE_ATTEMPTS {
                let error = match self.save(tokens.clone(), replaces, window).await {
                    Ok(revision) => break 'attempts Standing::At(revision),
                    // Revoked since it was read: the set is not saved back over the removal.
                    Err(StoreError::Removed { revision }) => {
                        tracing::warn!(key = %self.slot.key, %revision, "the key's tokens were revoked meanwhile; not saving them back");
                        return Produced::Revoked { revision, failure: None };
                    }
                    Err(StoreError::Superseded) => match self.read().await {
                        Ok(Some(stored)) if same_grant(&stored.tokens, &tokens) => {
                            break 'attempts Standing::At(stored.revision);
                        }
                        Ok(Some(stored)) if from.is_some_and(|from| same_grant(&stored.tokens, from)) => {
                            replaces = stored.revision;
                            continue;
                        }
                        Ok(Some(stored)) => {
                            tracing::warn!(key = %self.slot.key, "save superseded by another process; adopting its tokens");
                            return publish(stored, Origin::Adopted);
                        }
                        Ok(None) => {
                            replaces = Revision::NONE;
                            continue;
                        }
                        Err(error) => error,
                    },
                    Err(error) => error,
                };
                if retries < RETRIES_UNDER_LOCK && self.pause_under_lock(retries + 1).await {
                    retries += 1;
                    continue;
                }
                break 'attempts Standing::Pending { replaces, error };
            }
            Standing::Pending { replaces, error: StoreError::Superseded }
        };
        Produced::Publish { tokens, origin, standing, failure }
    }
}

/// Whether two sets hold the same grant (the same access and refresh token).
fn same_grant(a: &TokenSet, b: &TokenSet) -> bool {
    a.access_token() == b.access_token() && a.refresh_token() == b.refresh_token()
}
