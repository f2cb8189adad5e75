//! `mla report DIR...`: the summaries of finished runs aggregated into one
//! Markdown table (and optionally a CSV): runs grouped by their resolved
//! flags (`config.toml`) except the seed, each metric as mean ± sample
//! standard deviation over the group's runs.

use crate::CliResult;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Run directories, or directories holding them (searched 3 levels deep
    /// for `summary.json`).
    #[arg(value_name = "DIR", required = true)]
    dirs: Vec<PathBuf>,
    /// Group runs by these `mla train` keys (comma-separated, e.g.
    /// `method,data`). [default: every key whose value differs between the
    /// runs, except seed]
    #[arg(long, value_name = "KEYS", value_delimiter = ',')]
    by: Option<Vec<String>>,
    /// Columns (comma-separated): fused, chosen (the fusion rule `auto`
    /// chose on validation, with its count of runs), rules (every rule),
    /// modalities (each alone), best (the best single modality of each run
    /// and fused minus it, in points), ece (each modality's calibration
    /// error before and after its fitted temperature), f1, shapley, gap,
    /// hgm (head gradient kept in the last epoch), forgetting (mean over
    /// the epochs), time, cost (GFLOP per step, peak memory).
    #[arg(
        long,
        value_name = "COLUMNS",
        value_delimiter = ',',
        default_value = "fused,modalities,f1,shapley,gap,time"
    )]
    columns: Vec<String>,
    /// Which split's metrics: test (of the best-validation epoch) or val.
    #[arg(long, default_value = "test", value_parser = ["test", "val"])]
    split: String,
    /// Also write the table as CSV (mean and std in separate columns).
    #[arg(long, value_name = "FILE", conflicts_with = "robustness")]
    csv: Option<PathBuf>,
    /// Aggregate the `robustness.json` files of `mla robustness` under the
    /// directories instead of runs: one row per method, modality, kind and
    /// levels, mean ± std over the checkpoints.
    #[arg(long)]
    robustness: bool,
    /// With --robustness: also draw one SVG per modality and kind into this
    /// directory (`MODALITY-KIND.svg`), a curve per method with the
    /// checkpoints' std as error bars.
    #[arg(long, value_name = "DIR", requires = "robustness")]
    plot: Option<PathBuf>,
}

const COLUMNS: [&str; 13] = [
    "fused",
    "chosen",
    "rules",
    "modalities",
    "best",
    "ece",
    "f1",
    "shapley",
    "gap",
    "hgm",
    "forgetting",
    "time",
    "cost",
];

/// One finished run.
struct Run {
    flags: toml::Table,
    summary: Value,
}

/// Directories under `dir` (itself included, `depth` levels down) holding
/// `file`; a directory holding it is not searched further.
fn find_runs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> CliResult {
    find_holding(dir, "summary.json", depth, out)
}

