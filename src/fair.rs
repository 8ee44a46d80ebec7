//! Fair sharing of the engine's time between tenants.
//!
//! Each tenant runs at most `width` of its workers' calls at once ([`Turns`]); its other
//! calls wait in its own queue (a FIFO semaphore), parked, not in the runtime's run queue.
//! So one tenant's backlog of thousands of calls never stands between another tenant's call
//! and a thread: the runtime's run queue holds at most `width` calls of each tenant, so
//! tenants take turns in it, `width` calls at a time (round robin with that quantum).
//!
//! Fan-out takes turns the same way: a client socket's writer takes one of its tenant's
//! fan-out turns ([`Turns::burst`]) to write what is queued for it. One event of a tenant
//! with thousands of subscribers wakes thousands of writers; they wait in that tenant's
//! queue, so another tenant's writers wait behind at most `width` of them, not all.
//!
//! A call gives its turn back while it waits on something outside the engine (a worker's
//! answer, the disk): [`idle`]. That keeps the turns for work that uses a thread, and it is
//! what makes nesting safe: a call that waits on a worker whose function calls back into
//! the same tenant (a handler writing to a stream) holds no turn while it waits, so calls
//! can never hold every turn and wait on each other.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Calls one tenant may run at once unless the config says otherwise.
pub const DEFAULT_WIDTH: usize = 64;
/// Client sockets of one tenant written at once unless the config says otherwise.
pub const DEFAULT_FANOUT_WIDTH: usize = 64;

tokio::task_local! {
    /// The turn the current call holds, if it runs under [`Turns::run`].
    static TURN: RefCell<Turn>;
}

struct Turn {
    turns: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

/// One tenant's turns.
#[derive(Clone)]
pub struct Turns {
    semaphore: Arc<Semaphore>,
}

impl Turns {
    pub fn new(width: usize) -> Self {
        Turns {
            semaphore: Arc::new(Semaphore::new(width.max(1))),
        }
    }

    /// Runs `call` once it has a turn, holding it while the call runs (but see [`idle`]).
    pub async fn run<F: Future>(&self, call: F) -> F::Output {
        let permit = acquire(&self.semaphore).await;
        let turn = Turn {
            turns: self.semaphore.clone(),
            permit: Some(permit),
        };
        TURN.scope(RefCell::new(turn), call).await
    }

    /// Runs `work` once it has a turn, holding the turn for the first poll only: the part
    /// that uses a thread. A socket write that then waits for a slow peer to read waits
    /// without a turn, so slow peers cannot hold up their tenant's other sockets.
    pub async fn burst<F: Future>(&self, work: F) -> F::Output {
        let mut permit = Some(acquire(&self.semaphore).await);
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            let out = work.as_mut().poll(cx);
            permit = None;
            out
        })
        .await
    }

    /// Turns free now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }
}

/// Awaits `wait` without holding the current call's turn, and takes a turn again after it;
/// outside [`Turns::run`] it only awaits.
pub async fn idle<F: Future>(wait: F) -> F::Output {
    let released = TURN
        .try_with(|turn| {
            let mut turn = turn.borrow_mut();
            turn.permit.take().map(|_| turn.turns.clone())
        })
        .ok()
        .flatten();
    let out = wait.await;
    if let Some(turns) = released {
        let permit = acquire(&turns).await;
        let _ = TURN.try_with(|turn| turn.borrow_mut().permit = Some(permit));
    }
    out
}

async fn acquire(semaphore: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    // The semaphore is never closed.
    semaphore
        .clone()
        .acquire_owned()
        .await
        .expect("turns are never closed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn no_more_than_the_width_run_at_once() {
        let turns = Turns::new(3);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let (turns, running, most) = (turns.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    turns
                        .run(async {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            running.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                })
            })
            .collect();
        for c in calls {
            c.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(turns.available(), 3);
    }

    #[tokio::test]
    async fn one_tenants_backlog_does_not_delay_another() {
        let (a, b) = (Turns::new(1), Turns::new(1));
        // A's only turn is held by a call that does not end until told to.
        let (release, held) = oneshot::channel::<()>();
        let hog = tokio::spawn({
            let a = a.clone();
            async move { a.run(async { held.await.ok() }).await }
        });
        tokio::task::yield_now().await;
        let queued = tokio::spawn({
            let a = a.clone();
            async move { a.run(async {}).await }
        });
        // B runs at once although A has a call waiting for a turn.
        tokio::time::timeout(Duration::from_secs(5), b.run(async {}))
            .await
            .expect("B was not held up by A");
        assert!(!queued.is_finished());
        release.send(()).unwrap();
        hog.await.unwrap();
        queued.await.unwrap();
    }

    #[tokio::test]
    async fn a_call_waiting_idle_lets_a_nested_call_of_its_tenant_run() {
        let turns = Turns::new(1);
        // The one turn's holder waits (idle) on a call that needs a turn itself: without
        // `idle` this would wait forever.
        let inner = turns.clone();
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            turns.run(async move {
                let nested = tokio::spawn(async move { inner.run(async { 7 }).await });
                idle(async { nested.await.unwrap() }).await
            }),
        )
        .await
        .expect("the nested call got a turn");
        assert_eq!(out, 7);
        assert_eq!(turns.available(), 1);
    }

    #[tokio::test]
    async fn a_burst_holds_its_turn_only_until_it_waits() {
        let turns = Turns::new(1);
        // The first burst waits on something outside (a slow peer): its turn is free again.
        let (release, held) = oneshot::channel::<()>();
        let slow = tokio::spawn({
            let turns = turns.clone();
            async move { turns.burst(async { held.await.ok() }).await }
        });
        tokio::task::yield_now().await;
        assert!(!slow.is_finished());
        assert_eq!(turns.available(), 1, "a waiting burst holds no turn");
        tokio::time::timeout(Duration::from_secs(5), turns.burst(async { 3 }))
            .await
            .expect("another burst ran while the first waited");
        release.send(()).unwrap();
        slow.await.unwrap();
    }

    #[tokio::test]
    async fn a_burst_waits_for_a_turn() {
        let turns = Turns::new(1);
        let (release, held) = oneshot::channel::<()>();
        let hog = tokio::spawn({
            let turns = turns.clone();
            async move { turns.run(async { held.await.ok() }).await }
        });
        tokio::task::yield_now().await;
        let waiting = tokio::spawn({
            let turns = turns.clone();
            async move { turns.burst(async { 4 }).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no turn was free");
        release.send(()).unwrap();
        hog.await.unwrap();
        assert_eq!(waiting.await.unwrap(), 4);
    }

    #[tokio::test]
    async fn idle_outside_a_turn_only_waits() {
        assert_eq!(idle(async { 5 }).await, 5);
    }
}
