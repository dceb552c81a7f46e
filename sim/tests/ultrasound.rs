//! Ultrasound simulator: echo geometry against an independent fine march through the phantom,
//! acoustic shadow, coupling, attenuation, landmarks, determinism and input validation.

use std::sync::Arc;

use nalgebra::{Matrix3, Vector3};
use telecho_core::Transform;
use telecho_sim::phantom::Phantom;
use telecho_sim::ultrasound::{UltrasoundSim, UsFrame, UsParams};

#[global_allocator]
static GLOBAL: telecho_core::alloc_count::CountingAllocator =
    telecho_core::alloc_count::CountingAllocator;

/// Phantoms whose L3 spinous tip is 21–26 mm deep, so the laminae and transverse processes are
/// within the default 70 mm.
const SHALLOW: [u64; 4] = [2, 4, 10, 17];
/// Speckle/noise seeds.
const SEEDS: [u64; 3] = [1, 7, 1234];

fn lm(p: &Phantom, name: &str) -> Vector3<f64> {
    let l = p.landmarks().into_iter().find(|l| l.name == name);
    Vector3::from(l.map(|l| l.xyz).expect("landmark exists"))
}

/// Probe looking anterior (+y ct) with the array along `array` (a unit ct axis ⟂ y), the face
/// centre `indentation` below the skin at (x, z).
fn pose(p: &Phantom, x: f64, z: f64, indentation: f64, array: Vector3<f64>) -> Transform {
    let zp = Vector3::y();
    let yp = zp.cross(&array);
    let rot = Matrix3::from_columns(&[array, yp, zp]);
    Transform::new(rot, Vector3::new(x, p.skin_y(x, z) + indentation, z))
}

fn transverse() -> Vector3<f64> {
    Vector3::x()
}

fn sagittal() -> Vector3<f64> {
    Vector3::z()
}

/// Face point (ct) and beam direction of column `c`.
fn scanline(f: &UsFrame, c: usize) -> (Vector3<f64>, Vector3<f64>) {
    let o = f.pixel_to_ct(0.0, c as f64);
    let d: Vector3<f64> = f.t_ct_probe.rotation.column(2).into();
    (o, d)
}

/// Independent first bone hit along a ray: march in 0.01 mm steps, skipping ahead by the
/// phantom's distance bound where that is larger; the first sample inside bone (≤ 0.01 mm past
/// the surface).
fn geometric_hit(p: &Phantom, o: &Vector3<f64>, d: &Vector3<f64>, max: f64) -> Option<f64> {
    let mut t = 0.0;
    while t <= max {
        let s = p.bone_sdf(&(o + d * t));
        if s <= 0.0 {
            return Some(t);
        }
        t += s.max(1e-5);
    }
    None
}

