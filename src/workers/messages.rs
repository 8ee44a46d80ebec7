//! The worker protocol's messages (spec section 6), typed at the socket's edge.
//!
//! `WorkerMessage::parse` reads a frame once, straight into its variant (serde's internally
//! tagged enum, as iii reads it), so the socket matches on a type instead of on strings.
//! Only a frame that fails that pass is read again: as a plain `Value`, which tells an unknown
//! `type` from a malformed message and keeps the last of two equal keys as serde_json's map
//! does; and when even that fails, through `scan`, which recovers the `invocation_id` of a
//! call that must still be answered.
//!
//! `EngineMessage` is every frame the engine writes to a worker; `encode` serializes it once,
//! from borrowed parts, with no `Value` built on the way.

use super::scan;
use super::shown::shown;
use crate::error::FnError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// A frame from a worker.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WorkerMessage<'a> {
    RegisterFunction(FunctionRef),
    UnregisterFunction(FunctionRef),
    RegisterTrigger(RegisterTrigger),
    UnregisterTrigger(TriggerRef),
    InvokeFunction(Invoke<'a>),
    InvocationResult(InvocationResult),
    Ping,
    Pong,
    /// Messages the SDKs send that streamhost has no use for (spec section 6).
    #[serde(
        rename = "registertriggertype",
        alias = "unregistertriggertype",
        alias = "registerservice",
        alias = "reattach"
    )]
    Ignored,
    /// A `type` streamhost does not know, or none: logged and ignored. `kind` is cut to a
    /// length fit for a log line (`shown`).
    #[serde(skip)]
    Unknown {
        kind: String,
    },
    /// A frame that could not be read as the message its `type` names.
    #[serde(skip)]
    Malformed(Malformed),
}

#[derive(Debug, Deserialize)]
pub struct FunctionRef {
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub struct TriggerRef {
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub struct RegisterTrigger {
    pub id: String,
    pub trigger_type: String,
    pub function_id: String,
    #[serde(default)]
    pub config: Value,
    /// Passed to every call the trigger makes.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Where the target function lives, and where the trigger type's provider does (iii's
    /// namespaces): checked against the worker's tenant (`namespace`).
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub trigger_namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Invoke<'a> {
    /// None for a fire-and-forget call.
    pub invocation_id: Option<String>,
    pub function_id: String,
    #[serde(default)]
    pub data: Data<'a>,
    /// Forwarded unchanged to the worker that serves the call.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Where iii would route the call: checked against the worker's tenant (`namespace`).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// A call's `data`: its text in the frame, when the call was read in the one-pass way (a
/// built-in call's payload is then read from the text into its command, with no `Value` for
/// the payload itself); else a `Value`.
#[derive(Debug)]
pub enum Data<'a> {
    Text(&'a RawValue),
    Value(Value),
}

impl<'a> Data<'a> {
    /// A call's data as its frame's one-pass read left it, or None when the frame must be
    /// read again to be refused as a whole read would refuse it. serde skips the text
    /// without counting its depth or checking a `\u` escape's surrogates (`\ud83d` alone).
    fn checked(text: Option<&'a RawValue>) -> Option<Data<'a>> {
        let Some(text) = text else {
            return Some(Data::default());
        };
        if too_deep(text) {
            return None;
        }
        if text.get().contains("\\u") {
            return serde_json::from_str(text.get()).ok().map(Data::Value);
        }
        Some(Data::Text(text))
    }

    /// The data as a `Value`, read from the text the first time. Text serde let through may
    /// still not read as a `Value` (a number out of range): the error says why, as the frame's
    /// would have.
    pub fn as_value(&mut self) -> Result<&Value, String> {
        if let Data::Text(text) = self {
            *self = Data::Value(read(text)?);
        }
        match self {
            Data::Value(value) => Ok(value),
            Data::Text(_) => unreachable!("read just above"),
        }
    }

    pub fn into_value(self) -> Result<Value, String> {
        match self {
            Data::Text(text) => read(text),
            Data::Value(value) => Ok(value),
        }
    }
}

fn read(text: &RawValue) -> Result<Value, String> {
    serde_json::from_str(text.get()).map_err(|e| format!("the frame is not valid JSON: {e}"))
}

impl Default for Data<'_> {
    fn default() -> Self {
        Data::Value(Value::Null)
    }
}

impl<'de> Deserialize<'de> for Data<'_> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Data::Value)
    }
}

#[derive(Debug, Deserialize)]
pub struct InvocationResult {
    pub invocation_id: String,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<Value>,
}

/// What could still be read of a malformed frame, so that a call in it is answered.
#[derive(Debug)]
pub struct Malformed {
    /// The frame's top-level `type`, when it is a string, cut to a length fit for a log line.
    pub kind: Option<String>,
    /// As sent: a caller that used a number still gets its number back.
    pub invocation_id: Option<Value>,
    pub function_id: Option<String>,
    pub problem: Problem,
}

#[derive(Debug, PartialEq)]
pub enum Problem {
    /// Valid JSON that does not fit the message; says which field is at fault.
    Shape(String),
    /// Not JSON serde_json can read; says why and how to fix the most likely causes.
    NotJson(String),
}

/// How an `invokefunction` must look, for the answer to a malformed one.
pub const INVOKE_SHAPE: &str = r#"expected {"type":"invokefunction","invocation_id"?:string,"function_id":string,"data":any,"metadata"?:any,"namespace"?:string}"#;

/// A call as a flat struct: the one frame a busy worker sends thousands of a second is read
/// in one pass, where the tagged enum would first copy it whole into serde's buffer. Any frame
/// it does not fit exactly (another `type`, a duplicate key, a field of another type) goes to
/// the enum.
#[derive(Deserialize)]
struct InvokeFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    invocation_id: Option<String>,
    function_id: String,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    namespace: Option<String>,
}

