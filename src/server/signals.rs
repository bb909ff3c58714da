//! Process lifecycle: signals to a shutdown token and reload requests, and the open-file limit.
//!
//! SIGTERM and SIGINT start the drain (cancel the root token); a second one, while draining, exits at once
//! (status 1) for an operator who will not wait. SIGHUP asks for a config reload.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Cancels `shutdown` on SIGTERM or SIGINT; sends on `reload` for every SIGHUP.
pub fn spawn_signal_handlers(shutdown: CancellationToken, reload: mpsc::Sender<()>) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => drain_or_exit(&shutdown, "SIGTERM"),
                _ = int.recv() => drain_or_exit(&shutdown, "SIGINT"),
                _ = hup.recv() => { let _ = reload.try_send(()); }
            }
        }
    });
    Ok(())
}

fn drain_or_exit(shutdown: &CancellationToken, signal: &str) {
    if shutdown.is_cancelled() {
        warn!(signal, "second signal while draining: exiting now");
        std::process::exit(1);
    }
    info!(signal, "draining");
    shutdown.cancel();
}

/// Raises the open-file soft limit to the hard limit (each session holds two sockets).
pub fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let before = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                warn!(soft = before, hard = lim.rlim_max, "could not raise the open-file limit");
            }
        }
    }
}
