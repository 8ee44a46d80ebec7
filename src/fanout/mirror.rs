//! A node's copy of a group's shared presence roster (`storage::SharedPresence`, e.g. Redis).
//!
//! When nodes share rosters, the backend orders every join and leave of every node, numbers
//! them per group (`version`), decides who is listed, and tells every node. A node keeps a
//! mirror only of the groups its own clients are in: it loads the roster at the first local
//! join, applies the changes it hears in version order, and forgets it all when its last
//! local member leaves. Its watchers get a snapshot from the mirror and then the changes
//! applied after it, under the group's lock, so what a watcher sees is always one version
//! followed by the next.
//!
//! Changes heard while the roster is being loaded are kept and applied after it, those the
//! load already covers skipped. A version that skips one (a message lost while pub/sub
//! reconnected) means the mirror may be wrong: it loads again, and every watcher gets a new
//! snapshot. A joiner's own snapshot waits until the mirror holds its join (`due`), so a
//! member is in its own snapshot and is not announced to itself.

use crate::fanout::hub::ConnId;
use crate::fanout::presence::{self, PresenceChange, SharedRoster};
use std::collections::HashMap;
use std::sync::Arc;

/// Changes kept while a roster loads; past this they are dropped and the roster is loaded
/// again after the load under way (which may not cover them).
const MAX_PENDING: usize = 4_096;

#[derive(Default)]
pub struct Mirror {
    state: State,
    /// Counts the loads asked for: a load's roster is taken only if no later load (after a
    /// loss) was asked since it started.
    generation: u64,
    count: usize,
    /// Listed members, (client, encoded member), in join order.
    listed: Vec<(String, Arc<str>)>,
    /// This node's connections that are members, and their `client`.
    members: HashMap<ConnId, String>,
    /// This node's connections that get presence frames.
    watchers: HashMap<ConnId, Watcher>,
}

#[derive(Default)]
enum State {
    /// No local member: changes heard are not this node's business.
    #[default]
    Idle,
    /// A load is on its way; what is heard meanwhile waits for it (None: too much was heard,
    /// load again after).
    Loading(Option<Vec<PresenceChange>>),
    Loaded(u64),
}

struct Watcher {
    /// The connection's subscriptions to the group that asked for presence frames.
    subs: Vec<String>,
    /// The version the mirror must reach before the watcher's snapshot is sent; None once it
    /// was sent (the watcher then gets every change).
    due: Option<u64>,
}

/// What applying a change or a load gives: change frames' data for the live watchers, and
/// whether the roster must be loaded again.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub changes: Vec<String>,
    pub reload: bool,
}

impl Mirror {
    pub fn loaded(&self) -> bool {
        matches!(self.state, State::Loaded(_))
    }

    /// Whether the group must be kept for the mirror: a local member, or a load under way.
    pub fn in_use(&self) -> bool {
        !self.members.is_empty() || !self.watchers.is_empty() || self.loading().is_some()
    }

    /// Readies the mirror for a load unless it holds the roster already; the load's
    /// generation when one is needed.
    pub fn start_loading(&mut self) -> Option<u64> {
        match self.state {
            State::Loaded(_) => None,
            State::Loading(_) => Some(self.generation),
            State::Idle => Some(self.load_again(Vec::new())),
        }
    }

    /// The generation of the load under way, if one is.
    pub fn loading(&self) -> Option<u64> {
        matches!(self.state, State::Loading(_)).then_some(self.generation)
    }

    fn load_again(&mut self, pending: Vec<PresenceChange>) -> u64 {
        self.state = State::Loading(Some(pending));
        self.generation += 1;
        self.generation
    }

    /// Takes the roster a load of `generation` read, unless the mirror holds one already
    /// (the changes heard since bring it on) or a later load was asked; then what was heard
    /// during the load. Every watcher gets a snapshot.
    pub fn install(&mut self, generation: u64, roster: SharedRoster) -> Applied {
        if generation != self.generation {
            return Applied::default();
        }
        let (pending, overflowed) = match std::mem::take(&mut self.state) {
            State::Loaded(v) => {
                self.state = State::Loaded(v);
                return Applied::default();
            }
            State::Loading(Some(pending)) => (pending, false),
            State::Loading(None) => (Vec::new(), true),
            State::Idle => (Vec::new(), false),
        };
        self.count = roster.count;
        self.listed = roster.listed;
        self.state = State::Loaded(roster.version);
        for w in self.watchers.values_mut() {
            w.due.get_or_insert(0);
        }
        let mut pending = pending;
        pending.sort_by_key(|c| c.version);
        let mut out = Applied::default();
        for change in pending {
            let heard = self.heard(change);
            out.reload |= heard.reload;
            if out.reload {
                break;
            }
        }
        if overflowed && !out.reload {
            self.load_again(Vec::new());
            out.reload = true;
        }
        // Every watcher is due a snapshot: change frames would repeat it.
        out.changes.clear();
        out
    }

