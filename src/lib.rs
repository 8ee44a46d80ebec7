//! streamhost: a realtime streams engine that speaks the iii stream protocol.
//!
//! The module tree is the architecture:
//! - `client_socket`: browsers and apps on port 3112 (join/leave, path subscriptions, auth);
//! - `worker_socket`: SDK workers on port 49134 (functions, triggers, invocations);
//! - `router`: the function registry that both sockets and the engine call through;
//! - `streams`: the built-in `stream::*` functions;
//! - `triggers`: `stream`, `stream:join` and `stream:leave` triggers;
//! - `hub` and `outbox`: fan-out to subscribed sockets, encoded once, bounded per socket;
//! - `emit_order`: events for one item leave in the order the store applied the writes;
//! - `adapter`: one trait for storage, one module per backend;
//! - `limits`: the depth, size and op-count limits on every value that enters a store;
//! - `wasm` and `wasm_bindings`: streams served by sandboxed WebAssembly adapters.

pub mod adapter;
pub mod client_socket;
pub mod config;
pub mod emit_order;
pub mod engine;
pub mod error;
pub mod frame;
pub mod hub;
pub mod item_lock;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod router;
pub mod server;
pub mod streams;
pub mod tenants;
pub mod triggers;
pub mod update_ops;
pub mod wasm;
pub mod wasm_bindings;
pub mod worker_socket;

pub use config::Config;
pub use server::{Server, ServerHandle};