fn column(f: &UsFrame, c: usize) -> Vec<f64> {
    (0..f.height)
        .map(|r| f.pixels[r * f.width + c] as f64)
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn frame_mean(f: &UsFrame) -> f64 {
    f.pixels.iter().map(|&p| p as f64).sum::<f64>() / f.pixels.len() as f64
}

fn sim(p: &Arc<Phantom>, params: UsParams, seed: u64) -> UltrasoundSim {
    UltrasoundSim::new(p.clone(), params, seed).unwrap()
}

/// Positions over bone: (name, probe x, probe z, array direction).
fn bone_positions(p: &Phantom, shallow: bool) -> Vec<(&'static str, f64, f64, Vector3<f64>)> {
    let tip = lm(p, "L3_spinous_tip");
    let mut v = vec![
        ("spinous tip, transverse", tip.x, tip.z, transverse()),
        ("spinous tip, sagittal", tip.x, tip.z, sagittal()),
    ];
    if shallow {
        let lam = lm(p, "L3_lamina_right");
        let tp = lm(p, "L3_transverse_right");
        v.push(("lamina, sagittal", lam.x, lam.z, sagittal()));
        v.push(("lamina, transverse", lam.x, lam.z, transverse()));
        // Over the transverse process's end cap, 5 mm medial of its tip.
        v.push((
            "transverse process, transverse",
            tp.x - 0.005,
            tp.z,
            transverse(),
        ));
    }
    v
}

/// The brightest pixel of column 128 (x = +0.07 mm) lies within ±0.5 mm of the depth of the
/// first bone surface found by the independent march; from 3 mm below the echo to the bottom
/// the column is shadowed (mean < 15 % of the soft tissue above the bone).
#[test]
fn bone_echo_at_geometric_depth_with_shadow_below() {
    let mut worst_err: f64 = 0.0;
    let mut worst_shadow: f64 = 0.0;
    let mut n = 0;
    let phantoms: Vec<(u64, bool)> = SHALLOW
        .iter()
        .map(|&s| (s, true))
        .chain([1, 3, 6].map(|s| (s, false)))
        .collect();
    for (ps, shallow) in phantoms {
        let ph = Arc::new(Phantom::generate(ps));
        for &seed in &SEEDS {
            let mut us = sim(&ph, UsParams::default(), seed);
            let dz = us.params().axial_spacing_m();
            for (what, x, z, array) in bone_positions(&ph, shallow) {
                let f = us.render_new(&pose(&ph, x, z, 0.003, array)).unwrap();
                assert!(f.contact && f.contact_fraction > 0.99, "{what}");
                let c = 128;
                let (o, d) = scanline(&f, c);
                let geo = geometric_hit(&ph, &o, &d, us.params().depth_m)
                    .unwrap_or_else(|| panic!("phantom {ps} {what}: no bone under the probe"));
                let col = column(&f, c);
                let (r_max, _) =
                    col.iter()
                        .enumerate()
                        .fold((0, -1.0), |b, (r, &v)| if v > b.1 { (r, v) } else { b });
                let echo = r_max as f64 * dz;
                let err = echo - geo;
                assert!(
                    err.abs() <= 0.5e-3,
                    "phantom {ps} seed {seed} {what}: echo at {:.2} mm, bone at {:.2} mm",
                    echo * 1e3,
                    geo * 1e3
                );
                // Ground truth in the frame agrees with the march too.
                let truth = f.bone_depth_m[c].expect("ground-truth depth");
                assert!((truth - geo).abs() < 2e-5, "{what}: {truth} vs {geo}");
                let below = ((echo + 3e-3) / dz).ceil() as usize;
                let above = ((echo - 2e-3) / dz).floor() as usize;
                let top = (3e-3 / dz).ceil() as usize;
                assert!(
                    above > top + 10 && below + 10 < f.height,
                    "{what}: room to measure"
                );
                let shadow = mean(&col[below..]);
                let tissue = mean(&col[top..above]);
                let ratio = shadow / tissue;
                assert!(
                    ratio < 0.15,
                    "phantom {ps} seed {seed} {what}: shadow {shadow:.1} vs tissue {tissue:.1}"
                );
                worst_err = worst_err.max(err.abs());
                worst_shadow = worst_shadow.max(ratio);
                n += 1;
            }
        }
    }
    eprintln!(
        "{n} frames: worst echo-depth error {:.3} mm, worst shadow/tissue ratio {:.3}",
        worst_err * 1e3,
        worst_shadow
    );
}

/// Every column's bone_mask marks the row of the first bone surface found by the independent
/// march (±1 px), and nothing where the march finds no bone.
#[test]
fn bone_mask_matches_geometric_hits_per_column() {
    let mut worst: f64 = 0.0;
    let mut columns = 0;
    for ps in [2, 10] {
        let ph = Arc::new(Phantom::generate(ps));
        let mut us = sim(&ph, UsParams::default(), 5);
        let p = *us.params();
        let dz = p.axial_spacing_m();
        for (what, x, z, array) in bone_positions(&ph, true) {
            let f = us.render_new(&pose(&ph, x, z, 0.003, array)).unwrap();
            for c in 0..f.width {
                let (o, d) = scanline(&f, c);
                let geo = geometric_hit(&ph, &o, &d, p.depth_m);
                let rows: Vec<usize> = (0..f.height)
                    .filter(|&r| f.bone_mask[r * f.width + c] == 1)
                    .collect();
                match geo {
                    Some(g) if g < p.depth_m - dz => {
                        assert_eq!(rows.len(), 1, "{what} col {c}: mask rows {rows:?}");
                        let e = (rows[0] as f64 - g / dz).abs();
                        assert!(
                            e <= 1.0,
                            "{what} col {c}: mask row {} vs {:.2}",
                            rows[0],
                            g / dz
                        );
                        worst = worst.max(e);
                        columns += 1;
                    }
                    Some(_) => assert!(rows.len() <= 1),
                    None => assert!(rows.is_empty(), "{what} col {c}: mask {rows:?} but no bone"),
                }
            }
            assert!(f.bone_mask.iter().all(|&m| m <= 1));
        }
    }
    eprintln!("{columns} columns with bone: worst mask-row error {worst:.2} px");
    assert!(columns > 1000);
}

/// 5 mm above the skin: no contact and a black image; 0.3 mm indentation gives a much darker
/// (and dropout-streaked) image than 3 mm.
#[test]
fn no_image_without_contact_and_degraded_at_low_indentation() {
    let ph = Arc::new(Phantom::generate(4));
    let tip = lm(&ph, "L3_spinous_tip");
    let mut us = sim(&ph, UsParams::default(), 3);
    let air = us
        .render_new(&pose(&ph, tip.x, tip.z, -0.005, transverse()))
        .unwrap();
    assert!(!air.contact);
    assert_eq!(air.contact_fraction, 0.0);
    assert_eq!(air.mean_indentation_m, 0.0);
    assert!(air.bone_mask.iter().all(|&m| m == 0));
    assert!(air.bone_depth_m.iter().all(|d| d.is_none()));
    let air_mean = frame_mean(&air);
    assert!(air_mean < 8.0, "no-contact image mean {air_mean}");

    // Soft tissue above the bone: rows 1–15 mm of the central 64 columns (±4.7 mm, where the
    // indentation is close to the nominal one also across the midline groove).
    let dz = us.params().axial_spacing_m();
    let rows = (1e-3 / dz) as usize..(15e-3 / dz) as usize;
    let cols = 96..160;
    let tissue = |f: &UsFrame| -> (f64, f64) {
        let col_means: Vec<f64> = cols
            .clone()
            .map(|c| {
                mean(
                    &rows
                        .clone()
                        .map(|r| f.pixels[r * f.width + c] as f64)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let m = mean(&col_means);
        // Column-to-column variation (dropout streaks): coefficient of variation.
        let var = col_means.iter().map(|v| (v - m).powi(2)).sum::<f64>() / col_means.len() as f64;
        (m, var.sqrt() / m)
    };
    let mut low_sum = 0.0;
    let mut full_sum = 0.0;
    for (x, z, array) in [
        (tip.x, tip.z, transverse()),
        (tip.x, tip.z, sagittal()),
        (0.07, tip.z, sagittal()),
    ] {
        let full = us.render_new(&pose(&ph, x, z, 0.003, array)).unwrap();
        let light = us.render_new(&pose(&ph, x, z, 0.0003, array)).unwrap();
        assert!(full.contact && light.contact);
        eprintln!(
            "mean indentation {:.2} / {:.2} mm, contact {:.2} / {:.2}",
            full.mean_indentation_m * 1e3,
            light.mean_indentation_m * 1e3,
            full.contact_fraction,
            light.contact_fraction
        );
        let (m_full, cv_full) = tissue(&full);
        let (m_light, cv_light) = tissue(&light);
        eprintln!(
            "tissue mean: 3 mm {m_full:.1} (column CV {cv_full:.2}), 0.3 mm {m_light:.1} \
             (column CV {cv_light:.2}); no contact {air_mean:.1}"
        );
        assert!(m_light < 0.4 * m_full, "{m_light} vs {m_full}");
        assert!(m_full > 60.0 && m_full > 8.0 * air_mean);
        assert!(cv_light > 0.2 && cv_full < 0.05, "{cv_light} vs {cv_full}");
        low_sum += m_light;
        full_sum += m_full;
    }
    assert!(low_sum < 0.4 * full_sum);
}

/// Fits `grey = a + b·z` over rows `rows`; returns b in dB/cm given the dynamic range.
fn slope_db_per_cm(f: &UsFrame, rows: std::ops::Range<usize>, dr: f64) -> f64 {
    let pts: Vec<(f64, f64)> = rows
        .map(|r| {
            let row = &f.pixels[r * f.width..(r + 1) * f.width];
            let m = row.iter().map(|&p| p as f64).sum::<f64>() / f.width as f64;
            (r as f64 * f.axial_spacing_m * 100.0, m * dr / 255.0)
        })
        .collect();
    let n = pts.len() as f64;
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
    let (mx, my) = (sx / n, sy / n);
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    sxy / sxx
}

/// Bone-free muscle lateral to the spine, TGC off: the mean log-compressed level falls with depth
/// at the two-way attenuation 2·α·f (±20 %); with TGC on, the slope is the difference.
#[test]
fn attenuation_slope_matches_configured_coefficient() {
    let ph = Arc::new(Phantom::generate(3));
    let tip = lm(&ph, "L3_spinous_tip");
    for (alpha, f_mhz, tgc) in [(0.5, 7.5, 0.0), (0.7, 5.0, 0.0), (0.5, 7.5, 6.5)] {
        let params = UsParams {
            attenuation_db_cm_mhz: alpha,
            frequency_hz: f_mhz * 1e6,
            tgc_db_per_cm: tgc,
            gain_db: 10.0,
            dynamic_range_db: 100.0,
            ..UsParams::default()
        };
        let mut us = sim(&ph, params, 11);
        let f = us
            .render_new(&pose(&ph, 0.08, tip.z, 0.003, sagittal()))
            .unwrap();
        assert!(f.bone_mask.iter().all(|&m| m == 0), "bone-free region");
        // Muscle from 3 mm below the fat/muscle boundary to 2 mm above the bottom.
        let fat_end = ph.params().skin_thickness + ph.fat_thickness() - 0.003;
        let dz = f.axial_spacing_m;
        let rows = ((fat_end + 3e-3) / dz).ceil() as usize..f.height - (2e-3 / dz) as usize;
        let slope = slope_db_per_cm(&f, rows, params.dynamic_range_db);
        let expected = -2.0 * alpha * f_mhz + tgc;
        eprintln!(
            "α {alpha} dB/cm/MHz, f {f_mhz} MHz, TGC {tgc} dB/cm: slope {slope:.2} dB/cm, \
             expected {expected:.2}"
        );
        if tgc == 0.0 {
            assert!(
                (slope / expected - 1.0).abs() < 0.2,
                "{slope} vs {expected}"
            );
        } else {
            assert!((slope - expected).abs() < 0.5, "{slope} vs {expected}");
        }
    }
}

/// A landmark in the image plane maps back through its pixel position and the probe pose to its
/// ct position (within half a pixel); landmarks off the slab are not listed; a landmark behind
/// bone is flagged as shadowed.
#[test]
fn landmark_pixels_map_back_to_ct() {
    let ph = Arc::new(Phantom::generate(2));
    let mut us = sim(&ph, UsParams::default(), 9);
    let names = ph.landmarks();
    for name in ["L3_spinous_tip", "L3_lamina_right", "L3_transverse_right"] {
        let p = lm(&ph, name);
        let idx = names.iter().position(|l| l.name == name).unwrap();
        // Probe near the landmark: 4–6 mm off laterally, 1.5–2 mm off in elevation (sagittal:
        // elevation = ct x; transverse: elevation = −ct z).
        for (array, x, z) in [
            (sagittal(), p.x + 0.0015, p.z + 0.004),
            (transverse(), p.x - 0.006, p.z + 0.002),
        ] {
            let t = pose(&ph, x, z, 0.003, array);
            let f = us.render_new(&t).unwrap();
            let found = f.landmarks.iter().find(|l| l.index == idx);
            let dist_plane = t.inverse().transform_point(&p).y;
            let Some(l) = found else {
                panic!("{name} not listed (plane distance {dist_plane})");
            };
            assert_eq!(us.landmark_name(l.index), Some(name));
            assert!((l.distance_to_plane_m - dist_plane).abs() < 1e-12);
            let back = f.pixel_to_ct(l.row, l.col);
            // In-plane error: the only difference is the elevation offset.
            let probe = t.inverse().transform_point(&back);
            let want = t.inverse().transform_point(&p);
            assert!((probe.x - want.x).abs() <= 0.5 * f.lateral_spacing_m);
            assert!((probe.z - want.z).abs() <= 0.5 * f.axial_spacing_m);
            assert!((back - p).norm() <= dist_plane.abs() + 1e-9);
            assert!(!l.shadowed, "{name}: on its own surface, not shadowed");
        }
        // In the plane exactly: maps back to the point itself.
        let t = pose(&ph, p.x, p.z, 0.003, sagittal());
        let f = us.render_new(&t).unwrap();
        let l = f.landmarks.iter().find(|l| l.index == idx).unwrap();
        let back = f.pixel_to_ct(l.row, l.col);
        assert!((back - p).norm() < 1e-9);
        // Pixel position matches rounding to the nearest pixel centre within half a pixel.
        let (r, c) = (l.row.round(), l.col.round());
        let centre = f.pixel_to_ct(r, c);
        assert!((centre - p).norm() <= 0.5 * f.lateral_spacing_m.hypot(f.axial_spacing_m));
        // 10 mm out of plane (elevation = ct x for a sagittal probe): not listed.
        let far = pose(&ph, p.x + 0.010, p.z, 0.003, sagittal());
        let f = us.render_new(&far).unwrap();
        assert!(
            f.landmarks.iter().all(|l| l.index != idx),
            "{name} listed 10 mm off"
        );
        // Every listed landmark is inside the slab and the image.
        for l in &f.landmarks {
            assert!(l.distance_to_plane_m.abs() <= 0.001 + 0.002 + 1e-12);
            assert!((0.0..=(f.height - 1) as f64).contains(&l.row));
            assert!((0.0..=(f.width - 1) as f64).contains(&l.col));
        }
    }
    // Deep view: the L3 body centre lies behind the posterior elements.
    let deep = UsParams {
        depth_m: 0.15,
        ..UsParams::default()
    };
    let mut us = sim(&ph, deep, 9);
    let body = lm(&ph, "L3_body_centre");
    let f = us
        .render_new(&pose(&ph, body.x, body.z, 0.003, sagittal()))
        .unwrap();
    let l = f
        .landmarks
        .iter()
        .find(|l| us.landmark_name(l.index) == Some("L3_body_centre"))
        .expect("body centre listed in a 15 cm deep view");
    assert!(l.shadowed);
}

/// Same seed and pose: byte-identical frames (also from a second simulator and after rendering
/// other poses); another seed: different speckle, same geometry.
#[test]
fn deterministic_per_seed_and_pose() {
    let ph = Arc::new(Phantom::generate(4));
    let tip = lm(&ph, "L3_spinous_tip");
    let t = pose(&ph, tip.x, tip.z, 0.003, transverse());
    let other = pose(&ph, tip.x + 0.01, tip.z, 0.002, sagittal());
    let mut a = sim(&ph, UsParams::default(), 42);
    let mut b = UltrasoundSim::new((*ph).clone(), UsParams::default(), 42).unwrap();
    let fa = a.render_new(&t).unwrap();
    let mut reused = a.render_new(&other).unwrap();
    a.render(&t, &mut reused).unwrap();
    let fb = b.render_new(&t).unwrap();
    assert_eq!(fa, fb);
    assert_eq!(fa, reused);

    let mut c = sim(&ph, UsParams::default(), 43);
    let fc = c.render_new(&t).unwrap();
    let differ = fa
        .pixels
        .iter()
        .zip(&fc.pixels)
        .filter(|(x, y)| x != y)
        .count() as f64
        / fa.pixels.len() as f64;
    eprintln!("seed 42 vs 43: {:.0} % of pixels differ", differ * 100.0);
    assert!(differ > 0.5);
    assert_eq!(fa.bone_mask, fc.bone_mask);
    assert_eq!(fa.landmarks, fc.landmarks);
    // Similar brightness overall (same anatomy, other speckle).
    assert!((frame_mean(&fa) - frame_mean(&fc)).abs() < 3.0);

    // Speckle is anchored to the tissue: in bone-free muscle, a 0.05 mm elevation shift keeps
    // most of it, another seed does not.
    let lateral = pose(&ph, 0.07, tip.z, 0.003, sagittal());
    let mut shifted = lateral;
    shifted.translation.x += 0.00005;
    let f0 = a.render_new(&lateral).unwrap();
    let f1 = a.render_new(&shifted).unwrap();
    let f2 = c.render_new(&lateral).unwrap();
    let corr = correlation(&f0, &f1);
    let corr_seed = correlation(&f0, &f2);
    eprintln!("speckle correlation: 0.05 mm elevation shift {corr:.2}, other seed {corr_seed:.2}");
    assert!(corr > 0.7 && corr_seed.abs() < 0.2);
}

/// Correlation of two frames below 25 mm, each row's mean removed (the depth trend).
fn correlation(a: &UsFrame, b: &UsFrame) -> f64 {
    let r0 = (0.025 / a.axial_spacing_m) as usize;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for r in r0..a.height {
        let ra = &a.pixels[r * a.width..(r + 1) * a.width];
        let rb = &b.pixels[r * b.width..(r + 1) * b.width];
        let ma = ra.iter().map(|&v| v as f64).sum::<f64>() / a.width as f64;
        let mb = rb.iter().map(|&v| v as f64).sum::<f64>() / b.width as f64;
        for (&x, &y) in ra.iter().zip(rb) {
            let (x, y) = (x as f64 - ma, y as f64 - mb);
            sab += x * y;
            saa += x * x;
            sbb += y * y;
        }
    }
    sab / (saa * sbb).sqrt()
}
/// Bad parameters and poses give errors naming the problem, never a panic.
#[test]
fn bad_parameters_and_poses_are_errors() {
    let ph = Arc::new(Phantom::generate(1));
    let d = UsParams::default();
    let bad: Vec<(UsParams, &str)> = vec![
        (UsParams { width: 0, ..d }, "width"),
        (
            UsParams {
                height: 100_000,
                ..d
            },
            "height",
        ),
        (
            UsParams {
                aperture_m: 0.0,
                ..d
            },
            "aperture",
        ),
        (
            UsParams {
                depth_m: f64::NAN,
                ..d
            },
            "depth",
        ),
        (
            UsParams {
                frequency_hz: 7.5,
                ..d
            },
            "frequency",
        ),
        (
            UsParams {
                attenuation_db_cm_mhz: -0.5,
                ..d
            },
            "attenuation",
        ),
        (
            UsParams {
                slice_thickness_m: f64::INFINITY,
                ..d
            },
            "slice",
        ),
        (
            UsParams {
                landmark_margin_m: -1.0,
                ..d
            },
            "landmark",
        ),
        (
            UsParams {
                gain_db: 200.0,
                ..d
            },
            "gain",
        ),
        (
            UsParams {
                tgc_db_per_cm: -1.0,
                ..d
            },
            "TGC",
        ),
        (
            UsParams {
                dynamic_range_db: 5.0,
                ..d
            },
            "dynamic range",
        ),
        (
            UsParams {
                full_coupling_indentation_m: 0.0,
                ..d
            },
            "coupling",
        ),
    ];
    for (p, what) in bad {
        assert!(p.validate().is_err());
        let e = UltrasoundSim::new(ph.clone(), p, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains(what), "{e:?} should name {what}");
    }
    assert!(d.validate().is_ok());

    let mut us = sim(&ph, d, 0);
    let tip = lm(&ph, "L3_spinous_tip");
    let good = pose(&ph, tip.x, tip.z, 0.003, transverse());
    let mut frame = us.render_new(&good).unwrap();
    let before = frame.clone();
    let mut nan = good;
    nan.translation.x = f64::NAN;
    let e = us.render(&nan, &mut frame).unwrap_err().to_string();
    assert!(e.contains("finite"), "{e}");
    let mut inf = good;
    inf.rotation[(1, 2)] = f64::INFINITY;
    assert!(us.render(&inf, &mut frame).is_err());
    let mut scaled = good;
    scaled.rotation *= 2.0;
    let e = us.render(&scaled, &mut frame).unwrap_err().to_string();
    assert!(e.contains("orthonormal"), "{e}");
    let mut mirrored = good;
    mirrored.rotation.set_column(0, &-good.rotation.column(0));
    assert!(us.render(&mirrored, &mut frame).is_err());
    assert_eq!(frame, before, "a refused pose leaves the frame untouched");
    assert!(us.render_new(&nan).is_err());
    // A frame of the wrong size is resized, not a panic.
    let mut small = UsFrame::new(&UsParams {
        width: 32,
        height: 20,
        ..d
    });
    us.render(&good, &mut small).unwrap();
    assert_eq!(small, before);
}

/// Skin/fat and fat/muscle boundary echoes at their depths (±0.5 mm): the fat takes up the
/// indentation δ, so along the beam the skin/fat boundary is where the depth below the
/// undeformed skin reaches δ + skin thickness and the fat/muscle boundary where it reaches
/// skin + fat thickness.
#[test]
fn layer_boundary_echoes_at_their_depths() {
    let mut worst: f64 = 0.0;
    for ps in [0, 1, 4, 10] {
        let ph = Arc::new(Phantom::generate(ps));
        let tip = lm(&ph, "L3_spinous_tip");
        let skin = ph.params().skin_thickness;
        let fat = ph.fat_thickness();
        for (x, array) in [
            (0.06, sagittal()),
            (tip.x, transverse()),
            (-0.05, transverse()),
        ] {
            let mut us = sim(&ph, UsParams::default(), ps + 100);
            let delta = 0.0015;
            let f = us.render_new(&pose(&ph, x, tip.z, delta, array)).unwrap();
            let dz = f.axial_spacing_m;
            // Mean profile of the 17 central columns.
            let cols = 120..137;
            let profile: Vec<f64> = (0..f.height)
                .map(|r| {
                    mean(
                        &cols
                            .clone()
                            .map(|c| f.pixels[r * f.width + c] as f64)
                            .collect::<Vec<_>>(),
                    )
                })
                .collect();
            let (o, d) = scanline(&f, 128);
            let u = |z: f64| {
                let p = o + d * z;
                p.y - ph.skin_y(p.x, p.z)
            };
            let delta_c = u(0.0);
            for (what, tau) in [("skin/fat", delta_c + skin), ("fat/muscle", skin + fat)] {
                // Depth where u crosses tau (u increases along the beam here).
                let (mut a, mut b) = (0.0, 0.05);
                for _ in 0..60 {
                    let m = 0.5 * (a + b);
                    if u(m) < tau {
                        a = m;
                    } else {
                        b = m;
                    }
                }
                let expect = 0.5 * (a + b);
                let lo = ((expect - 1.5e-3) / dz).floor().max(1.0) as usize;
                let hi = ((expect + 1.5e-3) / dz).ceil() as usize;
                let (r_peak, peak) = (lo..=hi).map(|r| (r, profile[r])).fold((0, -1.0), |b, x| {
                    if x.1 > b.1 {
                        x
                    } else {
                        b
                    }
                });
                let err = r_peak as f64 * dz - expect;
                // Visible: well above the tissue 1–2.5 mm to either side.
                let side = |from: f64, to: f64| {
                    let r0 = ((expect + from) / dz).round().max(0.0) as usize;
                    let r1 = ((expect + to) / dz).round().max(0.0) as usize;
                    mean(&profile[r0.min(r1)..=r0.max(r1)])
                };
                let (above, below) = (side(-2.5e-3, -1e-3), side(1e-3, 2.5e-3));
                eprintln!(
                    "phantom {ps} x {x:.3} {what}: expected {:.2} mm, echo {:.2} mm, \
                     peak {peak:.0}, above {above:.0}, below {below:.0}",
                    expect * 1e3,
                    r_peak as f64 * dz * 1e3
                );
                assert!(err.abs() <= 0.5e-3, "phantom {ps} {what}: {err}");
                // Visible: brighter than the tissue on both sides, far brighter than the fat.
                assert!(peak > above.max(below) + 12.0, "phantom {ps} {what}");
                assert!(peak > above.min(below) + 60.0, "phantom {ps} {what}");
                worst = worst.max(err.abs());
            }
        }
    }
    eprintln!("worst layer echo depth error {:.3} mm", worst * 1e3);
}

/// Once the frame exists, rendering allocates nothing (the hot path), at any pose.
#[test]
fn render_does_not_allocate() {
    let ph = Arc::new(Phantom::generate(2));
    let tip = lm(&ph, "L3_spinous_tip");
    let mut us = sim(&ph, UsParams::default(), 1);
    let mut frame = us.new_frame();
    let poses = [
        pose(&ph, tip.x, tip.z, 0.003, transverse()),
        pose(&ph, tip.x, tip.z, 0.003, sagittal()),
        pose(&ph, 0.08, tip.z, 0.0005, sagittal()),
        pose(&ph, tip.x, tip.z, -0.01, transverse()),
    ];
    let allocations = telecho_core::alloc_count::allocations_during(|| {
        for t in &poses {
            us.render(t, &mut frame).unwrap();
        }
    });
    assert_eq!(allocations, 0);
    assert!(!frame.contact);
}

/// Odd image sizes and extreme but valid settings render without panicking, with consistent
/// buffers; a frame is resized to the simulator's size.
#[test]
fn odd_sizes_and_extreme_settings_render() {
    let ph = Arc::new(Phantom::generate(6));
    let tip = lm(&ph, "L3_spinous_tip");
    for (w, h, depth, freq) in [
        (16, 16, 0.01, 1e6),
        (257, 257, 0.3, 20e6),
        (100, 301, 0.07, 7.5e6),
        (33, 1024, 0.15, 3e6),
    ] {
        let params = UsParams {
            width: w,
            height: h,
            depth_m: depth,
            frequency_hz: freq,
            aperture_m: 0.005 + 0.0001 * w as f64,
            ..UsParams::default()
        };
        let mut us = sim(&ph, params, 2);
        let mut frame = UsFrame::new(&UsParams::default());
        for t in [
            pose(&ph, tip.x, tip.z, 0.003, transverse()),
            pose(&ph, tip.x, tip.z, 0.02, sagittal()),
            Transform::new(Matrix3::identity(), Vector3::new(1e9, -1e9, 1e9)),
            Transform::from_xyz_rpy(
                [tip.x, ph.skin_y(tip.x, tip.z) + 0.002, tip.z],
                [1.9, -0.4, 1.2],
            )
            .unwrap(),
        ] {
            us.render(&t, &mut frame).unwrap();
            assert_eq!((frame.width, frame.height), (w, h));
            assert_eq!(frame.pixels.len(), w * h);
            assert_eq!(frame.bone_mask.len(), w * h);
            assert_eq!(frame.bone_depth_m.len(), w);
        }
    }
    // Probe upside down inside the body (beam toward the back): the air above ends the image.
    let mut us = sim(&ph, UsParams::default(), 2);
    let flip = Matrix3::from_columns(&[Vector3::x(), Vector3::z(), -Vector3::y()]);
    let t = Transform::new(
        flip,
        Vector3::new(tip.x, ph.skin_y(tip.x, tip.z) + 0.02, tip.z),
    );
    let f = us.render_new(&t).unwrap();
    assert!(f.contact);
    let dz = f.axial_spacing_m;
    let deep = ((0.02 + 0.002) / dz) as usize;
    let tail: Vec<f64> = (deep..f.height)
        .flat_map(|r| {
            f.pixels[r * f.width..(r + 1) * f.width]
                .iter()
                .map(|&p| p as f64)
        })
        .collect();
    assert!(mean(&tail) < 8.0, "beyond the skin, air: {}", mean(&tail));
}
