//! One trainer for MLA and its baselines, generic over the backend (DESIGN.md
//! invariant 6). The loop (batches, evaluation, model selection, metrics,
//! checkpoints, resume) is shared; the methods differ in their per-batch
//! step and state (`crate::methods`, one file each behind the `Method`
//! trait) and in how logits are fused at evaluation (`eval.rs`, from
//! `MethodKind::head` and `MethodKind::fuses_by_rule`).
//!
//! Determinism (invariant 8): the model is initialised from the seed, the
//! training order of epoch e is drawn from (seed, e), and the only other
//! random numbers (OGM-GE's noise, PMR's prototype batches) come from
//! streams derived from (seed, epoch, step), so the same seed, data, backend
//! and thread count give the same metrics, and resuming after epoch k
//! replays epochs k+1.. exactly.

pub mod config;
mod error;
pub mod eval;
pub mod layout;
pub mod provenance;
pub mod records;
pub mod run_dir;
mod state;
pub mod stats;

pub use config::{
    AgmParams, AlphaMode, AlphaSchedule, BlendRule, EncoderInit, EpochWindow, FusionRule,
    GblendingParams, HgmMode, LrSchedule, MethodKind, MissingTrain, MmparetoParams,
    ModulatedTensors, NormScope, OgmParams, OgmRule, OptimizerKind, PmrParams, ReconboostParams,
    StageSchedule, TrainConfig, DEFAULT_ALPHA,
};
pub use error::{Result, TrainError};
pub use eval::{load_fusion_fit, load_model, EvalOptions, SplitOutputs};
pub use layout::{build_model, ModelLayout};
pub use records::{DistRecord, EpochRecord, EvalMetrics, Forgetting, Summary, TrainerState};
pub use run_dir::{RunConfig, RunDir};

use crate::checkpoint::Checkpoint;
use crate::data::{seeded_subset, Augmenter, Dataset, Loader, MissingMask, Split};
use crate::dist::{self, Dist};
use crate::fusion::{fit_fusion, FusionFit};
use crate::methods::{self, EpochCtx, Method, StepCtx};
use crate::metrics::NamedValues;
use crate::model::Model;
use crate::optim::Optimizer;
use mla_core::Backend;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Progress callbacks (the CLI draws bars from them; tests stay silent).
pub trait Observer {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _batches: usize, _samples: usize) {}
    /// After `batches` of the epoch; `loss` is the mean loss of the steps read
    /// since the previous call.
    fn progress(&mut self, _batches: usize, _samples: u64, _loss: f64) {}
    fn evaluating(&mut self, _split: Split) {}
    fn epoch_end(&mut self, _record: &EpochRecord) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// Losses are read back every this many batches: reading is a device
/// synchronisation, so the steps in between run without one.
const READ_EVERY: usize = 16;

/// One step timed by [`Trainer::time_steps`].
#[derive(Clone, Copy, Debug)]
pub struct TimedStep {
    pub seconds: f64,
    pub samples: usize,
    /// Matrix-product operations of the step (`mla_core::flops`).
    pub flops: u64,
}

/// The trainer: the dataset, the model, the optimizer, the method and its
/// state, and the run's progress.
pub struct Trainer<B: Backend<f32>> {
    backend: B,
    cfg: TrainConfig,
    dataset: Arc<Dataset>,
    layout: ModelLayout,
    model: Model<B>,
    optim: Optimizer<B>,
    method: Box<dyn Method<B>>,
    /// Fusion parameters fitted on validation for the current weights (MLA).
    fit: Option<FusionFit>,
    train: Vec<usize>,
    val: Vec<usize>,
    test: Vec<usize>,
    state: TrainerState,
    run_dir: Option<RunDir>,
    backend_name: String,
    threads: Option<usize>,
    provenance: provenance::Provenance,
    /// The train split's `--missing-rate` mask, already applied to `dataset`.
    mask: Option<MissingMask>,
    /// `--augment`: crops and flips of the training steps' batches.
    augmenter: Option<Augmenter>,
    /// Tests: writes left before an injected stop.
    stop_after: Option<usize>,
    /// Data-parallel training: this rank's job (shared with the model's
    /// batch norm under `--sync-bn`).
    dist: Option<Arc<Dist>>,
}

