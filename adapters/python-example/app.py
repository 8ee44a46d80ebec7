"""A stream adapter in Python, built with componentize-py: it stores items in the store the
host lends it, and refuses an item whose `text` is empty or not a string.

    componentize-py -d ../../wit -w adapter componentize app -o uppercase.wasm
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, store
from wit_world.imports.types import AdapterError_Invalid, AdapterError_Unsupported


class StreamAdapter(exports.StreamAdapter):
    def init(self, config: str) -> None:
        log.write(log.Level.INFO, f"python adapter started with config {config}")

    def get(self, stream_name: str, group_id: str, item_id: str):
        return store.get(stream_name, group_id, item_id)

    def set(self, stream_name: str, group_id: str, item_id: str, data: str):
        item = json.loads(data)
        text = item.get("text") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text:
            raise Err(AdapterError_Invalid("field `text` must be a non-empty string"))
        return store.set(stream_name, group_id, item_id, data)

    def delete(self, stream_name: str, group_id: str, item_id: str):
        return store.delete(stream_name, group_id, item_id)

    def list_items(self, stream_name: str, group_id: str):
        return store.list_items(stream_name, group_id)

    def list_groups(self, stream_name: str):
        return store.list_groups(stream_name)

    def update(self, stream_name: str, group_id: str, item_id: str, ops: str):
        # Let the host read, apply the ops and call `set`, which validates the result.
        raise Err(AdapterError_Unsupported())
