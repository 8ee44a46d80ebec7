//! The ops of `stream::update` (spec section 4), applied in order to one value.
//!
//! A failed op is skipped and reported; the others still apply. Ops are parsed one by one so
//! that one malformed op does not throw away a whole batch.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const MAX_PATH_DEPTH: usize = 32;
pub const MAX_MERGE_DEPTH: usize = 16;
pub const MAX_MERGE_KEYS: usize = 1024;
const FORBIDDEN_KEYS: [&str; 3] = ["__proto__", "constructor", "prototype"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpError {
    pub op_index: usize,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Path {
    Dotted(String),
    Segments(Vec<String>),
}

impl Path {
    fn segments(&self) -> Vec<String> {
        match self {
            Path::Dotted(s) if s.is_empty() => Vec::new(),
            Path::Dotted(s) => s.split('.').map(str::to_owned).collect(),
            Path::Segments(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum UpdateOp {
    Set { path: Path, value: Value },
    Merge { path: Option<Path>, value: Value },
    Increment { path: Path, by: Option<i64> },
    Decrement { path: Path, by: Option<i64> },
    Append { path: Option<Path>, value: Value },
    Remove { path: Path },
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

/// An op as it arrived: its JSON, and the op or the reason it could not be parsed.
#[derive(Debug, Clone)]
pub struct ParsedOp {
    raw: Value,
    op: Result<UpdateOp, (String, String)>,
}

impl ParsedOp {
    /// The op as the caller sent it, for adapters that apply ops themselves.
    pub fn raw(&self) -> Value {
        self.raw.clone()
    }
}

/// Parses each op on its own so that a bad one is reported, not fatal.
pub fn parse_ops(raw: &[Value]) -> Vec<ParsedOp> {
    raw.iter()
        .map(|v| ParsedOp {
            raw: v.clone(),
            op: serde_json::from_value::<UpdateOp>(v.clone()).map_err(|e| {
                let kind = v.get("type").and_then(Value::as_str).unwrap_or("op");
                (format!("{kind}.invalid"), e.to_string())
            }),
        })
        .collect()
}

/// Applies ops to the current value (a missing item starts as `{}`).
pub fn apply(current: Option<&Value>, ops: &[ParsedOp]) -> (Value, Vec<OpError>) {
    let mut value = current
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let mut errors = Vec::new();
    for (op_index, op) in ops.iter().enumerate() {
        let result = match &op.op {
            Ok(op) => apply_one(&mut value, op),
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
    (value, errors)
}

type OpResult = Result<(), (String, String)>;

fn fail(op: &str, what: &str, message: impl Into<String>) -> (String, String) {
    (format!("{op}.{what}"), message.into())
}

fn check_path(op: &str, segments: &[String]) -> OpResult {
    if segments.len() > MAX_PATH_DEPTH {
        return Err(fail(
            op,
            "path.too_deep",
            format!(
                "path has {} segments, the limit is {MAX_PATH_DEPTH}",
                segments.len()
            ),
        ));
    }
    if let Some(bad) = segments
        .iter()
        .find(|s| FORBIDDEN_KEYS.contains(&s.as_str()))
    {
        return Err(fail(
            op,
            "path.proto_polluted",
            format!("path segment {bad:?} is not allowed"),
        ));
    }
    Ok(())
}

/// Walks to the value at `segments`, creating empty objects on the way when `create` is set.
fn walk<'a>(
    root: &'a mut Value,
    segments: &[String],
    create: bool,
    op: &str,
) -> Result<Option<&'a mut Value>, (String, String)> {
    let mut cur = root;
    for (depth, seg) in segments.iter().enumerate() {
        cur = match cur {
            Value::Object(map) => {
                if !map.contains_key(seg) {
                    if !create {
                        return Ok(None);
                    }
                    map.insert(seg.clone(), Value::Object(Map::new()));
                }
                map.get_mut(seg).unwrap()
            }
            Value::Array(items) => match seg.parse::<usize>().ok().filter(|i| *i < items.len()) {
                Some(i) => &mut items[i],
                None if !create => return Ok(None),
                None => {
                    return Err(fail(
                        op,
                        "target_not_object",
                        format!(
                            "{seg:?} is not an index of the array at {}",
                            segments[..depth].join(".")
                        ),
                    ));
                }
            },
            _ => {
                return Err(fail(
                    op,
                    "target_not_object",
                    format!(
                        "the value at {:?} is not an object",
                        segments[..depth].join(".")
                    ),
                ));
            }
        };
    }
    Ok(Some(cur))
}

/// Writes `value` under `key` of a container (object key, or array index within bounds).
fn put(container: &mut Value, key: &str, value: Value, op: &str) -> OpResult {
    match container {
        Value::Object(map) => {
            map.insert(key.to_owned(), value);
            Ok(())
        }
        Value::Array(items) => match key.parse::<usize>().ok().filter(|i| *i < items.len()) {
            Some(i) => {
                items[i] = value;
                Ok(())
            }
            None => Err(fail(
                op,
                "target_not_object",
                format!("{key:?} is not an index of the array"),
            )),
        },
        _ => Err(fail(
            op,
            "target_not_object",
            format!("cannot set {key:?}: its parent is not an object"),
        )),
    }
}

fn get<'a>(container: &'a Value, key: &str) -> Option<&'a Value> {
    match container {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

fn depth_of(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth_of).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

fn apply_one(root: &mut Value, op: &UpdateOp) -> OpResult {
    let name = op.name();
    match op {
        UpdateOp::Set { path, value } => {
            let segs = path.segments();
            check_path(name, &segs)?;
            let Some((last, parents)) = segs.split_last() else {
                *root = value.clone();
                return Ok(());
            };
            let parent = walk(root, parents, true, name)?.expect("created");
            put(parent, last, value.clone(), name)
        }
        UpdateOp::Merge { path, value } => {
            let segs = path.as_ref().map(Path::segments).unwrap_or_default();
            check_path(name, &segs)?;
            let Value::Object(incoming) = value else {
                return Err(fail(
                    name,
                    "value.not_an_object",
                    "merge takes an object value",
                ));
            };
            if incoming.len() > MAX_MERGE_KEYS {
                return Err(fail(
                    name,
                    "value.too_many_keys",
                    format!(
                        "merge value has {} keys, the limit is {MAX_MERGE_KEYS}",
                        incoming.len()
                    ),
                ));
            }
            if depth_of(value) > MAX_MERGE_DEPTH {
                return Err(fail(
                    name,
                    "value.too_deep",
                    format!("merge value nests deeper than {MAX_MERGE_DEPTH} levels"),
                ));
            }
            if let Some(bad) = incoming
                .keys()
                .find(|k| FORBIDDEN_KEYS.contains(&k.as_str()))
            {
                return Err(fail(
                    name,
                    "path.proto_polluted",
                    format!("key {bad:?} is not allowed"),
                ));
            }
            let target = walk(root, &segs, true, name)?.expect("created");
            let Value::Object(map) = target else {
                return Err(fail(
                    name,
                    "target_not_object",
                    "the merge target is not an object",
                ));
            };
            for (k, v) in incoming {
                map.insert(k.clone(), v.clone());
            }
            Ok(())
        }
        UpdateOp::Increment { path, by } | UpdateOp::Decrement { path, by } => {
            let segs = path.segments();
            check_path(name, &segs)?;
            let by = by.unwrap_or(1);
            let delta = if matches!(op, UpdateOp::Decrement { .. }) {
                by.checked_neg()
            } else {
                Some(by)
            };
            let Some(delta) = delta else {
                return Err(fail(name, "overflow", "by is out of range"));
            };
            let Some((last, parents)) = segs.split_last() else {
                return Err(fail(
                    name,
                    "path.empty",
                    "increment needs a path to a number",
                ));
            };
            let parent = walk(root, parents, true, name)?.expect("created");
            let next = match get(parent, last) {
                None | Some(Value::Null) => Value::from(delta),
                Some(Value::Number(n)) => {
                    if let Some(i) = n.as_i64() {
                        match i.checked_add(delta) {
                            Some(sum) => Value::from(sum),
                            None => {
                                return Err(fail(
                                    name,
                                    "overflow",
                                    format!("{i} + {delta} overflows a 64-bit integer"),
                                ));
                            }
                        }
                    } else {
                        Value::from(n.as_f64().unwrap_or(0.0) + delta as f64)
                    }
                }
                Some(other) => {
                    return Err(fail(
                        name,
                        "not_number",
                        format!(
                            "the value at {:?} is {}, not a number",
                            segs.join("."),
                            kind_of(other)
                        ),
                    ));
                }
            };
            put(parent, last, next, name)
        }
        UpdateOp::Append { path, value } => {
            let segs = path.as_ref().map(Path::segments).unwrap_or_default();
            check_path(name, &segs)?;
            let target = match segs.split_last() {
                None => root,
                Some((last, parents)) => {
                    let parent = walk(root, parents, true, name)?.expect("created");
                    if get(parent, last).is_none() {
                        put(parent, last, Value::Null, name)?;
                    }
                    walk(parent, std::slice::from_ref(last), false, name)?.expect("just set")
                }
            };
            match (target, value) {
                (t @ Value::Null, Value::String(s)) => *t = Value::String(s.clone()),
                (t @ Value::Null, v) => *t = Value::Array(vec![v.clone()]),
                (Value::Array(items), v) => items.push(v.clone()),
                (Value::String(s), Value::String(more)) => s.push_str(more),
                (t, v) => {
                    return Err(fail(
                        name,
                        "type_mismatch",
                        format!("cannot append {} to {}", kind_of(v), kind_of(t)),
                    ));
                }
            }
            Ok(())
        }
        UpdateOp::Remove { path } => {
            let segs = path.segments();
            check_path(name, &segs)?;
            let Some((last, parents)) = segs.split_last() else {
                return Err(fail(
                    name,
                    "path.empty",
                    "remove needs a path; delete the item to remove it whole",
                ));
            };
            match walk(root, parents, false, name)? {
                Some(Value::Object(map)) => {
                    map.shift_remove(last);
                }
                Some(Value::Array(items)) => {
                    if let Some(i) = last.parse::<usize>().ok().filter(|i| *i < items.len()) {
                        items.remove(i);
                    }
                }
                _ => {}
            }
            Ok(())
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(start: Option<Value>, ops: Value) -> (Value, Vec<OpError>) {
        let ops = parse_ops(ops.as_array().unwrap());
        apply(start.as_ref(), &ops)
    }

    #[test]
    fn ops_apply_in_order_and_failures_are_skipped() {
        let (v, errs) = run(
            Some(json!({"n": 1, "s": "a", "list": [1]})),
            json!([
                {"type": "increment", "path": "n", "by": 5},
                {"type": "decrement", "path": ["n"], "by": 2},
                {"type": "append", "path": "s", "value": "b"},
                {"type": "append", "path": "list", "value": 2},
                {"type": "increment", "path": "s", "by": 1},
                {"type": "set", "path": "a.b.c", "value": true},
                {"type": "merge", "value": {"m": 1}},
                {"type": "merge", "path": "a", "value": {"x": 2}},
                {"type": "remove", "path": "a.b"},
                {"type": "append", "path": "n", "value": "x"},
                {"type": "merge", "value": 3},
                {"type": "bogus"}
            ]),
        );
        assert_eq!(
            v,
            json!({"n": 4, "s": "ab", "list": [1, 2], "a": {"x": 2}, "m": 1})
        );
        let codes: Vec<_> = errs.iter().map(|e| (e.op_index, e.code.as_str())).collect();
        assert_eq!(
            codes,
            vec![
                (4, "increment.not_number"),
                (9, "append.type_mismatch"),
                (10, "merge.value.not_an_object"),
                (11, "bogus.invalid")
            ]
        );
    }

    #[test]
    fn missing_item_starts_empty_and_root_set_replaces() {
        let (v, errs) = run(None, json!([{"type": "increment", "path": "count"}]));
        assert_eq!((v, errs.len()), (json!({"count": 1}), 0));
        let (v, _) = run(
            Some(json!({"a": 1})),
            json!([{"type": "set", "path": "", "value": [1, 2]}]),
        );
        assert_eq!(v, json!([1, 2]));
    }

    #[test]
    fn limits_and_forbidden_keys_are_refused() {
        let deep: Vec<String> = (0..33).map(|i| format!("k{i}")).collect();
        let mut nested = json!(1);
        for _ in 0..17 {
            nested = json!({"x": nested});
        }
        let many: Map<String, Value> = (0..1025).map(|i| (format!("k{i}"), json!(i))).collect();
        let (v, errs) = run(
            None,
            json!([
                {"type": "set", "path": deep, "value": 1},
                {"type": "set", "path": "__proto__.polluted", "value": 1},
                {"type": "merge", "value": {"constructor": 1}},
                {"type": "merge", "value": nested},
                {"type": "merge", "value": many},
                {"type": "set", "path": "ok", "value": 1},
                {"type": "set", "path": "ok.deeper", "value": 1}
            ]),
        );
        let codes: Vec<_> = errs.iter().map(|e| e.code.as_str()).collect();
        assert_eq!(
            codes,
            vec![
                "set.path.too_deep",
                "set.path.proto_polluted",
                "merge.path.proto_polluted",
                "merge.value.too_deep",
                "merge.value.too_many_keys",
                "set.target_not_object"
            ]
        );
        assert_eq!(v, json!({"ok": 1}));
    }
}