impl<B: Backend<f32>> Trainer<B> {
    /// A fresh run of `cfg` on `dataset`.
    pub fn new(backend: B, dataset: Arc<Dataset>, cfg: TrainConfig) -> Result<Self> {
        Self::build(backend, dataset, cfg, None, true)
    }

    /// As [`Trainer::new`]; with `stored`, the run's mask as its run directory
    /// holds it instead of a fresh draw; `init`: load `--init-encoder`'s
    /// weights (not when a checkpoint replaces them anyway).
    fn build(
        backend: B,
        dataset: Arc<Dataset>,
        cfg: TrainConfig,
        stored: Option<MissingMask>,
        init: bool,
    ) -> Result<Self> {
        cfg.validate().map_err(TrainError::Config)?;
        let mask = match &cfg.missing {
            None => None,
            Some(spec) => Some(match stored {
                Some(m) => {
                    m.check(&dataset)?;
                    m
                }
                None => {
                    let rates = spec.rates.resolve(&dataset, false)?;
                    let train = dataset.indices(Split::Train);
                    MissingMask::draw(&dataset, &train, &rates, spec.seed, spec.policy)?
                }
            }),
        };
        let dataset = match &mask {
            Some(m) => Arc::new(m.apply(&dataset)?),
            None => dataset,
        };
        let (mut model, layout) = build_model(&backend, &dataset, &cfg)?;
        if init {
            for (modality, path) in &cfg.init_encoder.0 {
                if !layout.modalities.contains(modality) {
                    return Err(TrainError::Config(format!(
                        "--init-encoder {modality}=...: the model has modalities {}",
                        layout.modalities.join(", ")
                    )));
                }
                let named = crate::checkpoint::read_state_dict(path)?
                    .into_iter()
                    .map(|(n, t)| Ok((n, t.to_tensor(&backend)?)))
                    .collect::<Result<Vec<_>>>()?;
                model
                    .init_encoder(modality, named)
                    .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
            }
        }
        let optim = Optimizer::new(cfg.optim_config())?;
        let augmenter = if cfg.augment.is_empty() {
            None
        } else {
            Some(Augmenter::new(&dataset, &cfg.augment, cfg.seed)?)
        };
        let has_any = |s: &usize| layout.data_index.iter().any(|&d| dataset.has(d, *s));
        let split =
            |sp: Split| -> Vec<usize> { dataset.indices(sp).into_iter().filter(has_any).collect() };
        let mut train = split(Split::Train);
        let mut val = split(Split::Validation);
        let mut test = split(Split::Test);
        for (name, v) in [("train", &train), ("validation", &val), ("test", &test)] {
            if v.is_empty() {
                let what = match &cfg.modality {
                    Some(m) if cfg.method == MethodKind::Unimodal => {
                        format!(" with modality '{m}'")
                    }
                    _ => String::new(),
                };
                return Err(TrainError::Config(format!(
                    "{}: no {name} samples{what}; training needs train, validation (model selection) and test samples",
                    dataset.dir().display()
                )));
            }
        }
        if let Some(n) = cfg.train_limit {
            train = seeded_subset(&train, n, cfg.seed);
        }
        if let Some(n) = cfg.eval_limit {
            val = seeded_subset(&val, n, cfg.seed);
            test = seeded_subset(&test, n, cfg.seed);
        }
        let method = methods::create(&backend, &cfg, &layout, &dataset, &val)?;
        let provenance = provenance::Provenance::of(&dataset, &model);
        Ok(Trainer {
            backend,
            cfg,
            dataset,
            layout,
            model,
            optim,
            method,
            fit: None,
            train,
            val,
            test,
            state: TrainerState::default(),
            run_dir: None,
            backend_name: String::new(),
            threads: None,
            provenance,
            mask,
            augmenter,
            stop_after: None,
            dist: None,
        })
    }

