//! Stub: being written.

use clap::Args;

use crate::cli_error::CliError;
use crate::CliResult;

#[derive(Debug, Args)]
pub(crate) struct BenchRegisterArgs {}

pub(crate) fn run(_args: &BenchRegisterArgs) -> CliResult {
    Err(CliError::failed(anyhow::anyhow!("not implemented yet")))
}
