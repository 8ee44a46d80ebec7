//! Fan-out: getting each stream event to the sockets that subscribe to it, in order.
//!
//! - `frame`: the events and the client frames they encode to, encoded once per event;
//! - `hub`: who subscribes to which group or item, and each group's offsets;
//! - `history`: a group's recent events, for clients that resume after a reconnect;
//! - `outbox`: each socket's bounded send queue;
//! - `pace`: a tenant's socket writes spread over time at its delivery quota;
//! - `presence`: who is subscribed to a group, on the streams that keep presence;
//! - `mirror`: a node's copy of a group's roster when nodes share rosters (Redis);
//! - `order` and `item_lock`: one item's events leave in the order its writes were applied;
//! - `sequence`: a worker connection's calls to one group apply and emit in the order sent.
//!
//! It depends on nothing else in the engine but `fair` (its waits give the tenant's turn
//! back) and `tenants::patterns` (which streams keep presence), so storage and functions can
//! both use it.

pub mod frame;
pub mod history;
pub mod hub;
pub mod item_lock;
pub mod mirror;
pub mod order;
pub mod outbox;
pub mod pace;
pub mod presence;
pub mod sequence;
