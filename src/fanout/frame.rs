//! The server-to-client frame of spec section 2, built once per event.
//!
//! Frames about a group's events also carry the event's place in the group's history
//! (`offset` and `epoch`, see `history`), which the hub assigns as it sends them; clients of
//! the iii protocol ignore the extra fields.

use crate::json::Json;
use serde::Serialize;
use serde_json::{Value, json};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What happened to an item (or a group, for `sync`).
#[derive(Debug, Clone)]
pub enum EventKind {
    /// The item, or the group's items as an array: read as text and sent as it is.
    Sync(Json),
    Create(Value),
    Update(Value),
    Delete(Value),
    /// An ephemeral `stream::send` event: `{"type":"event","event":{"type":name,"data":data}}`.
    Custom {
        name: String,
        data: Value,
    },
    Unauthorized,
}

/// Where an event stands in its group's history: its offset, counted within an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: Arc<str>,
}

impl Position {
    /// Whether an event at this position comes at or before `other`: in the same epoch, or in
    /// another generation of the same bus epoch. A bus names its epochs `<epoch>.<generation>`
    /// (`storage::redis::history`) and a new generation goes on with the same offsets, so a
    /// node that lags can still hold events of the generation before.
    pub fn at_or_before(&self, other: &Position) -> bool {
        fn run(epoch: &str) -> Option<&str> {
            epoch.rsplit_once('.').map(|(run, _)| run)
        }
        self.offset <= other.offset
            && (self.epoch == other.epoch
                || run(&self.epoch).is_some_and(|r| run(&other.epoch) == Some(r)))
    }
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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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

    /// The frame at `position` in its group's history; `recovered` is set on a resuming
    /// join's `sync` (false).
    pub fn encode_at(&self, position: &Position, recovered: Option<bool>) -> String {
        let mut frame = self.frame();
        frame.offset = Some(position.offset);
        frame.epoch = Some(&position.epoch);
        frame.recovered = recovered;
        serde_json::to_string(&frame).expect("a frame of JSON values always serializes")
    }

    /// The marker that opens a recovery: `missed` events after `from` follow it.
    pub fn recovered_marker(
        stream_name: &str,
        group_id: &str,
        id: Option<&str>,
        from: &Position,
        missed: usize,
    ) -> String {
        json!({
            "type": "stream",
            "timestamp": now_millis(),
            "streamName": stream_name,
            "groupId": group_id,
            "id": id,
            "event": {"type": "recovered", "data": {"missed": missed}},
            "offset": from.offset,
            "epoch": &*from.epoch,
            "recovered": true,
        })
        .to_string()
    }

    /// The frame's parts, borrowed: encoding writes them out directly, without building a
    /// `Value` (a copy of the data) first.
    fn frame(&self) -> Frame<'_> {
        let event = match &self.kind {
            EventKind::Sync(data) => Body::Sync { data },
            EventKind::Create(data) => Body::Create { data },
            EventKind::Update(data) => Body::Update { data },
            EventKind::Delete(data) => Body::Delete { data },
            EventKind::Custom { name, data } => Body::Event {
                event: Custom { kind: name, data },
            },
            EventKind::Unauthorized => Body::Unauthorized,
        };
        Frame {
            kind: "stream",
            timestamp: self.timestamp,
            stream_name: &self.stream_name,
            group_id: &self.group_id,
            id: self.id.as_deref(),
            event,
            offset: None,
            epoch: None,
            recovered: None,
        }
    }

    /// The frame as JSON, also the payload given to `stream` triggers.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self.frame()).expect("a frame of JSON values always serializes")
    }

    /// Reads a server frame back (from another node); None when it is not one.
    pub fn from_value(frame: &Value) -> Option<StreamEvent> {
        if frame.get("type")? != "stream" {
            return None;
        }
        let event = frame.get("event")?;
        let data = || event.get("data").cloned().unwrap_or(Value::Null);
        let kind = match event.get("type")?.as_str()? {
            "sync" => EventKind::Sync(Json::from_value(&data())),
            "create" => EventKind::Create(data()),
            "update" => EventKind::Update(data()),
            "delete" => EventKind::Delete(data()),
            "unauthorized" => EventKind::Unauthorized,
            "event" => {
                let inner = event.get("event")?;
                EventKind::Custom {
                    name: inner.get("type")?.as_str()?.to_owned(),
                    data: inner.get("data").cloned().unwrap_or(Value::Null),
                }
            }
            _ => return None,
        };
        Some(StreamEvent {
            stream_name: frame.get("streamName")?.as_str()?.to_owned(),
            group_id: frame.get("groupId")?.as_str()?.to_owned(),
            id: frame.get("id").and_then(Value::as_str).map(str::to_owned),
            timestamp: frame
                .get("timestamp")
                .and_then(Value::as_u64)
                .unwrap_or_else(now_millis),
            kind,
        })
    }

    /// Names the event apart from its place in a history: two copies of one event, numbered
    /// differently (or not at all), have the same fingerprint.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.to_value().to_string().hash(&mut h);
        h.finish()
    }

    /// The fingerprint of an encoded frame; None when it is not an event's.
    pub fn fingerprint_of(frame: &str) -> Option<u64> {
        let value: Value = serde_json::from_str(frame).ok()?;
        Some(StreamEvent::from_value(&value)?.fingerprint())
    }

    /// The frame as text, encoded once and shared by every subscriber.
    pub fn encode(&self) -> String {
        serde_json::to_string(&self.frame()).expect("a frame of JSON values always serializes")
    }
}

