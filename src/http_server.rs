//! What both of pgwarden's HTTP servers (the admin API and the injection webhook) need to survive abuse: a
//! header read timeout (which also bounds an idle keep-alive connection), a limit on a whole connection's
//! life, a body read timeout, and a cap on concurrent connections. A client that trickles bytes can hold a
//! connection for `header_read_timeout` at most, and no more than `max_connections` of them at once, so it
//! can never use up the file descriptors the proxy's own clients need; and a full server closes its oldest
//! idle connection for a new one ([`Connections`]), so held connections never lock out a kubelet probe.

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive within this; an idle keep-alive connection is closed after it too.
    pub header_read_timeout: Duration,
    /// A request body must arrive within this.
    pub body_read_timeout: Duration,
    /// No connection lives longer than this.
    pub connection_timeout: Duration,
    /// Connections held at once; past it the oldest idle one is closed for a new one.
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

/// The connections a server holds, at most `max_connections`. When a new one finds them all taken, the
/// oldest one not serving a request (idle between requests, still sending its headers or its TLS
/// handshake, or waiting in a long poll) is closed to make room: a peer that holds connections open can
/// never lock out a probe or an admission review, which is served the moment its request arrives. Only
/// when every connection is serving a request is the new one closed.
#[derive(Clone)]
pub struct Connections {
    max: usize,
    inner: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    next: u64,
    /// By id, oldest first: whether it is serving a request, and how to close it.
    open: BTreeMap<u64, (Arc<AtomicBool>, CancellationToken)>,
}

/// What became of a new connection.
pub enum Admitted {
    /// Served; `shed`: an older idle connection was closed to make room.
    Yes { slot: Slot, shed: bool },
    /// Every connection is serving a request: the new one is closed.
    Full,
}

impl Connections {
    pub fn new(limits: &Limits) -> Connections {
        Connections { max: limits.max_connections.max(1), inner: Arc::default() }
    }

    /// A place for a new connection, closing the oldest idle one when all are taken.
    pub fn admit(&self) -> Admitted {
        let mut held = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut shed = false;
        if held.open.len() >= self.max {
            let oldest_idle =
                held.open.iter().find(|(_, (serving, _))| !serving.load(Ordering::Acquire)).map(|(id, _)| *id);
            let Some(id) = oldest_idle else { return Admitted::Full };
            if let Some((_, close)) = held.open.remove(&id) {
                close.cancel();
            }
            shed = true;
        }
        let id = held.next;
        held.next += 1;
        let (serving, close) = (Arc::new(AtomicBool::new(false)), CancellationToken::new());
        held.open.insert(id, (serving.clone(), close.clone()));
        Admitted::Yes { slot: Slot { id, serving, close, inner: self.inner.clone() }, shed }
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).open.len()
    }
}

/// One connection's place, given back when dropped.
pub struct Slot {
    id: u64,
    serving: Arc<AtomicBool>,
    close: CancellationToken,
    inner: Arc<Mutex<Held>>,
}

impl Slot {
    /// Resolves when the connection was closed to make room for a newer one.
    pub async fn shed(&self) {
        self.close.cancelled().await
    }

    /// The connection's serving flag, for its request handler: while set, it is not closed to make room.
    pub fn serving_flag(&self) -> ServingFlag {
        ServingFlag(self.serving.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).open.remove(&self.id);
    }
}

/// A connection's serving flag, set by each request's handler while it serves (a long poll does not: it
/// waits, and may be closed to make room; its client asks again).
#[derive(Clone)]
pub struct ServingFlag(Arc<AtomicBool>);

impl ServingFlag {
    pub fn serving(&self) -> Serving {
        self.0.store(true, Ordering::Release);
        Serving(self.0.clone())
    }
}

/// Set while a request is served.
pub struct Serving(Arc<AtomicBool>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_server_closes_its_oldest_idle_connection_never_one_serving_a_request() {
        let limits = Limits { max_connections: 3, ..Limits::default() };
        let c = Connections::new(&limits);
        let slots: Vec<Slot> = (0..3)
            .map(|_| match c.admit() {
                Admitted::Yes { slot, shed } => {
                    assert!(!shed);
                    slot
                }
                Admitted::Full => panic!("room"),
            })
            .collect();
        let busy = slots[0].serving_flag().serving();
        // The oldest is serving: the second is closed for the fourth.
        let Admitted::Yes { slot: fourth, shed: true } = c.admit() else { panic!("shed") };
        assert!(slots[1].close.is_cancelled() && !slots[0].close.is_cancelled());
        assert_eq!(c.held(), 3);
        let all_busy = (slots[2].serving_flag().serving(), fourth.serving_flag().serving());
        assert!(matches!(c.admit(), Admitted::Full), "every connection serving: the new one is closed");
        drop((busy, all_busy));
        drop(slots);
        assert_eq!(c.held(), 1);
    }
}
