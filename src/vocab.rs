//! The words every layer counts and reports in: why a connection was refused or closed, what state it is
//! in, and the one typed way to say "send FATAL and close" ([`Fatal`]).
//!
//! Owns: [`CloseReason`], [`RefuseReason`] and [`ConnState`] with their label names, per-reason counter
//! arrays sized from the enums themselves ([`CloseCounts`], [`RefuseCounts`]), the SQLSTATE codes pgwarden
//! sends on its own ([`SqlState`]) and [`Fatal`]. Does not own: deciding any of them (see `policy`,
//! `clients`, `session`).

use crate::protocol::error_response;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Defines a reason enum whose variants, label names, `ALL` and `COUNT` come from one list, so a counter
/// array sized by `COUNT` can never drift from the enum.
macro_rules! reasons {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const COUNT: usize = Self::ALL.len();

            /// The `reason` label of the metrics and the word in logs and JSON.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }

        impl Reason for $name {
            const COUNT: usize = $name::COUNT;
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

reasons! {
    /// Why a session ended; the names are the `reason` label of the closed counter.
    CloseReason {
        Client => "client",
        Server => "server",
        Abandoned => "abandoned",
        IdleTimeout => "idle_timeout",
        IdleInTransactionTimeout => "idle_in_transaction_timeout",
        MaxAge => "max_age",
        TransactionTimeout => "transaction_timeout",
        Reclaim => "reclaim",
        BudgetReclaim => "budget_reclaim",
        Shutdown => "shutdown",
        Error => "error",
    }
}

reasons! {
    /// Why a connection was (or in report-only mode would have been) refused; the `reason` metric label.
    RefuseReason {
        ClientLimit => "client_limit",
        TotalLimit => "total_limit",
        Budget => "budget",
        WaitTimeout => "wait_timeout",
    }
}

/// A reason enum defined by `reasons!`: its variants index counter arrays.
pub trait Reason: Copy {
    const COUNT: usize;
    fn index(self) -> usize;
}

/// One lock-free counter per reason of `R` (`N` is `R::COUNT`; the aliases below fix it).
#[derive(Debug)]
pub struct Counts<R, const N: usize> {
    counts: [AtomicU64; N],
    _reason: PhantomData<R>,
}

impl<R: Reason, const N: usize> Default for Counts<R, N> {
    fn default() -> Self {
        debug_assert_eq!(N, R::COUNT);
        Counts { counts: std::array::from_fn(|_| AtomicU64::new(0)), _reason: PhantomData }
    }
}

impl<R: Reason, const N: usize> Counts<R, N> {
    pub fn add(&self, r: R) {
        self.counts[r.index()].fetch_add(1, Relaxed);
    }

    pub fn get(&self, r: R) -> u64 {
        self.counts[r.index()].load(Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|v| v.load(Relaxed)).sum()
    }
}

/// Closed connections by [`CloseReason`].
pub type CloseCounts = Counts<CloseReason, { CloseReason::COUNT }>;
/// Refusals by [`RefuseReason`].
pub type RefuseCounts = Counts<RefuseReason, { RefuseReason::COUNT }>;

/// The connection states of SPEC "Connection state".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnState {
    Startup = 0,
    Waiting = 1,
    Active = 2,
    Idle = 3,
    IdleInTransaction = 4,
    IdleInFailedTransaction = 5,
}

impl ConnState {
    pub const ALL: [ConnState; 6] = [
        ConnState::Startup,
        ConnState::Waiting,
        ConnState::Active,
        ConnState::Idle,
        ConnState::IdleInTransaction,
        ConnState::IdleInFailedTransaction,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Startup => "startup",
            ConnState::Waiting => "waiting",
            ConnState::Active => "active",
            ConnState::Idle => "idle",
            ConnState::IdleInTransaction => "idle_in_transaction",
            ConnState::IdleInFailedTransaction => "idle_in_failed_transaction",
        }
    }

    /// The inverse of `as u8` (an unknown value reads as `Startup`).
    pub fn from_u8(v: u8) -> ConnState {
        match v {
            1 => ConnState::Waiting,
            2 => ConnState::Active,
            3 => ConnState::Idle,
            4 => ConnState::IdleInTransaction,
            5 => ConnState::IdleInFailedTransaction,
            _ => ConnState::Startup,
        }
    }

    /// Idle inside a transaction, failed or not (they count alike for policy and leaks).
    pub fn in_transaction(self) -> bool {
        matches!(self, ConnState::IdleInTransaction | ConnState::IdleInFailedTransaction)
    }
}

