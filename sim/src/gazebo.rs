//! Export of the simulated scene for Gazebo (gz sim) with `gz_ros2_control`.
//!
//! [`export_gazebo`] writes a self-contained folder:
//!
//! ```text
//! DIR/
//!   urdf/<robot>.urdf            the arm + probe URDF with <ros2_control> and <gazebo> tags
//!   config/controllers.yaml      controller_manager: joint_state_broadcaster + position controller
//!   worlds/telecho_spine.sdf     SDF 1.9 world: physics at 1 kHz, ground, table, patient
//!   meshes/patient_skin.stl      the patient's back: a closed solid under the phantom's skin surface
//!   launch/telecho_gazebo.launch.py   ROS 2 launch: gz sim + robot_state_publisher + spawn + controllers
//!   README.md                    the launch steps
//! ```
//!
//! The robot base sits at the world origin (the world frame *is* `base_link`), so the patient
//! model's pose is `t_base_ct`. The table is a horizontal box under the lowest point of the
//! patient. Meshes are in metres, in the `ct` frame of the phantom.
//!
//! Tags follow the `gz_ros2_control` documentation (hardware plugin
//! `gz_ros2_control/GazeboSimSystem`, system plugin `gz_ros2_control-system`), the SDFormat 1.9
//! specification (`<sensor type="force_torque">` on a joint, with `<preserveFixedJoint>` so that
//! gz does not merge the fixed sensor joint away) and the gz-sim system plugin names
//! (`gz-sim-physics-system`, `gz-sim-forcetorque-system`, ...).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use nalgebra::Vector3;
use telecho_core::Transform;

use crate::error::ErrorKind;
use crate::ft_sensor::FtSensorParams;
use crate::phantom::Phantom;
use crate::Error;

/// Name of the exported world (and of its SDF file without extension).
pub const WORLD_NAME: &str = "telecho_spine";
/// Name of the forward position controller in `controllers.yaml`.
pub const POSITION_CONTROLLER: &str = "telecho_position_controller";
/// Gazebo topic of the F/T sensor (bridged to ROS 2 by the launch file).
pub const FT_TOPIC: &str = "/telecho/ft_sensor";

/// What to export.
#[derive(Clone, Debug)]
pub struct GazeboExport<'a> {
    /// Robot name, used for file names and the spawned model (e.g. `ur5e_probe`).
    pub robot_name: &'a str,
    /// The arm + probe URDF (as bundled in `urdf/`).
    pub urdf_xml: &'a str,
    /// The patient.
    pub phantom: &'a Phantom,
    /// Patient pose in the robot base frame (= the Gazebo world frame).
    pub t_base_ct: Transform,
    /// Initial joint positions (rad), one per movable joint in URDF order; `None`: all zero
    /// (clamped into the joint limits).
    pub initial_q: Option<Vec<f64>>,
    /// Grid step of the patient mesh, metres (default 5 mm).
    pub mesh_step_m: f64,
    /// Tissue contact stiffness given to Gazebo's contact solver, N/m (default 2000 N/m = 2 N/mm).
    pub tissue_stiffness_n_per_m: f64,
}

impl<'a> GazeboExport<'a> {
    /// An export with default mesh resolution and tissue stiffness.
    pub fn new(
        robot_name: &'a str,
        urdf_xml: &'a str,
        phantom: &'a Phantom,
        t_base_ct: Transform,
    ) -> Self {
        Self {
            robot_name,
            urdf_xml,
            phantom,
            t_base_ct,
            initial_q: None,
            mesh_step_m: 0.005,
            tissue_stiffness_n_per_m: 2000.0,
        }
    }
}

/// Paths of the files [`export_gazebo`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedFiles {
    /// The URDF with Gazebo and ros2_control tags.
    pub urdf: PathBuf,
    /// The SDF world.
    pub world: PathBuf,
    /// controller_manager configuration.
    pub controllers: PathBuf,
    /// ROS 2 launch file.
    pub launch: PathBuf,
    /// The patient mesh (binary STL).
    pub patient_mesh: PathBuf,
    /// Launch instructions.
    pub readme: PathBuf,
}

/// A movable joint of the URDF.
#[derive(Clone, Debug)]
struct MovableJoint {
    name: String,
    lower: f64,
    upper: f64,
}

