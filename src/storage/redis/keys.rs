//! Where each tenant's items live in Redis, and the channel its events travel on.
//!
//! The `default` tenant keeps iii's layout exactly (spec §9), so iii nodes share its data:
//! hash `stream:{stream}:{group}`, order set `streamhost:order:{stream}:{group}`, channel
//! `stream::events`. That layout is ambiguous (stream `a:b` group `c` and stream `a` group
//! `b:c` are one key), as it is in iii.
//!
//! Every other tenant lives under `streamhost:tenant:{id}:`, which neither `stream:*` nor
//! `streamhost:order:*` matches, so neither the default tenant's scans nor iii ever see it:
//! hash `streamhost:tenant:{id}:stream:{s}:{g}`, order set `streamhost:tenant:{id}:order:{s}:{g}`,
//! channel `streamhost:tenant:{id}:events`, where `{s}` and `{g}` are the names with `%`
//! written `%25` and `:` written `%3A`. An encoded name holds no `:`, so the key splits back
//! into one stream and one group, and a SCAN for one stream's groups matches that stream only.
//! Tenant ids are 1 to 64 of `a-z 0-9 _ -`: no `:`, so no tenant's prefix is another's.

use anyhow::bail;

/// The tenant whose layout is iii's.
pub const DEFAULT_TENANT: &str = "default";
/// The channel of the default tenant, as iii names it.
pub const CHANNEL: &str = "stream::events";
const MAX_TENANT_ID: usize = 64;

/// One tenant's keys and channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpace {
    /// iii's layout.
    Default,
    /// `root` is `streamhost:tenant:{id}:`.
    Tenant { id: String, root: String },
}

impl KeySpace {
    /// The key space of `tenant`; an id outside `[a-z0-9_-]{1,64}` is refused, since it could
    /// reach into another tenant's keys.
    pub fn of(tenant: &str) -> anyhow::Result<KeySpace> {
        if tenant == DEFAULT_TENANT {
            return Ok(KeySpace::Default);
        }
        let valid = (1..=MAX_TENANT_ID).contains(&tenant.len())
            && tenant
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
        if !valid {
            bail!(
                "tenant id `{}` cannot name a Redis key space: use 1 to {MAX_TENANT_ID} characters of a-z, 0-9, `_` and `-`",
                tenant.escape_debug()
            );
        }
        Ok(KeySpace::Tenant {
            id: tenant.to_owned(),
            root: format!("streamhost:tenant:{tenant}:"),
        })
    }

    pub fn tenant(&self) -> &str {
        match self {
            KeySpace::Default => DEFAULT_TENANT,
            KeySpace::Tenant { id, .. } => id,
        }
    }

    /// The hash holding a group's items.
    pub fn group_key(&self, stream: &str, group: &str) -> String {
        match self {
            KeySpace::Default => format!("stream:{stream}:{group}"),
            KeySpace::Tenant { root, .. } => {
                format!("{root}stream:{}:{}", encode(stream), encode(group))
            }
        }
    }

    /// The sorted set holding a group's insertion order; never under a prefix that is scanned.
    pub fn order_key(&self, stream: &str, group: &str) -> String {
        match self {
            KeySpace::Default => format!("streamhost:order:{stream}:{group}"),
            KeySpace::Tenant { root, .. } => {
                format!("{root}order:{}:{}", encode(stream), encode(group))
            }
        }
    }

    /// The hash holding a group's `offset` and `epoch` (see `history`). Ours alone, so its
    /// names are encoded for every tenant: two groups never share a numbering.
    pub fn offsets_key(&self, stream: &str, group: &str) -> String {
        format!(
            "{}offset:{}:{}",
            self.own_root(),
            encode(stream),
            encode(group)
        )
    }

    /// The Redis stream holding a group's recent frames, by offset.
    pub fn history_key(&self, stream: &str, group: &str) -> String {
        format!(
            "{}history:{}:{}",
            self.own_root(),
            encode(stream),
            encode(group)
        )
    }

    /// The tenant's epoch generation: changed when events may have been numbered nowhere.
    pub fn generation_key(&self) -> String {
        format!("{}epoch", self.own_root())
    }

    /// A group's presence roster (see `presence`): a hash of members by `client`.
    pub fn roster_key(&self, stream: &str, group: &str) -> String {
        self.own_group_key("presence", stream, group)
    }

    /// A group's members in join order: a sorted set of `client`s scored by a count.
    pub fn roster_order_key(&self, stream: &str, group: &str) -> String {
        self.own_group_key("presence-order", stream, group)
    }

    /// A group's roster `ver`sion, join count (`seq`) and `max` listed.
    pub fn roster_meta_key(&self, stream: &str, group: &str) -> String {
        self.own_group_key("presence-meta", stream, group)
    }

    /// The tenant's nodes that have members, each scored by when it is dead unless renewed.
    pub fn presence_nodes_key(&self) -> String {
        format!("{}presence-nodes", self.own_root())
    }

    /// Followed by a node's name: the set of that node's members, for removal if it dies.
    pub fn presence_node_prefix(&self) -> String {
        format!("{}presence-node:", self.own_root())
    }

    /// The drains: sets of dead nodes' members still to be removed.
    pub fn presence_drains_key(&self) -> String {
        format!("{}presence-drains", self.own_root())
    }

    /// Followed by a node's name: its members still to be removed, once it was found dead.
    pub fn presence_drain_prefix(&self) -> String {
        format!("{}presence-drain:", self.own_root())
    }

