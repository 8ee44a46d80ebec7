//! The ops of `stream::update` (spec section 4), applied in order to one value, as iii does.
//!
//! Paths follow iii exactly: dots are never separators. `set`, `increment`, `decrement` and
//! `remove` take a string that is one first-level key (`""` is the whole value); `merge` and
//! `append` also take an array of literal segments, creating missing objects on the way.
//!
//! A failed op is skipped and reported; the others still apply. Ops are parsed one by one so
//! that one malformed op does not throw away a whole batch. The batch carries the value
//! limits (see `limits`): too many ops, or an op value or a result past a limit, refuses the
//! whole update before anything is stored.
//!
//! Every op costs time in its own size and its path, never in the item's: no op walks or
//! copies the whole value, and `remove` swaps the last key into the gap instead of shifting
//! every key after it (as iii's does; JSON objects are unordered).

mod apply;
#[cfg(test)]
mod tests;

use crate::error::FnError;
use crate::json::Json;
use crate::limits::ValueLimits;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const MAX_PATH_DEPTH: usize = 32;
pub const MAX_SEGMENT_BYTES: usize = 256;
pub const MAX_MERGE_DEPTH: usize = 16;
pub const MAX_MERGE_KEYS: usize = 1024;
const FORBIDDEN_KEYS: [&str; 3] = ["__proto__", "constructor", "prototype"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpError {
    pub op_index: usize,
    pub code: String,
    pub message: String,
}

/// The path of a `merge` or an `append`: one first-level key, or literal segments.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Path {
    Key(String),
    Segments(Vec<String>),
}

impl Path {
    /// The segments; `""` and `[]` are the whole value.
    fn segments(&self) -> &[String] {
        match self {
            Path::Key(k) => key_segments(k),
            Path::Segments(v) => v,
        }
    }
}

/// A string path: one first-level key, or none for `""`.
fn key_segments(key: &String) -> &[String] {
    if key.is_empty() {
        &[]
    } else {
        std::slice::from_ref(key)
    }
}

fn one() -> i64 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum UpdateOp {
    Set {
        path: String,
        /// As in iii, a missing value sets null.
        #[serde(default)]
        value: Value,
    },
    Merge {
        #[serde(default)]
        path: Option<Path>,
        value: Value,
    },
    Increment {
        path: String,
        #[serde(default = "one")]
        by: i64,
    },
    Decrement {
        path: String,
        #[serde(default = "one")]
        by: i64,
    },
    Append {
        #[serde(default)]
        path: Option<Path>,
        value: Value,
    },
    Remove {
        path: String,
    },
}

impl UpdateOp {
    fn name(&self) -> &'static str {
        match self {
            UpdateOp::Set { .. } => "set",
            UpdateOp::Merge { .. } => "merge",
            UpdateOp::Increment { .. } => "increment",
            UpdateOp::Decrement { .. } => "decrement",
            UpdateOp::Append { .. } => "append",
            UpdateOp::Remove { .. } => "remove",
        }
    }
}

/// An op's error code and message, before it gets its index.
type Failure = (String, String);

/// The ops of one update as they arrived, each parsed or the reason it could not be, with
/// the limits its values and its result must respect.
#[derive(Debug, Clone)]
pub struct UpdateOps {
    raw: Vec<Value>,
    ops: Vec<Result<UpdateOp, Failure>>,
    limits: ValueLimits,
}

impl UpdateOps {
    /// Parses each op on its own so that a bad one is reported, not fatal. Too many ops, or
    /// an op whose value is past a limit, refuses the whole update.
    pub fn parse(raw: &[Value], limits: &ValueLimits) -> Result<UpdateOps, FnError> {
        limits.check_ops(raw.len())?;
        for (i, op) in raw.iter().enumerate() {
            if let Some(value) = op.get("value") {
                limits.check(format_args!("the value of op {i}"), value)?;
            }
        }
        Ok(UpdateOps {
            raw: raw.to_vec(),
            ops: raw.iter().map(parse_one).collect(),
            limits: *limits,
        })
    }

    /// The ops as the caller sent them, for adapters that apply ops themselves.
    pub fn raw(&self) -> &[Value] {
        &self.raw
    }
}

const KEY_PATH_OPS: [&str; 4] = ["set", "increment", "decrement", "remove"];

