//! The hub's side of presence (see `presence`, and `mirror` for rosters shared by nodes):
//! members and watchers are kept in each group, under its lock, beside its subscribers, so a
//! watcher's snapshot and the joins and leaves after it follow one another exactly.
//!
//! On one node the group's `Roster` decides everything. When the nodes share rosters (Redis),
//! a socket becomes a member in the shared roster before its subscription is made
//! (`join_shared`), the group's `Mirror` follows the changes the bus hands back, and a roster
//! the mirror may have missed changes of is loaded again in the background (`reload`).

use super::*;
use crate::fanout::mirror::Applied;
use crate::fanout::presence::{PresenceChange, SharedRoster};
use crate::storage::SharedPresence;

impl Hub {
    /// Sets which streams keep presence and how many members each group lists.
    pub fn set_presence(&self, rules: PresenceRules) {
        *self.presence.write().unwrap() = rules;
    }

    pub fn presence_rules(&self) -> PresenceRules {
        self.presence.read().unwrap().clone()
    }

    /// The members listed per group of `stream`; None when it does not keep presence.
    fn presence_max(&self, stream: &str) -> Option<usize> {
        let rules = self.presence.read().unwrap();
        rules.enabled(stream).then_some(rules.max_members)
    }

    /// Makes a subscribed socket a member of the group, if its stream keeps presence: other
    /// watchers hear of it, and with `watch` the subscription gets the group's snapshot (held
    /// behind its `sync` like any frame) and then its joins and leaves.
    pub fn present(
        &self,
        stream: &str,
        group: &str,
        conn: ConnId,
        sub_id: &str,
        watch: bool,
        member: impl FnOnce(&str) -> Arc<str>,
    ) {
        let Some(max) = self.presence_max(stream) else {
            return;
        };
        let sent = self.shared.with_group(stream, group, |g| {
            let mut sent = 0;
            if let Some(joined) = g.roster.join(conn, || member(&conn.to_string()), max) {
                let data = presence::change_data("join", &joined);
                sent += tell(g, &presence::frame(stream, group, &data));
            }
            g.roster.watch(conn, sub_id, watch);
            if let (true, Some(sub)) = (watch, g.subs.get_mut(&conn)) {
                let data = g.roster.snapshot("snapshot");
                sent += usize::from(sub.deliver(presence::frame(stream, group, &data), None, None));
            }
            sent
        });
        self.presence_sent(sent);
    }

    /// What a join of `conn` to the group would cost in presence frames now (see
    /// [`presence::join_cost`]); 0 on a stream that does not keep presence.
    pub fn presence_cost(&self, stream: &str, group: &str, conn: ConnId, watch: bool) -> usize {
        if !self.presence.read().unwrap().enabled(stream) {
            return 0;
        }
        let groups = self.shared.groups.read().unwrap();
        let (member, watchers) =
            groups
                .get(stream)
                .and_then(|g| g.get(group))
                .map_or((false, 0), |g| {
                    let g = g.lock().unwrap();
                    let member = g.roster.contains(conn) || g.mirror.client_of(conn).is_some();
                    (member, g.roster.watcher_count() + g.mirror.watcher_count())
                });
        presence::join_cost(member, watchers, watch)
    }

    /// Counts presence frames queued: among the frames delivered, and on their own.
    pub(super) fn presence_sent(&self, n: usize) {
        count_presence(&self.counters, n);
    }

    /// `{members, count}` of a group of a stream that keeps presence; None when it does not.
    /// Over shared rosters it is read from them (every node's members), which may fail.
    pub async fn members(
        &self,
        stream: &str,
        group: &str,
    ) -> Option<anyhow::Result<serde_json::Value>> {
        let max = self.presence_max(stream)?;
        if let Some(shared) = self.sharing.get() {
            let roster = shared.roster(stream, group, max).await;
            return Some(roster.and_then(|r| listing(r.count, r.listed.iter().map(|(_, m)| &**m))));
        }
        let groups = self.shared.groups.read().unwrap();
        let g = groups.get(stream).and_then(|g| g.get(group));
        Some(match g {
            Some(g) => {
                let g = g.lock().unwrap();
                listing(g.roster.count(), g.roster.listed())
            }
            None => listing(0, std::iter::empty()),
        })
    }

    /// Rosters shared by the nodes, when they are.
    pub fn shared_presence(&self) -> Option<&Arc<dyn SharedPresence>> {
        self.sharing.get()
    }

