//! The simulated scene: the arm from its URDF, the phantom patient on the table, the probe–skin
//! contact and the F/T sensor, stepped together at a fixed 1 kHz.
//!
//! # One step (1 ms)
//!
//! 1. The [`ServoArm`] advances 1 ms (commands released at their exact latency, exact servo
//!    integration, new encoder sample).
//! 2. Forward kinematics and the Jacobian at the true joint state give the probe pose and twist.
//! 3. Each probe-face point is mapped into the patient's body frame, which breathing moves
//!    posteriorly ([`Breathing`]); [`skin_point`] gives its indentation and skin normal, and the
//!    [`ContactModel`] the force.
//! 4. The contact forces and the payload weight are summed into the wrench at the `ft_sensor`
//!    origin, which the [`FtSensor`] samples (bias, noise, saturation, faults).
//!
//! The arm is kinematic (its servos are far stiffer than tissue, see [`crate::robot`]), so the
//! contact force is an algebraic function of the state and no sub-stepping is needed: there is
//! no stiff differential equation in the loop. A step evaluates one FK+Jacobian, a few dozen
//! `skin_y` calls and ten Gaussian draws, and does not allocate.
//!
//! # Patient placement
//!
//! The patient lies prone on a table beside the robot. The nominal pose
//! ([`PatientPlacement::nominal_t_base_ct`]) maps `ct` into the robot base so that
//!
//! - `ct` −y (posterior, out of the back) is base +z (up): a probe pointing down (−z of the base)
//!   looks anterior;
//! - `ct` +z (superior) is base +y and `ct` +x (patient's right) is base +x;
//! - the `ct` origin (centre of the L3 vertebral body) is at [`NOMINAL_L3_IN_BASE_M`], which puts
//!   the skin over L3 about 0.45 m in front of the base and 20–60 mm below it, where both bundled
//!   arms (UR5e, Panda) reach the lumbar region with the probe pointing down (tested with the
//!   IK of `telecho-control`).
//!
//! The true pose `t_base_ct` is the nominal one perturbed by a seeded draw
//! ([`PatientPlacement::sample`]): a translation uniform in ±50 mm per base axis, a rotation
//! uniform in ±20° about the vertical (base z) axis through the `ct` origin and tilts uniform in
//! ±2° about the base x and y axes (table and patient not quite level). Only the evaluator knows
//! it: [`SimWorld::ground_truth`] is for tests and scoring, **a controller must not use it** — it
//! sees [`SimWorld::observe`] (time, measured joint state, F/T reading) and must find the patient
//! by registration.
//!
//! # Frames and breathing
//!
//! Breathing moves the patient rigidly along `ct` −y by `b(t)`; the patient's frame at time `t`
//! is `t_base_ct(t) = t_base_ct · Translation(0, −b(t), 0)`. [`SimWorld::t_ct_probe`] is the probe
//! in that moving frame (what an ultrasound simulator needs to image the phantom).

use std::path::PathBuf;