/// A SQLSTATE code pgwarden sends on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(&'static str);

impl SqlState {
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    pub const INSUFFICIENT_RESOURCES: SqlState = SqlState("53000");
    pub const IDLE_SESSION_TIMEOUT: SqlState = SqlState("57P05");
    pub const IDLE_IN_TRANSACTION_TIMEOUT: SqlState = SqlState("25P03");
    pub const TRANSACTION_TIMEOUT: SqlState = SqlState("25P04");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    pub const UNABLE_TO_CONNECT: SqlState = SqlState("08001");
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");

    pub fn code(self) -> &'static str {
        self.0
    }
}

/// What a refused or closed connection ended with, for counting and logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Refused at admission (never admitted, so never counted as closed).
    Refused(RefuseReason),
    /// Closed; counted under this reason when the connection was admitted.
    Closed(CloseReason),
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Refused(r) => r.as_str(),
            Ending::Closed(r) => r.as_str(),
        }
    }
}

/// "Send FATAL and close": the one way pgwarden ends a connection on its own initiative, whether it refuses
/// it, times it out, shuts down or meets a protocol error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal {
    pub ending: Ending,
    pub sqlstate: SqlState,
    pub message: String,
}

impl Fatal {
    pub fn closed(reason: CloseReason, sqlstate: SqlState, message: impl Into<String>) -> Fatal {
        Fatal { ending: Ending::Closed(reason), sqlstate, message: message.into() }
    }

    /// A cap refusal: always `53300`.
    pub fn refused(reason: RefuseReason, message: impl Into<String>) -> Fatal {
        Fatal { ending: Ending::Refused(reason), sqlstate: SqlState::TOO_MANY_CONNECTIONS, message: message.into() }
    }

    /// A protocol violation by the client: `08P01`, closed as `error`.
    pub fn protocol(message: impl Into<String>) -> Fatal {
        Fatal::closed(CloseReason::Error, SqlState::PROTOCOL_VIOLATION, message)
    }

    /// pgwarden is shutting down: `57P01`, closed as `shutdown`.
    pub fn shutdown(message: impl Into<String>) -> Fatal {
        Fatal::closed(CloseReason::Shutdown, SqlState::ADMIN_SHUTDOWN, message)
    }

    /// The close reason to count (refusals count as `error` if they ever reach a counter).
    pub fn close_reason(&self) -> CloseReason {
        match self.ending {
            Ending::Closed(r) => r,
            Ending::Refused(_) => CloseReason::Error,
        }
    }

    /// The ErrorResponse bytes, as PostgreSQL would send them.
    pub fn encode(&self) -> Vec<u8> {
        error_response::fatal(self.sqlstate.code(), &self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_lists_and_counters_agree() {
        assert_eq!(CloseReason::COUNT, 11);
        assert_eq!(RefuseReason::COUNT, 4);
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        let counts = CloseCounts::default();
        for r in CloseReason::ALL {
            counts.add(*r);
        }
        counts.add(CloseReason::Error);
        assert_eq!(counts.total(), 12);
        assert_eq!(counts.get(CloseReason::Error), 2);
        let refused = RefuseCounts::default();
        refused.add(RefuseReason::WaitTimeout);
        assert_eq!(refused.get(RefuseReason::WaitTimeout), 1);
        assert_eq!(refused.total(), 1);
    }

    #[test]
    fn fatal_encodes_an_error_response() {
        let f = Fatal::refused(RefuseReason::ClientLimit, "too many");
        let bytes = f.encode();
        let fields = error_response::parse(&bytes[5..]);
        assert!(fields.is_fatal());
        assert_eq!(fields.code, Some(&b"53300"[..]));
        assert_eq!(f.ending.as_str(), "client_limit");
        assert_eq!(Fatal::protocol("x").close_reason(), CloseReason::Error);
        assert_eq!(Fatal::shutdown("x").sqlstate, SqlState::ADMIN_SHUTDOWN);
    }

    #[test]
    fn conn_state_round_trips() {
        for s in ConnState::ALL {
            assert_eq!(ConnState::from_u8(s as u8), s);
        }
    }
}
