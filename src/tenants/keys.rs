//! Worker keys: how a worker proves which tenant it belongs to.
//!
//! A key is 32 random bytes from the operating system, base64url-encoded behind a `shk_`
//! prefix (so a leaked key is easy to find with grep or a secret scanner). The engine keeps
//! only its SHA-256 digest: a copy of the config or of the admin API's answers cannot be used
//! to connect. Since the keys are random, a plain hash is enough; a slow password hash would
//! only slow every worker connection down.
//!
//! A presented key is hashed and compared with every known digest in constant time, without
//! stopping at the first match, so the time taken says nothing about how close a guess was
//! or which tenant it was near. Key material is never logged or put in an error, not even
//! when a clear key is pasted where its digest belongs.

use super::config::TenantId;
use base64::Engine as _;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Every generated key starts with this.
pub const KEY_PREFIX: &str = "shk_";
/// A presented key longer than this is refused unhashed: real keys are 47 bytes.
pub const MAX_PRESENTED_KEY_BYTES: usize = 512;

/// A new worker key: `shk_` and 32 random bytes from the OS, base64url without padding.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    // The OS random source failing is not something to serve on: no key is better than a
    // guessable one.
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The SHA-256 of a key, as lowercase hex: what the config and the admin API store.
pub fn hash_key(clear: &str) -> String {
    let digest = Sha256::digest(clear.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    hex
}

/// The longest worker key name.
pub const MAX_NAME_BYTES: usize = 64;

/// A worker key as the config and the admin API store it: its SHA-256 digest (lowercase
/// hex) and an optional name. Written either as the bare digest or as
/// `{ sha256: ..., name: ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerKeyConfig {
    pub sha256: String,
    pub name: Option<String>,
}

impl WorkerKeyConfig {
    pub fn new(sha256: &str, name: Option<String>) -> Result<Self, String> {
        if let Some(n) = &name
            && (n.is_empty() || n.len() > MAX_NAME_BYTES || n.chars().any(char::is_control))
        {
            return Err(format!(
                "a worker key name must be 1 to {MAX_NAME_BYTES} printable characters"
            ));
        }
        Ok(WorkerKeyConfig {
            sha256: normalize_digest(sha256)?,
            name,
        })
    }
}

/// Lowercase hex of 64 digits. The value itself is never echoed: if someone pasted a clear
/// key here, it must not end up in a log.
fn normalize_digest(digest: &str) -> Result<String, String> {
    if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(digest.to_ascii_lowercase());
    }
    let hint = if digest.starts_with(KEY_PREFIX) {
        "this looks like a clear worker key: store its digest (`echo -n KEY | sha256sum`) and keep the key itself out of the config"
    } else {
        "store the SHA-256 digest of the key (`echo -n KEY | sha256sum`)"
    };
    Err(format!(
        "a worker key must be a SHA-256 digest of 64 hex digits, not a {}-character value; {hint}",
        digest.chars().count()
    ))
}

