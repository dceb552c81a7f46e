//! CNN bone-surface and landmark detector run through `ort` (tract backend by default, ONNX
//! Runtime selectable at run time).
//!
//! # The model
//!
//! `models/bone_net.onnx` (trained by `models/train_bone_net.py`, recipe in `models/README.md`)
//! takes `image`, `1 × 1 × 256 × 256` `f32` (grey level × `scale` + `offset`, from the sidecar
//! `models/bone_net.json`), and gives at half resolution `bone`, `1 × 1 × 128 × 128`, the
//! probability that a pixel is on the bone surface, and `landmarks`, `1 × 4 × 128 × 128`, one
//! heatmap per [`LandmarkClass`]. Output pixel `(i, j)` stands for input position
//! `(row, col) = (s·i + (s − 1)/2, s·j + (s − 1)/2)`, `s` the output stride (2). Both files are
//! compiled into the library ([`BUNDLED_MODEL`], [`BUNDLED_SIDECAR`]); [`CnnDetector::from_file`]
//! loads another model with its sidecar.
//!
//! # Decoding
//!
//! * **Bone profile**: in each output column the most probable row; bone when its probability is
//!   at least [`CnnConfig::bone_threshold`], the row refined by a parabola through the
//!   probabilities of that row and its neighbours; each input column takes the profile of the
//!   output columns either side of it, linearly interpolated (the nearer one where only one has
//!   bone or their rows differ by more than 2 output pixels). Confidence = probability.
//! * **Landmarks**: per class, the local maxima of the heatmap over a
//!   `(2·nms_radius_px + 1)²` window that reach their class's threshold
//!   ([`CnnConfig::landmark_thresholds`]), refined to the centroid of the 3 × 3 heat around them;
//!   then, across classes, a candidate within [`CnnConfig::cross_class_radius_m`] of a
//!   better-scoring one is dropped (one structure, one class).
//!
//! # Backends
//!
//! `ort`'s API table is global to the process: the first model loaded picks the [`Backend`], and
//! asking for another one later is an error ([`init_backend`]). [`Backend::Tract`] is pure Rust
//! (`ort-tract`) and always available. [`Backend::OnnxRuntime`] loads `libonnxruntime.so.*` at
//! run time with `libloading` ([`find_onnxruntime`]: an explicit path, `TELECHO_ORT_LIB`, or the
//! PyPI `onnxruntime` package's `capi/` folder) and takes its API table through
//! `OrtGetApiBase()->GetApi(ORT_API_VERSION)`.
//!
//! `ort` 2.0.0-rc.14 is built here for C API 24 (ONNX Runtime 1.24). A runtime that provides it
//! (1.24 or later) is used as is. ONNX Runtime 1.23 provides API 23: its table is used for every
//! function of API ≤ 23, and of the API-24 functions the one `ort` calls on the inference path,
//! `GetTensorElementTypeAndShapeDataReference`, is provided here on top of API-23 calls; the other
//! API-24 entries answer "not implemented". Older runtimes are refused with their version.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ndarray::Array4;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorRef, ValueType};
use serde::Deserialize;

use crate::detect::{Detector, FrameDetection, ImageGeometry, LandmarkCandidate, LandmarkClass};
use crate::error::ErrorKind;
use crate::Error;

/// The trained model, `models/bone_net.onnx`.
pub const BUNDLED_MODEL: &[u8] = include_bytes!("../../models/bone_net.onnx");
/// Its sidecar, `models/bone_net.json` (input scaling, output stride, classes, decoding
/// thresholds, training recipe).
pub const BUNDLED_SIDECAR: &str = include_str!("../../models/bone_net.json");
/// Environment variable naming the ONNX Runtime shared library to load.
pub const ORT_LIB_ENV: &str = "TELECHO_ORT_LIB";

fn invalid(msg: impl Into<String>) -> Error {
    ErrorKind::Invalid(msg.into()).into()
}

/// Inference backend of `ort`, chosen once per process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `ort-tract`: pure Rust, always available (the default).
    Tract,
    /// ONNX Runtime loaded from this shared library (`libonnxruntime.so.*`).
    OnnxRuntime(PathBuf),
}