/// Writes the Gazebo folder described in the [module documentation](self) into `dir` (created if
/// missing). Deterministic: the same inputs and the same `dir` give byte-identical files.
pub fn export_gazebo(dir: &Path, spec: &GazeboExport<'_>) -> Result<ExportedFiles, Error> {
    check_spec(spec)?;
    let robot = urdf_rs::read_from_string(spec.urdf_xml)
        .map_err(|e| ErrorKind::Export(format!("the URDF does not parse: {e}")))?;
    let joints = movable_joints(&robot);
    if joints.is_empty() {
        return Err(ErrorKind::Export("the URDF has no movable joint".into()).into());
    }
    let q0 = initial_positions(&joints, spec.initial_q.as_deref())?;
    let root = root_link(&robot)?;
    let sensor_joint = robot
        .joints
        .iter()
        .find(|j| j.parent.link == telecho_core::frames::FT_SENSOR)
        .map(|j| j.name.clone());

    for sub in ["urdf", "config", "worlds", "meshes", "launch"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|source| io_error(&d, source))?;
    }
    let abs_dir = std::fs::canonicalize(dir).map_err(|source| io_error(dir, source))?;
    let files = ExportedFiles {
        urdf: dir.join("urdf").join(format!("{}.urdf", spec.robot_name)),
        world: dir.join("worlds").join(format!("{WORLD_NAME}.sdf")),
        controllers: dir.join("config").join("controllers.yaml"),
        launch: dir.join("launch").join("telecho_gazebo.launch.py"),
        patient_mesh: dir.join("meshes").join("patient_skin.stl"),
        readme: dir.join("README.md"),
    };

    let controllers_abs = abs_dir.join("config").join("controllers.yaml");
    let urdf = gazebo_urdf(
        spec.urdf_xml,
        &root,
        &joints,
        &q0,
        sensor_joint.as_deref(),
        &controllers_abs,
    )?;
    write_file(&files.urdf, urdf.as_bytes())?;
    write_file(&files.controllers, controllers_yaml(&joints).as_bytes())?;

    let mesh = patient_mesh(spec.phantom, spec.mesh_step_m);
    write_file(
        &files.patient_mesh,
        &mesh.to_binary_stl("telecho patient skin (ct frame, m)"),
    )?;
    let world = world_sdf(spec, &mesh);
    write_file(&files.world, world.as_bytes())?;
    write_file(&files.launch, launch_py(spec.robot_name).as_bytes())?;
    write_file(&files.readme, readme(spec.robot_name).as_bytes())?;
    Ok(files)
}

fn check_spec(spec: &GazeboExport<'_>) -> Result<(), Error> {
    let name_ok = !spec.robot_name.is_empty()
        && spec
            .robot_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err(ErrorKind::Export(format!(
            "robot name {:?} must be non-empty ASCII letters, digits, '_' or '-'",
            spec.robot_name
        ))
        .into());
    }
    crate::error::check_in_range("mesh_step_m", spec.mesh_step_m, 0.001, 0.05)?;
    crate::error::check_in_range(
        "tissue_stiffness_n_per_m",
        spec.tissue_stiffness_n_per_m,
        100.0,
        1e6,
    )?;
    if !spec.t_base_ct.is_finite() {
        return Err(ErrorKind::Export("t_base_ct is not finite".into()).into());
    }
    Ok(())
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    ErrorKind::Io {
        path: path.to_owned(),
        source,
    }
    .into()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = std::fs::File::create(path).map_err(|source| io_error(path, source))?;
    f.write_all(bytes).map_err(|source| io_error(path, source))
}

fn movable_joints(robot: &urdf_rs::Robot) -> Vec<MovableJoint> {
    robot
        .joints
        .iter()
        .filter_map(|j| match j.joint_type {
            urdf_rs::JointType::Revolute | urdf_rs::JointType::Prismatic => Some(MovableJoint {
                name: j.name.clone(),
                lower: j.limit.lower,
                upper: j.limit.upper,
            }),
            urdf_rs::JointType::Continuous => Some(MovableJoint {
                name: j.name.clone(),
                lower: f64::NEG_INFINITY,
                upper: f64::INFINITY,
            }),
            _ => None,
        })
        .collect()
}

