//! The functions the engine serves itself: the `stream::*` functions, triggers, and the
//! `streamhost::*` functions that bind WebAssembly adapters to streams. Workers' own
//! functions are called through `workers::router`.

pub mod streams;
pub mod triggers;
pub mod wasm_bindings;
