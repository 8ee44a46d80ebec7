//! The two WebSocket listeners: clients (browsers and apps, port 3112) and workers (the iii
//! SDKs, port 49134). They sit at the top: a socket reads frames, calls into the engine and
//! writes what comes back; nothing below them knows about sockets.

pub mod accept;
pub mod client;
pub mod credentials;
pub mod http;
pub mod worker;
