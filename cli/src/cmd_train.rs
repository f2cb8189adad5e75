//! `mla train`: MLA or a baseline on an mla-dataset/1 directory, or with no
//! flags MLA on AV-MNIST prepared into the cache on first use.

use crate::backend::{self, BackendChoice, OnBackend};
use crate::config_file;
use crate::distributed;
use crate::report::{summary_table, Progress};
use crate::CliResult;
use mla_core::Backend;
use mla_models::data::{
    prepare_avmnist, AugmentSpec, AvmnistOptions, Dataset, MissingPolicy, MissingRates,
};
use mla_models::encoders::{default_encoder_spec, default_feature_size};
use mla_models::trainer::{
    run_dir, AgmParams, AlphaMode, AlphaSchedule, BlendRule, EncoderInit, EpochRecord, EpochWindow,
    FusionRule, GblendingParams, HgmMode, LrSchedule, MethodKind, MissingTrain, MmparetoParams,
    ModulatedTensors, NormScope, Observer, OgmParams, OgmRule, OptimizerKind, PmrParams,
    ReconboostParams, RunDir, StageSchedule, TrainConfig, Trainer, DEFAULT_ALPHA,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Dataset directory in the mla-dataset/1 format. [default: AV-MNIST,
    /// prepared from --raw into the cache directory on first use]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Raw AV-MNIST sources (mnist/ and fsdd/) for a run without --data.
    #[arg(long, value_name = "DIR", default_value = "../shared/data/avmnist")]
    raw: PathBuf,
    /// Where a run without --data keeps the prepared AV-MNIST.
    /// [default: $XDG_CACHE_HOME/mla, else ~/.cache/mla]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Training procedure: mla (alternating unimodal steps, shared head),
    /// joint (concatenated features, one head), unimodal (one modality),
    /// ogm / ogm-ge (joint with on-the-fly gradient modulation, -ge adds
    /// Gaussian noise), pmr (joint plus the weaker modality's prototype
    /// cross-entropy), mmpareto (plus one head per modality; Pareto
    /// integration of multimodal and unimodal encoder gradients), agm
    /// (Shapley-decomposed logits, each modality's gradient share scaled),
    /// reconboost (stages alternating one modality's boosting step with a
    /// correction of the whole ensemble, shared head), gblending (losses of
    /// every modality's slice and the fused output, weighted by estimated
    /// generalisation/overfitting). mla and reconboost fuse per-modality
    /// logits by --fusion; the others use the concatenation head.
    #[arg(
        long,
        default_value = "mla",
        conflicts_with = "resume",
        value_name = "mla|joint|unimodal|ogm|ogm-ge|pmr|mmpareto|agm|reconboost|gblending"
    )]
    method: MethodKind,
    /// The modality of --method unimodal.
    #[arg(long, value_name = "NAME", conflicts_with = "resume")]
    modality: Option<String>,
    /// Encoder of every modality (cnn, mlp, resnet18, resnet18-small) or one
    /// per modality: image=cnn,audio=resnet18-small. ResNet encoders need
    /// [C, H, W] or [T, C, H, W] inputs and run on the CPU backend only (the
    /// CUDA backend lacks batch norm for now).
    /// [default: cnn for [C, H, W] inputs, mlp for vectors]
    #[arg(long, value_name = "SPEC", conflicts_with = "resume")]
    encoder: Option<String>,
    /// Size of every encoder's feature vector. [default: 128; with resnet18
    /// or resnet18-small encoders their last stage's width, 512 x --width-mult]
    #[arg(long, value_name = "S", conflicts_with = "resume")]
    feature_size: Option<usize>,
    /// Width multiplier of resnet18 / resnet18-small encoders (0.25 gives
    /// stage widths 16-32-64-128).
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "X",
        conflicts_with = "resume"
    )]
    width_mult: f64,
    /// Start encoders from torchvision-style ResNet-18 weights instead of
    /// at random: MODALITY=FILE,... where FILE is a plain safetensors state
    /// dict (PyTorch: `safetensors.torch.save_file(resnet.state_dict(),
    /// FILE)`; names conv1.weight, layer1.0.bn1.running_mean, ...; fc.*
    /// ignored), for a resnet18 or resnet18-small encoder of the same input
    /// channels and widths. Every name and shape is checked first.
    #[arg(long, value_name = "MODALITY=FILE,...", conflicts_with = "resume")]
    init_encoder: Option<EncoderInit>,
    /// Augment the training steps' inputs: MODALITY=crop:P (torchvision's
    /// RandomCrop with zero padding P: shifted by up to P pixels each way),
    /// MODALITY=flip (RandomHorizontalFlip, p 0.5) or MODALITY=crop:P+flip,
    /// comma-separated, for rows laid out [.., H, W]. Seeded per (seed,
    /// epoch, sample); evaluation, probes and method-side passes (PMR's
    /// prototypes, G-Blending's estimation) see the inputs as they are.
    #[arg(long, value_name = "MODALITY=OPS,...", conflicts_with = "resume")]
    augment: Option<AugmentSpec>,
    /// Training epochs; with --resume, the new total to train up to. [default: 3]
    #[arg(long)]
    epochs: Option<usize>,
    /// Samples per training mini-batch.
    #[arg(long, default_value_t = 64, conflicts_with = "resume")]
    batch_size: usize,
    /// Batch size of evaluation passes (does not change any result). [default: --batch-size]
    #[arg(long, conflicts_with = "resume")]
    eval_batch_size: Option<usize>,
    /// sgd (with --momentum), adam or adamw.
    #[arg(long, default_value = "sgd", conflicts_with = "resume")]
    optimizer: OptimizerKind,
    /// Learning rate.
    #[arg(long, default_value_t = 0.01, conflicts_with = "resume")]
    lr: f64,
    /// Learning rate per epoch e of E: constant, cosine (lr (1 + cos(pi
    /// (e-1)/E)) / 2, to 0 per epoch) or step:N:GAMMA (lr GAMMA^floor((e-1)/N)).
    /// Each epoch's rate is in metrics.jsonl. G-Blending's estimation copies
    /// train at --lr.
    #[arg(
        long,
        default_value = "constant",
        value_name = "SCHEDULE",
        conflicts_with = "resume"
    )]
    lr_schedule: LrSchedule,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9, conflicts_with = "resume")]
    momentum: f64,
    /// L2 weight decay, >= 0 (decoupled for adamw).
    #[arg(long, default_value_t = 1e-4, conflicts_with = "resume")]
    weight_decay: f64,
    /// Head gradient modification (MLA only): none, owm (one P) or cross (one P per modality). [default: owm for mla]
    #[arg(long, conflicts_with = "resume")]
    hgm: Option<HgmMode>,
    /// HGM alpha (> 0). It competes with r^T P r (the squared batch-mean feature
    /// not yet protected): a small alpha nearly freezes the shared head, a very
    /// large one turns HGM off. The fraction of the head gradient kept is
    /// reported every epoch; tune alpha with it.
    #[arg(long, default_value_t = DEFAULT_ALPHA, conflicts_with = "resume")]
    alpha: f64,
    /// How --alpha is read: absolute (as given) or relative (times the
    /// running mean of r^T r, so one alpha transfers across encoders and
    /// feature sizes; relative 1 means "as large as a typical feature").
    #[arg(long, default_value = "absolute", conflicts_with = "resume")]
    alpha_mode: AlphaMode,
    /// Alpha over training: constant (--alpha) or linear:START:END, from
    /// START at the first step to END at the last (START, END > 0, read in
    /// --alpha-mode; replaces --alpha).
    #[arg(
        long,
        default_value = "constant",
        value_name = "SCHEDULE",
        conflicts_with = "resume"
    )]
    alpha_schedule: AlphaSchedule,
    /// Test-time fusion of MLA's per-modality logits: entropy (the paper's
    /// per-sample entropy weights), mean, calibrated (per-modality
    /// temperatures fitted on validation NLL, then entropy weights),
    /// weighted (non-negative logit weights fitted on validation NLL),
    /// weighted-entropy (both), or auto (the rule most accurate on
    /// validation). Parameters come from the validation split only; every
    /// rule is reported.
    #[arg(long, default_value = "auto", conflicts_with = "resume")]
    fusion: FusionRule,
    /// OGM/OGM-GE: alpha of k = 1 - tanh(alpha * rho), >= 0 (0: no damping).
    /// [default: 0.8, the official README's CREMA-D value]
    #[arg(long, value_name = "ALPHA", conflicts_with = "resume")]
    ogm_alpha: Option<f64>,
    /// OGM/OGM-GE: which encoder gradients are scaled: weights (every matrix
    /// and kernel) or conv-kernels (4-d kernels only, the official code). [default: weights]
    #[arg(long, value_name = "weights|conv-kernels", conflicts_with = "resume")]
    ogm_tensors: Option<ModulatedTensors>,
    /// OGM/OGM-GE: official (damp the dominant modality, 1 - tanh(alpha rho))
    /// or continuous (1 - tanh(alpha relu(rho - 1)) for every modality). [default: official]
    #[arg(long, value_name = "official|continuous", conflicts_with = "resume")]
    ogm_rule: Option<OgmRule>,
    /// OGM/OGM-GE/PMR: epochs START:END (from 0, inclusive) in which the
    /// method modulates; outside it the step is the joint step.
    /// [default: 0:50 for ogm, 0:60 for pmr (official values)]
    #[arg(long, value_name = "START:END", conflicts_with = "resume")]
    modulation_window: Option<EpochWindow>,
    /// PMR: weight of the weaker modality's prototype cross-entropy, >= 0.
    /// [default: 1.0, the official CGMNIST value]
    #[arg(long, value_name = "ALPHA", conflicts_with = "resume")]
    pmr_alpha: Option<f64>,
    /// PMR: prototype momentum in [0, 1). [default: 0.0, every official run]
    #[arg(long, value_name = "MU", conflicts_with = "resume")]
    pmr_momentum: Option<f64>,
    /// MMPareto: rescale the encoder gradient over the whole encoder
    /// (global: keeps the no-conflict guarantee) or per tensor (the
    /// official code). [default: global]
    #[arg(long, value_name = "global|per-tensor", conflicts_with = "resume")]
    mmpareto_norm_scope: Option<NormScope>,
    /// MMPareto: encoder gradients get norm SCALE * max(|G|, |D|), > 0.
    /// [default: 1.5, the official code's constant]
    #[arg(long, value_name = "SCALE", conflicts_with = "resume")]
    mmpareto_scale: Option<f64>,
    /// AGM: alpha of kappa = exp(alpha (rbar - r)), >= 0. [default: 2.5, the
    /// official README's AV-MNIST example]
    #[arg(long, value_name = "ALPHA", conflicts_with = "resume")]
    agm_alpha: Option<f64>,
    /// AGM: upper clamp of rbar - r (official CREMA-D 10, URFunny 7). [default: none]
    #[arg(long, value_name = "C", conflicts_with = "resume")]
    agm_clamp: Option<f64>,
    /// AGM: no gradient clipping (the official code clips to norm 1 when a
    /// head gradient element leaves [-1, 1]).
    #[arg(long, conflicts_with = "resume")]
    agm_no_clip: bool,
    /// AGM: keep the last kappa after the window, as the official hooks do.
    /// [default: kappa 1 outside the window]
    #[arg(long, conflicts_with = "resume")]
    agm_stale_kappa: bool,
    /// ReconBoost: weight w1 of the modality's own CE in phase 1, >= w2.
    /// [default: 5.0, the official CREMA-D value]
    #[arg(long, value_name = "W1", conflicts_with = "resume")]
    reconboost_w1: Option<f64>,
    /// ReconBoost: weight w2 of the reconcilement term, in [0, w1]. [default: 1.0, official]
    #[arg(long, value_name = "W2", conflicts_with = "resume")]
    reconboost_w2: Option<f64>,
    /// ReconBoost: epochs STAGE:CORRECT of each stage's phase 1 (one
    /// modality) and phase 2 (the ensemble), STAGE >= 1. [default: 1:1,
    /// BalanceBenchmark's; the official code runs 4:4]
    #[arg(long, value_name = "STAGE:CORRECT", conflicts_with = "resume")]
    reconboost_schedule: Option<StageSchedule>,
    /// ReconBoost: keep one optimizer across phases (BalanceBenchmark).
    /// [default: a fresh optimizer per phase, as the official code]
    #[arg(long, conflicts_with = "resume")]
    reconboost_keep_optimizer: bool,
    /// G-Blending: re-estimate the weights before every N-th epoch; 0: once,
    /// before the first. [default: 10, BalanceBenchmark's super_epoch]
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    gblending_every: Option<usize>,
    /// G-Blending: epochs each estimation trains a model copy per modality
    /// and for the output, >= 1 (>= 2 with --gblending-rule bb).
    /// [default: 10, BalanceBenchmark's super_epoch]
    #[arg(long, value_name = "K", conflicts_with = "resume")]
    gblending_epochs: Option<usize>,
    /// G-Blending: paper (losses before and after the estimation, weight
    /// max(G, 0)/O^2) or bb (BalanceBenchmark: "before" after the first
    /// estimation epoch, |G/O^2|); both with per-sample mean losses. [default: paper]
    #[arg(long, value_name = "paper|bb", conflicts_with = "resume")]
    gblending_rule: Option<BlendRule>,
    /// Seed of the initialisation, the batch order, the --train-limit and
    /// --eval-limit subsets and the augmentation.
    #[arg(long, default_value_t = 0, conflicts_with = "resume")]
    seed: u64,
    /// Hide modalities of train samples at these rates, on top of what the
    /// dataset lacks: `image=0.5,audio=0.3`, or `all=0.3` (a named modality
    /// overrides `all`); rates in [0, 1). A seeded per-sample mask over the
    /// whole train split (before --train-limit), stored in
    /// RUN_DIR/missing_mask.json and kept on --resume; validation and test
    /// stay complete. Each method meets a hidden modality as one missing
    /// from the dataset (see the README).
    #[arg(long, value_name = "NAME=RATE,...", conflicts_with = "resume")]
    missing_rate: Option<MissingRates>,
    /// What a train sample the mask would leave with no modality gets:
    /// keep-one (one of its modalities back, drawn uniformly; the observed
    /// rates, in the summary, fall short of the targets by these) or strict
    /// (an error). [default: keep-one]
    #[arg(long, value_name = "keep-one|strict", conflicts_with = "resume")]
    missing_policy: Option<MissingPolicy>,
    /// Seed of the mask. [default: --seed]
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    missing_seed: Option<u64>,
    /// Train on a seeded random subset of this many train samples.
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    train_limit: Option<usize>,
    /// Validate and test on seeded random subsets of this many samples each.
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    eval_limit: Option<usize>,
    /// CPU threads (rayon and GEMM pools). Same threads + seed + data = same metrics.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Run directory for config, metrics, summary and checkpoints. [default: runs/<method>-<time>]
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Replace a run already in --out (its config, metrics, summary and
    /// checkpoints are removed first). Without it such a directory is refused.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Continue the run in RUN_DIR from its last finished epoch (from the
    /// start when it was stopped before finishing one).
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// No progress bar or per-epoch lines.
    #[arg(long)]
    quiet: bool,
    /// Train as one rank of a data-parallel job: `mpirun -np W mla train
    /// --distributed ...` (a build with the `mpi` feature). Every rank draws
    /// the same global batches of --batch-size samples and trains on its
    /// share; gradients are averaged over the global batch. Rank 0 alone
    /// prints and writes the run directory; a failing rank ends the job.
    /// Every method; CPU backend (README, "Distributed training").
    #[arg(long)]
    distributed: bool,
    /// With --distributed: synchronised batch norm. Every training-mode
    /// batch-norm layer normalises with the mean and variance of the whole
    /// global batch (all ranks' rows) and updates its running statistics
    /// from them, so W ranks train what one process trains; two small
    /// all-reduces per layer forward and two backward. Needs ResNet
    /// encoders, every train sample with every modality (no --missing-rate)
    /// and rows for every rank in every global batch; refused with pmr,
    /// gblending and agm.
    #[arg(long, conflicts_with = "resume")]
    sync_bn: bool,
    /// Read flags from a TOML file: every flag of `mla train` is a key of
    /// the same name (`-` may be written `_`; switches take true/false),
    /// e.g. `method = "joint"`, `epochs = 8`, `lr = 0.01`. Flags on the
    /// command line override the file. Every run writes its resolved flags
    /// to RUN_DIR/config.toml: `--config RUN_DIR/config.toml --out NEW`
    /// trains the same configuration again.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The resolved flags (set by main from the parsed command line).
    #[arg(skip)]
    resolved: Option<toml::Table>,
}

