//! The `pgwarden` binary: parse the command line, run the command, map failures to exit codes
//! (64 bad usage or config, 1 runtime failure).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match pgwarden::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    match pgwarden::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(pgwarden::cli::Failure::LeaksFound) => ExitCode::from(3),
        Err(pgwarden::cli::Failure::Exit(code)) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("pgwarden: {failure}");
            ExitCode::from(failure.exit_code() as u8)
        }
    }
}
