//! Tenants as the config file (under `tenants:`) and the admin API write them.
//!
//! ```yaml
//! tenants:
//!   - id: acme
//!     worker_keys:                      # SHA-256 digests of the keys, never the keys
//!       - 5f2b…e1                       # 64 hex digits
//!       - { sha256: "9ac0…07", name: ci }
//!     clients:
//!       token_required: true            # the default
//!       keys:
//!         - { kid: k1, alg: HS256, secret_env: ACME_JWT_SECRET }
//!         - { kid: k2, alg: RS256, public_key_file: keys/acme.pub }
//!       auth_function: acme::auth       # optional, iii-style
//!     streams: [chat, "room-*"]         # what its clients may join; `["*"]` when absent
//!     adapter_ceilings: { max_memory_bytes: 67108864 }
//!     quotas: { connections: 1000, writes_per_second: 500 }   # see `quotas`
//! ```
//!
//! These are plain serde types, strict (`deny_unknown_fields`: a misspelt key is an error
//! naming the key, not a silently open door), and they serialize back for the admin API
//! without secrets: an HS256 `secret` is read but never written out. What cannot be checked
//! by the types alone (one key source per key, kids unique, one owner per worker key) is
//! checked by [`TenantConfig::validate`] and [`parse_tenants`].

pub use super::keys::WorkerKeyConfig;
use super::patterns::StreamPatterns;
pub use super::quotas::Quotas;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

/// The tenant that is today's engine: no keys asked, iii's Redis key layout.
pub const DEFAULT_TENANT: &str = "default";
pub const MAX_TENANT_ID_BYTES: usize = 64;
pub const MAX_WORKER_KEYS: usize = 64;
pub const MAX_CLIENT_KEYS: usize = 16;
/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash, 256 bits.
pub const MIN_HS256_SECRET_BYTES: usize = 32;
pub const MAX_SECRET_BYTES: usize = 1024;
pub const MAX_KID_BYTES: usize = 128;

/// A tenant's id: 1-64 characters of `a-z`, `0-9`, `_` and `-`, so it can go in a Redis key,
/// a metric label or a URL path as it is.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn new(id: impl Into<String>) -> Result<Self, String> {
        let id = id.into();
        let ok_chars = id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if id.is_empty() || id.len() > MAX_TENANT_ID_BYTES || !ok_chars {
            return Err(format!(
                "tenant id {} is not valid: use 1 to {MAX_TENANT_ID_BYTES} characters of a-z, 0-9, `_` and `-`",
                super::error::shown(&id)
            ));
        }
        Ok(TenantId(id))
    }

    pub fn default_tenant() -> Self {
        TenantId(DEFAULT_TENANT.into())
    }

    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_TENANT
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = String;
    fn try_from(id: String) -> Result<Self, String> {
        TenantId::new(id)
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> String {
        id.0
    }
}

impl std::borrow::Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: TenantId,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub worker_keys: Vec<WorkerKeyConfig>,
    #[serde(default)]
    pub clients: ClientAuthConfig,
    /// Streams this tenant's clients may join (a token may narrow it further).
    #[serde(default)]
    pub streams: StreamPatterns,
    #[serde(default)]
    pub adapter_ceilings: AdapterCeilings,
    #[serde(default)]
    pub quotas: Quotas,
    /// Each group's history for clients that resume (`{size, ttl_ms}`), over the engine's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<crate::fanout::history::HistoryConfig>,
    /// The streams that keep presence (`{streams, max_members}`), over the engine's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<crate::fanout::presence::PresenceConfig>,
}

impl TenantConfig {
    /// Today's behaviour: the `default` tenant, no worker keys, clients without tokens.
    pub fn default_tenant() -> Self {
        TenantConfig {
            id: TenantId::default_tenant(),
            enabled: true,
            worker_keys: Vec::new(),
            clients: ClientAuthConfig {
                token_required: false,
                ..Default::default()
            },
            streams: StreamPatterns::all(),
            adapter_ceilings: AdapterCeilings::HIGHEST,
            quotas: Quotas::UNLIMITED,
            history: None,
            presence: None,
        }
    }

