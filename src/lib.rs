//! streamhost: a realtime streams engine that speaks the iii stream protocol.
//!
//! The folders are the architecture; dependencies point down this list, never up:
//! - `sockets`: clients on port 3112 (join/leave, path subscriptions, auth) and SDK workers on
//!   port 49134 (functions, triggers, invocations);
//! - `admin`: the operator's HTTP API on a listener of its own (tenants, keys, connections);
//! - `server` and `engine`: the listeners, and what every socket shares;
//! - `functions`: the built-in `stream::*` functions, triggers, WebAssembly bindings;
//! - `workers`: which connected worker serves which function, and the messages to and from it;
//! - `storage`: one trait for storage, one module per backend (the native store and its log,
//!   Redis, worker-served streams, WebAssembly adapters), and the update ops they apply;
//! - `fanout`: events encoded once and queued per socket, one item's events in write order;
//! - `tenants`: tenant configs, worker keys, client tokens (not wired into the sockets yet);
//! - `limits`, `config`, `error`, `metrics`: the leaves everything else uses.

pub mod admin;
pub mod config;
pub mod engine;
pub mod error;
pub mod fair;
pub mod fanout;
pub mod functions;
pub mod json;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod sockets;
pub mod storage;
pub mod tenants;
pub mod workers;

pub use config::Config;
pub use server::{Server, ServerHandle};