use nalgebra::{Matrix3, Matrix6xX, Vector3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use telecho_control::{Chain, IkConfig, IkSolver};
use telecho_core::Transform;

use crate::contact::{
    is_positive, skin_point, Breathing, ContactModel, ContactParams, ProbeFace, MAX_FACE_POINTS,
};
use crate::error::{check_in_range, ErrorKind};
use crate::ft_sensor::{FtFault, FtReading, FtSensor, FtSensorParams, Payload, Wrench};
use crate::robot::{JointCommand, ServoArm, ServoParams};
use crate::{Error, Phantom, PhantomParams};

/// Physics rate of the world, Hz.
pub const PHYSICS_RATE_HZ: f64 = 1000.0;
/// Physics step, s.
pub const PHYSICS_DT_S: f64 = 1.0 / PHYSICS_RATE_HZ;
/// Nominal position of the `ct` origin (L3 body centre) in the robot base frame, m.
pub const NOMINAL_L3_IN_BASE_M: [f64; 3] = [0.45, 0.0, -0.15];

/// Independent seeds for `N` sub-streams of one seed (SplitMix64, Steele et al. 2014).
pub(crate) fn derive_seeds<const N: usize>(seed: u64) -> [u64; N] {
    let mut state = seed;
    std::array::from_fn(|_| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// Where the robot description comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum UrdfSource {
    /// A URDF file.
    Path(PathBuf),
    /// URDF XML text.
    Xml(String),
}

impl UrdfSource {
    /// One of the URDFs bundled in the repository's `urdf/` folder, e.g. `"ur5e_probe.urdf"`.
    pub fn bundled(file_name: &str) -> Self {
        let mut p = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        p.pop();
        p.push("urdf");
        p.push(file_name);
        Self::Path(p)
    }

    fn read(&self) -> Result<String, Error> {
        match self {
            UrdfSource::Xml(s) => Ok(s.clone()),
            UrdfSource::Path(p) => std::fs::read_to_string(p)
                .map_err(|e| ErrorKind::Urdf(format!("{}: {e}", p.display())).into()),
        }
    }
}

/// The nominal patient pose and the range of its seeded perturbation. See the module
/// documentation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PatientPlacement {
    /// Nominal `t_base_ct`.
    pub nominal_t_base_ct: Transform,
    /// Translation drawn uniformly within ± this per base axis, m (default 0.05; valid 0–0.2).
    pub max_translation_m: f64,
    /// Rotation about the vertical through the `ct` origin, uniform within ± this, degrees
    /// (default 20; valid 0–180).
    pub max_yaw_deg: f64,
    /// Tilts about the base x and y axes, uniform within ± this, degrees (default 2; valid 0–20).
    pub max_tilt_deg: f64,
}

impl Default for PatientPlacement {
    fn default() -> Self {
        Self {
            nominal_t_base_ct: Self::nominal(),
            max_translation_m: 0.05,
            max_yaw_deg: 20.0,
            max_tilt_deg: 2.0,
        }
    }
}

impl PatientPlacement {
    /// The nominal `t_base_ct`: `ct` x → base x, `ct` y → base −z, `ct` z → base y, origin at
    /// [`NOMINAL_L3_IN_BASE_M`].
    pub fn nominal() -> Transform {
        let r = Matrix3::new(1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0);
        Transform::new(r, Vector3::from(NOMINAL_L3_IN_BASE_M))
    }

    /// A placement without perturbation (the true pose is the nominal one).
    pub fn exact(nominal_t_base_ct: Transform) -> Self {
        Self {
            nominal_t_base_ct,
            max_translation_m: 0.0,
            max_yaw_deg: 0.0,
            max_tilt_deg: 0.0,
        }
    }

    /// Checks the ranges and that the nominal pose is finite.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.nominal_t_base_ct.is_finite() {
            return Err(ErrorKind::NotFinite {
                what: "nominal t_base_ct",
                value: f64::NAN,
            }
            .into());
        }
        check_in_range(
            "placement max_translation_m",
            self.max_translation_m,
            0.0,
            0.2,
        )?;
        check_in_range("placement max_yaw_deg", self.max_yaw_deg, 0.0, 180.0)?;
        check_in_range("placement max_tilt_deg", self.max_tilt_deg, 0.0, 20.0)?;
        Ok(())
    }

    /// The perturbed `t_base_ct` of `seed`: `R = Rz(ψ)·Ry(β)·Rx(α)·R_nominal`,
    /// `p = p_nominal + Δp` (rotation about the `ct` origin, axes of the base).
    pub fn sample(&self, seed: u64) -> Transform {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut uniform = |m: f64| {
            if m > 0.0 {
                rng.random_range(-m..m)
            } else {
                0.0
            }
        };
        let dp = Vector3::new(
            uniform(self.max_translation_m),
            uniform(self.max_translation_m),
            uniform(self.max_translation_m),
        );
        let yaw = uniform(self.max_yaw_deg).to_radians();
        let tilt_x = uniform(self.max_tilt_deg).to_radians();
        let tilt_y = uniform(self.max_tilt_deg).to_radians();
        let r = telecho_core::rotation_from_rpy(tilt_x, tilt_y, yaw);
        let n = &self.nominal_t_base_ct;
        Transform::new(r * n.rotation, n.translation + dp)
    }
}

