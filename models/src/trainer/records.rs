//! What a run records: one line per epoch (`metrics.jsonl`), the trainer's
//! resumable state (in every checkpoint), and the final `summary.json`.

use super::config::{FusionRule, HgmMode, MethodKind, TrainConfig};
use crate::fusion::FusionFit;
use crate::metrics::NamedValues;
use crate::shapley::Shapley;
use serde::{Deserialize, Serialize};

/// Metrics of one evaluation pass over a split.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Samples evaluated.
    pub samples: u64,
    /// Accuracy of the fused prediction (the run's fusion rule for MLA, `auto`
    /// resolved to its choice; the one modality for unimodal; joint's head).
    pub fused_accuracy: f64,
    /// Mean cross-entropy of the fused logits.
    pub loss: f64,
    /// Macro-F1 of the fused prediction (mean over all classes, see
    /// `metrics::Confusion::macro_f1`); 0 in summaries written before it.
    #[serde(default)]
    pub fused_macro_f1: f64,
    /// MLA only: the concrete rule behind `fused_accuracy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion_rule: Option<FusionRule>,
    /// MLA only: fused accuracy under each concrete fusion rule (the fitted
    /// ones when a validation fit exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion_accuracy: Option<NamedValues>,
    /// Each modality's accuracy alone, over the samples where it is present.
    pub modality_accuracy: NamedValues,
    /// Each modality's macro-F1 alone, over the same samples.
    #[serde(default)]
    pub modality_macro_f1: NamedValues,
    /// MLA only: each modality's expected calibration error (15 bins) as trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_error: Option<NamedValues>,
    /// The same after dividing by the fitted temperatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_error_calibrated: Option<NamedValues>,
    /// Distance between modality centroids of L2-normalised features
    /// (`None` with a single modality or when not computed for this split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality_gap: Option<f64>,
    /// Shapley contributions of the modalities to the fused accuracy
    /// (`shapley` module); `None` with more than 8 modalities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shapley: Option<Shapley>,
}

/// How much the shared head forgot the other modalities over one modality
/// step (MLA), on a fixed validation probe batch (`forgetting.rs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forgetting {
    /// Mean increase of a non-stepped modality's probe loss over a step,
    /// over every measurement of the epoch.
    pub loss_increase: f64,
    /// Mean decrease of its probe accuracy (fraction).
    pub accuracy_drop: f64,
    /// The same per measured modality.
    pub loss_increase_by_modality: NamedValues,
    pub accuracy_drop_by_modality: NamedValues,
    /// (step, other modality) pairs measured.
    pub measurements: u64,
    pub probe_samples: u64,
}

/// One epoch: training statistics, validation metrics, timing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps (over every modality step for MLA).
    pub train_loss: f64,
    /// The learning rate of the epoch (`--lr-schedule`); absent in records
    /// written before schedules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// MLA: mean loss of each modality's steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss_by_modality: Option<NamedValues>,
    /// MLA with HGM: mean over the epoch's steps of `|(grad W) P| / |grad W|`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hgm_surviving_fraction: Option<f64>,
    /// The same per modality (the steps of that modality).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hgm_surviving_fraction_by_modality: Option<NamedValues>,
    /// MLA with HGM: the alpha of the epoch's last step in absolute terms
    /// (alpha times the running mean of `r^T r` with `--alpha-mode relative`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hgm_alpha: Option<f64>,
    /// MLA: forgetting of the other modalities per step (see [`Forgetting`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgetting: Option<Forgetting>,
    /// What a balancing method did over the epoch (OGM's mean coefficient
    /// per modality, PMR's share of steps with a prototype loss, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method_stats: Option<NamedValues>,
    /// Data-parallel training (`--distributed`): what the ranks exchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed: Option<DistRecord>,
    pub val: EvalMetrics,
    /// Whether this epoch became the best (highest validation fused accuracy so far).
    pub best: bool,
    /// Training samples seen in this epoch.
    pub train_samples: u64,
    /// Training steps (mini-batches) of this epoch.
    #[serde(default)]
    pub train_steps: u64,
    /// GFLOP of the matrix products of this epoch's training (steps and the
    /// method's per-epoch preparation; all ranks of a data-parallel job):
    /// `mla_core::flops`.
    #[serde(default)]
    pub train_gflop: f64,
    /// Time in training steps (data waits included, evaluation excluded).
    pub train_seconds: f64,
    /// Whole epoch: training, validation, test of a new best, checkpoints.
    pub epoch_seconds: f64,
    pub samples_per_second: f64,
}

