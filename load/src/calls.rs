//! The publisher's frames, written and read without a `serde_json::Value` in between.
//!
//! At hundreds of thousands of calls a second the load generator's own core is the limit of
//! what it can show: building each call as a `json!` tree and reading each answer into a
//! `Value` cost it several microseconds a call. The frames written here are byte for byte the
//! ones `json!` wrote (keys in the same order), so the engine's work is unchanged.

use crate::options::Function;
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt::Write;

/// What a call's frame is made of, apart from its sequence number and time.
pub struct CallFrames {
    function: Function,
    /// The stream's name as a JSON string (quoted and escaped once).
    stream: String,
    /// The item every call writes or reads, as a JSON string; None: `i{seq}`.
    item: Option<String>,
    pad: String,
}

impl CallFrames {
    pub fn new(function: Function, stream: &str, item: Option<&str>, size: usize) -> CallFrames {
        let quoted = |s: &str| serde_json::to_string(s).expect("a string always serializes");
        CallFrames {
            function,
            stream: quoted(stream),
            item: item.map(quoted),
            pad: "x".repeat(size),
        }
    }

    /// Writes call `seq` (sent at `t` ns, to group `g{group}`) into `buf`, replacing what it held.
    pub fn write(&self, buf: &mut String, seq: u64, t: u64, group: usize) {
        buf.clear();
        let function = self.function.id();
        let _ = write!(
            buf,
            r#"{{"type":"invokefunction","invocation_id":"{seq}","function_id":"{function}","data":{{"stream_name":{},"group_id":"#,
            self.stream
        );
        match self.function {
            Function::Get => {
                let _ = write!(buf, r#""g0","item_id":{}}}}}"#, self.item_json(seq));
                return;
            }
            Function::Set => {
                let _ = write!(buf, r#""g{group}","item_id":{}"#, self.item_json(seq));
            }
            Function::Send => {
                let _ = write!(buf, r#""g{group}","type":"bench""#);
            }
        }
        let _ = write!(
            buf,
            r#","data":{{"seq":{seq},"t":{t},"p":"{}"}}}}}}"#,
            self.pad
        );
    }

    fn item_json(&self, seq: u64) -> Cow<'_, str> {
        match &self.item {
            Some(item) => Cow::Borrowed(item),
            None => Cow::Owned(format!(r#""i{seq}""#)),
        }
    }
}

/// An `invocationresult`, as much of it as the publisher reads: its id, and its error's code.
#[derive(Deserialize)]
pub struct Answer<'a> {
    #[serde(borrow, default)]
    invocation_id: Option<Cow<'a, str>>,
    #[serde(default)]
    error: Option<AnswerError<'a>>,
}

#[derive(Deserialize)]
struct AnswerError<'a> {
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
}

impl<'a> Answer<'a> {
    /// None when `text` is not a JSON object (the caller counts nothing for it).
    pub fn read(text: &'a str) -> Option<Answer<'a>> {
        serde_json::from_str(text).ok()
    }

    /// The call's sequence number, when its id is one the publisher gave.
    pub fn seq(&self) -> Option<u64> {
        self.invocation_id.as_deref()?.parse().ok()
    }

    /// As `refusals::error_code`: `Some("")` for an error without a code, None for success.
    pub fn error_code(&self) -> Option<&str> {
        let error = self.error.as_ref()?;
        Some(error.code.as_deref().unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refusals;
    use serde_json::{Value, json};

    /// The frame the publisher wrote with `json!` before this module.
    fn with_json(
        function: Function,
        stream: &str,
        item: Option<&str>,
        pad: &str,
        seq: u64,
        t: u64,
        group: usize,
    ) -> Value {
        let group = format!("g{group}");
        let event = json!({"seq": seq, "t": t, "p": pad});
        let item = item.map(str::to_owned).unwrap_or_else(|| format!("i{seq}"));
        let data = match function {
            Function::Set => {
                json!({"stream_name": stream, "group_id": group, "item_id": item, "data": event})
            }
            Function::Get => json!({"stream_name": stream, "group_id": "g0", "item_id": item}),
            Function::Send => {
                json!({"stream_name": stream, "group_id": group, "type": "bench", "data": event})
            }
        };
        json!({"type": "invokefunction", "invocation_id": format!("{seq}"), "function_id": function.id(), "data": data})
    }

    #[test]
    fn frames_are_the_ones_json_wrote() {
        let mut buf = String::from("left over");
        for function in [Function::Set, Function::Get, Function::Send] {
            for (stream, item) in [
                ("bench", None),
                ("a \"quoted\"\\ \u{1} name", Some("it\"em")),
            ] {
                let frames = CallFrames::new(function, stream, item, 7);
                frames.write(&mut buf, 123456, 987654321, 5);
                let expected = with_json(function, stream, item, "xxxxxxx", 123456, 987654321, 5);
                let parsed: Value = serde_json::from_str(&buf).expect("the frame is JSON");
                assert_eq!(parsed, expected, "{function:?} {stream:?}");
            }
        }
        // Keys in the order `json!` wrote them with the engine's `preserve_order`.
        CallFrames::new(Function::Set, "s", None, 2).write(&mut buf, 7, 9, 1);
        let set = r#"{"type":"invokefunction","invocation_id":"7","function_id":"stream::set","data":{"stream_name":"s","group_id":"g1","item_id":"i7","data":{"seq":7,"t":9,"p":"xx"}}}"#;
        assert_eq!(buf, set);
    }

    #[test]
    fn answers_read_as_refusals_reads_them() {
        let answers = [
            json!({"type": "invocationresult", "invocation_id": "42", "function_id": "stream::set", "result": {"a": [1, 2]}}),
            json!({"type": "invocationresult", "invocation_id": "43", "result": null, "error": null}),
            json!({"type": "invocationresult", "invocation_id": "44", "error": {"code": "quota_exceeded", "message": "m", "retry_after_ms": 5}}),
            json!({"type": "invocationresult", "invocation_id": "4\u{35}", "error": {"message": "no code"}}),
            json!({"type": "invocationresult", "invocation_id": "store", "error": {"code": "a\"b"}}),
        ];
        let seqs = [Some(42), Some(43), Some(44), Some(45), None];
        for (v, seq) in answers.iter().zip(seqs) {
            let text = v.to_string();
            let answer = Answer::read(&text).expect("an answer");
            assert_eq!(answer.seq(), seq, "{text}");
            assert_eq!(answer.error_code(), refusals::error_code(v), "{text}");
        }
        assert!(Answer::read("not json").is_none());
    }
}
