//! PostgreSQL wire protocol pieces pgwarden needs, with no I/O.
//!
//! Owns: decoding startup packets, scanning message headers in a byte stream, reading the few messages the
//! relay tracks, and encoding the messages pgwarden itself sends (ErrorResponse, CancelRequest, Terminate).
//! Does not own: sockets, timers or any policy; callers feed bytes and act on what comes back.

pub mod auth;
pub mod error_response;
pub mod messages;
pub mod scanner;
pub mod startup;
