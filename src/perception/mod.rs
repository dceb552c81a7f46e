//! `telecho perception ...`: the perception node's commands.

pub(crate) mod bench;
mod dataset;
mod eval;
mod fuse;
pub(crate) mod register;

use clap::Subcommand;

use crate::CliResult;

#[derive(Debug, Subcommand)]
pub(crate) enum PerceptionCommand {
    /// Register the patient's CBCT to a tracked ultrasound sweep: prints t_base_ct, its
    /// uncertainty and the landmarks; exits non-zero with the reason when it refuses.
    Register(register::RegisterArgs),
    /// Reslice the CBCT along one sweep frame's plane and overlay it on the ultrasound frame.
    Fuse(fuse::FuseArgs),
    /// Evaluate the bone and landmark detectors (CNN and classical) on held-out simulator seeds.
    Eval(eval::EvalArgs),
    /// Write a labelled training set of simulated ultrasound frames.
    Dataset(dataset::DatasetArgs),
}

pub(crate) fn run(command: &PerceptionCommand) -> CliResult {
    match command {
        PerceptionCommand::Register(args) => register::run(args),
        PerceptionCommand::Fuse(args) => fuse::run(args),
        PerceptionCommand::Eval(args) => eval::run(args),
        PerceptionCommand::Dataset(args) => dataset::run(args),
    }
}