fn root_link(robot: &urdf_rs::Robot) -> Result<String, Error> {
    let mut roots = robot
        .links
        .iter()
        .filter(|l| !robot.joints.iter().any(|j| j.child.link == l.name));
    match (roots.next(), roots.next()) {
        (Some(l), None) => Ok(l.name.clone()),
        _ => Err(ErrorKind::Export("the URDF must have exactly one root link".into()).into()),
    }
}

fn initial_positions(joints: &[MovableJoint], q: Option<&[f64]>) -> Result<Vec<f64>, Error> {
    match q {
        None => Ok(joints
            .iter()
            .map(|j| 0.0f64.clamp(j.lower, j.upper))
            .collect()),
        Some(q) if q.len() != joints.len() => Err(ErrorKind::Export(format!(
            "initial_q has {} values but the URDF has {} movable joints",
            q.len(),
            joints.len()
        ))
        .into()),
        Some(q) => {
            for (v, j) in q.iter().zip(joints) {
                if !v.is_finite() || *v < j.lower || *v > j.upper {
                    return Err(ErrorKind::Export(format!(
                        "initial position {v} of joint {} is not finite or outside [{}, {}]",
                        j.name, j.lower, j.upper
                    ))
                    .into());
                }
            }
            Ok(q.to_vec())
        }
    }
}

/// Escapes text for XML content and attribute values.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The input URDF with a fixed `world` link and the Gazebo / ros2_control tags added before
/// `</robot>`. The original text is kept verbatim (comments and citations included).
fn gazebo_urdf(
    urdf_xml: &str,
    root: &str,
    joints: &[MovableJoint],
    q0: &[f64],
    sensor_joint: Option<&str>,
    controllers_abs: &Path,
) -> Result<String, Error> {
    let end = urdf_xml
        .rfind("</robot>")
        .ok_or_else(|| ErrorKind::Export("the URDF has no closing </robot> tag".into()))?;
    let mut s = String::with_capacity(urdf_xml.len() + 4096);
    s.push_str(urdf_xml[..end].trim_end());
    s.push_str("\n\n  <!-- ===== Added by `telecho sim export-gazebo` ===== -->\n");
    s.push_str(
        "  <!-- The base is fixed to the Gazebo world, which is the robot base frame. -->\n",
    );
    s.push_str("  <link name=\"world\"/>\n");
    let _ = writeln!(
        s,
        "  <joint name=\"world_{r}_joint\" type=\"fixed\">\n    <parent link=\"world\"/>\n    <child link=\"{r}\"/>\n    <origin xyz=\"0 0 0\" rpy=\"0 0 0\"/>\n  </joint>",
        r = xml_escape(root)
    );
    s.push_str("\n  <ros2_control name=\"TelechoGazeboSystem\" type=\"system\">\n");
    s.push_str(
        "    <hardware>\n      <plugin>gz_ros2_control/GazeboSimSystem</plugin>\n    </hardware>\n",
    );
    for (j, q) in joints.iter().zip(q0) {
        let _ = writeln!(
            s,
            "    <joint name=\"{}\">\n      <command_interface name=\"position\"/>\n      <command_interface name=\"velocity\"/>\n      <state_interface name=\"position\">\n        <param name=\"initial_value\">{q:.6}</param>\n      </state_interface>\n      <state_interface name=\"velocity\"/>\n      <state_interface name=\"effort\"/>\n    </joint>",
            xml_escape(&j.name)
        );
    }
    s.push_str("  </ros2_control>\n\n");
    let _ = writeln!(
        s,
        "  <gazebo>\n    <plugin filename=\"gz_ros2_control-system\" name=\"gz_ros2_control::GazeboSimROS2ControlPlugin\">\n      <parameters>{}</parameters>\n    </plugin>\n  </gazebo>",
        xml_escape(&controllers_abs.display().to_string())
    );
    if let Some(sj) = sensor_joint {
        // Gaussian noise per axis as the built-in sensor model's (and a real sensor's): the
        // controller's supervisor takes 50 bit-identical samples for a stuck sensor, which a
        // noiseless simulated sensor on a still arm would be.
        let ft = FtSensorParams::default();
        let noise = |sigma: f64| {
            let mut axes = String::new();
            for axis in ["x", "y", "z"] {
                let _ = write!(
                    axes,
                    "<{axis}><noise type=\"gaussian\"><mean>0</mean><stddev>{sigma}</stddev></noise></{axis}>"
                );
            }
            axes
        };
        let _ = writeln!(
            s,
            "\n  <!-- 6-axis F/T sensor between the sensor and the probe holder, 1 kHz. -->\n  <gazebo reference=\"{sj}\">\n    <preserveFixedJoint>true</preserveFixedJoint>\n    <sensor name=\"ft_sensor\" type=\"force_torque\">\n      <always_on>true</always_on>\n      <update_rate>1000</update_rate>\n      <topic>{FT_TOPIC}</topic>\n      <force_torque>\n        <frame>child</frame>\n        <measure_direction>child_to_parent</measure_direction>\n        <force>{}</force>\n        <torque>{}</torque>\n      </force_torque>\n    </sensor>\n  </gazebo>",
            noise(ft.force_noise_n),
            noise(ft.torque_noise_nm),
            sj = xml_escape(sj)
        );
    }
    s.push_str("\n  <!-- Keep the probe tip frame as its own link for TF. -->\n");
    s.push_str(
        "  <gazebo reference=\"probe_tip\">\n    <mu1>0.3</mu1>\n    <mu2>0.3</mu2>\n  </gazebo>\n",
    );
    s.push_str("</robot>\n");
    Ok(s)
}

