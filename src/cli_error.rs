//! How the CLI fails: one line on stderr and a documented exit code, never a panic.
//!
//! Exit codes: 0 success, 1 the operation ran but could not succeed (an unreachable IK target, a
//! failed self-check), 2 bad input (arguments, files, values).

use std::process::ExitCode;

/// A failure with its exit code.
#[derive(Debug)]
pub(crate) struct CliError {
    code: u8,
    error: anyhow::Error,
}

impl CliError {
    /// Bad input: exit code 2.
    pub(crate) fn input(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 2,
            error: error.into(),
        }
    }

    /// The operation failed on valid input: exit code 1.
    pub(crate) fn failed(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 1,
            error: error.into(),
        }
    }

    /// Prints the error as one line on stderr and returns the exit code.
    pub(crate) fn report(&self) -> ExitCode {
        eprintln!("error: {}", one_line(&format!("{:#}", self.error)));
        ExitCode::from(self.code)
    }
}

/// Collapses whitespace and newlines so an error is one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Handles an argument-parsing failure: help and version print as usual (exit 0); anything else
/// becomes one line on stderr with exit code 2.
pub(crate) fn clap_exit(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            let text = e.render().to_string();
            let head = text
                .split("\n\nUsage:")
                .next()
                .unwrap_or(&text)
                .split("\n\nFor more information")
                .next()
                .unwrap_or(&text);
            let line = one_line(head);
            let line = line.strip_prefix("error: ").unwrap_or(&line);
            eprintln!("error: {line} (see --help)");
            ExitCode::from(2)
        }
    }
}
