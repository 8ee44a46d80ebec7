//! Binding a WebAssembly adapter before publishing: the worker uploads the component with
//! `streamhost::create_stream` on its own socket and waits for the answer, so that the run
//! starts only once the stream is served by the adapter (or stops, saying why it is not).

use crate::options::Options;
use anyhow::{Context, bail};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::{Error, Message};

/// Base64 (standard alphabet, padded): the encoding `create_stream` takes the component in.
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | *b as u32) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Binds `stream` to the component in `--adapter`, on this worker's socket. A bind refused
/// with `quota_exceeded` (the tenant's adapters already busy) is tried again after the
/// `retry_after_ms` it names, as a well-behaved client does, for up to 60 s in all.
pub async fn bind<S>(o: &Options, stream_name: &str, ws: &mut S) -> anyhow::Result<()>
where
    S: Sink<Message, Error = Error> + Stream<Item = Result<Message, Error>> + Unpin,
{
    let Some(path) = &o.adapter else {
        return Ok(());
    };
    let component =
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let call = json!({
        "type": "invokefunction", "invocation_id": "bind", "function_id": "streamhost::create_stream",
        "data": {"stream_name": stream_name, "component": base64(&component), "config": {}, "limits": o.adapter_limits},
    })
    .to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        ws.send(Message::text(call.clone())).await?;
        let answer = tokio::time::timeout_at(deadline, async {
            while let Some(msg) = ws.next().await {
                let Message::Text(text) = msg? else { continue };
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if v["type"] == "invocationresult" && v["invocation_id"] == "bind" {
                    return Ok(v);
                }
            }
            bail!("the engine closed the worker socket during the bind")
        })
        .await
        .context("no answer to streamhost::create_stream within 60 s")??;
        let Some(e) = answer.get("error").filter(|e| !e.is_null()) else {
            return Ok(());
        };
        match e["retry_after_ms"].as_u64() {
            Some(ms) if e["code"] == "quota_exceeded" && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(ms)).await
            }
            _ => bail!("cannot bind {stream_name} to {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_pads_like_the_standard() {
        for (raw, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("\u{ff}\u{fe}", "w7/Dvg=="),
        ] {
            assert_eq!(base64(raw.as_bytes()), want, "{raw:?}");
        }
    }
}
