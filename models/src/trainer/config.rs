//! What a run was asked to do: everything that determines its result. Written
//! to `RUN_DIR/config.json` and into every checkpoint, so `--resume` and
//! `mla eval` rebuild exactly the same model and training.

use crate::data::{AugmentSpec, MissingPolicy, MissingRates};
pub use crate::fusion::FusionRule;
pub use crate::hgm::{AlphaMode, AlphaSchedule, HgmMode};
pub use crate::optim::LrSchedule;
pub use crate::optim::OptimizerKind;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Parses a lower-case name from a fixed list, naming the alternatives on failure.
fn parse_name<T: Copy>(what: &str, s: &str, table: &[(&str, T)]) -> Result<T, String> {
    table
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            format!(
                "unknown {what} {s:?}; expected one of: {}",
                names.join(", ")
            )
        })
}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident, $what:literal, { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name { $(#[serde(rename = $s)] $variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                parse_name($what, s, &[$(($s, $name::$variant)),+])
            }
        }
    };
}

named_enum!(
    /// Which training procedure (DESIGN.md invariant 6: one loop; each
    /// method is one file under `crate::methods`).
    MethodKind, "method", {
        Mla = "mla",
        Joint = "joint",
        Unimodal = "unimodal",
        Ogm = "ogm",
        OgmGe = "ogm-ge",
        Pmr = "pmr",
        Mmpareto = "mmpareto",
        Agm = "agm",
        Reconboost = "reconboost",
        Gblending = "gblending",
    }
);

impl MethodKind {
    /// The head of the method's model.
    pub fn head(self) -> crate::model::HeadKind {
        use crate::model::HeadKind;
        match self {
            MethodKind::Mla => HeadKind::Shared,
            MethodKind::Unimodal => HeadKind::Single,
            MethodKind::Joint
            | MethodKind::Ogm
            | MethodKind::OgmGe
            | MethodKind::Pmr
            | MethodKind::Agm
            | MethodKind::Gblending => HeadKind::Concat,
            MethodKind::Mmpareto => HeadKind::ConcatUnimodal,
            MethodKind::Reconboost => HeadKind::Ensemble,
        }
    }

    /// Whether the fused prediction fuses per-modality logits by a
    /// [`FusionRule`] (fitted on validation); otherwise it is the model's
    /// own head (concatenation) or its one modality.
    pub fn fuses_by_rule(self) -> bool {
        matches!(self, MethodKind::Mla | MethodKind::Reconboost)
    }
}

/// Epochs `START:END` (counted from 0, both inclusive, as in BASELINES.md)
/// in which a balancing method modulates; outside it the method's step is
/// the joint step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochWindow {
    pub start: usize,
    pub end: usize,
}

impl EpochWindow {
    /// Whether 1-based training epoch `epoch` lies in the window.
    pub fn contains(self, epoch: usize) -> bool {
        let e0 = epoch.saturating_sub(1);
        (self.start..=self.end).contains(&e0)
    }
}

impl fmt::Display for EpochWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.start, self.end)
    }
}

impl FromStr for EpochWindow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "expected an epoch window START:END (0-based, inclusive, START <= END), got {s:?}"
            )
        };
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let start: usize = a.trim().parse().map_err(|_| bad())?;
        let end: usize = b.trim().parse().map_err(|_| bad())?;
        if start > end {
            return Err(bad());
        }
        Ok(EpochWindow { start, end })
    }
}

named_enum!(
    /// Which gradient tensors of an encoder OGM scales: every weight matrix
    /// and kernel (rank >= 2, BalanceBenchmark's rule, the default: the mlp
    /// encoders have no kernels), or 4-d convolution kernels only (the
    /// official OGM-GE code).
    ModulatedTensors, "modulated tensor set", { Weights = "weights", ConvKernels = "conv-kernels" }
);
named_enum!(
    /// OGM's coefficient: `official` damps only the dominant modality with
    /// `1 - tanh(alpha * rho)` (jumps at rho = 1); `continuous` is the March
    /// 2022 code's `1 - tanh(alpha * relu(rho - 1))` for every modality.
    OgmRule, "OGM rule", { Official = "official", Continuous = "continuous" }
);