pub fn find_holding(dir: &Path, file: &str, depth: usize, out: &mut Vec<PathBuf>) -> CliResult {
    if dir.join(file).is_file() {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    if depth == 0 {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut subs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    subs.sort();
    for s in subs {
        find_holding(&s, file, depth - 1, out)?;
    }
    Ok(())
}

fn load(dir: &Path) -> CliResult<Run> {
    let read = |name: &str| {
        let p = dir.join(name);
        let meta = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.len() > 64 << 20 {
            return Err(format!(
                "{}: {} bytes is too large for a run file",
                p.display(),
                meta.len()
            ));
        }
        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let summary: Value = serde_json::from_str(&read("summary.json")?)
        .map_err(|e| format!("{}: {e}", dir.join("summary.json").display()))?;
    let flags: toml::Table = match read("config.toml") {
        Ok(t) => {
            toml::from_str(&t).map_err(|e| format!("{}: {e}", dir.join("config.toml").display()))?
        }
        Err(_) => {
            return Err(format!(
                "{}: no config.toml (the run was made by an older mla); its flags are unknown",
                dir.display()
            )
            .into())
        }
    };
    Ok(Run { flags, summary })
}

/// The last number of a JSON array (a per-epoch series).
fn last(v: &Value) -> Option<f64> {
    v.as_array()?.last()?.as_f64()
}

/// The mean of a JSON array of numbers (a per-epoch series).
fn mean(v: &Value) -> Option<f64> {
    let xs: Vec<f64> = v.as_array()?.iter().filter_map(Value::as_f64).collect();
    (!xs.is_empty()).then(|| mean_std(&xs).0)
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

fn show_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A column: its name and each run's value (`None` where a run lacks it).
type Column = (String, Vec<Option<f64>>);

fn columns(runs: &[Run], split: &str, wanted: &[String]) -> Vec<Column> {
    let get = |r: &Run, path: &[&str]| -> Option<f64> {
        let mut v = &r.summary;
        for p in path {
            v = v.get(p)?;
        }
        v.as_f64()
    };
    let names_under = |path: &[&str]| -> Vec<String> {
        let mut set = BTreeSet::new();
        let mut order = Vec::new();
        for r in runs {
            let found = path.iter().try_fold(&r.summary, |v, p| v.get(p));
            if let Some(o) = found.and_then(Value::as_object) {
                for k in o.keys() {
                    if set.insert(k.clone()) {
                        order.push(k.clone());
                    }
                }
            }
        }
        order
    };
    let mut out: Vec<Column> = Vec::new();
    let pct = 100.0;
    let scaled = |r: &Run, path: &[&str], k: f64| get(r, path).map(|x| x * k);
    for w in wanted {
        match w.as_str() {
            "fused" => out.push((
                "fused acc. (%)".into(),
                runs.iter()
                    .map(|r| scaled(r, &[split, "fused_accuracy"], pct))
                    .collect(),
            )),
            "rules" => {
                for rule in names_under(&[split, "fusion_accuracy"]) {
                    out.push((
                        format!("{rule} (%)"),
                        runs.iter()
                            .map(|r| scaled(r, &[split, "fusion_accuracy", &rule], pct))
                            .collect(),
                    ));
                }
            }
            "modalities" => {
                for m in names_under(&[split, "modality_accuracy"]) {
                    out.push((
                        format!("{m} alone (%)"),
                        runs.iter()
                            .map(|r| scaled(r, &[split, "modality_accuracy", &m], pct))
                            .collect(),
                    ));
                }
            }
            "f1" => out.push((
                "fused macro-F1".into(),
                runs.iter()
                    .map(|r| get(r, &[split, "fused_macro_f1"]))
                    .collect(),
            )),
            "shapley" => {
                for m in names_under(&[split, "shapley", "dataset"]) {
                    out.push((
                        format!("Shapley {m} (points)"),
                        runs.iter()
                            .map(|r| scaled(r, &[split, "shapley", "dataset", &m], pct))
                            .collect(),
                    ));
                }
            }
            "gap" => out.push((
                "modality gap".into(),
                runs.iter()
                    .map(|r| get(r, &[split, "modality_gap"]))
                    .collect(),
            )),
            "best" => {
                let best = |r: &Run| -> Option<f64> {
                    let o = r
                        .summary
                        .get(split)?
                        .get("modality_accuracy")?
                        .as_object()?;
                    o.values().filter_map(Value::as_f64).reduce(f64::max)
                };
                out.push((
                    "best single modality (%)".into(),
                    runs.iter().map(|r| best(r).map(|b| b * pct)).collect(),
                ));
                out.push((
                    "fused - best single (points)".into(),
                    runs.iter()
                        .map(|r| Some((get(r, &[split, "fused_accuracy"])? - best(r)?) * pct))
                        .collect(),
                ));
            }
            "ece" => {
                for m in names_under(&[split, "calibration_error"]) {
                    for (field, name) in [
                        ("calibration_error", format!("{m} ECE (%)")),
                        (
                            "calibration_error_calibrated",
                            format!("{m} ECE calibrated (%)"),
                        ),
                    ] {
                        out.push((
                            name,
                            runs.iter()
                                .map(|r| scaled(r, &[split, field, &m], pct))
                                .collect(),
                        ));
                    }
                }
            }
            "hgm" => out.push((
                "head grad kept (last epoch)".into(),
                runs.iter()
                    .map(|r| last(&r.summary["hgm_surviving_fraction"]))
                    .collect(),
            )),
            "forgetting" => out.push((
                "forgetting (10^-3 loss per step)".into(),
                runs.iter()
                    .map(|r| mean(&r.summary["forgetting_loss_increase"]).map(|x| x * 1e3))
                    .collect(),
            )),
            "time" => out.push((
                "train time (s)".into(),
                runs.iter().map(|r| get(r, &["train_seconds"])).collect(),
            )),
            "cost" => {
                out.push((
                    "GFLOP per step".into(),
                    runs.iter().map(|r| get(r, &["gflop_per_step"])).collect(),
                ));
                out.push((
                    "peak memory (MiB)".into(),
                    runs.iter()
                        .map(|r| get(r, &["peak_rss_bytes"]).map(|b| b / (1024.0 * 1024.0)))
                        .collect(),
                ));
            }
            _ => {}
        }
    }
    out
}

pub fn run(args: Args) -> CliResult {
    if args.robustness {
        return crate::cmd_robustness::report(&args.dirs, args.plot.as_deref());
    }
    for c in &args.columns {
        if !COLUMNS.contains(&c.as_str()) {
            return Err(format!(
                "--columns: unknown column {c:?}; expected some of: {}",
                COLUMNS.join(", ")
            )
            .into());
        }
    }
    let mut dirs = Vec::new();
    for d in &args.dirs {
        if !d.is_dir() {
            return Err(format!("{}: not a directory", d.display()).into());
        }
        find_runs(d, 3, &mut dirs)?;
    }
    if dirs.is_empty() {
        return Err("no finished runs (summary.json) under the given directories".into());
    }
    let mut runs = Vec::new();
    for d in &dirs {
        let r = load(d)?;
        // A run still training (or killed) writes its summary every epoch:
        // averaging it in would mix budgets.
        let done = r.summary["epochs"].as_i64();
        let want = r.flags.get("epochs").and_then(|v| v.as_integer());
        match (done, want) {
            (Some(done), Some(want)) if done < want => {
                eprintln!(
                    "mla report: skipped {}: {done} of its {want} epochs trained (unfinished)",
                    d.display()
                );
            }
            _ => runs.push(r),
        }
    }
    if runs.is_empty() {
        return Err(
            "no finished runs under the given directories (every run found is unfinished)".into(),
        );
    }
    // Flags that can differ without changing the result's meaning are not
    // grouping keys by default.
    let quiet_keys = ["seed", "threads", "backend"];
    let all_keys: BTreeSet<String> = runs.iter().flat_map(|r| r.flags.keys().cloned()).collect();
    let by: Vec<String> = match &args.by {
        Some(b) => {
            for k in b {
                if !all_keys.contains(&k.replace('-', "_")) {
                    return Err(format!(
                        "--by {k}: no run has this key; keys: {}",
                        all_keys.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                    .into());
                }
            }
            b.iter().map(|k| k.replace('-', "_")).collect()
        }
        None => all_keys
            .iter()
            .filter(|k| !quiet_keys.contains(&k.as_str()))
            .filter(|k| {
                let vals: BTreeSet<String> = runs
                    .iter()
                    .map(|r| r.flags.get(*k).map(show_value).unwrap_or_default())
                    .collect();
                vals.len() > 1
            })
            .cloned()
            .collect(),
    };
    let label = |r: &Run| -> Vec<String> {
        by.iter()
            .map(|k| {
                let v = r.flags.get(k).map(show_value).unwrap_or_else(|| "-".into());
                if k == "data" {
                    Path::new(&v)
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or(v)
                } else {
                    v
                }
            })
            .collect()
    };
    let mut groups: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
    let mut order = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let l = label(r);
        if !groups.contains_key(&l) {
            order.push(l.clone());
        }
        groups.entry(l).or_default().push(i);
    }
    let cols = columns(&runs, &args.split, &args.columns);
    // Text columns go before the numbers: which rule each run's fusion used.
    let chosen = args.columns.iter().any(|c| c == "chosen");
    let rule_of = |r: &Run| -> Option<String> {
        r.summary
            .get(&args.split)?
            .get("fusion_rule")?
            .as_str()
            .map(str::to_string)
    };
    let mut md = String::new();
    let head: Vec<String> = by
        .iter()
        .cloned()
        .chain(["runs".to_string(), "seeds".to_string()])
        .chain(chosen.then(|| "fusion chosen".to_string()))
        .chain(cols.iter().map(|(n, _)| n.clone()))
        .collect();
    let _ = writeln!(md, "| {} |", head.join(" | "));
    let _ = writeln!(md, "|{}|", vec!["---"; head.len()].join("|"));
    let mut csv = String::new();
    let csv_head: Vec<String> = by
        .iter()
        .cloned()
        .chain(["runs".to_string(), "seeds".to_string()])
        .chain(chosen.then(|| "fusion chosen".to_string()))
        .chain(
            cols.iter()
                .flat_map(|(n, _)| [format!("{n} mean"), format!("{n} std")]),
        )
        .collect();
    let _ = writeln!(
        csv,
        "{}",
        csv_head
            .iter()
            .map(|h| csv_field(h))
            .collect::<Vec<_>>()
            .join(",")
    );
    for l in &order {
        let idx = &groups[l];
        let seeds: Vec<String> = idx
            .iter()
            .map(|&i| {
                runs[i]
                    .flags
                    .get("seed")
                    .map(show_value)
                    .unwrap_or_else(|| "-".into())
            })
            .collect();
        let mut cells: Vec<String> = l.clone();
        cells.push(idx.len().to_string());
        cells.push(seeds.join(" "));
        if chosen {
            let mut count: BTreeMap<String, usize> = BTreeMap::new();
            for &i in idx {
                if let Some(rule) = rule_of(&runs[i]) {
                    *count.entry(rule).or_default() += 1;
                }
            }
            let text: Vec<String> = count.iter().map(|(r, n)| format!("{r} {n}")).collect();
            cells.push(if text.is_empty() {
                "-".into()
            } else {
                text.join(", ")
            });
        }
        let mut csv_cells: Vec<String> = cells.clone();
        for (_, values) in &cols {
            let xs: Vec<f64> = idx.iter().filter_map(|&i| values[i]).collect();
            if xs.is_empty() {
                cells.push("-".into());
                csv_cells.extend(["".into(), "".into()]);
                continue;
            }
            let (m, s) = mean_std(&xs);
            let missing = if xs.len() < idx.len() {
                format!(" ({} of {})", xs.len(), idx.len())
            } else {
                String::new()
            };
            cells.push(if xs.len() > 1 {
                format!("{m:.2} ± {s:.2}{missing}")
            } else {
                format!("{m:.2}{missing}")
            });
            csv_cells.push(format!("{m}"));
            csv_cells.push(if xs.len() > 1 {
                format!("{s}")
            } else {
                String::new()
            });
        }
        let _ = writeln!(md, "| {} |", cells.join(" | "));
        let _ = writeln!(
            csv,
            "{}",
            csv_cells
                .iter()
                .map(|c| csv_field(c))
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    print!("{md}");
    println!(
        "\n{} runs from {}; {} metrics of the best-validation epoch; mean ± sample std over the runs of a row.",
        runs.len(),
        args.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        args.split
    );
    if let Some(path) = &args.csv {
        std::fs::write(path, csv).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