    /// Trains as one rank of a data-parallel job (README, "Distributed
    /// training"). Every rank must build the same trainer (config, data,
    /// resume point). Every method reduces its step over the global batch
    /// (gradients, scores, statistics), so W ranks train as one process on
    /// the same global batches.
    pub fn set_distributed(&mut self, comm: Arc<dyn dist::Collective>) -> Result<()> {
        let d = Arc::new(Dist::new(comm));
        if d.rank() >= d.world() {
            return Err(TrainError::Distributed(format!(
                "rank {} of a job of {}",
                d.rank(),
                d.world()
            )));
        }
        if self.cfg.sync_bn {
            self.check_sync_bn(d.world())?;
        }
        // The ranks must start from the same state: a resumed run on one
        // rank and a fresh one on another would otherwise train apart. A
        // rank with --sync-bn among ranks without would wait in sums the
        // others never make: the flag enters the start check.
        let c = self.state_checksum()? ^ u64::from(self.cfg.sync_bn);
        check_agree(
            &d,
            c,
            "at the start (same config, data and --resume point on every rank?)",
        )?;
        d.take_traffic();
        if self.cfg.sync_bn {
            self.model.set_sync_bn(Some(d.clone()));
        }
        self.dist = Some(d);
        Ok(())
    }

    /// `--sync-bn` on a job of `world` ranks: refused, before anything is
    /// trained, where it would do nothing, train something other than one
    /// process, or leave a rank waiting in a sum the others never make (a
    /// rank without rows of a modality skips that encoder).
    fn check_sync_bn(&self, world: usize) -> Result<()> {
        let refuse = |why: String| Err(TrainError::Config(format!("--sync-bn: {why}")));
        if matches!(
            self.cfg.method,
            MethodKind::Pmr | MethodKind::Gblending | MethodKind::Agm
        ) {
            return refuse(format!(
                "--method {} scales its per-rank loss terms to their share of the global batch (not per-rank means), which synchronised batch norm's backward does not weight; methods: joint, unimodal, mla, ogm, ogm-ge, mmpareto, reconboost",
                self.cfg.method
            ));
        }
        if !self.model.has_buffers() {
            return refuse(
                "the model has no batch norm (only ResNet encoders have it: --encoder resnet18 or resnet18-small), so there is nothing to synchronise".into(),
            );
        }
        if self.cfg.missing.is_some() {
            return refuse(
                "--missing-rate hides modalities of train samples: a rank whose share lacks a modality would skip its encoder while the others wait in its batch-norm sums".into(),
            );
        }
        for &d in &self.layout.data_index {
            if let Some(&s) = self.train.iter().find(|&&s| !self.dataset.has(d, s)) {
                return refuse(format!(
                    "train sample {s} lacks modality '{}': every train sample needs every modality of the model (a rank whose share lacks one would skip its encoder while the others wait in its batch-norm sums)",
                    self.dataset.modalities()[d].name
                ));
            }
        }
        let (b, n) = (self.cfg.batch_size, self.train.len());
        let last = n % b;
        if b < world || (last > 0 && last < world) {
            return refuse(format!(
                "every rank needs rows in every global batch: --batch-size {b} over {n} train samples leaves a batch of {} for {world} ranks",
                if b < world { b } else { last }
            ));
        }
        Ok(())
    }

    /// This rank's index and the job's size (0 and 1 without a job).
    pub fn rank_and_world(&self) -> (usize, usize) {
        self.dist.as_ref().map_or((0, 1), |d| (d.rank(), d.world()))
    }

    /// FNV-1a of the weights, buffers, optimizer and method state.
    fn state_checksum(&self) -> Result<u64> {
        let weights = crate::params::StateDict {
            tensors: self
                .model
                .params()
                .iter()
                .map(|(n, t)| (n.to_string(), t.clone()))
                .collect(),
            scalars: Vec::new(),
        };
        let optim = self.optim.state();
        let method = self.method.state()?;
        dist::checksum(&[&weights, &optim, &method])
    }

    /// The train split's missing-modality mask (`--missing-rate`).
    pub fn missing_mask(&self) -> Option<&MissingMask> {
        self.mask.as_ref()
    }

