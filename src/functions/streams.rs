//! The built-in `stream::*` functions (spec sections 3, 4 and 7).
//!
//! Each parses its payload (a bad one fails with `deserialization_error` naming the field),
//! goes to the stream's storage (`storage::router`: a worker stream's functions, a
//! WebAssembly binding or the engine's store), and emits the change to subscribers and
//! triggers. A write emits only after the earlier writes to its item have: the storage returns
//! the write's `Order`, waited on before the event and kept until it is out (see
//! `fanout::order`). A worker connection's calls to one group also apply and emit in the
//! order they were sent (`fanout::sequence`): a write tells its place when it has applied and
//! waits there before it emits. Every value bound for a store or for subscribers (set data,
//! send data, update ops and results) is held to the engine's value limits first (see
//! `limits`), whichever storage serves the stream. A write is then admitted against its tenant's
//! quotas (see `admit`): a refused write stores and sends nothing.

use super::Functions;
use super::admit::{self, Reserved};
use super::command::Command;
use super::payloads::{GroupRef, ItemRef, SendPayload, SetPayload, StreamRef, UpdatePayload};
use crate::error::{FnError, FnResult};
use crate::fanout::frame::{EventKind, StreamEvent};
use crate::fanout::sequence;
use crate::json::Json;
use crate::storage::update_ops::UpdateOps;
use crate::storage::{Stored, StreamAdapter};
use serde_json::{Value, json};
use std::sync::Arc;

pub const BUILTINS: [&str; 9] = [
    "stream::set",
    "stream::get",
    "stream::delete",
    "stream::list",
    "stream::list_groups",
    "stream::list_all",
    "stream::send",
    "stream::update",
    "stream::presence",
];

pub fn is_builtin(function_id: &str) -> bool {
    BUILTINS.contains(&function_id)
}

/// The storage that serves `stream`, and the call's place in its group's line told whether
/// that storage's item turns mean the write has applied: the engine's own KvStore takes them
/// under the lock it applies under; the others may claim before they write, or write more.
fn storage_for(functions: &Functions, stream: &str) -> Arc<dyn StreamAdapter> {
    let storage = functions.storage.for_stream(stream);
    if !is_engine_store(&*storage) {
        sequence::apply_late();
    }
    storage
}

/// The engine's own KvStore, which applies a write under its lock and keeps exactly the value
/// it is given.
fn is_engine_store(storage: &dyn StreamAdapter) -> bool {
    storage.name().starts_with("kv_")
}

/// The error a write's call answers when its log sync fails after the call went on without
/// waiting for it (see `storage::synced`): what the call would have answered had it waited.
pub fn sync_failed(function_id: &str, error: &crate::storage::wal::WriteError) -> FnError {
    let code = match function_id {
        "stream::update" => "STREAM_UPDATE_ERROR",
        "stream::delete" => "STREAM_DELETE_ERROR",
        _ => "STREAM_SET_ERROR",
    };
    FnError::storage(code, anyhow::Error::new(error.clone()))
}

/// Runs a write; one to the engine's own store may leave its call holding the write's sync
/// instead of waiting for it (`storage::synced`). Other storage may write to the engine's
/// store itself (a WebAssembly adapter's host calls) and act on the result at once: those
/// writes wait.
async fn own_write<F: std::future::Future>(engine_store: bool, write: F) -> F::Output {
    match engine_store {
        true => crate::storage::synced::may_hold(write).await,
        false => write.await,
    }
}

/// The calls that count against `writes_per_second`.
pub fn is_write(function_id: &str) -> bool {
    matches!(
        function_id,
        "stream::set" | "stream::update" | "stream::delete" | "stream::send"
    )
}

/// Runs a built-in function's command.
pub async fn run(functions: &Arc<Functions>, command: Command) -> FnResult {
    match command {
        Command::Set(p) => set(functions, p).await,
        Command::Get(p) => get(functions, p).await,
        Command::Delete(p) => delete(functions, p).await,
        Command::List(p) => list(functions, p).await,
        Command::ListGroups(p) => list_groups(functions, p).await,
        Command::ListAll => list_all(functions).await,
        Command::Send(p) => send(functions, p).await,
        Command::Update(p) => update(functions, p).await,
        Command::Presence(p) => presence(functions, p).await,
    }
}

