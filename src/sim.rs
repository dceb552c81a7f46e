//! `telecho sim`: the simulated patient.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use serde::Serialize;
use telecho_perception::dicom::{write_dicom_series, SeriesInfo};
use telecho_sim::gazebo::{export_gazebo as export_gazebo_files, GazeboExport};
use telecho_sim::{simulate_cbct, CbctParams, Phantom, SimWorld, UrdfSource, WorldConfig};

use crate::cli_error::CliError;
use crate::CliResult;

#[derive(Debug, Subcommand)]
pub(crate) enum SimCommand {
    /// Write the patient of a seed: DIR/ct.nii.gz (CBCT, RAS, HU), the same CBCT as a DICOM CT
    /// series in DIR/dicom/ (one file per slice) and DIR/landmarks.json (ct frame, m).
    Phantom(PhantomArgs),
    /// Write the arm + probe URDF with <gazebo>/<ros2_control> tags, an SDF world with the table and
    /// the patient of a seed, the controller configuration and a ROS 2 launch file into DIR.
    ExportGazebo(ExportGazeboArgs),
}

/// Arms bundled with telecho.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Arm {
    /// UR5e-class 6-DoF arm (`urdf/ur5e_probe.urdf`).
    Ur5e,
    /// Franka-Panda-class 7-DoF arm (`urdf/panda_probe.urdf`).
    Panda,
}

impl Arm {
    /// (robot name, URDF text).
    pub(crate) fn bundled(self) -> (&'static str, &'static str) {
        match self {
            Arm::Ur5e => crate::demo::BUNDLED_ARMS[0],
            Arm::Panda => crate::demo::BUNDLED_ARMS[1],
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct ExportGazeboArgs {
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Which bundled arm.
    #[arg(long, value_enum, default_value_t = Arm::Ur5e)]
    arm: Arm,
    /// Simulation seed: the patient (anatomy and pose on the table) of `telecho scan --sim-seed N`.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Debug, Args)]
pub(crate) struct PhantomArgs {
    /// Patient seed: the same seed gives byte-identical files.
    #[arg(long)]
    seed: u64,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// CBCT voxel edge in millimetres (0.5–1.0 is CBCT-like).
    #[arg(long, default_value_t = 0.8)]
    voxel_mm: f64,
}

#[derive(Debug, Serialize)]
struct LandmarkOut<'a> {
    name: &'a str,
    xyz: [f64; 3],
}

#[derive(Debug, Serialize)]
struct LandmarksFile<'a> {
    landmarks: Vec<LandmarkOut<'a>>,
}

pub(crate) fn run(cmd: &SimCommand) -> CliResult {
    match cmd {
        SimCommand::Phantom(args) => phantom(args),
        SimCommand::ExportGazebo(args) => export_gazebo(args),
    }
}

fn phantom(args: &PhantomArgs) -> CliResult {
    if !args.voxel_mm.is_finite() {
        return Err(CliError::input(anyhow!(
            "--voxel-mm must be a finite number"
        )));
    }
    let params = CbctParams {
        voxel_m: args.voxel_mm / 1000.0,
        ..CbctParams::default()
    };
    let phantom = Phantom::generate(args.seed);
    // Settings are checked before anything is written.
    let volume = simulate_cbct(&phantom, &params, args.seed).map_err(CliError::input)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))
        .map_err(CliError::input)?;
    let ct = args.out.join("ct.nii.gz");
    telecho_perception::io::write_nifti(&ct, &volume).map_err(CliError::failed)?;
    let dicom_dir = args.out.join("dicom");
    let info = SeriesInfo {
        patient_name: format!("TELECHO^PHANTOM {}", args.seed),
        patient_id: format!("telecho-phantom-{}", args.seed),
        study_description: "telecho simulated patient".to_owned(),
        series_description: format!("simulated CBCT {} mm", args.voxel_mm),
        uid_seed: args.seed,
        ..SeriesInfo::default()
    };
    let slices = write_dicom_series(&dicom_dir, &volume, &info).map_err(CliError::failed)?;
    let landmarks = phantom.landmarks();
    let file = LandmarksFile {
        landmarks: landmarks
            .iter()
            .map(|l| LandmarkOut {
                name: &l.name,
                xyz: l.xyz,
            })
            .collect(),
    };
    let json = serde_json::to_string_pretty(&file).map_err(CliError::failed)?;
    let path = args.out.join("landmarks.json");
    std::fs::write(&path, json + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
        .map_err(CliError::failed)?;
    let d = volume.dims();
    eprintln!(
        "wrote {} ({}×{}×{} voxels of {} mm), {} ({} DICOM slices) and {} ({} landmarks)",
        ct.display(),
        d[0],
        d[1],
        d[2],
        args.voxel_mm,
        dicom_dir.display(),
        slices.len(),
        path.display(),
        landmarks.len()
    );
    Ok(())
}

/// The simulated world of a seed for an arm: patient anatomy and placement as `telecho scan
/// --sim-seed N` uses them.
pub(crate) fn world_config(arm: Arm, seed: u64) -> WorldConfig {
    let (_, xml) = arm.bundled();
    WorldConfig {
        seed,
        phantom_seed: seed,
        ..WorldConfig::with_urdf(UrdfSource::Xml(xml.to_owned()))
    }
}

fn export_gazebo(args: &ExportGazeboArgs) -> CliResult {
    let (name, xml) = args.arm.bundled();
    let world = SimWorld::new(&world_config(args.arm, args.seed)).map_err(CliError::failed)?;
    let truth = world.ground_truth();
    let spec = GazeboExport {
        initial_q: Some(world.arm().true_q().to_vec()),
        ..GazeboExport::new(name, xml, world.phantom(), truth.t_base_ct)
    };
    let files = export_gazebo_files(&args.out, &spec).map_err(CliError::failed)?;
    eprintln!(
        "wrote {}, {}, {}, {} and {}; launch steps in {}",
        files.urdf.display(),
        files.world.display(),
        files.patient_mesh.display(),
        files.controllers.display(),
        files.launch.display(),
        files.readme.display()
    );
    Ok(())
}