    /// Over shared rosters, makes the socket a member of the group before its subscription is
    /// made (`subscribe`, then `watch_shared`), loading the group's roster first when this node
    /// holds none. Returns the version a snapshot for it must wait for; 0 when there is nothing
    /// to wait for (a member already, or a stream that does not keep presence). An error means
    /// the shared roster could not be read or changed: the join must not be made.
    pub async fn join_shared(
        &self,
        stream: &str,
        group: &str,
        conn: ConnId,
        member: impl FnOnce(&str) -> Arc<str>,
    ) -> anyhow::Result<u64> {
        let Some(shared) = self.sharing.get() else {
            return Ok(0);
        };
        let Some(max) = self.presence_max(stream) else {
            return Ok(0);
        };
        // Made a member here first, in the same step as the load is asked for, so the mirror
        // cannot be dropped between the two (a mirror with a member is kept).
        let client = format!("{}.{conn}", shared.node());
        let (load, member_already) = self.shared.with_group(stream, group, |g| {
            let member_already = g.mirror.client_of(conn).is_some();
            if !member_already {
                g.mirror.add_member(conn, client.clone());
            }
            (g.mirror.start_loading(), member_already)
        });
        let undo = |e: anyhow::Error| {
            if !member_already {
                self.shared.with_group(stream, group, |g| {
                    g.mirror.remove_member(conn);
                    g.mirror.idle_if_unused();
                });
                // In case it was made after all and only the reply was lost.
                shared.leave(stream, group, &client, max);
            }
            Err(e)
        };
        if let Some(generation) = load {
            match shared.roster(stream, group, max).await {
                Ok(roster) => self.install(stream, group, generation, roster),
                Err(e) => return undo(e),
            }
        }
        if member_already {
            return Ok(0);
        }
        match shared
            .join(stream, group, &client, member(&client), max)
            .await
        {
            Ok(joined) => {
                if joined.lost {
                    // The backend's versions are not the mirrors' any more: every mirror loads
                    // again (this join included), and its watchers get new snapshots.
                    self.presence_lost();
                } else if let Some(change) = joined.change {
                    // Applied now rather than when heard: the joiner's snapshot waits for it.
                    self.apply_change(change, true);
                }
                Ok(joined.version)
            }
            Err(e) => undo(e),
        }
    }

    /// Installs a roster that a load of `generation` read, and tells the watchers.
    fn install(&self, stream: &str, group: &str, generation: u64, roster: SharedRoster) {
        let (sent, reload) = self.shared.with_group(stream, group, |g| {
            let applied = g.mirror.install(generation, roster);
            let reload = applied.reload;
            (announce(g, stream, group, applied), reload)
        });
        self.presence_sent(sent);
        if reload {
            self.reload(stream, group);
        }
    }

    /// Over shared rosters, sets whether subscription `sub_id` (made after `join_shared`) gets
    /// presence frames: a snapshot once the mirror holds version `due`, then every change.
    pub fn watch_shared(
        &self,
        stream: &str,
        group: &str,
        conn: ConnId,
        sub_id: &str,
        watch: bool,
        due: u64,
    ) {
        if self.sharing.get().is_none() || !self.presence.read().unwrap().enabled(stream) {
            return;
        }
        let sent = self.shared.with_group(stream, group, |g| {
            g.mirror.watch(conn, sub_id, watch, due);
            snapshots_due(g, stream, group)
        });
        self.presence_sent(sent);
    }

    /// Applies a change to a shared roster, heard from the bus, to this node's mirror of it
    /// (if it keeps one), and tells the group's watchers.
    pub fn presence_heard(&self, change: PresenceChange) {
        self.apply_change(change, false);
    }

    /// Applies a change heard, or `made` by this node's own join.
    fn apply_change(&self, change: PresenceChange, made: bool) {
        let (stream, group) = (change.stream.clone(), change.group.clone());
        let reload = {
            let groups = self.shared.groups.read().unwrap();
            let Some(g) = groups.get(&stream).and_then(|g| g.get(&group)) else {
                return;
            };
            let mut g = g.lock().unwrap();
            let applied = match made {
                true => g.mirror.made(change),
                false => g.mirror.heard(change),
            };
            let reload = applied.reload;
            self.presence_sent(announce(&mut g, &stream, &group, applied));
            reload
        };
        if reload {
            self.reload(&stream, &group);
        }
    }

    /// Loads every mirrored roster again, after changes may have been missed (the bus lost
    /// its connection); each watcher then gets a new snapshot.
    pub fn presence_lost(&self) {
        if self.sharing.get().is_none() {
            return;
        }
        let mut lost = Vec::new();
        {
            let groups = self.shared.groups.read().unwrap();
            for (stream, by_group) in groups.iter() {
                for (group, g) in by_group {
                    if g.lock().unwrap().mirror.lost() {
                        lost.push((stream.clone(), group.clone()));
                    }
                }
            }
        }
        for (stream, group) in lost {
            self.reload(&stream, &group);
        }
    }

