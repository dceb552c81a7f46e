//! The demo's `report.html` and its PNG plots (plotters, bitmap backend).
//!
//! Text in the plots needs a TrueType font: the first of `$TELECHO_FONT` and the usual system
//! locations of DejaVu Sans / Liberation Sans is used. Without one the plots are drawn without
//! text and the page carries the axis names in each caption.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::perception::register::percentile;

/// Everything the report shows.
#[derive(Debug)]
pub(super) struct ReportInputs<'a> {
    pub(super) seed: u64,
    /// Per sweep frame: time (s), force estimate, reference, true force (N).
    pub(super) force_trace: &'a [[f64; 4]],
    /// (landmark, error mm against the truth, confidence).
    pub(super) landmarks: &'a [(String, f64, f64)],
    /// TRE over the simulator's landmarks, sorted (mm).
    pub(super) tre_sorted_mm: &'a [f64],
    /// File name of the fusion overlay, relative to the report.
    pub(super) overlay_png: &'a str,
    pub(super) overlay_frame: usize,
    /// (phase, wall s, passed, note).
    pub(super) phases: &'a [(&'static str, f64, bool, String)],
    /// The summary metrics, pretty JSON.
    pub(super) summary_json: &'a str,
    /// Ages of the remote expert's commands at the patient side, ms (empty: no remote phase).
    pub(super) command_ages_ms: &'a [f64],
    /// One line on the remote expert phase.
    pub(super) remote_note: &'a str,
}

/// Histogram of the remote expert's command ages (1 ms bins) with its median and 99th percentile.
fn plot_latency(path: &Path, ages_ms: &[f64]) -> anyhow::Result<()> {
    let text = font_available();
    let root = BitMapBackend::new(path, (960, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let finite: Vec<f64> = ages_ms.iter().copied().filter(|a| a.is_finite()).collect();
    let lo = finite
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .min(1e6)
        .floor();
    let hi = finite
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .ceil()
        .max(lo + 1.0);
    let bins = ((hi - lo) as usize + 1).clamp(1, 400);
    let width = (hi - lo + 1.0) / bins as f64;
    let mut counts = vec![0u32; bins];
    for a in &finite {
        let i = (((a - lo) / width) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let c_max = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(12);
    if text {
        builder
            .caption(
                "Remote expert: age of each command at the patient side",
                ("sans-serif", 20),
            )
            .x_label_area_size(36)
            .y_label_area_size(56);
    } else {
        builder.x_label_area_size(8).y_label_area_size(8);
    }
    let x0 = if lo.is_finite() { lo } else { 0.0 };
    let mut chart = builder
        .build_cartesian_2d(x0..x0 + width * bins as f64, 0u32..c_max + c_max / 10 + 1)
        .map_err(plot_err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("command age (ms)").y_desc("commands");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(plot_err)?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, c)| {
            let a = x0 + width * i as f64;
            Rectangle::new([(a, 0), (a + width, *c)], RGBColor(31, 119, 180).filled())
        }))
        .map_err(plot_err)?;
    let mut sorted = finite;
    sorted.sort_by(f64::total_cmp);
    for (q, color) in [(0.5, RGBColor(44, 160, 44)), (0.99, RGBColor(214, 39, 40))] {
        let v = percentile(&sorted, q);
        if v.is_finite() {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(v, 0), (v, c_max)],
                    color.stroke_width(2),
                )))
                .map_err(plot_err)?;
        }
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

const FONT_CANDIDATES: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Registers a system font for plot text once; false when none is usable.
fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let env = std::env::var_os("TELECHO_FONT").map(std::path::PathBuf::from);
        let candidates = env
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(std::path::PathBuf::from));
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            // The font registry keeps `'static` bytes; one font per process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                tracing::debug!(font = %path.display(), "plot font");
                return true;
            }
        }
        tracing::warn!("no TrueType font found (set TELECHO_FONT): plots without text");
        false
    })
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plot: {e}")
}