/// A server frame, fields in the order iii writes them; the history's fields last.
#[derive(Serialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: u64,
    #[serde(rename = "streamName")]
    stream_name: &'a str,
    #[serde(rename = "groupId")]
    group_id: &'a str,
    id: Option<&'a str>,
    event: Body<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
}

/// The frame's `event`: `{"type": kind, ...}`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Body<'a> {
    Sync { data: &'a Json },
    Create { data: &'a Value },
    Update { data: &'a Value },
    Delete { data: &'a Value },
    Event { event: Custom<'a> },
    Unauthorized,
}

/// A `stream::send` event inside the frame's `event`.
#[derive(Serialize)]
struct Custom<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: &'a Value,
}

/// A frame already sent, marked as sent again in a recovery (`"recovered":true`). Every
/// encoded frame is a JSON object, so the field goes before its closing brace.
pub fn mark_recovered(frame: &str) -> String {
    let body = frame.strip_suffix('}').unwrap_or(frame);
    format!("{body},\"recovered\":true}}")
}

/// An error frame for a client that sent something we cannot act on; the socket stays open.
pub fn error_frame(code: &str, message: &str) -> String {
    json!({"type": "error", "error": {"code": code, "message": message}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_as_they_were_written() {
        let kinds = [
            EventKind::Sync(json!([1]).into()),
            EventKind::Create(json!({"a": 1})),
            EventKind::Update(json!("x")),
            EventKind::Delete(json!(null)),
            EventKind::Custom {
                name: "typing".into(),
                data: json!({"who": "ann"}),
            },
            EventKind::Unauthorized,
        ];
        for kind in kinds {
            let event = StreamEvent::new("s", "g", Some("i"), kind);
            let back = StreamEvent::from_value(&event.to_value()).expect("reads back");
            assert_eq!(back.to_value(), event.to_value());
        }
        assert!(StreamEvent::from_value(&json!({"type": "other"})).is_none());
    }

    #[test]
    fn frames_are_written_in_iii_field_order_with_the_history_fields_last() {
        let mut event = StreamEvent::new(
            "s",
            "g",
            None,
            EventKind::Custom {
                name: "typing".into(),
                data: json!({"b": 1, "a": [true]}),
            },
        );
        event.timestamp = 7;
        let at = Position {
            offset: 3,
            epoch: "e1".into(),
        };
        assert_eq!(
            event.encode_at(&at, Some(false)),
            r#"{"type":"stream","timestamp":7,"streamName":"s","groupId":"g","id":null,"event":{"type":"event","event":{"type":"typing","data":{"b":1,"a":[true]}}},"offset":3,"epoch":"e1","recovered":false}"#
        );
        event.kind = EventKind::Delete(json!("x"));
        event.id = Some("i".into());
        assert_eq!(
            event.encode(),
            r#"{"type":"stream","timestamp":7,"streamName":"s","groupId":"g","id":"i","event":{"type":"delete","data":"x"}}"#
        );
    }

    #[test]
    fn a_marked_frame_is_the_frame_with_recovered_true() {
        let event = StreamEvent::new("s", "g", None, EventKind::Create(json!({"a": "}"})));
        let marked: Value = serde_json::from_str(&mark_recovered(&event.encode())).unwrap();
        let mut expected = event.to_value();
        expected["recovered"] = json!(true);
        assert_eq!(marked, expected);
    }
}