/// OGM / OGM-GE hyper-parameters (BASELINES.md section 2).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OgmParams {
    /// `alpha` of `k = 1 - tanh(alpha * rho)`. Default 0.8: the official
    /// README's value for CREMA-D (two modalities, audio-visual); no official
    /// AV-MNIST value exists.
    pub alpha: f64,
    /// Default 0:50, the official window.
    pub window: EpochWindow,
    pub tensors: ModulatedTensors,
    pub rule: OgmRule,
}

impl Default for OgmParams {
    fn default() -> Self {
        OgmParams {
            alpha: 0.8,
            window: EpochWindow { start: 0, end: 50 },
            tensors: ModulatedTensors::Weights,
            rule: OgmRule::Official,
        }
    }
}

named_enum!(
    /// MMPareto's rescaling: one factor over the whole encoder (`global`,
    /// the default: keeps the guarantee of no conflict with either
    /// objective) or one per tensor (`per-tensor`, the official code).
    NormScope, "norm scope", { Global = "global", PerTensor = "per-tensor" }
);

/// MMPareto hyper-parameters (BASELINES.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MmparetoParams {
    pub norm_scope: NormScope,
    /// The official code's hard-coded `gamma` = 1.5: encoder gradients have
    /// norm `scale * max(|G|, |D|)`.
    pub scale: f64,
}

impl Default for MmparetoParams {
    fn default() -> Self {
        MmparetoParams {
            norm_scope: NormScope::Global,
            scale: 1.5,
        }
    }
}

/// AGM hyper-parameters (BASELINES.md section 4).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgmParams {
    /// `kappa = exp(alpha (rbar - r))`. Default 2.5: the official README's
    /// AV-MNIST example.
    pub alpha: f64,
    /// Default 0:20, the official parser's window.
    pub window: EpochWindow,
    /// Upper clamp of `rbar - r` (official CREMA-D 10, URFunny 7; none on
    /// AV-MNIST, the default).
    #[serde(default)]
    pub clamp: Option<f64>,
    /// Clip all gradients to norm 1 when a head-weight gradient element is
    /// outside [-1, 1] (the official rule; default on).
    pub clip: bool,
    /// Keep the last kappa after the window (the official hooks' behaviour);
    /// default off: kappa is 1 outside the window.
    pub stale_kappa: bool,
}

impl Default for AgmParams {
    fn default() -> Self {
        AgmParams {
            alpha: 2.5,
            window: EpochWindow { start: 0, end: 20 },
            clamp: None,
            clip: true,
            stale_kappa: false,
        }
    }
}

/// ReconBoost's schedule: each stage trains one modality for `stage`
/// epochs (phase 1), then everything for `correct` epochs (phase 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSchedule {
    pub stage: usize,
    pub correct: usize,
}

impl StageSchedule {
    /// Epochs in one stage (both phases).
    pub fn epochs_per_stage(self) -> usize {
        self.stage + self.correct
    }
    /// The 0-based stage of 1-based epoch `epoch`, and whether the epoch is
    /// in its phase 1 (one modality).
    pub fn at(self, epoch: usize) -> (usize, bool) {
        let e0 = epoch.saturating_sub(1);
        (
            e0 / self.epochs_per_stage(),
            e0 % self.epochs_per_stage() < self.stage,
        )
    }
}

impl fmt::Display for StageSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.stage, self.correct)
    }
}

impl FromStr for StageSchedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected STAGE:CORRECT epochs (STAGE >= 1, CORRECT >= 0), got {s:?}");
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let stage: usize = a.trim().parse().map_err(|_| bad())?;
        let correct: usize = b.trim().parse().map_err(|_| bad())?;
        if stage == 0 {
            return Err(bad());
        }
        Ok(StageSchedule { stage, correct })
    }
}

