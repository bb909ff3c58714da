//! The names pgwarden answers to: `pgwarden`, and `kubectl pgwarden` when kubectl runs it as a plugin.
//! kubectl runs the executable `kubectl-pgwarden` found on PATH for `kubectl pgwarden …` (krew installs that
//! name as a link to the binary), with the arguments after the plugin's name; the commands are the same, only
//! the name in help and usage changes.

use super::Cli;
use clap::{CommandFactory, FromArgMatches};
use std::ffi::{OsStr, OsString};
use std::path::Path;

/// The executable name kubectl looks for.
pub const PLUGIN_FILE: &str = "kubectl-pgwarden";

/// The name to show for a program run as `argv0`.
pub fn display_name(argv0: &OsStr) -> &'static str {
    let file = Path::new(argv0).file_name().and_then(OsStr::to_str).unwrap_or_default();
    if file.strip_suffix(".exe").unwrap_or(file) == PLUGIN_FILE {
        "kubectl pgwarden"
    } else {
        "pgwarden"
    }
}

/// Parses a command line whose first item is the program as it was run.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let name = args.first().map_or("pgwarden", |a| display_name(a));
    let mut command = Cli::command().name(name).bin_name(name);
    let matches = command.try_get_matches_from_mut(args)?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;

    #[test]
    fn the_plugin_name_is_recognised_by_its_file_name_only() {
        assert_eq!(display_name(OsStr::new("/home/me/.krew/bin/kubectl-pgwarden")), "kubectl pgwarden");
        assert_eq!(display_name(OsStr::new("kubectl-pgwarden")), "kubectl pgwarden");
        assert_eq!(display_name(OsStr::new("kubectl-pgwarden.exe")), "kubectl pgwarden");
        assert_eq!(display_name(OsStr::new("/usr/local/bin/pgwarden")), "pgwarden");
        assert_eq!(display_name(OsStr::new("/opt/kubectl-pgwarden/pgwarden")), "pgwarden");
        assert_eq!(display_name(OsStr::new("kubectl-pgwardenx")), "pgwarden");
        assert_eq!(display_name(OsStr::new("")), "pgwarden");
    }

    #[test]
    fn as_a_plugin_the_same_commands_parse_and_help_names_kubectl() {
        let cli = parse_from(["/x/kubectl-pgwarden", "leaks", "image-processor-0", "-n", "shop"]).unwrap();
        match cli.command {
            Command::Leaks { pod, .. } => {
                assert_eq!(pod.pod.as_deref(), Some("image-processor-0"));
                assert_eq!(pod.namespace.as_deref(), Some("shop"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_from(["kubectl-pgwarden", "fleet", "leaks"]).unwrap().command, Command::Fleet { .. }));
        let help = parse_from(["kubectl-pgwarden", "--help"]).unwrap_err().render().to_string();
        assert!(help.contains("Usage: kubectl pgwarden <COMMAND>"), "{help}");
        let wrong = parse_from(["kubectl-pgwarden", "leeks"]).unwrap_err().render().to_string();
        assert!(wrong.contains("kubectl pgwarden"), "{wrong}");
        let help = parse_from(["pgwarden", "--help"]).unwrap_err().render().to_string();
        assert!(help.contains("Usage: pgwarden <COMMAND>"), "{help}");
    }

    #[test]
    fn a_namespace_without_a_pod_is_refused() {
        let e = parse_from(["pgwarden", "leaks", "-n", "shop"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{e}");
    }
}
