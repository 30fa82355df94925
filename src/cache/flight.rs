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
//! # Why its waiters go out a window at a time, at the pace of their answers
//!
//! A storm leaves thousands of requests waiting for one refresh. Woken all at once, they would
//! all be sent at once: ten thousand streams opened on one HTTP/2 connection before the
//! connection's task could write the first of them, or over HTTP/1.1 a new connection for every
//! request beyond the few the pool holds idle. They are released instead in the order they came,
//! in one of two ways ([`Release`]), chosen by the connection the key's last rejected answer came
//! over:
//!
//! - **Over HTTP/1.1**, where each request in flight needs a connection of its own, at most
//!   [`WINDOW`] are on their way at a time: each keeps its place (a [`Pass`]) until its answer's
//!   headers are in, and then the next one goes. Over a fast network the released requests take
//!   the connections the earlier ones free instead of opening their own. A place is kept
//!   [`PLACE_HELD_AT_MOST`] at most (see [`paced`]), so neither a slow network nor a slow endpoint
//!   holds the rest back: the release then goes on at [`WINDOW`] requests a millisecond, and a
//!   storm of 1,000 is on its way within about 30 ms.
//! - **Over HTTP/2**, where they are all streams on one connection, each lets the next go as it
//!   goes, keeping no place: the connection writes the first ones while the later ones are still
//!   being released, and waiting for answers would only delay them.
//!
//! Either way the hand-off costs the waiting path one semaphore permit per request; the happy path
//! never waits and holds no place.
//!
//! # Why a deadline
//!
//! A token source or a store that never answers would otherwise hold the key in `Refreshing`
//! forever. The protocol ends at the flight's deadline with a typed transient error; requests
//! holding a token that is still valid are sent with it meanwhile (see `TokenCache::lease`).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
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

/// How many of a flight's released waiters may be on their way at once (see "Why its waiters go
/// out a window at a time"): within the concurrent streams HTTP/2 servers allow (RFC 9113 §6.5.2
/// recommends at least 100; hyper's default is 200), and about as many connections as services let
/// a pool keep idle.
pub(crate) const WINDOW: usize = 32;

/// The longest a released request keeps its place in the window while its answer is awaited.
pub(crate) const PLACE_HELD_AT_MOST: Duration = Duration::from_millis(1);

/// A released waiter's place in its flight's window: the next waiter goes when it is dropped.
pub(crate) struct Pass {
    _place: OwnedSemaphorePermit,
}

/// Awaits `send`, the request of a released waiter, keeping `pass` (its place in the window) until
/// the answer is in or [`PLACE_HELD_AT_MOST`] has passed, whichever comes first. Without a pass
/// (a request that did not wait), just awaits `send`.
///
/// `send` is pinned by the caller, so that this future holds a reference to it, not a second copy.
pub(crate) async fn paced<F: Future + ?Sized>(pass: Option<Pass>, mut send: Pin<&mut F>) -> F::Output {
    let Some(pass) = pass else { return send.await };
    // Boxed: a timer entry is large, and every waiting request's future would hold one.
    let deadline = Box::pin(tokio::time::sleep(PLACE_HELD_AT_MOST));
    tokio::select! {
        biased;
        answer = send.as_mut() => return answer,
        () = deadline => {}
    }
    drop(pass);
    send.await
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
    rx: watch::Receiver<Option<(Outcome, Release)>>,
    tx: Weak<Answer>,
    gate: Arc<Semaphore>,
}

/// How a flight's waiters go once it has answered (see "Why its waiters go out a window at a
/// time"), from the connection the key's last rejected answer came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Release {
    /// [`WINDOW`] at a time, each keeping its place ([`Pass`]) until its answer is in: over
    /// HTTP/1.1, where each needs a connection of its own.
    Window,
    /// One after another as the scheduler gets to each, keeping no place: over a multiplexed
    /// connection (HTTP/2), which takes them all as streams, and where waiting for answers would
    /// only delay them.
    OneAfterAnother,
}

impl Release {
    /// The release for a key whose last rejected answer came over a connection of `version`:
    /// HTTP/2 and later multiplex.
    pub(super) fn over(version: http::Version) -> Release {
        match version {
            http::Version::HTTP_2 | http::Version::HTTP_3 => Release::OneAfterAnother,
            _ => Release::Window,
        }
    }
}