    /// The mask stored in `run_dir` for a config with `--missing-rate`,
    /// checked against the config (a run's mask never changes); `None` when
    /// the config has none or the run stopped before writing it (it is
    /// drawn again: the draw is a function of the config).
    fn stored_mask(
        run_dir: &RunDir,
        cfg: &TrainConfig,
        dataset: &Dataset,
    ) -> Result<Option<MissingMask>> {
        let (Some(spec), path) = (&cfg.missing, run_dir.file(run_dir::MASK)) else {
            return Ok(None);
        };
        if !path.is_file() {
            return Ok(None);
        }
        let m = MissingMask::read(&path)?;
        let rates = spec.rates.resolve(dataset, false)?;
        let stored: Vec<f64> = m.modalities.iter().map(|x| x.rate).collect();
        if stored != rates {
            return Err(TrainError::RunDir(format!(
                "{}: drawn with rates {stored:?}, the run's config has {}",
                path.display(),
                spec.rates
            )));
        }
        if m.seed != spec.seed || m.policy != spec.policy {
            return Err(TrainError::RunDir(format!(
                "{}: drawn with seed {} and policy {}, the run's config has seed {} and policy {}",
                path.display(),
                m.seed,
                m.policy,
                spec.seed,
                spec.policy
            )));
        }
        Ok(Some(m))
    }

    /// The summary of the run so far.
    fn make_summary(&self) -> Option<Summary> {
        let mut s = Summary::new(
            &self.cfg,
            &self.state,
            &self.backend_name,
            self.threads,
            &self.provenance,
        )?;
        s.missing = self.mask.as_ref().map(records::MissingReport::of);
        Some(s)
    }

    /// Continues the run in `dir` from its last checkpoint, or from the
    /// start of its `config.json` when it was stopped before its first
    /// checkpoint. `epochs`, when given, replaces the configured total (to
    /// train further). `metrics.jsonl` and `summary.json` are rewritten from
    /// the checkpoint, so after a kill between writes they describe the same
    /// epoch as `last.safetensors` again.
    pub fn resume(
        backend: B,
        dataset: Arc<Dataset>,
        dir: &Path,
        epochs: Option<usize>,
    ) -> Result<Self> {
        Self::resume_from(backend, dataset, dir, epochs, true)
    }

    /// As [`Trainer::resume`] without writing to `dir` and without a run
    /// directory: a data-parallel rank other than 0 reads the run rank 0
    /// writes.
    pub fn resume_reading(
        backend: B,
        dataset: Arc<Dataset>,
        dir: &Path,
        epochs: Option<usize>,
    ) -> Result<Self> {
        Self::resume_from(backend, dataset, dir, epochs, false)
    }

    fn resume_from(
        backend: B,
        dataset: Arc<Dataset>,
        dir: &Path,
        epochs: Option<usize>,
        write: bool,
    ) -> Result<Self> {
        let run_dir = match write {
            true => RunDir::open(dir)?,
            false => RunDir::open_reading(dir)?,
        };
        let with_epochs = |mut cfg: TrainConfig| {
            if let Some(e) = epochs {
                cfg.epochs = e;
            }
            cfg
        };
        if !run_dir.has_checkpoint() {
            let cfg = with_epochs(run_dir.read_config()?.config);
            let stored = Self::stored_mask(&run_dir, &cfg, &dataset)?;
            let mut t = Trainer::build(backend, dataset, cfg, stored, true)?;
            if !write {
                return Ok(t);
            }
            t.write_mask(&run_dir)?;
            for f in [run_dir::METRICS, run_dir::SUMMARY, run_dir::BEST] {
                let path = run_dir.file(f);
                if path.exists() {
                    std::fs::remove_file(&path).map_err(|e| TrainError::io(&path, "remove", e))?;
                }
            }
            t.run_dir = Some(run_dir);
            return Ok(t);
        }
        let ckpt = Checkpoint::load(&run_dir.file(run_dir::LAST))?;
        let cfg = with_epochs(ckpt.json(state::CONFIG_KEY)?);
        let stored = Self::stored_mask(&run_dir, &cfg, &dataset)?;
        let mut t = Trainer::build(backend, dataset, cfg, stored, false)?;
        t.restore(&ckpt)?;
        if !write {
            return Ok(t);
        }
        t.write_mask(&run_dir)?;
        run_dir.write_metrics(&t.state.history)?;
        if let Some(s) = t.make_summary() {
            run_dir.write_summary(&s)?;
        }
        t.run_dir = Some(run_dir);
        Ok(t)
    }

