//! A stream a worker created with `createStream`: served by that worker's
//! `stream::<op>(<name>)` functions, as an adapter like any other.
//!
//! A worker may register only some of the functions; an operation it does not serve goes to
//! the storage the stream would have without it (`fallback`). The worker's writes take no
//! turns (see `fanout::order`), so each write holds the engine's item lock (`locks`, given by
//! the engine) from before the call until its event is out: it returns the lock as its order
//! (`Order::locked`). Without `stream::update(name)` but with get and set, an update reads,
//! applies the ops and writes back under that same lock, so it is atomic against the engine's
//! other writes.
//! A worker's `timeout` and `worker_disconnected` errors keep their codes; its other errors
//! take the calling built-in's code (`FnError::storage`).

use super::{Stored, StreamAdapter, UpdateOutcome};
use crate::fanout::item_lock::ItemLocks;
use crate::fanout::order::Order;
use crate::json::Json;
use crate::storage::update_ops::{self, OpError, UpdateOps};
use crate::workers::router::Router;
use async_trait::async_trait;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The operations a worker can serve for its stream.
pub const OPS: [&str; 6] = ["set", "get", "delete", "list", "list_groups", "update"];

pub struct WorkerAdapter {
    workers: Arc<Router>,
    timeout: Duration,
    stream: String,
    fallback: Arc<dyn StreamAdapter>,
    /// The engine's item locks.
    locks: Arc<ItemLocks>,
}

impl WorkerAdapter {
    /// Whether a worker serves any of the stream's operations.
    pub fn serves(workers: &Router, stream: &str) -> bool {
        workers.has_worker_streams()
            && OPS
                .iter()
                .any(|op| workers.contains(&function_id(op, stream)))
    }

    /// Calls to the worker wait at most `timeout`.
    pub fn new(
        workers: Arc<Router>,
        timeout: Duration,
        stream: &str,
        fallback: Arc<dyn StreamAdapter>,
        locks: Arc<ItemLocks>,
    ) -> Self {
        WorkerAdapter {
            workers,
            timeout,
            stream: stream.to_owned(),
            fallback,
            locks,
        }
    }

    /// The worker function that serves `op`, if one is registered.
    fn function(&self, op: &str) -> Option<String> {
        let id = function_id(op, &self.stream);
        self.workers.contains(&id).then_some(id)
    }

    async fn call(&self, id: &str, data: Value) -> anyhow::Result<Option<Value>> {
        let Some(worker) = self.workers.lookup(id) else {
            anyhow::bail!("{id} was unregistered during the call");
        };
        let result = worker.invoke(id, data, self.timeout).await.map_err(|e| {
            if e.code == "timeout" || e.code == "worker_disconnected" {
                anyhow::Error::new(e)
            } else {
                anyhow::anyhow!("{id}: {}", e.message)
            }
        })?;
        Ok(result.map(|r| r.to_value()))
    }

    /// Takes the engine's lock on the item, to hold until the write's event is out.
    async fn lock(&self, group: &str, item: &str) -> Order {
        Order::locked(self.locks.acquire(&self.stream, group, item).await)
    }

    /// Read, apply, write through the worker; the caller holds the item's lock.
    async fn update_via_get_set(
        &self,
        get: &str,
        set: &str,
        group: &str,
        item: &str,
        ops: &UpdateOps,
    ) -> anyhow::Result<UpdateOutcome> {
        let at = json!({"stream_name": self.stream, "group_id": group, "item_id": item});
        let current = self.call(get, at.clone()).await?.filter(|v| !v.is_null());
        let (new, errors) = update_ops::apply(current.as_ref(), ops)?;
        let mut payload = at;
        payload["data"] = new.clone();
        self.call(set, payload).await?;
        Ok(UpdateOutcome {
            old_value: current.map(Json::from),
            new_value: new.into(),
            errors,
        })
    }
}

fn function_id(op: &str, stream: &str) -> String {
    format!("stream::{op}({stream})")
}

/// A worker's `{old_value, new_value}`: a null old value is no old value, a missing new one null.
fn old_and_new(result: Option<Value>) -> (Option<Json>, Json) {
    let mut r = result.unwrap_or(Value::Null);
    let old = r
        .get_mut("old_value")
        .map(Value::take)
        .filter(|v| !v.is_null());
    let new = r
        .get_mut("new_value")
        .map(Value::take)
        .unwrap_or(Value::Null);
    (old.map(Json::from), new.into())
}

