//! PostgreSQL wire protocol pieces pgwarden needs, with no I/O.
//!
//! Owns: decoding startup packets, scanning message headers in a byte stream, reading the few messages the
//! relay tracks, and encoding the messages pgwarden itself sends (ErrorResponse, CancelRequest, Terminate).
//! Does not own: sockets, timers or any policy; callers feed bytes and act on what comes back.

pub mod error_response;
pub mod messages;
pub mod scanner;
pub mod startup;

/// SQLSTATE codes pgwarden sends on its own.
pub mod sqlstate {
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const UNABLE_TO_CONNECT: &str = "08001";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
}
