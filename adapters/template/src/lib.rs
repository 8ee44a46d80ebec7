//! template: the adapter to copy; `streamhost adapter new NAME` writes a crate of its own
//! from it. It keeps items in the store the host lends it, unchanged, so it behaves exactly
//! like a native stream; put your own logic in the function you need.
//!
//! Build:  cargo build --release --target wasm32-wasip2 --manifest-path adapters/Cargo.toml
//! Check:  streamhost adapter check adapters/target/wasm32-wasip2/release/template.wasm

// Generates the Rust bindings of the `adapter` world from the WIT file at `path`. Use the
// `fanout-adapter` world to also take part in fan-out (see "The fan-out hook" in the
// adapter guide, adapters/README.md in the streamhost repository).
wit_bindgen::generate!({ path: "../../wit", world: "adapter" });

use exports::streamhost::adapter::stream_adapter::Guest as StreamAdapter;
use streamhost::adapter::log::{Level, write as log};
use streamhost::adapter::store;
use streamhost::adapter::types::{AdapterError, Json, UpdateOutcome};

struct Template;

impl StreamAdapter for Template {
    /// `config` is the JSON given when the stream was bound.
    fn init(config: Json) -> Result<(), AdapterError> {
        log(
            Level::Debug,
            &format!("template adapter started with config {config}"),
        );
        Ok(())
    }

    fn get(stream: String, group: String, item: String) -> Result<Option<Json>, AdapterError> {
        store::get(&stream, &group, &item)
    }

    /// Return the value replaced, as the host's store does. Refuse input with
    /// `AdapterError::Invalid("what is wrong".into())`: the caller sees `adapter_invalid`.
    fn set(
        stream: String,
        group: String,
        item: String,
        data: Json,
    ) -> Result<Option<Json>, AdapterError> {
        store::set(&stream, &group, &item, &data)
    }

    fn delete(stream: String, group: String, item: String) -> Result<Option<Json>, AdapterError> {
        store::delete(&stream, &group, &item)
    }

    fn list_items(stream: String, group: String) -> Result<Vec<Json>, AdapterError> {
        store::list_items(&stream, &group)
    }

    fn list_groups(stream: String) -> Result<Vec<String>, AdapterError> {
        store::list_groups(&stream)
    }

    /// `Unsupported` lets the host apply `stream::update` ops with `get` and `set`, one update
    /// at a time per item.
    fn update(_: String, _: String, _: String, _: Json) -> Result<UpdateOutcome, AdapterError> {
        Err(AdapterError::Unsupported)
    }
}

export!(Template);
