//! The limits every value that enters a store must respect: nesting depth, encoded size, and
//! ops per update.
//!
//! They exist so that a store can always read back what it accepted. serde_json refuses to
//! parse more than 127 nested arrays and objects, and every reader on the way adds levels: a
//! durable log record wraps a value in one object, a client frame in three or four. So depth
//! is capped well below that (`MAX_DEPTH_SETTING`), and the size of an item is capped so that
//! one write cannot pin the store's lock or an SDK's frame limit.
//!
//! `check` measures depth and size in one walk, without building the encoding, and stops as
//! soon as a limit is passed: a huge value costs no more than the limit to refuse. Only when
//! it refuses does it walk the whole value again, to put the real figure in the message.

use crate::error::FnError;
use serde_json::{Number, Value};
use std::fmt::Write as _;

/// The highest `max_value_depth` the config accepts: with the few levels a log record or a
/// client frame adds, a value this deep still parses in any serde_json reader (127 levels).
pub const MAX_DEPTH_SETTING: usize = 100;

/// Limits for values entering a store; `Default` is what an engine runs with unless the stream
/// module's config says otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueLimits {
    /// Nested arrays and objects: `1` is `{"a":1}`, `2` is `{"a":[1]}`; a scalar is `0`.
    pub max_value_depth: usize,
    /// The value's size as compact JSON (what `serde_json::to_string` produces).
    pub max_item_bytes: usize,
    /// Ops in one `stream::update`.
    pub max_update_ops: usize,
}

impl Default for ValueLimits {
    /// 500 KiB items: a `stream::set` or `stream::update` result carries the old and the new
    /// value, and the Python iii-sdk reads frames of at most 1 MiB (the `websockets` default),
    /// so two items of this size plus the envelope still reach a Python worker. It is also
    /// the size class of common document stores (DynamoDB 400 KB, Firestore 1 MiB).
    fn default() -> Self {
        ValueLimits {
            max_value_depth: 64,
            max_item_bytes: 500 << 10,
            max_update_ops: 1024,
        }
    }
}

/// Which limit a walk passed first.
enum Over {
    Depth,
    Bytes,
}

/// Depth and encoded size, counted as the walk goes.
struct Meter {
    max_depth: usize,
    max_bytes: usize,
    deepest: usize,
    bytes: usize,
}

impl Meter {
    fn add(&mut self, n: usize) -> Result<(), Over> {
        self.bytes += n;
        if self.bytes > self.max_bytes {
            return Err(Over::Bytes);
        }
        Ok(())
    }

    /// Walks `v`, found at `depth` containers deep.
    fn walk(&mut self, v: &Value, depth: usize) -> Result<(), Over> {
        match v {
            Value::Null | Value::Bool(true) => self.add(4),
            Value::Bool(false) => self.add(5),
            Value::Number(n) => self.add(number_bytes(n)),
            Value::String(s) => self.add(string_bytes(s)),
            Value::Array(items) => {
                self.enter(depth + 1)?;
                // Brackets and commas.
                self.add(2 + items.len().saturating_sub(1))?;
                items.iter().try_for_each(|item| self.walk(item, depth + 1))
            }
            Value::Object(map) => {
                self.enter(depth + 1)?;
                // Braces, commas, colons.
                self.add(2 + map.len().saturating_sub(1) + map.len())?;
                map.iter().try_for_each(|(k, item)| {
                    self.add(string_bytes(k))?;
                    self.walk(item, depth + 1)
                })
            }
        }
    }

    fn enter(&mut self, depth: usize) -> Result<(), Over> {
        self.deepest = self.deepest.max(depth);
        if depth > self.max_depth {
            return Err(Over::Depth);
        }
        Ok(())
    }
}

