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
//! When its worker disconnects, `remove_worker` drops its `stream` and `stream:leave`
//! triggers, but keeps its `stream:join` triggers, with no owner: an access check must not
//! vanish with the process that answered it. Such an orphan calls its function like any
//! trigger, so while no worker serves that function the call fails and every join is refused
//! (fail closed); once a worker registers the function again, the check runs again. A worker
//! that registers a trigger under an orphan's id takes it over, and a `stream:join` trigger
//! registered on an orphan's function replaces the orphan: a restarted SDK worker comes back
//! with new trigger ids, and its checks must not pile up, once per restart.

use super::Functions;
use crate::error::FnError;
use crate::fanout::frame::{EventKind, StreamEvent};
use crate::workers::shown::shown;
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
    /// The worker that registered it; None for a `stream:join` check whose worker has gone.
    pub worker_id: Option<String>,
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
            worker_id: Some(worker_id.to_owned()),
            metadata: metadata.filter(|m| !m.is_null()),
        };
        let mut list = self.list.write().unwrap();
        let owner = list
            .iter()
            .find(|t| t.id == id)
            .and_then(|t| t.worker_id.as_deref());
        if let Some(owner) = owner.filter(|owner| *owner != worker_id) {
            return Err(FnError::new(
                "trigger_id_conflict",
                format!(
                    "trigger id {id:?} is registered by another live worker ({owner}); only it can replace or remove it: register yours under another id"
                ),
            ));
        }
        let replaces_orphan = |t: &Trigger| {
            t.worker_id.is_none() && t.trigger_type == JOIN && t.function_id == function_id
        };
        let is_join = trigger_type == JOIN;
        list.retain(|t| t.id != id && !(is_join && replaces_orphan(t)));
        list.push(Arc::new(trigger));
        Ok(())
    }

    /// Removes a trigger for the worker that registered it; anyone else's request is ignored.
    pub fn unregister(&self, id: &str, worker_id: &str) {
        let mut list = self.list.write().unwrap();
        let Some(at) = list.iter().position(|t| t.id == id) else {
            return;
        };
        if list[at].worker_id.as_deref() == Some(worker_id) {
            list.remove(at);
            return;
        }
        let owner = list[at]
            .worker_id
            .as_deref()
            .unwrap_or("none: its worker has gone");
        tracing::warn!(
            trigger = %shown(id),
            owner,
            refused = worker_id,
            "unregistertrigger of a trigger this worker does not own; ignored"
        );
    }

    /// Drops a disconnected worker's triggers, but keeps its `stream:join` checks, orphaned,
    /// so that joins fail closed (see the module comment).
    pub fn remove_worker(&self, worker_id: &str) {
        let mut list = self.list.write().unwrap();
        list.retain_mut(|t| {
            if t.worker_id.as_deref() != Some(worker_id) {
                return true;
            }
            if t.trigger_type != JOIN {
                return false;
            }
            tracing::warn!(trigger = %shown(&t.id), function_id = %shown(&t.function_id), worker = worker_id, "the worker of a stream:join check disconnected; joins are refused while no worker serves its function");
            *t = Arc::new(Trigger {
                worker_id: None,
                ..Trigger::clone(t)
            });
            true
        });
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
                    let answer = functions.call(condition, payload.clone()).await;
                    match answer.map(|result| result.map(|r| r.to_value())) {
                        Ok(Some(Value::Bool(false))) => return,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(trigger = %shown(&trigger.id), condition, error = %e, "condition function failed; running the handler anyway")
                        }
                    }
                }
                let metadata = trigger.metadata.clone();
                if let Err(e) = functions
                    .call_with_metadata(&trigger.function_id, payload, metadata)
                    .await
                {
                    tracing::warn!(trigger = %shown(&trigger.id), function_id = %shown(&trigger.function_id), error = %e, "stream trigger failed");
                }
            });
        }
    }

    /// Runs the `stream:join` triggers in turn; true when one of them rejects the join.
    /// A trigger whose call fails rejects too: an access check that cannot run must not let
    /// anyone in, and that includes the orphaned check of a worker that has gone.
    pub async fn join_rejected(&self, functions: &Arc<Functions>, payload: &Value) -> bool {
        for trigger in self.of_type(JOIN) {
            let metadata = trigger.metadata.clone();
            match functions
                .call_with_metadata(&trigger.function_id, payload.clone(), metadata)
                .await
                .map(|result| result.map(|r| r.to_value()))
            {
                Ok(Some(result)) if result.get("unauthorized") == Some(&Value::Bool(true)) => {
                    return true;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(function_id = %shown(&trigger.function_id), error = %e, "stream:join trigger failed; the join is refused");
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
                    tracing::warn!(function_id = %shown(&trigger.function_id), error = %e, "stream:leave trigger failed");
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
                let owner = t.worker_id.as_deref().unwrap_or("-");
                format!("{} {} {} {owner}", t.id, t.trigger_type, t.function_id)
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

    #[test]
    fn join_checks_outlive_their_worker_until_replaced() {
        let triggers = Triggers::default();
        register(&triggers, "s", STREAM, "f", "a").unwrap();
        register(&triggers, "l", LEAVE, "f", "a").unwrap();
        register(&triggers, "j1", JOIN, "check", "a").unwrap();
        register(&triggers, "j2", JOIN, "other", "a").unwrap();
        triggers.remove_worker("a");
        assert_eq!(
            listed(&triggers),
            ["j1 stream:join check -", "j2 stream:join other -"]
        );
        assert!(triggers.has_join_triggers());
        // Nobody owns an orphan, so nobody removes it.
        triggers.unregister("j1", "b");
        assert_eq!(listed(&triggers).len(), 2);
        // A join check on an orphan's function replaces it; the same id takes it over.
        register(&triggers, "j3", JOIN, "check", "b").unwrap();
        register(&triggers, "j2", JOIN, "mine", "c").unwrap();
        assert_eq!(
            listed(&triggers),
            ["j3 stream:join check b", "j2 stream:join mine c"]
        );
        // A live worker's check on the same function is not replaced.
        register(&triggers, "j4", JOIN, "check", "c").unwrap();
        assert_eq!(listed(&triggers).len(), 3);
    }
}
