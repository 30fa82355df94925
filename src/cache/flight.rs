//! The single flight: one task per key at a time does the store protocol (a load, a refresh, a
//! dead grant's recheck), and every request that needs its outcome waits for the same answer.
//!
//! # Why a task of its own
//!
//! The flight runs in a task spawned for it, and the protocol inside a second one, so that
//! dropping any request (even the one that started it) neither cancels the refresh nor strands
//! the others, and a panic in a user's token source or store still ends the flight with an answer.
//! Its outcome is broadcast on a `watch` channel.
//!
//! # Why a deadline
//!
//! A token source or a store that never answers would otherwise hold the key in `Refreshing`
//! forever. The protocol ends at the flight's deadline with a typed transient error; requests
//! holding a token that is still valid are sent with it meanwhile (see `TokenCache::lease`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::watch;
use tracing::Instrument as _;

use super::persist::{self, Intent};
use super::slot::{Lease, Slot};
use super::{Effects, TokenCache};
use crate::clock::Clock;
use crate::error::{Error, RefreshError};

tokio::task_local! {
    /// Set while a flight runs, to the layer's clock. A token source that sends its token request
    /// through a client wrapped in this same layer would otherwise wait for its own refresh
    /// forever; and a grant given no clock of its own reads the layer's.
    static IN_FLIGHT: Arc<dyn Clock>;
}

/// Whether the current task is a flight (see `IN_FLIGHT`).
pub(crate) fn in_refresh() -> bool {
    IN_FLIGHT.try_with(|_| ()).is_ok()
}

/// The clock of the layer whose flight this task is, if it is one.
pub(crate) fn flight_clock() -> Option<Arc<dyn Clock>> {
    IN_FLIGHT.try_with(Arc::clone).ok()
}

/// What a flight answers its waiters: a token (`None`: the store has none for the key), or why
/// there is none.
pub(super) type Outcome = Result<Option<Lease>, Error>;

/// A flight as its key's phase holds it. The sender is the flight task's; the phase holds it
/// weakly, so that waiters still learn when the task is gone without an answer (a runtime shutting
/// down), and `set_tokens` can answer them when it installs tokens meanwhile.
pub(super) struct Running {
    pub(super) id: u64,
    /// The generation that was current when it started: a flight whose key published something
    /// newer meanwhile (`set_tokens`) is moot, and its failure changes nothing.
    pub(super) base: u64,
    rx: watch::Receiver<Option<Outcome>>,
    tx: Weak<watch::Sender<Option<Outcome>>>,
}

impl Running {
    /// A hold on this flight's outcome.
    pub(super) fn waiter(&self) -> Waiter {
        Waiter { id: self.id, rx: self.rx.clone() }
    }

    /// A flight with no task behind it, for the state machine's unit tests.
    #[cfg(test)]
    pub(super) fn for_tests(id: u64, base: u64) -> (Running, Waiter) {
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        let running = Running { id, base, rx: rx.clone(), tx: Arc::downgrade(&tx) };
        (running, Waiter { id, rx })
    }

    /// Answers the flight's waiters now (with tokens installed meanwhile); the flight's own answer
    /// comes later and finds them gone.
    pub(super) fn answer_early(&self, outcome: Outcome) {
        if let Some(tx) = self.tx.upgrade() {
            tx.send_replace(Some(outcome));
        }
    }
}

/// A request's hold on a flight.
pub(super) struct Waiter {
    id: u64,
    rx: watch::Receiver<Option<Outcome>>,
}

/// Starts a flight for `slot` doing `intent`, from generation `base`. The caller puts the returned
/// [`Running`] into the key's phase (under the slot's lock, so only one flight runs per key) and
/// waits on the [`Waiter`].
pub(super) fn launch(cache: &TokenCache, slot: &Arc<Slot>, intent: Intent, base: u64) -> (Running, Waiter) {
    let (tx, rx) = watch::channel(None);
    let tx = Arc::new(tx);
    let id = cache.inner.flight_ids.fetch_add(1, Ordering::Relaxed);
    let running = Running { id, base, rx: rx.clone(), tx: Arc::downgrade(&tx) };
    // Inside the trace of the request that started it (its parent), though it may outlive it.
    let span = tracing::info_span!(
        "token_refresh",
        layer = cache.inner.stats.name(),
        key = %slot.key,
        intent = intent.name(),
        outcome = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    let (cache, slot) = (cache.clone(), slot.clone());
    let flight = async move {
        let work = tokio::spawn(
            {
                let (cache, slot) = (cache.clone(), slot.clone());
                let clock = cache.inner.config.clock.clone();
                IN_FLIGHT.scope(clock, async move { persist::run(&cache, &slot, intent).await })
            }
            .in_current_span(),
        );
        let produced = match work.await {
            Ok(produced) => produced,
            Err(join_error) => {
                tracing::error!(key = %slot.key, panicked = join_error.is_panic(), "flight ended without an answer");
                persist::Produced::Failed(Error::Refresh { key: slot.key.clone(), source: RefreshError::Aborted })
            }
        };
        let (outcome, effects) = cache.finish(&slot, id, produced);
        // Hooks before the waiters are released: a request that returns has seen its key's hook
        // run (a hook that panics drops the sender, and the waiters learn it from the channel).
        effects.run(&cache, &slot);
        tx.send_replace(Some(outcome));
    };
    tokio::spawn(flight.instrument(span));
    (running, Waiter { id, rx })
}

/// Waits for a flight's outcome.
pub(super) async fn wait(cache: &TokenCache, slot: &Arc<Slot>, mut waiter: Waiter) -> Outcome {
    let _waiting = cache.inner.stats.waiting();
    loop {
        if let Some(outcome) = waiter.rx.borrow_and_update().clone() {
            return outcome;
        }
        if waiter.rx.changed().await.is_err() {
            if let Some(outcome) = waiter.rx.borrow().clone() {
                return outcome;
            }
            // The runtime is shutting down under the flight; make sure the key is not left
            // waiting for it forever.
            let aborted = Error::Refresh { key: slot.key.clone(), source: RefreshError::Aborted };
            let (outcome, effects): (Outcome, Effects) =
                cache.finish(slot, waiter.id, persist::Produced::Failed(aborted));
            effects.run(cache, slot);
            return outcome;
        }
    }
}