impl Backend {
    /// `tract`, or `onnxruntime` (also `ort`) with the library from [`find_onnxruntime`]
    /// (`ort_lib` first).
    pub fn from_name(name: &str, ort_lib: Option<&Path>) -> Result<Self, Error> {
        match name.trim().to_ascii_lowercase().as_str() {
            "tract" => Ok(Backend::Tract),
            "onnxruntime" | "ort" | "onnx-runtime" => {
                Ok(Backend::OnnxRuntime(find_onnxruntime(ort_lib)?))
            }
            other => Err(invalid(format!(
                "unknown inference backend {other:?}: expected `tract` or `onnxruntime`"
            ))),
        }
    }

    /// `"tract"` or `"onnxruntime"`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Tract => "tract",
            Backend::OnnxRuntime(_) => "onnxruntime",
        }
    }

    fn same_as(&self, other: &Backend) -> bool {
        match (self, other) {
            (Backend::Tract, Backend::Tract) => true,
            (Backend::OnnxRuntime(a), Backend::OnnxRuntime(b)) => {
                let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
                canon(a) == canon(b)
            }
            _ => false,
        }
    }
}

/// The ONNX Runtime library to load: `explicit` when given, else `$TELECHO_ORT_LIB`, else the
/// newest `libonnxruntime.so*` in the `capi/` folder of the PyPI `onnxruntime` package that
/// `python3` imports. Errors, naming what was tried, when none exists.
pub fn find_onnxruntime(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(invalid(format!(
                "ONNX Runtime library {} does not exist",
                p.display()
            )))
        };
    }
    if let Some(p) = std::env::var_os(ORT_LIB_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(invalid(format!(
                "{ORT_LIB_ENV}={} does not name a file",
                p.display()
            )))
        };
    }
    onnxruntime_from_python().ok_or_else(|| {
        invalid(format!(
            "no ONNX Runtime library found: pass its path (--ort-lib), set {ORT_LIB_ENV}, or \
             `python3 -m pip install onnxruntime` (its capi/ folder ships libonnxruntime.so)"
        ))
    })
}

/// The newest `libonnxruntime.so*` of the PyPI `onnxruntime` package, if `python3` imports it.
pub fn onnxruntime_from_python() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim()).join("capi");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    // Longest name first: `libonnxruntime.so.1.23.2` over `libonnxruntime.so`.
    libs.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    libs.into_iter().next()
}

/// What [`init_backend`] set up for the process.
#[derive(Debug)]
struct Runtime {
    version: String,
    env: ort::environment::Environment,
}

/// `None` before the first initialisation; then the backend and the outcome (an error after the
/// API was set cannot be undone: later calls get the same error).
type State = Option<(Backend, Result<&'static Runtime, String>)>;
static STATE: Mutex<State> = Mutex::new(None);

/// The backend this process uses, `None` before the first model was loaded.
pub fn active_backend() -> Option<Backend> {
    let state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    state.as_ref().map(|(b, _)| b.clone())
}

/// Sets `backend` up for this process (once; later calls with the same backend are free) and
/// returns a description of it (e.g. `ONNX Runtime 1.23.2`). Errors when another backend is
/// already in use — `ort`'s API table is global — or when the backend cannot be loaded.
pub fn init_backend(backend: &Backend) -> Result<String, Error> {
    runtime(backend).map(|r| r.version.clone())
}

fn runtime(backend: &Backend) -> Result<&'static Runtime, Error> {
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((active, outcome)) = state.as_ref() {
        if !active.same_as(backend) {
            return Err(invalid(format!(
                "this process already runs the {} inference backend{}; `ort` allows one backend \
                 per process, so {} cannot be used as well (run it in a separate process)",
                active.name(),
                match active {
                    Backend::OnnxRuntime(p) => format!(" ({})", p.display()),
                    Backend::Tract => String::new(),
                },
                match backend {
                    Backend::OnnxRuntime(p) => format!("ONNX Runtime ({})", p.display()),
                    Backend::Tract => "tract".to_owned(),
                },
            )));
        }
        return outcome.clone().map_err(invalid);
    }
    let (api, version) = match backend {
        Backend::Tract => (
            ort_tract::api(),
            "tract 0.23 (ort-tract 0.5, pure Rust)".to_owned(),
        ),
        Backend::OnnxRuntime(path) => load_onnxruntime(path)?,
    };
    if !ort::set_api(api) {
        let msg = "the ort API table was already set by other code in this process; \
                   telecho cannot choose its inference backend"
            .to_owned();
        *state = Some((backend.clone(), Err(msg.clone())));
        return Err(invalid(msg));
    }
    let outcome = ort::init()
        .with_name("telecho")
        .with_telemetry(false)
        .build()
        .map(|env| &*Box::leak(Box::new(Runtime { version, env })))
        .map_err(|e| format!("cannot create the {} environment: {e}", backend.name()));
    *state = Some((backend.clone(), outcome.clone()));
    outcome.map_err(invalid)
}

