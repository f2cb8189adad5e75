//! `mla plot RUN_DIR... --out FILE.svg`: one per-epoch curve per run, read
//! from the run's `metrics.jsonl`, drawn into one SVG chart.

use crate::plot::{write_line_svg, LinePlot, Series};
use crate::CliResult;
use serde_json::Value;
use std::io::Read as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Run directories written by `mla train` (each holding a
    /// `metrics.jsonl`); one curve each, named after the directory.
    #[arg(value_name = "RUN_DIR", required = true)]
    runs: Vec<PathBuf>,
    /// The SVG file to write (replaced if it exists).
    #[arg(long, value_name = "FILE.svg")]
    out: PathBuf,
    /// The metric on the y axis: a dotted path into each line of
    /// `metrics.jsonl`, e.g. `train_loss`, `val.loss`,
    /// `val.modality_accuracy.audio`. The x axis is `epoch`.
    #[arg(long, value_name = "NAME", default_value = "val.fused_accuracy")]
    metric: String,
    /// The chart's title. [default: the metric]
    #[arg(long, value_name = "T")]
    title: Option<String>,
}

/// Larger than any real run's metrics (a line is a few KiB per epoch); a
/// bigger file is a wrong path, and reading it whole would only waste memory.
const MAX_METRICS_BYTES: u64 = 64 << 20;

pub fn run(a: Args) -> CliResult {
    let series = a
        .runs
        .iter()
        .map(|dir| read_series(dir, &a.metric))
        .collect::<CliResult<Vec<_>>>()?;
    let title = a.title.as_deref().unwrap_or(&a.metric);
    write_line_svg(
        &a.out,
        &LinePlot {
            title,
            x_label: "epoch",
            y_label: &a.metric,
            series: &series,
        },
    )?;
    eprintln!(
        "wrote {} ({} run{})",
        a.out.display(),
        series.len(),
        if series.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

/// The curve of one run directory: (epoch, metric) for each line.
fn read_series(dir: &Path, metric: &str) -> CliResult<Series> {
    let path = dir.join(mla_models::trainer::run_dir::METRICS);
    let shown = path.display();
    if !dir.is_dir() {
        return Err(format!("{}: not a run directory", dir.display()).into());
    }
    if !path.is_file() {
        return Err(format!(
            "{}: no {} (not a run directory written by `mla train`?)",
            dir.display(),
            mla_models::trainer::run_dir::METRICS
        )
        .into());
    }
    let text = read_limited(&path)?;
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        // A run killed mid-write may end in an empty line; there is nothing to plot in it.
        if line.trim().is_empty() {
            continue;
        }
        let record: Value = serde_json::from_str(line)
            .map_err(|e| format!("{shown}: line {n}: not valid JSON: {e}"))?;
        if !record.is_object() {
            return Err(format!("{shown}: line {n}: not a JSON object").into());
        }
        let x = number_at(&record, "epoch", &path, n)?;
        let y = number_at(&record, metric, &path, n)?;
        points.push((x, y));
    }
    if points.is_empty() {
        return Err(format!("{shown}: no epochs recorded yet").into());
    }
    let name = series_name(dir);
    Ok(Series {
        name,
        points,
        err: None,
    })
}

/// The whole file, refusing one over `MAX_METRICS_BYTES` (checked on the
/// bytes read too, since the file may grow while a run is training).
fn read_limited(path: &Path) -> CliResult<String> {
    let shown = path.display();
    let too_big = || {
        format!(
            "{shown}: larger than {} MiB, not a metrics file",
            MAX_METRICS_BYTES >> 20
        )
    };
    let f = std::fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let len = f.metadata().map_err(|e| format!("{shown}: {e}"))?.len();
    if len > MAX_METRICS_BYTES {
        return Err(too_big().into());
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(MAX_METRICS_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{shown}: {e}"))?;
    if bytes.len() as u64 > MAX_METRICS_BYTES {
        return Err(too_big().into());
    }
    String::from_utf8(bytes).map_err(|e| format!("{shown}: not UTF-8 text: {e}").into())
}

/// The number at a dotted `key` in one line's object, or an error naming the
/// metric, the file and the line, with the numeric paths the line does have.
fn number_at(record: &Value, key: &str, path: &Path, line: usize) -> CliResult<f64> {
    let found = key.split('.').try_fold(record, |v, part| v.get(part));
    let what = match found {
        Some(v) => match v.as_f64() {
            Some(x) => return Ok(x),
            // serde_json writes a NaN or infinite f64 as null: a diverged
            // run, worth saying so rather than calling the metric missing.
            None if v.is_null() => "is null (NaN or infinite when written)",
            None => "is not a number",
        },
        None => "is absent",
    };
    let mut available = Vec::new();
    numeric_paths(record, "", &mut available);
    available.sort();
    Err(format!(
        "{}: line {line}: metric `{key}` {what}; this line's numeric metrics: {}",
        path.display(),
        if available.is_empty() {
            "none".to_string()
        } else {
            available.join(", ")
        }
    )
    .into())
}

/// Every dotted path to a number under `v` (`number_at` sorts them).
fn numeric_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Number(_) => out.push(prefix.to_string()),
        Value::Object(map) => {
            for (k, child) in map {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                numeric_paths(child, &p, out);
            }
        }
        // Arrays (and strings, booleans) are not addressable by a dotted path.
        _ => {}
    }
}

/// The directory's own name; for `.` or `..` (no name in the path itself)
/// the name of the directory it resolves to.
fn series_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| {
            std::fs::canonicalize(dir)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        })
        .unwrap_or_else(|| dir.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numeric_paths_are_dotted_and_skip_non_numbers() {
        let v = json!({"epoch": 1, "best": true, "val": {"loss": 0.5, "rule": "mean",
            "modality_accuracy": {"audio": 0.4}}, "list": [1, 2], "list_len": 2});
        let mut out = Vec::new();
        numeric_paths(&v, "", &mut out);
        out.sort();
        assert_eq!(
            out,
            [
                "epoch",
                "list_len",
                "val.loss",
                "val.modality_accuracy.audio"
            ]
        );
    }

    #[test]
    fn a_non_numeric_metric_is_an_error_listing_the_numeric_ones() {
        let v = json!({"epoch": 2, "train_loss": null, "val": {"rule": "mean", "loss": 0.5}});
        let p = Path::new("r/metrics.jsonl");
        assert_eq!(number_at(&v, "val.loss", p, 3).unwrap(), 0.5);
        let e = number_at(&v, "val.rule", p, 3).unwrap_err().to_string();
        assert_eq!(
            e,
            "r/metrics.jsonl: line 3: metric `val.rule` is not a number; \
             this line's numeric metrics: epoch, val.loss"
        );
        let e = number_at(&v, "train_loss", p, 3).unwrap_err().to_string();
        assert!(e.contains("`train_loss` is null (NaN"), "{e}");
        let e = number_at(&v, "val.loss.x", p, 3).unwrap_err().to_string();
        assert!(e.contains("`val.loss.x` is absent"), "{e}");
    }
}