/// The flight task's side: the outcome, and the gate its waiters pass once it is there.
struct Answer {
    tx: watch::Sender<Option<(Outcome, Release)>>,
    gate: Arc<Semaphore>,
}

impl Answer {
    /// Publishes `outcome`, then lets the first waiters through the gate: a window of [`WINDOW`],
    /// each letting the next go once its [`Pass`] is dropped; or one, which lets the next go at
    /// once.
    fn send(&self, outcome: Outcome, release: Release) {
        self.tx.send_replace(Some((outcome, release)));
        self.gate.add_permits(match release {
            Release::Window => WINDOW,
            Release::OneAfterAnother => 1,
        });
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
    pub(super) fn answer_early(&self, outcome: Outcome, release: Release) {
        if let Some(answer) = self.tx.upgrade() {
            answer.send(outcome, release);
        }
    }
}

/// A request's hold on a flight.
pub(super) struct Waiter {
    id: u64,
    rx: watch::Receiver<Option<(Outcome, Release)>>,
    gate: Arc<Semaphore>,
}

impl Waiter {
    /// The flight's outcome once it is there and this waiter's turn has come, with the waiter's
    /// place in the window if the release keeps places; `None` if the flight ended without one
    /// (its gate closed: no place).
    async fn outcome(&self) -> (Option<Outcome>, Option<Pass>) {
        let place = self.gate.clone().acquire_owned().await.ok();
        let answer = self.rx.borrow().clone();
        match answer {
            Some((outcome, Release::Window)) => (Some(outcome), place.map(|place| Pass { _place: place })),
            // The permit goes back at once: that is what lets the next waiter go.
            Some((outcome, Release::OneAfterAnother)) => (Some(outcome), None),
            None => (None, None),
        }
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
        let release = slot.state.lock().release;
        answer.send(outcome, release);
    };
    tokio::spawn(flight.instrument(span));
    (running, waiter)
}

/// Waits for a flight's outcome, in line behind the requests that came first, and returns it with
/// the request's place in the window (see "Why its waiters go out a window at a time"), to keep
/// while its request is sent ([`paced`]).
pub(super) async fn wait(cache: &TokenCache, slot: &Arc<Slot>, waiter: Waiter) -> (Outcome, Option<Pass>) {
    let _waiting = cache.inner.stats.waiting();
    if let (Some(outcome), pass) = waiter.outcome().await {
        return (outcome, pass);
    }
    // The gate closed with no answer: the runtime is shutting down under the flight. Make sure
    // the key is not left waiting for it forever.
    let aborted = Error::Refresh { key: slot.key.clone(), source: RefreshError::Aborted };
    let (outcome, effects): (Outcome, Effects) = cache.finish(slot, waiter.id, persist::Produced::Failed(aborted));
    effects.run(cache, slot);
    (outcome, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    /// Lets the other tasks run until none of them has anything left to do (bounded).
    async fn settle() {
        for _ in 0..1_000 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waiters_go_in_the_order_they_came_a_window_at_a_time() {
        let (running, answer) = Running::new(1, 0);
        let order = Arc::new(Mutex::new(Vec::new()));
        // Each waiter, once released, records its place and keeps its pass until told to go.
        let mut done = Vec::new();
        let tasks: Vec<_> = (0..100)
            .map(|place| {
                let (waiter, order) = (running.waiter(), order.clone());
                let (finish, finished) = tokio::sync::oneshot::channel::<()>();
                done.push(finish);
                tokio::spawn(async move {
                    let (outcome, pass) = waiter.outcome().await;
                    assert!(matches!(outcome, Some(Ok(None))), "the flight's outcome");
                    assert!(pass.is_some(), "a place in the window");
                    order.lock().unwrap().push(place);
                    let _ = finished.await;
                    drop(pass);
                })
            })
            .collect();
        settle().await;
        assert!(order.lock().unwrap().is_empty(), "no waiter goes before the answer");

        answer.send(Ok(None), Release::Window);
        settle().await;
        assert_eq!(*order.lock().unwrap(), (0..WINDOW).collect::<Vec<_>>(), "the first WINDOW go, in order");

        // One place freed: one more goes, the next in line.
        let _ = done.remove(0).send(());
        settle().await;
        assert_eq!(*order.lock().unwrap(), (0..=WINDOW).collect::<Vec<_>>());

        for finish in done {
            let _ = finish.send(());
        }
        for task in tasks {
            let ended = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
            ended.expect("every waiter is released").unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..100).collect::<Vec<_>>(), "all of them, in the order they came");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn over_a_multiplexed_connection_waiters_go_one_after_another_keeping_no_place() {
        let (running, answer) = Running::new(1, 0);
        let order = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..100)
            .map(|place| {
                let (waiter, order) = (running.waiter(), order.clone());
                tokio::spawn(async move {
                    let (outcome, pass) = waiter.outcome().await;
                    assert!(matches!(outcome, Some(Ok(None))), "the flight's outcome");
                    assert!(pass.is_none(), "no place to keep");
                    order.lock().unwrap().push(place);
                    // Parked for good: a waiter that went on frees nothing more.
                    std::future::pending::<()>().await;
                })
            })
            .collect();
        settle().await;
        answer.send(Ok(None), Release::OneAfterAnother);
        settle().await;
        assert_eq!(*order.lock().unwrap(), (0..100).collect::<Vec<_>>(), "all of them, in the order they came");
        for task in tasks {
            task.abort();
        }
    }

    #[test]
    fn the_release_follows_the_connection() {
        assert_eq!(Release::over(http::Version::HTTP_2), Release::OneAfterAnother);
        assert_eq!(Release::over(http::Version::HTTP_3), Release::OneAfterAnother);
        assert_eq!(Release::over(http::Version::HTTP_11), Release::Window);
        assert_eq!(Release::over(http::Version::HTTP_10), Release::Window);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_place_is_kept_until_the_answer_is_in_or_for_place_held_at_most() {
        let gate = Arc::new(Semaphore::new(1));
        let pass = || async { Pass { _place: gate.clone().acquire_owned().await.unwrap() } };

        // Answered at once: the place is back with the answer.
        let answer = paced(Some(pass().await), std::pin::pin!(async { 7 })).await;
        assert_eq!(answer, 7);
        assert_eq!(gate.available_permits(), 1);

        // Never answered: the place is back after PLACE_HELD_AT_MOST, and the answer still awaited.
        let held = pass().await;
        let sending =
            tokio::spawn(async move { paced(Some(held), std::pin::pin!(std::future::pending::<()>())).await });
        tokio::time::sleep(PLACE_HELD_AT_MOST / 2).await;
        assert_eq!(gate.available_permits(), 0, "kept while the answer is awaited");
        tokio::time::sleep(PLACE_HELD_AT_MOST).await;
        assert_eq!(gate.available_permits(), 1, "given back after PLACE_HELD_AT_MOST");
        assert!(!sending.is_finished(), "the request is still awaited");
        sending.abort();

        // Without a place: the request is just awaited.
        assert_eq!(paced(None, std::pin::pin!(async { 8 })).await, 8);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiter_that_comes_after_the_answer_goes_at_once() {
        let (running, answer) = Running::new(1, 0);
        answer.send(Ok(None), Release::Window);
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), running.waiter().outcome()).await;
        assert!(matches!(outcome, Ok((Some(Ok(None)), Some(_)))));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_waiters_of_a_flight_gone_without_an_answer_learn_it() {
        let (running, answer) = Running::new(1, 0);
        let waiters: Vec<_> = (0..3).map(|_| running.waiter()).collect();
        drop(answer);
        for waiter in waiters {
            let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), waiter.outcome()).await;
            assert!(matches!(outcome, Ok((None, None))), "no outcome, no place, and no wait for one");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_early_answer_releases_the_waiters() {
        let (running, answer) = Running::new(1, 0);
        let waiter = running.waiter();
        running.answer_early(Ok(None), Release::Window);
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), waiter.outcome()).await;
        assert!(matches!(outcome, Ok((Some(Ok(None)), Some(_)))));
        drop(answer);
    }
}
