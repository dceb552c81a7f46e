//! `telecho audit verify FILE`: checks the hash chain of a teleoperation audit log.
//!
//! Exit codes: 0 the chain is intact (summary printed; one JSON object with `--json`); 1 the log
//! was tampered with (the first broken line is named; with `--json` a JSON object with
//! `"ok":false` is printed on stdout as well); 2 the file cannot be read.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Subcommand;
use serde::Serialize;
use telecho_teleop::audit;

use crate::cli_error::CliError;
use crate::CliResult;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify the hash chain of an audit log written by `telecho teleop serve`: every line's
    /// SHA-256, its `prev` link and its `seq`. Names the first line that fails (exit 1).
    Verify {
        /// The audit log (JSON lines).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Print the result as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Serialize)]
struct VerifyReport {
    ok: bool,
    file: String,
    records: u64,
    last_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    broken_line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub(crate) fn run(command: &AuditCommand) -> CliResult {
    let AuditCommand::Verify { file, json } = command;
    if !file.is_file() {
        return Err(CliError::input(anyhow!(
            "audit log {} does not exist or is not a file",
            file.display()
        )));
    }
    match audit::verify(file) {
        Ok(v) => {
            let report = VerifyReport {
                ok: true,
                file: file.display().to_string(),
                records: v.records,
                last_hash: v.last_hash,
                broken_line: None,
                error: None,
            };
            if *json {
                println!(
                    "{}",
                    serde_json::to_string(&report).map_err(CliError::failed)?
                );
            } else {
                println!(
                    "{}: intact, {} records, last hash {}",
                    report.file, report.records, report.last_hash
                );
            }
            Ok(())
        }
        Err(e) => match e.audit_line() {
            Some(line) => {
                if *json {
                    let report = VerifyReport {
                        ok: false,
                        file: file.display().to_string(),
                        records: line.saturating_sub(1) as u64,
                        last_hash: String::new(),
                        broken_line: Some(line),
                        error: Some(e.to_string()),
                    };
                    println!(
                        "{}",
                        serde_json::to_string(&report).map_err(CliError::failed)?
                    );
                }
                Err(CliError::failed(anyhow!(
                    "{}: chain broken at line {line}: {e}",
                    file.display()
                )))
            }
            None => Err(CliError::input(anyhow!("{}: {e}", file.display()))),
        },
    }
}
