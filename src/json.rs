//! A JSON value kept as its text, for values that are stored, answered and logged as they are.
//!
//! An item read into a `serde_json::Value` is a tree of allocations (an `IndexMap` per object,
//! a `String` per key and string); copying one for the store, the log, an event and an answer,
//! and freeing each copy, was a third of a set's time. A `Json` is the value's compact text,
//! made once and shared: the store keeps it, the log record and the answer copy its bytes in,
//! and a read hands out the same text. Only what must look inside a value (update ops, an
//! event's fan-out, a trigger) reads it into a tree.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;
use std::fmt;
use std::sync::{Arc, LazyLock};

/// Valid JSON text: compact when made from a value, as given when read from a store.
#[derive(Clone)]
pub struct Json(Arc<RawValue>);

impl Json {
    /// The value's compact text, as `serde_json::to_string` writes it.
    pub fn from_value(value: &Value) -> Json {
        let raw = serde_json::value::to_raw_value(value).expect("a JSON value always serializes");
        Json(Arc::from(raw))
    }

    /// Reads `text`, which another store handed back, as the engine's compact text. It is read
    /// whole, as any value from outside is: serde_json's check of raw text skims strings and
    /// numbers (it lets a lone surrogate or `1e400` through, which no tree can hold later).
    pub fn parse(text: &str) -> serde_json::Result<Json> {
        serde_json::from_str::<Value>(text).map(|value| Json::from_value(&value))
    }

    pub fn null() -> Json {
        static NULL: LazyLock<Json> = LazyLock::new(|| Json::from_value(&Value::Null));
        NULL.clone()
    }

    /// The text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Whether `other` is this very text (a clone of it), not only an equal one.
    pub fn is(&self, other: &Json) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The text's length in bytes: what the value limits and quotas count.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value as a tree, at any depth (a log may hold values from before the limits).
    pub fn to_value(&self) -> Value {
        let mut de = serde_json::Deserializer::from_str(self.0.get());
        de.disable_recursion_limit();
        Value::deserialize(&mut de).expect("a Json holds valid JSON")
    }

    /// An object of `fields`, each value's text copied in (None writes `null`). The names are
    /// the engine's own and need no escaping.
    pub fn object(fields: &[(&str, Option<&Json>)]) -> Json {
        let len = fields
            .iter()
            .map(|(k, v)| k.len() + v.map_or(4, Json::len) + 4);
        let mut out = String::with_capacity(2 + len.sum::<usize>());
        out.push('{');
        for (n, (name, value)) in fields.iter().enumerate() {
            debug_assert!(!name.contains(['"', '\\']), "{name} needs escaping");
            if n > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(name);
            out.push_str("\":");
            out.push_str(value.map_or("null", Json::get));
        }
        out.push('}');
        Json::trusted(out)
    }

    /// An array of `items`, each one's text copied in.
    pub fn array(items: &[Json]) -> Json {
        let len: usize = items.iter().map(|i| i.len() + 1).sum();
        let mut out = String::with_capacity(2 + len);
        out.push('[');
        for (n, item) in items.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(item.get());
        }
        out.push(']');
        Json::trusted(out)
    }

    /// Text put together from valid parts (`object`, `array`): its syntax is checked again all
    /// the same, as anything the engine sends must be JSON whatever the bug.
    fn trusted(text: String) -> Json {
        let raw = RawValue::from_string(text).expect("JSON put together from JSON parts is JSON");
        Json(Arc::from(raw))
    }
}

impl From<Value> for Json {
    fn from(value: Value) -> Json {
        Json::from_value(&value)
    }
}

impl From<&Value> for Json {
    fn from(value: &Value) -> Json {
        Json::from_value(value)
    }
}

impl Serialize for Json {
    /// Written as it is, not quoted: serde_json copies the text in.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Read as it is written (a log record's value), and checked whole: at any depth, as the log
/// reads, with every string and number read for real (see [`Json::parse`]).
impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let mut de = serde_json::Deserializer::from_str(raw.get());
        de.disable_recursion_limit();
        Value::deserialize(&mut de).map_err(serde::de::Error::custom)?;
        Ok(Json(Arc::from(raw)))
    }
}

