//! Where Redis is, and how failures to reach it are worded: every call goes through `run`,
//! which bounds it by `COMMAND_TIMEOUT` and names the URL (never its password) in the error.

use anyhow::anyhow;
use std::time::Duration;

/// The longest a call waits for Redis before failing.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is, and how to word errors about it.
pub struct RedisTarget {
    pub client: redis::Client,
    /// The URL with any password hidden, for logs and errors.
    pub url: String,
}

impl RedisTarget {
    /// Runs a Redis call with the command timeout, turning failures into errors that say what
    /// was unreachable.
    pub async fn run<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> anyhow::Result<T> {
        self.try_run(what, call).await.map_err(|f| f.error)
    }

    /// As `run`, saying also whether trying again may help: Redis was unreachable or slow,
    /// rather than refusing the call itself (a script error, a key of the wrong type).
    pub async fn try_run<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Failed> {
        let transient = |error| Failed {
            error,
            transient: true,
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.to_string().contains("certificate") => Err(transient(anyhow!(
                "redis at {}: the TLS handshake failed: {e} ({what} was not done; trust the server's CA by pointing SSL_CERT_FILE at it, or fix the certificate)",
                self.url
            ))),
            Ok(Err(e))
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error() =>
            {
                Err(transient(anyhow!(
                    "redis at {} is unreachable: {e} ({what} was not done or not confirmed; streamhost reconnects by itself once Redis is back)",
                    self.url
                )))
            }
            Ok(Err(e)) => Err(Failed {
                error: anyhow!("redis at {} refused {what}: {e}", self.url),
                transient: false,
            }),
            Err(_) => Err(transient(anyhow!(
                "redis at {} is unreachable: no answer to {what} within {:?} (streamhost reconnects by itself once Redis is back)",
                self.url,
                COMMAND_TIMEOUT
            ))),
        }
    }
}

/// A Redis call that failed.
pub struct Failed {
    pub error: anyhow::Error,
    /// Redis was unreachable or did not answer in time: the same call may work later.
    pub transient: bool,
}

/// The URL with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if userinfo.is_empty() => String::new(),
        None => "***".to_owned(),
    };
    format!("{scheme}://{user}@{}", &rest[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("redis://:secret@host:6379/1"),
            "redis://:***@host:6379/1"
        );
        assert_eq!(redact("rediss://ann:secret@host"), "rediss://ann:***@host");
        assert_eq!(redact("redis://token@host"), "redis://***@host");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
