//! Tenants: isolated, authenticated namespaces on one engine (being built; see issue 11).

pub mod config;
pub mod error;
pub mod keys;
pub mod patterns;
