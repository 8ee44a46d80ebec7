//! Triggers that call functions on stream activity (spec section 5).
//!
//! - `stream`: after a stored change or a `stream::send`, optionally filtered by group, item
//!   and a condition function; run in the background so the writer's reply never waits.
//! - `stream:join`: before a client subscribes; `{"unauthorized": true}` rejects the join, and
//!   so does a call that fails (the function is not registered, errors, times out, or its worker
//!   leaves during the call).
//! - `stream:leave`: after a leave or a close; the result is ignored.
//!
//! A trigger's `metadata`, when it was registered with one, goes with every call of its
//! function, as iii passes it; a condition function is called without it, as in iii.
//!
//! A trigger belongs to the worker that registered it: only that worker replaces it (a
//! registration under its id from another live worker is refused with `trigger_id_conflict`)
//! or removes it (another worker's `unregistertrigger` is ignored and logged).
//!
//! A trigger lives as long as the worker that registered it: when that worker disconnects,
//! `remove_worker` drops its triggers. For `stream:join` this means that once the worker behind
//! the access check is gone, no check is left and joins go through unchecked until a worker
//! registers one again; only a check that is still registered fails closed.

use super::Functions;
use crate::error::FnError;
use crate::fanout::frame::{EventKind, StreamEvent};
use serde::Deserialize;
use serde_json::Value;
use std::sync::{Arc, RwLock};

pub const STREAM: &str = "stream";
pub const JOIN: &str = "stream:join";
pub const LEAVE: &str = "stream:leave";

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamFilter {
    pub stream_name: Option<String>,
    pub group_id: Option<String>,
    pub item_id: Option<String>,
    pub condition_function_id: Option<String>,
}

impl StreamFilter {
    fn matches(&self, event: &StreamEvent) -> bool {
        self.stream_name
            .as_ref()
            .is_none_or(|s| *s == event.stream_name)
            && self.group_id.as_ref().is_none_or(|g| *g == event.group_id)
            && self
                .item_id
                .as_ref()
                .is_none_or(|i| Some(i) == event.id.as_ref())
    }
}

#[derive(Debug, Clone)]
pub struct Trigger {
    pub id: String,
    pub trigger_type: String,
    pub function_id: String,
    pub filter: StreamFilter,
    pub worker_id: String,
    /// Sent with every call of `function_id` (absent when None).
    pub metadata: Option<Value>,
}

#[derive(Default)]
pub struct Triggers {
    list: RwLock<Vec<Arc<Trigger>>>,
}

impl Triggers {
    /// Registers a trigger from a worker; an unknown type or a bad config is refused.
    pub fn register(
        &self,
        id: &str,
        trigger_type: &str,
        function_id: &str,
        config: Value,
        metadata: Option<Value>,
        worker_id: &str,
    ) -> Result<(), FnError> {
        let filter = match trigger_type {
            STREAM => serde_json::from_value::<StreamFilter>(if config.is_null() {
                Value::Object(Default::default())
            } else {
                config
            })
            .map_err(|e| {
                FnError::new(
                    "invalid_trigger_config",
                    format!("stream trigger config: {e}"),
                )
            })?,
            JOIN | LEAVE => StreamFilter::default(),
            other => {
                return Err(FnError::new(
                    "trigger_type_not_found",
                    format!(
                        "trigger type {other:?} is not served by streamhost; it serves stream, stream:join and stream:leave"
                    ),
                ));
            }
        };
        let trigger = Trigger {
            id: id.to_owned(),
            trigger_type: trigger_type.to_owned(),
            function_id: function_id.to_owned(),
            filter,
            worker_id: worker_id.to_owned(),
            metadata: metadata.filter(|m| !m.is_null()),
        };
        let mut list = self.list.write().unwrap();
        let owner = list
            .iter()
            .find(|t| t.id == id)
            .map(|t| t.worker_id.as_str());
        if let Some(owner) = owner.filter(|owner| *owner != worker_id) {
            return Err(FnError::new(
                "trigger_id_conflict",
                format!(
                    "trigger id {id:?} is registered by another live worker ({owner}); only it can replace or remove it: register yours under another id"
                ),
            ));
        }
        list.retain(|t| t.id != id);
        list.push(Arc::new(trigger));
        Ok(())
    }

    /// Removes a trigger for the worker that registered it; anyone else's request is ignored.
    pub fn unregister(&self, id: &str, worker_id: &str) {
        let mut list = self.list.write().unwrap();
        let Some(at) = list.iter().position(|t| t.id == id) else {
            return;
        };
        if list[at].worker_id == worker_id {
            list.remove(at);
            return;
        }
        let owner = list[at].worker_id.as_str();
        tracing::warn!(
            trigger = id,
            owner,
            refused = worker_id,
            "unregistertrigger of a trigger this worker does not own; ignored"
        );
    }