/// ReconBoost hyper-parameters (BASELINES.md section 6).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReconboostParams {
    /// Weight of the modality's own CE in phase 1. Default 5.0: the official
    /// README's CREMA-D value (two modalities, audio-visual).
    pub w1: f64,
    /// Weight of the reconcilement term `q_y log p_y`. Default 1.0 (official).
    pub w2: f64,
    /// Default 1:1 (BalanceBenchmark's one epoch per phase; the official
    /// code runs 4:4).
    pub schedule: StageSchedule,
    /// A fresh optimizer (no momentum) at the start of every phase, as the
    /// official code creates one; default on (BalanceBenchmark never resets).
    pub reset_optimizer: bool,
}

impl Default for ReconboostParams {
    fn default() -> Self {
        ReconboostParams {
            w1: 5.0,
            w2: 1.0,
            schedule: StageSchedule {
                stage: 1,
                correct: 1,
            },
            reset_optimizer: true,
        }
    }
}

named_enum!(
    /// How G-Blending turns the estimation losses into weights: `paper`
    /// (losses before and after the estimation epochs, weight
    /// `max(G, 0) / O^2` with `G` the validation-loss decrease) or `bb`
    /// (BalanceBenchmark: "before" is after the first estimation epoch,
    /// weight `|G / O^2|`). Both use per-sample mean losses.
    BlendRule, "G-Blending rule", { Paper = "paper", Bb = "bb" }
);

/// G-Blending hyper-parameters (BASELINES.md section 8).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GblendingParams {
    /// Re-estimate the weights before every `every`-th epoch (from the first);
    /// 0: once, before the first epoch ("offline"). Default 10 (BB's super_epoch).
    pub every: usize,
    /// Epochs each estimation trains a copy of the model per modality and
    /// for the fused output. Default 10 (BB's super_epoch).
    pub epochs: usize,
    pub rule: BlendRule,
}

impl Default for GblendingParams {
    fn default() -> Self {
        GblendingParams {
            every: 10,
            epochs: 10,
            rule: BlendRule::Paper,
        }
    }
}

/// PMR (prototypical cross-entropy part) hyper-parameters (BASELINES.md section 5).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PmrParams {
    /// Weight of the weaker modality's prototype CE. Default 1.0 with window
    /// 0:60: the official values for CGMNIST (colored MNIST, the official
    /// dataset closest to AV-MNIST).
    pub alpha: f64,
    /// Prototype momentum `P <- (1 - mu) P_new + mu P_old`; default 0.0, the
    /// value of every official run (the parser's default 0.2 is never used).
    pub momentum: f64,
    pub window: EpochWindow,
}

impl Default for PmrParams {
    fn default() -> Self {
        PmrParams {
            alpha: 1.0,
            momentum: 0.0,
            window: EpochWindow { start: 0, end: 60 },
        }
    }
}

fn one() -> f64 {
    1.0
}

/// Default HGM alpha. alpha competes with `r^T P r`, the squared norm of the
/// batch-mean feature projected on what P has not yet seen; ReLU features of
/// the cnn encoders have a large mean, so a small alpha makes P forget almost
/// every direction. Measured on AV-MNIST (README "Results", 3 seeds, both
/// recipes): alpha 1 left 0.016 of the head gradient after 3 epochs and 0.001
/// after 8 (the shared head freezes), alpha 100 left 0.14 and 0.03, alpha 10^4
/// about 0.57 and gave the best MLA accuracy of the three. `--alpha`
/// overrides it; every epoch reports the surviving fraction so it can be tuned.
pub const DEFAULT_ALPHA: f64 = 1e4;

