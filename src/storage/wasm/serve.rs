//! The `StreamAdapter` operations of a bound component: each a call into the guest (see
//! `adapter`), its answer held to the adapter's limits; `update` falls back to the host's
//! read-modify-write under the item's lock when the guest answers `unsupported`.

use super::adapter::WasmAdapter;
use super::bindings::streamhost::adapter::types::{
    AdapterError, EventKind as WitKind, StreamEvent as WitEvent, UpdateOutcome as WitOutcome,
};
use crate::fanout::frame::{EventKind, StreamEvent};
use crate::json::Json;
use crate::storage::update_ops::{self, UpdateOps};
use crate::storage::{Stored, StreamAdapter, UpdateOutcome};
use async_trait::async_trait;

impl WasmAdapter {
    /// A value the guest handed back, held to the limits, as the engine's compact text.
    fn stored(&self, json: &str, what: &str) -> anyhow::Result<Json> {
        Ok(Json::from_value(&self.parse(json, what)?))
    }
}

pub(super) fn to_wit(event: &StreamEvent) -> Option<WitEvent> {
    let (kind, name, data) = match &event.kind {
        EventKind::Create(d) => (WitKind::Create, None, d),
        EventKind::Update(d) => (WitKind::Update, None, d),
        EventKind::Delete(d) => (WitKind::Delete, None, d),
        EventKind::Custom { name, data } => (WitKind::Custom, Some(name.clone()), data),
        EventKind::Sync(_) | EventKind::Unauthorized => return None,
    };
    Some(WitEvent {
        stream_name: event.stream_name.clone(),
        group_id: event.group_id.clone(),
        id: event.id.clone(),
        kind,
        name,
        data: data.to_string(),
    })
}

#[async_trait]
impl StreamAdapter for WasmAdapter {
    fn name(&self) -> &'static str {
        "wasm"
    }

    async fn get(&self, s: &str, g: &str, i: &str) -> anyhow::Result<Option<Json>> {
        let r = self
            .call("get", async |l| {
                l.guest.call_get(&mut l.store, s, g, i).await
            })
            .await?;
        match r.map_err(|e| self.guest_error(e, "get"))? {
            Some(json) => Ok(Some(self.stored(&json, "a value")?)),
            None => Ok(None),
        }
    }

    async fn set(
        &self,
        s: &str,
        g: &str,
        i: &str,
        data: Json,
    ) -> anyhow::Result<Stored<Option<Json>>> {
        let json = data.get().to_owned();
        self.check_size(json.len(), "the item")?;
        let (r, order) = self
            .call_write("set", async |l| {
                l.guest.call_set(&mut l.store, s, g, i, &json).await
            })
            .await?;
        let value = match r.map_err(|e| self.guest_error(e, "set"))? {
            Some(old) => Some(self.stored(&old, "the old value")?),
            None => None,
        };
        Ok(Stored { value, order })
    }

    async fn delete(&self, s: &str, g: &str, i: &str) -> anyhow::Result<Stored<Option<Json>>> {
        let (r, order) = self
            .call_write("delete", async |l| {
                l.guest.call_delete(&mut l.store, s, g, i).await
            })
            .await?;
        let value = match r.map_err(|e| self.guest_error(e, "delete"))? {
            Some(old) => Some(self.stored(&old, "the old value")?),
            None => None,
        };
        Ok(Stored { value, order })
    }

    async fn list(&self, s: &str, g: &str) -> anyhow::Result<Vec<Json>> {
        let r = self
            .call("list-items", async |l| {
                l.guest.call_list_items(&mut l.store, s, g).await
            })
            .await?;
        let items = r.map_err(|e| self.guest_error(e, "list-items"))?;
        self.check_size(items.iter().map(String::len).sum(), "the list")?;
        items.iter().map(|j| self.stored(j, "an item")).collect()
    }

    async fn list_groups(&self, s: &str) -> anyhow::Result<Vec<String>> {
        let r = self
            .call("list-groups", async |l| {
                l.guest.call_list_groups(&mut l.store, s).await
            })
            .await?;
        let groups = r.map_err(|e| self.guest_error(e, "list-groups"))?;
        self.check_size(groups.iter().map(String::len).sum(), "the list of groups")?;
        Ok(groups)
    }

    async fn list_ids(&self, s: &str, g: &str) -> anyhow::Result<Vec<String>> {
        self.storage.list_ids(s, g).await
    }

    async fn list_all(&self) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        Ok(vec![(
            self.stream.clone(),
            self.list_groups(&self.stream).await?,
        )])
    }

    async fn update(
        &self,
        s: &str,
        g: &str,
        i: &str,
        ops: &UpdateOps,
    ) -> anyhow::Result<Stored<UpdateOutcome>> {
        let ops_json = serde_json::to_string(ops.raw())?;
        let (r, mut order) = self
            .call_write("update", async |l| {
                l.guest.call_update(&mut l.store, s, g, i, &ops_json).await
            })
            .await?;
        match r {
            Ok(WitOutcome {
                old_value,
                new_value,
                errors,
            }) => {
                let value = UpdateOutcome {
                    old_value: old_value
                        .map(|o| self.stored(&o, "the old value"))
                        .transpose()?,
                    new_value: self.stored(&new_value, "the new value")?,
                    errors: serde_json::from_str(&errors).unwrap_or_default(),
                };
                Ok(Stored { value, order })
            }
            Err(AdapterError::Unsupported) => {
                // The host's read-modify-write, one at a time per item (the engine's lock).
                let _held = self.locks.acquire(s, g, i).await;
                let current = self.get(s, g, i).await?;
                let (new_value, errors) = update_ops::apply_to_text(current.as_ref(), ops)?;
                order.join(self.set(s, g, i, new_value.clone()).await?.order);
                let value = UpdateOutcome {
                    old_value: current,
                    new_value,
                    errors,
                };
                Ok(Stored { value, order })
            }
            Err(e) => Err(self.guest_error(e, "update")),
        }
    }
}