impl Serialize for WorkerKeyConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Named<'a> {
            sha256: &'a str,
            name: &'a str,
        }
        match &self.name {
            None => s.serialize_str(&self.sha256),
            Some(name) => Named {
                sha256: &self.sha256,
                name,
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for WorkerKeyConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Named {
            sha256: String,
            #[serde(default)]
            name: Option<String>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WorkerKeyConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a SHA-256 hex digest, or { sha256: <digest>, name: <label> }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                WorkerKeyConfig::new(v, None).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let n = Named::deserialize(de::value::MapAccessDeserializer::new(map))?;
                WorkerKeyConfig::new(&n.sha256, n.name).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn digest_bytes(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Every tenant's worker-key digests, to find the tenant a presented key belongs to.
#[derive(Debug, Clone, Default)]
pub struct WorkerKeys {
    /// (digest, owner): a flat list, scanned whole on every lookup.
    entries: Vec<([u8; 32], TenantId)>,
}

impl WorkerKeys {
    pub fn new() -> Self {
        WorkerKeys::default()
    }

    /// Sets `tenant`'s keys to `keys`, replacing any it had. Refuses a digest that another
    /// tenant holds: a key must decide one tenant.
    pub fn set_tenant(
        &mut self,
        tenant: &TenantId,
        keys: &[WorkerKeyConfig],
    ) -> Result<(), String> {
        let mut digests = Vec::with_capacity(keys.len());
        for k in keys {
            let d = digest_bytes(&k.sha256)
                .ok_or_else(|| "a worker key digest is not 64 hex digits".to_owned())?;
            if let Some(owner) = self.owner_of(&d)
                && owner != tenant
            {
                return Err(format!(
                    "worker key digest {} already belongs to tenant `{owner}`; a key must name one tenant",
                    k.sha256
                ));
            }
            digests.push(d);
        }
        self.remove_tenant(tenant);
        self.entries
            .extend(digests.into_iter().map(|d| (d, tenant.clone())));
        Ok(())
    }

    /// Forgets every key of `tenant`.
    pub fn remove_tenant(&mut self, tenant: &TenantId) {
        self.entries.retain(|(_, owner)| owner != tenant);
    }

    fn owner_of(&self, digest: &[u8; 32]) -> Option<&TenantId> {
        self.entries
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, owner)| owner)
    }

    /// The tenant whose key this is, or None. Hashes the key and compares the digest with
    /// every entry in constant time.
    pub fn resolve(&self, presented: &str) -> Option<&TenantId> {
        if presented.is_empty() || presented.len() > MAX_PRESENTED_KEY_BYTES {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        let mut at = 0u64;
        for (i, (d, _)) in self.entries.iter().enumerate() {
            let hit = d.ct_eq(&digest);
            at = u64::conditional_select(&at, &(i as u64), hit);
            found |= hit;
        }
        bool::from(found).then(|| &self.entries[at as usize].1)
    }

    /// How many keys are known, over all tenants.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    fn key_of(clear: &str) -> WorkerKeyConfig {
        WorkerKeyConfig::new(&hash_key(clear), None).unwrap()
    }

    #[test]
    fn hash_key_is_sha256_hex() {
        // sha256("abc") from FIPS 180-2.
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(digest_bytes(&hash_key("abc")).unwrap()[0], 0xba);
    }

    #[test]
    fn generated_keys_are_prefixed_random_and_url_safe() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        let body = &a[KEY_PREFIX.len()..];
        assert_eq!(body.len(), 43, "32 bytes in unpadded base64");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .unwrap();
        assert_eq!(bytes.len(), 32);
        assert!(!body.contains(['+', '/', '=']));
    }

    #[test]
    fn the_right_key_resolves_a_wrong_one_does_not() {
        let (ka, kb) = (generate_key(), generate_key());
        let mut keys = WorkerKeys::new();
        keys.set_tenant(&id("a"), &[key_of(&ka)]).unwrap();
        keys.set_tenant(&id("b"), &[key_of("other"), key_of(&kb)])
            .unwrap();
        assert_eq!(keys.resolve(&ka), Some(&id("a")));
        assert_eq!(keys.resolve(&kb), Some(&id("b")));
        assert_eq!(keys.resolve("other"), Some(&id("b")));
        assert_eq!(keys.resolve(&generate_key()), None);
        // The digest itself is not a key.
        assert_eq!(keys.resolve(&hash_key(&ka)), None);
        // One character off.
        let mut near = ka.clone();
        near.pop();
        near.push(if ka.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(keys.resolve(&near), None);
        assert_eq!(keys.resolve(""), None);
    }

    #[test]
    fn presented_key_length_is_bounded() {
        let at = "k".repeat(MAX_PRESENTED_KEY_BYTES);
        let over = "k".repeat(MAX_PRESENTED_KEY_BYTES + 1);
        let mut keys = WorkerKeys::new();
        keys.set_tenant(&id("a"), &[key_of(&at), key_of(&over)])
            .unwrap();
        assert_eq!(keys.resolve(&at), Some(&id("a")));
        assert_eq!(keys.resolve(&over), None);
    }

    #[test]
    fn replacing_and_removing_a_tenants_keys() {
        let (old, new) = (generate_key(), generate_key());
        let mut keys = WorkerKeys::new();
        keys.set_tenant(&id("a"), &[key_of(&old)]).unwrap();
        keys.set_tenant(&id("a"), &[key_of(&new)]).unwrap();
        assert_eq!(keys.resolve(&old), None, "rotated out");
        assert_eq!(keys.resolve(&new), Some(&id("a")));
        assert_eq!(keys.len(), 1);
        keys.remove_tenant(&id("a"));
        assert_eq!(keys.resolve(&new), None);
        assert!(keys.is_empty());
    }

    #[test]
    fn a_key_cannot_name_two_tenants() {
        let k = generate_key();
        let mut keys = WorkerKeys::new();
        keys.set_tenant(&id("a"), &[key_of(&k)]).unwrap();
        let err = keys.set_tenant(&id("b"), &[key_of(&k)]).unwrap_err();
        assert!(err.contains("already belongs to tenant `a`"), "{err}");
        assert!(!err.contains(&k), "the clear key is never echoed");
        assert_eq!(keys.resolve(&k), Some(&id("a")));
    }
}
