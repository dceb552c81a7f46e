//! Shared closed-loop harness: the controller against `telecho-sim`'s `SimWorld`.
//!
//! The harness (not the controller) may use the simulator's truth to set up a scene and to score
//! it; the controller only ever sees `SimWorld::observe` through its `ControlInput`.

#![allow(dead_code, unreachable_pub)]

use nalgebra::{Matrix3, Vector3};
use telecho_control::{
    CommandInterface, ControlInput, ControlOutput, ControllerConfig, FtSample, IkConfig, IkSolver,
    ProbeController, ProbeTarget, SafetyConfig,
};
use telecho_core::Transform;
use telecho_sim::{
    Breathing, ContactParams, FtSensorParams, InitialPose, JointCommand, PatientPlacement,
    SimWorld, UrdfSource, WorldConfig,
};

pub const DT: f64 = 1e-3;

pub fn urdf_text(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../urdf/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Workspace box around the (nominal) patient, base frame.
pub fn patient_box() -> SafetyConfig {
    SafetyConfig {
        workspace_min_m: [0.20, -0.35, -0.25],
        workspace_max_m: [0.75, 0.35, 0.30],
        ..SafetyConfig::default()
    }
}

pub fn controller_config() -> ControllerConfig {
    ControllerConfig {
        safety: patient_box(),
        ..ControllerConfig::default()
    }
}

/// Probe pointing down (tip +z = base −z), array along base +y (the nominal cranial axis).
pub fn probe_down() -> Matrix3<f64> {
    Matrix3::from_columns(&[Vector3::y(), Vector3::x(), -Vector3::z()])
}

/// The skin point over L3 of the nominal placement, base frame (harness set-up; uses the phantom).
pub fn nominal_skin_over_l3(world: &SimWorld) -> Vector3<f64> {
    let ph = world.phantom();
    let n = world.nominal_t_base_ct();
    n.transform_point(&Vector3::new(0.0, ph.skin_y(0.0, 0.0), 0.0))
}

pub struct Scene {
    pub urdf: &'static str,
    pub stiffness_n_per_mm: f64,
    pub breathing: Breathing,
    pub seed: u64,
    pub phantom_seed: u64,
    pub height_m: f64,
    pub exact_placement: bool,
}

impl Default for Scene {
    fn default() -> Self {
        Self {
            urdf: "ur5e_probe.urdf",
            stiffness_n_per_mm: 2.0,
            breathing: Breathing::new(0.005, 0.3).unwrap(),
            seed: 1,
            phantom_seed: 1,
            height_m: 0.012,
            exact_placement: true,
        }
    }
}

pub fn world_config(scene: &Scene) -> WorldConfig {
    let mut c = WorldConfig::with_urdf(UrdfSource::bundled(scene.urdf));
    c.seed = scene.seed;
    c.phantom_seed = scene.phantom_seed;
    c.breathing = Some(scene.breathing);
    c.contact = ContactParams {
        stiffness_n_per_mm: scene.stiffness_n_per_mm,
        ..ContactParams::default()
    };
    c.sensor = FtSensorParams::default();
    if scene.exact_placement {
        c.placement = PatientPlacement::exact(PatientPlacement::nominal());
    }
    c
}

/// A world whose probe starts `height_m` above the nominal skin over L3, pointing down.
pub fn world_above_skin(scene: &Scene) -> SimWorld {
    let mut c = world_config(scene);
    let probe = SimWorld::new(&c).unwrap();
    let skin = nominal_skin_over_l3(&probe);
    let target = Transform::new(probe_down(), skin + Vector3::new(0.0, 0.0, scene.height_m));
    let chain = probe.chain();
    let mut ik = IkSolver::new(chain, IkConfig::default());
    let mut q = vec![0.0; chain.dof()];
    ik.solve(chain, &target, probe.arm().true_q(), &mut q)
        .unwrap();
    c.initial = InitialPose::Joints(q);
    SimWorld::new(&c).unwrap()
}

pub fn ft_sample(world: &SimWorld) -> FtSample {
    telecho_sim::plant::ft_sample(&world.observe().ft)
}

/// Controller + world, stepped together at 1 kHz.
pub struct Rig {
    pub world: SimWorld,
    pub ctl: ProbeController,
    pub out: ControlOutput,
    pub estop: bool,
    pub reset: bool,
    q: Vec<f64>,
    qd: Vec<f64>,
}

impl Rig {
    pub fn new(world: SimWorld, urdf: &str, config: ControllerConfig) -> Self {
        let ctl = ProbeController::from_urdf_str(&urdf_text(urdf), config).unwrap();
        let out = ctl.new_output();
        let n = ctl.dof();
        Self {
            world,
            ctl,
            out,
            estop: false,
            reset: false,
            q: vec![0.0; n],
            qd: vec![0.0; n],
        }
    }

    pub fn scene(scene: &Scene, config: ControllerConfig) -> Self {
        Self::new(world_above_skin(scene), scene.urdf, config)
    }

    /// One cycle: observe, control, command, advance the world.
    pub fn step(&mut self, target: Option<ProbeTarget>) {
        let obs = self.world.observe();
        self.q.copy_from_slice(obs.q_rad);
        self.qd.copy_from_slice(obs.qd_rad_s);
        let input = ControlInput {
            time_s: obs.time_s,
            q_rad: &self.q,
            qd_rad_s: &self.qd,
            ft: ft_sample(&self.world),
            target,
            estop: self.estop,
            reset: self.reset,
        };
        self.ctl.step(&input, DT, &mut self.out);
        if self.out.send {
            let cmd = match self.out.interface {
                CommandInterface::Position => JointCommand::Position(&self.out.q_cmd_rad),
                CommandInterface::Velocity => JointCommand::Velocity(&self.out.qd_cmd_rad_s),
            };
            let _ = self.world.command(cmd);
        }
        self.world.step();
    }

    pub fn time(&self) -> f64 {
        self.world.time_s()
    }

    /// True contact force along the (true) probe axis, N, positive pressing.
    pub fn true_axial_force(&self) -> f64 {
        let gt = self.world.ground_truth();
        -gt.contact_force_base_n
            .dot(&gt.t_base_probe.rotation.column(2).into_owned())
    }

    pub fn true_force_norm(&self) -> f64 {
        self.world.ground_truth().contact_force_base_n.norm()
    }

    pub fn true_tip(&self) -> Vector3<f64> {
        self.world.ground_truth().t_base_probe.translation
    }
}

/// Running statistics of a force error.
#[derive(Default, Debug, Clone, Copy)]
pub struct ForceStats {
    pub n: usize,
    pub sum_sq: f64,
    pub max_over: f64,
    pub max_under: f64,
    pub max_force: f64,
}

impl ForceStats {
    pub fn add(&mut self, force: f64, setpoint: f64) {
        let e = force - setpoint;
        self.n += 1;
        self.sum_sq += e * e;
        self.max_over = self.max_over.max(e);
        self.max_under = self.max_under.max(-e);
        self.max_force = self.max_force.max(force);
    }

    pub fn rms(&self) -> f64 {
        (self.sum_sq / self.n.max(1) as f64).sqrt()
    }
}

/// The operator's start pose for the scan: the skin over L5 of the patient as placed (palpated),
/// plus a seeded 5–10 mm palpation and ±5° alignment error.
pub fn start_pose(world: &SimWorld, seed: u64) -> Transform {
    telecho_sim::plant::operator_start_pose(world, seed)
}
