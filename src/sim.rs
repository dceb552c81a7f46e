//! `telecho sim`: the simulated patient.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use serde::Serialize;
use telecho_core::Transform;
use telecho_perception::dicom::{write_dicom_series, SeriesInfo};
use telecho_sim::gazebo::{export_gazebo as export_gazebo_files, GazeboExport};
use telecho_sim::{
    simulate_cbct, CbctParams, Phantom, SimWorld, UltrasoundSim, UrdfSource, UsParams, WorldConfig,
};

use crate::cli_error::CliError;
use crate::kin::parse_values;
use crate::CliResult;

#[derive(Debug, Subcommand)]
pub(crate) enum SimCommand {
    /// Write the patient of a seed: DIR/ct.nii.gz (CBCT, RAS, HU), the same CBCT as a DICOM CT
    /// series in DIR/dicom/ (one file per slice) and DIR/landmarks.json (ct frame, m).
    Phantom(PhantomArgs),
    /// Write the arm + probe URDF with <gazebo>/<ros2_control> tags, an SDF world with the table and
    /// the patient of a seed, the controller configuration and a ROS 2 launch file into DIR.
    ExportGazebo(ExportGazeboArgs),
    /// Simulate one ultrasound frame of the patient of a seed with the probe at a pose in the ct
    /// frame; writes a grayscale PNG and prints its ground truth as one JSON object.
    Us(UsArgs),
}

#[derive(Debug, Args)]
pub(crate) struct UsArgs {
    /// Patient seed (anatomy as `sim phantom --seed N`; also seeds the speckle).
    #[arg(long)]
    seed: u64,
    /// Probe tip (centre of the probe face) in the ct frame, metres: x,y,z.
    #[arg(long, allow_hyphen_values = true)]
    probe_xyz: String,
    /// Probe orientation in the ct frame, roll,pitch,yaw in radians (R = Rz·Ry·Rx); the probe's
    /// +z is the beam direction, +x the transducer array.
    #[arg(long, allow_hyphen_values = true)]
    probe_rpy: String,
    /// Output PNG (8-bit grayscale; rows = depth).
    #[arg(long)]
    out: PathBuf,
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
            Arm::Ur5e => crate::demo::kinematics::BUNDLED_ARMS[0],
            Arm::Panda => crate::demo::kinematics::BUNDLED_ARMS[1],
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
        SimCommand::Us(args) => ultrasound(args),
    }
}

fn phantom(args: &PhantomArgs) -> CliResult {
    let ct = PatientCt::simulate(args.seed, args.voxel_mm)?;
    let files = ct.write(&args.out)?;
    let d = ct.volume.dims();
    eprintln!(
        "wrote {} ({}×{}×{} voxels of {} mm), {} ({} DICOM slices) and {} ({} landmarks)",
        files.ct.display(),
        d[0],
        d[1],
        d[2],
        args.voxel_mm,
        files.dicom_dir.display(),
        files.dicom_slices,
        files.landmarks.display(),
        files.landmark_count
    );
    Ok(())
}

/// The patient of a seed with its simulated CBCT, ready to be written (`telecho sim phantom`,
/// `telecho scan`).
#[derive(Debug)]
pub(crate) struct PatientCt {
    seed: u64,
    voxel_mm: f64,
    phantom: Phantom,
    volume: telecho_perception::volume::Volume,
}

/// Where [`PatientCt::write`] put the files.
#[derive(Debug)]
pub(crate) struct PatientFiles {
    /// `ct.nii.gz`.
    pub(crate) ct: PathBuf,
    /// `dicom/`.
    pub(crate) dicom_dir: PathBuf,
    /// Number of DICOM slice files.
    pub(crate) dicom_slices: usize,
    /// `landmarks.json`.
    pub(crate) landmarks: PathBuf,
    /// Number of landmarks.
    pub(crate) landmark_count: usize,
}

impl PatientCt {
    /// Generates the phantom of `seed` and its CBCT with `voxel_mm` voxels. Bad settings are
    /// refused (exit code 2) before anything is written.
    pub(crate) fn simulate(seed: u64, voxel_mm: f64) -> Result<Self, CliError> {
        if !voxel_mm.is_finite() {
            return Err(CliError::input(anyhow!(
                "--voxel-mm must be a finite number"
            )));
        }
        let params = CbctParams {
            voxel_m: voxel_mm / 1000.0,
            ..CbctParams::default()
        };
        let phantom = Phantom::generate(seed);
        let volume = simulate_cbct(&phantom, &params, seed).map_err(CliError::input)?;
        Ok(Self {
            seed,
            voxel_mm,
            phantom,
            volume,
        })
    }