/// Emits a stored write's change: `new` is the value stored, as a tree for the event.
async fn emit_write(
    functions: &Arc<Functions>,
    stream: &str,
    group: &str,
    item: &str,
    replaced: bool,
    new: Value,
) {
    let kind = match replaced {
        true => EventKind::Update(new),
        false => EventKind::Create(new),
    };
    functions
        .emit(StreamEvent::new(stream, group, Some(item), kind))
        .await;
    sequence::emitted();
}

async fn set(functions: &Arc<Functions>, p: SetPayload) -> FnResult {
    // One walk of the value measures it for the limits, the quota and the reservation.
    let bytes = functions
        .value_limits()
        .check("stream::set data", &p.data)? as u64;
    admit::item_bytes(functions, "stream::set data", bytes)?;
    let reserved = Reserved::take(functions, bytes, "stream::set data")?;
    admit::write(functions, &p.stream_name, &p.group_id, Some(&p.item_id))?;
    let storage = storage_for(functions, &p.stream_name);
    // The engine's store keeps the value it is given, already measured; a worker's stream
    // may store something else. The value is made into its text once, for the store, its
    // log and the answer; the tree goes on to the event.
    let keeps_data = is_engine_store(&*storage);
    let text = Json::from_value(&p.data);
    let write = storage.write(&p.stream_name, &p.group_id, &p.item_id, text.clone());
    let Stored {
        value: (old, new),
        mut order,
    } = own_write(keeps_data, write)
        .await
        .map_err(|e| FnError::storage("STREAM_SET_ERROR", e))?;
    let new_bytes = if keeps_data { bytes } else { admit::size(&new) };
    // Storage that stored the text it was given (Redis, an adapter) hands it back: its tree
    // is the one already read.
    let tree = if new.is(&text) {
        p.data
    } else {
        new.to_value()
    };
    reserved.settle_after_sync(new_bytes, old.as_ref().map_or(0, admit::size));
    sequence::before_emit().await;
    order.ready().await;
    let (stream, group, item) = (&p.stream_name, &p.group_id, &p.item_id);
    emit_write(functions, stream, group, item, old.is_some(), tree).await;
    order.release_after_sync();
    functions.published().await;
    let fields = [("old_value", old.as_ref()), ("new_value", Some(&new))];
    Ok(Some(Json::object(&fields)))
}

async fn get(functions: &Arc<Functions>, p: ItemRef) -> FnResult {
    functions
        .storage
        .for_stream(&p.stream_name)
        .get(&p.stream_name, &p.group_id, &p.item_id)
        .await
        .map_err(|e| FnError::storage("STREAM_GET_ERROR", e))
}

async fn delete(functions: &Arc<Functions>, p: ItemRef) -> FnResult {
    admit::write(functions, &p.stream_name, &p.group_id, Some(&p.item_id))?;
    let storage = storage_for(functions, &p.stream_name);
    let delete = storage.delete(&p.stream_name, &p.group_id, &p.item_id);
    let Stored {
        value: old,
        mut order,
    } = own_write(is_engine_store(&*storage), delete)
        .await
        .map_err(|e| FnError::storage("STREAM_DELETE_ERROR", e))?;
    admit::freed(functions, &old);
    sequence::before_emit().await;
    order.ready().await;
    if let Some(old) = &old {
        let (stream, group, item) = (&p.stream_name, &p.group_id, Some(p.item_id.as_str()));
        let event = StreamEvent::new(stream, group, item, EventKind::Delete(old.to_value()));
        functions.emit(event).await;
    }
    sequence::emitted();
    order.release_after_sync();
    functions.published().await;
    Ok(Some(Json::object(&[("old_value", old.as_ref())])))
}

async fn list(functions: &Arc<Functions>, p: GroupRef) -> FnResult {
    functions
        .storage
        .for_stream(&p.stream_name)
        .list(&p.stream_name, &p.group_id)
        .await
        .map(|items| Some(Json::array(&items)))
        .map_err(|e| FnError::storage("STREAM_GET_GROUP_ERROR", e))
}

async fn list_groups(functions: &Arc<Functions>, p: StreamRef) -> FnResult {
    functions
        .storage
        .for_stream(&p.stream_name)
        .list_groups(&p.stream_name)
        .await
        .map(|g| Some(Json::from_value(&json!(g))))
        .map_err(|e| FnError::storage("STREAM_LIST_GROUPS_ERROR", e))
}

