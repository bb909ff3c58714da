//! What both of pgwarden's HTTP servers (the admin API and the injection webhook) need to survive abuse: a
//! header read timeout (which also bounds an idle keep-alive connection), a limit on a whole connection's
//! life, a body read timeout, and a cap on concurrent connections. A client that trickles bytes can hold a
//! connection for `header_read_timeout` at most, and no more than `max_connections` of them at once, so it
//! can never use up the file descriptors the proxy's own clients need.

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive within this; an idle keep-alive connection is closed after it too.
    pub header_read_timeout: Duration,
    /// A request body must arrive within this.
    pub body_read_timeout: Duration,
    /// No connection lives longer than this.
    pub connection_timeout: Duration,
    /// Connections served at once; more are closed as they are accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(120),
            max_connections: 64,
        }
    }
}

/// The HTTP/1 connection builder with the limits' timer and header read timeout.
pub fn builder(limits: &Limits) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    b
}

/// The cap on concurrent connections.
#[derive(Clone)]
pub struct ConnectionCap(Arc<Semaphore>);

impl ConnectionCap {
    pub fn new(limits: &Limits) -> ConnectionCap {
        ConnectionCap(Arc::new(Semaphore::new(limits.max_connections)))
    }

    /// A place for one more connection, held until dropped; `None` when all are taken.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}
