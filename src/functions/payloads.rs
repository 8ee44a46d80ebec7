//! The payloads of the built-in `stream::*` functions, read out of a call's `data`.
//!
//! Nearly every call's payload is an object with exactly the fields its function needs, of
//! the right types: those fields are moved straight out of it ([`Payload::take`]). Anything
//! else goes through serde, whose error names the field that did not fit. Both readings give
//! the same payload (a test holds them to it); the direct one only skips serde's machinery,
//! which cost an in-memory `stream::set` a tenth of its time.

use crate::error::FnError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A payload that can be moved out of an object whose fields all fit.
pub trait Payload: DeserializeOwned {
    /// Moves the payload's fields out of `map`, or returns None, changing nothing, when one
    /// is missing or of another type.
    fn take(map: &mut Map<String, Value>) -> Option<Self>;
}

#[derive(Deserialize, Serialize, Debug, PartialEq)]
pub struct ItemRef {
    pub stream_name: String,
    pub group_id: String,
    pub item_id: String,
}

#[derive(Deserialize, Serialize, Debug, PartialEq)]
pub struct SetPayload {
    pub stream_name: String,
    pub group_id: String,
    pub item_id: String,
    pub data: Value,
}

#[derive(Deserialize, Serialize, Debug, PartialEq)]
pub struct GroupRef {
    pub stream_name: String,
    pub group_id: String,
}

#[derive(Deserialize, Serialize, Debug, PartialEq)]
pub struct StreamRef {
    pub stream_name: String,
}

#[derive(Deserialize, Serialize, Debug, PartialEq)]
pub struct SendPayload {
    pub stream_name: String,
    pub group_id: String,
    /// The iii skill writes `event_type`; the SDKs and the spec write `type`.
    #[serde(rename = "type", alias = "event_type")]
    pub event_type: String,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub id: Option<String>,
}

#[derive(Deserialize, Serialize, Debug, PartialEq)]
pub struct UpdatePayload {
    pub stream_name: String,
    pub group_id: String,
    pub item_id: String,
    pub ops: Vec<Value>,
}

/// Parses a payload, moving its values; the error names the field that did not fit.
pub fn parse<T: Payload>(function_id: &str, mut data: Value) -> Result<T, FnError> {
    if let Some(payload) = data.as_object_mut().and_then(T::take) {
        return Ok(payload);
    }
    serde_path_to_error::deserialize(data).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            FnError::deserialization(function_id, inner)
        } else {
            FnError::deserialization(function_id, format!("field `{path}`: {inner}"))
        }
    })
}

/// Moves out the string fields `keys`, if every one is a string; else changes nothing.
fn strings<const N: usize>(map: &mut Map<String, Value>, keys: [&str; N]) -> Option<[String; N]> {
    if !keys
        .iter()
        .all(|k| map.get(*k).is_some_and(Value::is_string))
    {
        return None;
    }
    Some(keys.map(|k| match map.get_mut(k) {
        Some(Value::String(s)) => std::mem::take(s),
        _ => unreachable!("checked above"),
    }))
}

impl Payload for ItemRef {
    fn take(map: &mut Map<String, Value>) -> Option<Self> {
        let [stream_name, group_id, item_id] =
            strings(map, ["stream_name", "group_id", "item_id"])?;
        Some(ItemRef {
            stream_name,
            group_id,
            item_id,
        })
    }
}

impl Payload for SetPayload {
    fn take(map: &mut Map<String, Value>) -> Option<Self> {
        if !map.contains_key("data") {
            return None;
        }
        let [stream_name, group_id, item_id] =
            strings(map, ["stream_name", "group_id", "item_id"])?;
        let data = map.get_mut("data").map(Value::take)?;
        Some(SetPayload {
            stream_name,
            group_id,
            item_id,
            data,
        })
    }
}

impl Payload for GroupRef {
    fn take(map: &mut Map<String, Value>) -> Option<Self> {
        let [stream_name, group_id] = strings(map, ["stream_name", "group_id"])?;
        Some(GroupRef {
            stream_name,
            group_id,
        })
    }
}

impl Payload for StreamRef {
    fn take(map: &mut Map<String, Value>) -> Option<Self> {
        let [stream_name] = strings(map, ["stream_name"])?;
        Some(StreamRef { stream_name })
    }
}