/// First API version `ort` needs entries of beyond API 23 (see the module doc).
const COMPAT_API: u32 = 23;

/// Loads ONNX Runtime from `path` and returns its API table for `ort` and its version.
fn load_onnxruntime(path: &Path) -> Result<(ort::sys::OrtApi, String), Error> {
    let fail = |what: String| invalid(format!("ONNX Runtime {}: {what}", path.display()));
    // SAFETY: loading a shared library runs its initialisers; libonnxruntime's are sound.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| fail(format!("cannot load the library: {e}")))?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release.
    let get_base: libloading::Symbol<'_, GetApiBase> = unsafe { lib.get(b"OrtGetApiBase\0") }
        .map_err(|e| {
            fail(format!(
                "not an ONNX Runtime library (no OrtGetApiBase: {e})"
            ))
        })?;
    // SAFETY: a plain C call without arguments; the result is checked for null.
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err(fail("OrtGetApiBase returned null".into()));
    }
    // SAFETY: `base` is a valid, static OrtApiBase; its version string is a static C string.
    let version = unsafe {
        let v = ((*base).GetVersionString)();
        if v.is_null() {
            String::from("?")
        } else {
            CStr::from_ptr(v).to_string_lossy().into_owned()
        }
    };
    let api_version = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    let wanted = ort::sys::ORT_API_VERSION;
    let api = if api_version >= wanted {
        // SAFETY: GetApi returns a static table for supported versions, null otherwise.
        let p = unsafe { ((*base).GetApi)(wanted) };
        if p.is_null() {
            return Err(fail(format!("version {version} refused C API {wanted}")));
        }
        // SAFETY: a non-null table of version `wanted` has `OrtApi`'s layout.
        unsafe { (*p).clone() }
    } else if api_version == COMPAT_API {
        // SAFETY: as above, for API 23.
        let p = unsafe { ((*base).GetApi)(COMPAT_API) };
        if p.is_null() {
            return Err(fail(format!(
                "version {version} refused C API {COMPAT_API}"
            )));
        }
        // SAFETY: `p` points at an API-23 table, a prefix of `OrtApi`'s layout.
        unsafe { compat_api_23(p) }
    } else {
        return Err(fail(format!(
            "version {version} provides C API {api_version}; telecho's ort needs API {wanted} \
             (ONNX Runtime 1.{wanted} or later) or API {COMPAT_API} (1.{COMPAT_API}.x)"
        )));
    };
    // The API table points into the library: keep it loaded for the life of the process.
    std::mem::forget(lib);
    Ok((api, format!("ONNX Runtime {version}")))
}

/// An `OrtApi` (API 24 layout) whose API-23 part is the runtime's table at `p23` and whose
/// API-24 entries are `ort`'s stubs, except `GetTensorElementTypeAndShapeDataReference`.
///
/// # Safety
/// `p23` must point at a valid, static API-23 `OrtApi` table of ONNX Runtime.
unsafe fn compat_api_23(p23: *const ort::sys::OrtApi) -> ort::sys::OrtApi {
    let mut api = ort::sys::stub::api();
    let prefix = std::mem::offset_of!(ort::sys::OrtApi, TensorTypeAndShape_HasShape);
    // SAFETY: both regions are valid for `prefix` bytes (the API-23 table is exactly that long
    // and `api` is longer); the fields there are function pointers of identical layout.
    unsafe {
        std::ptr::copy_nonoverlapping(p23.cast::<u8>(), (&raw mut api).cast::<u8>(), prefix);
    }
    api.GetTensorElementTypeAndShapeDataReference = compat_tensor_type_and_shape;
    api
}

