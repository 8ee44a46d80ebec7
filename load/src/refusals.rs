//! Errors by code: which calls the engine refused, and why. A noisy-neighbour run needs the
//! `quota_exceeded` refusals apart from every other failure (an adapter's timeout, say), and
//! both tenants' counts side by side, so they are tallied by the `code` of each error.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The code of an `invocationresult` that carries an error: `Some("")` when the error has no
/// code, `None` when the call succeeded.
pub fn error_code(result: &Value) -> Option<&str> {
    let error = result.get("error").filter(|e| !e.is_null())?;
    Some(error.get("code").and_then(Value::as_str).unwrap_or(""))
}

#[derive(Default)]
pub struct Refusals {
    by_code: Mutex<BTreeMap<String, u64>>,
}

impl Refusals {
    pub fn record(&self, code: &str) {
        let mut by_code = self.by_code.lock().unwrap();
        match by_code.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                by_code.insert(code.to_owned(), 1);
            }
        }
    }

    pub fn count(&self, code: &str) -> u64 {
        self.by_code.lock().unwrap().get(code).copied().unwrap_or(0)
    }

    pub fn json(&self) -> Value {
        let by_code = self.by_code.lock().unwrap();
        Value::Object(
            by_code
                .iter()
                .map(|(code, n)| (code.clone(), Value::from(*n)))
                .collect::<Map<_, _>>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_each_code_apart_and_ignores_successes() {
        let r = Refusals::default();
        let results = [
            json!({"type": "invocationresult", "result": {}}),
            json!({"type": "invocationresult", "error": null}),
            json!({"error": {"code": "quota_exceeded", "message": "m", "retry_after_ms": 5}}),
            json!({"error": {"code": "quota_exceeded", "message": "m"}}),
            json!({"error": {"code": "adapter_timeout", "message": "m"}}),
            json!({"error": {"message": "no code"}}),
        ];
        for v in &results {
            if let Some(code) = error_code(v) {
                r.record(code);
            }
        }
        assert_eq!(r.count("quota_exceeded"), 2);
        assert_eq!(
            r.json(),
            json!({"": 1, "adapter_timeout": 1, "quota_exceeded": 2})
        );
    }
}