    /// The channel of roster changes: apart from the events, so iii nodes never hear them.
    pub fn presence_channel(&self) -> String {
        format!("{}presence", self.own_root())
    }

    fn own_group_key(&self, kind: &str, stream: &str, group: &str) -> String {
        format!(
            "{}{kind}:{}:{}",
            self.own_root(),
            encode(stream),
            encode(group)
        )
    }

    /// Where keys only streamhost writes begin: `streamhost:` or the tenant's root.
    fn own_root(&self) -> &str {
        match self {
            KeySpace::Default => "streamhost:",
            KeySpace::Tenant { root, .. } => root,
        }
    }

    /// The pub/sub channel of this tenant's events.
    pub fn channel(&self) -> String {
        match self {
            KeySpace::Default => CHANNEL.to_owned(),
            KeySpace::Tenant { root, .. } => format!("{root}events"),
        }
    }

    /// The literal start of every group hash of the tenant.
    pub fn groups_prefix(&self) -> String {
        match self {
            KeySpace::Default => "stream:".to_owned(),
            KeySpace::Tenant { root, .. } => format!("{root}stream:"),
        }
    }

    /// The literal start of the group hashes of one stream.
    pub fn stream_prefix(&self, stream: &str) -> String {
        match self {
            KeySpace::Default => format!("stream:{stream}:"),
            KeySpace::Tenant { root, .. } => format!("{root}stream:{}:", encode(stream)),
        }
    }

    /// The group named by what follows `stream_prefix`; None for a key this layout never writes.
    pub fn group_of(&self, rest: &str) -> Option<String> {
        match self {
            KeySpace::Default => Some(rest.to_owned()),
            KeySpace::Tenant { .. } => decode(rest),
        }
    }

    /// The stream and group named by what follows `groups_prefix`.
    pub fn split(&self, rest: &str) -> Option<(String, String)> {
        // Default: `stream:{stream}:{group}` splits at the first `:`, as iii reads it.
        let (stream, group) = rest.split_once(':')?;
        match self {
            KeySpace::Default => Some((stream.to_owned(), group.to_owned())),
            KeySpace::Tenant { .. } => Some((decode(stream)?, decode(group)?)),
        }
    }
}

/// A name with `%` and `:` escaped, so that it holds no `:`.
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
    out
}

/// The inverse of `encode`; None for text that `encode` never produces.
fn decode(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(['%', ':']) {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3)? {
            "%25" => out.push('%'),
            "%3A" => out.push(':'),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_tenant_keeps_iiis_layout() {
        let keys = KeySpace::of("default").unwrap();
        assert_eq!(keys.group_key("a:b", "c"), "stream:a:b:c");
        assert_eq!(keys.order_key("s", "g"), "streamhost:order:s:g");
        assert_eq!(keys.channel(), "stream::events");
        assert_eq!(keys.stream_prefix("s"), "stream:s:");
        assert_eq!(keys.split("a:b:c"), Some(("a".into(), "b:c".into())));
        // Numbering keys are ours: names encoded, so `a:b`/`c` and `a`/`b:c` differ.
        assert_eq!(keys.offsets_key("a:b", "c"), "streamhost:offset:a%3Ab:c");
        assert_eq!(keys.history_key("a", "b:c"), "streamhost:history:a:b%3Ac");
        assert_eq!(keys.generation_key(), "streamhost:epoch");
        let t = KeySpace::of("t").unwrap();
        assert_eq!(t.offsets_key("s", "g"), "streamhost:tenant:t:offset:s:g");
        assert_eq!(t.generation_key(), "streamhost:tenant:t:epoch");
    }

    #[test]
    fn tenant_keys_name_stream_and_group_unambiguously() {
        let keys = KeySpace::of("t-1").unwrap();
        assert_eq!(
            keys.group_key("a:b", "c"),
            "streamhost:tenant:t-1:stream:a%3Ab:c"
        );
        assert_eq!(
            keys.group_key("a", "b:c"),
            "streamhost:tenant:t-1:stream:a:b%3Ac"
        );
        assert_eq!(
            keys.order_key("%", "%3A"),
            "streamhost:tenant:t-1:order:%25:%253A"
        );
        assert_eq!(keys.channel(), "streamhost:tenant:t-1:events");
        let names = ["", "a", ":", "%", "%3A", "a:b", "::%%", "{x}*?[\\", "é:%"];
        for stream in names {
            for group in names {
                let key = keys.group_key(stream, group);
                let rest = key.strip_prefix(&keys.groups_prefix()).unwrap();
                assert_eq!(
                    keys.split(rest),
                    Some((stream.to_owned(), group.to_owned()))
                );
                let rest = key.strip_prefix(&keys.stream_prefix(stream)).unwrap();
                assert_eq!(keys.group_of(rest), Some(group.to_owned()));
            }
        }
        // What `encode` never writes is not taken for a group.
        for stray in ["a:b", "%", "%2", "%41", "a%3a"] {
            assert_eq!(keys.group_of(stray), None, "{stray}");
        }
    }

    #[test]
    fn only_plain_tenant_ids_get_a_key_space() {
        for id in ["a", "tenant_2", "x-y", &"z".repeat(64)] {
            assert!(KeySpace::of(id).is_ok(), "{id}");
        }
        for id in ["", "A", "a:b", "a*", "a b", "é", &"z".repeat(65)] {
            let e = KeySpace::of(id).unwrap_err().to_string();
            assert!(e.contains("a-z, 0-9"), "{id}: {e}");
        }
    }
}