/// Lists the engine's own store only: streams served by a worker's `createStream` functions
/// cannot be enumerated, and WebAssembly adapters keep their items in the engine's store, so
/// their streams are listed from there.
async fn list_all(functions: &Arc<Functions>) -> FnResult {
    let all = functions
        .storage
        .native()
        .list_all()
        .await
        .map_err(|e| FnError::storage("STREAM_LIST_ALL_ERROR", e))?;
    let streams: Vec<Value> = all
        .into_iter()
        .map(|(id, groups)| json!({"id": id, "groups": groups}))
        .collect();
    let all = json!({"count": streams.len(), "stream": streams});
    Ok(Some(Json::from_value(&all)))
}

/// Who is subscribed to a group of a stream that keeps presence: `{members, count}`, the
/// members listed up to `max_members`, `count` exact (see `fanout::presence`).
/// Over Redis, the roster is every node's, read from Redis.
async fn presence(functions: &Arc<Functions>, p: GroupRef) -> FnResult {
    match functions.hub.members(&p.stream_name, &p.group_id).await {
        Some(Ok(members)) => Ok(Some(Json::from_value(&members))),
        Some(Err(e)) => Err(FnError::storage("STREAM_PRESENCE_ERROR", e)),
        None => Err(FnError::new(
            crate::fanout::presence::NOT_ENABLED,
            crate::fanout::presence::not_enabled_message(&p.stream_name),
        )),
    }
}

async fn send(functions: &Arc<Functions>, p: SendPayload) -> FnResult {
    let bytes = functions
        .value_limits()
        .check("stream::send data", &p.data)? as u64;
    admit::item_bytes(functions, "stream::send data", bytes)?;
    admit::write(functions, &p.stream_name, &p.group_id, p.id.as_deref())?;
    let kind = EventKind::Custom {
        name: p.event_type,
        data: p.data,
    };
    sequence::before_emit().await;
    functions
        .emit(StreamEvent::new(
            &p.stream_name,
            &p.group_id,
            p.id.as_deref(),
            kind,
        ))
        .await;
    sequence::emitted();
    functions.published().await;
    Ok(Some(Json::null()))
}

async fn update(functions: &Arc<Functions>, p: UpdatePayload) -> FnResult {
    // The tenant's item limit, if tighter, holds the ops' values and the result.
    let limit = admit::item_limit(functions);
    let mut limits = *functions.value_limits();
    limits.max_item_bytes = limit as usize;
    let tighter = limit < functions.value_limits().max_item_bytes as u64;
    let over_quota = |e: FnError| {
        if tighter && e.code == "item_too_large" {
            let why = format!("{} (the tenant's item_bytes)", e.message);
            functions.quotas.over("item_bytes", why).into()
        } else {
            e
        }
    };
    let ops = UpdateOps::parse(&p.ops, &limits).map_err(over_quota)?;
    let why = format!("an update needs room for the largest item it may make ({limit} bytes)");
    let reserved = Reserved::take(functions, limit, &why)?;
    admit::write(functions, &p.stream_name, &p.group_id, Some(&p.item_id))?;
    let storage = storage_for(functions, &p.stream_name);
    let update = storage.update(&p.stream_name, &p.group_id, &p.item_id, &ops);
    let Stored {
        value: outcome,
        mut order,
    } = own_write(is_engine_store(&*storage), update)
        .await
        .map_err(|e| over_quota(FnError::storage("STREAM_UPDATE_ERROR", e)))?;
    let old_bytes = outcome.old_value.as_ref().map_or(0, admit::size);
    reserved.settle_after_sync(admit::size(&outcome.new_value), old_bytes);
    sequence::before_emit().await;
    order.ready().await;
    let (stream, group, item) = (&p.stream_name, &p.group_id, &p.item_id);
    let (old, new) = (outcome.old_value, outcome.new_value);
    emit_write(
        functions,
        stream,
        group,
        item,
        old.is_some(),
        new.to_value(),
    )
    .await;
    order.release_after_sync();
    functions.published().await;
    let errors = (!outcome.errors.is_empty()).then(|| Json::from_value(&json!(outcome.errors)));
    let fields = [
        ("old_value", old.as_ref()),
        ("new_value", Some(&new)),
        ("errors", errors.as_ref()),
    ];
    // No `errors` field when there were none.
    let fields = &fields[..if errors.is_some() { 3 } else { 2 }];
    Ok(Some(Json::object(fields)))
}