/// How the arm starts.
#[derive(Clone, Debug, PartialEq)]
pub enum InitialPose {
    /// These joint values (rad; within the limits).
    Joints(Vec<f64>),
    /// Probe pointing straight down (array along the nominal spine), `height_m` above the skin
    /// over L3 of the **nominal** placement (the true pose stays unknown to the controller);
    /// solved by IK. The default, with 0.1 m (clear of a +50 mm placement error).
    AboveNominalL3 {
        /// Height of the probe tip above the nominal skin point, m (valid 0–0.5).
        height_m: f64,
    },
}

/// Everything that defines a world. SI units.
#[derive(Clone, Debug, PartialEq)]
pub struct WorldConfig {
    /// The robot description.
    pub urdf: UrdfSource,
    /// Base link of the arm's chain (default `base_link`).
    pub base_link: String,
    /// Probe tip link (default `probe_tip`).
    pub tip_link: String,
    /// F/T sensor link (default `ft_sensor`).
    pub sensor_link: String,
    /// Master seed: placement, breathing (unless given), servo and sensor noise derive from it.
    pub seed: u64,
    /// Seed of the phantom (the patient's anatomy; also what the CBCT is generated from).
    pub phantom_seed: u64,
    /// Phantom generator ranges.
    pub phantom: PhantomParams,
    /// Nominal patient pose and perturbation ranges.
    pub placement: PatientPlacement,
    /// Breathing; `None` draws it from [`Breathing::seeded`] with a seed derived from `seed`.
    pub breathing: Option<Breathing>,
    /// Joint servo settings.
    pub servo: ServoParams,
    /// Tissue contact settings.
    pub contact: ContactParams,
    /// Probe footprint contact points (default: a point).
    pub face: ProbeFace,
    /// F/T sensor settings.
    pub sensor: FtSensorParams,
    /// Initial arm pose.
    pub initial: InitialPose,
}

impl WorldConfig {
    /// The bundled UR5e with probe (`urdf/ur5e_probe.urdf`) and default settings.
    pub fn ur5e() -> Self {
        Self::with_urdf(UrdfSource::bundled("ur5e_probe.urdf"))
    }

    /// The bundled Franka Panda with probe (`urdf/panda_probe.urdf`) and default settings.
    pub fn panda() -> Self {
        Self::with_urdf(UrdfSource::bundled("panda_probe.urdf"))
    }

    /// Default settings for an arm described by `urdf` with the standard link names.
    pub fn with_urdf(urdf: UrdfSource) -> Self {
        Self {
            urdf,
            base_link: telecho_core::frames::BASE.to_owned(),
            tip_link: telecho_core::frames::PROBE_TIP.to_owned(),
            sensor_link: telecho_core::frames::FT_SENSOR.to_owned(),
            seed: 0,
            phantom_seed: 0,
            phantom: PhantomParams::default(),
            placement: PatientPlacement::default(),
            breathing: None,
            servo: ServoParams::default(),
            contact: ContactParams::default(),
            face: ProbeFace::point(),
            sensor: FtSensorParams::default(),
            initial: InitialPose::AboveNominalL3 { height_m: 0.1 },
        }
    }
}

/// What a controller may see after a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation<'a> {
    /// Simulation time, s.
    pub time_s: f64,
    /// Measured joint positions (encoder noise included), rad.
    pub q_rad: &'a [f64],
    /// Measured joint velocities, rad/s.
    pub qd_rad_s: &'a [f64],
    /// The latest F/T sample.
    pub ft: FtReading,
}

/// The simulator's truth, for tests and evaluation only — **never for a controller**.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroundTruth<'a> {
    /// Simulation time, s.
    pub time_s: f64,
    /// Patient pose at rest (end of expiration, `b = 0`): `t_base_ct`.
    pub t_base_ct: Transform,
    /// Patient pose now, breathing included: `t_base_ct · Translation(0, −b, 0)`.
    pub t_base_ct_now: Transform,
    /// Probe tip pose in the base frame.
    pub t_base_probe: Transform,
    /// Probe tip pose in the (moving) patient frame.
    pub t_ct_probe: Transform,
    /// True joint positions, rad.
    pub q_rad: &'a [f64],
    /// True joint velocities, rad/s.
    pub qd_rad_s: &'a [f64],
    /// Posterior breathing displacement `b(t)`, m.
    pub breathing_displacement_m: f64,
    /// True when any face point indents the skin.
    pub in_contact: bool,
    /// Largest indentation over the face points, m (0 without contact).
    pub indentation_m: f64,
    /// Indentation rate at that point, m/s (positive pressing in).
    pub indentation_rate_m_s: f64,
    /// Sum of the normal-force magnitudes, N.
    pub normal_force_n: f64,
    /// Total contact force on the probe, base frame, N.
    pub contact_force_base_n: Vector3<f64>,
    /// True load on the sensor (contact + payload weight), sensor frame, before bias, noise and
    /// saturation.
    pub sensor_load: Wrench,
    /// The sensor's bias.
    pub sensor_bias: Wrench,
}

