//! validator: refuses items that do not match a small JSON schema, with an error that names
//! the field. Accepted items go to the store the host lends the adapter. Updates are applied
//! by the host through `get` and `set`, so they are validated too.
//!
//! Config: `{"schema": {"required": ["text"], "additionalProperties": false, "properties":
//! {"text": {"type": "string", "maxLength": 280}, "likes": {"type": "integer", "minimum": 0}}}}`

wit_bindgen::generate!({ path: "../../wit", world: "adapter" });

use exports::streamhost::adapter::stream_adapter::Guest as StreamAdapter;
use serde_json::{Map, Value};
use std::sync::Mutex;
use streamhost::adapter::store;
use streamhost::adapter::types::{AdapterError, Json, UpdateOutcome};

struct Validator;

static SCHEMA: Mutex<Option<Value>> = Mutex::new(None);

fn invalid(message: String) -> AdapterError {
    AdapterError::Invalid(message)
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        _ => false,
    }
}

/// Checks one value against its property schema; the error names the field.
fn check_field(name: &str, rule: &Value, value: &Value) -> Result<(), AdapterError> {
    if let Some(t) = rule.get("type").and_then(Value::as_str) {
        if !type_matches(t, value) {
            return Err(invalid(format!(
                "field `{name}` must be of type {t}, got {value}"
            )));
        }
    }
    if let (Some(max), Some(s)) = (
        rule.get("maxLength").and_then(Value::as_u64),
        value.as_str(),
    ) {
        if s.chars().count() as u64 > max {
            return Err(invalid(format!(
                "field `{name}` is longer than {max} characters"
            )));
        }
    }
    if let (Some(min), Some(n)) = (rule.get("minimum").and_then(Value::as_f64), value.as_f64()) {
        if n < min {
            return Err(invalid(format!(
                "field `{name}` must be at least {min}, got {n}"
            )));
        }
    }
    if let (Some(max), Some(n)) = (rule.get("maximum").and_then(Value::as_f64), value.as_f64()) {
        if n > max {
            return Err(invalid(format!(
                "field `{name}` must be at most {max}, got {n}"
            )));
        }
    }
    Ok(())
}

fn validate(schema: &Value, data: &Value) -> Result<(), AdapterError> {
    let Some(item) = data.as_object() else {
        return Err(invalid(format!(
            "an item must be a JSON object, got {data}"
        )));
    };
    let empty = Map::new();
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !item.contains_key(name) {
            return Err(invalid(format!("field `{name}` is required")));
        }
    }
    let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    for (name, value) in item {
        match properties.get(name) {
            Some(rule) => check_field(name, rule, value)?,
            None if closed => return Err(invalid(format!("field `{name}` is not allowed"))),
            None => {}
        }
    }
    Ok(())
}

impl StreamAdapter for Validator {
    fn init(config: Json) -> Result<(), AdapterError> {
        let config: Value = serde_json::from_str(&config)
            .map_err(|e| invalid(format!("config is not JSON: {e}")))?;
        let schema = config
            .get("schema")
            .cloned()
            .ok_or_else(|| invalid("config needs a `schema`".into()))?;
        if !schema.is_object() {
            return Err(invalid("`schema` must be an object".into()));
        }
        *SCHEMA.lock().unwrap() = Some(schema);
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
        let value: Value =
            serde_json::from_str(&data).map_err(|e| invalid(format!("data is not JSON: {e}")))?;
        let schema = SCHEMA.lock().unwrap().clone().unwrap_or(Value::Null);
        validate(&schema, &value)?;
        store::set(&stream, &group, &item, &data)
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
        Err(AdapterError::Unsupported)
    }
}

export!(Validator);
