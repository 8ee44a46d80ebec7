//! Configuration: the iii config file in both of its spellings, and the embedded defaults.
//!
//! ```yaml
//! modules:                 # iii v0.10 era: `class:` names, a top-level worker `port:`
//!   - class: modules::stream::StreamModule
//!     config: { port: 3112, adapter: { class: modules::stream::adapters::KvStore } }
//! workers:                 # iii v0.23 era: `name:` entries
//!   - name: iii-stream
//!     config: { port: 3112, adapter: { name: kv, config: { store_method: in_memory } } }
//! ```
//! `${VAR:default}` expands from the environment before parsing. Modules and keys that
//! streamhost does not know are reported once and skipped, never fatal.
//!
//! Relative paths in streamhost's own keys (`component:`, `wasm_cache_dir:`) are relative to
//! the config file, so a config works from any directory. The KvStore's `file_path` is
//! relative to the working directory, as iii has it, so that the same config run from the
//! same place finds the data an iii engine wrote.

use anyhow::{Context, bail};
use serde_yaml_ng::{Mapping, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum AdapterConfig {
    KvMemory,
    KvFile {
        path: PathBuf,
    },
    /// `redis_url` as Redis URLs write it: `redis://[user:pass@]host:port[/db]`, `rediss://` for TLS.
    Redis {
        url: String,
        /// How long the presence members of a node that died stay listed (`presence_ttl_ms`).
        presence_ttl: Duration,
    },
}

impl AdapterConfig {
    /// The Redis adapter at `url`, with the defaults of its other keys.
    pub fn redis(url: impl Into<String>) -> AdapterConfig {
        AdapterConfig::Redis {
            url: url.into(),
            presence_ttl: crate::storage::redis::DEFAULT_PRESENCE_TTL,
        }
    }
}

/// A stream served by a WebAssembly component, from the config file.
#[derive(Debug, Clone)]
pub struct CustomStreamConfig {
    pub stream_name: String,
    pub component: PathBuf,
    /// Given to the adapter's `init`, as JSON.
    pub config: serde_json::Value,
    pub limits: crate::storage::wasm::Limits,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Client socket (browsers, apps).
    pub host: String,
    pub port: u16,
    /// Worker socket (SDK workers).
    pub worker_host: String,
    pub worker_port: u16,
    /// Function called before a client upgrade; it may refuse the connection.
    pub auth_function: Option<String>,
    pub adapter: AdapterConfig,
    /// Largest client frame accepted; a larger one closes the socket with 1009.
    pub max_frame_bytes: usize,
    /// Frames queued per client socket before it is closed as too slow.
    pub send_queue_frames: usize,
    /// How long a socket the engine closed (a slow client, a frame too big) is kept so that
    /// the client can read what was queued before it and then the close frame with its reason.
    pub close_grace: Duration,
    /// Subscriptions one client socket may hold at once.
    pub max_subscriptions: usize,
    /// How long a call to a worker's function may take.
    pub invocation_timeout: Duration,
    /// Calls that may wait on one worker's answers at once; more fail with `quota_exceeded`.
    pub max_pending_invocations_per_worker: usize,
    /// Calls of one tenant's workers that run at once; the rest wait their turn (`fair`).
    pub calls_in_flight_per_tenant: usize,
    /// Client sockets of one tenant written at once; the rest wait their turn (`fair`).
    pub fanout_in_flight_per_tenant: usize,
    /// Streams bound to WebAssembly adapters at start-up.
    pub custom_streams: Vec<CustomStreamConfig>,
    /// Depth, size and op-count limits on every value that enters a store.
    pub value_limits: crate::limits::ValueLimits,
    /// Where compiled adapters are cached (None: compile at every start).
    pub wasm_cache_dir: Option<PathBuf>,
    /// What the loader skipped, reported once at start-up.
    pub warnings: Vec<String>,
    /// The tenants (`tenants:`); `default` is added when not listed (see `tenants`).
    pub tenants: Vec<crate::tenants::TenantConfig>,
    /// Accept workers without a key from any address, not only from this machine.
    pub allow_anonymous_workers: bool,
    /// The config file's folder: what relative key files are relative to.
    pub base_dir: PathBuf,
    /// The admin API (`admin:`); None: no admin listener.
    pub admin: Option<crate::admin::AdminConfig>,
    /// Handshake and keepalive timeouts of the client socket and of the worker socket.
    pub client_timeouts: SocketTimeouts,
    pub worker_timeouts: SocketTimeouts,
    /// Bytes queued per client socket before it is closed as too slow (with `send_queue_frames`).
    pub send_queue_bytes: usize,
    /// Sockets open at once on both ports together; None: 90% of the open-files limit.
    pub max_connections: Option<usize>,
    /// Each group's history for clients that resume (`history: {size, ttl_ms}`).
    pub history: crate::fanout::history::HistoryConfig,
    /// The streams that keep presence, and how many members a group lists
    /// (`presence: {streams, max_members}`).
    pub presence: crate::fanout::presence::PresenceConfig,
}

/// How long a socket may take to send its upgrade request, and how a quiet peer is found dead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SocketTimeouts {
    /// A socket that has not sent a whole request head by then is closed.
    pub handshake: Duration,
    /// The engine pings an open socket this often.
    pub ping_interval: Duration,
    /// A socket that has sent nothing (a pong counts) for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for SocketTimeouts {
    fn default() -> Self {
        SocketTimeouts {
            handshake: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
        }
    }
}

