//! Tracing setup: text or JSON lines on stderr, level from `RUST_LOG` (default `info`). Text logs are
//! coloured only when stderr is a terminal and `NO_COLOR` is unset or empty (no-color.org): a file, a pipe
//! or a container log collector gets plain text. Lines are written by a thread of their own through a
//! bounded queue ([`sink`]): a stuck stderr drops lines (counted), never blocks the relay.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::{fmt, EnvFilter};

pub mod every;
pub mod sink;
pub use every::Every;
pub use sink::LogOutput;

/// Whether text logs get ANSI colours: a terminal, and no `NO_COLOR` with a value.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Starts logging; keep the handle for the life of the command (dropping it flushes what is queued).
pub fn init(format: LogFormat) -> LogOutput {
    init_at(format, "info")
}

/// As [`init`], with `default` as the level when `RUST_LOG` is unset (`pgwarden guard` logs warnings only:
/// the terminal is the test run's).
pub fn init_at(format: LogFormat, default: &str) -> LogOutput {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let (writer, output) = sink::start(std::io::stderr(), ansi, format == LogFormat::Json);
    let builder = fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
    output
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(super::colour(true, None));
        assert!(super::colour(true, Some(OsStr::new(""))), "an empty NO_COLOR is unset (no-color.org)");
        assert!(!super::colour(true, Some(OsStr::new("1"))));
        assert!(!super::colour(false, None), "a file or a pipe gets plain text");
    }
}
