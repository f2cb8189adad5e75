//! `mla robustness`: a checkpoint evaluated at every level of one perturbation of one
//! modality (a test-time missing rate or a corruption), over several perturbation seeds,
//! with the curve's relative robustness and, against a reference run's curve, its
//! effective robustness (see `mla_models::robustness`).

use crate::backend::{self, BackendChoice, OnBackend};
use crate::cmd_eval::{Loaded, Target};
use crate::cmd_report::mean_std;
use crate::perturb::masked;
use crate::plot::{write_line_svg, LinePlot, Series};
use crate::CliResult;
use mla_core::Backend;
use mla_models::checkpoint::write_atomic;
use mla_models::data::{
    seeded_subset, Corruption, CorruptionKind, Corruptor, MissingPolicy, MissingRates,
};
use mla_models::robustness::{
    effective_robustness, effective_robustness_sum, parse_levels, relative_robustness,
};
use mla_models::trainer::{eval, EvalMetrics, EvalOptions, FusionRule};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const FORMAT: &str = "mla-robustness/1";
pub const JSON: &str = "robustness.json";
pub const CSV: &str = "robustness.csv";
pub const SVG: &str = "robustness.svg";
/// Largest reference file read (a curve of 10,000 levels is far below it).
const MAX_REFERENCE_BYTES: u64 = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KindArg {
    /// The modality hidden from a fraction LEVEL of the samples (keep-one).
    Missing,
    Gaussian,
    Saltpepper,
    Dropout,
    Timemask,
    Freqmask,
}

impl KindArg {
    fn corruption(self) -> Option<CorruptionKind> {
        match self {
            KindArg::Missing => None,
            KindArg::Gaussian => Some(CorruptionKind::Gaussian),
            KindArg::Saltpepper => Some(CorruptionKind::SaltPepper),
            KindArg::Dropout => Some(CorruptionKind::Dropout),
            KindArg::Timemask => Some(CorruptionKind::TimeMask),
            KindArg::Freqmask => Some(CorruptionKind::FreqMask),
        }
    }
    fn name(self) -> &'static str {
        match self.corruption() {
            None => "missing",
            Some(k) => k.name(),
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// The modality to perturb.
    #[arg(long, value_name = "NAME")]
    modality: String,
    /// The perturbation: missing (the modality hidden from a fraction LEVEL
    /// of the samples; a sample left with nothing gets it back) or a
    /// corruption of `mla eval --corrupt` at LEVEL.
    #[arg(long, value_enum)]
    kind: KindArg,
    /// Levels: START:END:STEP (END included) or a comma list, increasing;
    /// fractions in [0, 1] except gaussian (standard deviations).
    #[arg(long, default_value = "0:1:0.1")]
    levels: String,
    /// Perturbation seeds per level (seed, seed + 1, ...); a level of 0 is
    /// the unperturbed evaluation and runs once.
    #[arg(long, value_name = "N", default_value_t = 3)]
    seeds: u64,
    /// First perturbation seed.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Another checkpoint's robustness.json over the same perturbation and
    /// levels: effective robustness is measured against its curve.
    #[arg(long, value_name = "FILE")]
    reference: Option<PathBuf>,
    /// Fusion rule of the fused accuracy. [default: the run's]
    #[arg(long)]
    fusion: Option<FusionRule>,
    /// Directory for robustness.json, robustness.csv and the plot (created;
    /// files there are replaced).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Evaluate a seeded random subset of this many samples of the split
    /// (the same subset at every level and seed; quick sweeps).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// No per-level progress lines.
    #[arg(long)]
    quiet: bool,
    /// CPU threads (rayon and GEMM pools). [default: every core]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
}

/// Mean and sample standard deviation over the seeds, with the values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub per_seed: Vec<f64>,
}