/// Everything that decides a run's result. Paths and the backend are not here:
/// the same config can run on another machine or device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub method: MethodKind,
    /// The one modality of `unimodal`.
    #[serde(default)]
    pub modality: Option<String>,
    /// Encoder spec: `cnn`, `mlp`, `resnet18`, `resnet18-small`, or per
    /// modality `image=cnn,audio=mlp`.
    pub encoder: String,
    pub feature_size: usize,
    /// Width multiplier of ResNet encoders (their feature size is
    /// `512 * width_mult`, rounded).
    #[serde(default = "one")]
    pub width_mult: f64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Batch size of evaluation passes (results do not depend on it: fusion
    /// and metrics are per sample). Equal to `batch_size` by default, so
    /// evaluation reuses the training step's buffer sizes.
    pub eval_batch_size: usize,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    /// The learning rate per epoch (`--lr-schedule`).
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    pub momentum: f64,
    pub weight_decay: f64,
    pub hgm: HgmMode,
    pub alpha: f64,
    /// How alpha is read: as given, or times the running mean of `r^T r`.
    #[serde(default)]
    pub alpha_mode: AlphaMode,
    /// Alpha over training (`linear:START:END` replaces `alpha`).
    #[serde(default)]
    pub alpha_schedule: AlphaSchedule,
    pub fusion: FusionRule,
    pub seed: u64,
    /// OGM / OGM-GE parameters (`None`: the defaults; only with those methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ogm: Option<OgmParams>,
    /// PMR parameters (`None`: the defaults; only with `--method pmr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmr: Option<PmrParams>,
    /// MMPareto parameters (`None`: the defaults; only with `--method mmpareto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmpareto: Option<MmparetoParams>,
    /// AGM parameters (`None`: the defaults; only with `--method agm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agm: Option<AgmParams>,
    /// ReconBoost parameters (`None`: the defaults; only with `--method reconboost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconboost: Option<ReconboostParams>,
    /// G-Blending parameters (`None`: the defaults; only with `--method gblending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gblending: Option<GblendingParams>,
    /// Training-time crops and flips (`--augment`).
    #[serde(default, skip_serializing_if = "AugmentSpec::is_empty")]
    pub augment: AugmentSpec,
    /// Encoders initialised from weight files instead of at random.
    #[serde(default, skip_serializing_if = "EncoderInit::is_empty")]
    pub init_encoder: EncoderInit,
    /// Modalities hidden on purpose in the train split (`None`: only what
    /// the dataset lacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<MissingTrain>,
    /// A seeded random subset of this many train samples.
    #[serde(default)]
    pub train_limit: Option<usize>,
    /// Seeded random subsets of this many validation and test samples (quick runs).
    #[serde(default)]
    pub eval_limit: Option<usize>,
    /// Data-parallel training (`--sync-bn`): batch norm normalises with the
    /// statistics of the whole job's batch (README, "Distributed training").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync_bn: bool,
}

/// `--init-encoder image=FILE,...`: torchvision-style ResNet-18 weights
/// (a plain safetensors state dict) for some modalities' encoders.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncoderInit(pub Vec<(String, std::path::PathBuf)>);

impl FromStr for EncoderInit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out: Vec<(String, std::path::PathBuf)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (m, f) = part
                .split_once('=')
                .ok_or_else(|| format!("--init-encoder {part:?}: expected MODALITY=FILE"))?;
            let (m, f) = (m.trim(), f.trim());
            if m.is_empty() || f.is_empty() {
                return Err(format!("--init-encoder {part:?}: expected MODALITY=FILE"));
            }
            if out.iter().any(|(n, _)| n == m) {
                return Err(format!("--init-encoder: {m} is given twice"));
            }
            out.push((m.to_string(), f.into()));
        }
        Ok(EncoderInit(out))
    }
}

