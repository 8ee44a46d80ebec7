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

/// A component slow to compile: one core module of `functions` functions, each 1,000
/// additions shuffled among 64 locals (work for the register allocator), and no exports, so
/// that it is refused by the interface check that follows compilation. About 7 KB a
/// function; 100 take about 2 s of CPU to compile here. `seed` makes each one distinct.
pub fn slow_component(functions: u32, seed: u32) -> Vec<u8> {
    fn leb(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                return out.push(byte);
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }
    const OPS: u64 = 1000;
    const LOCALS: u64 = 64;
    // One function's body: 64 i32 locals, then `c = a + b` over them, then return local 0.
    let mut body = vec![1];
    leb(LOCALS, &mut body);
    body.push(0x7f);
    for j in 0..OPS {
        let j = j + u64::from(seed);
        for (op, local) in [(0x20, j), (0x20, j * 7 + 3)] {
            body.push(op);
            leb(local % LOCALS, &mut body);
        }
        body.push(0x6a); // i32.add
        body.push(0x21); // local.set
        leb((j * 13 + 5) % LOCALS, &mut body);
    }
    body.extend_from_slice(&[0x20, 0, 0x0b]);

    let mut module = b"\0asm\x01\0\0\0".to_vec();
    // Type 0: (func (param i32) (result i32)).
    section(1, &[1, 0x60, 1, 0x7f, 1, 0x7f], &mut module);
    let mut funcs = Vec::new();
    leb(u64::from(functions), &mut funcs);
    funcs.extend(std::iter::repeat_n(0, functions as usize));
    section(3, &funcs, &mut module);
    let mut code = Vec::new();
    leb(u64::from(functions), &mut code);
    for _ in 0..functions {
        leb(body.len() as u64, &mut code);
        code.extend_from_slice(&body);
    }
    section(10, &code, &mut module);
    // A component (layer 1) holding that one core module.
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component);
    component
}
