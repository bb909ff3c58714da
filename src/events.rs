//! Kubernetes Events a sidecar asks the control plane to post on its pod (a leak suspected, a refusal at a
//! cap or budget, suspects reclaimed): the outbox between where they happen and the sender
//! (`k8s::control::events`). Bounded: at most [`MAX_QUEUED`] wait; past that the oldest is dropped and
//! counted (`pgwarden_pod_events_dropped_total`). Without a control plane nothing is queued.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Events waiting to be sent at most.
pub const MAX_QUEUED: usize = 64;
/// Bytes of an event's message kept (Kubernetes keeps 1 KiB of a message).
pub const MAX_MESSAGE: usize = 1024;

/// Why an Event is posted; the names are its `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    ConnectionLeak,
    ConnectionCapReached,
    LeakReclaimed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConnectionLeak => "ConnectionLeak",
            Reason::ConnectionCapReached => "ConnectionCapReached",
            Reason::LeakReclaimed => "LeakReclaimed",
        }
    }

    /// `Warning`, or `Normal` for pgwarden's own remedy.
    pub fn kind(self) -> &'static str {
        match self {
            Reason::LeakReclaimed => "Normal",
            _ => "Warning",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEvent {
    pub reason: Reason,
    pub message: String,
}

impl PodEvent {
    pub fn new(reason: Reason, message: String) -> PodEvent {
        let mut message = crate::text::printable(&message).into_owned();
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        PodEvent { reason, message }
    }
}

pub struct Outbox {
    /// Off without a control plane to send to.
    enabled: bool,
    queue: Mutex<VecDeque<PodEvent>>,
    ready: Notify,
    pub dropped: prometheus::IntCounter,
}

impl Outbox {
    pub fn new(enabled: bool) -> Outbox {
        let opts = prometheus::Opts::new(
            "pod_events_dropped_total",
            "Kubernetes Events dropped because 64 were waiting for the control plane",
        )
        .namespace("pgwarden");
        Outbox {
            enabled,
            queue: Mutex::default(),
            ready: Notify::new(),
            dropped: prometheus::IntCounter::with_opts(opts).expect("valid counter"),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<PodEvent>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, reason: Reason, message: String) {
        if !self.enabled {
            return;
        }
        let mut q = self.lock();
        if q.len() >= MAX_QUEUED {
            q.pop_front();
            self.dropped.inc();
        }
        q.push_back(PodEvent::new(reason, message));
        drop(q);
        self.ready.notify_one();
    }

    /// Waits until events are queued, and takes them all.
    pub async fn take(&self) -> Vec<PodEvent> {
        loop {
            let taken: Vec<PodEvent> = self.lock().drain(..).collect();
            if !taken.is_empty() {
                return taken;
            }
            self.ready.notified().await;
        }
    }

    /// Puts back events that could not be sent (in front, still bounded).
    pub fn put_back(&self, events: Vec<PodEvent>) {
        let mut q = self.lock();
        for e in events.into_iter().rev() {
            if q.len() >= MAX_QUEUED {
                self.dropped.inc();
                continue;
            }
            q.push_front(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_and_off_without_a_control_plane() {
        let off = Outbox::new(false);
        off.push(Reason::ConnectionLeak, "x".into());
        assert!(off.lock().is_empty());
        let o = Outbox::new(true);
        for i in 0..MAX_QUEUED + 3 {
            o.push(Reason::ConnectionCapReached, format!("refused {i}\u{1b}[2J"));
        }
        assert_eq!(o.dropped.get(), 3);
        let taken = o.take().await;
        assert_eq!((taken.len(), taken[0].message.as_str()), (MAX_QUEUED, "refused 3?[2J"));
        o.put_back(taken);
        assert_eq!(o.lock().len(), MAX_QUEUED);
    }
}
