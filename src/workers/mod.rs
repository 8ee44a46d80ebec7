//! Connected workers as the engine sees them: which worker serves which function id
//! (`router`), and the messages exchanged with them (`messages`, with `scan` for frames too
//! broken to parse), and which namespaces a worker may name (`namespace`), and how
//! names a peer chose are shown in logs (`shown`). The worker socket
//! feeds them; the engine and the worker-served streams call through them.

pub mod messages;
pub mod namespace;
pub mod router;
mod scan;
pub mod shown;
