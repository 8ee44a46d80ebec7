//! WebAssembly stream adapters: components that implement `wit/adapter.wit`, run sandboxed by
//! wasmtime, bound to stream names.
//!
//! - `host`: the shared wasmtime engine, its epoch clock, the linker and compilation;
//! - `cache`: compiled components kept on disk, keyed by content and engine;
//! - `budget`: a tenant's caps on its adapters' concurrent calls and CPU time;
//! - `imports`: what a guest may call (`log`, `store`), scoped to its own stream and quota'd;
//! - `adapter`: one bound component, serving the `StreamAdapter` trait within its limits.
//! - `serve`: the `StreamAdapter` operations, each a call into the guest;
//! - `registry`: which streams are bound to which adapter.

pub mod adapter;
pub mod budget;
pub mod cache;
pub mod host;
pub mod imports;
pub mod registry;
mod serve;

pub use adapter::{Limits, WasmAdapter};
pub use host::WasmHost;

/// Bindings for the `adapter` world (imports and the `stream-adapter` export).
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "adapter",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// Bindings for the `fanout-adapter` world, sharing the types and imports of `bindings`.
pub mod fanout_bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "fanout-adapter",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "streamhost:adapter/types": super::bindings::streamhost::adapter::types,
            "streamhost:adapter/log": super::bindings::streamhost::adapter::log,
            "streamhost:adapter/store": super::bindings::streamhost::adapter::store,
        },
    });
}
