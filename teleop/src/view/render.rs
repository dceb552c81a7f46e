//! The console's kiss3d view: the arm, the measured and the predicted ("ghost") probe, the local
//! skin patch from the contact model, the force vector, the ultrasound plane, the registered
//! CBCT bone surface and the landmarks in 3D; beside them the live ultrasound image, a force
//! gauge and the link figures. The same drawing goes to a window ([`ConsoleView::draw_window`])
//! or off screen ([`screenshot`]); both need a Vulkan, Metal, DX12 or GL driver (Mesa's
//! `lavapipe` renders on the CPU).
//!
//! Coordinates: the base frame is z-up (REP 103), kiss3d is y-up; a base point `(x, y, z)` is
//! drawn at `(x, z, −y)` (a proper rotation), in metres.

use std::sync::Arc;

use kiss3d::prelude::*;
use nalgebra::Vector3;
use telecho_core::Transform;

use super::model::{SceneModel, UsImage};
use crate::Error;

/// Probe housing drawn around the tip: lateral (x), elevation (y), height behind the face (m).
const PROBE_BOX_M: [f64; 3] = [0.038, 0.012, 0.07];
/// Force arrow length per newton, m.
const ARROW_M_PER_N: f64 = 0.004;
/// Side of the skin patch drawn around the contact point, m.
const SKIN_PATCH_M: f64 = 0.08;

fn v3(p: &Vector3<f64>) -> Vec3 {
    Vec3::new(p.x as f32, p.z as f32, -p.y as f32)
}

fn colour(r: f32, g: f32, b: f32) -> Color {
    Color::new(r, g, b, 1.0)
}

/// Green below 60 % of the limit, amber to 85 %, red above.
fn gauge_colour(share: f64) -> Color {
    if share < 0.6 {
        colour(0.2, 0.85, 0.3)
    } else if share < 0.85 {
        colour(1.0, 0.7, 0.1)
    } else {
        colour(1.0, 0.2, 0.15)
    }
}

/// The console's view state: cameras, the 2D ultrasound panel and its texture.
pub struct ConsoleView {
    camera: OrbitCamera3d,
    camera_2d: FixedView2d,
    scene: SceneNode3d,
    scene_2d: SceneNode2d,
    us_panel: Option<SceneNode2d>,
    /// The ultrasound image on its plane in 3D, textured with the same frame as the panel.
    us_quad: Option<SceneNode3d>,
    us_shown: Option<u64>,
    font: Arc<Font>,
    width: u32,
    height: u32,
}

impl std::fmt::Debug for ConsoleView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleView")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("us_shown", &self.us_shown)
            .finish_non_exhaustive()
    }
}

impl ConsoleView {
    /// A view of `width × height` pixels on a sphere of `radius` m around `centre` (base frame),
    /// seen from behind and above the patient's side, the whole sphere in the left two thirds
    /// (the ultrasound panel takes the right third).
    pub fn new(width: u32, height: u32, centre: Vector3<f64>, radius: f64) -> Self {
        const FOV: f32 = 0.7;
        let aspect = (width as f32 * 0.62) / height as f32;
        let half = (FOV / 2.0).tan() * aspect.min(1.0);
        let dist = (radius as f32 / half * 1.1).clamp(0.2, 10.0);
        let at = v3(&centre);
        // Shift the target right so the scene sits left of the panel.
        let dir = Vec3::new(0.75, 0.6, 0.95).normalize();
        let right = Vec3::Y.cross(dir).normalize();
        let at = at + right * (dist * (FOV / 2.0).tan() * (width as f32 / height as f32) * 0.3);
        let eye = at + dir * dist;
        let mut scene = SceneNode3d::empty();
        scene
            .add_light(Light::point(50.0))
            .set_position(at + Vec3::new(0.5, 2.0, 0.5));
        Self {
            camera: OrbitCamera3d::new_with_frustum(FOV, 0.01, 20.0, eye, at),
            camera_2d: FixedView2d::new(CoordinateSystem2d::TopLeftDown, false),
            scene,
            scene_2d: SceneNode2d::empty(),
            us_panel: None,
            us_quad: None,
            us_shown: None,
            font: Font::default(),
            width,
            height,
        }
    }