    /// Writes config, metrics, checkpoints and the summary into `dir` as the
    /// run goes; `dir` must not hold a run (see [`Trainer::with_new_run_dir`]).
    pub fn with_run_dir(self, dir: &Path) -> Result<Self> {
        self.with_new_run_dir(dir, false)
    }

    /// As [`Trainer::with_run_dir`]; `overwrite` replaces a run already there.
    pub fn with_new_run_dir(mut self, dir: &Path, overwrite: bool) -> Result<Self> {
        let rd = RunDir::create(dir, overwrite)?;
        let data = self.dataset.dir();
        let data = data.canonicalize().unwrap_or_else(|_| data.to_path_buf());
        rd.write_json(
            run_dir::CONFIG,
            &run_dir::RunConfig {
                data,
                config: self.cfg.clone(),
            },
        )?;
        self.write_mask(&rd)?;
        self.run_dir = Some(rd);
        Ok(self)
    }

    /// Stores the mask in the run directory (for `--resume` and for the
    /// record), unless it is there already.
    fn write_mask(&self, rd: &RunDir) -> Result<()> {
        match &self.mask {
            Some(m) if !rd.file(run_dir::MASK).is_file() => rd.write_json(run_dir::MASK, m),
            _ => Ok(()),
        }
    }

    /// Tests: makes the run stop with an error right after its `n`-th file
    /// write from now (counting each checkpoint, metrics and summary write),
    /// as a kill between two writes would.
    #[doc(hidden)]
    pub fn stop_after_writes(&mut self, n: usize) {
        self.stop_after = Some(n);
    }

