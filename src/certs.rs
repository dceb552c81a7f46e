//! `telecho certs ...`: the site PKI for the teleoperation link.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use telecho_teleop::pki;
use telecho_teleop::wire::Role;

use crate::cli_error::CliError;
use crate::CliResult;

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Create a site CA, a server certificate (for localhost, 127.0.0.1, ::1 and --names) and
    /// the `operator` and `observer` client certificates in DIR: ca.pem, ca.key, server.pem,
    /// server.key, operator.pem, operator.key, observer.pem, observer.key. Refuses to replace
    /// an existing CA.
    Init {
        /// Output directory (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// More names for the server certificate: DNS names or IP addresses, comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
        names: Vec<String>,
    },
    /// Issue another client certificate, NAME.pem and NAME.key, signed by the CA in the PKI
    /// directory. The role is written into the certificate (OU and SAN URI telecho:role:ROLE).
    Issue {
        /// PKI directory made by `certs init`.
        #[arg(long, value_name = "DIR")]
        pki: PathBuf,
        /// What the holder may do: steer (operator) or only watch (observer).
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Certificate name (common name and file name): 1-64 of [A-Za-z0-9_.-].
        #[arg(long)]
        name: String,
    },
}

/// A client role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum RoleArg {
    /// May hold the control lease and steer.
    Operator,
    /// Watches only.
    Observer,
}

pub(crate) fn run(command: &CertsCommand) -> CliResult {
    let written = match command {
        CertsCommand::Init { out, names } => pki::init(out, names),
        CertsCommand::Issue {
            pki: dir,
            role,
            name,
        } => {
            let role = match role {
                RoleArg::Operator => Role::Operator,
                RoleArg::Observer => Role::Observer,
            };
            pki::issue(dir, role, name)
        }
    }
    .map_err(CliError::input)?;
    for f in written.files {
        println!("{}", f.display());
    }
    Ok(())
}