    pub fn remove_worker(&self, worker_id: &str) {
        self.list
            .write()
            .unwrap()
            .retain(|t| t.worker_id != worker_id);
    }

    fn of_type(&self, trigger_type: &str) -> Vec<Arc<Trigger>> {
        self.list
            .read()
            .unwrap()
            .iter()
            .filter(|t| t.trigger_type == trigger_type)
            .cloned()
            .collect()
    }

    /// Fires the `stream` triggers that match a change or an event, in the background.
    pub fn fire_stream(&self, functions: &Arc<Functions>, event: &StreamEvent) {
        if matches!(event.kind, EventKind::Sync(_) | EventKind::Unauthorized) {
            return;
        }
        let matching: Vec<Arc<Trigger>> = {
            let list = self.list.read().unwrap();
            list.iter()
                .filter(|t| t.trigger_type == STREAM && t.filter.matches(event))
                .cloned()
                .collect()
        };
        if matching.is_empty() {
            return;
        }
        let payload = event.to_value();
        for trigger in matching {
            let functions = functions.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                if let Some(condition) = &trigger.filter.condition_function_id {
                    match functions.call(condition, payload.clone()).await {
                        Ok(Some(Value::Bool(false))) => return,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(trigger = %trigger.id, condition, error = %e, "condition function failed; running the handler anyway")
                        }
                    }
                }
                let metadata = trigger.metadata.clone();
                if let Err(e) = functions
                    .call_with_metadata(&trigger.function_id, payload, metadata)
                    .await
                {
                    tracing::warn!(trigger = %trigger.id, function_id = %trigger.function_id, error = %e, "stream trigger failed");
                }
            });
        }
    }

    /// Runs the `stream:join` triggers in turn; true when one of them rejects the join.
    /// A registered trigger whose call fails rejects too: an access check that cannot run must
    /// not let anyone in. A trigger of a disconnected worker is no longer here (see the module
    /// comment), so it rejects nothing.
    pub async fn join_rejected(&self, functions: &Arc<Functions>, payload: &Value) -> bool {
        for trigger in self.of_type(JOIN) {
            let metadata = trigger.metadata.clone();
            match functions
                .call_with_metadata(&trigger.function_id, payload.clone(), metadata)
                .await
            {
                Ok(Some(result)) if result.get("unauthorized") == Some(&Value::Bool(true)) => {
                    return true;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(function_id = %trigger.function_id, error = %e, "stream:join trigger failed; the join is refused");
                    return true;
                }
            }
        }
        false
    }

    /// Runs the `stream:leave` triggers in the background.
    pub fn fire_leave(&self, functions: &Arc<Functions>, payload: Value) {
        for trigger in self.of_type(LEAVE) {
            let functions = functions.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let metadata = trigger.metadata.clone();
                if let Err(e) = functions
                    .call_with_metadata(&trigger.function_id, payload, metadata)
                    .await
                {
                    tracing::warn!(function_id = %trigger.function_id, error = %e, "stream:leave trigger failed");
                }
            });
        }
    }

    pub fn has_join_triggers(&self) -> bool {
        self.list
            .read()
            .unwrap()
            .iter()
            .any(|t| t.trigger_type == JOIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each trigger as `id type function owner`.
    fn listed(triggers: &Triggers) -> Vec<String> {
        let list = triggers.list.read().unwrap();
        list.iter()
            .map(|t| {
                format!(
                    "{} {} {} {}",
                    t.id, t.trigger_type, t.function_id, t.worker_id
                )
            })
            .collect()
    }

    fn register(
        triggers: &Triggers,
        id: &str,
        kind: &str,
        function: &str,
        worker: &str,
    ) -> Result<(), FnError> {
        triggers.register(id, kind, function, Value::Null, None, worker)
    }

    #[test]
    fn only_the_owner_replaces_or_removes_a_trigger() {
        let triggers = Triggers::default();
        register(&triggers, "t", STREAM, "f", "a").unwrap();
        let e = register(&triggers, "t", STREAM, "g", "b").unwrap_err();
        assert_eq!(e.code, "trigger_id_conflict");
        assert!(
            e.message.contains("\"t\"") && e.message.contains("(a)"),
            "{e}"
        );
        triggers.unregister("t", "b");
        assert_eq!(listed(&triggers), ["t stream f a"]);
        register(&triggers, "t", STREAM, "g", "a").unwrap();
        assert_eq!(listed(&triggers), ["t stream g a"]);
        triggers.unregister("t", "a");
        assert!(listed(&triggers).is_empty());
    }
}
