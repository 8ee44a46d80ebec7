//! A worker connection's calls to one group take effect, and reach subscribers, in the order
//! the connection sent them.
//!
//! Each call runs in a task of its own, so that a connection's durable writes share the
//! store's group commit; tasks on several threads finish in any order. So the socket's read
//! loop takes each call's place in its group's line ([`Lines::claim`]) before it spawns the
//! call, in the order the frames arrived, and the call waits on the call before it twice: for
//! its *apply* before it starts, and for its *emission* before it emits. A store write counts
//! as applied when it takes its item's turn under the store's lock (`fanout::order`), before
//! its sync: so a connection's syncs still overlap, and only apply and emission are in line.
//! Where storage cannot say when it applied (a worker's stream, a WebAssembly adapter, Redis),
//! the write counts as applied once it returns. Calls to other groups never wait for each
//! other, and per-item order (`fanout::order`) holds as before: its waits point to writes
//! applied earlier, as these do, so the two cannot wait on each other.
//!
//! A durable write's emission waits for its sync without its call waiting (`storage::synced`):
//! it is *queued* behind the sync, and a later call whose own emission is queued behind a later
//! sync of the same log need not wait for it, as syncs answer in log order; a later call with no
//! sync of its own (a send) joins the earlier call's, and its steps run after that call's.
//!
//! The waits hold no tenant turn (`fair`): the wait to start is made before the call asks
//! for a turn, and the wait to emit is made [`idle`](crate::fair::idle), so calls waiting on
//! their predecessors never hold every turn while those predecessors wait for one.

use crate::storage::synced;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

/// Something that happens once, awaited by the call after.
#[derive(Default)]
struct Flag {
    done: AtomicBool,
    notify: Notify,
}

