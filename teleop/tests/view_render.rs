//! The console's 3D view rendered off screen (`view::render::screenshot`): the ultrasound image
//! lies on its plane in 3D, textured the right way up. Needs a graphics driver (Mesa's lavapipe,
//! `mesa-vulkan-drivers`, which CI installs); without one the test skips, unless
//! `TELECHO_REQUIRE_PEERS=1`.
#![cfg(feature = "view")]

use nalgebra::{Matrix3, Vector3};
use telecho_core::peers::missing_peer;
use telecho_core::Transform;
use telecho_teleop::view::render::{screenshot, RgbPixels};
use telecho_teleop::view::{SceneModel, UsImage};

const W: u32 = 640;
const H: u32 = 360;

/// A scene with only a 38 × 70 mm ultrasound image under a probe looking straight down (base
/// −z) at 0.5 m in front of the robot; `bright(row)` says which rows are white.
fn scene(bright: impl Fn(usize) -> bool) -> SceneModel {
    let (w, h) = (128usize, 128usize);
    let pixels = (0..h)
        .flat_map(|r| std::iter::repeat_n(if bright(r) { 255 } else { 0 }, w))
        .collect();
    // Probe x along base x, beam (probe z) along base −z.
    let rotation = Matrix3::from_columns(&[Vector3::x(), -Vector3::y(), -Vector3::z()]);
    let mut m = SceneModel::new(20.0);
    m.us = Some(UsImage {
        seq: 1,
        width: w,
        height: h,
        pixels,
        lateral_spacing_m: 0.038 / (w - 1) as f64,
        axial_spacing_m: 0.07 / (h - 1) as f64,
        t_base_probe: Transform::new(rotation, Vector3::new(0.5, 0.0, 0.3)),
    });
    m
}

/// Pixels brighter than the background in the 3D part of the view (left of the 2D panel), and
/// the mean screen row of them.
fn bright_in_3d(img: &RgbPixels) -> (usize, f64) {
    let (mut n, mut rows) = (0usize, 0.0f64);
    for y in 0..img.height as usize {
        // Skip the status text at the top; the panel starts at 64 % of the width.
        if y < 80 {
            continue;
        }
        for x in 0..(img.width as usize * 6 / 10) {
            let i = 3 * (y * img.width as usize + x);
            if img.data[i..i + 3].iter().all(|&c| c > 120) {
                n += 1;
                rows += y as f64;
            }
        }
    }
    (n, rows / n.max(1) as f64)
}

#[test]
fn the_ultrasound_image_is_drawn_on_its_plane_right_way_up() {
    if !telecho_testkit::have_vulkan_driver() {
        missing_peer("a Vulkan driver", "apt-get install mesa-vulkan-drivers");
        return;
    }
    let shot = |m: &SceneModel| screenshot(m, W, H).expect("renders off screen");
    let (dark, _) = bright_in_3d(&shot(&scene(|_| false)));
    let (top, top_row) = bright_in_3d(&shot(&scene(|r| r < 64)));
    let (bottom, bottom_row) = bright_in_3d(&shot(&scene(|r| r >= 64)));
    println!(
        "bright pixels in 3D: black image {dark}, face half white {top} (mean row {top_row:.0}), \
         deep half white {bottom} (mean row {bottom_row:.0})"
    );
    // The image shows in 3D, not only in the panel: each white half lights up hundreds of pixels
    // that a black image leaves dark.
    assert!(
        top > dark + 300 && bottom > dark + 300,
        "{dark} {top} {bottom}"
    );
    // The right way up: the probe looks down, so the rows at the face are drawn above the deep
    // rows on screen.
    assert!(
        top_row + 10.0 < bottom_row,
        "face rows at screen row {top_row:.0}, deep rows at {bottom_row:.0}"
    );
}
