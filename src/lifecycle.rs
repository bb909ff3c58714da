//! Process lifecycle: signals to a shutdown token and reload requests, and the open-file limit.
//!
//! SIGTERM and SIGINT start the drain (cancel the root token); a second one is left to the default handler's
//! job of the supervisor. SIGHUP asks for a config reload.

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
                _ = term.recv() => { info!(signal = "SIGTERM", "draining"); shutdown.cancel(); }
                _ = int.recv() => { info!(signal = "SIGINT", "draining"); shutdown.cancel(); }
                _ = hup.recv() => { let _ = reload.try_send(()); }
            }
        }
    });
    Ok(())
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
