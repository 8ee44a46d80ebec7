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
//! Outside a scope, or once a call holds a ticket, a further write waits as before; and a call that
//! must have its sync before it goes on (an event for a fan-out hook, or for other nodes)
//! waits for it with [`synced`].

use super::wal::{Ticket, WriteError};
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
    /// The call has waited for its sync ([`synced`]): what it queues now runs at once.
    waited: bool,
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

/// Takes the current call's ticket from `log` (any id that tells logs apart), so that the
/// call need not wait for it; gives it back if there is no scope, or the call holds one
/// already (the caller then waits for it, and so for the first: syncs answer in log order).
pub fn hold(log: usize, ticket: Ticket) -> Result<(), Ticket> {
    let mut ticket = Some(ticket);
    let _ = HELD.try_with(|held| {
        let mut held = held.borrow_mut();
        if held.ticket.is_none() {
            held.ticket = ticket.take();
            held.log = log;
        }
    });
    match ticket {
        None => Ok(()),
        Some(ticket) => Err(ticket),
    }
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
        if let Some(ticket) = &held.borrow().ticket {
            ticket.then(Box::new(then.take().expect("taken once")));
        }
    });
    if let Some(then) = then {
        then(Ok(()));
    }
}

/// Waits, without the call's tenant turn, for the sync the current call holds (and so for
/// what it queued); the sync's result, Ok if it holds none.
pub async fn synced() -> Result<(), WriteError> {
    // Out of the task-local while it is awaited: the call's own code may look at it meanwhile.
    let ticket = HELD.try_with(|held| held.borrow_mut().ticket.take());
    let Ok(Some(mut ticket)) = ticket else {
        return Ok(());
    };
    let outcome = crate::fair::idle(&mut ticket).await;
    HELD.with(|held| {
        let mut held = held.borrow_mut();
        held.ticket = Some(ticket);
        held.waited = true;
    });
    outcome
}

impl Held {
    /// Whether the call holds no sync: it is done.
    pub fn is_empty(&self) -> bool {
        self.ticket.is_none()
    }

    /// Runs `last` when the sync answers, after what the call queued (now, if it has).
    pub fn then(self, last: impl FnOnce(Result<(), &WriteError>) + Send + 'static) {
        match self.ticket {
            Some(ticket) => ticket.then(Box::new(last)),
            None => last(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::wal::ticket;
    use super::*;
    use std::sync::{Arc, Mutex};

    fn log() -> (
        Arc<Mutex<Vec<String>>>,
        impl Fn(&str) + Clone + Send + 'static,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        (seen, move |s: &str| into.lock().unwrap().push(s.to_owned()))
    }

    /// Steps queued by a call in a scope run after its sync, in order, then its answer.
    #[tokio::test]
    async fn steps_wait_for_the_sync_held() {
        let (seen, push) = log();
        let (waiter, ticket) = ticket::pair();
        let p = push.clone();
        let ((), held) = scope(async move {
            assert!(hold(1, ticket).is_ok());
            assert_eq!(holding(), Some(1));
            let p2 = p.clone();
            after_sync(move |r| p2(&format!("event {}", r.is_ok())));
            p("applied");
        })
        .await;
        held.then(move |r| push(&format!("answer {}", r.is_ok())));
        assert_eq!(*seen.lock().unwrap(), ["applied"]);
        waiter.send(Ok(()));
        assert_eq!(
            *seen.lock().unwrap(),
            ["applied", "event true", "answer true"]
        );
    }

    /// A failed sync runs the steps with its error.
    #[tokio::test]
    async fn a_failed_sync_runs_the_steps_with_its_error() {
        let (seen, push) = log();
        let (waiter, ticket) = ticket::pair();
        let p = push.clone();
        let ((), held) = scope(async move {
            hold(1, ticket).ok().unwrap();
            after_sync(move |r| p(&format!("event {}", r.is_ok())));
        })
        .await;
        held.then(move |r| push(&format!("answer {}", r.is_ok())));
        waiter.send(Err(WriteError::NotStored("disk full".into())));
        assert_eq!(*seen.lock().unwrap(), ["event false", "answer false"]);
    }

    /// Outside a scope nothing is held: the write waits, and steps run at once.
    #[tokio::test]
    async fn outside_a_scope_nothing_is_held() {
        let (_waiter, ticket) = ticket::pair();
        assert!(hold(1, ticket).is_err());
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
            hold(1, ticket).ok().unwrap();
            assert!(hold(1, other).is_err());
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

    /// A call dropped while it holds a sync still runs its steps when the sync answers.
    #[tokio::test]
    async fn a_dropped_call_runs_its_steps_at_its_sync() {
        let (seen, push) = log();
        let (waiter, ticket) = ticket::pair();
        let ((), held) = scope(async move {
            hold(1, ticket).ok().unwrap();
            after_sync(move |_| push("let the next go"));
        })
        .await;
        drop(held);
        assert!(seen.lock().unwrap().is_empty());
        waiter.send(Ok(()));
        assert_eq!(*seen.lock().unwrap(), ["let the next go"]);
    }
}