thread_local! {
    /// Shape returned by [`compat_tensor_type_and_shape`], valid until its next call on the
    /// thread (`ort` copies it at once).
    static COMPAT_SHAPE: std::cell::RefCell<Vec<i64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `GetTensorElementTypeAndShapeDataReference` (API 24) from API-23 calls.
unsafe extern "system" fn compat_tensor_type_and_shape(
    value: *const ort::sys::OrtValue,
    elem_type: *mut ort::sys::ONNXTensorElementDataType,
    shape_data: *mut *const i64,
    shape_data_count: *mut usize,
) -> ort::sys::OrtStatusPtr {
    let api = ort::api();
    let mut info: *mut ort::sys::OrtTensorTypeAndShapeInfo = std::ptr::null_mut();
    // SAFETY: API-23 functions of the loaded runtime called as documented; every status is
    // returned to the caller (which releases it) before touching the outputs.
    unsafe {
        let st = (api.GetTensorTypeAndShape)(value, &mut info);
        if !st.0.is_null() {
            return st;
        }
        let mut n = 0usize;
        let mut st = (api.GetTensorElementType)(info, elem_type);
        if st.0.is_null() {
            st = (api.GetDimensionsCount)(info, &mut n);
        }
        if st.0.is_null() {
            st = COMPAT_SHAPE.with(|s| {
                let mut s = s.borrow_mut();
                s.clear();
                s.resize(n, 0);
                let st = (api.GetDimensions)(info, s.as_mut_ptr(), n);
                *shape_data = s.as_ptr();
                *shape_data_count = n;
                st
            });
        }
        (api.ReleaseTensorTypeAndShapeInfo)(info);
        st
    }
}

/// Decoding settings and input scaling of a [`CnnDetector`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CnnConfig {
    /// Input = grey level × scale + offset (default 1/255, 0).
    pub input_scale: f32,
    /// See `input_scale`.
    pub input_offset: f32,
    /// Input rows/columns per output pixel (default 2).
    pub output_stride: usize,
    /// Bone where the column's best probability reaches this (default 0.5).
    pub bone_threshold: f32,
    /// Landmark heatmap peaks from this score, per class in [`LandmarkClass::ALL`] order
    /// (default from the sidecar: chosen on the validation seeds; a sidecar with one
    /// `landmark_threshold` sets all four).
    pub landmark_thresholds: [f32; 4],
    /// Half-width of the peak window, output pixels (default 3).
    pub nms_radius_px: usize,
    /// Candidates of different classes closer than this keep only the better one (m; default
    /// 2 mm; 0 = off).
    pub cross_class_radius_m: f64,
    /// Pixel spacing of the frames (the model was trained on the default 38 × 70 mm frames).
    pub geometry: ImageGeometry,
}