impl<'a> WorkerMessage<'a> {
    pub fn parse(text: &'a str) -> WorkerMessage<'a> {
        if let Ok(call) = serde_json::from_str::<InvokeFrame>(text)
            && call.kind == "invokefunction"
            && let Some(data) = Data::checked(call.data)
        {
            return WorkerMessage::InvokeFunction(Invoke {
                invocation_id: call.invocation_id,
                function_id: call.function_id,
                data,
                metadata: call.metadata,
                namespace: call.namespace,
            });
        }
        serde_json::from_str(text).unwrap_or_else(|_| Self::reparse(text))
    }

    /// The slow path, for a frame the typed pass refused.
    fn reparse(text: &str) -> WorkerMessage<'a> {
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return Self::unreadable(text, &e),
        };
        let field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
        let (kind, function_id) = (field("type"), field("function_id"));
        let invocation_id = value.get("invocation_id").cloned();
        let err = match Self::deserialize(value) {
            Ok(msg) => return msg,
            Err(e) => e,
        };
        let kind_str = kind.as_deref().unwrap_or_default();
        let Some(explained) = explain_kind(kind_str, text) else {
            return WorkerMessage::Unknown {
                kind: shown(kind_str).into_owned(),
            };
        };
        WorkerMessage::Malformed(Malformed {
            kind: kind.map(|k| shown(&k).into_owned()),
            invocation_id,
            function_id,
            problem: Problem::Shape(explained.unwrap_or_else(|| err.to_string())),
        })
    }

    fn unreadable(text: &str, err: &serde_json::Error) -> WorkerMessage<'a> {
        let found = scan::envelope(text);
        let detail = err.to_string();
        let hint = if detail.contains("recursion limit") {
            "; a frame may nest at most 127 levels, its own object included (serde_json's limit, as in iii): flatten the data"
        } else if detail.contains("surrogate") || detail.contains("end of hex escape") {
            // serde_json says "unexpected end of hex escape" for `"\ud83d"` on its own.
            "; a string holds a lone UTF-16 surrogate escape such as \\ud83d, what JavaScript writes for a string cut inside an emoji or other pair: cut strings on whole characters"
        } else {
            ""
        };
        WorkerMessage::Malformed(Malformed {
            kind: found.kind.map(|k| shown(&k).into_owned()),
            invocation_id: found.invocation_id.map(Value::String),
            function_id: found.function_id,
            problem: Problem::NotJson(format!("the frame is not valid JSON: {detail}{hint}")),
        })
    }
}

/// Whether a call's `data`, kept as text, nests deeper than serde_json reads a frame (127
/// levels, the frame's own object included): serde skips such text without counting, and
/// the frame must be refused as if it had been read whole, with the reason.
fn too_deep(data: &RawValue) -> bool {
    const MOST: usize = 126;
    // Each level takes two bytes at least: shorter text cannot be too deep.
    data.get().len() > 2 * MOST && scan::depth(data.get()) > MOST
}

