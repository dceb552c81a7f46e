//! Stub: being written.

use clap::Args;

use crate::cli_error::CliError;
use crate::CliResult;

#[derive(Debug, Args)]
pub(crate) struct DatasetArgs {}

pub(crate) fn run(_args: &DatasetArgs) -> CliResult {
    Err(CliError::failed(anyhow::anyhow!("not implemented yet")))
}