fn controllers_yaml(joints: &[MovableJoint]) -> String {
    let mut s = String::new();
    s.push_str("# controller_manager configuration written by `telecho sim export-gazebo`.\n");
    s.push_str("controller_manager:\n  ros__parameters:\n    update_rate: 1000  # Hz\n");
    s.push_str(
        "    joint_state_broadcaster:\n      type: joint_state_broadcaster/JointStateBroadcaster\n",
    );
    let _ = writeln!(
        s,
        "    {POSITION_CONTROLLER}:\n      type: position_controllers/JointGroupPositionController\n"
    );
    let _ = writeln!(s, "{POSITION_CONTROLLER}:\n  ros__parameters:\n    joints:");
    for j in joints {
        let _ = writeln!(s, "      - {}", j.name);
    }
    s
}

/// A triangle mesh with outward-facing, counter-clockwise triangles.
#[derive(Clone, Debug, Default)]
pub struct Mesh {
    /// Vertex positions, metres.
    pub vertices: Vec<Vector3<f64>>,
    /// Vertex indices per triangle, counter-clockwise seen from outside.
    pub triangles: Vec<[u32; 3]>,
}

impl Mesh {
    /// Binary STL (80-byte header, triangle count, 50 bytes per triangle, little endian). A
    /// fifty-byte record format: written here directly rather than through a crate.
    pub fn to_binary_stl(&self, header: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(84 + 50 * self.triangles.len());
        let mut h = [b' '; 80];
        for (d, s) in h.iter_mut().zip(header.bytes()) {
            *d = s;
        }
        out.extend_from_slice(&h);
        out.extend_from_slice(&(self.triangles.len() as u32).to_le_bytes());
        for t in &self.triangles {
            let [a, b, c] = t.map(|i| self.vertices[i as usize]);
            let n = (b - a).cross(&(c - a));
            let n = n.try_normalize(0.0).unwrap_or_else(Vector3::zeros);
            for v in [n, a, b, c] {
                for x in v.iter() {
                    out.extend_from_slice(&(*x as f32).to_le_bytes());
                }
            }
            out.extend_from_slice(&0u16.to_le_bytes());
        }
        out
    }

    /// Axis-aligned bounds of the vertices after `t` (min, max).
    pub fn bounds_in(&self, t: &Transform) -> (Vector3<f64>, Vector3<f64>) {
        let mut lo = Vector3::repeat(f64::INFINITY);
        let mut hi = Vector3::repeat(f64::NEG_INFINITY);
        for v in &self.vertices {
            let p = t.transform_point(v);
            lo = lo.inf(&p);
            hi = hi.sup(&p);
        }
        (lo, hi)
    }
}

