//! What a run records: one line per epoch (`metrics.jsonl`), the trainer's
//! resumable state (in every checkpoint), and the final `summary.json`.

use super::config::{FusionRule, HgmMode, Method, TrainConfig};
use crate::metrics::{EvalMetrics, NamedValues};
use serde::{Deserialize, Serialize};

/// One epoch: training statistics, validation metrics, timing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps (over every modality step for MLA).
    pub train_loss: f64,
    /// MLA: mean loss of each modality's steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss_by_modality: Option<NamedValues>,
    /// MLA with HGM: mean over the epoch's steps of `|(grad W) P| / |grad W|`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hgm_surviving_fraction: Option<f64>,
    /// The same per modality (the steps of that modality).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hgm_surviving_fraction_by_modality: Option<NamedValues>,
    pub val: EvalMetrics,
    /// Whether this epoch became the best (highest validation fused accuracy so far).
    pub best: bool,
    /// Training samples seen in this epoch.
    pub train_samples: u64,
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
            ..self.clone()
        }
    }
}

/// Everything besides weights and optimizer/HGM state that `--resume` needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub epochs_done: usize,
    pub best_epoch: Option<usize>,
    pub best_val: Option<EvalMetrics>,
    /// Test metrics of the best-validation model, measured when it became best.
    pub best_test: Option<EvalMetrics>,
    pub train_seconds: f64,
    pub total_seconds: f64,
    pub train_samples: u64,
    pub history: Vec<EpochRecord>,
}

/// `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub method: Method,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality: Option<String>,
    pub encoder: String,
    pub fusion: FusionRule,
    pub hgm: HgmMode,
    pub alpha: f64,
    pub seed: u64,
    pub best_epoch: usize,
    pub epochs: usize,
    pub val: EvalMetrics,
    pub test: EvalMetrics,
    /// Time in training steps over the whole run (resumed runs add up).
    pub train_seconds: f64,
    /// Training, evaluation and checkpoints.
    pub total_seconds: f64,
    /// Training samples per second of step time.
    pub samples_per_second: f64,
    /// MLA with HGM: per epoch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hgm_surviving_fraction: Vec<f64>,
    pub backend: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    pub train_samples_per_epoch: u64,
}

impl Summary {
    pub fn new(
        cfg: &TrainConfig,
        state: &TrainerState,
        backend: &str,
        threads: Option<usize>,
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
            seed: cfg.seed,
            best_epoch,
            epochs: state.epochs_done,
            val: state.best_val.clone()?,
            test: state.best_test.clone()?,
            train_seconds: state.train_seconds,
            total_seconds: state.total_seconds,
            samples_per_second: if state.train_seconds > 0.0 {
                state.train_samples as f64 / state.train_seconds
            } else {
                0.0
            },
            hgm_surviving_fraction: state
                .history
                .iter()
                .filter_map(|r| r.hgm_surviving_fraction)
                .collect(),
            backend: backend.to_string(),
            threads,
            train_samples_per_epoch: last.train_samples,
        })
    }
}
