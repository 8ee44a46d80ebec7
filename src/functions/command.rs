//! A built-in `stream::*` call, read from its payload once: the typed command `streams` runs.
//!
//! A worker's call arrives as text. Its payload is read straight from that text into the
//! command ([`Command::parse_text`]), so a `stream::set` builds no `Value` for the payload's
//! own object, its keys and its names: only the item's data becomes a `Value`. A payload that
//! does not fit goes the way a `Value` goes ([`Command::parse`]), whose error names the field.

use super::payloads::{
    GroupRef, ItemRef, Payload, SendPayload, SetPayload, StreamRef, UpdatePayload, parse,
};
use crate::error::FnError;
use serde_json::Value;
use serde_json::value::RawValue;

#[derive(Debug, PartialEq)]
pub enum Command {
    Set(SetPayload),
    Get(ItemRef),
    Delete(ItemRef),
    List(GroupRef),
    ListGroups(StreamRef),
    ListAll,
    Send(SendPayload),
    Update(UpdatePayload),
    Presence(GroupRef),
}

impl Command {
    /// Reads a built-in function's payload out of `data`.
    pub fn parse(function_id: &str, data: Value) -> Result<Command, FnError> {
        let f = function_id;
        Ok(match kind(function_id)? {
            Kind::Set => Command::Set(parse(f, data)?),
            Kind::Get => Command::Get(parse(f, data)?),
            Kind::Delete => Command::Delete(parse(f, data)?),
            Kind::List => Command::List(parse(f, data)?),
            Kind::ListGroups => Command::ListGroups(parse(f, data)?),
            Kind::ListAll => Command::ListAll,
            Kind::Send => Command::Send(parse(f, data)?),
            Kind::Update => Command::Update(parse(f, data)?),
            Kind::Presence => Command::Presence(parse(f, data)?),
        })
    }

    /// Reads a built-in function's payload from its JSON text. Serde reads the text into the
    /// payload directly; only when that fails (a field missing or of another type, a key
    /// given twice) is the text read as a `Value`, for `parse`'s answer and its error.
    pub fn parse_text(function_id: &str, data: &RawValue) -> Result<Command, FnError> {
        if let Some(command) = direct(kind(function_id)?, data.get()) {
            return Ok(command);
        }
        let value = serde_json::from_str(data.get())
            .map_err(|e| FnError::deserialization(function_id, e))?;
        Command::parse(function_id, value)
    }

    /// The group the command reads or writes, for the line a worker connection's calls to a
    /// group keep (`fanout::sequence`).
    pub fn group(&self) -> Option<(&str, &str)> {
        match self {
            Command::Set(p) => Some((&p.stream_name, &p.group_id)),
            Command::Get(p) | Command::Delete(p) => Some((&p.stream_name, &p.group_id)),
            Command::List(p) => Some((&p.stream_name, &p.group_id)),
            Command::Send(p) => Some((&p.stream_name, &p.group_id)),
            Command::Update(p) => Some((&p.stream_name, &p.group_id)),
            Command::ListGroups(_) | Command::ListAll | Command::Presence(_) => None,
        }
    }
}

/// Which built-in function a call names.
#[derive(Clone, Copy)]
enum Kind {
    Set,
    Get,
    Delete,
    List,
    ListGroups,
    ListAll,
    Send,
    Update,
    Presence,
}

fn kind(function_id: &str) -> Result<Kind, FnError> {
    Ok(match function_id {
        "stream::set" => Kind::Set,
        "stream::get" => Kind::Get,
        "stream::delete" => Kind::Delete,
        "stream::list" => Kind::List,
        "stream::list_groups" => Kind::ListGroups,
        "stream::list_all" => Kind::ListAll,
        "stream::send" => Kind::Send,
        "stream::update" => Kind::Update,
        "stream::presence" => Kind::Presence,
        _ => {
            return Err(FnError::new(
                "function_not_found",
                format!("function {function_id} is not registered"),
            ));
        }
    })
}

/// The command read by serde straight from the text, or None when the text does not fit.
fn direct(kind: Kind, text: &str) -> Option<Command> {
    fn read<T: Payload>(text: &str) -> Option<T> {
        serde_json::from_str(text).ok()
    }
    Some(match kind {
        Kind::Set => Command::Set(read(text)?),
        Kind::Get => Command::Get(read(text)?),
        Kind::Delete => Command::Delete(read(text)?),
        Kind::List => Command::List(read(text)?),
        Kind::ListGroups => Command::ListGroups(read(text)?),
        Kind::ListAll => Command::ListAll,
        Kind::Send => Command::Send(read(text)?),
        Kind::Update => Command::Update(read(text)?),
        Kind::Presence => Command::Presence(read(text)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Read from its text or from its `Value`, a payload gives the same command, or the same
    /// error naming the same field.
    #[test]
    fn text_and_value_read_alike() {
        let cases = [
            (
                "stream::set",
                json!({"stream_name": "s", "group_id": "g", "item_id": "i", "data": {"b": 1, "a": [null]}}),
            ),
            (
                "stream::set",
                json!({"stream_name": "s", "group_id": "g", "item_id": "i", "data": null, "x": 1}),
            ),
            (
                "stream::set",
                json!({"stream_name": "s", "group_id": "g", "item_id": 7, "data": 1}),
            ),
            (
                "stream::set",
                json!({"stream_name": "s", "group_id": "g", "item_id": "i"}),
            ),
            (
                "stream::get",
                json!({"stream_name": "s", "group_id": "g", "item_id": "i"}),
            ),
            (
                "stream::delete",
                json!({"stream_name": "s", "group_id": ["g"], "item_id": "i"}),
            ),
            ("stream::list", json!({"stream_name": "s", "group_id": "g"})),
            ("stream::list_groups", json!({"stream_name": "s"})),
            ("stream::list_all", json!(null)),
            (
                "stream::send",
                json!({"stream_name": "s", "group_id": "g", "type": "t", "data": {"x": 1}, "id": "i"}),
            ),
            (
                "stream::send",
                json!({"stream_name": "s", "group_id": "g", "event_type": "t"}),
            ),
            (
                "stream::send",
                json!({"stream_name": "s", "group_id": "g", "type": "t", "event_type": "u"}),
            ),
            (
                "stream::update",
                json!({"stream_name": "s", "group_id": "g", "item_id": "i", "ops": [{"type": "set", "path": "a", "value": 1}]}),
            ),
            (
                "stream::presence",
                json!({"stream_name": "s", "group_id": "g"}),
            ),
            ("stream::nothing", json!({})),
            ("stream::get", json!([1])),
        ];
        for (function_id, data) in cases {
            let text = RawValue::from_string(data.to_string()).unwrap();
            let from_text = Command::parse_text(function_id, &text);
            let from_value = Command::parse(function_id, data.clone());
            let show = |r: &Result<Command, FnError>| match r {
                Ok(c) => format!("{c:?}"),
                Err(e) => format!("{}: {}", e.code, e.message),
            };
            assert_eq!(show(&from_text), show(&from_value), "{function_id} {data}");
        }
        // A key given twice: serde's struct refuses it, the `Value` keeps the last.
        let text = RawValue::from_string(
            r#"{"stream_name":"s","group_id":"g","item_id":"a","item_id":"b","data":1}"#.into(),
        )
        .unwrap();
        let Ok(Command::Set(p)) = Command::parse_text("stream::set", &text) else {
            panic!("a key given twice is read as a Value reads it")
        };
        assert_eq!(p.item_id, "b");
    }
}
