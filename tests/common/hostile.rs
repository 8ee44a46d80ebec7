//! Helpers of the hostile-adapter tests (`tests/wasm_abuse.rs`, `tests/wasm_limits.rs`):
//! binding `adapters/hostile` under a stream name, the calls' payloads and error fields, and
//! native writes that show whether the engine still serves everyone else.

use super::{RawWorker, component};
use base64::Engine as _;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub async fn bind(
    w: &RawWorker,
    stream: &str,
    config: Value,
    limits: Value,
) -> Result<Value, Value> {
    let payload = json!({"stream_name": stream, "component": b64(&component("hostile")),
        "config": config, "limits": limits});
    w.call("streamhost::create_stream", payload)
        .await
        .map(Option::unwrap_or_default)
}

pub fn set(stream: &str, group: &str, item: &str, data: Value) -> Value {
    json!({"stream_name": stream, "group_id": group, "item_id": item, "data": data})
}

pub fn code(e: &Value) -> &str {
    e["code"].as_str().unwrap_or_default()
}

pub fn message(e: &Value) -> &str {
    e["message"].as_str().unwrap_or_default()
}

/// The `retry_after_ms` a `quota_exceeded` error carries beside its message.
pub fn retry_after_ms(e: &Value) -> u64 {
    e["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retry_after_ms in {e}"))
}

/// Native writes on a schedule (one every 50 ms from `from`): the worst lateness of an
/// answer against its planned time. Lateness, not the call's own duration, so that a runtime
/// whose threads are all held (which would also hold this probe) is seen.
pub async fn probe(w: &RawWorker, from: Instant, writes: u32) -> Duration {
    let mut worst = Duration::ZERO;
    for n in 0..writes {
        let planned = from + Duration::from_millis(50) * n;
        tokio::time::sleep_until(planned.into()).await;
        native_write(w, n as usize).await;
        worst = worst.max(planned.elapsed());
    }
    worst
}

/// How long a native write on another stream takes to be answered.
pub async fn native_write(w: &RawWorker, n: usize) -> Duration {
    let t = Instant::now();
    w.ok(
        "stream::set",
        set("native", "g", &format!("i{n}"), json!(n)),
    )
    .await;
    t.elapsed()
}
