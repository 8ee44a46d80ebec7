//! A record's place in the log's syncs: awaited by its writer, or given what to run when its
//! sync answers.
//!
//! A writer that awaits its ticket is parked until the sync and then resumed, from cold
//! caches, among the hundreds of others that sync covered: that resumption cost a durable set
//! as much again as the set itself. A writer may instead hand its ticket the rest of its work
//! ([`Ticket::then`]), which the sync's answer runs where it is given (the runtime's answering
//! task), in log order, without a task per writer.

use super::WriteError;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// What runs when a sync answers, given its result.
pub type Then = Box<dyn FnOnce(Result<(), &WriteError>) + Send>;

enum State {
    /// Not answered: the waker of the writer awaiting it, if one is, and what to run.
    Waiting {
        waker: Option<Waker>,
        then: Vec<Then>,
    },
    /// Being answered: what was given to run meanwhile runs after what was given before.
    Answering {
        waker: Option<Waker>,
        then: Vec<Then>,
    },
    Done(Result<(), WriteError>),
}

type Slot = Arc<Mutex<State>>;

/// The log's end: answers the ticket, once. Dropped unanswered (the flusher stopped before it
/// knew), it answers that the write is in doubt.
pub struct Waiter(Option<Slot>);

/// The writer's end (see the module's comment). A clone queues on the same sync.
#[derive(Clone)]
pub struct Ticket(Slot);

/// A record's waiter and ticket.
pub fn pair() -> (Waiter, Ticket) {
    let slot = Arc::new(Mutex::new(State::Waiting {
        waker: None,
        then: Vec::new(),
    }));
    (Waiter(Some(slot.clone())), Ticket(slot))
}

impl Waiter {
    pub fn send(mut self, result: Result<(), WriteError>) {
        if let Some(slot) = self.0.take() {
            answer(&slot, result);
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            let why = "the store's log flusher stopped before the write was known to be on disk";
            answer(&slot, Err(WriteError::InDoubt(why.into())));
        }
    }
}

/// Runs what was given to run, in the order given, then wakes the writer awaiting the ticket.
fn answer(slot: &Slot, result: Result<(), WriteError>) {
    let mut state = slot.lock().unwrap();
    let answering = State::Answering {
        waker: None,
        then: Vec::new(),
    };
    let mut then = match std::mem::replace(&mut *state, answering) {
        State::Waiting { waker, then } => {
            if let State::Answering { waker: w, .. } = &mut *state {
                *w = waker;
            }
            then
        }
        // Answered once only: a waiter is consumed by `send`.
        done => {
            *state = done;
            return;
        }
    };
    loop {
        drop(state);
        for then in then.drain(..) {
            run(then, result.as_ref().map(|_| ()));
        }
        state = slot.lock().unwrap();
        match &mut *state {
            State::Answering { then: more, .. } if !more.is_empty() => {
                std::mem::swap(more, &mut then)
            }
            _ => break,
        }
    }
    let waker = match std::mem::replace(&mut *state, State::Done(result)) {
        State::Answering { waker, .. } => waker,
        _ => None,
    };
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Runs one step; a panic in it is logged and does not stop the steps after it (one of them
/// may let the next call in line go).
fn run(then: Then, result: Result<(), &WriteError>) {
    if std::panic::catch_unwind(AssertUnwindSafe(|| then(result))).is_err() {
        tracing::error!("a step run after a write's sync panicked (a bug: see the panic above)");
    }
}

impl Ticket {
    /// Runs `then` with the sync's result when it answers, after what was given before: now,
    /// if it has answered.
    pub fn then(&self, then: Then) {
        let mut state = self.0.lock().unwrap();
        match &mut *state {
            State::Waiting { then: queue, .. } | State::Answering { then: queue, .. } => {
                // A write's call queues about six steps: one allocation for them all.
                if queue.capacity() == 0 {
                    queue.reserve_exact(8);
                }
                queue.push(then)
            }
            State::Done(result) => {
                let result = result.clone();
                drop(state);
                run(then, result.as_ref().map(|_| ()));
            }
        }
    }
}

/// The sync's result, once it has answered (and again if polled again).
impl Future for Ticket {
    type Output = Result<(), WriteError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.0.lock().unwrap();
        match &mut *state {
            State::Done(result) => Poll::Ready(result.clone()),
            // While its steps run, it is not answered yet: they come first.
            State::Waiting { waker, .. } | State::Answering { waker, .. } => {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn an_awaited_ticket_gets_its_answer() {
        let (waiter, ticket) = pair();
        let waiting = tokio::spawn(ticket);
        tokio::task::yield_now().await;
        waiter.send(Ok(()));
        assert!(matches!(waiting.await.unwrap(), Ok(())));
    }

    #[test]
    fn then_runs_when_answered_or_at_once_if_it_was() {
        let ran = Arc::new(AtomicUsize::new(0));
        let count = |ran: &Arc<AtomicUsize>| {
            let ran = ran.clone();
            Box::new(move |r: Result<(), &WriteError>| {
                assert!(r.is_ok());
                ran.fetch_add(1, Ordering::SeqCst);
            }) as Then
        };
        let (waiter, ticket) = pair();
        ticket.then(count(&ran));
        assert_eq!(ran.load(Ordering::SeqCst), 0, "not before the answer");
        waiter.send(Ok(()));
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        let (waiter, ticket) = pair();
        waiter.send(Ok(()));
        ticket.then(count(&ran));
        assert_eq!(
            ran.load(Ordering::SeqCst),
            2,
            "answered before: run at once"
        );
    }

    #[test]
    fn a_waiter_dropped_unanswered_says_the_write_is_in_doubt() {
        let (waiter, ticket) = pair();
        let seen = Arc::new(Mutex::new(None));
        let into = seen.clone();
        ticket.then(Box::new(move |r| {
            *into.lock().unwrap() = Some(matches!(r, Err(WriteError::InDoubt(_))));
        }));
        drop(waiter);
        assert_eq!(*seen.lock().unwrap(), Some(true));
    }
}
