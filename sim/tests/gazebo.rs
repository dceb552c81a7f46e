//! Structural validation of the Gazebo export: Gazebo is not installable here, so these tests check
//! what gz sim and gz_ros2_control would need — the files parse, and every link, joint, controller
//! joint and mesh they reference exists.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use nalgebra::Vector3;
use telecho_control::Chain;
use telecho_core::Transform;
use telecho_sim::gazebo::{export_gazebo, patient_mesh, ExportedFiles, GazeboExport, Mesh};
use telecho_sim::Phantom;

const UR5E: &str = include_str!("../../urdf/ur5e_probe.urdf");
const PANDA: &str = include_str!("../../urdf/panda_probe.urdf");

fn out_dir(name: &str) -> PathBuf {
    let d = telecho_testkit::scratch(&format!("gazebo-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn placement() -> Transform {
    // The simulator's seeded patient placement (back up, in reach of the arm).
    telecho_sim::PatientPlacement::default().sample(7)
}

fn export(name: &str, urdf: &str, robot: &str, phantom: &Phantom) -> (PathBuf, ExportedFiles) {
    let dir = out_dir(name);
    let spec = GazeboExport::new(robot, urdf, phantom, placement());
    let files = export_gazebo(&dir, &spec).expect("export");
    (dir, files)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn parse_pose(s: &str) -> Transform {
    let v: Vec<f64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(v.len(), 6, "pose {s:?}");
    Transform::from_xyz_rpy([v[0], v[1], v[2]], [v[3], v[4], v[5]]).unwrap()
}

fn check_urdf(files: &ExportedFiles, original: &str) {
    let text = read(&files.urdf);
    let doc = roxmltree::Document::parse(&text).expect("URDF is well-formed XML");
    let robot = doc.root_element();
    assert_eq!(robot.tag_name().name(), "robot");
    let links: HashSet<&str> = robot
        .children()
        .filter(|n| n.has_tag_name("link"))
        .map(|n| n.attribute("name").unwrap())
        .collect();
    let mut joint_types = HashMap::new();
    for j in robot.children().filter(|n| n.has_tag_name("joint")) {
        let name = j.attribute("name").unwrap();
        joint_types.insert(name, j.attribute("type").unwrap());
        for end in ["parent", "child"] {
            let l = j.children().find(|n| n.has_tag_name(end)).unwrap();
            assert!(
                links.contains(l.attribute("link").unwrap()),
                "joint {name}: {end} link missing"
            );
        }
    }
    let movable: HashSet<&str> = joint_types
        .iter()
        .filter(|(_, t)| **t != "fixed")
        .map(|(n, _)| *n)
        .collect();
    assert!(links.contains("world"), "fixed world link");

    // ros2_control: exactly the movable joints, each with position command + position state.
    let rc = robot
        .children()
        .find(|n| n.has_tag_name("ros2_control"))
        .expect("<ros2_control>");
    let plugin = rc.descendants().find(|n| n.has_tag_name("plugin")).unwrap();
    assert_eq!(plugin.text(), Some("gz_ros2_control/GazeboSimSystem"));
    let rc_joints: HashSet<&str> = rc
        .children()
        .filter(|n| n.has_tag_name("joint"))
        .map(|n| n.attribute("name").unwrap())
        .collect();
    assert_eq!(
        rc_joints, movable,
        "ros2_control joints = movable URDF joints"
    );
    for j in rc.children().filter(|n| n.has_tag_name("joint")) {
        let has = |tag: &str, iface: &str| {
            j.children()
                .any(|n| n.has_tag_name(tag) && n.attribute("name") == Some(iface))
        };
        assert!(has("command_interface", "position") && has("state_interface", "position"));
        assert!(has("state_interface", "velocity"));
    }

    // Every <gazebo reference> names a link or a joint; the controller file exists.
    let mut saw_sensor = false;
    for g in robot.children().filter(|n| n.has_tag_name("gazebo")) {
        if let Some(r) = g.attribute("reference") {
            assert!(
                links.contains(r) || joint_types.contains_key(r),
                "gazebo reference {r} does not exist"
            );
            if let Some(s) = g.children().find(|n| n.has_tag_name("sensor")) {
                assert_eq!(s.attribute("type"), Some("force_torque"));
                // Noise on every axis, as the built-in sensor's (0.05 N, 0.002 N·m).
                let sigmas: Vec<f64> = s
                    .descendants()
                    .filter(|n| n.has_tag_name("stddev"))
                    .map(|n| n.text().unwrap().parse().unwrap())
                    .collect();
                assert_eq!(sigmas, [0.05, 0.05, 0.05, 0.002, 0.002, 0.002]);
                let parent = robot
                    .children()
                    .find(|n| n.has_tag_name("joint") && n.attribute("name") == Some(r))
                    .and_then(|j| j.children().find(|n| n.has_tag_name("parent")))
                    .and_then(|p| p.attribute("link"));
                assert_eq!(
                    parent,
                    Some("ft_sensor"),
                    "F/T sensor sits below the sensor link"
                );
                saw_sensor = true;
            }
        } else {
            let params = g
                .descendants()
                .find(|n| n.has_tag_name("parameters"))
                .unwrap();
            let path = Path::new(params.text().unwrap());
            assert!(path.is_absolute() && path.is_file(), "{}", path.display());
            let yaml = read(path);
            for j in &movable {
                assert!(
                    yaml.contains(&format!("      - {j}\n")),
                    "controllers.yaml lists {j}"
                );
            }
            assert_eq!(yaml.matches("\n      - ").count(), movable.len());
        }
    }
    assert!(saw_sensor, "force_torque sensor present");

    // The kinematics are untouched: FK from the exported URDF equals FK from the original.
    let a = Chain::from_urdf_str(original, Some("base_link"), "probe_tip").unwrap();
    let b = Chain::from_urdf_str(&text, Some("base_link"), "probe_tip").unwrap();
    let from_world = Chain::from_urdf_str(&text, None, "probe_tip").unwrap();
    assert_eq!(from_world.base_link(), "world");
    let q = a.mid_configuration();
    let (ta, tb, tw) = (
        a.fk(&q).unwrap(),
        b.fk(&q).unwrap(),
        from_world.fk(&q).unwrap(),
    );
    assert!(ta.distance_to(&tb).0 < 1e-12 && ta.distance_to(&tw).0 < 1e-12);
}

fn check_world(files: &ExportedFiles, phantom: &Phantom) {
    let text = read(&files.world);
    let doc = roxmltree::Document::parse(&text).expect("SDF is well-formed XML");
    let sdf = doc.root_element();
    assert_eq!(sdf.tag_name().name(), "sdf");
    assert_eq!(sdf.attribute("version"), Some("1.9"));
    let world = sdf.children().find(|n| n.has_tag_name("world")).unwrap();
    let step: f64 = world
        .descendants()
        .find(|n| n.has_tag_name("max_step_size"))
        .and_then(|n| n.text())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(step, 0.001, "1 kHz physics");
    let models: HashMap<&str, roxmltree::Node<'_, '_>> = world
        .children()
        .filter(|n| n.has_tag_name("model"))
        .map(|n| (n.attribute("name").unwrap(), n))
        .collect();
    for m in ["ground_plane", "patient_table", "patient", "robot_pedestal"] {
        assert!(models.contains_key(m), "model {m}");
    }
    // Every mesh URI resolves, relative to the SDF file, to an STL that exists.
    let base = files.world.parent().unwrap();
    let uris: Vec<&str> = world
        .descendants()
        .filter(|n| n.has_tag_name("uri"))
        .map(|n| n.text().unwrap())
        .collect();
    assert!(uris.len() >= 2);
    for u in uris {
        let p = base.join(u);
        assert!(p.is_file(), "mesh {u} -> {}", p.display());
        assert_eq!(
            p.canonicalize().unwrap(),
            files.patient_mesh.canonicalize().unwrap()
        );
    }
    // Known gz-sim system plugins only.
    for p in world.children().filter(|n| n.has_tag_name("plugin")) {
        let f = p.attribute("filename").unwrap();
        assert!(f.starts_with("gz-sim-") && f.ends_with("-system"), "{f}");
    }
    // The patient pose is t_base_ct.
    let pose = |m: &str| {
        models[m]
            .children()
            .find(|n| n.has_tag_name("pose"))
            .and_then(|n| n.text())
            .map(parse_pose)
            .unwrap()
    };
    let (dt, dr) = pose("patient").distance_to(&placement());
    assert!(
        dt < 1e-6 && dr < 1e-6,
        "patient pose off by {dt} m / {dr} rad"
    );
    // The table's top touches the patient's lowest point (within the printed precision).
    let size: Vec<f64> = models["patient_table"]
        .descendants()
        .find(|n| n.has_tag_name("size"))
        .and_then(|n| n.text())
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let table_top = pose("patient_table").translation.z + 0.5 * size[2];
    let mesh = patient_mesh(phantom, 0.005);
    let (lo, hi) = mesh.bounds_in(&placement());
    assert!(
        (table_top - lo.z).abs() < 1e-5,
        "table top {table_top} vs patient {}",
        lo.z
    );
    // The table stands on the floor (the ground plane), and a robot base above the floor stands
    // on a pedestal reaching up to the base (the world origin).
    let table_bottom = pose("patient_table").translation.z - 0.5 * size[2];
    let floor = pose("ground_plane").translation.z;
    assert!(
        (table_bottom - floor).abs() < 1e-5,
        "table bottom {table_bottom} vs floor {floor}"
    );
    assert!(floor < hi.z, "floor below the patient");
    if floor < -0.01 {
        let ped = pose("robot_pedestal").translation.z;
        let h: f64 = models["robot_pedestal"]
            .descendants()
            .find(|n| n.has_tag_name("size"))
            .and_then(|n| n.text())
            .and_then(|t| t.split_whitespace().nth(2))
            .unwrap()
            .parse()
            .unwrap();
        assert!((ped + 0.5 * h).abs() < 1e-5 && (ped - 0.5 * h - floor).abs() < 1e-5);
    }
    let table_xy = pose("patient_table").translation;
    assert!(table_xy.x - 0.5 * size[0] < lo.x && table_xy.x + 0.5 * size[0] > hi.x);
}

/// Closed and consistently oriented: every directed edge appears once and its reverse once.
fn assert_closed_oriented(mesh: &Mesh) {
    let mut edges: HashMap<(u32, u32), u32> = HashMap::new();
    for t in &mesh.triangles {
        for (a, b) in [(t[0], t[1]), (t[1], t[2]), (t[2], t[0])] {
            *edges.entry((a, b)).or_default() += 1;
        }
    }
    for (&(a, b), &n) in &edges {
        assert_eq!(n, 1, "directed edge {a}->{b} used {n} times");
        assert_eq!(edges.get(&(b, a)), Some(&1), "edge {a}->{b} has no twin");
    }
}

fn signed_volume(mesh: &Mesh) -> f64 {
    mesh.triangles
        .iter()
        .map(|t| {
            let [a, b, c] = t.map(|i| mesh.vertices[i as usize]);
            a.dot(&b.cross(&c)) / 6.0
        })
        .sum()
}

#[test]
fn patient_mesh_is_a_closed_outward_solid_on_the_skin() {
    let phantom = Phantom::generate(5);
    let mesh = patient_mesh(&phantom, 0.005);
    assert_closed_oriented(&mesh);
    let vol = signed_volume(&mesh);
    // 36 cm wide, ~20 cm deep, ~45 cm long: a few hundredths of a cubic metre, and positive
    // (outward normals).
    assert!((0.01..0.06).contains(&vol), "volume {vol} m^3");
    // The top vertices lie on the skin, and the outward normal there points out of the back (−y).
    let mut on_skin = 0;
    for t in &mesh.triangles {
        let [a, b, c] = t.map(|i| mesh.vertices[i as usize]);
        let n = (b - a).cross(&(c - a)).normalize();
        if n.y < -0.9 {
            for v in [a, b, c] {
                assert!((v.y - phantom.skin_y(v.x, v.z)).abs() < 1e-12);
            }
            on_skin += 1;
        }
    }
    assert!(on_skin > 1000, "{on_skin} back-facing triangles");
    // The lumbar spine is under the back surface: every landmark is inside the solid's y range.
    for l in phantom.landmarks() {
        assert!(
            l.xyz[1] > phantom.skin_y(l.xyz[0], l.xyz[2]) && l.xyz[1] < 0.12,
            "{}",
            l.name
        );
    }
}

#[test]
fn stl_file_matches_the_mesh() {
    let phantom = Phantom::generate(5);
    let (_dir, files) = export("stl", UR5E, "ur5e_probe", &phantom);
    let bytes = std::fs::read(&files.patient_mesh).unwrap();
    let n = u32::from_le_bytes(bytes[80..84].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 84 + 50 * n);
    let mesh = patient_mesh(&phantom, 0.005);
    assert_eq!(n, mesh.triangles.len());
    let f = |o: usize| f32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as f64;
    for (t, tri) in mesh.triangles.iter().enumerate().step_by(97) {
        let o = 84 + 50 * t;
        let normal = Vector3::new(f(o), f(o + 4), f(o + 8));
        assert!((normal.norm() - 1.0).abs() < 1e-5);
        for (k, &vi) in tri.iter().enumerate() {
            let v = Vector3::new(f(o + 12 + 12 * k), f(o + 16 + 12 * k), f(o + 20 + 12 * k));
            assert!((v - mesh.vertices[vi as usize]).norm() < 1e-6);
        }
    }
}

#[test]
fn ur5e_export_is_structurally_valid() {
    let phantom = Phantom::generate(5);
    let (_dir, files) = export("ur5e", UR5E, "ur5e_probe", &phantom);
    check_urdf(&files, UR5E);
    check_world(&files, &phantom);
    let readme = read(&files.readme);
    assert!(readme.contains("ros2 launch ./launch/telecho_gazebo.launch.py"));
}

#[test]
fn panda_export_is_structurally_valid() {
    let phantom = Phantom::generate(9);
    let (_dir, files) = export("panda", PANDA, "panda_probe", &phantom);
    check_urdf(&files, PANDA);
    check_world(&files, &phantom);
}

#[test]
fn launch_file_is_valid_python() {
    let phantom = Phantom::generate(5);
    let (_dir, files) = export("launch", UR5E, "ur5e_probe", &phantom);
    let code = format!(
        "import ast,sys; ast.parse(open({:?}).read()); print('ok')",
        files.launch.display().to_string()
    );
    match telecho_core::peers::python_output(&code) {
        Some(out) => assert_eq!(out.trim(), "ok"),
        None => telecho_core::peers::missing_peer("python3", "install python3"),
    }
}

#[test]
fn export_is_deterministic() {
    let phantom = Phantom::generate(3);
    let (dir, files) = export("det", UR5E, "ur5e_probe", &phantom);
    let first: Vec<Vec<u8>> = [
        &files.urdf,
        &files.world,
        &files.controllers,
        &files.patient_mesh,
    ]
    .iter()
    .map(|p| std::fs::read(p).unwrap())
    .collect();
    let again = export_gazebo(
        &dir,
        &GazeboExport::new("ur5e_probe", UR5E, &phantom, placement()),
    )
    .unwrap();
    let second: Vec<Vec<u8>> = [
        &again.urdf,
        &again.world,
        &again.controllers,
        &again.patient_mesh,
    ]
    .iter()
    .map(|p| std::fs::read(p).unwrap())
    .collect();
    assert!(first == second);
}

#[test]
fn bad_export_requests_are_refused() {
    let phantom = Phantom::generate(1);
    let dir = out_dir("bad");
    let ok = GazeboExport::new("ur5e_probe", UR5E, &phantom, placement());
    let mut t = placement();
    t.translation.x = f64::NAN;
    let cases: Vec<(GazeboExport<'_>, &str)> = vec![
        (
            GazeboExport {
                robot_name: "../evil",
                ..ok.clone()
            },
            "robot name",
        ),
        (
            GazeboExport {
                urdf_xml: "<robot name='x'>",
                ..ok.clone()
            },
            "URDF",
        ),
        (
            GazeboExport {
                initial_q: Some(vec![0.0; 3]),
                ..ok.clone()
            },
            "initial_q",
        ),
        (
            GazeboExport {
                initial_q: Some(vec![f64::NAN; 6]),
                ..ok.clone()
            },
            "initial",
        ),
        (
            GazeboExport {
                mesh_step_m: 0.0,
                ..ok.clone()
            },
            "mesh_step_m",
        ),
        (
            GazeboExport {
                t_base_ct: t,
                ..ok.clone()
            },
            "t_base_ct",
        ),
    ];
    for (spec, needle) in cases {
        let err = export_gazebo(&dir, &spec).expect_err(needle).to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle}");
    }
}
