//! Presence: who is subscribed to a group, for the streams a config opts in.
//!
//! A member is one connection in one group (Centrifugo's model): `client` names the
//! connection, `user` is its token's `sub` (null for an anonymous client), and `info` is what
//! the client sent with its join (at most `MAX_INFO_BYTES` of JSON, `MAX_INFO_DEPTH` deep). A
//! user with two tabs is two members with the same `user`. A connection is a member from its
//! first subscription to the group until its last one goes (a leave frame, or the socket
//! closing for any reason).
//!
//! The roster lives in the hub's group, under the group's lock, so a snapshot and the join
//! and leave frames after it are consistent. Only the first `max_members` (in join order)
//! are listed; the rest are counted but neither listed nor announced, so joining past the
//! bound costs O(1) and `count` stays exact. When a listed member leaves, the longest-waiting
//! unlisted one takes its place (a `join` frame announces it). Frames go only to the
//! connections that asked for them (`"presence": true`), through their bounded outboxes, and
//! carry no offset: presence is not part of the group's history.

use crate::fanout::frame::now_millis;
use crate::fanout::hub::ConnId;
use crate::tenants::patterns::StreamPatterns;
use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Members listed per group unless configured otherwise.
pub const DEFAULT_MAX_MEMBERS: usize = 1_000;
/// The most members a group may be configured to list.
pub const MAX_MEMBERS_CAP: usize = 10_000;
/// The largest `info` a client may join with, as encoded JSON.
pub const MAX_INFO_BYTES: usize = 1024;
/// The deepest `info` a client may join with (a scalar is depth 0, `{"a":1}` depth 1).
pub const MAX_INFO_DEPTH: usize = 4;

/// `presence: { streams, max_members }` in the stream module config or a tenant's; a key left
/// out keeps the value below it (the engine's, or none and the default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<StreamPatterns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_members: Option<usize>,
}

impl PresenceConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(max) = self.max_members
            && !(1..=MAX_MEMBERS_CAP).contains(&max)
        {
            anyhow::bail!(
                "presence.max_members {max} must be from 1 to {MAX_MEMBERS_CAP}; past it members are counted but not listed"
            );
        }
        Ok(())
    }

    /// These rules over `below`.
    pub fn over(&self, below: &PresenceRules) -> PresenceRules {
        PresenceRules {
            streams: self
                .streams
                .clone()
                .unwrap_or_else(|| below.streams.clone()),
            max_members: self.max_members.unwrap_or(below.max_members),
        }
    }
}

/// The rules in force for a hub: which streams keep presence, and how many members are listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRules {
    pub streams: StreamPatterns,
    pub max_members: usize,
}

impl Default for PresenceRules {
    /// No stream keeps presence until the config names it.
    fn default() -> Self {
        PresenceRules {
            streams: StreamPatterns::new(Vec::new()).expect("an empty list is valid"),
            max_members: DEFAULT_MAX_MEMBERS,
        }
    }
}

impl PresenceRules {
    pub fn enabled(&self, stream: &str) -> bool {
        self.streams.allows(stream)
    }
}

/// The error code for presence asked of a stream that does not keep it.
pub const NOT_ENABLED: &str = "presence_not_enabled";

pub fn not_enabled_message(stream: &str) -> String {
    format!(
        "stream `{stream}` does not keep presence; add it to `presence.streams` in the stream module's config (or the tenant's)"
    )
}