    /// Draws `model` into `window` (immediate-mode lines, points and text, plus the ultrasound
    /// panel node) and renders one frame. Returns false when the window was closed.
    pub async fn draw_window(&mut self, window: &mut Window, model: &SceneModel) -> bool {
        self.draw(window, model);
        window
            .render(
                Some(&mut self.scene),
                Some(&mut self.scene_2d),
                Some(&mut self.camera),
                Some(&mut self.camera_2d),
                None,
                None,
            )
            .await
    }

    fn draw(&mut self, window: &mut Window, model: &SceneModel) {
        let (w, h) = (self.width as f32, self.height as f32);
        // Base frame axes (x red, y green, z blue), 0.1 m.
        let o = Vector3::zeros();
        for (axis, c) in [
            (Vector3::x(), colour(0.9, 0.25, 0.2)),
            (Vector3::y(), colour(0.3, 0.85, 0.3)),
            (Vector3::z(), colour(0.3, 0.5, 1.0)),
        ] {
            window.draw_line(v3(&o), v3(&(axis * 0.1)), c, 3.0, false);
        }
        // Arm: links as thick lines, joints as dots.
        let grey = colour(0.75, 0.77, 0.8);
        for pair in model.arm.windows(2) {
            window.draw_line(v3(&pair[0]), v3(&pair[1]), grey, 7.0, false);
        }
        for p in &model.arm {
            window.draw_point(v3(p), colour(0.35, 0.4, 0.5), 12.0);
        }
        // Skin patch and normal from the contact model.
        if let Some(c) = &model.contact {
            let n = c.normal.into_inner();
            let a = if n.x.abs() < 0.9 {
                Vector3::x()
            } else {
                Vector3::y()
            };
            let u = n.cross(&a).normalize();
            let v = n.cross(&u);
            let skin = colour(0.93, 0.72, 0.6);
            let half = SKIN_PATCH_M / 2.0;
            for i in 0..=4 {
                let s = -half + SKIN_PATCH_M * f64::from(i) / 4.0;
                let (p0, p1) = (c.point_m + u * s - v * half, c.point_m + u * s + v * half);
                window.draw_line(v3(&p0), v3(&p1), skin, 2.0, false);
                let (q0, q1) = (c.point_m + v * s - u * half, c.point_m + v * s + u * half);
                window.draw_line(v3(&q0), v3(&q1), skin, 2.0, false);
            }
            window.draw_line(
                v3(&c.point_m),
                v3(&(c.point_m + n * 0.03)),
                colour(0.9, 0.5, 0.4),
                2.0,
                false,
            );
        }
        // Bone surface and landmarks.
        let bone = colour(0.95, 0.93, 0.85);
        for p in &model.bone_points {
            window.draw_point(v3(p), bone, 2.0);
        }
        for l in &model.landmarks {
            window.draw_point(v3(&l.xyz), colour(0.9, 0.2, 0.9), 9.0);
        }
        // Probes: measured (cyan) and predicted (amber).
        if let Some(g) = &model.ghost {
            probe_box(window, g, colour(1.0, 0.65, 0.1), 2.0);
        }
        if let Some(p) = &model.probe {
            probe_box(window, p, colour(0.2, 0.85, 1.0), 4.0);
            let (_, share) = model.gauge();
            let tip = p.translation;
            // The force on the probe, drawn from the tip.
            window.draw_line(
                v3(&tip),
                v3(&(tip + model.force_n * ARROW_M_PER_N)),
                gauge_colour(share),
                5.0,
                false,
            );
        }
        // Ultrasound plane in 3D (outlined, textured with the image), image in the panel.
        if let Some(us) = &model.us {
            let c = us.corners_base();
            for i in 0..4 {
                window.draw_line(
                    v3(&c[i]),
                    v3(&c[(i + 1) % 4]),
                    colour(0.3, 1.0, 0.5),
                    2.0,
                    false,
                );
            }
        }
        self.update_us_panel(model.us.as_ref());
        // Force gauge: a vertical bar at the left edge, setpoint tick in white, limit at the top.
        let (axial, share) = model.gauge();
        let (x, y0, y1) = (30.0, h - 40.0, h - 40.0 - 0.5 * h);
        window.draw_line_2d(
            Vec2::new(x, y0),
            Vec2::new(x, y1),
            colour(0.2, 0.2, 0.25),
            18.0,
        );
        let fill = y0 + (y1 - y0) * share as f32;
        if share > 0.0 {
            window.draw_line_2d(
                Vec2::new(x, y0),
                Vec2::new(x, fill),
                gauge_colour(share),
                18.0,
            );
        }
        if model.force_limit_n > 0.0 && model.force_setpoint_n > 0.0 {
            let s = (model.force_setpoint_n / model.force_limit_n).clamp(0.0, 1.0) as f32;
            let ys = y0 + (y1 - y0) * s;
            window.draw_line_2d(Vec2::new(x - 14.0, ys), Vec2::new(x + 14.0, ys), WHITE, 3.0);
        }
        let label = format!("{axial:.1} N");
        window.draw_text(&label, Vec2::new(8.0, y1 - 34.0), 26.0, &self.font, WHITE);
        // Status text, top left.
        for (i, line) in model.status_lines().iter().enumerate() {
            window.draw_text(
                line,
                Vec2::new(12.0, 10.0 + 26.0 * i as f32),
                22.0,
                &self.font,
                colour(0.9, 0.92, 0.95),
            );
        }
        if model.us.is_some() {
            window.draw_text(
                "ultrasound",
                Vec2::new(w * 0.64, h * 0.12 - 30.0),
                22.0,
                &self.font,
                colour(0.3, 1.0, 0.5),
            );
        }
    }

