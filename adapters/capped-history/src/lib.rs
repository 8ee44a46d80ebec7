//! capped-history: each group keeps only its newest `max_items` items (default 100), like a
//! chat room's scrollback. Items live in the store the host lends the adapter; the fan-out
//! hook tells clients about the items that a write pushed out, as `delete` events.

wit_bindgen::generate!({ path: "../../wit", world: "fanout-adapter" });

use exports::streamhost::adapter::fanout::Guest as Fanout;
use exports::streamhost::adapter::stream_adapter::Guest as StreamAdapter;
use std::sync::Mutex;
use streamhost::adapter::log::{Level, write as log};
use streamhost::adapter::store;
use streamhost::adapter::types::{AdapterError, EventKind, Json, StreamEvent, UpdateOutcome};

struct CappedHistory;

/// Settings from `init`, and the evictions waiting to be announced by the fan-out hook.
struct State {
    max_items: usize,
    /// (stream, group, item id, removed value)
    evicted: Vec<(String, String, String, Json)>,
}

static STATE: Mutex<State> = Mutex::new(State {
    max_items: 100,
    evicted: Vec::new(),
});

impl StreamAdapter for CappedHistory {
    fn init(config: Json) -> Result<(), AdapterError> {
        let config: serde_json::Value = serde_json::from_str(&config)
            .map_err(|e| AdapterError::Invalid(format!("config is not JSON: {e}")))?;
        let max = match config.get("max_items") {
            None => 100,
            Some(v) => v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                AdapterError::Invalid("max_items must be a whole number above 0".into())
            })? as usize,
        };
        STATE.lock().unwrap().max_items = max;
        log(
            Level::Info,
            &format!("capped-history keeps the newest {max} items per group"),
        );
        Ok(())
    }

    fn get(stream: String, group: String, item: String) -> Result<Option<Json>, AdapterError> {
        store::get(&stream, &group, &item)
    }

    fn set(
        stream: String,
        group: String,
        item: String,
        data: Json,
    ) -> Result<Option<Json>, AdapterError> {
        let old = store::set(&stream, &group, &item, &data)?;
        let mut state = STATE.lock().unwrap();
        let ids = store::list_ids(&stream, &group)?;
        let excess = ids.len().saturating_sub(state.max_items);
        for id in ids.into_iter().take(excess) {
            if let Some(value) = store::delete(&stream, &group, &id)? {
                state
                    .evicted
                    .push((stream.clone(), group.clone(), id, value));
            }
        }
        Ok(old)
    }

    fn delete(stream: String, group: String, item: String) -> Result<Option<Json>, AdapterError> {
        store::delete(&stream, &group, &item)
    }

    fn list_items(stream: String, group: String) -> Result<Vec<Json>, AdapterError> {
        store::list_items(&stream, &group)
    }

    fn list_groups(stream: String) -> Result<Vec<String>, AdapterError> {
        store::list_groups(&stream)
    }

    fn update(_: String, _: String, _: String, _: Json) -> Result<UpdateOutcome, AdapterError> {
        // The host reads, applies the ops and calls `set`, which enforces the cap.
        Err(AdapterError::Unsupported)
    }
}

impl Fanout for CappedHistory {
    /// Passes every event on, followed by a `delete` for each item a write pushed out.
    fn on_event(event: StreamEvent) -> Vec<StreamEvent> {
        let mut state = STATE.lock().unwrap();
        let mut out = vec![event];
        for (stream_name, group_id, id, data) in state.evicted.drain(..) {
            out.push(StreamEvent {
                stream_name,
                group_id,
                id: Some(id),
                kind: EventKind::Delete,
                name: None,
                data,
            });
        }
        out
    }
}

export!(CappedHistory);