#[async_trait]
impl StreamAdapter for WorkerAdapter {
    fn name(&self) -> &'static str {
        "worker"
    }

    async fn get(&self, stream: &str, group: &str, item: &str) -> anyhow::Result<Option<Json>> {
        match self.function("get") {
            Some(id) => {
                let at = json!({"stream_name": stream, "group_id": group, "item_id": item});
                Ok(self.call(&id, at).await?.map(Json::from))
            }
            None => self.fallback.get(stream, group, item).await,
        }
    }

    async fn set(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        data: Json,
    ) -> anyhow::Result<Stored<Option<Json>>> {
        Ok(self
            .write(stream, group, item, data)
            .await?
            .map(|(old, _)| old))
    }

    async fn write(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        data: Json,
    ) -> anyhow::Result<Stored<(Option<Json>, Json)>> {
        let Some(id) = self.function("set") else {
            return self.fallback.write(stream, group, item, data).await;
        };
        let order = self.lock(group, item).await;
        let payload =
            json!({"stream_name": stream, "group_id": group, "item_id": item, "data": data});
        let value = old_and_new(self.call(&id, payload).await?);
        Ok(Stored { value, order })
    }

    async fn delete(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> anyhow::Result<Stored<Option<Json>>> {
        let Some(id) = self.function("delete") else {
            return self.fallback.delete(stream, group, item).await;
        };
        let order = self.lock(group, item).await;
        let payload = json!({"stream_name": stream, "group_id": group, "item_id": item});
        let value = old_and_new(self.call(&id, payload).await?).0;
        Ok(Stored { value, order })
    }

    /// A worker answering nothing (or null) has an empty group; anything else but an array is
    /// the worker's error.
    async fn list(&self, stream: &str, group: &str) -> anyhow::Result<Vec<Json>> {
        let Some(id) = self.function("list") else {
            return self.fallback.list(stream, group).await;
        };
        match self
            .call(&id, json!({"stream_name": stream, "group_id": group}))
            .await?
        {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items.iter().map(Json::from).collect()),
            Some(other) => anyhow::bail!("{id} must answer an array of items, not {other}"),
        }
    }

    async fn list_groups(&self, stream: &str) -> anyhow::Result<Vec<String>> {
        let Some(id) = self.function("list_groups") else {
            return self.fallback.list_groups(stream).await;
        };
        match self.call(&id, json!({"stream_name": stream})).await? {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(groups) => serde_json::from_value(groups)
                .map_err(|e| anyhow::anyhow!("{id} must answer an array of group ids: {e}")),
        }
    }

    /// Worker streams are not enumerable; `stream::list_all` lists the engine's own store.
    async fn list_all(&self) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        self.fallback.list_all().await
    }

    async fn update(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        ops: &UpdateOps,
    ) -> anyhow::Result<Stored<UpdateOutcome>> {
        if let Some(id) = self.function("update") {
            let order = self.lock(group, item).await;
            let payload = json!({"stream_name": stream, "group_id": group, "item_id": item, "ops": ops.raw()});
            let mut result = self.call(&id, payload).await?;
            let errors = match result.as_mut().and_then(|r| r.get_mut("errors")) {
                Some(Value::Array(errors)) => {
                    serde_json::from_value::<Vec<OpError>>(Value::Array(std::mem::take(errors)))
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "{id} answered `errors` not as [{{op_index, code, message}}]: {e}"
                            )
                        })?
                }
                _ => Vec::new(),
            };
            let (old_value, new_value) = old_and_new(result);
            let value = UpdateOutcome {
                old_value,
                new_value,
                errors,
            };
            return Ok(Stored { value, order });
        }
        if let (Some(get), Some(set)) = (self.function("get"), self.function("set")) {
            let order = self.lock(group, item).await;
            let value = self
                .update_via_get_set(&get, &set, group, item, ops)
                .await?;
            return Ok(Stored { value, order });
        }
        self.fallback.update(stream, group, item, ops).await
    }
}