fn parse_one(raw: &Value) -> Result<UpdateOp, Failure> {
    UpdateOp::deserialize(raw).map_err(|e| {
        let kind = raw.get("type").and_then(Value::as_str).unwrap_or("op");
        let message = match raw.get("path") {
            Some(Value::Array(_)) if KEY_PATH_OPS.contains(&kind) => format!(
                "{kind} takes a string path, one first-level key (dots are part of the key); only merge and append take an array of segments"
            ),
            _ => e.to_string(),
        };
        (format!("{kind}.invalid"), message)
    })
}

/// [`apply`] to a stored value's text: read into a tree, changed, and written out as text.
pub fn apply_to_text(
    current: Option<&Json>,
    ops: &UpdateOps,
) -> Result<(Json, Vec<OpError>), FnError> {
    let current = current.map(Json::to_value);
    let (new_value, errors) = apply(current.as_ref(), ops)?;
    Ok((Json::from_value(&new_value), errors))
}

/// Applies the ops to the current value (a missing item starts as `{}`), then checks the
/// result against the limits: past one, the update is refused and nothing may be stored.
pub fn apply(current: Option<&Value>, ops: &UpdateOps) -> Result<(Value, Vec<OpError>), FnError> {
    let mut target = apply::Target::new(current);
    let mut errors = Vec::new();
    for (op_index, op) in ops.ops.iter().enumerate() {
        let result = match op {
            Ok(op) => target.apply(op),
            Err(e) => Err(e.clone()),
        };
        if let Err((code, message)) = result {
            errors.push(OpError {
                op_index,
                code,
                message,
            });
        }
    }
    let value = target.into_value();
    ops.limits.check("the result of the update", &value)?;
    Ok((value, errors))
}

fn fail(op: &str, what: &str, message: impl Into<String>) -> Failure {
    (format!("{op}.{what}"), message.into())
}

/// Refuses a path iii refuses: too many segments, an empty or over-long segment, or a key
/// that pollutes JavaScript prototypes.
fn check_path(op: &str, segments: &[String]) -> Result<(), Failure> {
    if segments.len() > MAX_PATH_DEPTH {
        return Err(fail(
            op,
            "path.too_deep",
            format!(
                "the path has {} segments; the limit is {MAX_PATH_DEPTH}",
                segments.len()
            ),
        ));
    }
    for seg in segments {
        if seg.is_empty() {
            return Err(fail(
                op,
                "path.empty_segment",
                "a path segment is empty; use \"\" or no path for the whole value",
            ));
        }
        if seg.len() > MAX_SEGMENT_BYTES {
            return Err(fail(
                op,
                "path.segment_too_long",
                format!(
                    "a path segment is {} bytes; the limit is {MAX_SEGMENT_BYTES}",
                    seg.len()
                ),
            ));
        }
        if FORBIDDEN_KEYS.contains(&seg.as_str()) {
            return Err(fail(
                op,
                "path.proto_polluted",
                format!("the path segment {seg:?} is not allowed"),
            ));
        }
    }
    Ok(())
}

/// Refuses a merge value iii refuses: not an object, too many keys, a forbidden key, or
/// nested too deep.
fn check_merge_value(value: &Value) -> Result<(), Failure> {
    let Value::Object(incoming) = value else {
        return Err(fail(
            "merge",
            "value.not_an_object",
            format!("merge takes an object value, not {}", kind_of(value)),
        ));
    };
    if incoming.len() > MAX_MERGE_KEYS {
        return Err(fail(
            "merge",
            "value.too_many_keys",
            format!(
                "the merge value has {} keys; the limit is {MAX_MERGE_KEYS}",
                incoming.len()
            ),
        ));
    }
    if let Some(bad) = incoming
        .keys()
        .find(|k| FORBIDDEN_KEYS.contains(&k.as_str()))
    {
        return Err(fail(
            "merge",
            "value.proto_polluted",
            format!("the key {bad:?} is not allowed in a merge value"),
        ));
    }
    let depth = crate::limits::measure(value).0;
    if depth > MAX_MERGE_DEPTH {
        return Err(fail(
            "merge",
            "value.too_deep",
            format!("the merge value nests {depth} levels; the limit is {MAX_MERGE_DEPTH}"),
        ));
    }
    Ok(())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A path for messages: a first-level key quoted, segments as a JSON array, never dotted.
fn label(segments: &[String]) -> String {
    match segments {
        [] => "the whole value".to_owned(),
        [key] => format!("{key:?}"),
        more => serde_json::to_string(more).unwrap_or_default(),
    }
}