/// Two texts are equal as JSON values (a store may hand back text that is not compact).
impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        self.get() == other.get() || self.to_value() == other.to_value()
    }
}

impl PartialEq<Value> for Json {
    fn eq(&self, other: &Value) -> bool {
        self.to_value() == *other
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A value read as a log record's field is.
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Record {
        d: Json,
    }

    #[test]
    fn made_from_a_value_it_is_the_compact_text_and_reads_back() {
        let value = json!({"b": [1, 2.5, null], "a": "é \" \\", "c": {"d": true}});
        let made = Json::from_value(&value);
        assert_eq!(made.get(), serde_json::to_string(&value).unwrap());
        assert_eq!(made.len(), made.get().len());
        assert_eq!(made.to_value(), value);
        assert!(made.is(&made.clone()), "a clone is the same text");
        assert!(
            !made.is(&Json::from_value(&value)),
            "an equal text is another"
        );
    }

    #[test]
    fn it_serializes_as_its_text_inside_other_json() {
        let made = Json::from_value(&json!({"x": [1, "two"]}));
        let outer = json!({"result": &made});
        assert_eq!(outer, json!({"result": {"x": [1, "two"]}}));
        assert_eq!(
            serde_json::to_string(&[&made, &Json::null()]).unwrap(),
            r#"[{"x":[1,"two"]},null]"#
        );
    }

    #[test]
    fn objects_and_arrays_are_put_together_from_texts() {
        let (a, b) = (
            Json::from_value(&json!({"k": 1})),
            Json::from_value(&json!("s")),
        );
        let object = Json::object(&[("old_value", None), ("new_value", Some(&a))]);
        assert_eq!(object.get(), r#"{"old_value":null,"new_value":{"k":1}}"#);
        assert_eq!(Json::array(&[a.clone(), b]).get(), r#"[{"k":1},"s"]"#);
        assert_eq!(Json::array(&[]).get(), "[]");
    }

    #[test]
    fn text_that_is_not_json_is_refused_and_equality_is_by_value() {
        // Malformed, and what only a full read refuses: a lone surrogate, a number no f64 holds.
        for bad in [
            "{\"a\":",
            "nul",
            r#""\ud800""#,
            "1e400",
            r#"{"a":"\udc00x"}"#,
        ] {
            assert!(Json::parse(bad).is_err(), "{bad}");
            let record = format!(r#"{{"d":{bad}}}"#);
            assert!(serde_json::from_str::<Record>(&record).is_err(), "{record}");
        }
        let spaced = Json::parse(r#"{ "a" : [1, 2] }"#).unwrap();
        assert_eq!(
            spaced.get(),
            r#"{"a":[1,2]}"#,
            "read as the engine's compact text"
        );
        assert_eq!(spaced, Json::from_value(&json!({"a": [1, 2]})));
        assert_eq!(spaced, json!({"a": [1, 2]}));
        assert_ne!(spaced, Json::from_value(&json!({"a": [2, 1]})));
    }

    /// A value read back from its text is the value written: an update applied to the stored
    /// text, or an event read from it, must not move a float's last digit (serde_json's
    /// `float_roundtrip`; these two did without it).
    #[test]
    fn floats_read_back_exactly() {
        for f in [
            51.248178375505404,
            0.3,
            2.2250738585072014e-308,
            1.7976931348623157e308,
        ] {
            let value = json!({"f": f, "a": [f, -f]});
            assert_eq!(Json::from_value(&value).to_value(), value, "{f}");
        }
    }

    #[test]
    fn deep_text_reads_into_a_tree() {
        // As the log reads a record: past serde_json's default limit of 128 levels.
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        let mut de = serde_json::Deserializer::from_str(&deep);
        de.disable_recursion_limit();
        let json = Json::deserialize(&mut de).unwrap();
        let mut value = &json.to_value();
        let mut depth = 0;
        while let Some(inner) = value.as_array().and_then(|a| a.first()) {
            value = inner;
            depth += 1;
        }
        assert_eq!(depth, 299);
    }
}
