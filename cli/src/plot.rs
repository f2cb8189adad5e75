//! SVG line charts (per-epoch curves, mean ± std over seeds, ...) for the
//! commands that draw one.
//!
//! plotters is built without any font feature: its SVG backend writes
//! `<text>` elements and leaves the glyphs to the viewer, and lays out labels
//! with a size estimate, so no system font is read (CI has none).

use crate::CliResult;
use plotters::prelude::*;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// One curve.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// one symmetric error (e.g. a std) per point, drawn as error bars
    pub err: Option<Vec<f64>>,
}

/// A chart of one or more curves over a shared x axis.
pub struct LinePlot<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
}

/// Pixel size of the chart; large enough for a legend of a dozen runs.
const SIZE: (u32, u32) = (900, 560);

/// Colour-blind-friendly categorical palette (Okabe-Ito, black left out since
/// it is the axes' colour); series past the eighth reuse it in order.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
    RGBColor(240, 228, 66),
];

/// Writes `plot` as an SVG file at `path` (created or replaced atomically: write to a temporary file next to it, then rename).
pub fn write_line_svg(path: &Path, plot: &LinePlot) -> CliResult {
    let shown = path.display();
    // Everything that could make plotters panic (NaN in a range, an empty
    // range) or draw a misleading chart is rejected here, before drawing.
    validate(plot).map_err(|e| format!("{shown}: cannot plot: {e}"))?;
    let tmp = temp_path(path)?;
    let svg = render(plot).map_err(|e| format!("{shown}: cannot plot: {e}"))?;
    let written = write_file(&tmp, svg.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{shown}: cannot write the plot: {e}"));
    if written.is_err() {
        // Leave nothing half-written behind; the original error is the one to report.
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(written?)
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    // Flushed to disk before the rename, so the new name never points at a
    // truncated file after a crash.
    f.sync_all()
}

/// `.NAME.tmp-PID` in the target's directory: the rename is then within one
/// file system (atomic), and concurrent writers of the same plot do not clash.
fn temp_path(path: &Path) -> CliResult<PathBuf> {
    let shown = path.display();
    let name = path
        .file_name()
        .ok_or_else(|| format!("{shown}: not a file path"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "{shown}: cannot write the plot: directory {} does not exist",
            dir.display()
        )
        .into());
    }
    if path.is_dir() {
        return Err(format!("{shown}: cannot write the plot: it is a directory").into());
    }
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp-{}", std::process::id()));
    Ok(dir.join(tmp))
}

fn validate(plot: &LinePlot) -> Result<(), String> {
    if plot.series.is_empty() {
        return Err("no series to plot".into());
    }
    for s in plot.series {
        let name = &s.name;
        if s.points.is_empty() {
            return Err(format!("series \"{name}\" has no points"));
        }
        if let Some(i) = s
            .points
            .iter()
            .position(|(x, y)| !x.is_finite() || !y.is_finite())
        {
            let (x, y) = s.points[i];
            return Err(format!(
                "series \"{name}\": point {} is ({x}, {y}), not finite",
                i + 1
            ));
        }
        if let Some(err) = &s.err {
            if err.len() != s.points.len() {
                return Err(format!(
                    "series \"{name}\": {} error values for {} points",
                    err.len(),
                    s.points.len()
                ));
            }
            if let Some(i) = err.iter().position(|e| !e.is_finite() || *e < 0.0) {
                return Err(format!(
                    "series \"{name}\": error value {} is {}, not a finite value >= 0",
                    i + 1,
                    err[i]
                ));
            }
        }
    }
    let (x, y) = data_ranges(plot.series);
    axis_range(x).map_err(|e| format!("x values {e}"))?;
    axis_range(y).map_err(|e| format!("y values {e}"))?;
    Ok(())
}

/// The data's (min, max) on each axis, error bars included.
fn data_ranges(series: &[Series]) -> ((f64, f64), (f64, f64)) {
    let mut x = (f64::INFINITY, f64::NEG_INFINITY);
    let mut y = x;
    for s in series {
        for (i, &(px, py)) in s.points.iter().enumerate() {
            let e = s.err.as_ref().map_or(0.0, |e| e[i]);
            x = (x.0.min(px), x.1.max(px));
            y = (y.0.min(py - e), y.1.max(py + e));
        }
    }
    (x, y)
}

/// The data's range with a 5% margin each side; a single value gets a margin
/// of its own size (or 1 around zero) so a lone point or a flat line still
/// has an axis to sit in.
fn axis_range((lo, hi): (f64, f64)) -> Result<std::ops::Range<f64>, String> {
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else if lo != 0.0 {
        lo.abs() * 0.05
    } else {
        0.5
    };
    let (a, b) = (lo - pad, hi + pad);
    // Overflow (values near f64::MAX) or a margin lost to rounding
    // (subnormal values) would leave plotters an empty or infinite axis.
    if !(a.is_finite() && b.is_finite() && b - a > 0.0 && (b - a).is_finite()) {
        return Err(format!(
            "span [{lo}, {hi}], too large or too small a range to draw"
        ));
    }
    Ok(a..b)
}

/// The corner of the plot area that the curves cross least, for the legend:
/// the curves are sampled along each segment and counted in each corner's
/// box (the outer 40% of both axes). Ties go to the earlier corner.
fn legend_corner(
    series: &[Series],
    x: &std::ops::Range<f64>,
    y: &std::ops::Range<f64>,
) -> SeriesLabelPosition {
    // (right, top) of each corner, in order of preference.
    const CORNERS: [(bool, bool); 4] = [(true, true), (true, false), (false, true), (false, false)];
    let mut counts = [0usize; 4];
    let unit = |v: f64, r: &std::ops::Range<f64>| (v - r.start) / (r.end - r.start);
    for s in series {
        let first = s.points[0];
        let segments = s.points.windows(2).map(|w| (w[0], w[1]));
        for (a, b) in std::iter::once((first, first)).chain(segments) {
            for k in 0..=8 {
                let t = k as f64 / 8.0;
                let (px, py) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
                let (ux, uy) = (unit(px, x), unit(py, y));
                for (c, &(right, top)) in CORNERS.iter().enumerate() {
                    let in_x = if right { ux >= 0.6 } else { ux <= 0.4 };
                    let in_y = if top { uy >= 0.6 } else { uy <= 0.4 };
                    counts[c] += usize::from(in_x && in_y);
                }
            }
        }
    }
    let best = (0..4).min_by_key(|&c| counts[c]).unwrap_or(0);
    match CORNERS[best] {
        (true, true) => SeriesLabelPosition::UpperRight,
        (true, false) => SeriesLabelPosition::LowerRight,
        (false, true) => SeriesLabelPosition::UpperLeft,
        (false, false) => SeriesLabelPosition::LowerLeft,
    }
}

fn render(plot: &LinePlot) -> Result<String, String> {
    let (x, y) = data_ranges(plot.series);
    let (x, y) = (axis_range(x)?, axis_range(y)?);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, plot, x, y).map_err(|e| format!("drawing failed: {e}"))?;
        root.present().map_err(|e| format!("drawing failed: {e}"))?;
    }
    Ok(svg)
}

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn draw(
    root: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    plot: &LinePlot,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> DrawResult {
    root.fill(&WHITE)?;
    let corner = legend_corner(plot.series, &x, &y);
    let mut chart = ChartBuilder::on(root)
        .caption(plot.title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(52)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(plot.x_label)
        .y_desc(plot.y_label)
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (i, s) in plot.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        // One filled circle per point: the markers show where the data is
        // when curves overlap, and are what the tests count.
        chart
            .draw_series(
                LineSeries::new(s.points.iter().copied(), color.filled().stroke_width(2))
                    .point_size(3),
            )?
            .label(s.name.as_str())
            .legend(move |(lx, ly)| {
                PathElement::new(vec![(lx, ly), (lx + 20, ly)], color.stroke_width(2))
            });
        if let Some(err) = &s.err {
            chart.draw_series(s.points.iter().zip(err).map(|(&(px, py), &e)| {
                ErrorBar::new_vertical(px, py - e, py, py + e, color.stroke_width(1), 8)
            }))?;
        }
    }
    chart
        .configure_series_labels()
        .position(corner)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("mla-plot-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn series(name: &str, points: &[(f64, f64)], err: Option<&[f64]>) -> Series {
        Series {
            name: name.into(),
            points: points.to_vec(),
            err: err.map(<[f64]>::to_vec),
        }
    }

    fn plot(series: &[Series]) -> LinePlot<'_> {
        LinePlot {
            title: "t",
            x_label: "epoch",
            y_label: "acc",
            series,
        }
    }

    /// Writes `series` to a fresh file; the error message, or the SVG.
    fn write(tag: &str, series: &[Series]) -> Result<String, String> {
        let dir = Dir::new(tag);
        let path = dir.0.join("p.svg");
        write_line_svg(&path, &plot(series)).map_err(|e| {
            let e = e.to_string();
            assert!(e.contains("p.svg"), "error does not name the file: {e}");
            // A failed write leaves neither the plot nor a temporary file.
            let left: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
            assert!(
                left.is_empty(),
                "{tag}: files left after an error: {left:?}"
            );
            e
        })?;
        Ok(std::fs::read_to_string(&path).unwrap())
    }

    /// The contents of the SVG's `<text>` elements.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| Some(t[t.find('>')? + 1..t.find("</text>")?].trim()))
            .collect()
    }

    fn fails(tag: &str, series: &[Series], want: &str) {
        match write(tag, series) {
            Ok(_) => panic!("{tag}: plot written"),
            Err(e) => assert!(e.contains(want), "{tag}: {e:?} lacks {want:?}"),
        }
    }

    #[test]
    fn invalid_input_is_one_clear_error() {
        fails("none", &[], "no series");
        fails(
            "empty",
            &[series("a", &[], None)],
            "series \"a\" has no points",
        );
        fails(
            "nan",
            &[series("a", &[(1.0, 0.5), (2.0, f64::NAN)], None)],
            "point 2 is (2, NaN), not finite",
        );
        fails(
            "inf-x",
            &[series("b", &[(f64::INFINITY, 0.5)], None)],
            "not finite",
        );
        fails(
            "err-len",
            &[series("a", &[(1.0, 0.5), (2.0, 0.6)], Some(&[0.1]))],
            "1 error values for 2 points",
        );
        fails(
            "err-neg",
            &[series("a", &[(1.0, 0.5)], Some(&[-0.1]))],
            "error value 1 is -0.1",
        );
        fails(
            "err-nan",
            &[series("a", &[(1.0, 0.5)], Some(&[f64::NAN]))],
            "error value 1 is NaN",
        );
        fails(
            "overflow",
            &[series("a", &[(1.0, -f64::MAX), (2.0, f64::MAX)], None)],
            "y values span",
        );
    }

    #[test]
    fn unwritable_paths_are_errors_naming_the_file() {
        let dir = Dir::new("paths");
        let ok = [series("a", &[(1.0, 0.5)], None)];
        let missing = dir.0.join("no/such/dir/p.svg");
        let e = write_line_svg(&missing, &plot(&ok))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no/such/dir/p.svg") && e.contains("does not exist"),
            "{e}"
        );
        let e = write_line_svg(&dir.0, &plot(&ok)).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = write_line_svg(Path::new("/"), &plot(&ok))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a file path"), "{e}");
    }

    #[test]
    fn replaces_an_existing_file_and_leaves_no_temporary() {
        let dir = Dir::new("replace");
        let path = dir.0.join("p.svg");
        std::fs::write(&path, "old").unwrap();
        write_line_svg(&path, &plot(&[series("run-a", &[(1.0, 0.5)], None)])).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("run-a"), "{svg}");
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["p.svg"]);
    }

    #[test]
    fn one_marker_per_point_and_error_bars_where_given() {
        let pts = [(1.0, 0.5), (2.0, 0.6), (3.0, 0.55)];
        let plain = write(
            "plain",
            &[series("a", &pts, None), series("b", &pts[..2], None)],
        )
        .unwrap();
        assert!(plain.trim_start().starts_with("<svg") && plain.trim_end().ends_with("</svg>"));
        assert_eq!(plain.matches("<circle").count(), 5, "{plain}");
        // Each series has its own colour, on its markers and in the legend.
        for c in &PALETTE[..2] {
            let hex = format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
            assert!(plain.contains(&hex), "{hex} missing");
        }
        let texts = texts(&plain);
        assert!(texts.contains(&"a") && texts.contains(&"b"), "{texts:?}");

        // Zero-length bars keep the axes (and so the grid) of `plain`: what
        // they add is exactly three lines (the bar and its two caps) and a
        // centre dot per point of "a".
        let lines = |s: &str| s.matches("<line").count();
        let zero = write(
            "err0",
            &[
                series("a", &pts, Some(&[0.0; 3])),
                series("b", &pts[..2], None),
            ],
        )
        .unwrap();
        assert_eq!(zero.matches("<circle").count(), 5 + 3);
        assert_eq!(lines(&zero), lines(&plain) + 9, "{zero}");
        let wide = write("err", &[series("a", &pts, Some(&[0.1, 0.0, 0.2]))]).unwrap();
        assert_eq!(wide.matches("<circle").count(), 3 + 3);
    }

    #[test]
    fn lone_points_flat_lines_and_extreme_scales_draw() {
        for (tag, pts) in [
            ("one", vec![(1.0, 0.5)]),
            ("zero", vec![(0.0, 0.0)]),
            ("flat", vec![(1.0, 0.7), (2.0, 0.7), (3.0, 0.7)]),
            ("huge", vec![(1.0, -1e300), (2.0, 1e300)]),
            ("tiny", vec![(1.0, 1e-300), (2.0, 3e-300)]),
            ("subnormal", vec![(1.0, 0.0), (2.0, 5e-324)]),
            ("offset", vec![(1e12, 1e9), (1e12 + 1.0, 1e9 + 1e-3)]),
        ] {
            let svg = write(tag, &[series(tag, &pts, None)]).unwrap();
            assert_eq!(svg.matches("<circle").count(), pts.len(), "{tag}");
        }
    }

    #[test]
    fn the_legend_goes_where_the_curves_are_not() {
        let (x, y) = (0.0..10.0, 0.0..1.0);
        let rising = [series("a", &[(0.0, 0.0), (10.0, 1.0)], None)];
        assert!(matches!(
            legend_corner(&rising, &x, &y),
            SeriesLabelPosition::LowerRight
        ));
        let falling = [series("a", &[(0.0, 1.0), (10.0, 0.0)], None)];
        assert!(matches!(
            legend_corner(&falling, &x, &y),
            SeriesLabelPosition::UpperRight
        ));
    }

    #[test]
    fn text_is_escaped() {
        let svg = write("escape", &[series("a<b & c", &[(1.0, 0.5)], None)]).unwrap();
        assert!(svg.contains("a&lt;b &amp; c"), "{svg}");
    }
}
