//! Integration tests: real HTTP over loopback, against wiremock servers and the crate's mock
//! provider (`testkit::MockProvider`). One binary, one module per area.

mod bad_input;
mod cancellation;
mod chain;
mod client_metadata;
mod compat;
mod discovery;
mod dpop;
mod dpop_api;
mod edges;
mod extreme_durations;
mod faults;
mod file_store;
mod footprint;
mod fronts;
mod grant;
mod helpers;
mod hostile;
mod login;
mod many_users;
mod mcp_discovery;
mod mcp_sdk;
mod mcp_session;
mod nothing_lost;
mod observability;
mod origins;
mod passthrough;
#[cfg(feature = "deadpool-postgres")]
mod postgres_pool;
mod postgres_server;
mod postgres_store;
/// The same PostgreSQL store tests, every store on a deadpool-postgres pool: one driver mounted
/// twice on purpose (`postgres_store::open` tells the two apart).
#[cfg(feature = "deadpool-postgres")]
#[path = "postgres_store.rs"]
#[allow(clippy::duplicate_mod, reason = "the same tests, run on both ways of connecting")]
mod postgres_store_on_a_pool;
mod private_key_jwt;
mod processes;
mod providers;
mod races;
mod redis_server;
mod redis_store;
mod refresh_ahead;
mod registration;
mod reuse;
mod revocation;
mod secrets;
mod soak;
mod stalled_body;
mod storm;
mod terminal;
mod tower;
mod transient;