/// Force estimate, true force and reference over the sweep frames.
fn plot_force(path: &Path, trace: &[[f64; 4]]) -> anyhow::Result<()> {
    let text = font_available();
    let root = BitMapBackend::new(path, (960, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let t_max = trace.iter().map(|r| r[0]).fold(1.0, f64::max);
    let f_max = trace
        .iter()
        .flat_map(|r| [r[1], r[2], r[3]])
        .filter(|v| v.is_finite())
        .fold(10.0, f64::max)
        * 1.1;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(12);
    if text {
        builder
            .caption("Contact force during the scan", ("sans-serif", 20))
            .x_label_area_size(36)
            .y_label_area_size(48);
    } else {
        builder.x_label_area_size(8).y_label_area_size(8);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..t_max, 0.0..f_max)
        .map_err(plot_err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("time (s)").y_desc("force (N)");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(plot_err)?;
    let series: [(usize, RGBColor, &str); 3] = [
        (2, RGBColor(60, 60, 60), "setpoint"),
        (3, RGBColor(31, 119, 180), "true contact force"),
        (1, RGBColor(255, 127, 14), "controller estimate"),
    ];
    for (col, color, label) in series {
        let s = chart
            .draw_series(LineSeries::new(
                trace
                    .iter()
                    .filter(|r| r[col].is_finite())
                    .map(|r| (r[0], r[col])),
                color.stroke_width(if col == 2 { 2 } else { 1 }),
            ))
            .map_err(plot_err)?;
        if text {
            s.label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Horizontal bars, one per (label, value).
fn plot_bars(
    path: &Path,
    title: &str,
    unit: &str,
    rows: &[(String, f64)],
    color: RGBColor,
) -> anyhow::Result<()> {
    let text = font_available();
    let height = (60 + 18 * rows.len()).clamp(160, 1000) as u32;
    let root = BitMapBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let v_max = rows
        .iter()
        .map(|r| r.1)
        .filter(|v| v.is_finite())
        .fold(1e-3, f64::max)
        * 1.15;
    let n = rows.len().max(1) as i32;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(12);
    if text {
        builder
            .caption(title, ("sans-serif", 20))
            .x_label_area_size(36)
            .y_label_area_size(180);
    } else {
        builder.x_label_area_size(8).y_label_area_size(8);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..v_max, (0..n).into_segmented())
        .map_err(plot_err)?;
    let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let label = |y: &SegmentValue<i32>| -> String {
        match y {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| names.get(i).cloned())
                .unwrap_or_default(),
            SegmentValue::Last => String::new(),
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.disable_y_mesh();
    if text {
        mesh.x_desc(unit)
            .y_labels(n as usize)
            .y_label_formatter(&label);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(plot_err)?;
    chart
        .draw_series(rows.iter().zip(0..).map(|(r, i)| {
            let v = if r.1.is_finite() { r.1 } else { 0.0 };
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (v, SegmentValue::Exact(i + 1)),
                ],
                color.filled(),
            );
            bar.set_margin(2, 2, 0, 0);
            bar
        }))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes the plots into `dir` and the page to `path`.
pub(super) fn write(dir: &Path, path: &Path, r: &ReportInputs<'_>) -> anyhow::Result<()> {
    plot_force(&dir.join("force.png"), r.force_trace)?;
    let lm: Vec<(String, f64)> = r.landmarks.iter().map(|l| (l.0.clone(), l.1)).collect();
    plot_bars(
        &dir.join("landmarks.png"),
        "Landmarks in the robot frame: error against the truth",
        "error (mm)",
        &lm,
        RGBColor(44, 160, 44),
    )?;
    let tre_rows: Vec<(String, f64)> = [("TRE p50", 0.5), ("TRE p95", 0.95), ("TRE max", 1.0)]
        .iter()
        .map(|&(name, q)| (name.to_owned(), percentile(r.tre_sorted_mm, q)))
        .collect();
    let mut timing: Vec<(String, f64)> = r.phases.iter().map(|p| (p.0.to_owned(), p.1)).collect();
    timing.extend(tre_rows.iter().map(|(k, v)| (format!("{k} (mm)"), *v)));
    plot_bars(
        &dir.join("phases.png"),
        "Wall time per phase (s) and registration error (mm)",
        "s / mm",
        &timing,
        RGBColor(148, 103, 189),
    )?;
    if !r.command_ages_ms.is_empty() {
        plot_latency(&dir.join("latency.png"), r.command_ages_ms)?;
    }
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>telecho demo — patient {seed}</title>\
         <style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}\
         img{{max-width:100%;border:1px solid #ddd}}</style></head><body>\n\
         <h1>telecho demo — simulated patient {seed}</h1>\n\
         <p>Simulated patient and CBCT → autonomous lumbar scan (control node, safety supervisor, \
         1 kHz) → US↔CBCT registration without an initial guess → expert review → a remote \
         expert steering over QUIC (150 ms RTT, 1 % loss) to the L4/L5 facet joint. Scoring against \
         the simulator's truth is the evaluator's; the nodes never see it.</p>\n<h2>Phases</h2>\n\
         <table><tr><th>phase</th><th>wall s</th><th>passed</th><th>note</th></tr>\n",
        seed = r.seed
    );
    for (name, wall, ok, note) in r.phases {
        let _ = writeln!(
            html,
            "<tr><td>{name}</td><td>{wall:.2}</td><td>{}</td><td>{}</td></tr>",
            if *ok { "yes" } else { "<b>no</b>" },
            html_escape(note)
        );
    }
    let _ = write!(
        html,
        "</table>\n<h2>Contact force</h2>\n<img src=\"force.png\" alt=\"force vs setpoint\">\n\
         <p>Force along the probe axis at each ultrasound frame: the controller's estimate from \
         the F/T sensor, the simulator's true contact force, and the ramped setpoint (N, against \
         time in s).</p>\n\
         <h2>Registration overlay</h2>\n<img src=\"{}\" alt=\"CBCT over ultrasound\">\n\
         <p>Frame {} of the sweep with the CBCT resliced along its plane through the registered \
         <code>t_base_ct</code>: CT bone in orange, the first CT bone surface along each scanline \
         in yellow.</p>\n\
         <h2>Landmarks against the truth</h2>\n<img src=\"landmarks.png\" alt=\"landmark errors\">\n\
         <table><tr><th>landmark</th><th>error mm</th><th>confidence</th></tr>\n",
        r.overlay_png, r.overlay_frame
    );
    for (name, e, c) in r.landmarks {
        let _ = writeln!(
            html,
            "<tr><td>{name}</td><td>{e:.2}</td><td>{c:.2}</td></tr>"
        );
    }
    if !r.command_ages_ms.is_empty() {
        let _ = write!(
            html,
            "</table>\n<h2>Remote expert</h2>\n<img src=\"latency.png\" alt=\"command age \
             histogram\">\n<p>{} Green: median, red: 99th percentile of the command age at the \
             patient side (clock-offset corrected; includes the link's one-way delay).</p>\n<table>",
            html_escape(r.remote_note)
        );
    }
    let _ = write!(
        html,
        "</table>\n<h2>Timing</h2>\n<img src=\"phases.png\" alt=\"phase timing\">\n\
         <h2>Summary</h2>\n<pre>{}</pre>\n<p>The run's MCAP recording (<code>telecho.mcap</code>: \
         1 kHz wrench and joint states, tf, target pose, force setpoint, every ultrasound frame, \
         safety events) opens in Foxglove.</p>\n</body></html>\n",
        html_escape(r.summary_json)
    );
    std::fs::write(path, html).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
