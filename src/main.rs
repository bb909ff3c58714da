//! The `pgwarden` binary (also `kubectl pgwarden` when run as `kubectl-pgwarden`): parse the command line,
//! run the command, map failures to exit codes (64 bad usage or config, 1 runtime failure).

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match pgwarden::cli::invocation::parse_from(std::env::args_os()) {
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