impl Args {
    pub fn with_resolved(self, resolved: toml::Table) -> Self {
        Args {
            resolved: Some(resolved),
            ..self
        }
    }

    /// `config.toml` of a fresh run: the resolved flags with the dataset,
    /// backend and thread count actually used.
    fn write_config_toml(
        &self,
        run: &RunDir,
        data: &Path,
        backend: &str,
        cfg: &TrainConfig,
    ) -> CliResult {
        let Some(mut t) = self.resolved.clone() else {
            return Ok(());
        };
        let data = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
        t.insert(
            "data".into(),
            toml::Value::String(data.display().to_string()),
        );
        t.insert("backend".into(), toml::Value::String(backend.into()));
        t.insert(
            "threads".into(),
            toml::Value::Integer(mla_cpu::num_threads() as i64),
        );
        t.insert(
            "feature_size".into(),
            toml::Value::Integer(cfg.feature_size as i64),
        );
        t.insert("encoder".into(), toml::Value::String(cfg.encoder.clone()));
        run.write_text(run_dir::CONFIG_TOML, &config_file::render(&t)?)?;
        Ok(())
    }
}

/// On resume with a new `--epochs`, the run's `config.toml` (if it has one)
/// records the new total.
fn update_config_toml(run: &RunDir, epochs: usize) -> CliResult {
    let path = run.file(run_dir::CONFIG_TOML);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let mut t: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    t.insert("epochs".into(), toml::Value::Integer(epochs as i64));
    run.write_text(run_dir::CONFIG_TOML, &config_file::render(&t)?)?;
    Ok(())
}

