//! The server-to-client frame of spec section 2, built once per event.

use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

/// What happened to an item (or a group, for `sync`).
#[derive(Debug, Clone)]
pub enum EventKind {
    Sync(Value),
    Create(Value),
    Update(Value),
    Delete(Value),
    /// An ephemeral `stream::send` event: `{"type":"event","event":{"type":name,"data":data}}`.
    Custom { name: String, data: Value },
    Unauthorized,
}

/// One event on a group, optionally about one item.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub stream_name: String,
    pub group_id: String,
    pub id: Option<String>,
    pub timestamp: u64,
    pub kind: EventKind,
}

pub fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl StreamEvent {
    pub fn new(stream_name: &str, group_id: &str, id: Option<&str>, kind: EventKind) -> Self {
        StreamEvent {
            stream_name: stream_name.to_owned(),
            group_id: group_id.to_owned(),
            id: id.map(str::to_owned),
            timestamp: now_millis(),
            kind,
        }
    }

    fn event_body(&self) -> Value {
        match &self.kind {
            EventKind::Sync(d) => json!({"type": "sync", "data": d}),
            EventKind::Create(d) => json!({"type": "create", "data": d}),
            EventKind::Update(d) => json!({"type": "update", "data": d}),
            EventKind::Delete(d) => json!({"type": "delete", "data": d}),
            EventKind::Custom { name, data } => {
                json!({"type": "event", "event": {"type": name, "data": data}})
            }
            EventKind::Unauthorized => json!({"type": "unauthorized"}),
        }
    }

    /// The frame as JSON, also the payload given to `stream` triggers.
    pub fn to_value(&self) -> Value {
        json!({
            "type": "stream",
            "timestamp": self.timestamp,
            "streamName": self.stream_name,
            "groupId": self.group_id,
            "id": self.id,
            "event": self.event_body(),
        })
    }

    /// The frame as text, encoded once and shared by every subscriber.
    pub fn encode(&self) -> String {
        self.to_value().to_string()
    }
}

/// An error frame for a client that sent something we cannot act on; the socket stays open.
pub fn error_frame(code: &str, message: &str) -> String {
    json!({"type": "error", "error": {"code": code, "message": message}}).to_string()
}