    /// Checks what the types cannot: counts, one key source per client key, unique kids and
    /// worker keys.
    pub fn validate(&self) -> anyhow::Result<()> {
        let id = &self.id;
        if self.worker_keys.len() > MAX_WORKER_KEYS {
            bail!(
                "tenant `{id}` has {} worker keys; at most {MAX_WORKER_KEYS} are accepted: revoke unused ones",
                self.worker_keys.len()
            );
        }
        let mut digests = HashSet::new();
        for k in &self.worker_keys {
            if !digests.insert(&k.sha256) {
                bail!(
                    "tenant `{id}` lists the worker key digest {} twice",
                    k.sha256
                );
            }
        }
        let keys = &self.clients.keys;
        if keys.len() > MAX_CLIENT_KEYS {
            bail!(
                "tenant `{id}` has {} client keys; at most {MAX_CLIENT_KEYS} are accepted: remove retired kids",
                keys.len()
            );
        }
        let mut kids = HashSet::new();
        for key in keys {
            key.validate()
                .with_context(|| format!("tenant `{id}`, client key `{}`", key.kid))?;
            if !kids.insert(key.kid.as_str()) {
                bail!(
                    "tenant `{id}` has two client keys with kid `{}`; kids must be unique within a tenant",
                    key.kid
                );
            }
        }
        if let Some(f) = &self.clients.auth_function
            && (f.is_empty() || f.len() > 256)
        {
            bail!("tenant `{id}`: `clients.auth_function` must be a function id of 1 to 256 bytes");
        }
        self.adapter_ceilings
            .validate()
            .with_context(|| format!("tenant `{id}`, adapter_ceilings"))?;
        if let Some(history) = &self.history {
            history
                .validate()
                .with_context(|| format!("tenant `{id}`, history"))?;
        }
        if let Some(presence) = &self.presence {
            presence
                .validate()
                .with_context(|| format!("tenant `{id}`, presence"))?;
        }
        self.quotas
            .validate()
            .with_context(|| format!("tenant `{id}`, quotas"))
    }

    /// Valid but probably not meant: said once at start-up or on an admin change.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let c = &self.clients;
        if c.token_required && c.keys.is_empty() && c.auth_function.is_none() {
            out.push(format!(
                "tenant `{}` requires client tokens but has no client keys and no auth_function: every client will be refused",
                self.id
            ));
        }
        out
    }
}

/// Reads the `tenants:` list of a config file, with the path of any error
/// (`tenants[1].clients.keys[0].alg: unknown variant ...`), and checks it as a whole.
pub fn parse_tenants(value: serde_yaml_ng::Value) -> anyhow::Result<Vec<TenantConfig>> {
    let tenants: Vec<TenantConfig> = serde_path_to_error::deserialize(value)
        .map_err(|e| anyhow::anyhow!("tenants{}: {}", path_suffix(e.path()), e.inner()))?;
    let mut ids = HashSet::new();
    let mut owners = std::collections::HashMap::new();
    for t in &tenants {
        t.validate()?;
        if !ids.insert(&t.id) {
            bail!("tenant `{}` is defined twice", t.id);
        }
        for k in &t.worker_keys {
            if let Some(other) = owners.insert(&k.sha256, &t.id) {
                bail!(
                    "worker key digest {} is given to both `{other}` and `{}`; a key must name one tenant",
                    k.sha256,
                    t.id
                );
            }
        }
    }
    Ok(tenants)
}

fn path_suffix(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    match p.as_str() {
        "." => String::new(),
        p if p.starts_with('[') => p.to_owned(),
        p => format!(".{p}"),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// Refuse clients without a valid token (the default: a tenant is closed unless opened).
    #[serde(default = "yes")]
    pub token_required: bool,
    #[serde(default)]
    pub keys: Vec<ClientKeyConfig>,
    /// A function called before a client upgrade, as iii's `auth_function`; it may refuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_function: Option<String>,
    /// When set, tokens must carry this `aud`; when not, `aud` is not looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

impl Default for ClientAuthConfig {
    fn default() -> Self {
        ClientAuthConfig {
            token_required: true,
            keys: Vec::new(),
            auth_function: None,
            audience: None,
        }
    }
}

/// The algorithms a client key may be for: one per key, fixed by the config, never by a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAlg {
    HS256,
    RS256,
    ES256,
}

impl KeyAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::HS256 => "HS256",
            KeyAlg::RS256 => "RS256",
            KeyAlg::ES256 => "ES256",
        }
    }
}

/// An HS256 secret. It never serializes and never prints.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One key clients' tokens may be signed with. HS256 keys take `secret` or `secret_env`;
/// RS256 and ES256 keys take `public_key_pem` or `public_key_file` (relative to the config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientKeyConfig {
    pub kid: String,
    pub alg: KeyAlg,
    #[serde(default, skip_serializing)]
    pub secret: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
}