/// A number's size as serde_json writes it: integers by their digits, floats as formatted.
fn number_bytes(n: &Number) -> usize {
    let digits = |u: u64| u.checked_ilog10().map_or(1, |d| d as usize + 1);
    match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => digits(u),
        (None, Some(i)) => 1 + digits(i.unsigned_abs()),
        (None, None) => {
            let mut count = Count(0);
            let _ = write!(count, "{n}");
            count.0
        }
    }
}

/// Counts the bytes written to it.
struct Count(usize);

impl std::fmt::Write for Count {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// A string's size as serde_json writes it: quoted, with `"`, `\` and control bytes escaped.
fn string_bytes(s: &str) -> usize {
    let escapes: usize = s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\x08' | b'\t' | b'\n' | b'\x0c' | b'\r' => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum();
    2 + s.len() + escapes
}

/// The depth and encoded size of a whole value.
pub fn measure(v: &Value) -> (usize, usize) {
    let mut meter = Meter {
        max_depth: usize::MAX,
        max_bytes: usize::MAX,
        deepest: 0,
        bytes: 0,
    };
    let _ = meter.walk(v, 0);
    (meter.deepest, meter.bytes)
}

impl ValueLimits {
    /// Refuses a value deeper or larger than the limits; `what` names it in the message
    /// ("stream::set data", "the result of the update"). A value within them is measured on
    /// the way: its encoded size is returned, so that callers need not walk it again.
    pub fn check(&self, what: impl std::fmt::Display, v: &Value) -> Result<usize, FnError> {
        let mut meter = Meter {
            max_depth: self.max_value_depth,
            max_bytes: self.max_item_bytes,
            deepest: 0,
            bytes: 0,
        };
        let Err(over) = meter.walk(v, 0) else {
            return Ok(meter.bytes);
        };
        let (depth, bytes) = measure(v);
        Err(match over {
            Over::Depth => FnError::new(
                "value_too_deep",
                format!(
                    "{what} nests {depth} levels of arrays and objects; the limit is {} (max_value_depth): flatten the value, or raise max_value_depth in the stream module's config (at most {MAX_DEPTH_SETTING})",
                    self.max_value_depth
                ),
            ),
            Over::Bytes => FnError::new(
                "item_too_large",
                format!(
                    "{what} is {bytes} bytes as JSON; the limit is {} (max_item_bytes): split it across several items, or raise max_item_bytes in the stream module's config",
                    self.max_item_bytes
                ),
            ),
        })
    }

    /// Refuses an update with more ops than the limit.
    pub fn check_ops(&self, count: usize) -> Result<(), FnError> {
        if count > self.max_update_ops {
            return Err(FnError::new(
                "too_many_ops",
                format!(
                    "the update has {count} ops; the limit is {} (max_update_ops): send them in several updates, or raise max_update_ops in the stream module's config",
                    self.max_update_ops
                ),
            ));
        }
        Ok(())
    }

