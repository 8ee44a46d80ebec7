//! One test per rule of spec section 4, each checked against what iii's update ops do.

use super::*;
use serde_json::{Map, json};

fn run_with(limits: ValueLimits, start: Option<Value>, ops: Value) -> (Value, Vec<OpError>) {
    let ops = UpdateOps::parse(ops.as_array().unwrap(), &limits).expect("within the limits");
    apply(start.as_ref(), &ops).expect("a result within the limits")
}

fn run(start: Option<Value>, ops: Value) -> (Value, Vec<OpError>) {
    run_with(ValueLimits::default(), start, ops)
}

/// The result, asserting that no op failed.
fn ok(start: Option<Value>, ops: Value) -> Value {
    let (v, errors) = run(start, ops);
    assert!(errors.is_empty(), "{errors:?}");
    v
}

fn codes(errors: &[OpError]) -> Vec<(usize, &str)> {
    errors
        .iter()
        .map(|e| (e.op_index, e.code.as_str()))
        .collect()
}

#[test]
fn ops_apply_in_order_and_failures_are_skipped() {
    let (v, errs) = run(
        Some(json!({"n": 1, "s": "a", "list": [1]})),
        json!([
            {"type": "increment", "path": "n", "by": 5},
            {"type": "decrement", "path": "n", "by": 2},
            {"type": "append", "path": "s", "value": "b"},
            {"type": "append", "path": "list", "value": 2},
            {"type": "increment", "path": "s", "by": 1},
            {"type": "merge", "value": {"m": 1}},
            {"type": "append", "path": "n", "value": "x"},
            {"type": "merge", "value": 3},
            {"type": "bogus"}
        ]),
    );
    assert_eq!(v, json!({"n": 4, "s": "ab", "list": [1, 2], "m": 1}));
    assert_eq!(
        codes(&errs),
        vec![
            (4, "increment.not_number"),
            (6, "append.type_mismatch"),
            (7, "merge.value.not_an_object"),
            (8, "bogus.invalid")
        ]
    );
}

#[test]
fn a_dotted_string_path_is_one_literal_key() {
    let v = ok(
        Some(json!({"a": {"b": 1}})),
        json!([
            {"type": "set", "path": "a.b", "value": true},
            {"type": "increment", "path": "n.m", "by": 2},
            {"type": "append", "path": "x.y", "value": "s"},
            {"type": "merge", "path": "m.k", "value": {"z": 1}}
        ]),
    );
    assert_eq!(
        v,
        json!({"a": {"b": 1}, "a.b": true, "n.m": 2, "x.y": "s", "m.k": {"z": 1}})
    );
    let v = ok(Some(v), json!([{"type": "remove", "path": "a.b"}]));
    assert_eq!(v["a"], json!({"b": 1}), "the nested key is untouched");
    assert!(v.get("a.b").is_none());
}

#[test]
fn an_empty_path_is_the_whole_value() {
    let v = ok(
        Some(json!({"a": 1})),
        json!([{"type": "set", "path": "", "value": [1, 2]}]),
    );
    assert_eq!(v, json!([1, 2]));
    let v = ok(
        Some(json!({"a": 1})),
        json!([{"type": "merge", "path": "", "value": {"b": 2}}, {"type": "merge", "path": [], "value": {"c": 3}}]),
    );
    assert_eq!(v, json!({"a": 1, "b": 2, "c": 3}));
    assert_eq!(
        ok(
            Some(json!(5)),
            json!([{"type": "increment", "path": "", "by": 2}])
        ),
        json!(7)
    );
}

#[test]
fn remove_of_the_whole_value_clears_it_to_null() {
    let v = ok(
        Some(json!({"a": 1})),
        json!([{"type": "remove", "path": ""}]),
    );
    assert_eq!(v, Value::Null);
    // A missing key is no error, and remove never reaches below the first level.
    let v = ok(
        Some(json!({"a": 1})),
        json!([{"type": "remove", "path": "zz"}]),
    );
    assert_eq!(v, json!({"a": 1}));
}

#[test]
fn set_increment_decrement_and_remove_take_only_a_string_path() {
    let (v, errs) = run(
        Some(json!({"a": {"b": 1}})),
        json!([
            {"type": "set", "path": ["a", "b"], "value": 2},
            {"type": "increment", "path": ["a", "b"], "by": 1},
            {"type": "decrement", "path": ["a"], "by": 1},
            {"type": "remove", "path": ["a", "b"]},
            {"type": "set", "path": "ok", "value": 1}
        ]),
    );
    assert_eq!(
        codes(&errs),
        vec![
            (0, "set.invalid"),
            (1, "increment.invalid"),
            (2, "decrement.invalid"),
            (3, "remove.invalid")
        ]
    );
    assert!(
        errs[0].message.contains("string path"),
        "{}",
        errs[0].message
    );
    assert_eq!(v, json!({"a": {"b": 1}, "ok": 1}));
}