/// Checks a join's presence request: `watch` and `info` only on a stream that keeps presence,
/// and `info` within its bounds. Err is (code, message) for an error frame.
pub fn check_join(
    rules: &PresenceRules,
    stream: &str,
    watch: bool,
    info: Option<&Value>,
) -> Result<(), (&'static str, String)> {
    if (watch || info.is_some()) && !rules.enabled(stream) {
        return Err((NOT_ENABLED, not_enabled_message(stream)));
    }
    let Some(info) = info else { return Ok(()) };
    let bytes = info.to_string().len();
    if bytes > MAX_INFO_BYTES {
        let message = format!(
            "presence `info` is {bytes} bytes of JSON; at most {MAX_INFO_BYTES} are accepted: send an id and look the rest up"
        );
        return Err(("invalid_presence_info", message));
    }
    if depth(info) > MAX_INFO_DEPTH {
        let message =
            format!("presence `info` nests deeper than {MAX_INFO_DEPTH} levels; flatten it");
        return Err(("invalid_presence_info", message));
    }
    Ok(())
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A member as listed and announced, encoded once: snapshots are put together from the
/// members' encodings rather than re-encoding every member for every watcher.
pub fn member(conn: ConnId, sub: &str, info: Option<Value>) -> Arc<str> {
    let user = (!sub.is_empty()).then_some(sub);
    json!({"client": conn.to_string(), "user": user, "info": info})
        .to_string()
        .into()
}

/// A presence frame: a group frame with no item and no offset; `data` is encoded JSON.
pub fn frame(stream: &str, group: &str, data: &str) -> Utf8Bytes {
    let head = json!({
        "type": "stream",
        "timestamp": now_millis(),
        "streamName": stream,
        "groupId": group,
        "id": null,
    })
    .to_string();
    // `head` is an object: the event goes before its closing brace.
    let head = head.strip_suffix('}').unwrap_or(&head);
    let frame = format!(r#"{head},"event":{{"type":"presence","data":{data}}}}}"#);
    Utf8Bytes::from(frame)
}

/// The data of a `join` or `leave` frame.
pub fn change_data(action: &str, member: &str) -> String {
    format!(r#"{{"action":"{action}","member":{member}}}"#)
}

struct Entry {
    seq: u64,
    member: Arc<str>,
    listed: bool,
    /// The connection's subscriptions to the group that asked for presence frames.
    watching: Vec<String>,
}

/// A group's members.
#[derive(Default)]
pub struct Roster {
    entries: HashMap<ConnId, Entry>,
    /// Listed members by join order.
    listed: BTreeMap<u64, ConnId>,
    /// Members past `max_members`, by join order: the next to be listed first.
    waiting: BTreeMap<u64, ConnId>,
    /// Connections that get presence frames.
    watchers: BTreeSet<ConnId>,
    next_seq: u64,
}

/// A change to announce: `("join" | "leave", member)`.
pub type Change = (&'static str, Arc<str>);

impl Roster {
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// `{"action": action, "members", "count"}` as JSON: the listed members in join order,
    /// and how many there are in all.
    pub fn snapshot(&self, action: &str) -> String {
        let mut out = format!(
            r#"{{"action":"{action}","count":{},"members":["#,
            self.count()
        );
        let listed = self.listed.values().filter_map(|c| self.entries.get(c));
        for (i, e) in listed.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&e.member);
        }
        out.push_str("]}");
        out
    }

    pub fn watchers(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.watchers.iter().copied()
    }

    /// Adds the connection (a no-op when it is a member already, but for watching). Returns
    /// the member to announce when it is newly listed.
    pub fn join(
        &mut self,
        conn: ConnId,
        member: impl FnOnce() -> Arc<str>,
        max: usize,
    ) -> Option<Arc<str>> {
        if self.entries.contains_key(&conn) {
            return None;
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        let listed = self.listed.len() < max;
        let member = member();
        let announce = listed.then(|| member.clone());
        if listed {
            self.listed.insert(seq, conn);
        } else {
            self.waiting.insert(seq, conn);
        }
        let entry = Entry {
            seq,
            member,
            listed,
            watching: Vec::new(),
        };
        self.entries.insert(conn, entry);
        announce
    }

    /// Sets whether the connection's subscription `sub_id` gets presence frames.
    pub fn watch(&mut self, conn: ConnId, sub_id: &str, on: bool) {
        let Some(e) = self.entries.get_mut(&conn) else {
            return;
        };
        e.watching.retain(|s| s != sub_id);
        if on {
            e.watching.push(sub_id.to_owned());
        }
        if e.watching.is_empty() {
            self.watchers.remove(&conn);
        } else {
            self.watchers.insert(conn);
        }
    }

    /// Removes the connection; returns what to announce: its leave if it was listed, and the
    /// join of whoever takes its place.
    pub fn leave(&mut self, conn: ConnId, max: usize) -> Vec<Change> {
        self.watchers.remove(&conn);
        let Some(e) = self.entries.remove(&conn) else {
            return Vec::new();
        };
        if !e.listed {
            self.waiting.remove(&e.seq);
            return Vec::new();
        }
        self.listed.remove(&e.seq);
        let mut changes = vec![("leave", e.member)];
        while self.listed.len() < max {
            let Some((seq, next)) = self.waiting.pop_first() else {
                break;
            };
            if let Some(n) = self.entries.get_mut(&next) {
                n.listed = true;
                self.listed.insert(seq, next);
                changes.push(("join", n.member.clone()));
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u64) -> Arc<str> {
        member(n, &format!("u{n}"), None)
    }

    fn snapshot(r: &Roster) -> Value {
        serde_json::from_str(&r.snapshot("snapshot")).unwrap()
    }

    fn v(m: Arc<str>) -> Value {
        serde_json::from_str(&m).unwrap()
    }

    #[test]
    fn past_max_members_is_counted_not_listed_and_takes_a_freed_place() {
        let mut r = Roster::default();
        assert!(r.join(1, || m(1), 2).is_some());
        assert!(r.join(2, || m(2), 2).is_some(), "at the bound: listed");
        assert!(r.join(3, || m(3), 2).is_none(), "one past: not announced");
        assert!(
            r.join(3, || m(3), 2).is_none(),
            "a second join is no new member"
        );
        let listed = json!({"action": "snapshot", "members": [v(m(1)), v(m(2))], "count": 3});
        assert_eq!(snapshot(&r), listed);
        assert!(
            r.leave(3, 2).is_empty(),
            "an unlisted member leaves silently"
        );
        r.join(4, || m(4), 2);
        let changes = r.leave(1, 2);
        assert_eq!(changes, vec![("leave", m(1)), ("join", m(4))]);
        let listed = json!({"action": "snapshot", "members": [v(m(2)), v(m(4))], "count": 2});
        assert_eq!(snapshot(&r), listed);
    }

    #[test]
    fn frames_are_group_frames_with_the_data_as_given() {
        let member = member(7, "", Some(json!({"a": "}"})));
        let frame = frame("s", "g", &change_data("join", &member));
        let frame: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(frame["id"], Value::Null);
        assert_eq!(
            (&frame["streamName"], &frame["groupId"]),
            (&json!("s"), &json!("g"))
        );
        let data =
            json!({"action": "join", "member": {"client": "7", "user": null, "info": {"a": "}"}}});
        assert_eq!(frame["event"], json!({"type": "presence", "data": data}));
    }

    #[test]
    fn watching_follows_the_subscriptions_that_asked() {
        let mut r = Roster::default();
        r.join(1, || m(1), 10);
        r.watch(1, "a", true);
        r.watch(1, "b", true);
        r.watch(1, "a", false);
        assert_eq!(r.watchers().collect::<Vec<_>>(), vec![1]);
        r.watch(1, "b", false);
        assert_eq!(r.watchers().count(), 0);
    }

    #[test]
    fn info_is_bounded_at_the_limit_and_one_past() {
        let rules = PresenceRules {
            streams: StreamPatterns::all(),
            ..Default::default()
        };
        // `"` + n x + `"` is n + 2 bytes.
        let at = json!("x".repeat(MAX_INFO_BYTES - 2));
        assert!(check_join(&rules, "s", true, Some(&at)).is_ok());
        let over = json!("x".repeat(MAX_INFO_BYTES - 1));
        let err = check_join(&rules, "s", true, Some(&over)).unwrap_err();
        assert_eq!(err.0, "invalid_presence_info");
        assert!(err.1.contains("1025 bytes"), "{}", err.1);
        let deep = json!({"a": {"b": {"c": {"d": 1}}}});
        assert!(check_join(&rules, "s", false, Some(&deep)).is_ok());
        let deeper = json!({"a": {"b": {"c": {"d": [1]}}}});
        assert!(check_join(&rules, "s", false, Some(&deeper)).is_err());
        let off = PresenceRules::default();
        assert_eq!(
            check_join(&off, "s", true, None).unwrap_err().0,
            NOT_ENABLED
        );
        assert!(
            check_join(&off, "s", false, None).is_ok(),
            "no presence asked"
        );
    }

    /// `n` watchers join one group at once; the presence frames each queue got.
    fn burst(n: u64, max: usize) -> Vec<usize> {
        use crate::fanout::hub::Hub;
        use crate::fanout::outbox::Outbox;
        use crate::metrics::CloseCounters;
        let hub = Hub::default();
        hub.set_presence(PresenceRules {
            streams: StreamPatterns::all(),
            max_members: max,
        });
        let started = std::time::Instant::now();
        let mut queues = Vec::new();
        for conn in 1..=n {
            let (outbox, rx) = Outbox::new(4096, CloseCounters::default());
            hub.subscribe("s", "g", conn, &outbox, "a", None, None);
            hub.present("s", "g", conn, "a", true, || member(conn, "", None));
            hub.release("s", "g", conn, &outbox, "sync".into());
            queues.push(rx);
        }
        eprintln!("{n} watchers, max_members {max}: {:?}", started.elapsed());
        // Less the `sync` each queue starts with.
        queues.iter().map(|rx| rx.len() - 1).collect()
    }

    #[test]
    fn a_burst_of_joins_sends_each_watcher_its_snapshot_and_only_listed_joins_after_it() {
        // Watcher i gets its snapshot, then the joins of the listed members after it.
        let n = 1_000;
        for max in [1_000, 100] {
            let frames = burst(n, max);
            for (i, got) in frames.iter().enumerate() {
                assert_eq!(
                    *got,
                    1 + max.saturating_sub(i + 1),
                    "watcher {i}, max {max}"
                );
            }
            // At most max_members frames per watcher (all under its queue's 4096): the burst
            // costs n x max_members frames at most, not n x n.
            assert!(frames.iter().all(|f| *f <= max));
        }
    }

    #[test]
    fn max_members_is_bounded() {
        let ok = PresenceConfig {
            max_members: Some(MAX_MEMBERS_CAP),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        let over = PresenceConfig {
            max_members: Some(MAX_MEMBERS_CAP + 1),
            ..Default::default()
        };
        assert!(over.validate().is_err());
        let zero = PresenceConfig {
            max_members: Some(0),
            ..Default::default()
        };
        assert!(zero.validate().is_err());
    }
}
