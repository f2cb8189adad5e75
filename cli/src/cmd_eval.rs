//! `mla eval`: a checkpoint on a split of a dataset, optionally with
//! modalities removed at test time: accuracy and macro-F1 of the fused
//! prediction and of each modality, and the modalities' Shapley
//! contributions to the fused accuracy.

use crate::backend::{self, BackendChoice, OnBackend};
use crate::perturb::PerturbArgs;
use crate::report::{fusion_fit_lines, metrics_table, shapley_line};
use crate::CliResult;
use mla_core::Backend;
use mla_models::checkpoint::Checkpoint;
use mla_models::data::{Dataset, Split};
use mla_models::fusion::FusionFit;
use mla_models::model::Model;
use mla_models::shapley::Removal;
use mla_models::trainer::records::MissingReport;
use mla_models::trainer::{
    eval, load_fusion_fit, load_model, run_dir, EvalOptions, FusionRule, ModelLayout, TrainConfig,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    Train,
    #[value(alias = "val")]
    Validation,
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Validation => Split::Validation,
            SplitArg::Test => Split::Test,
        }
    }
}

/// How a modality outside a Shapley coalition is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RemovalArg {
    /// Its input replaced by zeros, the encoder run on them (BalanceBenchmark).
    ZeroInput,
    /// Its features set to zero before the head.
    ZeroFeature,
}

impl From<RemovalArg> for Removal {
    fn from(r: RemovalArg) -> Removal {
        match r {
            RemovalArg::ZeroInput => Removal::ZeroInput,
            RemovalArg::ZeroFeature => Removal::ZeroFeature,
        }
    }
}

/// Which checkpoint to evaluate on which split of which dataset (`mla eval`
/// and `mla robustness`).
#[derive(clap::Args)]
pub struct Target {
    /// A checkpoint written by `mla train` (best.safetensors or
    /// last.safetensors; any method).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// Dataset directory. [default: the dataset of the run the checkpoint belongs to]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Which split to evaluate.
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitArg,
}

/// A checkpoint loaded for evaluation: its model, the dataset and the
/// (non-empty) split's samples.
pub struct Loaded<B: Backend<f32>> {
    pub data: PathBuf,
    pub dataset: Arc<Dataset>,
    pub model: Model<B>,
    pub layout: ModelLayout,
    pub cfg: TrainConfig,
    pub fit: Option<FusionFit>,
    pub split: Split,
    pub samples: Vec<usize>,
}

impl Target {
    pub fn load<B: Backend<f32>>(&self, backend: &B) -> CliResult<Loaded<B>> {
        let ckpt = Checkpoint::load(&self.checkpoint)?;
        let data = data_dir(&self.checkpoint, self.data.as_deref())?;
        let dataset = Arc::new(Dataset::open(&data)?);
        let (model, layout, cfg) = load_model(backend, &dataset, &ckpt)?;
        let fit = load_fusion_fit(&ckpt, &layout)?;
        let split: Split = self.split.into();
        let samples = dataset.indices(split);
        if samples.is_empty() {
            return Err(format!("{}: the {split} split is empty", data.display()).into());
        }
        Ok(Loaded {
            data,
            dataset,
            model,
            layout,
            cfg,
            fit,
            split,
            samples,
        })
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Remove this modality at test time (repeat for several).
    #[arg(long, value_name = "NAME")]
    drop_modality: Vec<String>,
    #[command(flatten)]
    perturb: PerturbArgs,
    /// Fusion of MLA's per-modality logits (entropy, mean, calibrated,
    /// weighted, weighted-entropy, auto), with the parameters the run fitted
    /// on validation and stored in the checkpoint. [default: the run's]
    #[arg(long)]
    fusion: Option<FusionRule>,
    /// Removal of a modality for the Shapley contributions to the fused
    /// accuracy: zero-input (its input set to zeros, as BalanceBenchmark) or
    /// zero-feature (its features set to zero before the head).
    #[arg(long, value_enum, default_value = "zero-input")]
    shapley_removal: RemovalArg,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// CPU threads (rayon and GEMM pools). [default: every core]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
}

/// The dataset to evaluate `checkpoint` on: `data` when given, else the
/// dataset of the run the checkpoint belongs to (its `config.json`).
pub fn data_dir(checkpoint: &Path, data: Option<&Path>) -> CliResult<PathBuf> {
    if let Some(d) = data {
        return Ok(d.to_path_buf());
    }
    let dir = checkpoint
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.join(run_dir::CONFIG).is_file() {
        return Err(format!(
            "--data DIR is required: {} has no {} next to it naming its dataset",
            checkpoint.display(),
            run_dir::CONFIG
        )
        .into());
    }
    Ok(run_dir::read_config(dir)?.data)
}

pub fn run(args: Args) -> CliResult {
    backend::set_threads(args.threads)?;
    backend::dispatch(args.backend, args)
}

impl OnBackend for Args {
    type Output = ();

    fn run<B: Backend<f32>>(self, backend: B, name: &str) -> CliResult {
        let Loaded {
            data,
            dataset,
            model,
            layout,
            cfg,
            fit,
            split,
            samples,
        } = self.target.load(&backend)?;
        let perturbed = self.perturb.apply(&dataset, &samples)?;
        let opts = EvalOptions {
            fusion: self.fusion,
            fit: fit.clone(),
            drop: self.drop_modality.clone(),
            gap: true,
            shapley: self.shapley_removal.into(),
            corrupt: perturbed.corrupt.clone(),
        };
        let m = eval::evaluate(&model, &cfg, &layout, &perturbed.dataset, &samples, &opts)?;
        let fusion = self.fusion.unwrap_or(cfg.fusion);
        if self.json {
            let out = serde_json::json!({
                "checkpoint": self.target.checkpoint,
                "data": data,
                "split": split.to_string(),
                "method": cfg.method,
                "fusion": fusion,
                "fusion_fit": fit,
                "dropped": self.drop_modality,
                "missing": perturbed.mask.as_ref().map(MissingReport::of),
                "corrupt": self.perturb.corrupt,
                "corrupt_seed": (!self.perturb.corrupt.is_empty()).then_some(self.perturb.corrupt_seed),
                "backend": name,
                "metrics": m,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            let dropped = if self.drop_modality.is_empty() {
                String::new()
            } else {
                format!(", without {}", self.drop_modality.join(", "))
            };
            println!(
                "{} on the {split} split of {}{dropped}{} ({} samples):",
                self.target.checkpoint.display(),
                data.display(),
                self.perturb.describe(),
                m.samples
            );
            print!(
                "{}",
                metrics_table(cfg.method, fusion, None, &m, &split.to_string())
            );
            if let Some(f) = &fit {
                print!("{}", fusion_fit_lines(f));
            }
            print!("{}", shapley_line(&m, &split.to_string()));
        }
        Ok(())
    }
}