/// Height of the patient table, m (a typical examination couch top is 0.6–0.8 m above the floor).
const TABLE_HEIGHT_M: f64 = 0.70;
/// Lateral half-width of the patient mesh (m): the back is about 36 cm wide.
const PATIENT_HALF_WIDTH: f64 = 0.18;
/// Cranio-caudal margin of the mesh beyond the lumbar spine (m).
const PATIENT_Z_MARGIN: f64 = 0.10;
/// Anterior surface of the patient mesh (ct y, m): L3 body centre to the front of a prone adult's
/// abdomen resting on the table.
const PATIENT_FRONT_Y: f64 = 0.12;

/// A closed solid: the phantom's skin surface `y = skin_y(x, z)` as the top (facing −y, out of the
/// back), a flat front at `y = PATIENT_FRONT_Y`, and four side walls, sampled on a regular grid
/// of step `step` (m) in the `ct` frame.
pub fn patient_mesh(phantom: &Phantom, step: f64) -> Mesh {
    let (lo, hi) = phantom.bounds();
    let (x0, x1) = (-PATIENT_HALF_WIDTH, PATIENT_HALF_WIDTH);
    let (z0, z1) = (lo[2] - PATIENT_Z_MARGIN, hi[2] + PATIENT_Z_MARGIN);
    let nx = ((x1 - x0) / step).ceil().max(1.0) as usize;
    let nz = ((z1 - z0) / step).ceil().max(1.0) as usize;
    let front = PATIENT_FRONT_Y;
    let grid = |i: usize, k: usize| {
        let x = x0 + (x1 - x0) * i as f64 / nx as f64;
        let z = z0 + (z1 - z0) * k as f64 / nz as f64;
        (x, z)
    };
    let mut m = Mesh::default();
    // Back (skin) vertices, then front vertices, both (nx+1)×(nz+1), index i + k·(nx+1).
    for layer in 0..2 {
        for k in 0..=nz {
            for i in 0..=nx {
                let (x, z) = grid(i, k);
                let y = if layer == 0 {
                    phantom.skin_y(x, z).min(front - 0.01)
                } else {
                    front
                };
                m.vertices.push(Vector3::new(x, y, z));
            }
        }
    }
    let w = nx + 1;
    let layer = w * (nz + 1);
    let id = |l: usize, i: usize, k: usize| (l * layer + i + k * w) as u32;
    for k in 0..nz {
        for i in 0..nx {
            // The back faces −y: (b−a)×(c−a) = dx·x̂ × (dx·x̂ + dz·ẑ) ∝ −ŷ. The front faces +y.
            let (a, b, c, d) = (
                id(0, i, k),
                id(0, i + 1, k),
                id(0, i + 1, k + 1),
                id(0, i, k + 1),
            );
            m.triangles.push([a, b, c]);
            m.triangles.push([a, c, d]);
            let (a, b, c, d) = (
                id(1, i, k),
                id(1, i + 1, k),
                id(1, i + 1, k + 1),
                id(1, i, k + 1),
            );
            m.triangles.push([a, c, b]);
            m.triangles.push([a, d, c]);
        }
    }
    // Side walls: `wall(p, q)` joins the back edge p→q to the front below it; its outward normal
    // is along (q − p) × ŷ, so each edge is walked in the direction that makes it face outwards.
    let mut wall = |(l, i, k): (usize, usize, usize), (_, i2, k2): (usize, usize, usize)| {
        let (p, q, p2, q2) = (id(l, i, k), id(l, i2, k2), id(1, i, k), id(1, i2, k2));
        m.triangles.push([p, q, q2]);
        m.triangles.push([p, q2, p2]);
    };
    for i in 0..nx {
        wall((0, i + 1, 0), (0, i, 0)); // z = z0, normal −z
        wall((0, i, nz), (0, i + 1, nz)); // z = z1, normal +z
    }
    for k in 0..nz {
        wall((0, 0, k), (0, 0, k + 1)); // x = x0, normal −x
        wall((0, nx, k + 1), (0, nx, k)); // x = x1, normal +x
    }
    m
}

fn pose_str(t: &Transform) -> String {
    let [r, p, y] = t.rpy();
    let v = t.translation;
    format!("{:.6} {:.6} {:.6} {r:.6} {p:.6} {y:.6}", v.x, v.y, v.z)
}