#[derive(Clone, Copy, Debug, Default)]
struct ContactState {
    in_contact: bool,
    indentation_m: f64,
    rate_m_s: f64,
    normal_force_n: f64,
    force_base: Vector3<f64>,
    load: Wrench,
    t_base_probe: Transform,
}

/// The simulated scene. See the module documentation.
#[derive(Clone, Debug)]
pub struct SimWorld {
    arm: ServoArm,
    t_tip_sensor: Transform,
    phantom: Phantom,
    contact: ContactModel,
    face_points: [Vector3<f64>; MAX_FACE_POINTS],
    n_face: usize,
    breathing: Breathing,
    sensor: FtSensor,
    payload: Payload,
    nominal_t_base_ct: Transform,
    t_base_ct: Transform,
    t_ct_base: Transform,
    steps: u64,
    time_s: f64,
    jac: Matrix6xX<f64>,
    state: ContactState,
    reading: FtReading,
}

impl SimWorld {
    /// Builds the world: reads the URDF, generates the phantom, draws the placement, breathing,
    /// bias and noise streams from the seeds, places the arm and takes the first F/T sample.
    pub fn new(config: &WorldConfig) -> Result<Self, Error> {
        config.placement.validate()?;
        config.face.validate()?;
        let xml = config.urdf.read()?;
        let robot = urdf_rs::read_from_string(&xml).map_err(|e| ErrorKind::Urdf(e.to_string()))?;
        let chain = Chain::from_robot(&robot, Some(&config.base_link), &config.tip_link)
            .map_err(ErrorKind::from)?;
        let tip_from_sensor =
            Chain::from_robot(&robot, Some(&config.sensor_link), &config.tip_link)
                .map_err(ErrorKind::from)?;
        if tip_from_sensor.dof() != 0 {
            return Err(ErrorKind::Urdf(format!(
                "the chain from `{}` to `{}` must be rigid, it has {} movable joints",
                config.sensor_link,
                config.tip_link,
                tip_from_sensor.dof()
            ))
            .into());
        }
        let t_sensor_tip = tip_from_sensor.fk_unchecked(&[]);
        let payload = Payload::from_robot(&robot, &config.sensor_link).map_err(ErrorKind::from)?;
        let phantom = Phantom::with_params(config.phantom_seed, &config.phantom)?;
        let contact = ContactModel::new(config.contact)?;

        let seeds = derive_seeds::<4>(config.seed);
        let t_base_ct = config.placement.sample(seeds[0]);
        let breathing = match config.breathing {
            Some(b) => Breathing::new(b.amplitude_m(), b.frequency_hz())?,
            None => Breathing::seeded(seeds[1]),
        };
        let nominal = config.placement.nominal_t_base_ct;
        let q0 = match &config.initial {
            InitialPose::Joints(q) => q.clone(),
            InitialPose::AboveNominalL3 { height_m } => {
                check_in_range("initial height_m", *height_m, 0.0, 0.5)?;
                let skin =
                    nominal.transform_point(&Vector3::new(0.0, phantom.skin_y(0.0, 0.0), 0.0));
                let target = Transform::new(
                    probe_down_rotation(&nominal),
                    skin + Vector3::new(0.0, 0.0, *height_m),
                );
                let mut ik = IkSolver::new(&chain, IkConfig::default());
                let mut q = vec![0.0; chain.dof()];
                ik.solve(&chain, &target, &chain.mid_configuration(), &mut q)
                    .map_err(ErrorKind::from)?;
                q
            }
        };
        let sensor = FtSensor::new(config.sensor, seeds[3])?;
        let dof = chain.dof();
        let arm = ServoArm::new(chain, config.servo, &q0, seeds[2])?;
        let mut face_points = [Vector3::zeros(); MAX_FACE_POINTS];
        let n_face = config.face.points(&mut face_points);
        let mut world = Self {
            arm,
            t_tip_sensor: t_sensor_tip.inverse(),
            phantom,
            contact,
            face_points,
            n_face,
            breathing,
            reading: sensor.last(),
            sensor,
            payload,
            nominal_t_base_ct: nominal,
            t_base_ct,
            t_ct_base: t_base_ct.inverse(),
            steps: 0,
            time_s: 0.0,
            jac: Matrix6xX::zeros(dof),
            state: ContactState::default(),
        };
        world.update();
        Ok(world)
    }