impl SocketTimeouts {
    /// Reads `handshake_timeout_ms`, `ping_interval_ms` and `idle_timeout_ms`; false for any other key.
    fn configure(&mut self, key: &str, value: &Value) -> anyhow::Result<bool> {
        let slot = match key {
            "handshake_timeout_ms" => &mut self.handshake,
            "ping_interval_ms" => &mut self.ping_interval,
            "idle_timeout_ms" => &mut self.idle_timeout,
            _ => return Ok(false),
        };
        let ms = number(value, key)?;
        if ms == 0 {
            bail!("`{key}` must be at least 1 (milliseconds)");
        }
        *slot = Duration::from_millis(ms);
        Ok(true)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "0.0.0.0".into(),
            port: 3112,
            worker_host: "0.0.0.0".into(),
            worker_port: 49134,
            auth_function: None,
            adapter: AdapterConfig::KvFile {
                path: PathBuf::from("./data/stream_store"),
            },
            max_frame_bytes: 1 << 20,
            send_queue_frames: 4096,
            close_grace: Duration::from_secs(10),
            max_subscriptions: 1000,
            invocation_timeout: Duration::from_secs(30),
            max_pending_invocations_per_worker:
                crate::workers::router::DEFAULT_MAX_PENDING_PER_WORKER,
            calls_in_flight_per_tenant: crate::fair::DEFAULT_WIDTH,
            fanout_in_flight_per_tenant: crate::fair::DEFAULT_FANOUT_WIDTH,
            custom_streams: Vec::new(),
            value_limits: Default::default(),
            wasm_cache_dir: Some(PathBuf::from("./data/wasm-cache")),
            warnings: Vec::new(),
            tenants: Vec::new(),
            allow_anonymous_workers: false,
            base_dir: PathBuf::new(),
            admin: None,
            client_timeouts: SocketTimeouts::default(),
            worker_timeouts: SocketTimeouts::default(),
            send_queue_bytes: 16 << 20,
            max_connections: None,
            history: Default::default(),
            presence: Default::default(),
        }
    }
}