impl Payload for SendPayload {
    fn take(map: &mut Map<String, Value>) -> Option<Self> {
        // Both spellings of the type at once are serde's to refuse; an id must be a string
        // or null.
        let id_fits = map
            .get("id")
            .is_none_or(|id| id.is_string() || id.is_null());
        if map.contains_key("event_type") || !id_fits {
            return None;
        }
        let [stream_name, group_id, event_type] =
            strings(map, ["stream_name", "group_id", "type"])?;
        let data = map.get_mut("data").map(Value::take).unwrap_or_default();
        let id = match map.get_mut("id") {
            Some(Value::String(id)) => Some(std::mem::take(id)),
            _ => None,
        };
        Some(SendPayload {
            stream_name,
            group_id,
            event_type,
            data,
            id,
        })
    }
}

impl Payload for UpdatePayload {
    fn take(map: &mut Map<String, Value>) -> Option<Self> {
        if !map.get("ops").is_some_and(Value::is_array) {
            return None;
        }
        let [stream_name, group_id, item_id] =
            strings(map, ["stream_name", "group_id", "item_id"])?;
        let ops = match map.get_mut("ops").map(Value::take) {
            Some(Value::Array(ops)) => ops,
            _ => unreachable!("checked above"),
        };
        Some(UpdatePayload {
            stream_name,
            group_id,
            item_id,
            ops,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Reads `data` both ways: straight out of the object, and through serde alone.
    fn both<T: Payload + PartialEq + std::fmt::Debug>(data: &Value) -> (Option<T>, Option<T>) {
        let direct = data.clone().as_object_mut().and_then(T::take);
        let serde = serde_json::from_value::<T>(data.clone()).ok();
        (direct, serde)
    }

    /// Every payload the direct reading takes is exactly serde's; what it declines, serde
    /// reads or refuses itself (with the field named).
    fn agree<T: Payload + PartialEq + std::fmt::Debug>(cases: &[Value], direct_reads: usize) {
        let mut taken = 0;
        for data in cases {
            let (direct, serde) = both::<T>(data);
            if let Some(direct) = direct {
                assert_eq!(Some(&direct), serde.as_ref(), "for {data}");
                taken += 1;
            }
            let parsed = parse::<T>("stream::x", data.clone());
            assert_eq!(parsed.ok(), serde, "for {data}");
        }
        assert_eq!(taken, direct_reads, "payloads read directly");
    }

    #[test]
    fn direct_reads_agree_with_serde() {
        let item = |extra: Value| {
            let mut base = json!({"stream_name": "s", "group_id": "g", "item_id": "i"});
            base.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            base
        };
        agree::<SetPayload>(
            &[
                item(json!({"data": {"a": [1, {"b": null}]}})),
                item(json!({"data": null})),
                item(json!({"data": 1, "unknown": true})),
                item(json!({})),
                item(json!({"data": 1, "item_id": 7})),
                json!({"stream_name": "s", "group_id": "g", "data": 1}),
                json!([1, 2]),
                json!(null),
            ],
            3,
        );
        agree::<ItemRef>(
            &[
                item(json!({})),
                item(json!({"group_id": null})),
                json!({"stream_name": "s"}),
            ],
            1,
        );
        agree::<GroupRef>(
            &[
                json!({"stream_name": "s", "group_id": "g", "x": 1}),
                json!({"stream_name": "s", "group_id": ["g"]}),
            ],
            1,
        );
        agree::<StreamRef>(&[json!({"stream_name": "s"}), json!({"stream_name": 1})], 1);
        let send = |extra: Value| {
            let mut base = json!({"stream_name": "s", "group_id": "g"});
            base.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            base
        };
        agree::<SendPayload>(
            &[
                send(json!({"type": "t", "data": {"x": 1}, "id": "i"})),
                send(json!({"type": "t"})),
                send(json!({"type": "t", "id": null, "data": null})),
                send(json!({"event_type": "t", "data": 1})),
                send(json!({"type": "t", "event_type": "u"})),
                send(json!({"type": "t", "id": 5})),
                send(json!({"type": 1})),
                send(json!({})),
            ],
            3,
        );
        agree::<UpdatePayload>(
            &[
                item(json!({"ops": [{"type": "set", "path": "a", "value": 1}]})),
                item(json!({"ops": []})),
                item(json!({"ops": {"type": "set"}})),
                item(json!({})),
            ],
            2,
        );
    }

    /// A payload that does not fit is refused with the field named, as before.
    #[test]
    fn a_misfit_still_names_its_field() {
        let data = json!({"stream_name": "s", "group_id": "g", "item_id": 7, "data": 1});
        let e = parse::<SetPayload>("stream::set", data).unwrap_err();
        assert_eq!(e.code, "deserialization_error");
        assert!(e.message.contains("item_id"), "{}", e.message);
    }
}
