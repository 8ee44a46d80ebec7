//! A worker's call whose write waits for the log: the rest of the call done by the sync.
//!
//! A durable write is answered, and its event sent, only once the log's sync covers it. If
//! the call awaited that sync, it would be parked with hundreds of others and resumed after
//! the sync, from cold caches: that resumption cost as much again as the rest of a set. So a
//! call run in a [`scope`] does not wait. The engine's store hands the scope its log ticket
//! ([`hold`]) and returns at once; the call goes on, and each thing it does that must not
//! happen before the write is on disk (sending its event, letting the next call in its group
//! or item emit, settling its quota, recording its time) it queues with [`after_sync`]; its
//! answer comes last ([`Held::then`]). The sync's answer runs the queue on the runtime's
//! answering task, for all the writers it covered, in log order, so events still leave in the
//! order the writes were applied. A failed sync runs the queue with its error: no event is sent
//! and the call is answered with the error, as a call that waited would have been.
//!
//! A call with no write of its own (a `stream::send`) in line behind a write whose steps wait
//! for its sync *joins* that sync ([`join`]): its own steps are queued after the write's, on the
//! same ticket, and run whatever the sync's result (the send itself stored nothing that could
//! fail). So a connection's sends and writes to a group keep their order without any of their
//! calls waiting.
//!
//! Outside a scope, or once a call holds a ticket, a further write waits as before; and a call
//! that must have its sync before it goes on (an event for a fan-out hook, or for other nodes)
//! waits for it with [`synced`].

use super::wal::{Ticket, WriteError, ticket::Then};
use std::cell::RefCell;
use std::future::Future;

tokio::task_local! {
    static HELD: RefCell<Held>;
}

/// The ticket a call holds. What waits for it is given to the ticket as it is queued, so it
/// runs when the sync answers even if the call is dropped first, and a later call that sees
/// an earlier one's step queued knows that step runs before its own.
#[derive(Default)]
pub struct Held {
    ticket: Option<Ticket>,
    /// Which log the ticket is of (see [`holding`]).
    log: usize,
    /// The ticket is an earlier call's, joined ([`join`]): the steps run as if it succeeded.
    joined: bool,
    /// The call has waited for its sync ([`synced`]): what it queues now runs at once.
    waited: bool,
    /// A write of the engine's store may be held now ([`may_hold`]).
    may_hold: bool,
}

/// A held sync, as a later call may join it (see [`join`]).
#[derive(Clone)]
pub struct Shared {
    pub log: usize,
    ticket: Ticket,
    /// A sync shared by a call that joined it may not be joined again: each write's sync takes
    /// one call's steps besides its own, so no run of sends piles up on one ticket.
    joinable: bool,
}

/// Runs `call` in a scope, and gives back the sync it left holding, if any.
pub async fn scope<F: Future>(call: F) -> (F::Output, Held) {
    HELD.scope(RefCell::new(Held::default()), async {
        let out = call.await;
        (
            out,
            HELD.with(|held| std::mem::take(&mut *held.borrow_mut())),
        )
    })
    .await
}

/// Runs `write`, a write to the engine's store made by the call itself, letting the store
/// hold its ticket ([`hold`]). Writes the call makes otherwise (a WebAssembly adapter's, which
/// it counts against its quotas as soon as they return) wait for their sync.
pub async fn may_hold<F: Future>(write: F) -> F::Output {
    struct Allowed;
    impl Drop for Allowed {
        fn drop(&mut self) {
            let _ = HELD.try_with(|held| held.borrow_mut().may_hold = false);
        }
    }
    let _ = HELD.try_with(|held| held.borrow_mut().may_hold = true);
    let _allowed = Allowed;
    write.await
}

/// Takes the current call's ticket from `log` (any id that tells logs apart), so that the
/// call need not wait for it; gives it back if there is no scope, the write is not one the
/// call may leave unwaited ([`may_hold`]), or the call holds a ticket already (the caller then
/// waits for it, and so for the first: syncs answer in log order).
pub fn hold(log: usize, ticket: Ticket) -> Result<(), Ticket> {
    let mut ticket = Some(ticket);
    let _ = HELD.try_with(|held| {
        let mut held = held.borrow_mut();
        if held.ticket.is_none() && held.may_hold {
            held.ticket = ticket.take();
            held.log = log;
        }
    });
    match ticket {
        None => Ok(()),
        Some(ticket) => Err(ticket),
    }
}