    /// Keeps the 2D panel and the 3D image plane on the newest frame: a new texture (and plane
    /// pose) only when the frame changed.
    fn update_us_panel(&mut self, us: Option<&UsImage>) {
        let Some(us) = us else {
            if let Some(p) = &mut self.us_panel {
                p.set_visible(false);
            }
            if let Some(q) = &mut self.us_quad {
                q.set_visible(false);
            }
            return;
        };
        if self.us_shown == Some(us.seq) {
            return;
        }
        let (w, h) = (self.width as f32, self.height as f32);
        // Panel: right third of the view, the image's physical aspect ratio.
        let img_w = us.lateral_spacing_m * us.width as f64;
        let img_h = us.axial_spacing_m * us.height as f64;
        let panel_h = 0.8 * h;
        let panel_w = (panel_h as f64 * img_w / img_h).min(0.34 * w as f64) as f32;
        let panel_h = (panel_w as f64 * img_h / img_w) as f32;
        let mut rgba = Vec::with_capacity(us.pixels.len() * 4);
        for &g in &us.pixels {
            rgba.extend_from_slice(&[g, g, g, 255]);
        }
        let texture = Texture::new(
            us.width as u32,
            us.height as u32,
            &rgba,
            wgpu::TextureFormat::Rgba8UnormSrgb,
            wgpu::AddressMode::ClampToEdge,
            wgpu::FilterMode::Linear,
            false,
            1,
        );
        let centre = Vec2::new(w * 0.64 + panel_w / 2.0, h * 0.12 + panel_h / 2.0);
        let panel = self
            .us_panel
            .get_or_insert_with(|| self.scene_2d.add_rectangle(1.0, 1.0).set_color(WHITE));
        panel.set_local_scale(panel_w, panel_h);
        panel.set_position(centre);
        panel.set_texture(texture.clone());
        panel.set_visible(true);
        // kiss3d's 2 × 2-point quad: vertex k has texture coordinates (1 − k % 2, 1 − k / 2), and
        // (0, 0) is the image's first pixel (row 0 at the probe face, column 0).
        let [tl, tr, br, bl] = us.corners_base().map(|c| v3(&c));
        let corners = [br, bl, tr, tl];
        let quad = self
            .us_quad
            .get_or_insert_with(|| self.scene.add_quad_with_vertices(&corners, 2, 2));
        quad.modify_vertices(&mut |v| v.copy_from_slice(&corners));
        quad.set_texture(texture);
        quad.set_visible(true);
        self.us_shown = Some(us.seq);
    }
}