    /// Applies a change heard from the backend.
    pub fn heard(&mut self, change: PresenceChange) -> Applied {
        let version = match &mut self.state {
            State::Idle => return Applied::default(),
            State::Loading(pending) => {
                match pending {
                    Some(p) if p.len() >= MAX_PENDING => *pending = None,
                    Some(p) => p.push(change),
                    None => {}
                }
                return Applied::default();
            }
            State::Loaded(version) => *version,
        };
        if change.version <= version {
            return Applied::default();
        }
        if change.version > version + 1 {
            self.load_again(vec![change]);
            return Applied {
                changes: Vec::new(),
                reload: true,
            };
        }
        self.state = State::Loaded(change.version);
        self.count = change.count;
        let mut changes = Vec::with_capacity(change.changes.len());
        for a in change.changes {
            self.listed.retain(|(client, _)| *client != a.client);
            if a.action == "join" {
                self.listed.push((a.client, a.member.clone()));
            }
            changes.push(presence::change_data(a.action, &a.member));
        }
        Applied {
            changes,
            reload: false,
        }
    }

    /// Applies the change of a join this node made, unless changes before it have yet to be
    /// heard: then it waits to be heard in its turn, rather than look like a gap.
    pub fn made(&mut self, change: PresenceChange) -> Applied {
        match self.state {
            State::Loaded(version) if change.version > version + 1 => Applied::default(),
            _ => self.heard(change),
        }
    }

    /// Starts loading again after changes may have been lost, or the backend's versions
    /// started again; false when there is nothing to load (no local member). Every watcher
    /// then gets a snapshot of the new load, whatever version it was waiting for.
    pub fn lost(&mut self) -> bool {
        if matches!(self.state, State::Idle) {
            return false;
        }
        self.load_again(Vec::new());
        for w in self.watchers.values_mut() {
            w.due = Some(0);
        }
        true
    }

    pub fn client_of(&self, conn: ConnId) -> Option<&str> {
        self.members.get(&conn).map(String::as_str)
    }

    pub fn add_member(&mut self, conn: ConnId, client: String) {
        self.members.insert(conn, client);
    }

    /// Forgets a local member; returns its `client`, for the leave.
    pub fn remove_member(&mut self, conn: ConnId) -> Option<String> {
        self.watchers.remove(&conn);
        self.members.remove(&conn)
    }

    /// Forgets the roster when no local connection is in the group any more.
    pub fn idle_if_unused(&mut self) {
        if self.members.is_empty() && self.watchers.is_empty() {
            *self = Mirror::default();
        }
    }

    /// Sets whether the connection's subscription `sub_id` gets presence frames; a watching
    /// subscription is sent a snapshot once the mirror reaches `due`.
    pub fn watch(&mut self, conn: ConnId, sub_id: &str, on: bool, due: u64) {
        let w = self.watchers.entry(conn).or_insert(Watcher {
            subs: Vec::new(),
            due: None,
        });
        w.subs.retain(|s| s != sub_id);
        if on {
            w.subs.push(sub_id.to_owned());
            w.due = Some(w.due.map_or(due, |d| d.max(due)));
        }
        if w.subs.is_empty() {
            self.watchers.remove(&conn);
        }
    }

    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// The watchers that get change frames now (their snapshot is out).
    pub fn live_watchers(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.watchers
            .iter()
            .filter(|(_, w)| w.due.is_none())
            .map(|(c, _)| *c)
    }

    /// The watchers whose snapshot is due now; they are live from here on.
    pub fn take_due(&mut self) -> Vec<ConnId> {
        let State::Loaded(version) = self.state else {
            return Vec::new();
        };
        let mut due = Vec::new();
        for (conn, w) in &mut self.watchers {
            if w.due.is_some_and(|d| d <= version) {
                w.due = None;
                due.push(*conn);
            }
        }
        due
    }