#[test]
fn merge_takes_a_key_or_literal_segments_and_creates_objects_on_the_way() {
    let v = ok(
        Some(json!({"a": 5, "keep": 1})),
        json!([
            {"type": "merge", "path": "k", "value": {"x": 1}},
            {"type": "merge", "path": ["p", "q.r", "s"], "value": {"y": 2}},
            {"type": "merge", "path": ["a", "b"], "value": {"z": 3}}
        ]),
    );
    assert_eq!(
        v,
        json!({"a": {"b": {"z": 3}}, "keep": 1, "k": {"x": 1}, "p": {"q.r": {"s": {"y": 2}}}})
    );
    // A nested merge replaces a non-object root, as iii does; a root merge refuses it.
    let v = ok(
        Some(json!([1])),
        json!([{"type": "merge", "path": ["a"], "value": {"x": 1}}]),
    );
    assert_eq!(v, json!({"a": {"x": 1}}));
    let (v, errs) = run(
        Some(json!([1])),
        json!([{"type": "merge", "value": {"x": 1}}]),
    );
    assert_eq!(
        (v, codes(&errs)),
        (json!([1]), vec![(0, "merge.target_not_object")])
    );
}

#[test]
fn append_under_a_nested_path_starts_an_array() {
    let v = ok(
        None,
        json!([{"type": "append", "path": ["x", "y"], "value": "s"}]),
    );
    assert_eq!(v, json!({"x": {"y": ["s"]}}));
    let v = ok(
        Some(v),
        json!([{"type": "append", "path": ["x", "y"], "value": "t"}]),
    );
    assert_eq!(v, json!({"x": {"y": ["s", "t"]}}));
}

#[test]
fn append_to_a_first_level_key_follows_the_value_kind() {
    let v = ok(
        Some(json!({"arr": [1], "s": "ab", "nul": null})),
        json!([
            {"type": "append", "path": "arr", "value": [2, 3]},
            {"type": "append", "path": "s", "value": "c"},
            {"type": "append", "path": "new_s", "value": "x"},
            {"type": "append", "path": "new_a", "value": {"k": 1}},
            {"type": "append", "path": ["one"], "value": "y"},
            {"type": "append", "path": "nul", "value": "z"}
        ]),
    );
    assert_eq!(
        v,
        json!({"arr": [1, [2, 3]], "s": "abc", "nul": "z", "new_s": "x", "new_a": [{"k": 1}], "one": "y"})
    );
    let (_, errs) = run(
        Some(json!({"s": "ab", "n": 1})),
        json!([
            {"type": "append", "path": "s", "value": 1},
            {"type": "append", "path": "n", "value": 1}
        ]),
    );
    assert_eq!(
        codes(&errs),
        vec![(0, "append.type_mismatch"), (1, "append.type_mismatch")]
    );
}

#[test]
fn a_root_append_on_a_missing_item_makes_the_value_the_item() {
    assert_eq!(
        ok(None, json!([{"type": "append", "value": "hello"}])),
        json!("hello")
    );
    assert_eq!(
        ok(
            None,
            json!([{"type": "append", "path": "", "value": {"k": 1}}])
        ),
        json!([{"k": 1}])
    );
    assert_eq!(
        ok(
            None,
            json!([{"type": "append", "value": "a"}, {"type": "append", "value": "b"}])
        ),
        json!("ab")
    );
    // An existing item is appended to as it is: `{}` takes no append.
    let (v, errs) = run(Some(json!({})), json!([{"type": "append", "value": "x"}]));
    assert_eq!(
        (v, codes(&errs)),
        (json!({}), vec![(0, "append.type_mismatch")])
    );
    // Once an op has written the missing item, it is no longer missing.
    let (_, errs) = run(
        None,
        json!([{"type": "set", "path": "a", "value": 1}, {"type": "append", "value": "x"}]),
    );
    assert_eq!(codes(&errs), vec![(1, "append.type_mismatch")]);
}

