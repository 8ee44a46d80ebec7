//! Each op applied to the value being updated, with iii's rules for missing items and paths.

use super::{Failure, UpdateOp, check_merge_value, check_path, fail, key_segments, kind_of, label};
use serde_json::{Map, Number, Value};

/// The value being updated, and whether it is still the `{}` a missing item starts as: a
/// root `append`, `increment` or `decrement` on a missing item starts from nothing instead.
pub(super) struct Target {
    value: Value,
    missing: bool,
}

impl Target {
    pub(super) fn new(current: Option<&Value>) -> Target {
        Target {
            value: current
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new())),
            missing: current.is_none(),
        }
    }

    pub(super) fn into_value(self) -> Value {
        self.value
    }

    pub(super) fn apply(&mut self, op: &UpdateOp) -> Result<(), Failure> {
        let name = op.name();
        match op {
            UpdateOp::Set { path, value } => {
                check_path(name, key_segments(path))?;
                if path.is_empty() {
                    self.value = value.clone();
                } else {
                    self.first_level(name, path)?
                        .insert(path.clone(), value.clone());
                }
            }
            UpdateOp::Merge { path, value } => {
                let segments = path.as_ref().map(|p| p.segments()).unwrap_or_default();
                check_path(name, segments)?;
                check_merge_value(value)?;
                let Value::Object(incoming) = value else {
                    unreachable!("check_merge_value refuses other values")
                };
                let map = if segments.is_empty() {
                    match &mut self.value {
                        Value::Object(map) => map,
                        other => {
                            return Err(fail(
                                name,
                                "target_not_object",
                                format!(
                                    "cannot merge into the whole value: it is {}, not an object",
                                    kind_of(other)
                                ),
                            ));
                        }
                    }
                } else {
                    walk_or_create(&mut self.value, segments)
                };
                for (k, v) in incoming {
                    map.insert(k.clone(), v.clone());
                }
            }
            UpdateOp::Increment { path, by } => self.add(name, path, i128::from(*by))?,
            UpdateOp::Decrement { path, by } => self.add(name, path, -i128::from(*by))?,
            UpdateOp::Append { path, value } => {
                let segments = path.as_ref().map(|p| p.segments()).unwrap_or_default();
                check_path(name, segments)?;
                self.append(segments, value)?;
            }
            UpdateOp::Remove { path } => {
                check_path(name, key_segments(path))?;
                if path.is_empty() {
                    self.value = Value::Null;
                } else {
                    // O(1): the last key takes the removed key's place.
                    self.first_level(name, path)?.swap_remove(path);
                }
            }
        }
        self.missing = false;
        Ok(())
    }

    /// The whole value as an object, for an op on one of its first-level keys.
    fn first_level(&mut self, op: &str, key: &str) -> Result<&mut Map<String, Value>, Failure> {
        match &mut self.value {
            Value::Object(map) => Ok(map),
            other => Err(fail(
                op,
                "target_not_object",
                format!(
                    "cannot {op} {key:?}: the whole value is {}, not an object",
                    kind_of(other)
                ),
            )),
        }
    }

    /// `increment` and `decrement`: a missing key (or a missing item, at the root) starts at 0.
    fn add(&mut self, op: &str, path: &String, delta: i128) -> Result<(), Failure> {
        check_path(op, key_segments(path))?;
        let slot = if path.is_empty() {
            if self.missing {
                self.value = Value::from(0);
            }
            &mut self.value
        } else {
            self.first_level(op, path)?
                .entry(path.clone())
                .or_insert(Value::from(0))
        };
        let sum = match &*slot {
            Value::Number(n) => add_number(n, delta).ok_or_else(|| {
                fail(
                    op,
                    "overflow",
                    format!(
                        "{n} {op}ed by {} leaves the range of 64-bit numbers",
                        delta.unsigned_abs()
                    ),
                )
            })?,
            other => {
                return Err(fail(
                    op,
                    "not_number",
                    format!(
                        "the value at {} is {}, not a number",
                        label(key_segments(path)),
                        kind_of(other)
                    ),
                ));
            }
        };
        *slot = Value::Number(sum);
        Ok(())
    }

    fn append(&mut self, segments: &[String], value: &Value) -> Result<(), Failure> {
        let Some((leaf, parents)) = segments.split_last() else {
            // The root of a missing item starts from nothing, not from `{}`.
            if self.missing {
                self.value = Value::Null;
            }
            return append_to(&mut self.value, value, segments);
        };
        if !self.value.is_object() {
            return Err(fail(
                "append",
                "target_not_object",
                format!(
                    "cannot append at {}: the whole value is {}, not an object",
                    label(segments),
                    kind_of(&self.value)
                ),
            ));
        }
        let parent = walk_or_create(&mut self.value, parents);
        match parent.get_mut(leaf) {
            Some(existing) => append_to(existing, value, segments),
            None => {
                // A missing first-level key starts as a string append would leave it; a
                // missing leaf under a nested path is always an array.
                let start = match (parents.is_empty(), value) {
                    (true, Value::String(_)) => value.clone(),
                    _ => Value::Array(vec![value.clone()]),
                };
                parent.insert(leaf.clone(), start);
                Ok(())
            }
        }
    }
}

/// Pushes onto an array, concatenates onto a string, or starts a null target.
fn append_to(target: &mut Value, value: &Value, segments: &[String]) -> Result<(), Failure> {
    match (target, value) {
        (Value::Array(items), v) => items.push(v.clone()),
        (Value::String(s), Value::String(more)) => s.push_str(more),
        (t @ Value::Null, Value::String(s)) => *t = Value::String(s.clone()),
        (t @ Value::Null, v) => *t = Value::Array(vec![v.clone()]),
        (t, v) => {
            return Err(fail(
                "append",
                "type_mismatch",
                format!(
                    "cannot append {} to {} at {}: append needs an array, a string with a string value, null or a missing key",
                    kind_of(v),
                    kind_of(t),
                    label(segments)
                ),
            ));
        }
    }
    Ok(())
}

/// The object at `segments`, replacing the root, any missing segment and any non-object on
/// the way with an empty object (as iii does).
fn walk_or_create<'a>(root: &'a mut Value, segments: &[String]) -> &'a mut Map<String, Value> {
    let mut node = root;
    for seg in segments {
        node = as_object(node)
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    as_object(node)
}

/// The object `v` is, or an empty object put in its place.
fn as_object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(map) => map,
        _ => unreachable!("made an object above"),
    }
}

/// `n + delta` as an integer when `n` is one and the sum fits 64 bits (signed, or unsigned
/// above `i64::MAX`), as a float when `n` is a float; None when it does not fit.
fn add_number(n: &Number, delta: i128) -> Option<Number> {
    let whole = n.as_i64().map(i128::from).or(n.as_u64().map(i128::from));
    match whole {
        Some(i) => {
            let sum = i.checked_add(delta)?;
            i64::try_from(sum)
                .map(Number::from)
                .or_else(|_| u64::try_from(sum).map(Number::from))
                .ok()
        }
        None => Number::from_f64(n.as_f64()? + delta as f64),
    }
}