/// The current call's unanswered sync, for a later call to join.
pub fn share() -> Option<Shared> {
    HELD.try_with(|held| {
        let held = held.borrow();
        let ticket = held.ticket.as_ref().filter(|_| !held.waited)?;
        Some(Shared {
            log: held.log,
            ticket: ticket.clone(),
            joinable: !held.joined,
        })
    })
    .ok()
    .flatten()
}

/// Queues the current call's steps behind an earlier call's sync: after the steps that call
/// queued so far, and run whatever the sync's result. False if there is no scope, the call
/// holds a sync of its own, or the earlier call had joined the sync itself.
pub fn join(earlier: &Shared) -> bool {
    HELD.try_with(|held| {
        let mut held = held.borrow_mut();
        if held.ticket.is_some() || !earlier.joinable {
            return false;
        }
        held.ticket = Some(earlier.ticket.clone());
        held.log = earlier.log;
        held.joined = true;
        true
    })
    .unwrap_or(false)
}

/// The log whose sync the current call holds, if it holds one it has not waited for.
pub fn holding() -> Option<usize> {
    HELD.try_with(|held| {
        let held = held.borrow();
        (held.ticket.is_some() && !held.waited).then_some(held.log)
    })
    .ok()
    .flatten()
}

/// Runs `then` once the current call's write is on disk (or failed to be), after what the
/// call queued before: at once if the call holds no sync, or its sync has answered.
pub fn after_sync(then: impl FnOnce(Result<(), &WriteError>) + Send + 'static) {
    let mut then = Some(then);
    let _ = HELD.try_with(|held| {
        let held = held.borrow();
        if let Some(ticket) = &held.ticket {
            queue(ticket, held.joined, then.take().expect("taken once"));
        }
    });
    if let Some(then) = then {
        then(Ok(()));
    }
}

fn queue(
    ticket: &Ticket,
    joined: bool,
    then: impl FnOnce(Result<(), &WriteError>) + Send + 'static,
) {
    let then: Then = match joined {
        // A joined sync's failure is the earlier call's, not this one's.
        true => Box::new(move |_| then(Ok(()))),
        false => Box::new(then),
    };
    ticket.then(then);
}

/// Waits, without the call's tenant turn, for the sync the current call holds (and so for
/// what it queued); the sync's result, Ok if it holds none (or joined it).
pub async fn synced() -> Result<(), WriteError> {
    let (answered, answer) = tokio::sync::oneshot::channel();
    let queued = HELD.try_with(|held| {
        let mut held = held.borrow_mut();
        let joined = held.joined;
        let ticket = held.ticket.as_ref().filter(|_| !held.waited)?;
        queue(ticket, joined, move |r| {
            let _ = answered.send(r.map_err(WriteError::clone));
        });
        held.waited = true;
        Some(())
    });
    if !matches!(queued, Ok(Some(()))) {
        return Ok(());
    }
    match crate::fair::idle(answer).await {
        Ok(result) => result,
        Err(_) => Err(WriteError::InDoubt(
            "the store's log stopped before the write was known to be on disk".into(),
        )),
    }
}

impl Held {
    /// Whether the call holds no sync: it is done.
    pub fn is_empty(&self) -> bool {
        self.ticket.is_none()
    }

