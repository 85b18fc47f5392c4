//! `--plot out.svg`: one panel per measured workload and backend with every
//! contender's latency CDF, and one panel per backend with the cancel-latency CDF of
//! each op class. Latency axes are logarithmic, in microseconds.

use crate::CliError;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::path::Path;

/// One panel: a title and named latency histograms (nanoseconds).
pub struct Panel {
    /// The panel's title.
    pub title: String,
    /// The curves.
    pub curves: Vec<(String, Histogram<u64>)>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// The CDF of `h` as (microseconds, fraction) points.
fn cdf(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    (0..=200)
        .map(|i| {
            let q = i as f64 / 200.0;
            ((h.value_at_quantile(q).max(1) as f64 / 1000.0).max(0.01), q)
        })
        .collect()
}

/// Draws `panels` into an SVG at `path`, two per row.
pub fn draw(path: &Path, panels: &[Panel]) -> Result<(), CliError> {
    if panels.is_empty() {
        return Err("nothing to plot".into());
    }
    let cols = 2usize;
    let rows = panels.len().div_ceil(cols);
    let root = SVGBackend::new(path, (1200, 380 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| format!("plot: {e}"))?;
    let areas = root.split_evenly((rows, cols));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        let mut lo = f64::MAX;
        let mut hi = 0f64;
        for (_, h) in &panel.curves {
            for (x, _) in cdf(h) {
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
        let (lo, hi) = if lo <= hi {
            (lo / 1.5, hi * 1.5)
        } else {
            (0.1, 10.0)
        };
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)
            .map_err(|e| format!("plot: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("latency, µs (log)")
            .y_desc("fraction ≤ x")
            .draw()
            .map_err(|e| format!("plot: {e}"))?;
        for (i, (name, h)) in panel.curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(cdf(h), color.stroke_width(2)))
                .map_err(|e| format!("plot: {e}"))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| format!("plot: {e}"))?;
    }
    root.present().map_err(|e| format!("plot: {e}"))?;
    Ok(())
}
