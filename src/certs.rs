//! `telecho certs ...`: the site PKI for the teleoperation link. Stub: being written.

use clap::Subcommand;

use crate::cli_error::CliError;
use crate::CliResult;

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Create a site CA, a server certificate and operator/observer client certificates.
    Init,
}

pub(crate) fn run(_command: &CertsCommand) -> CliResult {
    Err(CliError::failed(anyhow::anyhow!("not implemented yet")))
}
