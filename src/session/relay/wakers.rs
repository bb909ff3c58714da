//! Which of the relay's event sources woke its task.
//!
//! The relay's one task waits on three sources at once: the client socket, the server socket and the
//! connection's signals. With the task's own waker a wake-up cannot tell which of them woke it, so every
//! wake-up polled all of them again, and a socket polled `Pending` only registers the same waker again
//! (tokio: ~170 instructions each; two per transaction in select-only traffic, issue 31). Here each source is
//! polled through a waker of its own that marks the source before waking the task; a source that last answered
//! `Pending` through its waker and has not been marked since has nothing new, and is not polled.
//!
//! Correct because a source answers `Pending` only with its waker registered (tokio's I/O and coop budget,
//! tokio-rustls, `Conn::poll_signals`), and whatever makes it ready wakes that waker: the mark is set before
//! the task is woken. A source whose last poll was `Ready` (a read that may have left bytes in a TLS buffer, a
//! deferred end) is always polled. If the task's waker changes, the sources' wakers are rebuilt and every source polled.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{AcqRel, Release};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// One source's waker: marks the source, then wakes the task.
struct Mark {
    woken: AtomicBool,
    task: Waker,
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Release);
        self.task.wake_by_ref();
    }
}

/// The relay's event sources, each with its own waker built on the task's.
pub(super) struct Sources {
    pub(super) signals: Source,
    pub(super) client: Source,
    pub(super) server: Source,
}

impl Sources {
    /// The sources' wakers on `task`, the task's own waker.
    pub(super) fn new(task: &Waker) -> Sources {
        Sources { signals: Source::new(task), client: Source::new(task), server: Source::new(task) }
    }

    /// Once per poll of the task, before any source is polled: builds the sources' wakers again if the task's
    /// waker changed (what was registered wakes the old one, so every source is polled again).
    #[inline]
    pub(super) fn refresh(&mut self, cx: &Context<'_>) {
        if !self.signals.mark.task.will_wake(cx.waker()) {
            *self = Sources::new(cx.waker());
        }
    }
}

/// One event source of the relay's task: its own waker, and whether it waits on it.
pub(super) struct Source {
    mark: Arc<Mark>,
    /// A waker on `mark`.
    waker: Waker,
    /// The last poll that could be skipped answered `Pending` through this source's waker.
    waiting: bool,
}

impl Source {
    fn new(task: &Waker) -> Source {
        let mark = Arc::new(Mark { woken: AtomicBool::new(false), task: task.clone() });
        Source { waker: Waker::from(mark.clone()), mark, waiting: false }
    }

    /// Polls `f` with this source's waker, unless the source waits and was not woken since: then `Pending` at
    /// once (its waker stays registered where the last poll left it).
    #[inline]
    pub(super) fn poll<T>(&mut self, f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        let woken = self.mark.woken.swap(false, AcqRel);
        if self.waiting && !woken {
            return Poll::Pending;
        }
        let polled = f(&mut Context::from_waker(&self.waker));
        self.waiting = polled.is_pending();
        polled
    }

    /// Polls `f` with this source's waker, always (a write: the relay has bytes for this source). A wake-up
    /// it registers for marks the source, which only makes the next [`Source::poll`] look again.
    #[inline]
    pub(super) fn poll_always<T>(&self, f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        f(&mut Context::from_waker(&self.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::SeqCst;

    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    /// A source of `Sources` refreshed for `task`, polled with `ready`; whether `f` ran, and the waker it got.
    fn poll(sources: &mut Sources, task: &Waker, ready: bool) -> (bool, Option<Waker>) {
        sources.refresh(&Context::from_waker(task));
        let mut got = None;
        let _ = sources.client.poll(|own| {
            got = Some(own.waker().clone());
            if ready {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        (got.is_some(), got)
    }

    #[test]
    fn a_waiting_source_is_polled_again_only_once_its_own_waker_woke_the_task() {
        let task = Arc::new(Counting::default());
        let task_waker = Waker::from(task.clone());
        let mut sources = Sources::new(&task_waker);
        let (polled, registered) = poll(&mut sources, &task_waker, false);
        assert!(polled, "first poll");
        assert!(!poll(&mut sources, &task_waker, true).0, "waiting, not woken: not polled");
        registered.expect("registered").wake();
        assert_eq!(task.0.load(SeqCst), 1, "the source's waker wakes the task");
        assert!(poll(&mut sources, &task_waker, true).0, "woken: polled");
        assert!(poll(&mut sources, &task_waker, false).0, "after Ready: polled");
        assert!(!poll(&mut sources, &task_waker, true).0, "waiting again");
    }

    #[test]
    fn a_new_task_waker_makes_every_source_poll_again() {
        let first = Waker::from(Arc::new(Counting::default()));
        let second = Waker::from(Arc::new(Counting::default()));
        let mut sources = Sources::new(&first);
        assert!(poll(&mut sources, &first, false).0);
        assert!(!poll(&mut sources, &first, false).0);
        assert!(poll(&mut sources, &second, false).0, "registered with the old task's waker: polled again");
    }

    #[test]
    fn a_write_s_wake_up_makes_the_next_read_look() {
        let task = Waker::from(Arc::new(Counting::default()));
        let mut sources = Sources::new(&task);
        assert!(poll(&mut sources, &task, false).0);
        let mut write_waker = None;
        let _ = sources.client.poll_always(|own| {
            write_waker = Some(own.waker().clone());
            Poll::<()>::Pending
        });
        write_waker.expect("registered").wake();
        assert!(poll(&mut sources, &task, false).0);
    }
}
