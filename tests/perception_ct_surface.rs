//! `perception::ct_surface` against the simulator's phantom: the posterior bone surface extracted
//! from a simulated CBCT lies on the phantom's analytic bone surface, faces the probe, covers the
//! spinous tips and never reaches the anterior vertebral bodies.

use nalgebra::{Matrix3, Vector3};
use telecho_perception::ct_surface::{
    extract_posterior_bone_surface, CtSurfaceParams, SurfacePoints,
};
use telecho_perception::volume::Volume;
use telecho_sim::{simulate_cbct, CbctParams, Phantom};

const VOXEL: f64 = 0.0012;

fn ct(seed: u64) -> (Phantom, Volume) {
    let p = Phantom::generate(seed);
    let params = CbctParams {
        voxel_m: VOXEL,
        ..Default::default()
    };
    let v = simulate_cbct(&p, &params, seed).unwrap();
    (p, v)
}

fn lm(p: &Phantom, name: &str) -> Vector3<f64> {
    Vector3::from(
        p.landmarks()
            .into_iter()
            .find(|l| l.name == name)
            .unwrap()
            .xyz,
    )
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn sdf_gradient(p: &Phantom, x: &Vector3<f64>) -> Vector3<f64> {
    let h = 1e-4;
    let d = |e: Vector3<f64>| p.bone_sdf(&(x + e * h)) - p.bone_sdf(&(x - e * h));
    Vector3::new(d(Vector3::x()), d(Vector3::y()), d(Vector3::z())).normalize()
}

struct Stats {
    within_voxel: f64,
    median_mm: f64,
    posterior: f64,
    median_angle_deg: f64,
}

fn stats(p: &Phantom, s: &SurfacePoints) -> Stats {
    let mut dist: Vec<f64> = s.points.iter().map(|x| p.bone_sdf(x).abs()).collect();
    let within = dist.iter().filter(|&&d| d <= VOXEL).count() as f64 / dist.len() as f64;
    let median_mm = quantile(&mut dist, 0.5) * 1e3;
    let posterior = s.normals.iter().filter(|n| -n.y > 0.0).count() as f64 / s.len() as f64;
    let mut angles: Vec<f64> = s
        .points
        .iter()
        .zip(&s.normals)
        .map(|(x, n)| {
            n.dot(&sdf_gradient(p, x))
                .clamp(-1.0, 1.0)
                .acos()
                .to_degrees()
        })
        .collect();
    Stats {
        within_voxel: within,
        median_mm,
        posterior,
        median_angle_deg: quantile(&mut angles, 0.5),
    }
}

#[test]
fn posterior_surface_lies_on_the_phantom_bone() {
    for seed in [3, 11] {
        let (p, v) = ct(seed);
        let s = extract_posterior_bone_surface(&v, &CtSurfaceParams::default()).unwrap();
        let st = stats(&p, &s);
        println!(
            "seed {seed}: {} points, |sdf| ≤ 1 voxel {:.3}, median |sdf| {:.3} mm, \
             n·(−y) > 0 {:.3}, median normal angle {:.1}°",
            s.len(),
            st.within_voxel,
            st.median_mm,
            st.posterior,
            st.median_angle_deg
        );
        assert!(s.len() > 5000, "{} points", s.len());
        assert!(st.within_voxel >= 0.98, "{}", st.within_voxel);
        assert!(st.median_mm <= 0.2, "{}", st.median_mm);
        assert!(st.posterior >= 0.9, "{}", st.posterior);
        assert!(st.median_angle_deg <= 15.0, "{}", st.median_angle_deg);
        assert!(s.weights.iter().all(|&w| w > 0.0 && w <= 1.0));
        assert!(s
            .normals
            .iter()
            .all(|n| (n.norm() - 1.0).abs() < 1e-9 && n.iter().all(|c| c.is_finite())));

        // Every spinous tip is covered.
        for level in 1..=5 {
            let tip = lm(&p, &format!("L{level}_spinous_tip"));
            let near = s
                .points
                .iter()
                .map(|x| (x - tip).norm())
                .fold(f64::INFINITY, f64::min);
            println!("  L{level} spinous tip: nearest point {:.2} mm", near * 1e3);
            assert!(near <= 0.0015, "L{level}: {near}");
        }
        // Nothing on the anterior half of the vertebral bodies: no point anterior of a body
        // centre (plus 5 mm) within the body's lateral and craniocaudal extent.
        for level in 1..=5 {
            let c = lm(&p, &format!("L{level}_body_centre"));
            let [hx, _, hz] = p.body_half_extents(level - 1).unwrap();
            let bad = s
                .points
                .iter()
                .filter(|x| (x.x - c.x).abs() < hx && (x.z - c.z).abs() < hz && x.y > c.y + 0.005)
                .count();
            assert_eq!(bad, 0, "L{level}: {bad} points on the anterior body");
        }
    }
}

#[test]
fn decimation_and_view_cone() {
    let (p, v) = ct(3);
    let all = extract_posterior_bone_surface(&v, &CtSurfaceParams::default()).unwrap();
    let step2 = extract_posterior_bone_surface(
        &v,
        &CtSurfaceParams {
            column_step: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let ratio = step2.len() as f64 / all.len() as f64;
    println!("all {}, step 2 {} ({ratio:.3})", all.len(), step2.len());
    assert!((0.2..0.3).contains(&ratio), "{ratio}");
    let cone = extract_posterior_bone_surface(
        &v,
        &CtSurfaceParams {
            max_view_angle_rad: 60f64.to_radians(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(cone.len() < all.len());
    assert!(cone.normals.iter().all(|n| -n.y > 0.5 - 1e-12));
    assert!(stats(&p, &cone).median_mm <= 0.5);
}

/// The same anatomy stored with the posterior→anterior axis flipped and permuted onto index k
/// gives the same surface: the march direction comes from the affine.
#[test]
fn march_direction_follows_the_affine() {
    let (_, v) = ct(3);
    let [ni, nj, nk] = v.dims();
    let (a, o) = v.affine();
    let h = a[(0, 0)];
    // New index (i', j', k') = (i, k, nj − 1 − j): world y = o.y + h·(nj − 1 − k').
    let data = v.data();
    let mut flipped = Vec::with_capacity(data.len());
    for j in (0..nj).rev() {
        for k in 0..nk {
            for i in 0..ni {
                flipped.push(data[i + ni * (j + nj * k)]);
            }
        }
    }
    let affine = Matrix3::new(h, 0.0, 0.0, 0.0, 0.0, -h, 0.0, h, 0.0);
    let origin = Vector3::new(o.x, o.y + h * (nj - 1) as f64, o.z);
    let w = Volume::new([ni, nk, nj], flipped, affine, origin).unwrap();
    let s0 = extract_posterior_bone_surface(&v, &CtSurfaceParams::default()).unwrap();
    let s1 = extract_posterior_bone_surface(&w, &CtSurfaceParams::default()).unwrap();
    assert_eq!(s0.len(), s1.len());
    let mut m0: Vec<_> = s0.points.iter().map(|p| [p.x, p.y, p.z]).collect();
    let mut m1: Vec<_> = s1.points.iter().map(|p| [p.x, p.y, p.z]).collect();
    let key = |a: &[f64; 3], b: &[f64; 3]| {
        a[0].total_cmp(&b[0])
            .then(a[2].total_cmp(&b[2]))
            .then(a[1].total_cmp(&b[1]))
    };
    m0.sort_by(key);
    m1.sort_by(key);
    for (a, b) in m0.iter().zip(&m1) {
        for c in 0..3 {
            assert!((a[c] - b[c]).abs() < 1e-9, "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn errors_are_clear() {
    let soft = Volume::from_fn([8, 8, 8], [0.001; 3], [0.0; 3], |_, _, _| 40.0).unwrap();
    let e = extract_posterior_bone_surface(&soft, &CtSurfaceParams::default()).unwrap_err();
    assert!(e.to_string().contains("no bone"), "{e}");

    let tiny = Volume::from_fn([2, 8, 8], [0.001; 3], [0.0; 3], |_, _, _| 1000.0).unwrap();
    let e = extract_posterior_bone_surface(&tiny, &CtSurfaceParams::default()).unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");
    let empty = Volume::from_fn([0, 0, 0], [0.001; 3], [0.0; 3], |_, _, _| 0.0).unwrap();
    assert!(extract_posterior_bone_surface(&empty, &CtSurfaceParams::default()).is_err());

    // A bone slab posterior face at j = 4: found, with the normal along −y.
    let slab = Volume::from_fn([8, 12, 8], [0.001; 3], [0.0; 3], |_, j, _| {
        if j >= 4 {
            1200.0
        } else {
            50.0
        }
    })
    .unwrap();
    let s = extract_posterior_bone_surface(&slab, &CtSurfaceParams::default()).unwrap();
    assert_eq!(s.len(), 64);
    for (x, n) in s.points.iter().zip(&s.normals) {
        // 600 HU crossing between j = 3 (50) and j = 4 (1200).
        assert!((x.y - 0.001 * (3.0 + 550.0 / 1150.0)).abs() < 1e-9, "{x}");
        assert!((n - Vector3::new(0.0, -1.0, 0.0)).norm() < 1e-9, "{n}");
    }

    for bad in [
        CtSurfaceParams {
            threshold_hu: f32::NAN,
            ..Default::default()
        },
        CtSurfaceParams {
            surface_hu: 100.0,
            ..Default::default()
        },
        CtSurfaceParams {
            column_step: 0,
            ..Default::default()
        },
        CtSurfaceParams {
            max_view_angle_rad: f64::INFINITY,
            ..Default::default()
        },
        CtSurfaceParams {
            min_bone_neighbours: 7,
            ..Default::default()
        },
    ] {
        let e = extract_posterior_bone_surface(&slab, &bad).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }
}