    /// `{"action", "count", "members"}` of the mirror now.
    pub fn snapshot(&self, action: &str) -> String {
        let members = self.listed.iter().map(|(_, m)| &**m);
        presence::listing(action, self.count, members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::presence::Announced;

    fn change(version: u64, count: usize, action: &'static str, client: &str) -> PresenceChange {
        PresenceChange {
            stream: "s".into(),
            group: "g".into(),
            version,
            count,
            changes: vec![Announced {
                action,
                client: client.into(),
                member: format!(r#"{{"client":"{client}"}}"#).into(),
            }],
        }
    }

    fn roster(version: u64, clients: &[&str]) -> SharedRoster {
        SharedRoster {
            version,
            count: clients.len(),
            listed: clients
                .iter()
                .map(|c| (c.to_string(), format!(r#"{{"client":"{c}"}}"#).into()))
                .collect(),
        }
    }

    #[test]
    fn changes_heard_during_a_load_apply_after_it_and_those_it_covers_are_skipped() {
        let mut m = Mirror::default();
        let load = m.start_loading().unwrap();
        m.add_member(1, "n.1".into());
        // Heard before the load's reply: version 3 is in the load, 4 is not.
        m.heard(change(3, 1, "join", "a"));
        m.heard(change(4, 2, "join", "b"));
        m.watch(1, "s1", true, 0);
        assert_eq!(m.install(load, roster(3, &["a"])), Applied::default());
        assert_eq!(m.take_due(), vec![1]);
        assert_eq!(
            m.snapshot("snapshot"),
            r#"{"action":"snapshot","count":2,"members":[{"client":"a"},{"client":"b"}]}"#
        );
        let left = m.heard(change(5, 1, "leave", "a"));
        assert_eq!(
            left.changes,
            vec![r#"{"action":"leave","member":{"client":"a"}}"#]
        );
        assert_eq!(m.live_watchers().collect::<Vec<_>>(), vec![1]);
        // Heard twice (a reload raced it): once only.
        assert_eq!(m.heard(change(5, 1, "leave", "a")), Applied::default());
    }

    #[test]
    fn a_skipped_version_loads_again_and_every_watcher_gets_a_new_snapshot() {
        let mut m = Mirror::default();
        let load = m.start_loading().unwrap();
        m.add_member(1, "n.1".into());
        m.watch(1, "s1", true, 0);
        m.install(load, roster(1, &["n.1"]));
        assert_eq!(m.take_due(), vec![1]);
        let gap = m.heard(change(3, 2, "join", "c"));
        assert!(gap.reload && gap.changes.is_empty());
        assert!(!m.loaded());
        // Until loaded again, nothing is announced; a load from before the gap is not taken.
        assert_eq!(m.heard(change(4, 1, "leave", "c")), Applied::default());
        assert_eq!(m.install(load, roster(1, &["n.1"])), Applied::default());
        assert!(!m.loaded());
        m.install(m.loading().unwrap(), roster(3, &["n.1", "c"]));
        assert_eq!(m.take_due(), vec![1]);
        assert_eq!(
            m.snapshot("snapshot"),
            r#"{"action":"snapshot","count":1,"members":[{"client":"n.1"}]}"#
        );
    }

    #[test]
    fn a_joiners_snapshot_waits_for_its_own_join() {
        let mut m = Mirror::default();
        let load = m.start_loading().unwrap();
        m.install(load, roster(4, &[]));
        m.add_member(9, "n.9".into());
        m.watch(9, "s", true, 5);
        assert!(m.take_due().is_empty());
        // Its own join is applied, not announced to it.
        m.heard(change(5, 1, "join", "n.9"));
        assert_eq!(m.take_due(), vec![9]);
        assert!(m.snapshot("snapshot").contains("n.9"));
    }

    #[test]
    fn the_mirror_is_forgotten_with_its_last_local_member() {
        let mut m = Mirror::default();
        let load = m.start_loading().unwrap();
        m.add_member(1, "n.1".into());
        m.install(load, roster(2, &["x"]));
        assert_eq!(m.remove_member(1).as_deref(), Some("n.1"));
        m.idle_if_unused();
        assert!(!m.loaded());
        assert_eq!(m.heard(change(3, 0, "leave", "x")), Applied::default());
        assert!(m.start_loading().is_some());
    }

    #[test]
    fn after_a_loss_a_load_from_before_is_refused_and_every_watcher_gets_a_snapshot() {
        let mut m = Mirror::default();
        let load = m.start_loading().unwrap();
        m.add_member(1, "n.1".into());
        m.install(load, roster(57, &["n.1"]));
        m.watch(1, "s", true, 58);
        // Redis lost its data: versions start again, below what the watcher waited for.
        let before = m.start_loading();
        assert_eq!(before, None);
        assert!(m.lost());
        let stale = m.loading().unwrap() - 1;
        assert_eq!(m.install(stale, roster(57, &["n.1"])), Applied::default());
        m.install(m.loading().unwrap(), roster(1, &["n.1"]));
        assert_eq!(m.take_due(), vec![1]);
        assert_eq!(m.heard(change(2, 2, "join", "b")).changes.len(), 1);
    }

    #[test]
    fn too_much_heard_during_a_load_loads_again() {
        let mut m = Mirror::default();
        let load = m.start_loading().unwrap();
        m.add_member(1, "n.1".into());
        for v in 1..=(MAX_PENDING as u64 + 1) {
            m.heard(change(v, 1, "join", "x"));
        }
        let applied = m.install(load, roster(0, &[]));
        assert!(applied.reload);
        assert!(m.loading().is_some());
    }
}