    /// Loads a group's shared roster again in the background, retrying until it is loaded or
    /// no longer needed.
    fn reload(&self, stream: &str, group: &str) {
        let Some(presence) = self.sharing.get().cloned() else {
            return;
        };
        let max = self.presence.read().unwrap().max_members;
        tokio::spawn(reload_roster(
            Arc::downgrade(&self.shared),
            presence,
            self.counters.clone(),
            (stream.to_owned(), group.to_owned()),
            max,
        ));
    }
}

/// Queues a presence frame for every socket of the group that watches its presence; returns
/// how many it was queued for.
pub(super) fn tell(g: &mut Group, frame: &Utf8Bytes) -> usize {
    let mut n = 0;
    for conn in g.roster.watchers() {
        if let Some(sub) = g.subs.get_mut(&conn) {
            n += usize::from(sub.deliver(frame.clone(), None, None));
        }
    }
    n
}

/// Queues the change frames of a mirror's change for its live watchers, then the snapshots
/// that are due; returns how many frames were queued.
fn announce(g: &mut Group, stream: &str, group: &str, applied: Applied) -> usize {
    let mut n = 0;
    for data in &applied.changes {
        let frame = presence::frame(stream, group, data);
        let live: Vec<ConnId> = g.mirror.live_watchers().collect();
        for conn in live {
            if let Some(sub) = g.subs.get_mut(&conn) {
                n += usize::from(sub.deliver(frame.clone(), None, None));
            }
        }
    }
    n + snapshots_due(g, stream, group)
}

/// Queues the mirror's snapshot for each watcher whose snapshot is due.
fn snapshots_due(g: &mut Group, stream: &str, group: &str) -> usize {
    let due = g.mirror.take_due();
    if due.is_empty() {
        return 0;
    }
    let frame = presence::frame(stream, group, &g.mirror.snapshot("snapshot"));
    let mut n = 0;
    for conn in due {
        if let Some(sub) = g.subs.get_mut(&conn) {
            n += usize::from(sub.deliver(frame.clone(), None, None));
        }
    }
    n
}

/// `{members, count}` for `stream::presence`, from the members' encodings (which a shared
/// roster's backend may hold corrupted).
fn listing<'a>(
    count: usize,
    members: impl Iterator<Item = &'a str>,
) -> anyhow::Result<serde_json::Value> {
    let members = members
        .map(serde_json::from_str)
        .collect::<Result<Vec<serde_json::Value>, _>>()
        .map_err(|e| anyhow::anyhow!("a presence member in the roster is not JSON: {e}"))?;
    Ok(serde_json::json!({"members": members, "count": count}))
}

fn count_presence(counters: &FanoutCounters, n: usize) {
    let n = n as u64;
    counters.delivered.inc_by(n);
    counters.tenant_delivered.inc_by(n);
    counters.tenant_presence.inc_by(n);
}

/// Loads a mirror's roster while it waits for one (see `Hub::reload`), with backoff while the
/// backend cannot be read.
async fn reload_roster(
    hub: Weak<Shared>,
    presence: Arc<dyn SharedPresence>,
    counters: FanoutCounters,
    (stream, group): (String, String),
    max: usize,
) {
    let mut wait = Duration::from_millis(50);
    loop {
        let generation = {
            let Some(hub) = hub.upgrade() else { return };
            let groups = hub.groups.read().unwrap();
            let Some(g) = groups.get(&stream).and_then(|g| g.get(&group)) else {
                return;
            };
            let Some(generation) = g.lock().unwrap().mirror.loading() else {
                return;
            };
            generation
        };
        let roster = presence.roster(&stream, &group, max).await;
        let Some(hub) = hub.upgrade() else { return };
        let done = {
            let groups = hub.groups.read().unwrap();
            let Some(g) = groups.get(&stream).and_then(|g| g.get(&group)) else {
                return;
            };
            let mut g = g.lock().unwrap();
            match roster {
                Ok(roster) => {
                    let applied = g.mirror.install(generation, roster);
                    let again = applied.reload;
                    count_presence(&counters, announce(&mut g, &stream, &group, applied));
                    !again
                }
                Err(e) => {
                    tracing::warn!(stream, group, error = %format!("{e:#}"), "cannot load the group's presence roster; its watchers get a snapshot once it loads");
                    false
                }
            }
        };
        if !done {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}