    /// Advances the world by one physics step ([`PHYSICS_DT_S`]). Does not allocate.
    pub fn step(&mut self) {
        self.arm.advance(PHYSICS_DT_S);
        self.steps += 1;
        self.time_s = self.steps as f64 * PHYSICS_DT_S;
        self.update();
    }

    /// Advances the world by `n` physics steps.
    pub fn steps(&mut self, n: usize) {
        for _ in 0..n {
            self.step();
        }
    }

    /// Hands a joint command to the arm's servo (see [`ServoArm::command`]).
    pub fn command(&mut self, cmd: JointCommand<'_>) -> Result<(), Error> {
        self.arm.command(cmd)
    }

    /// What a controller sees: time, measured joint state and the latest F/T sample.
    pub fn observe(&self) -> Observation<'_> {
        Observation {
            time_s: self.time_s,
            q_rad: self.arm.measured_q(),
            qd_rad_s: self.arm.measured_qd(),
            ft: self.reading,
        }
    }

    /// Simulation time, s.
    pub fn time_s(&self) -> f64 {
        self.time_s
    }

    /// The arm's kinematic chain (the controller's robot model may be built from the same URDF).
    pub fn chain(&self) -> &Chain {
        self.arm.chain()
    }

    /// The arm (servo state, measured and true joints).
    pub fn arm(&self) -> &ServoArm {
        &self.arm
    }

    /// The nominal `t_base_ct` (known to everyone: where the table is meant to be).
    pub fn nominal_t_base_ct(&self) -> Transform {
        self.nominal_t_base_ct
    }

    /// The patient phantom (ground truth anatomy; the ultrasound simulator images it).
    pub fn phantom(&self) -> &Phantom {
        &self.phantom
    }

    /// The tissue contact model.
    pub fn contact_model(&self) -> &ContactModel {
        &self.contact
    }

    /// The breathing motion.
    pub fn breathing(&self) -> &Breathing {
        &self.breathing
    }

    /// The load below the F/T sensor, from the URDF.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// Replaces the tissue contact settings from the next step on (a sudden stiffness change, for
    /// robustness tests). Invalid settings are refused and the old ones kept.
    pub fn set_contact_params(&mut self, params: ContactParams) -> Result<(), Error> {
        self.contact = ContactModel::new(params)?;
        Ok(())
    }

    /// Injects (`Some`) or clears (`None`) an F/T sensor fault from the next sample on.
    pub fn set_ft_fault(&mut self, fault: Option<FtFault>) {
        self.sensor.set_fault(fault);
    }

    /// The true probe pose in the patient's moving frame (breathing included), for the
    /// ultrasound simulator.
    pub fn t_ct_probe(&self) -> Transform {
        self.t_ct_base_now() * self.state.t_base_probe
    }

    /// The simulator's truth. **For tests and evaluation only: a controller must not use it.**
    pub fn ground_truth(&self) -> GroundTruth<'_> {
        let b = self.breathing.displacement_m(self.time_s);
        let t_base_ct_now = self.t_base_ct * breathing_offset(-b);
        GroundTruth {
            time_s: self.time_s,
            t_base_ct: self.t_base_ct,
            t_base_ct_now,
            t_base_probe: self.state.t_base_probe,
            t_ct_probe: self.t_ct_probe(),
            q_rad: self.arm.true_q(),
            qd_rad_s: self.arm.true_qd(),
            breathing_displacement_m: b,
            in_contact: self.state.in_contact,
            indentation_m: self.state.indentation_m,
            indentation_rate_m_s: self.state.rate_m_s,
            normal_force_n: self.state.normal_force_n,
            contact_force_base_n: self.state.force_base,
            sensor_load: self.state.load,
            sensor_bias: self.sensor.bias(),
        }
    }

    fn t_ct_base_now(&self) -> Transform {
        let b = self.breathing.displacement_m(self.time_s);
        breathing_offset(b) * self.t_ct_base
    }

    /// Recomputes probe pose, contact, load and the F/T sample for the current state.
    fn update(&mut self) {
        let q = self.arm.true_q();
        let qd = self.arm.true_qd();
        let t_base_tip = self.arm.chain().fk_jacobian_unchecked(q, &mut self.jac);
        let mut v_tip = Vector3::zeros();
        let mut w_tip = Vector3::zeros();
        for (i, &qdi) in qd.iter().enumerate() {
            let c = self.jac.column(i);
            v_tip += Vector3::new(c[0], c[1], c[2]) * qdi;
            w_tip += Vector3::new(c[3], c[4], c[5]) * qdi;
        }
        let t_base_sensor = t_base_tip * self.t_tip_sensor;
        let b = self.breathing.displacement_m(self.time_s);
        let bd = self.breathing.velocity_m_s(self.time_s);
        // Body coordinates of a point fixed in space: p_ct + b·ŷ (the body moved by −b·ŷ).
        let shift = Vector3::new(0.0, b, 0.0);
        let shift_rate = Vector3::new(0.0, bd, 0.0);
        let share = 1.0 / self.n_face as f64;
        let r_ct_base = self.t_ct_base.rotation;
        let r_base_ct = self.t_base_ct.rotation;

        let mut st = ContactState {
            t_base_probe: t_base_tip,
            ..ContactState::default()
        };
        let mut torque_sensor_base = Vector3::zeros();
        for r_tip in &self.face_points[..self.n_face] {
            let r_base = t_base_tip.rotation * r_tip;
            let p_base = t_base_tip.translation + r_base;
            let v_base = v_tip + w_tip.cross(&r_base);
            let p_body = self.t_ct_base.transform_point(&p_base) + shift;
            let sp = skin_point(&self.phantom, &p_body);
            if !is_positive(sp.depth_m) {
                continue;
            }
            let v_body = r_ct_base * v_base + shift_rate;
            let c = self
                .contact
                .contact_force(sp.depth_m, &sp.normal_out, &v_body);
            let f_base = r_base_ct * c.force * share;
            st.in_contact = true;
            if c.indentation_m >= st.indentation_m {
                st.indentation_m = c.indentation_m;
                st.rate_m_s = c.rate_m_s;
            }
            st.normal_force_n += c.normal_force_n * share;
            st.force_base += f_base;
            torque_sensor_base += (p_base - t_base_sensor.translation).cross(&f_base);
        }
        let r_sensor_base = t_base_sensor.rotation.transpose();
        let contact_load = Wrench {
            force_n: r_sensor_base * st.force_base,
            torque_nm: r_sensor_base * torque_sensor_base,
        };
        st.load = contact_load.plus(&self.payload.gravity_wrench(&t_base_sensor.rotation));
        self.state = st;
        self.reading = self.sensor.measure(self.time_s, &st.load);
    }
}

/// `Translation(0, y, 0)`.
fn breathing_offset(y: f64) -> Transform {
    Transform::new(Matrix3::identity(), Vector3::new(0.0, y, 0.0))
}

/// Probe pointing down (tip +z = base −z), array (tip +x) along the patient's superior axis.
fn probe_down_rotation(t_base_ct: &Transform) -> Matrix3<f64> {
    let z = -Vector3::z();
    let sup = t_base_ct.rotation * Vector3::z();
    let x = (sup - z * sup.dot(&z))
        .try_normalize(1e-9)
        .unwrap_or(Vector3::y());
    let y = z.cross(&x);
    Matrix3::from_columns(&[x, y, z])
}