impl EncoderInit {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for EncoderInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(m, p)| format!("{m}={}", p.display()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Serialize for EncoderInit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for EncoderInit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `--missing-rate`: the train split's mask, drawn once from `seed` and
/// stored in the run directory (see `data::missing`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MissingTrain {
    pub rates: MissingRates,
    #[serde(default)]
    pub policy: MissingPolicy,
    pub seed: u64,
}

impl Default for TrainConfig {
    /// The reference recipe: MLA, cnn encoders, SGD lr 0.01 momentum 0.9
    /// weight decay 1e-4, batch 64, seed 0, HGM owm.
    fn default() -> Self {
        TrainConfig {
            method: MethodKind::Mla,
            modality: None,
            encoder: "cnn".into(),
            feature_size: 128,
            width_mult: 1.0,
            epochs: 3,
            batch_size: 64,
            eval_batch_size: 64,
            optimizer: OptimizerKind::Sgd,
            lr: 0.01,
            lr_schedule: LrSchedule::Constant,
            momentum: 0.9,
            weight_decay: 1e-4,
            hgm: HgmMode::Owm,
            alpha: DEFAULT_ALPHA,
            alpha_mode: AlphaMode::Absolute,
            alpha_schedule: AlphaSchedule::Constant,
            fusion: FusionRule::Auto,
            seed: 0,
            ogm: None,
            pmr: None,
            mmpareto: None,
            agm: None,
            reconboost: None,
            gblending: None,
            augment: AugmentSpec::default(),
            init_encoder: EncoderInit::default(),
            missing: None,
            train_limit: None,
            eval_limit: None,
            sync_bn: false,
        }
    }
}

impl TrainConfig {
    pub fn ogm_params(&self) -> OgmParams {
        self.ogm.unwrap_or_default()
    }
    pub fn pmr_params(&self) -> PmrParams {
        self.pmr.unwrap_or_default()
    }
    pub fn mmpareto_params(&self) -> MmparetoParams {
        self.mmpareto.unwrap_or_default()
    }
    pub fn agm_params(&self) -> AgmParams {
        self.agm.unwrap_or_default()
    }
    /// The optimizer of the run (a fresh one: no state).
    pub fn optim_config(&self) -> crate::optim::OptimConfig {
        crate::optim::OptimConfig {
            kind: self.optimizer,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            ..crate::optim::OptimConfig::default()
        }
    }
    pub fn reconboost_params(&self) -> ReconboostParams {
        self.reconboost.unwrap_or_default()
    }
    pub fn gblending_params(&self) -> GblendingParams {
        self.gblending.unwrap_or_default()
    }