impl Stat {
    fn of(xs: Vec<f64>) -> Stat {
        let (mean, std) = mean_std(&xs);
        Stat {
            mean,
            std,
            per_seed: xs,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Level {
    pub level: f64,
    pub fused_accuracy: Stat,
    pub fused_macro_f1: Stat,
    /// Each modality's accuracy alone over the samples that still have it
    /// (absent where no evaluated sample has it).
    pub modality_accuracy: Vec<(String, Stat)>,
}

/// `robustness.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub format: String,
    pub checkpoint: PathBuf,
    pub data: PathBuf,
    pub split: String,
    pub method: String,
    pub fusion: FusionRule,
    pub modality: String,
    pub kind: KindArg,
    /// The model's modalities.
    pub modalities: Vec<String>,
    pub seeds: Vec<u64>,
    pub samples: u64,
    pub levels: Vec<Level>,
    /// Area under the mean fused accuracy, levels normalised to [0, 1].
    pub relative_robustness: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<PathBuf>,
    /// Area of the gap to the reference's mean fused accuracy, both curves
    /// offset to agree at the first level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_robustness: Option<f64>,
    /// MultiBench's form of it: the sum of that gap over the levels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_robustness_sum: Option<f64>,
}

impl Report {
    fn curve(&self) -> (Vec<f64>, Vec<f64>) {
        self.levels
            .iter()
            .map(|l| (l.level, l.fused_accuracy.mean))
            .unzip()
    }

    pub fn read(path: &Path) -> CliResult<Report> {
        let len = std::fs::metadata(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?
            .len();
        if len > MAX_REFERENCE_BYTES {
            return Err(format!(
                "{}: {len} bytes, more than a robustness report may have",
                path.display()
            )
            .into());
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let r: Report = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a robustness report: {e}", path.display()))?;
        if r.format != FORMAT {
            return Err(format!(
                "{}: format {:?}, expected {FORMAT:?}",
                path.display(),
                r.format
            )
            .into());
        }
        Ok(r)
    }
}

pub fn run(args: Args) -> CliResult {
    backend::set_threads(args.threads)?;
    backend::dispatch(args.backend, args)
}

impl OnBackend for Args {
    type Output = ();

    fn run<B: Backend<f32>>(self, backend: B, _name: &str) -> CliResult {
        let levels = parse_levels(&self.levels)?;
        if self.seeds == 0 {
            return Err("--seeds must be at least 1".into());
        }
        // Everything that can be refused is refused before the evaluations.
        let reference = self
            .reference
            .as_ref()
            .map(|p| self.check_reference(p, &levels))
            .transpose()?;
        std::fs::create_dir_all(&self.out)
            .map_err(|e| format!("{}: cannot create: {e}", self.out.display()))?;
        let Loaded {
            data,
            dataset,
            model,
            layout,
            cfg,
            fit,
            split,
            mut samples,
        } = self.target.load(&backend)?;
        if !layout.modalities.contains(&self.modality) {
            return Err(format!(
                "--modality {}: the model has modalities {}",
                self.modality,
                layout.modalities.join(", ")
            )
            .into());
        }
        if let Some(n) = self.limit {
            if n == 0 {
                return Err("--limit must be at least 1".into());
            }
            samples = seeded_subset(&samples, n, 0);
        }
        let corruptor = match self.kind.corruption() {
            None => None,
            Some(kind) => {
                let spec = Corruption {
                    modality: self.modality.clone(),
                    kind,
                    level: 0.0,
                };
                let c = Corruptor::new(&dataset, &[spec], self.seed)?;
                // Every level is checked before the first evaluation.
                for &l in &levels {
                    c.at(l, self.seed)?;
                }
                Some(c)
            }
        };
        if corruptor.is_none() {
            if let Some(&l) = levels.iter().find(|&&l| !(0.0..=1.0).contains(&l)) {
                return Err(format!("missing level {l}: a rate must be in [0, 1]").into());
            }
        }
        let seeds: Vec<u64> = (0..self.seeds).map(|k| self.seed + k).collect();
        let eval_at = |level: f64, seed: u64| -> CliResult<EvalMetrics> {
            let mut opts = EvalOptions {
                fusion: self.fusion,
                fit: fit.clone(),
                ..EvalOptions::default()
            };
            let ds = match &corruptor {
                Some(c) => {
                    opts.corrupt = Some(Arc::new(c.at(level, seed)?));
                    dataset.clone()
                }
                None => {
                    let rates: MissingRates = format!("{}={level}", self.modality).parse()?;
                    masked(
                        &dataset,
                        &samples,
                        Some(&rates),
                        seed,
                        MissingPolicy::KeepOne,
                    )?
                    .0
                }
            };
            Ok(eval::evaluate(&model, &cfg, &layout, &ds, &samples, &opts)?)
        };
        let mut out_levels = Vec::with_capacity(levels.len());
        let mut samples_seen = 0;
        for &level in &levels {
            let runs: Vec<EvalMetrics> = if level == 0.0 {
                vec![eval_at(0.0, seeds[0])?]
            } else {
                seeds
                    .iter()
                    .map(|&s| eval_at(level, s))
                    .collect::<CliResult<_>>()?
            };
            samples_seen = runs[0].samples;
            let stat = |f: &dyn Fn(&EvalMetrics) -> f64| Stat::of(runs.iter().map(f).collect());
            let l = Level {
                level,
                fused_accuracy: stat(&|m| m.fused_accuracy),
                fused_macro_f1: stat(&|m| m.fused_macro_f1),
                modality_accuracy: layout
                    .modalities
                    .iter()
                    .filter(|name| runs.iter().all(|m| m.modality_accuracy.get(name).is_some()))
                    .map(|name| {
                        let s = stat(&|m| m.modality_accuracy.get(name).unwrap_or_default());
                        (name.clone(), s)
                    })
                    .collect(),
            };
            if !self.quiet {
                eprintln!(
                    "  {} {} {level}: fused accuracy {:.2} ± {:.2}%",
                    self.modality,
                    self.kind.name(),
                    100.0 * l.fused_accuracy.mean,
                    100.0 * l.fused_accuracy.std
                );
            }
            out_levels.push(l);
        }
        let (lv, acc): (Vec<f64>, Vec<f64>) = out_levels
            .iter()
            .map(|l| (l.level, l.fused_accuracy.mean))
            .unzip();
        let relative = if lv.len() >= 2 {
            relative_robustness(&lv, &acc)?
        } else {
            acc[0]
        };
        let (effective, effective_sum) = match &reference {
            Some(r) if lv.len() >= 2 => {
                let (_, ref_acc) = r.curve();
                (
                    Some(effective_robustness(&lv, &acc, &ref_acc)?),
                    Some(effective_robustness_sum(&lv, &acc, &ref_acc)?),
                )
            }
            _ => (None, None),
        };
        let report = Report {
            format: FORMAT.into(),
            checkpoint: self.target.checkpoint.clone(),
            data,
            split: split.to_string(),
            method: cfg.method.to_string(),
            fusion: self.fusion.unwrap_or(cfg.fusion),
            modality: self.modality.clone(),
            kind: self.kind,
            modalities: layout.modalities.clone(),
            seeds,
            samples: samples_seen,
            levels: out_levels,
            relative_robustness: relative,
            reference: self.reference.clone(),
            effective_robustness: effective,
            effective_robustness_sum: effective_sum,
        };
        self.write(&report)?;
        print!("{}", table(&report));
        Ok(())
    }
}

impl Args {
    /// The reference report, which must describe the same perturbation at the same levels.
    fn check_reference(&self, path: &Path, levels: &[f64]) -> CliResult<Report> {
        let r = Report::read(path)?;
        if r.kind != self.kind || r.modality != self.modality {
            return Err(format!(
                "--reference {}: a curve of {} {}, not of {} {}",
                path.display(),
                r.modality,
                r.kind.name(),
                self.modality,
                self.kind.name()
            )
            .into());
        }
        let theirs: Vec<f64> = r.levels.iter().map(|l| l.level).collect();
        let same = theirs.len() == levels.len()
            && theirs
                .iter()
                .zip(levels)
                .all(|(a, b)| (a - b).abs() <= 1e-9);
        if !same {
            return Err(format!(
                "--reference {}: levels {theirs:?}, this run's are {levels:?}",
                path.display()
            )
            .into());
        }
        Ok(r)
    }

    fn write(&self, report: &Report) -> CliResult {
        let json = serde_json::to_string_pretty(report)?;
        write_atomic(&self.out.join(JSON), json.as_bytes())?;
        write_atomic(&self.out.join(CSV), csv(report).as_bytes())?;
        plot(report, &self.out.join(SVG))
    }
}

fn stat_of<'a>(l: &'a Level, modality: &str) -> Option<&'a Stat> {
    l.modality_accuracy
        .iter()
        .find(|(n, _)| n == modality)
        .map(|(_, s)| s)
}

/// Fused and per-modality accuracy against the level, with the seeds' std as error bars.
fn plot(r: &Report, path: &Path) -> CliResult {
    let series_of = |name: String, pick: &dyn Fn(&Level) -> Option<&Stat>| -> Option<Series> {
        let (points, err): (Vec<(f64, f64)>, Vec<f64>) = r
            .levels
            .iter()
            .filter_map(|l| pick(l).map(|s| ((l.level, 100.0 * s.mean), 100.0 * s.std)))
            .unzip();
        (!points.is_empty()).then_some(Series {
            name,
            points,
            err: Some(err),
        })
    };
    let mut series: Vec<Series> = series_of("fused".into(), &|l| Some(&l.fused_accuracy))
        .into_iter()
        .collect();
    for m in &r.modalities {
        series.extend(series_of(format!("{m} alone"), &|l| stat_of(l, m)));
    }
    let title = format!(
        "{}: {} {} ({})",
        r.method,
        r.modality,
        r.kind.name(),
        r.split
    );
    let x_label = match r.kind {
        KindArg::Gaussian => "level (standard deviations)",
        _ => "level (fraction)",
    };
    write_line_svg(
        path,
        &LinePlot {
            title: &title,
            x_label,
            y_label: "accuracy %",
            series: &series,
        },
    )
}

/// `mla report --robustness DIR...`: the robustness reports under the
/// directories, one Markdown row per (method, modality, kind, levels).
pub fn report(dirs: &[PathBuf], plot_dir: Option<&Path>) -> CliResult {
    let mut found = Vec::new();
    for d in dirs {
        if !d.is_dir() {
            return Err(format!("{}: not a directory", d.display()).into());
        }
        crate::cmd_report::find_holding(d, JSON, 3, &mut found)?;
    }
    if found.is_empty() {
        return Err(format!("no {JSON} under the given directories").into());
    }
    let reports = found
        .iter()
        .map(|d| Report::read(&d.join(JSON)))
        .collect::<CliResult<Vec<_>>>()?;
    print!("{}", aggregate(&reports));
    if let Some(dir) = plot_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
        for (name, plot) in curves(&reports) {
            write_line_svg(
                &dir.join(format!("{name}.svg")),
                &LinePlot {
                    title: &name,
                    x_label: "level",
                    y_label: "fused accuracy %",
                    series: &plot,
                },
            )?;
        }
    }
    println!(
        "\n{} robustness reports; mean ± sample std over the checkpoints of a row \
         (each checkpoint's value is its mean over the perturbation seeds); accuracy in %.",
        reports.len()
    );
    Ok(())
}

/// The reports grouped by (modality, kind, method, levels), in that order.
#[allow(clippy::type_complexity)]
fn grouped(reports: &[Report]) -> Vec<((String, &'static str, String, String), Vec<&Report>)> {
    let mut groups: Vec<((String, &'static str, String, String), Vec<&Report>)> = Vec::new();
    for r in reports {
        let levels: Vec<String> = r.levels.iter().map(|l| l.level.to_string()).collect();
        let k = (
            r.modality.clone(),
            r.kind.name(),
            r.method.clone(),
            levels.join(","),
        );
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(r),
            None => groups.push((k, vec![r])),
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
}

/// Per (modality, kind): one series per method (and levels), the mean over
/// its checkpoints of their mean fused accuracy, the checkpoints' std as
/// error bars.
fn curves(reports: &[Report]) -> Vec<(String, Vec<Series>)> {
    let mut out: Vec<(String, Vec<Series>)> = Vec::new();
    for ((modality, kind, method, _), rs) in grouped(reports) {
        let plot = format!("{modality}-{kind}");
        let n = rs.iter().map(|r| r.levels.len()).min().unwrap_or(0);
        let (points, err): (Vec<(f64, f64)>, Vec<f64>) = (0..n)
            .map(|i| {
                let accs: Vec<f64> = rs.iter().map(|r| r.levels[i].fused_accuracy.mean).collect();
                let (m, s) = mean_std(&accs);
                ((rs[0].levels[i].level, 100.0 * m), 100.0 * s)
            })
            .unzip();
        let series = Series {
            name: format!("{method} ({} checkpoints)", rs.len()),
            points,
            err: Some(err),
        };
        match out.iter_mut().find(|(p, _)| *p == plot) {
            Some((_, v)) => v.push(series),
            None => out.push((plot, vec![series])),
        }
    }
    out
}

/// The Markdown table of [`report`].
pub fn aggregate(reports: &[Report]) -> String {
    let pm = |xs: Vec<f64>, scale: f64| {
        let (m, s) = mean_std(&xs);
        let digits = if scale == 1.0 { 4 } else { 2 };
        format!("{:.digits$} ± {:.digits$}", scale * m, scale * s)
    };
    let mut out = String::from(
        "| modality | kind | method | levels | checkpoints | clean acc. | acc. at last level | relative robustness | effective robustness |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for ((modality, kind, method, levels), rs) in &grouped(reports) {
        let first = rs.iter().map(|r| r.levels[0].fused_accuracy.mean).collect();
        let last = rs
            .iter()
            .map(|r| r.levels[r.levels.len() - 1].fused_accuracy.mean)
            .collect();
        let rel = rs.iter().map(|r| r.relative_robustness).collect();
        let eff: Vec<f64> = rs.iter().filter_map(|r| r.effective_robustness).collect();
        let eff = if eff.is_empty() {
            "-".to_string()
        } else {
            format!("{} ({} refs)", pm(eff.clone(), 1.0), eff.len())
        };
        out += &format!(
            "| {modality} | {kind} | {method} | {levels} | {} | {} | {} | {} | {eff} |\n",
            rs.len(),
            pm(first, 100.0),
            pm(last, 100.0),
            pm(rel, 1.0),
        );
    }
    out
}

/// One row per level: means and standard deviations over the seeds.
pub fn csv(r: &Report) -> String {
    let mut head = vec![
        "level".to_string(),
        "seeds".into(),
        "fused_accuracy_mean".into(),
        "fused_accuracy_std".into(),
        "fused_macro_f1_mean".into(),
        "fused_macro_f1_std".into(),
    ];
    for name in &r.modalities {
        head.push(format!("{name}_accuracy_mean"));
        head.push(format!("{name}_accuracy_std"));
    }
    let mut out = head.join(",") + "\n";
    for l in &r.levels {
        let mut row = vec![
            l.level.to_string(),
            l.fused_accuracy.per_seed.len().to_string(),
            l.fused_accuracy.mean.to_string(),
            l.fused_accuracy.std.to_string(),
            l.fused_macro_f1.mean.to_string(),
            l.fused_macro_f1.std.to_string(),
        ];
        for name in &r.modalities {
            match stat_of(l, name) {
                Some(s) => {
                    row.push(s.mean.to_string());
                    row.push(s.std.to_string());
                }
                // No evaluated sample has the modality at this level.
                None => row.extend([String::new(), String::new()]),
            }
        }
        out += &(row.join(",") + "\n");
    }
    out
}

fn table(r: &Report) -> String {
    let mut out = format!(
        "{} ({}): {} {} on the {} split ({} samples), seeds {:?}\n",
        r.checkpoint.display(),
        r.method,
        r.modality,
        r.kind.name(),
        r.split,
        r.samples,
        r.seeds
    );
    let names = &r.modalities;
    out += &format!(
        "  {:>8}  {:>15}  {:>15}",
        "level", "fused acc %", "macro-F1 %"
    );
    for n in names {
        out += &format!("  {:>15}", format!("{n} acc %"));
    }
    out += "\n";
    let pm = |s: &Stat| format!("{:.2} ± {:.2}", 100.0 * s.mean, 100.0 * s.std);
    for l in &r.levels {
        out += &format!(
            "  {:>8}  {:>15}  {:>15}",
            l.level,
            pm(&l.fused_accuracy),
            pm(&l.fused_macro_f1)
        );
        for name in names {
            let cell = match stat_of(l, name) {
                Some(s) => pm(s),
                None => "-".into(),
            };
            out += &format!("  {cell:>15}");
        }
        out += "\n";
    }
    out += &format!("  relative robustness {:.4}", r.relative_robustness);
    if let (Some(e), Some(es)) = (r.effective_robustness, r.effective_robustness_sum) {
        out += &format!(
            "; effective robustness {e:+.4} (MultiBench sum {es:+.4}) against {}",
            r.reference.as_deref().unwrap_or(Path::new("?")).display()
        );
    }
    out + "\n"
}