impl EpochRecord {
    /// The record without its timings: what must agree bit for bit between
    /// two runs with the same seed, data, backend and threads.
    pub fn without_timing(&self) -> EpochRecord {
        EpochRecord {
            train_seconds: 0.0,
            epoch_seconds: 0.0,
            samples_per_second: 0.0,
            distributed: self.distributed.as_ref().map(|d| DistRecord {
                allreduce: crate::dist::Traffic {
                    seconds: 0.0,
                    ..d.allreduce
                },
                ..d.clone()
            }),
            ..self.clone()
        }
    }
}

/// An epoch of data-parallel training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistRecord {
    /// Ranks in the job.
    pub world: usize,
    /// FNV-1a of the parameters, buffers, optimizer and method state after
    /// the epoch, which every rank checked equal to its own.
    pub state_checksum: String,
    /// All-reduce calls, bytes per rank and seconds of the epoch (steps,
    /// the buffer broadcast, the check, the evaluation).
    pub allreduce: crate::dist::Traffic,
}

/// Everything besides weights and optimizer/HGM state that `--resume` needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub epochs_done: usize,
    pub best_epoch: Option<usize>,
    pub best_val: Option<EvalMetrics>,
    /// Test metrics of the best-validation model, measured when it became best.
    pub best_test: Option<EvalMetrics>,
    /// MLA: the fusion parameters fitted on validation for the best model.
    #[serde(default)]
    pub best_fusion: Option<FusionFit>,
    pub train_seconds: f64,
    pub total_seconds: f64,
    pub train_samples: u64,
    pub history: Vec<EpochRecord>,
}

/// `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub method: MethodKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality: Option<String>,
    pub encoder: String,
    pub fusion: FusionRule,
    pub hgm: HgmMode,
    pub alpha: f64,
    #[serde(default)]
    pub alpha_mode: super::config::AlphaMode,
    #[serde(default)]
    pub alpha_schedule: super::config::AlphaSchedule,
    pub seed: u64,
    /// OGM / OGM-GE: the parameters used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ogm: Option<super::config::OgmParams>,
    /// PMR: the parameters used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmr: Option<super::config::PmrParams>,
    /// MMPareto: the parameters used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmpareto: Option<super::config::MmparetoParams>,
    /// AGM: the parameters used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agm: Option<super::config::AgmParams>,
    /// ReconBoost: the parameters used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconboost: Option<super::config::ReconboostParams>,
    /// G-Blending: the parameters used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gblending: Option<super::config::GblendingParams>,
    pub best_epoch: usize,
    pub epochs: usize,
    pub val: EvalMetrics,
    pub test: EvalMetrics,
    /// MLA: fusion parameters fitted on validation (temperatures, weights,
    /// each rule's validation accuracy, `auto`'s choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion_fit: Option<FusionFit>,
    /// Time in training steps over the whole run (resumed runs add up).
    pub train_seconds: f64,
    /// Training, evaluation and checkpoints.
    pub total_seconds: f64,
    /// Training samples per second of step time.
    pub samples_per_second: f64,
    /// GFLOP of the matrix products per training step (all ranks), over
    /// the epochs that recorded it; `None` for runs from before the count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gflop_per_step: Option<f64>,
    /// MLA with HGM: per epoch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hgm_surviving_fraction: Vec<f64>,
    /// MLA: per epoch, the mean increase of the other modalities' probe loss
    /// over one modality step, and the mean drop of their probe accuracy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forgetting_loss_increase: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forgetting_accuracy_drop: Vec<f64>,
    pub backend: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    pub train_samples_per_epoch: u64,
    /// Training time of each epoch (steps and per-epoch method work).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epoch_train_seconds: Vec<f64>,
    /// Peak resident memory of the training process when the summary was
    /// written, in bytes (Linux; `None` elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// Build, machine, dataset and model size behind the numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<super::provenance::Provenance>,
    /// `--missing-rate`: what the train split's mask hides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<MissingReport>,
}

