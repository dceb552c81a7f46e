//! `telecho kin`: forward kinematics, Jacobian and inverse kinematics of a URDF chain, as JSON.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde::Serialize;
use telecho_control::{Chain, IkConfig, IkSolver};
use telecho_core::Transform;

use crate::cli_error::CliError;
use crate::CliResult;

#[derive(Debug, Subcommand)]
pub(crate) enum KinCommand {
    /// Tip pose in the base frame: {"translation":[x,y,z],"rotation":[[...],[...],[...]]}.
    Fk {
        #[command(flatten)]
        chain: ChainArgs,
        /// Joint values of the chain's movable joints, base to tip (rad or m), comma-separated.
        #[arg(long, allow_hyphen_values = true)]
        q: String,
    },
    /// Geometric Jacobian (6×N, linear rows first, base frame, tip origin): {"jacobian":[[...],...]}.
    Jacobian {
        #[command(flatten)]
        chain: ChainArgs,
        /// Joint values of the chain's movable joints, base to tip, comma-separated.
        #[arg(long, allow_hyphen_values = true)]
        q: String,
    },
    /// Joint values that reach a tip pose: {"q":[...],"position_error_m":e,"orientation_error_rad":e}.
    Ik {
        #[command(flatten)]
        chain: ChainArgs,
        /// Target tip position in the base frame, metres: x,y,z.
        #[arg(long, allow_hyphen_values = true)]
        target_xyz: String,
        /// Target tip orientation, URDF roll,pitch,yaw in radians (R = Rz·Ry·Rx).
        #[arg(long, allow_hyphen_values = true)]
        target_rpy: String,
        /// Start configuration (default: the middle of each joint's range).
        #[arg(long, allow_hyphen_values = true)]
        seed: Option<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ChainArgs {
    /// URDF file describing the robot.
    #[arg(long)]
    urdf: PathBuf,
    /// Link at the end of the chain.
    #[arg(long)]
    tip: String,
    /// Link at the start of the chain (default: the URDF's root link).
    #[arg(long)]
    base: Option<String>,
}

impl ChainArgs {
    fn load(&self) -> Result<Chain, CliError> {
        Chain::from_urdf_file(&self.urdf, self.base.as_deref(), &self.tip).map_err(CliError::input)
    }
}

#[derive(Debug, Serialize)]
struct FkOut {
    translation: [f64; 3],
    rotation: [[f64; 3]; 3],
}

#[derive(Debug, Serialize)]
struct JacobianOut {
    jacobian: Vec<Vec<f64>>,
}

#[derive(Debug, Serialize)]
struct IkOut {
    q: Vec<f64>,
    position_error_m: f64,
    orientation_error_rad: f64,
    iterations: usize,
    attempts: usize,
}

pub(crate) fn run(cmd: &KinCommand) -> CliResult {
    match cmd {
        KinCommand::Fk { chain, q } => {
            let chain = chain.load()?;
            let q = parse_values("--q", q, None)?;
            let t = chain.fk(&q).map_err(CliError::input)?;
            print_json(&FkOut {
                translation: t.translation.into(),
                rotation: t.rotation_rows(),
            })
        }
        KinCommand::Jacobian { chain, q } => {
            let chain = chain.load()?;
            let q = parse_values("--q", q, None)?;
            let j = chain.jacobian(&q).map_err(CliError::input)?;
            let rows = (0..6).map(|r| j.row(r).iter().copied().collect()).collect();
            print_json(&JacobianOut { jacobian: rows })
        }
        KinCommand::Ik {
            chain,
            target_xyz,
            target_rpy,
            seed,
        } => {
            let chain = chain.load()?;
            let xyz = parse_values("--target-xyz", target_xyz, Some(3))?;
            let rpy = parse_values("--target-rpy", target_rpy, Some(3))?;
            let target =
                Transform::from_xyz_rpy([xyz[0], xyz[1], xyz[2]], [rpy[0], rpy[1], rpy[2]])
                    .map_err(CliError::input)?;
            let seed = match seed {
                Some(s) => parse_values("--seed", s, None)?,
                None => chain.mid_configuration(),
            };
            let mut solver = IkSolver::new(&chain, IkConfig::default());
            let mut q = vec![0.0; chain.dof()];
            let report = solver.solve(&chain, &target, &seed, &mut q).map_err(|e| {
                if e.is_unreachable() {
                    CliError::failed(e)
                } else {
                    CliError::input(e)
                }
            })?;
            print_json(&IkOut {
                q,
                position_error_m: report.position_error_m,
                orientation_error_rad: report.orientation_error_rad,
                iterations: report.iterations,
                attempts: report.attempts,
            })
        }
    }
}

fn print_json(value: &impl Serialize) -> CliResult {
    let s = serde_json::to_string(value).map_err(CliError::failed)?;
    println!("{s}");
    Ok(())
}

/// Parses a comma-separated list of finite numbers, naming the argument and the position of any
/// bad value.
pub(crate) fn parse_values(
    arg: &str,
    text: &str,
    expected: Option<usize>,
) -> Result<Vec<f64>, CliError> {
    let text = text.trim();
    let values: Vec<f64> = if text.is_empty() {
        Vec::new()
    } else {
        text.split(',')
            .enumerate()
            .map(|(i, s)| {
                let s = s.trim();
                let v: f64 = s.parse().map_err(|_| {
                    CliError::input(anyhow!("{arg} value {} (`{s}`) is not a number", i + 1))
                })?;
                if !v.is_finite() {
                    return Err(CliError::input(anyhow!(
                        "{arg} value {} (`{s}`) is not finite",
                        i + 1
                    )));
                }
                Ok(v)
            })
            .collect::<Result<_, _>>()?
    };
    if let Some(n) = expected {
        if values.len() != n {
            return Err(CliError::input(anyhow!(
                "{arg} has {} values, expected {n}",
                values.len()
            )));
        }
    }
    Ok(values)
}
