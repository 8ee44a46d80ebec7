//! hostile: a test fixture, not an example. It stores items like a well-behaved adapter,
//! except for a few item ids that make it misbehave, so that the tests can check that the
//! host contains each kind of failure and serves again afterwards:
//! - `loop`: spins forever (the per-call deadline must stop it);
//! - `memory`: allocates without end (the memory limit must stop it);
//! - `panic`: panics (a trap);
//! - `sleep`: sleeps 30 s in WASI (blocked in a host call; the outer deadline must end it);
//! - `huge`: `get` returns 8 MiB (the boundary limit must refuse it);
//! - `flood:N:B`: writes N items of B bytes through `store`, ignoring refusals;
//! - `log:N:B`: writes N log lines of B bytes;
//! - `error:B`: fails with an error message of B bytes;
//! - `fan:N` (the item id of an event): the fan-out hook returns N copies of the event.
//!
//! And by config, given to `init`: `init_sleep_ms` sleeps in `init` (as does the number in
//! the item `ctl/init_sleep_ms` of the config's `stream`, for later instances); `groups_bytes` makes
//! `list-groups` return that many bytes of group ids; `list_bytes` makes `list-items` of the
//! group `huge` return that many bytes of items.

wit_bindgen::generate!({ path: "../../wit", world: "fanout-adapter" });

use exports::streamhost::adapter::fanout::Guest as Fanout;
use exports::streamhost::adapter::stream_adapter::Guest as StreamAdapter;
use std::sync::OnceLock;
use streamhost::adapter::types::{AdapterError, Json, StreamEvent, UpdateOutcome};
use streamhost::adapter::{log, store};

struct Hostile;

static CONFIG: OnceLock<serde_json::Value> = OnceLock::new();

fn config(key: &str) -> Option<usize> {
    CONFIG.get()?.get(key)?.as_u64().map(|n| n as usize)
}

/// The numbers after `name:` in an item id, as in `flood:10:100`.
fn args(item: &str, name: &str) -> Option<Vec<usize>> {
    let rest = item.strip_prefix(name)?.strip_prefix(':')?;
    rest.split(':').map(|n| n.parse().ok()).collect()
}

fn misbehave(stream: &str, group: &str, item: &str) -> Result<(), AdapterError> {
    match item {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "panic" => panic!("the hostile adapter panics on purpose"),
        "sleep" => std::thread::sleep(std::time::Duration::from_secs(30)),
        _ => {}
    }
    if let Some(a) = args(item, "flood") {
        let value = format!("\"{}\"", "f".repeat(a[1].saturating_sub(2)));
        for i in 0..a[0] {
            let _ = store::set(stream, group, &format!("flood-{i}"), &value);
        }
    }
    if let Some(a) = args(item, "log") {
        let line = "l".repeat(a[1]);
        for _ in 0..a[0] {
            log::write(log::Level::Info, &line);
        }
    }
    if let Some(a) = args(item, "error") {
        return Err(AdapterError::Internal("e".repeat(a[0])));
    }
    Ok(())
}

impl StreamAdapter for Hostile {
    fn init(config: Json) -> Result<(), AdapterError> {
        let value: serde_json::Value = serde_json::from_str(&config).unwrap_or_default();
        let _ = CONFIG.set(value);
        let mut sleep_ms = self::config("init_sleep_ms").unwrap_or(0) as u64;
        // A later instance can be made to sleep: the item `ctl/init_sleep_ms` of the stream.
        if let Some(stream) = CONFIG.get().and_then(|c| c["stream"].as_str())
            && let Ok(Some(ms)) = store::get(stream, "ctl", "init_sleep_ms")
        {
            sleep_ms = ms.parse().unwrap_or(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(sleep_ms));
        Ok(())
    }

    fn get(stream: String, group: String, item: String) -> Result<Option<Json>, AdapterError> {
        misbehave(&stream, &group, &item)?;
        if item == "huge" {
            return Ok(Some(format!("\"{}\"", "x".repeat(8 << 20))));
        }
        store::get(&stream, &group, &item)
    }

    fn set(
        stream: String,
        group: String,
        item: String,
        data: Json,
    ) -> Result<Option<Json>, AdapterError> {
        misbehave(&stream, &group, &item)?;
        store::set(&stream, &group, &item, &data)
    }

    fn delete(stream: String, group: String, item: String) -> Result<Option<Json>, AdapterError> {
        store::delete(&stream, &group, &item)
    }

    fn list_items(stream: String, group: String) -> Result<Vec<Json>, AdapterError> {
        if let (Some(bytes), "huge") = (config("list_bytes"), group.as_str()) {
            let one = format!("\"{}\"", "i".repeat((1 << 20) - 2));
            return Ok(vec![one; bytes.div_ceil(1 << 20)]);
        }
        store::list_items(&stream, &group)
    }

    fn list_groups(stream: String) -> Result<Vec<String>, AdapterError> {
        if let Some(bytes) = config("groups_bytes") {
            let one = "g".repeat(1000);
            return Ok((0..bytes.div_ceil(1000))
                .map(|i| format!("{i:08}{}", &one[8..]))
                .collect());
        }
        store::list_groups(&stream)
    }

    fn update(_: String, _: String, _: String, _: Json) -> Result<UpdateOutcome, AdapterError> {
        Err(AdapterError::Unsupported)
    }
}

impl Fanout for Hostile {
    fn on_event(event: StreamEvent) -> Vec<StreamEvent> {
        match event.id.as_deref().and_then(|id| args(id, "fan")) {
            Some(a) => vec![event; a[0]],
            None => vec![event],
        }
    }
}

export!(Hostile);