impl Args {
    fn config(&self) -> CliResult<TrainConfig> {
        let hgm = match (self.method, self.hgm) {
            (MethodKind::Mla, h) => h.unwrap_or(HgmMode::Owm),
            (_, None | Some(HgmMode::None)) => HgmMode::None,
            (m, Some(h)) => {
                return Err(
                    format!("--hgm {h} applies to --method mla only (got --method {m})").into(),
                )
            }
        };
        if self.missing_rate.is_none() {
            if let Some(flag) = [
                ("--missing-policy", self.missing_policy.is_some()),
                ("--missing-seed", self.missing_seed.is_some()),
            ]
            .iter()
            .find_map(|(f, given)| given.then_some(f))
            {
                return Err(
                    format!("{flag} applies to a --missing-rate mask; none is given").into(),
                );
            }
        }
        let MethodParams {
            ogm,
            pmr,
            mmpareto,
            agm,
            reconboost,
            gblending,
        } = self.method_params()?;
        let cfg = TrainConfig {
            method: self.method,
            modality: self.modality.clone(),
            // Replaced by the dataset's default once it is open, when not given.
            encoder: self.encoder.clone().unwrap_or_else(|| "cnn".into()),
            feature_size: self.feature_size.unwrap_or_else(|| {
                default_feature_size(self.encoder.as_deref().unwrap_or("cnn"), self.width_mult)
            }),
            width_mult: self.width_mult,
            init_encoder: self.init_encoder.clone().unwrap_or_default(),
            augment: self.augment.clone().unwrap_or_default(),
            epochs: self.epochs.unwrap_or(TrainConfig::default().epochs),
            batch_size: self.batch_size,
            eval_batch_size: self.eval_batch_size.unwrap_or(self.batch_size),
            optimizer: self.optimizer,
            lr: self.lr,
            lr_schedule: self.lr_schedule,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            hgm,
            alpha: self.alpha,
            alpha_mode: self.alpha_mode,
            alpha_schedule: self.alpha_schedule,
            fusion: self.fusion,
            seed: self.seed,
            ogm,
            pmr,
            mmpareto,
            agm,
            reconboost,
            gblending,
            missing: self.missing_rate.clone().map(|rates| MissingTrain {
                rates,
                policy: self.missing_policy.unwrap_or_default(),
                seed: self.missing_seed.unwrap_or(self.seed),
            }),
            train_limit: self.train_limit,
            eval_limit: self.eval_limit,
            sync_bn: self.sync_bn,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The balancing methods' parameters from their flags (`None` for the
/// methods not asked for).
struct MethodParams {
    ogm: Option<OgmParams>,
    pmr: Option<PmrParams>,
    mmpareto: Option<MmparetoParams>,
    agm: Option<AgmParams>,
    reconboost: Option<ReconboostParams>,
    gblending: Option<GblendingParams>,
}

impl Args {
    /// The method flags given, checked against `--method`.
    fn method_params(&self) -> CliResult<MethodParams> {
        let m = self.method;
        let given = |flags: &[(&str, bool)]| -> Vec<String> {
            flags
                .iter()
                .filter(|(_, g)| *g)
                .map(|(f, _)| format!("--{f}"))
                .collect()
        };
        let ogm_flags = given(&[
            ("ogm-alpha", self.ogm_alpha.is_some()),
            ("ogm-tensors", self.ogm_tensors.is_some()),
            ("ogm-rule", self.ogm_rule.is_some()),
        ]);
        let pmr_flags = given(&[
            ("pmr-alpha", self.pmr_alpha.is_some()),
            ("pmr-momentum", self.pmr_momentum.is_some()),
        ]);
        let mmpareto_flags = given(&[
            ("mmpareto-norm-scope", self.mmpareto_norm_scope.is_some()),
            ("mmpareto-scale", self.mmpareto_scale.is_some()),
        ]);
        let agm_flags = given(&[
            ("agm-alpha", self.agm_alpha.is_some()),
            ("agm-clamp", self.agm_clamp.is_some()),
            ("agm-no-clip", self.agm_no_clip),
            ("agm-stale-kappa", self.agm_stale_kappa),
        ]);
        let reconboost_flags = given(&[
            ("reconboost-w1", self.reconboost_w1.is_some()),
            ("reconboost-w2", self.reconboost_w2.is_some()),
            ("reconboost-schedule", self.reconboost_schedule.is_some()),
            ("reconboost-keep-optimizer", self.reconboost_keep_optimizer),
        ]);
        let gblending_flags = given(&[
            ("gblending-every", self.gblending_every.is_some()),
            ("gblending-epochs", self.gblending_epochs.is_some()),
            ("gblending-rule", self.gblending_rule.is_some()),
        ]);
        let is_ogm = matches!(m, MethodKind::Ogm | MethodKind::OgmGe);
        let wrong = match () {
            _ if m != MethodKind::Reconboost && !reconboost_flags.is_empty() => {
                Some((reconboost_flags, "reconboost"))
            }
            _ if m != MethodKind::Gblending && !gblending_flags.is_empty() => {
                Some((gblending_flags, "gblending"))
            }
            _ if m != MethodKind::Agm && !agm_flags.is_empty() => Some((agm_flags, "agm")),
            _ if m != MethodKind::Mmpareto && !mmpareto_flags.is_empty() => {
                Some((mmpareto_flags, "mmpareto"))
            }
            _ if !is_ogm && !ogm_flags.is_empty() => Some((ogm_flags, "ogm or ogm-ge")),
            _ if m != MethodKind::Pmr && !pmr_flags.is_empty() => Some((pmr_flags, "pmr")),
            _ if !is_ogm
                && !matches!(m, MethodKind::Pmr | MethodKind::Agm)
                && self.modulation_window.is_some() =>
            {
                Some((
                    vec!["--modulation-window".into()],
                    "ogm, ogm-ge, pmr or agm",
                ))
            }
            _ => None,
        };
        if let Some((flags, which)) = wrong {
            return Err(format!(
                "{} applies to --method {which} only (got --method {m})",
                flags.join(", ")
            )
            .into());
        }
        let ogm = is_ogm.then(|| {
            let d = OgmParams::default();
            OgmParams {
                alpha: self.ogm_alpha.unwrap_or(d.alpha),
                window: self.modulation_window.unwrap_or(d.window),
                tensors: self.ogm_tensors.unwrap_or(d.tensors),
                rule: self.ogm_rule.unwrap_or(d.rule),
            }
        });
        let pmr = (m == MethodKind::Pmr).then(|| {
            let d = PmrParams::default();
            PmrParams {
                alpha: self.pmr_alpha.unwrap_or(d.alpha),
                momentum: self.pmr_momentum.unwrap_or(d.momentum),
                window: self.modulation_window.unwrap_or(d.window),
            }
        });
        let mmpareto = (m == MethodKind::Mmpareto).then(|| {
            let d = MmparetoParams::default();
            MmparetoParams {
                norm_scope: self.mmpareto_norm_scope.unwrap_or(d.norm_scope),
                scale: self.mmpareto_scale.unwrap_or(d.scale),
            }
        });
        let agm = (m == MethodKind::Agm).then(|| {
            let d = AgmParams::default();
            AgmParams {
                alpha: self.agm_alpha.unwrap_or(d.alpha),
                window: self.modulation_window.unwrap_or(d.window),
                clamp: self.agm_clamp.or(d.clamp),
                clip: !self.agm_no_clip,
                stale_kappa: self.agm_stale_kappa,
            }
        });
        let reconboost = (m == MethodKind::Reconboost).then(|| {
            let d = ReconboostParams::default();
            ReconboostParams {
                w1: self.reconboost_w1.unwrap_or(d.w1),
                w2: self.reconboost_w2.unwrap_or(d.w2),
                schedule: self.reconboost_schedule.unwrap_or(d.schedule),
                reset_optimizer: !self.reconboost_keep_optimizer,
            }
        });
        let gblending = (m == MethodKind::Gblending).then(|| {
            let d = GblendingParams::default();
            GblendingParams {
                every: self.gblending_every.unwrap_or(d.every),
                epochs: self.gblending_epochs.unwrap_or(d.epochs),
                rule: self.gblending_rule.unwrap_or(d.rule),
            }
        });
        Ok(MethodParams {
            ogm,
            pmr,
            mmpareto,
            agm,
            reconboost,
            gblending,
        })
    }
}

pub fn run(args: Args) -> CliResult {
    backend::set_threads(args.threads)?;
    backend::dispatch(args.backend, args)
}

fn open_dataset(dir: &Path) -> CliResult<Arc<Dataset>> {
    Ok(Arc::new(Dataset::open(dir)?))
}

impl OnBackend for Args {
    type Output = ();

    fn run<B: Backend<f32>>(self, backend: B, name: &str) -> CliResult {
        if self.sync_bn && !self.distributed {
            return Err("--sync-bn synchronises batch norm over the ranks of a data-parallel job: it needs --distributed (mpirun -np W mla train --distributed --sync-bn ...)".into());
        }
        if !self.distributed {
            return self.train(backend, name, None);
        }
        if name != "cpu" {
            return Err(format!("--distributed trains on the CPU backend for now (the backend picked is {name}; pass --backend cpu): GPU gradients over NCCL are not implemented").into());
        }
        let job = distributed::join()?;
        match self.train(backend, name, Some(&job)) {
            // Dropping the job finalises MPI, which a clean exit needs.
            Ok(()) => Ok(()),
            Err(e) => {
                eprintln!("error: rank {} of {}: {e}", job.rank(), job.world());
                job.abort(1)
            }
        }
    }
}

impl Args {
    fn train<B: Backend<f32>>(
        self,
        backend: B,
        name: &str,
        job: Option<&distributed::Job>,
    ) -> CliResult {
        let root = job.is_none_or(|j| j.rank() == 0);
        let quiet = self.quiet || !root;
        let mut trainer = match &self.resume {
            Some(dir) => {
                let rc = RunDir::open_reading(dir)?.read_config()?;
                let data = self.data.clone().unwrap_or(rc.data);
                if self.epochs.is_some_and(|e| e == 0) {
                    return Err("--epochs must be at least 1".into());
                }
                let t = if root {
                    Trainer::resume(backend, open_dataset(&data)?, dir, self.epochs)?
                } else {
                    Trainer::resume_reading(backend, open_dataset(&data)?, dir, self.epochs)?
                };
                if let (Some(e), Some(rd)) = (self.epochs, t.run_dir()) {
                    update_config_toml(rd, e)?;
                }
                t
            }
            None => {
                let mut cfg = self.config()?;
                let data = match &self.data {
                    Some(d) => d.clone(),
                    // One rank prepares a missing dataset; the others would
                    // race it for the cache.
                    None => {
                        default_dataset(&self.raw, self.cache_dir.as_deref(), quiet, job.is_none())?
                    }
                };
                let dataset = open_dataset(&data)?;
                if self.encoder.is_none() {
                    cfg.encoder = default_encoder_spec(
                        dataset
                            .modalities()
                            .iter()
                            .map(|m| (m.name.as_str(), m.shape.as_slice())),
                    );
                    if cfg.encoder != "cnn" && !quiet {
                        eprintln!(
                            "encoders: {} (the default for these input shapes: mlp for vectors; --encoder to choose)",
                            cfg.encoder
                        );
                    }
                }
                let t = Trainer::new(backend, dataset, cfg)?;
                if root {
                    let out = self
                        .out
                        .clone()
                        .unwrap_or_else(|| default_run_dir(t.config()));
                    let t = t.with_new_run_dir(&out, self.overwrite)?;
                    if let Some(rd) = t.run_dir() {
                        self.write_config_toml(rd, &data, name, t.config())?;
                    }
                    t
                } else {
                    t
                }
            }
        };
        trainer.set_environment(name, self.threads);
        if let Some(j) = job {
            trainer.set_distributed(j.collective())?;
        }
        let run_dir = trainer
            .run_dir()
            .map(|d| d.path().display().to_string())
            .unwrap_or_default();
        if !quiet {
            let c = trainer.config();
            let done = trainer.state().epochs_done;
            let from = if done > 0 {
                format!(" (resuming after epoch {done})")
            } else {
                String::new()
            };
            let ranks = match job {
                Some(j) => format!(", {} ranks", j.world()),
                None => String::new(),
            };
            eprintln!(
                "training {} on {} train samples ({}), {} epoch{}, backend {name}{ranks}{from}; run directory {run_dir}",
                c.method,
                trainer.train_samples().len(),
                trainer.modalities().join(" + "),
                c.epochs,
                if c.epochs == 1 { "" } else { "s" }
            );
        }
        let mut progress = Progress::new(quiet);
        let kill = job.and_then(|j| j.kill_at());
        let summary = trainer.run(&mut KillAt {
            inner: &mut progress,
            epoch: kill,
        })?;
        if root {
            print!("{}", summary_table(&summary));
            println!("  run directory: {run_dir}");
        }
        Ok(())
    }
}

/// The observer of a run, with `MLA_TEST_KILL`'s kill (see
/// [`distributed::Job::kill_at`]).
struct KillAt<'a> {
    inner: &'a mut dyn Observer,
    epoch: Option<usize>,
}

impl Observer for KillAt<'_> {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize, samples: usize) {
        if self.epoch == Some(epoch) {
            // SAFETY: raising a signal; SIGKILL ends the process at once.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
        }
        self.inner.epoch_start(epoch, epochs, batches, samples)
    }
    fn progress(&mut self, batches: usize, samples: u64, loss: f64) {
        self.inner.progress(batches, samples, loss)
    }
    fn evaluating(&mut self, split: mla_models::data::Split) {
        self.inner.evaluating(split)
    }
    fn epoch_end(&mut self, record: &EpochRecord) {
        self.inner.epoch_end(record)
    }
}

