//! Stub: being written.

use clap::Args;

use crate::cli_error::CliError;
use crate::CliResult;

#[derive(Debug, Args)]
pub(crate) struct EvalArgs {}

pub(crate) fn run(_args: &EvalArgs) -> CliResult {
    Err(CliError::failed(anyhow::anyhow!("not implemented yet")))
}
