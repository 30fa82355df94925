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
//! # Why its waiters are released one after another
//!
//! A storm leaves thousands of requests waiting for one refresh. Woken all at once, they would
//! all be sent at once: ten thousand streams opened on one HTTP/2 connection (or ten thousand
//! connections over HTTP/1.1) before the connection's task could write the first of them, and
//! every one of their futures and buffers alive together. They are released instead in the order
//! they came, each handing the flight's answer on to the next as it goes ([`RELAY`] at a time):
//! the connection writes the first ones while the later ones are still being released, and the
//! storm finishes sooner with less memory in use. The hand-off costs the waiting path one
//! semaphore permit per request; the happy path never waits.
//!
//! # Why a deadline
//!
//! A token source or a store that never answers would otherwise hold the key in `Refreshing`
//! forever. The protocol ends at the flight's deadline with a typed transient error; requests
//! holding a token that is still valid are sent with it meanwhile (see `TokenCache::lease`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::{Semaphore, watch};
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

/// How many of a flight's waiters go on at once once it has answered: each, as it goes, lets the
/// next one go (see "Why its waiters are released one after another").
pub(super) const RELAY: usize = 1;

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
    tx: Weak<Answer>,
    gate: Arc<Semaphore>,
}

/// The flight task's side: the outcome, and the gate its waiters pass once it is there.
struct Answer {
    tx: watch::Sender<Option<Outcome>>,
    gate: Arc<Semaphore>,
}

impl Answer {
    /// Publishes `outcome`, then lets the first waiters through the gate; each lets the next.
    fn send(&self, outcome: Outcome) {
        self.tx.send_replace(Some(outcome));
        self.gate.add_permits(RELAY);
    }
}

impl Drop for Answer {
    /// A flight task gone without its answer (a runtime shutting down under it): the gate closes,
    /// and its waiters, let through all at once, find no outcome and end the flight themselves.
    /// After an answer the gate stays open (closing it would wake every waiter at once).
    fn drop(&mut self) {
        if self.tx.borrow().is_none() {
            self.gate.close();
        }
    }
}

impl Running {
    fn new(id: u64, base: u64) -> (Running, Arc<Answer>) {
        let (tx, rx) = watch::channel(None);
        let gate = Arc::new(Semaphore::new(0));
        let answer = Arc::new(Answer { tx, gate: gate.clone() });
        (Running { id, base, rx, tx: Arc::downgrade(&answer), gate }, answer)
    }

    /// A hold on this flight's outcome.
    pub(super) fn waiter(&self) -> Waiter {
        Waiter { id: self.id, rx: self.rx.clone(), gate: self.gate.clone() }
    }

    /// A flight with no task behind it, for the state machine's unit tests.
    #[cfg(test)]
    pub(super) fn for_tests(id: u64, base: u64) -> (Running, Waiter) {
        let (running, _no_task) = Running::new(id, base);
        let waiter = running.waiter();
        (running, waiter)
    }

    /// Answers the flight's waiters now (with tokens installed meanwhile); the flight's own answer
    /// comes later and finds them gone.
    pub(super) fn answer_early(&self, outcome: Outcome) {
        if let Some(answer) = self.tx.upgrade() {
            answer.send(outcome);
        }
    }
}

/// A request's hold on a flight.
pub(super) struct Waiter {
    id: u64,
    rx: watch::Receiver<Option<Outcome>>,
    gate: Arc<Semaphore>,
}

impl Waiter {
    /// The flight's outcome once it is there and this waiter's turn has come; `None` if the flight
    /// ended without one.
    async fn outcome(&self) -> Option<Outcome> {
        // The permit goes back at once: that is what lets the next waiter go.
        let _ = self.gate.acquire().await;
        self.rx.borrow().clone()
    }
}

/// Starts a flight for `slot` doing `intent`, from generation `base`. The caller puts the returned
/// [`Running`] into the key's phase (under the slot's lock, so only one flight runs per key) and
/// waits on the [`Waiter`].
pub(super) fn launch(cache: &TokenCache, slot: &Arc<Slot>, intent: Intent, base: u64) -> (Running, Waiter) {
    let id = cache.inner.flight_ids.fetch_add(1, Ordering::Relaxed);
    let (running, answer) = Running::new(id, base);
    let waiter = running.waiter();
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
        answer.send(outcome);
    };
    tokio::spawn(flight.instrument(span));
    (running, waiter)
}

/// Waits for a flight's outcome, in line behind the requests that came first (see "Why its
/// waiters are released one after another").
pub(super) async fn wait(cache: &TokenCache, slot: &Arc<Slot>, waiter: Waiter) -> Outcome {
    let _waiting = cache.inner.stats.waiting();
    if let Some(outcome) = waiter.outcome().await {
        return outcome;
    }
    // The gate closed with no answer: the runtime is shutting down under the flight. Make sure
    // the key is not left waiting for it forever.
    let aborted = Error::Refresh { key: slot.key.clone(), source: RefreshError::Aborted };
    let (outcome, effects): (Outcome, Effects) = cache.finish(slot, waiter.id, persist::Produced::Failed(aborted));
    effects.run(cache, slot);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    /// Spawns `waiters` waiters in order, answers, and returns how many had gone on by the time
    /// the answering task ran again, and the order they all went in.
    async fn released_in_order(waiters: usize) -> (usize, Vec<usize>) {
        let (running, answer) = Running::new(1, 0);
        let order = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..waiters)
            .map(|place| {
                let (waiter, order) = (running.waiter(), order.clone());
                tokio::spawn(async move {
                    let outcome = waiter.outcome().await.expect("an outcome");
                    assert!(matches!(outcome, Ok(None)));
                    order.lock().unwrap().push(place);
                })
            })
            .collect();
        // Every waiter is in line before the answer comes.
        tokio::task::yield_now().await;
        answer.send(Ok(None));
        tokio::task::yield_now().await;
        let early = order.lock().unwrap().len();
        for task in tasks {
            let done = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
            done.expect("every waiter is released").unwrap();
        }
        let order = order.lock().unwrap().clone();
        (early, order)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waiters_are_released_in_the_order_they_came_a_few_at_a_time() {
        let (early, order) = released_in_order(100).await;
        assert_eq!(order, (0..100).collect::<Vec<_>>());
        // Woken all at once, all 100 would have run before the answering task ran again; handed
        // on one to the next, they go on as the scheduler gets to each, the answering task among
        // them.
        assert!((1..100).contains(&early), "{early} waiters went on at once");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiter_that_comes_after_the_answer_goes_at_once() {
        let (running, answer) = Running::new(1, 0);
        answer.send(Ok(None));
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), running.waiter().outcome()).await;
        assert!(matches!(outcome, Ok(Some(Ok(None)))));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_waiters_of_a_flight_gone_without_an_answer_learn_it() {
        let (running, answer) = Running::new(1, 0);
        let waiters: Vec<_> = (0..3).map(|_| running.waiter()).collect();
        drop(answer);
        for waiter in waiters {
            let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), waiter.outcome()).await;
            assert!(matches!(outcome, Ok(None)), "no outcome, and no wait for one");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_early_answer_releases_the_waiters() {
        let (running, answer) = Running::new(1, 0);
        let waiter = running.waiter();
        running.answer_early(Ok(None));
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), waiter.outcome()).await;
        assert!(matches!(outcome, Ok(Some(Ok(None)))));
        drop(answer);
    }
}