/// The cache directory: `--cache-dir`, else `$XDG_CACHE_HOME/mla`, else `~/.cache/mla`.
fn cache_dir(flag: Option<&Path>) -> CliResult<PathBuf> {
    if let Some(d) = flag {
        return Ok(d.to_path_buf());
    }
    let non_empty = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    non_empty("XDG_CACHE_HOME")
        .map(|d| d.join("mla"))
        .or_else(|| non_empty("HOME").map(|h| h.join(".cache").join("mla")))
        .ok_or_else(|| "no cache directory: neither XDG_CACHE_HOME nor HOME is set; pass --cache-dir DIR or --data DIR".into())
}

/// AV-MNIST (default recipe) in the cache, prepared from `raw` if it is not
/// there yet. Prepared into a temporary sibling and renamed into place, so an
/// interrupted preparation is never mistaken for a finished one.
/// `may_prepare` false (a data-parallel rank): a missing dataset is an
/// error instead.
pub(crate) fn default_dataset(
    raw: &Path,
    cache_flag: Option<&Path>,
    quiet: bool,
    may_prepare: bool,
) -> CliResult<PathBuf> {
    let cache = cache_dir(cache_flag)?;
    let dir = cache.join("avmnist");
    if dir.join(mla_models::data::dataset::MANIFEST).is_file() {
        return Ok(dir);
    }
    if !may_prepare {
        return Err(format!(
            "--distributed: AV-MNIST is not prepared in {} yet; run `mla prepare avmnist --raw {} --out DIR` once and pass --data DIR",
            dir.display(),
            raw.display()
        )
        .into());
    }
    std::fs::create_dir_all(&cache)
        .map_err(|e| format!("cannot create the cache directory {}: {e}", cache.display()))?;
    let tmp = cache.join(format!(".avmnist-partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    if !quiet {
        eprintln!(
            "preparing AV-MNIST from {} into {} (first run only)",
            raw.display(),
            dir.display()
        );
    }
    let start = std::time::Instant::now();
    let mut progress = |msg: &str| {
        if !quiet {
            eprintln!("[{:5.1}s] {msg}", start.elapsed().as_secs_f64());
        }
    };
    if let Err(e) = prepare_avmnist(&AvmnistOptions::new(raw, &tmp), &mut progress) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!(
            "cannot prepare AV-MNIST from {}: {e} (pass --raw DIR with the MNIST and FSDD sources, see the README, or --data DIR)",
            raw.display()
        )
        .into());
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another run may have finished preparing it first.
        if !dir.join(mla_models::data::dataset::MANIFEST).is_file() {
            return Err(format!(
                "cannot move the prepared AV-MNIST to {}: {e}",
                dir.display()
            )
            .into());
        }
    }
    Ok(dir)
}

/// `runs/<method>-<UTC time>`, e.g. `runs/mla-20250101-120000`.
fn default_run_dir(cfg: &TrainConfig) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let what = match (&cfg.method, &cfg.modality) {
        (MethodKind::Unimodal, Some(m)) => format!("unimodal-{m}"),
        (m, _) => m.to_string(),
    };
    PathBuf::from("runs").join(format!(
        "{what}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
