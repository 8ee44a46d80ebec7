//! drafts: items with `"draft": true` are stored but kept from clients until published.
//! Workers can `get` a draft; `list` (and so a client's `sync`) leaves drafts out, and the
//! fan-out hook drops their events. When a published item goes back to draft, clients get a
//! `delete`; when a draft is published, clients get a `create`.

wit_bindgen::generate!({ path: "../../wit", world: "fanout-adapter" });

use exports::streamhost::adapter::fanout::Guest as Fanout;
use exports::streamhost::adapter::stream_adapter::Guest as StreamAdapter;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use streamhost::adapter::store;
use streamhost::adapter::types::{AdapterError, EventKind, Json, StreamEvent, UpdateOutcome};

struct Drafts;

/// For each write, whether the item was visible to clients before it: (stream, group, id).
static WAS_VISIBLE: Mutex<Option<HashMap<(String, String, String), bool>>> = Mutex::new(None);

fn is_draft(json: &str) -> bool {
    serde_json::from_str::<Value>(json)
        .ok()
        .and_then(|v| v.get("draft").cloned())
        == Some(Value::Bool(true))
}

impl StreamAdapter for Drafts {
    fn init(_config: Json) -> Result<(), AdapterError> {
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
        let visible = old.as_deref().is_some_and(|o| !is_draft(o));
        WAS_VISIBLE
            .lock()
            .unwrap()
            .get_or_insert_default()
            .insert((stream, group, item), visible);
        Ok(old)
    }

    fn delete(stream: String, group: String, item: String) -> Result<Option<Json>, AdapterError> {
        store::delete(&stream, &group, &item)
    }

    fn list_items(stream: String, group: String) -> Result<Vec<Json>, AdapterError> {
        Ok(store::list_items(&stream, &group)?
            .into_iter()
            .filter(|v| !is_draft(v))
            .collect())
    }

    fn list_groups(stream: String) -> Result<Vec<String>, AdapterError> {
        store::list_groups(&stream)
    }

    fn update(_: String, _: String, _: String, _: Json) -> Result<UpdateOutcome, AdapterError> {
        Err(AdapterError::Unsupported)
    }
}

impl Fanout for Drafts {
    fn on_event(mut event: StreamEvent) -> Vec<StreamEvent> {
        let key = (
            event.stream_name.clone(),
            event.group_id.clone(),
            event.id.clone().unwrap_or_default(),
        );
        let was_visible = WAS_VISIBLE
            .lock()
            .unwrap()
            .get_or_insert_default()
            .remove(&key);
        let draft = is_draft(&event.data);
        match event.kind {
            EventKind::Create | EventKind::Update if draft => {
                // Unpublished: clients that saw the item before are told it is gone.
                if was_visible == Some(true) {
                    event.kind = EventKind::Delete;
                    vec![event]
                } else {
                    vec![]
                }
            }
            EventKind::Update if was_visible == Some(false) => {
                event.kind = EventKind::Create;
                vec![event]
            }
            EventKind::Delete if draft => vec![],
            _ => vec![event],
        }
    }
}

export!(Drafts);