fn world_sdf(spec: &GazeboExport<'_>, mesh: &Mesh) -> String {
    let (lo, hi) = mesh.bounds_in(&spec.t_base_ct);
    // Table: a horizontal box whose top touches the patient's lowest point, 5 cm wider than the
    // patient's footprint on every side, standing on the floor TABLE_HEIGHT_M below its top. The
    // robot base (the world origin) stands on a pedestal from the floor when it is above it.
    let top = lo.z;
    let height = TABLE_HEIGHT_M;
    let floor = top - height;
    let (cx, cy) = (0.5 * (lo.x + hi.x), 0.5 * (lo.y + hi.y));
    let (sx, sy) = (hi.x - lo.x + 0.10, hi.y - lo.y + 0.10);
    let table_pose = format!("{cx:.6} {cy:.6} {:.6} 0 0 0", top - 0.5 * height);
    let ground_pose = format!("0 0 {floor:.6} 0 0 0");
    let pedestal = if floor < -0.01 {
        let h = -floor;
        format!(
            r#"
    <model name="robot_pedestal">
      <static>true</static>
      <pose>0 0 {:.6} 0 0 0</pose>
      <link name="pedestal_link">
        <collision name="pedestal_collision">
          <geometry><box><size>0.3 0.3 {h:.6}</size></box></geometry>
        </collision>
        <visual name="pedestal_visual">
          <geometry><box><size>0.3 0.3 {h:.6}</size></box></geometry>
          <material><ambient>0.2 0.2 0.2 1</ambient><diffuse>0.2 0.2 0.2 1</diffuse></material>
        </visual>
      </link>
    </model>"#,
            -0.5 * h
        )
    } else {
        String::new()
    };
    let patient_pose = pose_str(&spec.t_base_ct);
    let kp = spec.tissue_stiffness_n_per_m;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<?xml version="1.0"?>
<!-- Written by `telecho sim export-gazebo`: robot base = world origin; patient pose = t_base_ct;
     patient mesh in the phantom's ct frame (RAS, metres). -->
<sdf version="1.9">
  <world name="{WORLD_NAME}">
    <physics name="1ms" type="ignored">
      <max_step_size>0.001</max_step_size>
      <real_time_factor>1.0</real_time_factor>
    </physics>
    <gravity>0 0 -9.81</gravity>
    <plugin filename="gz-sim-physics-system" name="gz::sim::systems::Physics"/>
    <plugin filename="gz-sim-user-commands-system" name="gz::sim::systems::UserCommands"/>
    <plugin filename="gz-sim-scene-broadcaster-system" name="gz::sim::systems::SceneBroadcaster"/>
    <plugin filename="gz-sim-sensors-system" name="gz::sim::systems::Sensors"/>
    <plugin filename="gz-sim-forcetorque-system" name="gz::sim::systems::ForceTorque"/>
    <plugin filename="gz-sim-contact-system" name="gz::sim::systems::Contact"/>
    <light type="directional" name="sun">
      <cast_shadows>true</cast_shadows>
      <pose>0 0 10 0 0 0</pose>
      <diffuse>0.9 0.9 0.9 1</diffuse>
      <specular>0.2 0.2 0.2 1</specular>
      <direction>-0.5 0.1 -0.9</direction>
    </light>
    <model name="ground_plane">
      <static>true</static>
      <pose>{ground_pose}</pose>
      <link name="link">
        <collision name="collision">
          <geometry><plane><normal>0 0 1</normal><size>20 20</size></plane></geometry>
        </collision>
        <visual name="visual">
          <geometry><plane><normal>0 0 1</normal><size>20 20</size></plane></geometry>
          <material><ambient>0.6 0.6 0.6 1</ambient><diffuse>0.6 0.6 0.6 1</diffuse></material>
        </visual>
      </link>
    </model>
{pedestal}
    <model name="patient_table">
      <static>true</static>
      <pose>{table_pose}</pose>
      <link name="table_link">
        <collision name="table_collision">
          <geometry><box><size>{sx:.6} {sy:.6} {height:.6}</size></box></geometry>
        </collision>
        <visual name="table_visual">
          <geometry><box><size>{sx:.6} {sy:.6} {height:.6}</size></box></geometry>
          <material><ambient>0.3 0.35 0.4 1</ambient><diffuse>0.3 0.35 0.4 1</diffuse></material>
        </visual>
      </link>
    </model>
    <model name="patient">
      <static>true</static>
      <pose>{patient_pose}</pose>
      <link name="skin">
        <collision name="skin_collision">
          <geometry><mesh><uri>../meshes/patient_skin.stl</uri></mesh></geometry>
          <surface>
            <contact><ode><kp>{kp:.1}</kp><kd>20.0</kd><max_vel>0.1</max_vel><min_depth>0.0005</min_depth></ode></contact>
            <friction><ode><mu>0.3</mu><mu2>0.3</mu2></ode></friction>
          </surface>
        </collision>
        <visual name="skin_visual">
          <geometry><mesh><uri>../meshes/patient_skin.stl</uri></mesh></geometry>
          <material><ambient>0.85 0.65 0.55 1</ambient><diffuse>0.85 0.65 0.55 1</diffuse></material>
        </visual>
      </link>
    </model>
  </world>
</sdf>
"#
    );
    s
}