/// The console's keys (kiss3d's key codes stay inside this module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleKey {
    /// Move the target −x of the probe (lateral).
    Left,
    /// Move the target +x of the probe.
    Right,
    /// Move the target +y of the probe (elevation).
    Up,
    /// Move the target −y of the probe.
    Down,
    /// Move the target +z of the probe (into the patient).
    In,
    /// Move the target −z of the probe.
    Out,
    /// Force setpoint up.
    ForceUp,
    /// Force setpoint down.
    ForceDown,
    /// Take the lease.
    Acquire,
    /// Release the lease.
    Release,
    /// E-stop.
    EStop,
    /// Reset after a stop.
    Reset,
    /// Ask the lease holder to hand the lease over.
    TakeOver,
    /// Hand the lease to the operator asking for it.
    Yield,
    /// Refuse the take-over asked of us.
    Refuse,
}

impl ConsoleKey {
    fn code(self) -> &'static [Key] {
        match self {
            ConsoleKey::Left => &[Key::Left],
            ConsoleKey::Right => &[Key::Right],
            ConsoleKey::Up => &[Key::Up],
            ConsoleKey::Down => &[Key::Down],
            ConsoleKey::In => &[Key::W],
            ConsoleKey::Out => &[Key::S],
            ConsoleKey::ForceUp => &[Key::Equals, Key::Add],
            ConsoleKey::ForceDown => &[Key::Minus, Key::Subtract],
            ConsoleKey::Acquire => &[Key::L],
            ConsoleKey::Release => &[Key::K],
            ConsoleKey::EStop => &[Key::Space],
            ConsoleKey::Reset => &[Key::R],
            ConsoleKey::TakeOver => &[Key::T],
            ConsoleKey::Yield => &[Key::Y],
            ConsoleKey::Refuse => &[Key::N],
        }
    }

    const ALL: [ConsoleKey; 15] = [
        ConsoleKey::Left,
        ConsoleKey::Right,
        ConsoleKey::Up,
        ConsoleKey::Down,
        ConsoleKey::In,
        ConsoleKey::Out,
        ConsoleKey::ForceUp,
        ConsoleKey::ForceDown,
        ConsoleKey::Acquire,
        ConsoleKey::Release,
        ConsoleKey::EStop,
        ConsoleKey::Reset,
        ConsoleKey::TakeOver,
        ConsoleKey::Yield,
        ConsoleKey::Refuse,
    ];
}

/// An on-screen console: a window with the [`ConsoleView`] in it.
pub struct ConsoleWindow {
    window: Window,
    view: Option<ConsoleView>,
    width: u32,
    height: u32,
}

impl std::fmt::Debug for ConsoleWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleWindow")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl ConsoleWindow {
    /// Opens a window (needs a display server and a graphics driver).
    pub async fn open(title: &str, width: u32, height: u32) -> Self {
        let mut window = Window::new_with_size(title, width, height).await;
        window.set_background_color(colour(0.07, 0.08, 0.11));
        Self {
            window,
            view: None,
            width,
            height,
        }
    }

    /// Keys pressed since the last call.
    pub fn pressed(&mut self) -> Vec<ConsoleKey> {
        let mut out = Vec::new();
        for mut ev in self.window.events().iter() {
            if let WindowEvent::Key(key, Action::Press, _) = ev.value {
                if let Some(k) = ConsoleKey::ALL.iter().find(|k| k.code().contains(&key)) {
                    out.push(*k);
                    // Ours, not the camera's (arrows would also turn the orbit camera).
                    ev.inhibited = true;
                }
            }
        }
        out
    }

    /// True while `key` is held down.
    pub fn held(&self, key: ConsoleKey) -> bool {
        key.code()
            .iter()
            .any(|k| self.window.get_key(*k) == Action::Press)
    }

    /// Draws `model` and shows the frame; false once the window was closed.
    pub async fn show(&mut self, model: &SceneModel) -> bool {
        let (w, h) = (self.width, self.height);
        // Framed on the first data; until then around the base.
        let view = match (&mut self.view, model.bounds()) {
            (Some(v), _) => v,
            (None, Some((centre, radius))) => {
                self.view.insert(ConsoleView::new(w, h, centre, radius))
            }
            (None, None) => {
                let mut waiting = ConsoleView::new(w, h, Vector3::zeros(), 1.0);
                return waiting.draw_window(&mut self.window, model).await;
            }
        };
        view.draw_window(&mut self.window, model).await
    }
}