const STREAM_MODULES: [&str; 2] = ["modules::stream::StreamModule", "iii-stream"];
const WORKER_MODULES: [&str; 2] = ["modules::worker::WorkerModule", "iii-worker-manager"];

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        Config::parse_relative_to(&text, base)
            .with_context(|| format!("in the config file {}", path.display()))
    }

    /// Parses a config; relative paths in it stay relative to the working directory.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse_relative_to(text, Path::new(""))
    }

    /// Parses a config whose relative `component:` and `wasm_cache_dir:` are under `base`.
    fn parse_relative_to(text: &str, base: &Path) -> anyhow::Result<Config> {
        let expanded = expand_env(text, |name| std::env::var(name).ok())?;
        let root: Value =
            serde_yaml_ng::from_str(&expanded).context("the file is not valid YAML")?;
        let mut config = Config {
            base_dir: base.to_path_buf(),
            ..Config::default()
        };
        let Some(root) = root.as_mapping() else {
            if root.is_null() {
                return Ok(config);
            }
            bail!("the top level must be a mapping with `modules:` or `workers:`");
        };
        for (key, value) in root {
            match key.as_str().unwrap_or_default() {
                "port" => config.worker_port = port(value, "port")?,
                "tenants" => {
                    config.tenants =
                        crate::tenants::parse_tenants(value.clone()).context("in `tenants:`")?
                }
                "admin" => {
                    let env = |name: &str| std::env::var(name).ok();
                    config.admin =
                        Some(crate::admin::AdminConfig::parse(value, env).context("in `admin:`")?)
                }
                "modules" | "workers" => {
                    for entry in value.as_sequence().map(Vec::as_slice).unwrap_or_default() {
                        config.load_module(entry, base)?;
                    }
                }
                other => config
                    .warnings
                    .push(format!("unknown top-level key `{other}` ignored")),
            }
        }
        Ok(config)
    }

    fn load_module(&mut self, entry: &Value, base: &Path) -> anyhow::Result<()> {
        let name = entry
            .get("class")
            .or_else(|| entry.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)");
        let empty = Mapping::new();
        let cfg = entry
            .get("config")
            .and_then(Value::as_mapping)
            .unwrap_or(&empty);
        if STREAM_MODULES.contains(&name) {
            for (key, value) in cfg {
                let key = key.as_str().unwrap_or_default();
                match key {
                    "port" => self.port = port(value, "stream port")?,
                    "host" => self.host = string(value, "stream host")?,
                    "auth_function" => self.auth_function = Some(string(value, "auth_function")?),
                    "adapter" => self.adapter = adapter(value, &mut self.warnings)?,
                    "max_frame_bytes" => self.max_frame_bytes = number(value, key)? as usize,
                    "send_queue_frames" => {
                        self.send_queue_frames = number(value, key)?.max(1) as usize
                    }
                    "close_grace_ms" => {
                        self.close_grace = Duration::from_millis(number(value, key)?)
                    }
                    "max_subscriptions" => self.max_subscriptions = number(value, key)? as usize,
                    "fanout_in_flight_per_tenant" => {
                        self.fanout_in_flight_per_tenant = number(value, key)?.max(1) as usize
                    }
                    "send_queue_bytes" => {
                        self.send_queue_bytes = number(value, key)?.max(1) as usize
                    }
                    "max_connections" => {
                        self.max_connections = Some(number(value, key)?.max(1) as usize)
                    }
                    _ if self.client_timeouts.configure(key, value)? => {}
                    "history" => {
                        let history: crate::fanout::history::HistoryConfig =
                            serde_yaml_ng::from_value(value.clone()).with_context(
                                || "`history` is `{ size: EVENTS, ttl_ms: MILLISECONDS }`",
                            )?;
                        history.validate()?;
                        self.history = history;
                    }
                    "presence" => {
                        let presence: crate::fanout::presence::PresenceConfig =
                            serde_yaml_ng::from_value(value.clone()).with_context(
                                || "`presence` is `{ streams: [PATTERN, ...], max_members: N }`",
                            )?;
                        presence.validate()?;
                        self.presence = presence;
                    }
                    "max_value_depth" | "max_item_bytes" | "max_update_ops" => {
                        self.value_limits.configure(key, number(value, key)?)?
                    }
                    "wasm_cache_dir" => self.wasm_cache_dir = Some(base.join(string(value, key)?)),
                    "custom_streams" => {
                        for entry in value.as_sequence().map(Vec::as_slice).unwrap_or_default() {
                            self.custom_streams.push(custom_stream(entry, base)?);
                        }
                    }
                    other => self
                        .warnings
                        .push(format!("unknown key `{other}` in {name} ignored")),
                }
            }
        } else if WORKER_MODULES.contains(&name) {
            for (key, value) in cfg {
                let key = key.as_str().unwrap_or_default();
                match key {
                    "port" => self.worker_port = port(value, "worker port")?,
                    "host" => self.worker_host = string(value, "worker host")?,
                    "allow_anonymous_workers" => {
                        self.allow_anonymous_workers = value.as_bool().with_context(|| {
                            format!("`{key}` must be true or false, not {value:?}")
                        })?
                    }
                    "invocation_timeout_ms" => {
                        self.invocation_timeout = Duration::from_millis(number(value, key)?)
                    }
                    "max_pending_invocations_per_worker" => {
                        self.max_pending_invocations_per_worker =
                            number(value, key)?.max(1) as usize
                    }
                    "calls_in_flight_per_tenant" => {
                        self.calls_in_flight_per_tenant = number(value, key)?.max(1) as usize
                    }
                    _ if self.worker_timeouts.configure(key, value)? => {}
                    other => self
                        .warnings
                        .push(format!("unknown key `{other}` in {name} ignored")),
                }
            }
        } else {
            self.warnings.push(format!(
                "module `{name}` is not part of streamhost; skipped"
            ));
        }
        Ok(())
    }
}

