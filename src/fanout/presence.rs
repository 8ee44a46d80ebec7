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
//!
//! Presence frames are deliveries like any other: counted in the frames delivered, and
//! charged to the tenant's `deliveries_per_second`. A frame cannot be refused once its cause
//! has happened (a leave unsent would leave a ghost in the others' lists), so a new member
//! pays at its join for everything its membership may send ([`join_cost`]); only the join is
//! ever refused, and a leave always goes out.

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

/// The longest `user` an auth function may give (as a token's `sub`).
pub const MAX_USER_BYTES: usize = 256;

/// The `user` an auth function's result names: its top-level `"user"` string, a streamhost
/// extension that iii ignores. `context` is never read: it is the app's, for its triggers,
/// and not meant to be shown to other clients. Err says what is wrong with it.
pub fn user_from_auth(result: &Value) -> Result<Option<String>, String> {
    match result.get("user") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(u)) if !u.is_empty() && u.len() <= MAX_USER_BYTES => Ok(Some(u.clone())),
        Some(Value::String(u)) => Err(format!(
            "the auth function's `user` is {} bytes; it must be 1 to {MAX_USER_BYTES}",
            u.len()
        )),
        Some(_) => Err("the auth function's `user` must be a string (or null)".into()),
    }
}

/// The presence frames a join may cost, charged to the tenant's `deliveries_per_second`
/// before it is made: a new member pays for its `join` and its later `leave` to every
/// connection watching the group now (listed or not: an unlisted member is announced when it
/// takes a freed place), and a subscription that watches, for its snapshot. As for writes,
/// the charge is taken from the group as it is at the join: a connection that starts watching
/// later gets the leave of each member already there unpaid, at most one frame per member,
/// which only a new (charged) join renews.
pub fn join_cost(member: bool, watchers: usize, watch: bool) -> usize {
    let announced = if member { 0 } else { 2 * watchers };
    announced + usize::from(watch)
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
/// members' encodings rather than re-encoding every member for every watcher. `client` is
/// the connection's id, prefixed with its node's name when rosters are shared by nodes.
pub fn member(client: &str, sub: &str, info: Option<Value>) -> Arc<str> {
    let user = (!sub.is_empty()).then_some(sub);
    json!({"client": client, "user": user, "info": info})
        .to_string()
        .into()
}

/// One change to a shared roster, as every node hears it: the group's version after it, its
/// member count, and what to announce (`join` or `leave`, the member's `client` and encoded
/// JSON), which is nothing for a member past `max_members`.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceChange {
    pub stream: String,
    pub group: String,
    pub version: u64,
    pub count: usize,
    pub changes: Vec<Announced>,
}

/// A listed member that joined or left.
#[derive(Debug, Clone, PartialEq)]
pub struct Announced {
    pub action: &'static str,
    pub client: String,
    pub member: Arc<str>,
}

/// A join to a shared roster as made: the roster's version after it, and the change it
/// published (None when the client was a member already), which the joining node applies at
/// once rather than wait to hear it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinedRoster {
    pub version: u64,
    pub change: Option<PresenceChange>,
    /// The backend had lost this node's members (cut off past its ttl, or data lost): every
    /// mirror must load again, and the change is in the new load.
    pub lost: bool,
}

/// A shared roster as read at one version: the listed members (client, encoded member) in
/// join order, and how many members there are in all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedRoster {
    pub version: u64,
    pub count: usize,
    pub listed: Vec<(String, Arc<str>)>,
}

/// `{"action", "count", "members"}` as JSON, from members' encodings.
pub fn listing<'a>(action: &str, count: usize, members: impl Iterator<Item = &'a str>) -> String {
    let mut out = format!(r#"{{"action":"{action}","count":{count},"members":["#);
    for (i, m) in members.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(m);
    }
    out.push_str("]}");
    out
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
        listing(action, self.count(), self.listed())
    }

    /// The listed members' encodings, in join order.
    pub fn listed(&self) -> impl Iterator<Item = &str> {
        let listed = self.listed.values().filter_map(|c| self.entries.get(c));
        listed.map(|e| &*e.member)
    }

    pub fn contains(&self, conn: ConnId) -> bool {
        self.entries.contains_key(&conn)
    }

    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
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
#[path = "presence_tests.rs"]
mod tests;