fn launch_py(robot_name: &str) -> String {
    format!(
        r#"# ROS 2 launch file written by `telecho sim export-gazebo` (ROS 2 Humble/Jazzy + gz sim).
# Starts gz sim with the telecho world, publishes the robot description, spawns the arm, starts
# its controllers through gz_ros2_control and bridges /clock and the F/T sensor to ROS 2.
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch_ros.actions import Node

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROBOT = "{robot_name}"


def generate_launch_description():
    with open(os.path.join(ROOT, "urdf", ROBOT + ".urdf")) as f:
        robot_description = f.read()
    world = os.path.join(ROOT, "worlds", "{WORLD_NAME}.sdf")
    gz = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            os.path.join(get_package_share_directory("ros_gz_sim"), "launch", "gz_sim.launch.py")
        ),
        launch_arguments={{"gz_args": "-r " + world}}.items(),
    )
    state_publisher = Node(
        package="robot_state_publisher",
        executable="robot_state_publisher",
        parameters=[{{"robot_description": robot_description, "use_sim_time": True}}],
        output="screen",
    )
    spawn = Node(
        package="ros_gz_sim",
        executable="create",
        arguments=["-topic", "robot_description", "-name", ROBOT],
        output="screen",
    )
    joint_states = Node(
        package="controller_manager",
        executable="spawner",
        arguments=["joint_state_broadcaster"],
    )
    position = Node(
        package="controller_manager",
        executable="spawner",
        arguments=["{POSITION_CONTROLLER}"],
    )
    bridge = Node(
        package="ros_gz_bridge",
        executable="parameter_bridge",
        arguments=[
            "/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock",
            "{FT_TOPIC}@geometry_msgs/msg/Wrench[gz.msgs.Wrench",
        ],
        output="screen",
    )
    return LaunchDescription(
        [
            SetEnvironmentVariable("GZ_SIM_RESOURCE_PATH", ROOT),
            gz,
            state_publisher,
            spawn,
            joint_states,
            position,
            bridge,
        ]
    )
"#
    )
}

fn readme(robot_name: &str) -> String {
    format!(
        r#"# telecho scene for Gazebo

Written by `telecho sim export-gazebo`. The robot base is the world origin; the patient lies on
the table at the simulator's `t_base_ct`.

On a machine with ROS 2 (Humble or Jazzy) and Gazebo (gz sim) with `ros_gz` and
`gz_ros2_control` installed:

```sh
source /opt/ros/$ROS_DISTRO/setup.bash
ros2 launch ./launch/telecho_gazebo.launch.py
```

Then, for example, move the arm:

```sh
ros2 topic pub --once /{POSITION_CONTROLLER}/commands std_msgs/msg/Float64MultiArray "{{data: [...]}}"
ros2 topic echo {FT_TOPIC}
```

Or let telecho's control node drive the arm (same `ROS_DOMAIN_ID`, the export's seed):

```sh
telecho node control --gazebo --sim-seed <seed>
telecho node call /scan/start
```

Files: `urdf/{robot_name}.urdf` (arm + probe with `<ros2_control>` and `<gazebo>` tags; the
controller configuration path in it is absolute, so re-run the export if you move this folder),
`config/controllers.yaml`, `worlds/{WORLD_NAME}.sdf`, `meshes/patient_skin.stl`.
"#
    )
}