/// Why a frame does not fit the message `kind` names, with the path of the field at fault;
/// None when `kind` names no message with fields. The frame is read again for this: tracking
/// the path on every frame would cost an allocation per key.
fn explain_kind(kind: &str, text: &str) -> Option<Option<String>> {
    Some(match kind {
        "registerfunction" | "unregisterfunction" => explain::<FunctionRef>(text),
        "registertrigger" => explain::<RegisterTrigger>(text),
        "unregistertrigger" => explain::<TriggerRef>(text),
        "invokefunction" => explain::<Invoke>(text),
        "invocationresult" => explain::<InvocationResult>(text),
        _ => return None,
    })
}

fn explain<T: for<'de> Deserialize<'de>>(text: &str) -> Option<String> {
    let mut frame = serde_json::Deserializer::from_str(text);
    let e = serde_path_to_error::deserialize::<_, T>(&mut frame).err()?;
    Some(match e.path().to_string().as_str() {
        "." => e.inner().to_string(),
        path => format!("{path}: {}", e.inner()),
    })
}

/// A frame from the engine to a worker. Optional fields are left out when absent, as iii
/// leaves them out.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EngineMessage<'a> {
    /// The first frame on every worker connection.
    WorkerRegistered {
        worker_id: &'a str,
    },
    Pong,
    /// A call of one of the worker's functions.
    InvokeFunction {
        invocation_id: &'a str,
        function_id: &'a str,
        data: &'a Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<&'a Value>,
    },
    /// The answer to the worker's call; the id goes back as it came.
    InvocationResult {
        invocation_id: &'a Value,
        function_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<&'a crate::json::Json>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a FnError>,
    },
    /// Sent only when a trigger is refused.
    TriggerRegistrationResult {
        id: &'a str,
        trigger_type: &'a str,
        function_id: &'a str,
        error: &'a FnError,
    },
    /// A registration refused, the connection kept open: a function id another live worker
    /// serves (with `function_id`), or worker metadata that names another tenant's namespace
    /// (with `worker_name`). iii's frame, field for field, and a `message` saying what to fix
    /// (the SDKs ignore it; a hand-written worker may log it).
    RegistrationRejected {
        code: &'a str,
        namespace: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        worker_name: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        function_id: Option<&'a str>,
        owner_worker_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<&'a str>,
    },
}

/// `RegistrationRejected`'s code for a function id that another live worker serves.
pub const FUNCTION_NAMESPACE_CONFLICT: &str = "FUNCTION_NAMESPACE_CONFLICT";