    /// Runs `last` when the sync answers, after what the call queued (now, if it has).
    pub fn then(self, last: impl FnOnce(Result<(), &WriteError>) + Send + 'static) {
        match &self.ticket {
            Some(ticket) => queue(ticket, self.joined, last),
            None => last(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::wal::ticket;
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Holds `ticket` as the engine's store does for a call's own write.
    async fn own(log: usize, ticket: Ticket) -> Result<(), Ticket> {
        may_hold(async { hold(log, ticket) }).await
    }

    fn log() -> (
        Arc<Mutex<Vec<String>>>,
        impl Fn(&str) + Clone + Send + 'static,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        (seen, move |s: &str| into.lock().unwrap().push(s.to_owned()))
    }

    /// Steps queued by a call in a scope run after its sync, in order, then its answer, with
    /// the sync's result: a failed sync runs them with its error.
    #[tokio::test]
    async fn steps_wait_for_the_sync_held_and_get_its_result() {
        for ok in [true, false] {
            let (seen, push) = log();
            let (waiter, ticket) = ticket::pair();
            let p = push.clone();
            let ((), held) = scope(async move {
                assert!(own(1, ticket).await.is_ok());
                assert_eq!(holding(), Some(1));
                let p2 = p.clone();
                after_sync(move |r| p2(&format!("event {}", r.is_ok())));
                p("applied");
            })
            .await;
            held.then(move |r| push(&format!("answer {}", r.is_ok())));
            assert_eq!(*seen.lock().unwrap(), ["applied"]);
            waiter.send(match ok {
                true => Ok(()),
                false => Err(WriteError::NotStored("disk full".into())),
            });
            assert_eq!(
                *seen.lock().unwrap(),
                ["applied", &format!("event {ok}"), &format!("answer {ok}")]
            );
        }
    }

    /// In a scope, a write the call did not make itself (`may_hold`) is not held.
    #[tokio::test]
    async fn only_the_call_s_own_write_is_held() {
        let (_waiter, ticket) = ticket::pair();
        let (held_it, _) = scope(async move { hold(1, ticket).is_ok() }).await;
        assert!(!held_it);
    }

    /// Outside a scope nothing is held: the write waits, and steps run at once.
    #[tokio::test]
    async fn outside_a_scope_nothing_is_held() {
        let (_waiter, ticket) = ticket::pair();
        assert!(own(1, ticket).await.is_err());
        assert_eq!(holding(), None);
        let (seen, push) = log();
        after_sync(move |_| push("now"));
        assert_eq!(*seen.lock().unwrap(), ["now"]);
    }

    /// A second write in one call is not held: the call waits for it (and so for the first).
    /// A call that waits for its sync runs its steps then, and later ones at once.
    #[tokio::test]
    async fn one_ticket_held_at_a_time_and_synced_runs_the_steps() {
        let (seen, push) = log();
        let (first, ticket) = ticket::pair();
        let (_second, other) = ticket::pair();
        let p = push.clone();
        let waiting = tokio::spawn(scope(async move {
            own(1, ticket).await.ok().unwrap();
            assert!(own(1, other).await.is_err());
            let p2 = p.clone();
            after_sync(move |_| p2("before"));
            assert!(synced().await.is_ok());
            after_sync(move |_| p("after"));
            assert_eq!(holding(), None);
        }));
        tokio::task::yield_now().await;
        assert!(seen.lock().unwrap().is_empty());
        first.send(Ok(()));
        let ((), held) = waiting.await.unwrap();
        let p = push.clone();
        held.then(move |_| p("answer"));
        assert_eq!(*seen.lock().unwrap(), ["before", "after", "answer"]);
    }

    /// A call with no sync of its own that joins an earlier call's runs its steps after that
    /// call's, as if the sync succeeded: the failure is the earlier call's.
    #[tokio::test]
    async fn a_joined_sync_runs_the_later_call_s_steps_after_the_earlier_s() {
        let (seen, push) = log();
        let (waiter, ticket) = ticket::pair();
        let p = push.clone();
        let (shared, held) = scope(async move {
            own(1, ticket).await.ok().unwrap();
            after_sync(move |r| p(&format!("write's event {}", r.is_ok())));
            share().expect("a sync to share")
        })
        .await;
        let p = push.clone();
        held.then(move |r| p(&format!("write's answer {}", r.is_ok())));
        let p = push.clone();
        let (_unanswered, mine) = ticket::pair();
        let (again, joined) = scope(async move {
            assert!(join(&shared));
            assert_eq!(holding(), Some(1));
            let again = share().expect("the joined sync, shared");
            after_sync(move |r| p(&format!("send's event {}", r.is_ok())));
            // One sync per call: a call holding one joins no other.
            assert!(own(1, mine).await.is_err());
            assert!(!join(&shared));
            again
        })
        .await;
        joined.then(move |r| push(&format!("send's answer {}", r.is_ok())));
        // The send's own share cannot be joined again: one joined call per write's sync.
        let ((), _) = scope(async move {
            assert!(!join(&again));
        })
        .await;
        assert!(seen.lock().unwrap().is_empty());
        waiter.send(Err(WriteError::NotStored("disk full".into())));
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "write's event false",
                "write's answer false",
                "send's event true",
                "send's answer true"
            ]
        );
    }

    /// A call dropped while it holds a sync still runs its steps when the sync answers.
    #[tokio::test]
    async fn a_dropped_call_runs_its_steps_at_its_sync() {
        let (seen, push) = log();
        let (waiter, ticket) = ticket::pair();
        let ((), held) = scope(async move {
            own(1, ticket).await.ok().unwrap();
            after_sync(move |_| push("let the next go"));
        })
        .await;
        drop(held);
        assert!(seen.lock().unwrap().is_empty());
        waiter.send(Ok(()));
        assert_eq!(*seen.lock().unwrap(), ["let the next go"]);
    }
}
