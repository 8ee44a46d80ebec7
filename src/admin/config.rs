//! The `admin:` key of the config file: where the admin API listens and the operator key.
//!
//! ```yaml
//! admin:
//!   host: 127.0.0.1        # the default; anything else is plain HTTP carrying the key
//!   port: 3113
//!   key_sha256: 9f86…08    # SHA-256 of the operator key (`echo -n KEY | sha256sum`)
//!   # or: key_env: STREAMHOST_ADMIN_KEY   (a variable holding the key itself)
//! ```
//!
//! Only the digest is kept, whichever way the key is given: the engine never holds the
//! operator key in clear, so no dump of its memory or its config can replay it. Without an
//! `admin:` key there is no admin listener at all.

use crate::tenants::hash_key;
use crate::tenants::keys::KEY_PREFIX;
use anyhow::{Context, bail};
use serde_yaml_ng::Value;

/// A key shorter than this is refused: the operator key guards every tenant.
pub const MIN_KEY_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub host: String,
    pub port: u16,
    /// Lowercase hex SHA-256 of the operator key.
    pub key_sha256: String,
}

impl AdminConfig {
    /// Reads the `admin:` mapping; `env` looks up `key_env` (the process environment).
    pub fn parse(value: &Value, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let Some(map) = value.as_mapping() else {
            bail!("`admin` must be a mapping: {{ host, port, key_sha256 | key_env }}");
        };
        let mut host = "127.0.0.1".to_owned();
        let mut port = None;
        let mut digest = None;
        let mut key_env = None;
        for (key, value) in map {
            let key = key.as_str().unwrap_or_default();
            let text = || -> anyhow::Result<String> {
                match value {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => bail!("`admin.{key}` must be a string"),
                }
            };
            match key {
                "host" => host = text()?,
                "port" => {
                    let n: u16 = text()?.trim().parse().with_context(|| {
                        format!("`admin.port` must be a port number (0-65535), not {value:?}")
                    })?;
                    port = Some(n);
                }
                "key_sha256" => digest = Some(text()?),
                "key_env" => key_env = Some(text()?),
                other => bail!(
                    "unknown key `admin.{other}`: the admin API takes `host`, `port`, and one of `key_sha256` or `key_env`"
                ),
            }
        }
        let port = port.context(
            "`admin.port` is missing: say where the admin API listens, e.g. `port: 3113`",
        )?;
        let key_sha256 = match (digest, key_env) {
            (Some(d), None) => check_digest(&d)?,
            (None, Some(var)) => {
                let clear = env(&var).with_context(|| {
                    format!(
                        "`admin.key_env` names {var}, which is not set: set it to the operator key"
                    )
                })?;
                if clear.len() < MIN_KEY_BYTES {
                    bail!(
                        "the operator key in {var} is {} bytes; use at least {MIN_KEY_BYTES} random ones (`openssl rand -base64 32`)",
                        clear.len()
                    );
                }
                hash_key(&clear)
            }
            _ => bail!(
                "`admin` needs exactly one of `key_sha256` (the SHA-256 of the operator key, `echo -n KEY | sha256sum`) or `key_env` (a variable holding the key)"
            ),
        };
        Ok(AdminConfig {
            host,
            port,
            key_sha256,
        })
    }
}

/// 64 hex digits, lowercased. The value is never echoed: it may be a key pasted by mistake.
fn check_digest(d: &str) -> anyhow::Result<String> {
    if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(d.to_ascii_lowercase());
    }
    let hint = if d.starts_with(KEY_PREFIX) || d.len() != 64 {
        " (is it the key itself? Store its digest, or name a variable with `key_env`)"
    } else {
        ""
    };
    bail!(
        "`admin.key_sha256` must be the SHA-256 of the operator key, 64 hex digits (`echo -n KEY | sha256sum`){hint}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    type Env<'a> = &'a [(&'a str, &'a str)];

    fn parse(yaml: &str, env: Env) -> anyhow::Result<AdminConfig> {
        let value: Value = serde_yaml_ng::from_str(yaml).unwrap();
        AdminConfig::parse(&value, |name| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn a_digest_or_a_variable_gives_the_same_digest() {
        let key = "operator-key-0123456789";
        let by_digest = parse(
            &format!(
                "{{ port: 3113, key_sha256: {} }}",
                hash_key(key).to_uppercase()
            ),
            &[],
        )
        .unwrap();
        let by_env = parse(
            "{ host: 0.0.0.0, port: 3113, key_env: OP_KEY }",
            &[("OP_KEY", key)],
        )
        .unwrap();
        assert_eq!(by_digest.key_sha256, hash_key(key));
        assert_eq!(by_env.key_sha256, hash_key(key));
        assert_eq!(
            (by_digest.host.as_str(), by_env.host.as_str()),
            ("127.0.0.1", "0.0.0.0")
        );
        assert_eq!(by_env.port, 3113);
        // The top-level key of a config file; without it there is no admin API.
        let yaml = format!("admin: {{ port: 3113, key_sha256: {} }}\n", hash_key(key));
        let config = crate::Config::parse(&yaml).unwrap();
        assert_eq!(config.admin, Some(by_digest));
        assert_eq!(crate::Config::parse("{}").unwrap().admin, None);
    }

    #[test]
    fn mistakes_say_what_to_fix_and_never_echo_a_key() {
        let key = "shk_this_is_a_clear_key_000000000";
        let cases: [(String, Env, &str); 7] = [
            (
                format!("{{ port: 1, key_sha256: {key} }}"),
                &[],
                "is it the key itself",
            ),
            ("{ port: 1 }".into(), &[], "exactly one of"),
            (
                format!("{{ port: 1, key_sha256: {}, key_env: X }}", hash_key(key)),
                &[],
                "exactly one of",
            ),
            (
                "{ key_env: X }".into(),
                &[("X", key)],
                "`admin.port` is missing",
            ),
            (
                "{ port: 1, key_env: UNSET }".into(),
                &[],
                "UNSET, which is not set",
            ),
            (
                "{ port: 1, key_env: X }".into(),
                &[("X", "short")],
                "at least 16",
            ),
            (
                "{ port: 1, key_env: X, tls: true }".into(),
                &[("X", key)],
                "unknown key `admin.tls`",
            ),
        ];
        for (yaml, env, expect) in cases {
            let err = format!("{:#}", parse(&yaml, env).unwrap_err());
            assert!(err.contains(expect), "{yaml}: {err}");
            assert!(!err.contains(key), "{yaml}: the key is echoed: {err}");
        }
        let err = parse("{ port: 70000, key_env: X }", &[("X", key)]).unwrap_err();
        assert!(format!("{err:#}").contains("port number"), "{err:#}");
    }
}