fn adapter(value: &Value, warnings: &mut Vec<String>) -> anyhow::Result<AdapterConfig> {
    let name = value
        .get("class")
        .or_else(|| value.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("kv");
    let empty = Mapping::new();
    let cfg = value
        .get("config")
        .and_then(Value::as_mapping)
        .unwrap_or(&empty);
    match name {
        "modules::stream::adapters::KvStore" | "kv" | "KvStore" => {
            let mut method = "in_memory".to_owned();
            let mut path = PathBuf::from("./data/stream_store");
            for (key, value) in cfg {
                match key.as_str().unwrap_or_default() {
                    "store_method" => method = string(value, "store_method")?,
                    "file_path" => path = PathBuf::from(string(value, "file_path")?),
                    // Every acknowledged write is synced now; the interval no longer matters.
                    "save_interval_ms" => {}
                    other => warnings.push(format!(
                        "unknown key `{other}` in the KvStore adapter ignored"
                    )),
                }
            }
            match method.as_str() {
                "in_memory" => Ok(AdapterConfig::KvMemory),
                "file_based" => Ok(AdapterConfig::KvFile { path }),
                other => {
                    bail!("store_method `{other}` is not known: use `in_memory` or `file_based`")
                }
            }
        }
        "modules::stream::adapters::RedisAdapter" | "redis" | "RedisAdapter" => {
            let mut url = "redis://localhost:6379".to_owned();
            let mut presence_ttl = crate::storage::redis::DEFAULT_PRESENCE_TTL;
            for (key, value) in cfg {
                match key.as_str().unwrap_or_default() {
                    "redis_url" => url = string(value, "redis_url")?,
                    "presence_ttl_ms" => {
                        let ms = number(value, "presence_ttl_ms")?;
                        if !(MIN_PRESENCE_TTL_MS..=MAX_PRESENCE_TTL_MS).contains(&ms) {
                            bail!(
                                "presence_ttl_ms {ms} must be from {MIN_PRESENCE_TTL_MS} to {MAX_PRESENCE_TTL_MS}: it is how long the presence members of an engine node that died stay listed"
                            );
                        }
                        presence_ttl = Duration::from_millis(ms);
                    }
                    other => warnings.push(format!(
                        "unknown key `{other}` in the Redis adapter ignored"
                    )),
                }
            }
            Ok(AdapterConfig::Redis { url, presence_ttl })
        }
        other => bail!(
            "adapter `{other}` is not known: use `modules::stream::adapters::KvStore` (`name: kv`) or `modules::stream::adapters::RedisAdapter` (`name: redis`)"
        ),
    }
}

fn custom_stream(entry: &Value, base: &Path) -> anyhow::Result<CustomStreamConfig> {
    let stream_name = entry
        .get("stream_name")
        .map(|v| string(v, "stream_name"))
        .transpose()?
        .context("a custom stream needs `stream_name`")?;
    let component = entry
        .get("component")
        .map(|v| string(v, "component"))
        .transpose()?
        .with_context(|| {
            format!("custom stream {stream_name}: `component` (the .wasm file) is missing")
        })?;
    let config = match entry.get("config") {
        Some(v) => serde_json::to_value(v)
            .with_context(|| format!("custom stream {stream_name}: `config` cannot be JSON"))?,
        None => serde_json::Value::Object(Default::default()),
    };
    let limits: crate::storage::wasm::registry::LimitsSpec = match entry.get("limits") {
        Some(v) => serde_yaml_ng::from_value(v.clone())
            .with_context(|| format!("custom stream {stream_name}: bad `limits`"))?,
        None => Default::default(),
    };
    Ok(CustomStreamConfig {
        stream_name,
        component: base.join(component),
        config,
        limits: limits.to_limits(),
    })
}

/// Bounds of the Redis adapter's `presence_ttl_ms`: under a second, a busy node's renewal may
/// come late; past an hour, a dead node's members would be listed for that long.
const MIN_PRESENCE_TTL_MS: u64 = 1_000;
const MAX_PRESENCE_TTL_MS: u64 = 3_600_000;

fn string(value: &Value, what: &str) -> anyhow::Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => bail!("`{what}` must be a string"),
    }
}