    /// Checks what can be checked without the dataset.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--feature-size", self.feature_size),
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("eval batch size", self.eval_batch_size),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if !(self.width_mult.is_finite() && self.width_mult > 0.0 && self.width_mult <= 64.0) {
            return Err(format!(
                "--width-mult must be in (0, 64], got {}",
                self.width_mult
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("--lr must be a positive number, got {}", self.lr));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(format!(
                "--momentum must be in [0, 1), got {}",
                self.momentum
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "--weight-decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!(
                "--alpha must be a positive number, got {}",
                self.alpha
            ));
        }
        if self.hgm == HgmMode::None
            && (self.alpha_mode != AlphaMode::Absolute
                || self.alpha_schedule != AlphaSchedule::Constant)
        {
            return Err(format!(
                "--alpha-mode {} / --alpha-schedule {} need HGM (--method mla with --hgm owm or cross)",
                self.alpha_mode, self.alpha_schedule
            ));
        }
        if self.train_limit == Some(0) {
            return Err("--train-limit must be at least 1".into());
        }
        if self.eval_limit == Some(0) {
            return Err("--eval-limit must be at least 1".into());
        }
        if self.ogm.is_some() && !matches!(self.method, MethodKind::Ogm | MethodKind::OgmGe) {
            return Err(format!(
                "the --ogm-* flags apply to --method ogm or ogm-ge (got --method {})",
                self.method
            ));
        }
        if self.pmr.is_some() && self.method != MethodKind::Pmr {
            return Err(format!(
                "the --pmr-* flags apply to --method pmr (got --method {})",
                self.method
            ));
        }
        if self.mmpareto.is_some() && self.method != MethodKind::Mmpareto {
            return Err(format!(
                "the --mmpareto-* flags apply to --method mmpareto (got --method {})",
                self.method
            ));
        }
        if self.agm.is_some() && self.method != MethodKind::Agm {
            return Err(format!(
                "the --agm-* flags apply to --method agm (got --method {})",
                self.method
            ));
        }
        if self.reconboost.is_some() && self.method != MethodKind::Reconboost {
            return Err(format!(
                "the --reconboost-* flags apply to --method reconboost (got --method {})",
                self.method
            ));
        }
        if self.gblending.is_some() && self.method != MethodKind::Gblending {
            return Err(format!(
                "the --gblending-* flags apply to --method gblending (got --method {})",
                self.method
            ));
        }
        let rb = self.reconboost_params();
        if !(rb.w1.is_finite() && rb.w2.is_finite() && rb.w2 >= 0.0 && rb.w1 >= rb.w2) {
            return Err(format!(
                "--reconboost-w1 and --reconboost-w2 must be finite with w1 >= w2 >= 0 (every sample weight w1 - w2 q stays >= 0), got {} and {}",
                rb.w1, rb.w2
            ));
        }
        if rb.schedule.stage == 0 {
            return Err("--reconboost-schedule: a stage needs at least one phase-1 epoch".into());
        }
        let gb = self.gblending_params();
        if gb.epochs == 0 || (gb.rule == BlendRule::Bb && gb.epochs < 2) {
            return Err(format!(
                "--gblending-epochs must be at least 1 (2 with --gblending-rule bb, which measures after the first), got {}",
                gb.epochs
            ));
        }
        let ag = self.agm_params();
        if !(ag.alpha.is_finite() && ag.alpha >= 0.0) {
            return Err(format!(
                "--agm-alpha must be a number >= 0, got {}",
                ag.alpha
            ));
        }
        if ag.clamp.is_some_and(|c| !c.is_finite()) {
            return Err("--agm-clamp must be a finite number".into());
        }
        let mp = self.mmpareto_params();
        if !(mp.scale.is_finite() && mp.scale > 0.0) {
            return Err(format!(
                "--mmpareto-scale must be a positive number, got {}",
                mp.scale
            ));
        }
        let o = self.ogm_params();
        if !(o.alpha.is_finite() && o.alpha >= 0.0) {
            return Err(format!(
                "--ogm-alpha must be a number >= 0, got {}",
                o.alpha
            ));
        }
        let p = self.pmr_params();
        if !(p.alpha.is_finite() && p.alpha >= 0.0) {
            return Err(format!(
                "--pmr-alpha must be a number >= 0, got {}",
                p.alpha
            ));
        }
        if !(p.momentum.is_finite() && (0.0..1.0).contains(&p.momentum)) {
            return Err(format!(
                "--pmr-momentum must be in [0, 1), got {}",
                p.momentum
            ));
        }
        match (self.method, &self.modality) {
            (MethodKind::Unimodal, None) => Err("--method unimodal needs --modality NAME".into()),
            (m, Some(mo)) if m != MethodKind::Unimodal => Err(format!(
                "--modality {mo} only applies to --method unimodal (got --method {m})"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for m in MethodKind::ALL {
            assert_eq!(m.as_str().parse::<MethodKind>().unwrap(), *m);
        }
        let e = "joint2".parse::<MethodKind>().unwrap_err();
        assert!(
            e.contains("unknown method \"joint2\"") && e.contains("mla, joint, unimodal"),
            "{e}"
        );
        assert_eq!(serde_json::to_string(&HgmMode::Cross).unwrap(), "\"cross\"");
    }

    #[test]
    fn validation_catches_inconsistent_flags() {
        assert!(TrainConfig::default().validate().is_ok());
        let c = TrainConfig {
            method: MethodKind::Unimodal,
            ..TrainConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("--modality"));
        let c = TrainConfig {
            modality: Some("audio".into()),
            ..TrainConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("only applies"));
        let c = TrainConfig {
            alpha: 0.0,
            ..TrainConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("--alpha"));
        let c = TrainConfig {
            lr: f64::NAN,
            ..TrainConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("--lr"));
    }
}
