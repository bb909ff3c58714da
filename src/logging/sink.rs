//! Where log lines go: a bounded queue drained by a thread of its own, so a slow or stuck stderr (a container
//! log pipe nobody reads) never blocks the runtime that relays queries and answers probes. A line that finds
//! the queue full is dropped and counted (`pgwarden_log_lines_dropped_total`, and a line saying how many once
//! stderr moves again). Each line's control bytes from values are escaped on the way ([`escape_log_line`]).

use crate::text::escape_log_line;
use prometheus::IntCounter;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tracing_subscriber::fmt::MakeWriter;

/// Lines the queue holds (a few MiB at most) before new ones are dropped.
pub const QUEUE_LINES: usize = 4096;

#[derive(Default)]
struct Shared {
    /// Lines sent and not yet written.
    queued: AtomicUsize,
    /// Lines dropped since the last notice.
    unreported: AtomicU64,
    counter: OnceLock<IntCounter>,
}

/// The handle the command keeps: counts drops into a metric once there is one, and flushes at exit.
pub struct LogOutput {
    shared: Arc<Shared>,
}

impl LogOutput {
    /// Counts dropped lines (those so far included) in `counter` from now on.
    pub fn count_drops_in(&self, counter: IntCounter) {
        counter.inc_by(self.shared.unreported.load(Ordering::Relaxed));
        let _ = self.shared.counter.set(counter);
    }

    /// Waits (at most `within`) for the queued lines to be written.
    pub fn flush(&self, within: Duration) {
        let until = Instant::now() + within;
        while self.shared.queued.load(Ordering::Acquire) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for LogOutput {
    fn drop(&mut self) {
        self.flush(Duration::from_secs(2));
    }
}

/// The writer the formatter gets: one [`Line`] per event, queued when the event is done.
#[derive(Clone)]
pub struct Sink {
    tx: SyncSender<Vec<u8>>,
    shared: Arc<Shared>,
    colour: bool,
}

/// Starts the writer thread on `out` (stderr). `json`: the notice of dropped lines is a JSON line too.
pub fn start(out: impl Write + Send + 'static, colour: bool, json: bool) -> (Sink, LogOutput) {
    let (tx, rx) = sync_channel(QUEUE_LINES);
    let shared = Arc::new(Shared::default());
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name("pgwarden-log".into())
        .spawn(move || write_lines(rx, &thread_shared, out, json))
        .expect("a thread for the log writer");
    (Sink { tx, shared: shared.clone(), colour }, LogOutput { shared })
}

fn write_lines(rx: Receiver<Vec<u8>>, shared: &Shared, mut out: impl Write, json: bool) {
    for line in rx {
        let missed = shared.unreported.swap(0, Ordering::Relaxed);
        if missed > 0 {
            let notice = if json {
                format!(
                    "{{\"level\":\"WARN\",\"fields\":{{\"message\":\"log lines dropped: stderr was not read fast enough\",\"dropped\":{missed}}},\"target\":\"pgwarden::logging\"}}\n"
                )
            } else {
                format!(" WARN pgwarden::logging: {missed} log lines dropped: stderr was not read fast enough\n")
            };
            let _ = out.write_all(notice.as_bytes());
        }
        let _ = out.write_all(&line);
        let _ = out.flush();
        shared.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Sink {
    fn send(&self, line: Vec<u8>) {
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if self.tx.try_send(line).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            self.shared.unreported.fetch_add(1, Ordering::Relaxed);
            if let Some(c) = self.shared.counter.get() {
                c.inc();
            }
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line { sink: self, buf: Vec::new() }
    }
}

/// One event's formatted bytes, queued when the formatter is done with it.
pub struct Line<'a> {
    sink: &'a Sink,
    buf: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let line = escape_log_line(&self.buf, self.sink.colour).into_owned();
            self.sink.send(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A writer that blocks until released, then collects.
    #[derive(Clone, Default)]
    struct Gate(Arc<(Mutex<bool>, Mutex<Vec<u8>>)>);

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            while !*self.0 .0.lock().unwrap() {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.0 .1.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_output_never_blocks_the_logger_and_drops_are_counted_and_said() {
        let gate = Gate::default();
        let (sink, output) = start(gate.clone(), false, false);
        let counter = IntCounter::new("dropped", "dropped").unwrap();
        output.count_drops_in(counter.clone());
        let started = Instant::now();
        for i in 0..QUEUE_LINES + 100 {
            let mut w = sink.make_writer();
            writeln!(w, "line {i} a\x1b]52;c;x\x07").unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(2), "logging blocked on a stuck output");
        // One line is in the writer's hands, QUEUE_LINES wait; the rest were dropped.
        assert!(counter.get() >= 99 && counter.get() <= 100, "{}", counter.get());
        *gate.0 .0.lock().unwrap() = true;
        output.flush(Duration::from_secs(5));
        let mut w = sink.make_writer();
        writeln!(w, "after").unwrap();
        drop(w);
        output.flush(Duration::from_secs(5));
        let text = String::from_utf8(gate.0 .1.lock().unwrap().clone()).unwrap();
        assert!(text.contains("log lines dropped"), "{}", &text[text.len() - 200..]);
        assert!(text.ends_with("after\n"));
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "control bytes escaped");
        assert!(text.contains("a\\x1b]52;c;x\\x07"));
    }
}