impl EngineMessage<'_> {
    pub fn encode(&self) -> String {
        // Room for a write's answer at once: serde_json starts at 128 bytes and grew the
        // buffer twice for most answers (2.6% of an in-memory set).
        let mut out = Vec::with_capacity(512);
        // Strings, `Value`s and `FnError`s: nothing here can fail to serialize.
        serde_json::to_writer(&mut out, self).expect("an engine message serializes");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shape_of(text: &str) -> (Option<String>, Option<Value>, Problem) {
        match WorkerMessage::parse(text) {
            WorkerMessage::Malformed(m) => (m.kind, m.invocation_id, m.problem),
            other => panic!("not malformed: {other:?}"),
        }
    }

    #[test]
    fn messages_read_in_one_pass_and_extra_fields_are_ignored() {
        let text = r#"{"type":"invokefunction","invocation_id":"c-1","function_id":"f","data":{"a":[1,2.5,null]},"traceparent":"x"}"#;
        assert!(serde_json::from_str::<WorkerMessage>(text).is_ok());
        let WorkerMessage::InvokeFunction(call) = WorkerMessage::parse(text) else {
            panic!("not a call")
        };
        assert_eq!(call.invocation_id.as_deref(), Some("c-1"));
        assert!(
            matches!(call.data, Data::Text(_)),
            "the data is kept as its text"
        );
        assert_eq!(call.data.into_value(), Ok(json!({"a": [1, 2.5, null]})));
        assert_eq!(call.metadata, None);
        // A unit message may carry anything (a padded ping, say).
        assert!(serde_json::from_str::<WorkerMessage>(r#"{"type":"ping","pad":"xx"}"#).is_ok());
        assert!(matches!(
            WorkerMessage::parse(r#"{"type":"ping","pad":"xx"}"#),
            WorkerMessage::Ping
        ));
        for kind in [
            "registertriggertype",
            "unregistertriggertype",
            "registerservice",
            "reattach",
        ] {
            let text = format!(r#"{{"id":"x","type":"{kind}","name":1}}"#);
            assert!(
                matches!(WorkerMessage::parse(&text), WorkerMessage::Ignored),
                "{kind}"
            );
        }
    }

    /// Data kept as text is held to the depth a frame read whole may have: 126 levels under
    /// the frame's object pass, one more is refused with the reason, as before.
    #[test]
    fn data_kept_as_text_nests_no_deeper_than_a_frame_may() {
        let nested = |n: usize| "[".repeat(n) + &"]".repeat(n);
        let frame = |data: &str| {
            format!(
                r#"{{"type":"invokefunction","invocation_id":"c","function_id":"f","data":{data}}}"#
            )
        };
        let text = frame(&nested(126));
        let WorkerMessage::InvokeFunction(call) = WorkerMessage::parse(&text) else {
            panic!("126 levels of data are a call")
        };
        assert_eq!(call.data.into_value().unwrap().to_string(), nested(126));
        let (_, id, problem) = shape_of(&frame(&nested(127)));
        assert_eq!(id, Some(json!("c")));
        let Problem::NotJson(why) = problem else {
            panic!("{problem:?}")
        };
        assert!(why.contains("127 levels"), "{why}");
        // A number serde skips but a `Value` cannot hold is an error when the data is read.
        let text = frame("[1e400]");
        let WorkerMessage::InvokeFunction(call) = WorkerMessage::parse(&text) else {
            panic!("a call")
        };
        let why = call.data.into_value().unwrap_err();
        assert!(why.contains("number out of range"), "{why}");
        // Brackets inside strings do not count.
        let text = frame(&format!(r#"["{}"]"#, "[".repeat(300)));
        assert!(matches!(
            WorkerMessage::parse(&text),
            WorkerMessage::InvokeFunction(_)
        ));
    }

    #[test]
    fn namespaces_are_read_and_a_non_string_one_is_named() {
        let text = r#"{"type":"registertrigger","id":"t","trigger_type":"stream","function_id":"f","config":{},"namespace":"alpha","trigger_namespace":null}"#;
        let WorkerMessage::RegisterTrigger(t) = WorkerMessage::parse(text) else {
            panic!("not a trigger")
        };
        assert_eq!(
            (t.namespace.as_deref(), t.trigger_namespace),
            (Some("alpha"), None)
        );
        let text = r#"{"type":"invokefunction","invocation_id":"c","function_id":"f","data":1,"namespace":"beta"}"#;
        let WorkerMessage::InvokeFunction(call) = WorkerMessage::parse(text) else {
            panic!("not a call")
        };
        assert_eq!(call.namespace.as_deref(), Some("beta"));
        let (_, id, problem) = shape_of(
            r#"{"type":"invokefunction","invocation_id":"c","function_id":"f","data":1,"namespace":5}"#,
        );
        assert_eq!(id, Some(json!("c")));
        let Problem::Shape(why) = problem else {
            panic!("{problem:?}")
        };
        assert!(why.starts_with("namespace: invalid type"), "{why}");
    }

    #[test]
    fn unknown_or_missing_types_are_unknown() {
        for (text, kind) in [
            (r#"{"type":"nonsense","id":1}"#, "nonsense"),
            (r#"{"id":"x"}"#, ""),
            (r#"{"type":5}"#, ""),
            ("[]", ""),
        ] {
            match WorkerMessage::parse(text) {
                WorkerMessage::Unknown { kind: k } => assert_eq!(k, kind, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        // A megabyte of type is cut to a length fit for a log line, readable or not.
        let long = "t".repeat(1 << 20);
        let WorkerMessage::Unknown { kind } =
            WorkerMessage::parse(&format!(r#"{{"type":"{long}"}}"#))
        else {
            panic!("not unknown")
        };
        assert!(kind.len() < 200 && kind.ends_with("bytes)"), "{kind}");
        let broken = format!(r#"{{"type":"{long}","data":"#);
        let WorkerMessage::Malformed(m) = WorkerMessage::parse(&broken) else {
            panic!("not malformed")
        };
        assert!(m.kind.is_some_and(|k| k.len() < 200), "the type is cut");
    }

    #[test]
    fn the_last_of_two_equal_keys_wins_as_in_a_json_map() {
        let text = r#"{"type":"invokefunction","function_id":"a","function_id":"b"}"#;
        // The typed pass refuses it; the slow path reads it as before.
        assert!(serde_json::from_str::<WorkerMessage>(text).is_err());
        let WorkerMessage::InvokeFunction(call) = WorkerMessage::parse(text) else {
            panic!("not a call")
        };
        assert_eq!(call.function_id, "b");
    }

    #[test]
    fn a_malformed_call_keeps_its_id_and_names_the_field_at_fault() {
        let (kind, id, problem) =
            shape_of(r#"{"type":"invokefunction","invocation_id":42,"function_id":"f","data":{}}"#);
        assert_eq!(kind.as_deref(), Some("invokefunction"));
        assert_eq!(id, Some(json!(42)));
        let Problem::Shape(why) = problem else {
            panic!("{problem:?}")
        };
        assert!(why.starts_with("invocation_id: invalid type"), "{why}");

        let (_, id, problem) = shape_of(
            r#"{"type":"invokefunction","invocation_id":"c-2","function_id":"f","data":"\ud83d"}"#,
        );
        assert_eq!(id, Some(json!("c-2")));
        let Problem::NotJson(why) = problem else {
            panic!("{problem:?}")
        };
        assert!(why.contains("surrogate"), "{why}");
    }

    #[test]
    fn engine_frames_keep_their_wire_bytes() {
        let cases = [
            (
                EngineMessage::WorkerRegistered { worker_id: "w-1" },
                r#"{"type":"workerregistered","worker_id":"w-1"}"#,
            ),
            (EngineMessage::Pong, r#"{"type":"pong"}"#),
            (
                EngineMessage::InvokeFunction {
                    invocation_id: "i-1",
                    function_id: "f",
                    data: &json!({"b": 1, "a": 2}),
                    metadata: None,
                },
                r#"{"type":"invokefunction","invocation_id":"i-1","function_id":"f","data":{"b":1,"a":2}}"#,
            ),
            (
                EngineMessage::InvokeFunction {
                    invocation_id: "i-1",
                    function_id: "f",
                    data: &Value::Null,
                    metadata: Some(&json!({"t": "x"})),
                },
                r#"{"type":"invokefunction","invocation_id":"i-1","function_id":"f","data":null,"metadata":{"t":"x"}}"#,
            ),
            (
                EngineMessage::InvocationResult {
                    invocation_id: &json!(7),
                    function_id: "f",
                    result: None,
                    error: Some(&FnError::new("c", "m")),
                },
                r#"{"type":"invocationresult","invocation_id":7,"function_id":"f","error":{"code":"c","message":"m"}}"#,
            ),
            (
                EngineMessage::InvocationResult {
                    invocation_id: &json!("i-2"),
                    function_id: "f",
                    result: Some(&json!([1]).into()),
                    error: None,
                },
                r#"{"type":"invocationresult","invocation_id":"i-2","function_id":"f","result":[1]}"#,
            ),
            (
                EngineMessage::TriggerRegistrationResult {
                    id: "t",
                    trigger_type: "cron",
                    function_id: "f",
                    error: &FnError::new("trigger_type_not_found", "m"),
                },
                r#"{"type":"triggerregistrationresult","id":"t","trigger_type":"cron","function_id":"f","error":{"code":"trigger_type_not_found","message":"m"}}"#,
            ),
            (
                EngineMessage::RegistrationRejected {
                    code: FUNCTION_NAMESPACE_CONFLICT,
                    namespace: "default",
                    worker_name: None,
                    function_id: Some("auth"),
                    owner_worker_id: "w-1",
                    message: None,
                },
                r#"{"type":"registrationrejected","code":"FUNCTION_NAMESPACE_CONFLICT","namespace":"default","function_id":"auth","owner_worker_id":"w-1"}"#,
            ),
            (
                EngineMessage::RegistrationRejected {
                    code: "NAMESPACE_NOT_ALLOWED",
                    namespace: "beta",
                    worker_name: Some("py"),
                    function_id: None,
                    owner_worker_id: "",
                    message: Some("m"),
                },
                r#"{"type":"registrationrejected","code":"NAMESPACE_NOT_ALLOWED","namespace":"beta","worker_name":"py","owner_worker_id":"","message":"m"}"#,
            ),
        ];
        for (message, wire) in cases {
            assert_eq!(message.encode(), wire);
        }
    }
}
