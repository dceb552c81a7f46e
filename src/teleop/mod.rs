//! `telecho teleop ...`: the patient side of the teleoperation link and its latency benchmark.

mod bench;
pub(crate) mod serve;

use clap::Subcommand;

use crate::CliResult;

#[derive(Debug, Subcommand)]
pub(crate) enum TeleopCommand {
    /// Run the patient side: the 1 kHz control loop on the simulator steered by remote
    /// operators over QUIC (mutual TLS with the site PKI), robot state, haptic feedback and
    /// ultrasound frames back, every accepted command in the hash-chained audit log.
    Serve(serve::ServeArgs),
    /// Command age at the patient side, QUIC datagrams against TCP+TLS, through the seeded
    /// impairment proxy (prints `{"quic":{"p50_ms","p99_ms"},"tcp":{...}}` with --json).
    Bench(bench::BenchArgs),
}

pub(crate) fn run(command: &TeleopCommand) -> CliResult {
    match command {
        TeleopCommand::Serve(a) => serve::run(a),
        TeleopCommand::Bench(a) => bench::run(a),
    }
}