    fn wrote(&mut self) -> Result<()> {
        match self.stop_after.as_mut() {
            Some(0) | None => Ok(()),
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    Err(TrainError::RunDir(
                        "stopped after a write (injected)".into(),
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Recorded in the summary (the CLI knows which device it picked).
    pub fn set_environment(&mut self, backend_name: &str, threads: Option<usize>) {
        self.backend_name = backend_name.to_string();
        self.threads = threads;
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }
    pub fn state(&self) -> &TrainerState {
        &self.state
    }
    pub fn model(&self) -> &Model<B> {
        &self.model
    }
    pub fn optimizer(&self) -> &Optimizer<B> {
        &self.optim
    }
    pub fn modalities(&self) -> &[String] {
        &self.layout.modalities
    }
    pub fn train_samples(&self) -> &[usize] {
        &self.train
    }
    pub fn eval_samples(&self, split: Split) -> &[usize] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.val,
            Split::Test => &self.test,
        }
    }
    pub fn run_dir(&self) -> Option<&RunDir> {
        self.run_dir.as_ref()
    }

    /// Trains the remaining epochs; returns the summary (best-validation
    /// epoch, its validation and test metrics).
    pub fn run(&mut self, obs: &mut dyn Observer) -> Result<Summary> {
        while self.state.epochs_done < self.cfg.epochs {
            self.run_epoch(obs)?;
        }
        self.summary()
    }

    pub fn summary(&self) -> Result<Summary> {
        self.make_summary()
            .ok_or_else(|| TrainError::Config("no epoch has been trained yet".into()))
    }

    /// One epoch: the steps, validation, model selection (test of a new best),
    /// checkpoints and metrics files.
    pub fn run_epoch(&mut self, obs: &mut dyn Observer) -> Result<EpochRecord> {
        let started = Instant::now();
        let epoch = self.state.epochs_done + 1;
        let stats = self.train_epoch(epoch, obs)?;
        let distributed = match &self.dist {
            None => None,
            Some(_) => Some(self.sync_ranks(epoch)?),
        };

        obs.evaluating(Split::Validation);
        let gap = EvalOptions {
            gap: true,
            ..EvalOptions::default()
        };
        let outputs = self
            .collect(&self.val, &gap)
            .map_err(|e| e.during(epoch, Split::Validation))?;
        // The fusion parameters come from validation alone; model selection
        // then compares epochs under the run's rule with each epoch's own fit.
        self.fit = match self.cfg.method.fuses_by_rule() {
            true => Some(fit_fusion(&outputs.table, &self.layout.modalities)?),
            false => None,
        };
        let val = outputs.metrics(&self.cfg, &self.layout, self.cfg.fusion, self.fit.as_ref())?;
        let better = match &self.state.best_val {
            None => true,
            Some(b) => val.fused_accuracy > b.fused_accuracy,
        };
        let mut record = EpochRecord {
            epoch,
            train_loss: stats.mean_loss(),
            lr: Some(self.optim.config().lr),
            train_loss_by_modality: stats
                .loss_by_modality(&self.layout.modalities, self.cfg.method),
            hgm_surviving_fraction: None,
            hgm_surviving_fraction_by_modality: None,
            hgm_alpha: None,
            forgetting: None,
            method_stats: None,
            distributed,
            val: val.clone(),
            best: better,
            train_samples: stats.samples,
            train_steps: stats.steps,
            train_gflop: stats.flops / 1e9,
            train_seconds: stats.seconds,
            epoch_seconds: 0.0,
            samples_per_second: if stats.seconds > 0.0 {
                stats.samples as f64 / stats.seconds
            } else {
                0.0
            },
        };
        self.method.end_epoch(&mut record)?;
        self.state.epochs_done = epoch;
        self.state.train_seconds += stats.seconds;
        self.state.train_samples += stats.samples;
        if better {
            obs.evaluating(Split::Test);
            let test = self
                .collect(&self.test, &gap)
                .map_err(|e| e.during(epoch, Split::Test))?
                .metrics(&self.cfg, &self.layout, self.cfg.fusion, self.fit.as_ref())?;
            self.state.best_epoch = Some(epoch);
            self.state.best_val = Some(val);
            self.state.best_test = Some(test);
            self.state.best_fusion = self.fit.clone();
        }
        if let (Some(d), Some(r)) = (&self.dist, record.distributed.as_mut()) {
            r.allreduce = d.take_traffic();
        }
        record.epoch_seconds = started.elapsed().as_secs_f64();
        self.state.total_seconds += record.epoch_seconds;
        self.state.history.push(record.clone());
        // Write order: best, last, metrics, summary. A kill in between leaves
        // `last` ahead of metrics/summary at most; `--resume` rewrites those
        // two from `last`, and a `best` ahead of `last` is rewritten when
        // the resumed run replays that epoch.
        if let Some(rd) = self.run_dir.clone() {
            let ckpt = self.checkpoint()?;
            if better {
                ckpt.save(&rd.file(run_dir::BEST))?;
                self.wrote()?;
            }
            ckpt.save(&rd.file(run_dir::LAST))?;
            self.wrote()?;
            rd.write_metrics(&self.state.history)?;
            self.wrote()?;
            if let Some(s) = self.make_summary() {
                rd.write_summary(&s)?;
                self.wrote()?;
            }
        }
        obs.epoch_end(&record);
        Ok(record)
    }

    fn train_epoch(&mut self, epoch: usize, obs: &mut dyn Observer) -> Result<stats::EpochStats> {
        if self.cfg.sync_bn && !self.model.sync_bn() {
            return Err(TrainError::Config(
                "--sync-bn synchronises batch norm over the ranks of a data-parallel job: it needs --distributed (Trainer::set_distributed)".into(),
            ));
        }
        let (rank, world) = self.rank_and_world();
        let loader = Loader::share(
            self.dataset.clone(),
            self.train.clone(),
            self.cfg.batch_size,
            Some(self.cfg.seed),
            epoch as u64,
            rank,
            world,
        )?;
        let batches = loader.num_batches();
        let lr = self.cfg.lr_schedule.at(self.cfg.lr, epoch, self.cfg.epochs);
        self.optim.set_lr(lr)?;
        obs.epoch_start(epoch, self.cfg.epochs, batches, self.train.len());
        let mut stats = stats::EpochStats::new(self.layout.modalities.len());
        let mut pending = stats::Pending::default();
        // Timed: a method's per-epoch preparation (PMR's prototypes,
        // G-Blending's estimation) is part of its training cost.
        let started = Instant::now();
        let flops_before = mla_core::flops::count();
        self.method.begin_epoch(&EpochCtx {
            cfg: &self.cfg,
            layout: &self.layout,
            model: &self.model,
            dataset: &self.dataset,
            train: &self.train,
            val: &self.val,
            epoch,
        })?;
        let total_steps = (self.cfg.epochs * batches).max(2) - 1;
        for (b, batch) in loader.enumerate() {
            let mut batch = batch?;
            if let Some(a) = &self.augmenter {
                a.apply(&mut batch, epoch as u64);
            }
            // Samples of the global batch: a rank holds its share only.
            let global = (self.train.len() - b * self.cfg.batch_size).min(self.cfg.batch_size);
            stats.samples += global as u64;
            let done = (epoch - 1) * batches + b;
            let progress = done as f64 / total_steps as f64;
            self.step(&batch, epoch, b + 1, progress, &mut pending)?;
            if (b + 1) % READ_EVERY == 0 || b + 1 == batches {
                let mean = pending.flush(epoch, &self.layout.modalities, &mut stats)?;
                obs.progress(b + 1, stats.samples, mean);
            }
        }
        stats.seconds = started.elapsed().as_secs_f64();
        stats.steps = batches as u64;
        let mut flops = [mla_core::flops::count().wrapping_sub(flops_before) as f64];
        if let Some(d) = &self.dist {
            // The job's work: every rank's share.
            d.sum_f64(&mut flops)?;
        }
        stats.flops = flops[0];
        Ok(stats)
    }

    /// The outputs on `samples` of a split; in a data-parallel job each rank
    /// evaluates its share and the outputs are gathered on every rank.
    fn collect(&self, samples: &[usize], opts: &EvalOptions) -> Result<eval::SplitOutputs> {
        let (model, cfg, layout, ds) = (&self.model, &self.cfg, &self.layout, &self.dataset);
        match &self.dist {
            None => eval::collect(model, cfg, layout, ds, samples, opts),
            Some(d) => {
                let mine = &samples[dist::share(samples.len(), d.rank(), d.world())];
                eval::collect(model, cfg, layout, ds, mine, opts)?.gathered(d)
            }
        }
    }

    /// The end of a data-parallel epoch: rank 0's batch-norm buffers on
    /// every rank (each trained its own on its shares, as PyTorch DDP
    /// does), then a check that every rank holds the same state.
    fn sync_ranks(&mut self, epoch: usize) -> Result<DistRecord> {
        let d = self.dist.as_ref().expect("called with a job");
        let names = self.model.buffer_names();
        let mut buffers = names
            .iter()
            .map(|n| Ok((n.clone(), self.model.params().get(n)?.clone())))
            .collect::<Result<Vec<_>>>()?;
        d.broadcast_from_root(&mut buffers)?;
        for (n, t) in buffers {
            self.model.params_mut().set(&n, t)?;
        }
        let c = self.state_checksum()?;
        let d = self.dist.as_ref().expect("called with a job");
        check_agree(d, c, &format!("after epoch {epoch}"))?;
        Ok(DistRecord {
            world: d.world(),
            state_checksum: format!("{c:016x}"),
            // Filled at the epoch's end, its evaluation included.
            allreduce: dist::Traffic::default(),
        })
    }

    fn step(
        &mut self,
        batch: &crate::data::Batch,
        epoch: usize,
        step: usize,
        progress: f64,
        pending: &mut stats::Pending<B>,
    ) -> Result<()> {
        let mut ctx = StepCtx {
            backend: &self.backend,
            cfg: &self.cfg,
            layout: &self.layout,
            model: &mut self.model,
            optim: &mut self.optim,
            epoch,
            step,
            progress: progress.clamp(0.0, 1.0),
            dist: self.dist.as_deref(),
        };
        self.method.step(&mut ctx, batch, pending)?;
        // Batch-norm statistics of the encoders that ran in this step.
        Ok(self.model.commit_buffers()?)
    }

    /// Times training steps for benchmarks: `warmup` untimed steps, then
    /// `steps` timed ones, each ended by a device synchronisation. Batches
    /// come from the loader as in training (later epochs when one runs out).
    /// Returns each timed step's (seconds, samples). Training state moves on
    /// (parameters change) but nothing is recorded.
    pub fn time_steps(&mut self, warmup: usize, steps: usize) -> Result<Vec<TimedStep>> {
        // Timed steps are training steps only: measurements such as the
        // forgetting probe are left out of the timing.
        self.method.set_measuring(false);
        let timed = self.timed_steps(warmup, steps);
        self.method.set_measuring(true);
        timed
    }

    fn timed_steps(&mut self, warmup: usize, steps: usize) -> Result<Vec<TimedStep>> {
        let mut out = Vec::with_capacity(steps);
        let mut pending = stats::Pending::default();
        let mut stats = stats::EpochStats::new(self.layout.modalities.len());
        let mut epoch = 1u64;
        let mut done = 0usize;
        while done < warmup + steps {
            let loader = Loader::new(
                self.dataset.clone(),
                self.train.clone(),
                self.cfg.batch_size,
                Some(self.cfg.seed),
                epoch,
            )?;
            // Untimed, as in training: what a method prepares per epoch.
            self.method.begin_epoch(&EpochCtx {
                cfg: &self.cfg,
                layout: &self.layout,
                model: &self.model,
                dataset: &self.dataset,
                train: &self.train,
                val: &self.val,
                epoch: epoch as usize,
            })?;
            for batch in loader {
                if done == warmup + steps {
                    break;
                }
                let batch = batch?;
                let t0 = Instant::now();
                let f0 = mla_core::flops::count();
                let total = (warmup + steps).max(2) - 1;
                self.step(
                    &batch,
                    epoch as usize,
                    done + 1,
                    done as f64 / total as f64,
                    &mut pending,
                )?;
                self.backend.synchronize()?;
                if done >= warmup {
                    out.push(TimedStep {
                        seconds: t0.elapsed().as_secs_f64(),
                        samples: batch.len(),
                        flops: mla_core::flops::count().wrapping_sub(f0),
                    });
                }
                done += 1;
                if pending.len() >= READ_EVERY {
                    pending.flush(epoch as usize, &self.layout.modalities, &mut stats)?;
                }
            }
            epoch += 1;
        }
        pending.flush(epoch as usize, &self.layout.modalities, &mut stats)?;
        Ok(out)
    }

    /// Evaluates the current model on one split, with the fusion fitted on
    /// validation at the last epoch unless `opts` brings its own fit.
    pub fn evaluate(&self, split: Split, opts: &EvalOptions) -> Result<EvalMetrics> {
        let mut opts = opts.clone();
        if opts.fit.is_none() {
            opts.fit = self.fit.clone();
        }
        eval::evaluate(
            &self.model,
            &self.cfg,
            &self.layout,
            &self.dataset,
            self.eval_samples(split),
            &opts,
        )
    }

    /// The fusion parameters fitted on validation for the current weights (MLA).
    pub fn fusion_fit(&self) -> Option<&FusionFit> {
        self.fit.as_ref()
    }

    /// The full training state as a checkpoint (weights, optimizer, HGM,
    /// config, trainer state).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        state::save(self)
    }

    fn restore(&mut self, ckpt: &Checkpoint) -> Result<()> {
        state::restore(self, ckpt)
    }
}

/// Fails unless every rank of `d` has checksum `c`.
fn check_agree(d: &Dist, c: u64, when: &str) -> Result<()> {
    let all = d.gather_checksums(c)?;
    if all.iter().any(|&x| x != c) {
        let list: Vec<String> = all
            .iter()
            .enumerate()
            .map(|(r, x)| format!("rank {r}: {x:016x}"))
            .collect();
        return Err(TrainError::Distributed(format!(
            "the ranks' states differ {when}: {}",
            list.join(", ")
        )));
    }
    Ok(())
}

pub(crate) fn named(names: &[String], values: Vec<Option<f64>>) -> NamedValues {
    NamedValues(
        names
            .iter()
            .zip(values)
            .filter_map(|(n, v)| v.map(|v| (n.clone(), v)))
            .collect(),
    )
}