#[test]
fn a_missing_item_starts_empty_and_root_counters_start_at_zero() {
    assert_eq!(
        ok(None, json!([{"type": "increment", "path": "count"}])),
        json!({"count": 1})
    );
    assert_eq!(
        ok(None, json!([{"type": "increment", "path": "", "by": 4}])),
        json!(4)
    );
    assert_eq!(
        ok(None, json!([{"type": "decrement", "path": "", "by": 4}])),
        json!(-4)
    );
    assert_eq!(
        ok(None, json!([{"type": "decrement", "path": "d", "by": 2}])),
        json!({"d": -2})
    );
}

#[test]
fn increment_needs_a_number_and_stays_in_64_bits() {
    let (v, errs) = run(
        Some(
            json!({"nul": null, "s": "x", "f": 1.5, "big": i64::MAX, "top": u64::MAX, "low": i64::MIN}),
        ),
        json!([
            {"type": "increment", "path": "nul", "by": 1},
            {"type": "increment", "path": "s", "by": 1},
            {"type": "increment", "path": "f", "by": 2},
            {"type": "increment", "path": "big", "by": 1},
            {"type": "increment", "path": "top", "by": 1},
            {"type": "decrement", "path": "low", "by": 1}
        ]),
    );
    assert_eq!(
        codes(&errs),
        vec![
            (0, "increment.not_number"),
            (1, "increment.not_number"),
            (4, "increment.overflow"),
            (5, "decrement.overflow")
        ]
    );
    assert_eq!(v["f"], json!(3.5));
    assert_eq!(
        v["big"],
        json!(i64::MAX as u64 + 1),
        "past i64, an unsigned integer"
    );
}

#[test]
fn ops_on_a_first_level_key_need_an_object() {
    let (v, errs) = run(
        Some(json!([1, 2])),
        json!([
            {"type": "set", "path": "a", "value": 1},
            {"type": "increment", "path": "a", "by": 1},
            {"type": "decrement", "path": "a", "by": 1},
            {"type": "remove", "path": "a"},
            {"type": "append", "path": "a", "value": 1},
            {"type": "append", "path": ["a", "b"], "value": 1}
        ]),
    );
    assert_eq!(v, json!([1, 2]));
    assert_eq!(
        codes(&errs),
        vec![
            (0, "set.target_not_object"),
            (1, "increment.target_not_object"),
            (2, "decrement.target_not_object"),
            (3, "remove.target_not_object"),
            (4, "append.target_not_object"),
            (5, "append.target_not_object")
        ]
    );
}

#[test]
fn path_segments_are_bounded_at_256_bytes() {
    let at = "k".repeat(MAX_SEGMENT_BYTES);
    let past = "k".repeat(MAX_SEGMENT_BYTES + 1);
    let (v, errs) = run(
        None,
        json!([
            {"type": "set", "path": at, "value": 1},
            {"type": "set", "path": past, "value": 1},
            {"type": "merge", "path": ["a", past], "value": {}},
            {"type": "append", "path": [past], "value": 1},
            {"type": "remove", "path": past}
        ]),
    );
    assert_eq!(v, json!({at: 1}));
    assert_eq!(
        codes(&errs),
        vec![
            (1, "set.path.segment_too_long"),
            (2, "merge.path.segment_too_long"),
            (3, "append.path.segment_too_long"),
            (4, "remove.path.segment_too_long")
        ]
    );
}

#[test]
fn paths_are_bounded_at_32_segments_and_have_no_empty_segment() {
    let at: Vec<String> = (0..MAX_PATH_DEPTH).map(|i| format!("k{i}")).collect();
    let past: Vec<String> = (0..=MAX_PATH_DEPTH).map(|i| format!("k{i}")).collect();
    let (v, errs) = run(
        None,
        json!([
            {"type": "merge", "path": at, "value": {"x": 1}},
            {"type": "merge", "path": past, "value": {"x": 1}},
            {"type": "append", "path": past, "value": 1},
            {"type": "append", "path": ["a", ""], "value": 1},
            {"type": "merge", "path": [""], "value": {}}
        ]),
    );
    assert_eq!(
        codes(&errs),
        vec![
            (1, "merge.path.too_deep"),
            (2, "append.path.too_deep"),
            (3, "append.path.empty_segment"),
            (4, "merge.path.empty_segment")
        ]
    );
    assert_eq!(crate::limits::measure(&v).0, MAX_PATH_DEPTH + 1);
}