impl Default for CnnConfig {
    fn default() -> Self {
        Self {
            input_scale: 1.0 / 255.0,
            input_offset: 0.0,
            output_stride: 2,
            bone_threshold: 0.5,
            landmark_thresholds: [0.3; 4],
            nms_radius_px: 3,
            cross_class_radius_m: 2e-3,
            geometry: ImageGeometry::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Sidecar {
    input: SidecarInput,
    output_stride: usize,
    classes: Vec<String>,
    #[serde(default)]
    decode: SidecarDecode,
}

#[derive(Debug, Deserialize)]
struct SidecarInput {
    shape: Vec<usize>,
    scale: f32,
    #[serde(default)]
    offset: f32,
}

#[derive(Debug, Default, Deserialize)]
struct SidecarDecode {
    landmark_threshold: Option<f32>,
    landmark_thresholds: Option<[f32; 4]>,
    bone_threshold: Option<f32>,
    nms_radius_px: Option<usize>,
    cross_class_radius_m: Option<f64>,
}

impl CnnConfig {
    /// The settings a model's sidecar JSON gives (defaults for what it leaves out). Refuses a
    /// sidecar whose classes, stride or input shape do not fit this detector.
    pub fn from_sidecar(json: &str) -> Result<Self, Error> {
        let s: Sidecar = serde_json::from_str(json)
            .map_err(|e| invalid(format!("model sidecar JSON is not valid: {e}")))?;
        let names: Vec<&str> = LandmarkClass::ALL.iter().map(|c| c.name()).collect();
        if s.classes != names {
            return Err(invalid(format!(
                "model sidecar lists classes {:?}; this detector knows {names:?}",
                s.classes
            )));
        }
        let d = Self::default();
        let [1, 1, h, w] = s.input.shape[..] else {
            return Err(invalid(format!(
                "model sidecar input shape {:?} is not [1, 1, height, width]",
                s.input.shape
            )));
        };
        if s.output_stride == 0 || h % s.output_stride != 0 || w % s.output_stride != 0 {
            return Err(invalid(format!(
                "model sidecar output stride {} does not divide the input {h} × {w}",
                s.output_stride
            )));
        }
        let geometry = ImageGeometry {
            width: w,
            height: h,
            ..d.geometry
        };
        let c = Self {
            input_scale: s.input.scale,
            input_offset: s.input.offset,
            output_stride: s.output_stride,
            bone_threshold: s.decode.bone_threshold.unwrap_or(d.bone_threshold),
            landmark_thresholds: s.decode.landmark_thresholds.unwrap_or_else(|| {
                s.decode
                    .landmark_threshold
                    .map_or(d.landmark_thresholds, |t| [t; 4])
            }),
            nms_radius_px: s.decode.nms_radius_px.unwrap_or(d.nms_radius_px),
            cross_class_radius_m: s
                .decode
                .cross_class_radius_m
                .unwrap_or(d.cross_class_radius_m),
            geometry,
        };
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), Error> {
        let checks = [
            (
                "CNN input scale",
                f64::from(self.input_scale),
                self.input_scale.is_finite() && self.input_scale != 0.0,
            ),
            (
                "CNN input offset",
                f64::from(self.input_offset),
                self.input_offset.is_finite(),
            ),
            (
                "CNN bone threshold (0–1)",
                f64::from(self.bone_threshold),
                (0.0..=1.0).contains(&self.bone_threshold),
            ),
            (
                "CNN cross-class radius (m)",
                self.cross_class_radius_m,
                self.cross_class_radius_m.is_finite() && self.cross_class_radius_m >= 0.0,
            ),
            (
                "CNN output stride",
                self.output_stride as f64,
                (1..=16).contains(&self.output_stride),
            ),
            (
                "CNN peak window half-width (output px)",
                self.nms_radius_px as f64,
                self.nms_radius_px <= 32,
            ),
        ];
        if let Some(&t) = self
            .landmark_thresholds
            .iter()
            .find(|t| !(0.0..=1.0).contains(*t))
        {
            return Err(ErrorKind::BadParam {
                what: "CNN landmark threshold (0–1)",
                value: f64::from(t),
            }
            .into());
        }
        for (what, value, ok) in checks {
            if !ok {
                return Err(ErrorKind::BadParam { what, value }.into());
            }
        }
        Ok(())
    }
}

/// The learned detector: runs the ONNX model through `ort` and decodes its maps; see the module
/// doc.
#[derive(Debug)]
pub struct CnnDetector {
    session: Session,
    config: CnnConfig,
    backend: Backend,
    input: Array4<f32>,
    /// Output size (rows, columns).
    out_size: (usize, usize),
    bone: Vec<f32>,
    heat: Vec<f32>,
    /// Scratch: per output column the refined bone row (output pixels) and probability.
    col_rows: Vec<Option<(f32, f32)>>,
}

impl CnnDetector {
    /// The bundled model ([`BUNDLED_MODEL`] with [`BUNDLED_SIDECAR`]) on `backend`.
    pub fn bundled(backend: &Backend) -> Result<Self, Error> {
        Self::from_bytes(
            BUNDLED_MODEL,
            CnnConfig::from_sidecar(BUNDLED_SIDECAR)?,
            backend,
        )
    }

    /// A model file with its sidecar (`model` with the extension `.json`; the defaults of
    /// [`CnnConfig`] when there is none).
    pub fn from_file(model: &Path, backend: &Backend) -> Result<Self, Error> {
        let bytes = std::fs::read(model)
            .map_err(|e| invalid(format!("cannot read model {}: {e}", model.display())))?;
        let sidecar = model.with_extension("json");
        let config = if sidecar.is_file() {
            let text = std::fs::read_to_string(&sidecar).map_err(|e| {
                invalid(format!(
                    "cannot read model sidecar {}: {e}",
                    sidecar.display()
                ))
            })?;
            CnnConfig::from_sidecar(&text)
                .map_err(|e| invalid(format!("model sidecar {}: {e}", sidecar.display())))?
        } else {
            CnnConfig::default()
        };
        Self::from_bytes(&bytes, config, backend)
            .map_err(|e| invalid(format!("model {}: {e}", model.display())))
    }

    /// A model from memory with `config`, on `backend`. Refuses a model that does not parse or
    /// whose inputs and outputs are not `image` `[1, 1, H, W]` → `bone` `[1, 1, H/s, W/s]`,
    /// `landmarks` `[1, 4, H/s, W/s]` (f32, `s` the configured stride).
    pub fn from_bytes(model: &[u8], config: CnnConfig, backend: &Backend) -> Result<Self, Error> {
        config.validate()?;
        let rt = runtime(backend)?;
        let ort_err = |what: &str, e: &dyn std::fmt::Display| {
            invalid(format!("{what} ({}): {e}", rt.version))
        };
        if model.is_empty() {
            return Err(invalid("the ONNX model is empty (0 bytes)"));
        }
        let mut builder = Session::builder(&rt.env)
            .map_err(|e| ort_err("cannot create an inference session", &e))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| ort_err("cannot set the graph optimisation level", &e))?;
        if matches!(backend, Backend::OnnxRuntime(_)) {
            builder = builder
                .with_intra_threads(1)
                .map_err(|e| ort_err("cannot set one intra-op thread", &e))?
                .with_inter_threads(1)
                .map_err(|e| ort_err("cannot set one inter-op thread", &e))?;
        }
        let session = builder
            .commit_from_memory(model)
            .map_err(|e| ort_err("the ONNX model cannot be loaded", &e))?;
        let g = config.geometry;
        let s = config.output_stride;
        let (oh, ow) = (g.height / s, g.width / s);
        check_outlets(
            "input",
            session.inputs().iter().map(|o| (o.name(), o.dtype())),
            &[("image", [1, 1, g.height, g.width])],
        )?;
        check_outlets(
            "output",
            session.outputs().iter().map(|o| (o.name(), o.dtype())),
            &[
                ("bone", [1, 1, oh, ow]),
                ("landmarks", [1, LandmarkClass::ALL.len(), oh, ow]),
            ],
        )?;
        Ok(Self {
            session,
            config,
            backend: backend.clone(),
            input: Array4::zeros((1, 1, g.height, g.width)),
            out_size: (oh, ow),
            bone: vec![0.0; oh * ow],
            heat: vec![0.0; LandmarkClass::ALL.len() * oh * ow],
            col_rows: vec![None; ow],
        })
    }

    /// The decoding settings.
    pub fn config(&self) -> &CnnConfig {
        &self.config
    }

    /// Changes the decoding thresholds (the model's input size and stride stay); landmark
    /// thresholds per class in [`LandmarkClass::ALL`] order.
    pub fn set_decoding(
        &mut self,
        bone_threshold: f32,
        landmark_thresholds: [f32; 4],
        cross_class_radius_m: f64,
    ) -> Result<(), Error> {
        let c = CnnConfig {
            bone_threshold,
            landmark_thresholds,
            cross_class_radius_m,
            ..self.config
        };
        c.validate()?;
        self.config = c;
        Ok(())
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Output map size (rows, columns).
    pub fn output_size(&self) -> (usize, usize) {
        self.out_size
    }

    /// The bone probability map of the last frame (row-major, [`CnnDetector::output_size`]).
    pub fn bone_map(&self) -> &[f32] {
        &self.bone
    }

    /// The landmark heatmaps of the last frame (class-major, then row-major).
    pub fn landmark_maps(&self) -> &[f32] {
        &self.heat
    }

    /// Runs the network on one frame, filling [`CnnDetector::bone_map`] and
    /// [`CnnDetector::landmark_maps`]. Refuses a frame of another size than the model's.
    pub fn infer(&mut self, pixels: &[u8], width: usize, height: usize) -> Result<(), Error> {
        let g = self.config.geometry;
        if width.checked_mul(height) != Some(pixels.len()) {
            return Err(ErrorKind::BadFrame {
                width,
                height,
                len: pixels.len(),
            }
            .into());
        }
        if (width, height) != (g.width, g.height) {
            return Err(invalid(format!(
                "the CNN takes {} × {} frames, got {width} × {height}",
                g.width, g.height
            )));
        }
        let (scale, offset) = (self.config.input_scale, self.config.input_offset);
        if let Some(dst) = self.input.as_slice_mut() {
            for (d, &p) in dst.iter_mut().zip(pixels) {
                *d = f32::from(p) * scale + offset;
            }
        }
        let backend = self.backend.name();
        let err = |what: &str, e: &dyn std::fmt::Display| {
            invalid(format!("CNN inference ({backend}): {what}: {e}"))
        };
        let input = TensorRef::from_array_view(&self.input).map_err(|e| err("input tensor", &e))?;
        let outputs = self
            .session
            .run(ort::inputs!["image" => input])
            .map_err(|e| err("run", &e))?;
        let (oh, ow) = self.out_size;
        for (name, dst, channels) in [
            ("bone", &mut self.bone, 1),
            ("landmarks", &mut self.heat, LandmarkClass::ALL.len()),
        ] {
            let value = outputs
                .get(name)
                .ok_or_else(|| invalid(format!("the CNN gave no `{name}` output")))?;
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| err(name, &e))?;
            let want = [1, channels as i64, oh as i64, ow as i64];
            if shape[..] != want[..] || data.len() != dst.len() {
                return Err(invalid(format!(
                    "the CNN's `{name}` output has shape {:?}, expected {want:?}",
                    &shape[..]
                )));
            }
            dst.copy_from_slice(data);
        }
        Ok(())
    }

    /// Decodes the maps of the last [`CnnDetector::infer`] into `out`.
    pub fn decode(&mut self, out: &mut FrameDetection) {
        let cfg = self.config;
        let g = cfg.geometry;
        let s = cfg.output_stride as f32;
        let half = (s - 1.0) * 0.5;
        let (oh, ow) = self.out_size;
        out.reset(g);

        // Bone: per output column the best row, refined.
        for j in 0..ow {
            let mut best = (0usize, f32::NEG_INFINITY);
            for i in 0..oh {
                let p = self.bone[i * ow + j];
                if p > best.1 {
                    best = (i, p);
                }
            }
            let (i, p) = best;
            self.col_rows[j] = (p >= cfg.bone_threshold).then(|| {
                let delta = if i > 0 && i + 1 < oh {
                    let (a, b, c) = (self.bone[(i - 1) * ow + j], p, self.bone[(i + 1) * ow + j]);
                    let den = a - 2.0 * b + c;
                    if den < 0.0 {
                        (0.5 * (a - c) / den).clamp(-0.5, 0.5)
                    } else {
                        0.0
                    }
                } else {
                    0.0
                };
                (i as f32 + delta, p)
            });
        }
        for c in 0..g.width {
            // Output coordinate of this input column.
            let v = (c as f32 - half) / s;
            let j0 = v.floor().clamp(0.0, (ow - 1) as f32) as usize;
            let j1 = (j0 + 1).min(ow - 1);
            let t = (v - j0 as f32).clamp(0.0, 1.0);
            let pick = match (self.col_rows[j0], self.col_rows[j1]) {
                (Some((r0, p0)), Some((r1, p1))) if (r0 - r1).abs() <= 2.0 => {
                    Some((r0 + t * (r1 - r0), p0 + t * (p1 - p0)))
                }
                (Some(a), Some(b)) => Some(if t < 0.5 { a } else { b }),
                (Some(a), None) if t < 0.5 => Some(a),
                (None, Some(b)) if t >= 0.5 => Some(b),
                _ => None,
            };
            if let Some((r, p)) = pick {
                out.set_bone(c, Some(r * s + half), p);
            }
        }

        // Landmarks: per-class local maxima, refined, then cross-class suppression.
        let rad = cfg.nms_radius_px;
        let plane = oh * ow;
        let mut cands: Vec<LandmarkCandidate> = Vec::new();
        for class in LandmarkClass::ALL {
            let h = &self.heat[class.index() * plane..(class.index() + 1) * plane];
            let threshold = cfg.landmark_thresholds[class.index()];
            for i in 0..oh {
                for j in 0..ow {
                    let v = h[i * ow + j];
                    if v < threshold {
                        continue;
                    }
                    let (i0, i1) = (i.saturating_sub(rad), (i + rad).min(oh - 1));
                    let (j0, j1) = (j.saturating_sub(rad), (j + rad).min(ow - 1));
                    // Strict maximum over earlier pixels, ≥ over later ones: one peak per plateau.
                    let is_max = (i0..=i1).all(|a| {
                        (j0..=j1).all(|b| {
                            let u = h[a * ow + b];
                            if (a, b) < (i, j) {
                                u < v
                            } else {
                                u <= v
                            }
                        })
                    });
                    if !is_max {
                        continue;
                    }
                    let (mut sw, mut sr, mut sc) = (0.0f32, 0.0f32, 0.0f32);
                    for a in i.saturating_sub(1)..=(i + 1).min(oh - 1) {
                        for b in j.saturating_sub(1)..=(j + 1).min(ow - 1) {
                            let u = h[a * ow + b].max(0.0);
                            sw += u;
                            sr += u * a as f32;
                            sc += u * b as f32;
                        }
                    }
                    let (r, c) = if sw > 0.0 {
                        (sr / sw, sc / sw)
                    } else {
                        (i as f32, j as f32)
                    };
                    cands.push(LandmarkCandidate {
                        class,
                        row: r * s + half,
                        col: c * s + half,
                        score: v,
                    });
                }
            }
        }
        cands.sort_by(|a, b| b.score.total_cmp(&a.score));
        for c in cands {
            let near = |k: &LandmarkCandidate| {
                k.class != c.class
                    && g.distance_m(
                        (f64::from(k.row), f64::from(k.col)),
                        (f64::from(c.row), f64::from(c.col)),
                    ) < cfg.cross_class_radius_m
            };
            if !out.landmarks().iter().any(near) {
                out.push_landmark(c);
            }
        }
        out.sort_landmarks();
    }
}

/// Checks a session's inputs or outputs against the expected names and shapes (f32 tensors;
/// a dynamic dimension, −1, is accepted and checked when the model runs).
fn check_outlets<'a>(
    what: &str,
    got: impl Iterator<Item = (&'a str, &'a ValueType)>,
    want: &[(&str, [usize; 4])],
) -> Result<(), Error> {
    let got: Vec<(&str, &ValueType)> = got.collect();
    let describe = |v: &[(&str, &ValueType)]| {
        v.iter()
            .map(|(n, t)| format!("`{n}` {t}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let fits = got.len() == want.len()
        && want.iter().all(|(name, shape)| {
            got.iter().any(|(n, t)| {
                n == name
                    && match t {
                        ValueType::Tensor { ty, shape: s, .. } => {
                            *ty == ort::value::TensorElementType::Float32
                                && s.len() == 4
                                && s.iter().zip(shape).all(|(&d, &w)| d < 0 || d as usize == w)
                        }
                        _ => false,
                    }
            })
        });
    if fits {
        return Ok(());
    }
    let want_s = want
        .iter()
        .map(|(n, s)| format!("`{n}` f32 {s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(invalid(format!(
        "the model's {what}s are {}, expected {want_s}",
        describe(&got)
    )))
}

impl Detector for CnnDetector {
    fn name(&self) -> &'static str {
        "cnn"
    }

    fn detect(
        &mut self,
        pixels: &[u8],
        width: usize,
        height: usize,
        out: &mut FrameDetection,
    ) -> Result<(), Error> {
        self.infer(pixels, width, height)?;
        self.decode(out);
        Ok(())
    }
}
