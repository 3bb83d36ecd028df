//! SVG line plots of streaming NLL curves, drawn with `plotters` (SVG backend only).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// One line of a plot.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    /// (x, y) points, x increasing.
    pub points: Vec<(f64, f64)>,
}

/// What to draw.
#[derive(Clone, Debug)]
pub struct PlotSpec {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic y axis (needs every y > 0).
    pub log_y: bool,
    pub size: (u32, u32),
}

impl Default for PlotSpec {
    fn default() -> Self {
        PlotSpec {
            title: String::new(),
            x_label: "token index".into(),
            y_label: "NLL (nats)".into(),
            log_y: false,
            size: (960, 540),
        }
    }
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn err(e: impl std::fmt::Display) -> Error {
    Error::Io(format!("drawing the plot: {e}"))
}

/// Draws `series` as lines on one chart into the SVG file `path`.
pub fn line_plot(path: &Path, spec: &PlotSpec, series: &[Series]) -> Result<()> {
    let pts = || series.iter().flat_map(|s| s.points.iter());
    if pts().next().is_none() {
        return Err(Error::invalid("nothing to plot: every series is empty"));
    }
    if pts().any(|p| !p.0.is_finite() || !p.1.is_finite()) {
        return Err(Error::invalid("cannot plot non-finite values"));
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let log_y = spec.log_y && y0 > 0.0;
    if log_y {
        y0 /= 1.1;
        y1 *= 1.1;
    } else {
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        y0 -= pad;
        y1 += pad;
    }
    let root = SVGBackend::new(path, spec.size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&spec.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(70);
    let legend = |c: RGBColor| {
        move |(x, y): (i32, i32)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2))
    };
    if log_y {
        let mut chart = builder
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc(&spec.x_label)
            .y_desc(&spec.y_label)
            .draw()
            .map_err(err)?;
        for (i, s) in series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
                .map_err(err)?
                .label(&s.name)
                .legend(legend(c));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    } else {
        let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?;
        chart
            .configure_mesh()
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc(&spec.x_label)
            .y_desc(&spec.y_label)
            .draw()
            .map_err(err)?;
        for (i, s) in series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
                .map_err(err)?
                .label(&s.name)
                .legend(legend(c));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