    /// Sets one limit from the config file, refusing values that could not work.
    pub fn configure(&mut self, key: &str, n: u64) -> anyhow::Result<()> {
        let n = usize::try_from(n)?;
        if n == 0 {
            anyhow::bail!("`{key}` must be at least 1");
        }
        match key {
            "max_value_depth" if n > MAX_DEPTH_SETTING => anyhow::bail!(
                "`max_value_depth` is {n}; it may be at most {MAX_DEPTH_SETTING}, so that a value stays readable inside a log record or a client frame (JSON readers stop at 127 levels)"
            ),
            "max_value_depth" => self.max_value_depth = n,
            "max_item_bytes" => self.max_item_bytes = n,
            "max_update_ops" => self.max_update_ops = n,
            other => anyhow::bail!("`{other}` is not a value limit"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(depth: usize) -> Value {
        let mut v = json!("leaf");
        for i in 0..depth {
            v = if i % 2 == 0 {
                json!([v])
            } else {
                json!({"k": v})
            };
        }
        v
    }

    #[test]
    fn size_is_the_compact_encoding() {
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-17),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(10),
            json!(-1),
            json!(99),
            json!(1.5e300),
            json!(-0.000123),
            json!(""),
            json!("plain ünïcödé 日本"),
            json!("esc \" \\ \n \r \t \u{8} \u{c} \u{1} \u{1f} \u{7f}"),
            json!([]),
            json!({}),
            json!([1, [2, [3, {}]], {"a": null}]),
            json!({"k\"ey": {"nested": [true, false, "x"], "n": 3.25}, "": []}),
            nested(40),
        ];
        for v in values {
            let encoded = serde_json::to_string(&v).unwrap();
            assert_eq!(measure(&v).1, encoded.len(), "{encoded}");
        }
    }

    #[test]
    fn depth_counts_arrays_and_objects() {
        assert_eq!(measure(&json!(1)).0, 0);
        assert_eq!(measure(&json!({"a": 1})).0, 1);
        assert_eq!(measure(&json!({"a": [1], "b": 2})).0, 2);
        assert_eq!(measure(&nested(64)).0, 64);
    }

    #[test]
    fn each_limit_at_the_boundary_and_one_past() {
        let limits = ValueLimits {
            max_value_depth: 64,
            max_item_bytes: 100,
            max_update_ops: 3,
        };
        let deep = ValueLimits {
            max_item_bytes: usize::MAX,
            ..limits
        };
        assert!(deep.check("v", &nested(64)).is_ok());
        let e = deep.check("the value", &nested(65)).unwrap_err();
        assert_eq!(e.code, "value_too_deep");
        assert!(
            e.message.starts_with("the value nests 65 levels")
                && e.message.contains("limit is 64 (max_value_depth)"),
            "{}",
            e.message
        );

        // {"t":"xxx..."}: 8 bytes of syntax around the text.
        let sized = |n: usize| json!({"t": "x".repeat(n - 8)});
        assert!(limits.check("v", &sized(100)).is_ok());
        let e = limits.check("v", &sized(101)).unwrap_err();
        assert_eq!(e.code, "item_too_large");
        assert!(
            e.message.contains("is 101 bytes") && e.message.contains("limit is 100"),
            "{}",
            e.message
        );

        assert!(limits.check_ops(3).is_ok());
        let e = limits.check_ops(4).unwrap_err();
        assert_eq!(e.code, "too_many_ops");
        assert!(e.message.contains("4 ops; the limit is 3"), "{}", e.message);
    }

    #[test]
    fn the_walk_stops_at_the_first_limit_passed() {
        // A value far past the size limit is refused after about the limit's worth of walking:
        // the depth below the first element is never reached.
        let limits = ValueLimits {
            max_value_depth: 2,
            max_item_bytes: 10,
            max_update_ops: 1,
        };
        let v = json!(["x".repeat(100), [[["deep"]]]]);
        assert_eq!(limits.check("v", &v).unwrap_err().code, "item_too_large");
        let v = json!([[[1]], "x".repeat(100)]);
        assert_eq!(limits.check("v", &v).unwrap_err().code, "value_too_deep");
    }

    #[test]
    fn a_depth_setting_above_the_ceiling_is_refused() {
        let mut limits = ValueLimits::default();
        limits.configure("max_value_depth", 100).unwrap();
        assert_eq!(limits.max_value_depth, 100);
        let e = limits.configure("max_value_depth", 101).unwrap_err();
        assert!(e.to_string().contains("at most 100"), "{e}");
        assert!(limits.configure("max_update_ops", 0).is_err());
    }

    #[test]
    fn the_ceiling_stays_readable_inside_a_frame() {
        // A value at the ceiling, wrapped as a client sync frame (four levels), still parses.
        let frame = json!({"event": {"type": "sync", "data": [{"v": nested(MAX_DEPTH_SETTING)}]}});
        let text = frame.to_string();
        assert!(serde_json::from_str::<Value>(&text).is_ok());
        // And the reader's limit is what the ceiling leaves room for.
        let too_deep = nested(128).to_string();
        assert!(serde_json::from_str::<Value>(&too_deep).is_err());
    }
}