    /// Writes `out/ct.nii.gz`, the DICOM series `out/dicom/` and `out/landmarks.json` (creating
    /// `out`); the same seed and voxel size give byte-identical files.
    /// The simulated CBCT.
    pub(crate) fn volume(&self) -> &telecho_perception::volume::Volume {
        &self.volume
    }

    pub(crate) fn write(&self, out: &std::path::Path) -> Result<PatientFiles, CliError> {
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create {}", out.display()))
            .map_err(CliError::input)?;
        let ct = out.join("ct.nii.gz");
        telecho_perception::io::write_nifti(&ct, &self.volume).map_err(CliError::failed)?;
        let dicom_dir = out.join("dicom");
        let info = SeriesInfo {
            patient_name: format!("TELECHO^PHANTOM {}", self.seed),
            patient_id: format!("telecho-phantom-{}", self.seed),
            study_description: "telecho simulated patient".to_owned(),
            series_description: format!("simulated CBCT {} mm", self.voxel_mm),
            uid_seed: self.seed,
            ..SeriesInfo::default()
        };
        let slices =
            write_dicom_series(&dicom_dir, &self.volume, &info).map_err(CliError::failed)?;
        let landmarks = self.phantom.landmarks();
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
        let path = out.join("landmarks.json");
        std::fs::write(&path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
            .map_err(CliError::failed)?;
        Ok(PatientFiles {
            ct,
            dicom_dir,
            dicom_slices: slices.len(),
            landmarks: path,
            landmark_count: landmarks.len(),
        })
    }
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

#[derive(Debug, Serialize)]
struct LandmarkPixelOut<'a> {
    name: &'a str,
    row: f64,
    col: f64,
    distance_to_plane_m: f64,
    shadowed: bool,
}

#[derive(Debug, Serialize)]
struct UsFrameOut<'a> {
    out: String,
    width: usize,
    height: usize,
    lateral_spacing_m: f64,
    axial_spacing_m: f64,
    contact: bool,
    contact_fraction: f64,
    mean_indentation_m: f64,
    bone_pixels: usize,
    landmarks: Vec<LandmarkPixelOut<'a>>,
}

fn ultrasound(args: &UsArgs) -> CliResult {
    let xyz = parse_values("--probe-xyz", &args.probe_xyz, Some(3))?;
    let rpy = parse_values("--probe-rpy", &args.probe_rpy, Some(3))?;
    let t_ct_probe = Transform::from_xyz_rpy([xyz[0], xyz[1], xyz[2]], [rpy[0], rpy[1], rpy[2]])
        .map_err(CliError::input)?;
    let phantom = Phantom::generate(args.seed);
    let mut sim =
        UltrasoundSim::new(phantom, UsParams::default(), args.seed).map_err(CliError::input)?;
    let frame = sim.render_new(&t_ct_probe).map_err(CliError::input)?;
    write_png(&args.out, &frame).map_err(CliError::failed)?;
    let summary = UsFrameOut {
        out: args.out.display().to_string(),
        width: frame.width,
        height: frame.height,
        lateral_spacing_m: frame.lateral_spacing_m,
        axial_spacing_m: frame.axial_spacing_m,
        contact: frame.contact,
        contact_fraction: frame.contact_fraction,
        mean_indentation_m: frame.mean_indentation_m,
        bone_pixels: frame.bone_mask.iter().filter(|&&m| m != 0).count(),
        landmarks: frame
            .landmarks
            .iter()
            .map(|l| LandmarkPixelOut {
                name: sim.landmark_name(l.index).unwrap_or("?"),
                row: l.row,
                col: l.col,
                distance_to_plane_m: l.distance_to_plane_m,
                shadowed: l.shadowed,
            })
            .collect(),
    };
    println!(
        "{}",
        serde_json::to_string(&summary).map_err(CliError::failed)?
    );
    Ok(())
}

/// 8-bit grayscale PNG, no timestamps or other ancillary chunks, so equal frames give equal files.
fn write_png(path: &std::path::Path, frame: &telecho_sim::UsFrame) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut enc = png::Encoder::new(
        std::io::BufWriter::new(file),
        frame.width as u32,
        frame.height as u32,
    );
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc
        .write_header()
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .write_image_data(&frame.pixels)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .finish()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