/// The probe housing as 12 edges: the face rectangle at the tip and the same rectangle
/// `PROBE_BOX_M[2]` behind it (along −z of the probe frame).
fn probe_box(window: &mut Window, t: &Transform, c: Color, width: f32) {
    let [lx, ly, lz] = PROBE_BOX_M;
    let (hx, hy) = (lx / 2.0, ly / 2.0);
    let corner = |i: usize, back: bool| {
        let x = if i == 0 || i == 3 { -hx } else { hx };
        let y = if i < 2 { -hy } else { hy };
        let z = if back { -lz } else { 0.0 };
        v3(&t.transform_point(&Vector3::new(x, y, z)))
    };
    for i in 0..4 {
        let j = (i + 1) % 4;
        window.draw_line(corner(i, false), corner(j, false), c, width, false);
        window.draw_line(corner(i, true), corner(j, true), c, width, false);
        window.draw_line(corner(i, false), corner(i, true), c, width, false);
    }
}

/// An 8-bit RGB image, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbPixels {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// `width × height × 3` bytes.
    pub data: Vec<u8>,
}

thread_local! {
    /// The off-screen surface of this thread, kept for the next screenshot: kiss3d's GPU
    /// context is global to the process, and a second surface on a fresh device trips over
    /// pipeline state cached for the first one. Never dropped (`ManuallyDrop`): kiss3d's drop
    /// reaches for thread-locals that are already gone when the thread ends; the process ends
    /// soon after and takes the surface with it.
    static SURFACE: std::cell::RefCell<Option<std::mem::ManuallyDrop<OffscreenSurface>>> =
        const { std::cell::RefCell::new(None) };
}

/// Renders `model` off screen (no window, no display server) to an RGB image of
/// `width × height`. Fails when no graphics adapter is available, and when a thread asks for a
/// second size (its surface is reused, see above).
pub fn screenshot(model: &SceneModel, width: u32, height: u32) -> Result<RgbPixels, Error> {
    let work = async {
        let kept = SURFACE.with(|s| s.borrow_mut().take());
        let mut surface = match kept {
            Some(surface) => surface,
            None => {
                let mut surface = OffscreenSurface::new(width, height).await;
                surface.set_background_color(colour(0.07, 0.08, 0.11));
                std::mem::ManuallyDrop::new(surface)
            }
        };
        let (w0, h0) = (surface.width(), surface.height());
        if (w0, h0) != (width, height) {
            SURFACE.with(|s| *s.borrow_mut() = Some(surface));
            return Err(Error::view(format!(
                "this thread renders off screen at {w0} × {h0}; {width} × {height} needs another \
                 process"
            )));
        }
        let (centre, radius) = model.bounds().unwrap_or((Vector3::zeros(), 1.0));
        let mut view = ConsoleView::new(width, height, centre, radius);
        // Two frames: the first uploads the textures.
        for _ in 0..2 {
            view.draw(surface.window_mut(), model);
            surface
                .render(
                    Some(&mut view.scene),
                    Some(&mut view.scene_2d),
                    Some(&mut view.camera),
                    Some(&mut view.camera_2d),
                    None,
                    None,
                )
                .await;
        }
        let img = surface.snap_image();
        SURFACE.with(|s| *s.borrow_mut() = Some(surface));
        Ok(img)
    };
    let img = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        kiss3d::pollster::block_on(work)
    }))
    .map_err(|_| Error::view("no graphics adapter to render with (install a Vulkan or GL driver, e.g. Mesa's mesa-vulkan-drivers)"))??;
    let (w, h) = (img.width(), img.height());
    let data = img.into_raw();
    if data.len() != (w as usize) * (h as usize) * 3 {
        return Err(Error::view("rendered image has the wrong size"));
    }
    Ok(RgbPixels {
        width: w,
        height: h,
        data,
    })
}