impl Flag {
    fn set(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    fn is_set(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a `set` between the two is not missed.
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// One call's progress, as the call after it sees it.
#[derive(Default)]
struct Step {
    applied: Flag,
    emitted: Flag,
    /// The sync the call's emission is queued behind (see `storage::synced`): a later call
    /// whose own emission is queued behind a later sync of the same log is behind it already,
    /// and one with no sync of its own joins it.
    queued: OnceLock<synced::Shared>,
}

/// One connection's lines, by group: the latest call claimed in each. Owned by the socket's
/// read loop, so claims need no lock.
#[derive(Default)]
pub struct Lines {
    latest: HashMap<u64, Arc<Step>>,
    hasher: std::hash::RandomState,
    /// Groups kept after the last sweep: the next sweep comes when the map has doubled.
    kept: usize,
}

/// Where a group's line is kept. Two groups whose keys collide merely share one line.
#[derive(Clone, Copy)]
pub struct GroupKey(u64);

impl Lines {
    pub fn key(&self, stream: &str, group: &str) -> GroupKey {
        GroupKey(self.hasher.hash_one((stream, group)))
    }

    /// Takes the next place in the group's line. Claim in the order the calls arrived, and
    /// only for a call that will run: a place must go through [`Place::run`] to pass its
    /// turn on in order.
    pub fn claim(&mut self, key: GroupKey) -> Place {
        let own = Arc::new(Step::default());
        let before = self.latest.insert(key.0, own.clone());
        if self.latest.len() > 2 * self.kept + 64 {
            // Groups whose latest call is out need no line: a later call there waits on none.
            self.latest.retain(|_, step| !step.emitted.is_set());
            self.kept = self.latest.len();
        }
        Place {
            before: before.filter(|b| !b.emitted.is_set()),
            own,
            apply_on_claim: true,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.latest.len()
    }
}

/// A call's place in its group's line. Dropped unrun (only a cancelled call is), it lets the
/// next call go at once.
pub struct Place {
    /// The call before, until this one has waited for its emission.
    before: Option<Arc<Step>>,
    own: Arc<Step>,
    /// Whether an item turn taken in this call means it has applied (see [`apply_late`]).
    apply_on_claim: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.own.applied.set();
        // A queued emission is let go by its sync's answer.
        if self.own.queued.get().is_none() {
            self.own.emitted.set();
        }
    }
}

tokio::task_local! {
    /// The place of the call running in this task, if it has one.
    static CURRENT: RefCell<Place>;
}

impl Place {
    /// Runs `call` in this place: after the call before has applied, and passing its own
    /// turns on when it has applied and emitted (at the latest, when it ends).
    pub async fn run<F: Future>(self, call: F) -> F::Output {
        if let Some(before) = &self.before {
            before.applied.wait().await;
        }
        CURRENT
            .scope(RefCell::new(self), async {
                let out = call.await;
                applied();
                // A call that emitted nothing still passes the emission turn on in order.
                if let Some(before) = take_before() {
                    after(&before).await;
                }
                emitted();
                out
            })
            .await
    }
}

/// The current call has applied: the next call in its group may apply.
pub fn applied() {
    let _ = CURRENT.try_with(|place| place.borrow().own.applied.set());
}

/// Storage took an item's turn under its lock for the current call: the call has applied,
/// unless its storage said otherwise ([`apply_late`]). Called by `fanout::order`.
pub fn claimed() {
    let _ = CURRENT.try_with(|place| {
        let place = place.borrow();
        if place.apply_on_claim {
            place.own.applied.set();
        }
    });
}

/// The current call's storage takes item turns that do not mean the write has applied (it
/// may make more writes, or claim before it writes): the call counts as applied when the
/// storage returns.
pub fn apply_late() {
    let _ = CURRENT.try_with(|place| place.borrow_mut().apply_on_claim = false);
}

/// Waits, without the call's tenant turn, until the call before has emitted; marks the
/// current call applied first, so the next call need not wait for this one's emission to
/// apply. A call whose emission will be queued behind its sync need not wait for one queued
/// behind an earlier sync of the same log: the syncs answer in log order.
pub async fn before_emit() {
    applied();
    if let Some(before) = take_before() {
        after(&before).await;
    }
}

/// Waits (idle) until the call before has emitted, unless the current call's emission will be
/// queued behind the same log's syncs after it: its own later sync, or the earlier call's
/// sync joined.
async fn after(before: &Step) {
    if let Some(queued) = before.queued.get() {
        match synced::holding() {
            Some(log) if log == queued.log => return,
            None if synced::join(queued) => return,
            _ => {}
        }
    }
    crate::fair::idle(before.emitted.wait()).await;
}

/// The current call has emitted: the next call in its group may. Only after [`before_emit`].
/// If the call's event waits for its sync, so does this.
pub fn emitted() {
    let _ = CURRENT.try_with(|place| {
        let place = place.borrow();
        if place.before.is_some() || place.own.queued.get().is_some() {
            return;
        }
        match synced::share() {
            Some(shared) => {
                // Queued first: a later call that sees the mark knows this runs before its own.
                let own = place.own.clone();
                synced::after_sync(move |_| own.emitted.set());
                let _ = place.own.queued.set(shared);
            }
            None => place.own.emitted.set(),
        }
    });
}

fn take_before() -> Option<Arc<Step>> {
    CURRENT
        .try_with(|place| place.borrow_mut().before.take())
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::sync::oneshot;

    /// Runs a call in `place` that records "apply" and "emit" steps, waiting on `hold`
    /// between them (as a write waits for its sync).
    fn call(
        place: Place,
        n: u32,
        log: Arc<Mutex<Vec<String>>>,
        hold: oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(place.run(async move {
            log.lock().unwrap().push(format!("apply {n}"));
            claimed();
            let _ = hold.await;
            before_emit().await;
            log.lock().unwrap().push(format!("emit {n}"));
            emitted();
        }))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_apply_in_line_and_emit_in_line_while_their_waits_overlap() {
        let mut lines = Lines::default();
        let key = lines.key("s", "g");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (release1, hold1) = oneshot::channel();
        let (release2, hold2) = oneshot::channel();
        let first = call(lines.claim(key), 1, log.clone(), hold1);
        let second = call(lines.claim(key), 2, log.clone(), hold2);
        // The second applies while the first still waits: the waits overlap.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while log.lock().unwrap().len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the second never applied"
            );
            tokio::task::yield_now().await;
        }
        // The second's wait ends first, yet it emits after the first.
        release2.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(*log.lock().unwrap(), ["apply 1", "apply 2"]);
        release1.send(()).unwrap();
        first.await.unwrap();
        second.await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["apply 1", "apply 2", "emit 1", "emit 2"]
        );
    }

    #[tokio::test]
    async fn a_call_that_fails_before_applying_keeps_the_line() {
        let mut lines = Lines::default();
        let key = lines.key("s", "g");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (release1, hold1) = oneshot::channel();
        let first = call(lines.claim(key), 1, log.clone(), hold1);
        // The second ends at once, emitting nothing; the third still emits after the first.
        let failing = tokio::spawn(lines.claim(key).run(async {}));
        let (release3, hold3) = oneshot::channel();
        let third = call(lines.claim(key), 3, log.clone(), hold3);
        release3.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!log.lock().unwrap().contains(&"emit 3".to_owned()));
        release1.send(()).unwrap();
        for t in [first, failing, third] {
            t.await.unwrap();
        }
        assert_eq!(
            *log.lock().unwrap(),
            ["apply 1", "apply 3", "emit 1", "emit 3"]
        );
    }

    #[tokio::test]
    async fn other_groups_do_not_wait_and_finished_groups_are_forgotten() {
        let mut lines = Lines::default();
        let (a, b) = (lines.key("s", "a"), lines.key("s", "b"));
        let (_release, hold) = oneshot::channel::<()>();
        let log = Arc::new(Mutex::new(Vec::new()));
        let held = call(lines.claim(a), 1, log.clone(), hold);
        tokio::time::timeout(Duration::from_secs(5), lines.claim(b).run(async {}))
            .await
            .expect("group b did not wait for group a");
        for n in 0..200 {
            let key = lines.key("s", &format!("g{n}"));
            lines.claim(key).run(async {}).await;
        }
        assert!(lines.len() < 140, "{} groups kept", lines.len());
        held.abort();
    }
}
