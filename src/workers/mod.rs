//! Connected workers as the engine sees them: which worker serves which function id
//! (`router`), and the messages exchanged with them (`messages`, with `scan` for frames too
//! broken to parse). The worker socket feeds them; the engine and the worker-served streams
//! call through them.

pub mod messages;
pub mod router;
mod scan;