/// The summary's account of a missing-modality mask (the ids are in the
/// run directory's `missing_mask.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MissingReport {
    pub seed: u64,
    pub policy: crate::data::MissingPolicy,
    /// Samples the mask was drawn over (the train split).
    pub samples: usize,
    /// Samples `keep-one` gave a modality back.
    pub restored: usize,
    pub modalities: Vec<MissingModalityReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MissingModalityReport {
    pub name: String,
    /// The target rate.
    pub rate: f64,
    /// Samples that had the modality before the mask.
    pub eligible: usize,
    pub hidden: usize,
    /// `hidden / eligible`.
    pub observed_rate: f64,
}

impl MissingReport {
    pub fn of(m: &crate::data::MissingMask) -> MissingReport {
        MissingReport {
            seed: m.seed,
            policy: m.policy,
            samples: m.samples,
            restored: m.restored,
            modalities: m
                .modalities
                .iter()
                .map(|x| MissingModalityReport {
                    name: x.name.clone(),
                    rate: x.rate,
                    eligible: x.eligible,
                    hidden: x.hidden.len(),
                    observed_rate: x.observed_rate(),
                })
                .collect(),
        }
    }
}

impl Summary {
    pub fn new(
        cfg: &TrainConfig,
        state: &TrainerState,
        backend: &str,
        threads: Option<usize>,
        provenance: &super::provenance::Provenance,
    ) -> Option<Summary> {
        let best_epoch = state.best_epoch?;
        let last = state.history.last()?;
        Some(Summary {
            method: cfg.method,
            modality: cfg.modality.clone(),
            encoder: cfg.encoder.clone(),
            fusion: cfg.fusion,
            hgm: cfg.hgm,
            alpha: cfg.alpha,
            alpha_mode: cfg.alpha_mode,
            alpha_schedule: cfg.alpha_schedule,
            seed: cfg.seed,
            ogm: matches!(cfg.method, MethodKind::Ogm | MethodKind::OgmGe)
                .then(|| cfg.ogm_params()),
            pmr: (cfg.method == MethodKind::Pmr).then(|| cfg.pmr_params()),
            mmpareto: (cfg.method == MethodKind::Mmpareto).then(|| cfg.mmpareto_params()),
            agm: (cfg.method == MethodKind::Agm).then(|| cfg.agm_params()),
            reconboost: (cfg.method == MethodKind::Reconboost).then(|| cfg.reconboost_params()),
            gblending: (cfg.method == MethodKind::Gblending).then(|| cfg.gblending_params()),
            best_epoch,
            epochs: state.epochs_done,
            val: state.best_val.clone()?,
            test: state.best_test.clone()?,
            fusion_fit: state.best_fusion.clone(),
            train_seconds: state.train_seconds,
            total_seconds: state.total_seconds,
            samples_per_second: if state.train_seconds > 0.0 {
                state.train_samples as f64 / state.train_seconds
            } else {
                0.0
            },
            gflop_per_step: {
                let counted = state.history.iter().filter(|r| r.train_steps > 0);
                let (gflop, steps) =
                    counted.fold((0.0, 0), |(f, n), r| (f + r.train_gflop, n + r.train_steps));
                (steps > 0).then(|| gflop / steps as f64)
            },
            hgm_surviving_fraction: state
                .history
                .iter()
                .filter_map(|r| r.hgm_surviving_fraction)
                .collect(),
            forgetting_loss_increase: state
                .history
                .iter()
                .filter_map(|r| r.forgetting.as_ref().map(|f| f.loss_increase))
                .collect(),
            forgetting_accuracy_drop: state
                .history
                .iter()
                .filter_map(|r| r.forgetting.as_ref().map(|f| f.accuracy_drop))
                .collect(),
            backend: backend.to_string(),
            threads,
            train_samples_per_epoch: last.train_samples,
            epoch_train_seconds: state.history.iter().map(|r| r.train_seconds).collect(),
            peak_rss_bytes: super::provenance::peak_rss_bytes(),
            provenance: Some(provenance.clone()),
            missing: None,
        })
    }
}