fn number(value: &Value, what: &str) -> anyhow::Result<u64> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .with_context(|| format!("`{what}` must be a whole number")),
        Value::String(s) => s
            .trim()
            .parse()
            .with_context(|| format!("`{what}` must be a whole number, not {s:?}")),
        _ => bail!("`{what}` must be a whole number"),
    }
}

fn port(value: &Value, what: &str) -> anyhow::Result<u16> {
    let n = number(value, what)?;
    u16::try_from(n).with_context(|| format!("`{what}` must be a port number (0-65535), not {n}"))
}

/// Expands `${VAR}` and `${VAR:default}`; a variable that is unset and has no default is an error.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            bail!("unclosed `${{` in the config")
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(':') {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => bail!(
                "environment variable {name} is not set and `${{{name}}}` has no default; write `${{{name}:default}}` or set it"
            ),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_load() {
        let old = Config::parse(
            "port: 4000\nmodules:\n  - class: modules::stream::StreamModule\n    config:\n      port: ${SH_TEST_UNSET:3200}\n      host: 127.0.0.1\n      auth_function: stream.auth\n      adapter:\n        class: modules::stream::adapters::KvStore\n        config: { store_method: file_based, file_path: ./x, save_interval_ms: 5000 }\n  - class: modules::cron::CronModule\n",
        )
        .unwrap();
        assert_eq!(
            (old.worker_port, old.port, old.host.as_str()),
            (4000, 3200, "127.0.0.1")
        );
        assert_eq!(old.auth_function.as_deref(), Some("stream.auth"));
        assert_eq!(old.adapter, AdapterConfig::KvFile { path: "./x".into() });
        assert_eq!(
            old.warnings,
            vec!["module `modules::cron::CronModule` is not part of streamhost; skipped"]
        );

        let new = Config::parse(
            "workers:\n  - name: iii-worker-manager\n    config: { port: 4001, invocation_timeout_ms: 500 }\n  - name: iii-stream\n    config:\n      port: 3300\n      close_grace_ms: 2500\n      bogus: 1\n      adapter: { name: kv, config: { store_method: in_memory } }\n",
        )
        .unwrap();
        assert_eq!((new.worker_port, new.port), (4001, 3300));
        assert_eq!(new.invocation_timeout, Duration::from_millis(500));
        assert_eq!(new.close_grace, Duration::from_millis(2500));
        assert_eq!(new.adapter, AdapterConfig::KvMemory);
        assert_eq!(
            new.warnings,
            vec!["unknown key `bogus` in iii-stream ignored"]
        );
    }

    #[test]
    fn value_limits_load_and_the_depth_ceiling_holds() {
        let stream =
            |keys: &str| format!("workers:\n  - name: iii-stream\n    config: {{ {keys} }}\n");
        let c = Config::parse(&stream(
            "max_value_depth: 100, max_item_bytes: 2048, max_update_ops: 10",
        ))
        .unwrap();
        let expected = crate::limits::ValueLimits {
            max_value_depth: 100,
            max_item_bytes: 2048,
            max_update_ops: 10,
        };
        assert_eq!((c.value_limits, c.warnings.len()), (expected, 0));
        assert_eq!(Config::default().value_limits.max_value_depth, 64);
        let err = Config::parse(&stream("max_value_depth: 101")).unwrap_err();
        assert!(format!("{err:#}").contains("at most 100"), "{err:#}");
        let err = Config::parse(&stream("max_update_ops: 0")).unwrap_err();
        assert!(format!("{err:#}").contains("at least 1"), "{err:#}");
    }

    #[test]
    fn env_expansion() {
        let env = |n: &str| (n == "SET").then(|| "v".to_string());
        assert_eq!(
            expand_env("a ${SET} ${UNSET:d} ${SET:x}", env).unwrap(),
            "a v d v"
        );
        let err = expand_env("${UNSET}", env).unwrap_err().to_string();
        assert!(err.contains("UNSET is not set"), "{err}");
    }

    #[test]
    fn paths_are_relative_to_the_config_file_except_iii_file_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iii-config.yaml");
        std::fs::write(
            &path,
            "workers:\n  - name: iii-stream\n    config:\n      wasm_cache_dir: cache\n      adapter: { name: kv, config: { store_method: file_based, file_path: ./data/store } }\n      custom_streams:\n        - { stream_name: a, component: adapters/a.wasm }\n        - { stream_name: b, component: /abs/b.wasm }\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.wasm_cache_dir, Some(dir.path().join("cache")));
        assert_eq!(
            config.custom_streams[0].component,
            dir.path().join("adapters/a.wasm")
        );
        assert_eq!(config.custom_streams[1].component, Path::new("/abs/b.wasm"));
        // iii's own key keeps iii's meaning: the working directory.
        assert_eq!(
            config.adapter,
            AdapterConfig::KvFile {
                path: "./data/store".into()
            }
        );
        // A config named without a directory resolves against the working directory.
        let bare = Config::parse_relative_to(
            "workers:\n  - name: iii-stream\n    config: { wasm_cache_dir: c }\n",
            Path::new(""),
        )
        .unwrap();
        assert_eq!(bare.wasm_cache_dir, Some(PathBuf::from("c")));
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let err = Config::parse("workers:\n  - name: iii-stream\n    config: { port: 70000 }\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("port number"), "{err:#}");
        let err = Config::parse("workers:\n  - name: iii-stream\n    config: { adapter: { name: kv, config: { store_method: disk } } }\n").unwrap_err();
        assert!(format!("{err:#}").contains("in_memory"), "{err:#}");
    }

    #[test]
    fn presence_ttl_is_taken_at_its_bounds_and_refused_past_them() {
        let with = |ms: u64| {
            Config::parse(&format!(
                "workers:\n  - name: iii-stream\n    config: {{ adapter: {{ name: redis, config: {{ redis_url: \"redis://h:1\", presence_ttl_ms: {ms} }} }} }}\n"
            ))
        };
        for ms in [MIN_PRESENCE_TTL_MS, MAX_PRESENCE_TTL_MS] {
            let AdapterConfig::Redis { presence_ttl, .. } = with(ms).unwrap().adapter else {
                panic!("a Redis adapter");
            };
            assert_eq!(presence_ttl, Duration::from_millis(ms));
        }
        for ms in [MIN_PRESENCE_TTL_MS - 1, MAX_PRESENCE_TTL_MS + 1] {
            let err = format!("{:#}", with(ms).unwrap_err());
            assert!(
                err.contains(&format!(
                    "presence_ttl_ms {ms} must be from 1000 to 3600000"
                )),
                "{err}"
            );
        }
        let default = Config::parse(
            "workers:\n  - name: iii-stream\n    config: { adapter: { name: redis } }\n",
        )
        .unwrap();
        assert_eq!(
            default.adapter,
            AdapterConfig::redis("redis://localhost:6379")
        );
    }

    #[test]
    fn socket_timeouts_and_caps_load_per_socket() {
        let c = Config::parse(
            "workers:\n  - name: iii-stream\n    config: { handshake_timeout_ms: 500, idle_timeout_ms: 7000, send_queue_bytes: 4096, max_connections: 100 }\n  - name: iii-worker-manager\n    config: { ping_interval_ms: 250 }\n",
        )
        .unwrap();
        assert_eq!(c.client_timeouts.handshake, Duration::from_millis(500));
        assert_eq!(c.client_timeouts.idle_timeout, Duration::from_millis(7000));
        assert_eq!(c.worker_timeouts.ping_interval, Duration::from_millis(250));
        assert_eq!(c.worker_timeouts.handshake, Duration::from_secs(10));
        assert_eq!((c.send_queue_bytes, c.max_connections), (4096, Some(100)));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let zero = "workers:\n  - name: iii-stream\n    config: { idle_timeout_ms: 0 }\n";
        let e = format!("{:#}", Config::parse(zero).unwrap_err());
        assert!(e.contains("`idle_timeout_ms` must be at least 1"), "{e}");
    }
}