#[test]
fn prototype_keys_are_refused() {
    let (v, errs) = run(
        None,
        json!([
            {"type": "set", "path": "__proto__", "value": 1},
            {"type": "increment", "path": "constructor", "by": 1},
            {"type": "merge", "path": ["a", "prototype"], "value": {}},
            {"type": "merge", "value": {"constructor": 1}},
            {"type": "append", "path": ["__proto__"], "value": 1},
            {"type": "set", "path": "__proto__.x", "value": 1}
        ]),
    );
    assert_eq!(
        codes(&errs),
        vec![
            (0, "set.path.proto_polluted"),
            (1, "increment.path.proto_polluted"),
            (2, "merge.path.proto_polluted"),
            (3, "merge.value.proto_polluted"),
            (4, "append.path.proto_polluted")
        ]
    );
    assert_eq!(
        v,
        json!({"__proto__.x": 1}),
        "a literal key that merely contains one"
    );
}

#[test]
fn merge_values_are_bounded_in_keys_and_depth() {
    let keys = |n: usize| -> Value {
        Value::Object(
            (0..n)
                .map(|i| (format!("k{i}"), json!(i)))
                .collect::<Map<_, _>>(),
        )
    };
    let deep = |n: usize| {
        let mut v = json!(1);
        for _ in 0..n {
            v = json!({"x": v});
        }
        v
    };
    let (_, errs) = run(
        None,
        json!([
            {"type": "merge", "value": keys(MAX_MERGE_KEYS)},
            {"type": "merge", "value": keys(MAX_MERGE_KEYS + 1)},
            {"type": "merge", "value": deep(MAX_MERGE_DEPTH)},
            {"type": "merge", "value": deep(MAX_MERGE_DEPTH + 1)}
        ]),
    );
    assert_eq!(
        codes(&errs),
        vec![
            (1, "merge.value.too_many_keys"),
            (3, "merge.value.too_deep")
        ]
    );
}

#[test]
fn set_without_a_value_sets_null() {
    assert_eq!(
        ok(None, json!([{"type": "set", "path": "a"}])),
        json!({"a": null})
    );
}

fn nested(depth: usize) -> Value {
    let mut v = json!(0);
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

#[test]
fn the_op_count_is_bounded() {
    let limits = ValueLimits::default();
    let op = json!({"type": "increment", "path": "n"});
    let at = vec![op.clone(); limits.max_update_ops];
    let (v, _) = run(None, Value::Array(at.clone()));
    assert_eq!(v, json!({"n": limits.max_update_ops}));
    let mut past = at;
    past.push(op);
    let e = UpdateOps::parse(&past, &limits).unwrap_err();
    assert_eq!(e.code, "too_many_ops");
}

#[test]
fn an_op_value_past_a_limit_refuses_the_update() {
    let limits = ValueLimits::default();
    let op = |v: Value| json!([{"type": "set", "path": "a", "value": v}]);
    let d = limits.max_value_depth;
    assert!(UpdateOps::parse(op(nested(d)).as_array().unwrap(), &limits).is_ok());
    let e = UpdateOps::parse(op(nested(d + 1)).as_array().unwrap(), &limits).unwrap_err();
    assert_eq!(e.code, "value_too_deep");
    assert!(
        e.message.starts_with("the value of op 0 nests"),
        "{}",
        e.message
    );
}

#[test]
fn a_result_past_a_limit_refuses_the_update() {
    let limits = ValueLimits::default();
    let d = limits.max_value_depth;
    // {"a": value}: one level more than the value.
    let set_a = |v: Value| {
        let raw = json!([{"type": "set", "path": "a", "value": v}]);
        let ops = UpdateOps::parse(raw.as_array().unwrap(), &limits).unwrap();
        apply(Some(&json!({})), &ops)
    };
    assert_eq!(
        crate::limits::measure(&set_a(nested(d - 1)).unwrap().0).0,
        d
    );
    let e = set_a(nested(d)).unwrap_err();
    assert_eq!(e.code, "value_too_deep");
    assert!(
        e.message.starts_with("the result of the update nests 65"),
        "{}",
        e.message
    );

    // {"a": "xxx"}: 8 bytes around the text.
    let text = |n: usize| json!("x".repeat(n - 8));
    assert!(set_a(text(limits.max_item_bytes)).is_ok());
    assert_eq!(
        set_a(text(limits.max_item_bytes + 1)).unwrap_err().code,
        "item_too_large"
    );

    // Appends that each fit but together pass the limit.
    let small = ValueLimits {
        max_item_bytes: 20,
        ..limits
    };
    let raw = json!([{"type": "append", "path": "s", "value": "0123456789"}, {"type": "append", "path": "s", "value": "0123456789"}]);
    let ops = UpdateOps::parse(raw.as_array().unwrap(), &small).unwrap();
    assert_eq!(apply(None, &ops).unwrap_err().code, "item_too_large");
}