impl ClientKeyConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        let kid = &self.kid;
        if kid.is_empty() || kid.len() > MAX_KID_BYTES || kid.chars().any(char::is_control) {
            bail!("a kid must be 1 to {MAX_KID_BYTES} printable characters");
        }
        let sources = [
            ("secret", self.secret.is_some()),
            ("secret_env", self.secret_env.is_some()),
            ("public_key_pem", self.public_key_pem.is_some()),
            ("public_key_file", self.public_key_file.is_some()),
        ];
        let given: Vec<&str> = sources.iter().filter(|s| s.1).map(|s| s.0).collect();
        let (wanted, hint) = match self.alg {
            KeyAlg::HS256 => (["secret", "secret_env"], "an HS256 key"),
            KeyAlg::RS256 | KeyAlg::ES256 => (
                ["public_key_pem", "public_key_file"],
                "an RS256 or ES256 key (the public key only)",
            ),
        };
        if given.len() != 1 || !wanted.contains(&given[0]) {
            bail!(
                "{hint} takes exactly one of `{}` or `{}`; this one has {}",
                wanted[0],
                wanted[1],
                if given.is_empty() {
                    "none".to_owned()
                } else {
                    given
                        .iter()
                        .map(|g| format!("`{g}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        }
        if let Some(Secret(s)) = &self.secret {
            check_secret_len(s.len())?;
        }
        Ok(())
    }
}

pub(crate) fn check_secret_len(len: usize) -> anyhow::Result<()> {
    if len < MIN_HS256_SECRET_BYTES {
        bail!(
            "the HS256 secret is {len} bytes; it must be at least {MIN_HS256_SECRET_BYTES} (RFC 7518): generate one with `openssl rand -base64 32`"
        );
    }
    if len > MAX_SECRET_BYTES {
        bail!("the HS256 secret is {len} bytes; at most {MAX_SECRET_BYTES} are accepted");
    }
    Ok(())
}

/// The most a tenant's WebAssembly adapters may ask for; an adapter asking more is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterCeilings {
    pub max_memory_bytes: u64,
    pub max_timeout_ms: u64,
    /// Also the fuel given to an adapter that asks for no fuel limit.
    pub max_fuel: u64,
    pub max_payload_bytes: u64,
    /// Calls the tenant's adapters may run at once (each holds an instance); more fail at
    /// once with `quota_exceeded`.
    pub max_concurrent_calls: u64,
    /// Engine-thread time the tenant's adapters may use per second, in ms (a bucket holding
    /// one second of it); a call while in debt fails at once with `quota_exceeded`.
    pub max_cpu_ms_per_sec: u64,
}

impl Default for AdapterCeilings {
    /// Twice the adapter defaults in memory, ten times in time: room to tune an adapter
    /// without letting one tenant's code hold a core or the host's memory. Four calls at
    /// once and half a core on average.
    fn default() -> Self {
        AdapterCeilings {
            max_memory_bytes: 64 << 20,
            max_timeout_ms: 5_000,
            max_fuel: 10_000_000_000,
            max_payload_bytes: 4 << 20,
            max_concurrent_calls: 4,
            max_cpu_ms_per_sec: 500,
        }
    }
}

impl AdapterCeilings {
    /// The highest ceilings a config may set: the `default` tenant's when the config does not
    /// list it, so that an engine without tenants binds adapters as it always has. Fuel is
    /// then not metered unless an adapter asks for it.
    pub const HIGHEST: AdapterCeilings = AdapterCeilings {
        max_memory_bytes: 4 << 30,
        max_timeout_ms: 600_000,
        max_fuel: u64::MAX,
        max_payload_bytes: 64 << 20,
        max_concurrent_calls: 4096,
        max_cpu_ms_per_sec: 1_000_000,
    };

    fn validate(&self) -> anyhow::Result<()> {
        let fields = [
            (
                "max_memory_bytes",
                self.max_memory_bytes,
                Self::HIGHEST.max_memory_bytes,
            ),
            (
                "max_timeout_ms",
                self.max_timeout_ms,
                Self::HIGHEST.max_timeout_ms,
            ),
            ("max_fuel", self.max_fuel, Self::HIGHEST.max_fuel),
            (
                "max_payload_bytes",
                self.max_payload_bytes,
                Self::HIGHEST.max_payload_bytes,
            ),
            (
                "max_concurrent_calls",
                self.max_concurrent_calls,
                Self::HIGHEST.max_concurrent_calls,
            ),
            (
                "max_cpu_ms_per_sec",
                self.max_cpu_ms_per_sec,
                Self::HIGHEST.max_cpu_ms_per_sec,
            ),
        ];
        for (name, value, max) in fields {
            if value == 0 || value > max {
                bail!("`{name}` is {value}; it must be between 1 and {max}");
            }
        }
        Ok(())
    }

    /// Checks an adapter's limits against the ceilings, and gives an adapter that asked for
    /// no fuel limit the ceiling. The error says which limit is over and by how much.
    pub fn enforce(&self, limits: &mut crate::storage::wasm::Limits) -> Result<(), String> {
        let asked = [
            (
                "memory",
                limits.memory_bytes as u64,
                self.max_memory_bytes,
                "bytes",
            ),
            (
                "timeout",
                limits.timeout.as_millis() as u64,
                self.max_timeout_ms,
                "ms",
            ),
            ("fuel", limits.fuel.unwrap_or(0), self.max_fuel, "units"),
            (
                "max_payload_bytes",
                limits.max_payload_bytes as u64,
                self.max_payload_bytes,
                "bytes",
            ),
        ];
        for (what, value, max, unit) in asked {
            if value > max {
                return Err(format!(
                    "the adapter asks for {what} {value} {unit}; this tenant's ceiling is {max} {unit}: lower the adapter's limit or raise the tenant's adapter_ceilings"
                ));
            }
        }
        if self.max_fuel != u64::MAX {
            limits.fuel.get_or_insert(self.max_fuel);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
