//! Test-time fusion of per-modality logits, per sample.
//!
//! Rules (`--fusion`):
//! - `entropy` (MLA.md, the paper's rule): `lambda_m = exp(-e_m) / sum_{k in S} exp(-e_k)`,
//!   `e_m` the entropy of `softmax(z_m)`, over the modalities S present for
//!   that sample; fused logits `sum_m lambda_m z_m`.
//! - `mean`: `lambda_m = 1 / |S|`.
//! - `calibrated`: each modality's logits divided by a temperature `T_m`
//!   fitted on validation NLL, then the entropy rule on `z_m / T_m`. A weak
//!   modality that is confidently wrong gets a large `T_m`, hence a high
//!   entropy and a small weight.
//! - `weighted`: log-linear pooling `sum_m w_m z_m` with `w_m >= 0` fitted on
//!   validation NLL; `weighted-entropy`: `sum_m w_m lambda_m z_m`.
//! - `auto`: every rule above is scored on validation and the most accurate
//!   one is used (ties go to the earlier rule in [`FusionRule::CONCRETE`]).
//!
//! The fitted parameters ([`FusionFit`]) come from the validation split only,
//! are stored in every checkpoint and applied unchanged by `mla eval`; test
//! data never reaches a fit. Every rule is per sample: a prediction never
//! depends on its batch mates, and missing modalities leave the sum.

mod calibration;
mod combine;
mod fit;
mod table;

pub use calibration::{expected_calibration_error, ECE_BINS};
pub use combine::{entropy, fuse, fuse_tensors, Fused, Fusion, ModalityLogits};
pub(crate) use fit::calibration_errors;
pub use fit::{fit_fusion, fit_temperature, fit_weights, weighted_nll, FusionFit, MAX_WEIGHT};
pub use fit::{MAX_TEMPERATURE, MIN_TEMPERATURE};
pub use table::LogitTable;

use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How per-modality logits are combined at test time (one enum for the
/// config, the CLI, summaries and checkpoints).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FusionRule {
    #[serde(rename = "entropy")]
    Entropy,
    #[serde(rename = "mean")]
    Mean,
    #[serde(rename = "calibrated")]
    Calibrated,
    #[serde(rename = "weighted")]
    Weighted,
    #[serde(rename = "weighted-entropy")]
    WeightedEntropy,
    #[serde(rename = "auto")]
    Auto,
}

impl FusionRule {
    pub const ALL: [FusionRule; 6] = [
        FusionRule::Entropy,
        FusionRule::Mean,
        FusionRule::Calibrated,
        FusionRule::Weighted,
        FusionRule::WeightedEntropy,
        FusionRule::Auto,
    ];
    /// The rules `auto` chooses from, in tie-break order (the paper's rule first).
    pub const CONCRETE: [FusionRule; 5] = [
        FusionRule::Entropy,
        FusionRule::Mean,
        FusionRule::Calibrated,
        FusionRule::Weighted,
        FusionRule::WeightedEntropy,
    ];
    pub const NAMES: [&'static str; 6] = [
        "entropy",
        "mean",
        "calibrated",
        "weighted",
        "weighted-entropy",
        "auto",
    ];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|&r| r == self).unwrap_or(0)]
    }

    /// Whether the rule has parameters fitted on validation.
    pub fn needs_fit(self) -> bool {
        !matches!(self, FusionRule::Entropy | FusionRule::Mean)
    }

    /// The concrete fusion this rule means given the validation fit (`auto`
    /// resolves to the fit's choice). Rules with fitted parameters need a fit.
    pub fn resolve(self, fit: Option<&FusionFit>) -> Result<Fusion> {
        let need = |fit: Option<&FusionFit>| {
            fit.cloned().ok_or_else(|| {
                ModelError::Fusion(format!(
                    "fusion rule '{self}' needs parameters fitted on the validation split, and none are available (a checkpoint written before fusion fitting, or a method without per-modality fusion); use --fusion entropy or mean"
                ))
            })
        };
        Ok(match self {
            FusionRule::Entropy => Fusion::Entropy,
            FusionRule::Mean => Fusion::Mean,
            FusionRule::Calibrated => Fusion::Calibrated {
                temperatures: need(fit)?.temperature_values(),
            },
            FusionRule::Weighted => Fusion::Weighted {
                weights: need(fit)?.weight_values(false),
                entropy: false,
            },
            FusionRule::WeightedEntropy => Fusion::Weighted {
                weights: need(fit)?.weight_values(true),
                entropy: true,
            },
            FusionRule::Auto => {
                let f = need(fit)?;
                if f.chosen == FusionRule::Auto {
                    return Err(ModelError::Fusion(
                        "fusion fit names 'auto' as its choice; expected a concrete rule".into(),
                    ));
                }
                f.chosen.resolve(Some(&f))?
            }
        })
    }

    /// The concrete rule used: `auto` becomes the fit's choice.
    pub fn concrete(self, fit: Option<&FusionFit>) -> FusionRule {
        match (self, fit) {
            (FusionRule::Auto, Some(f)) => f.chosen,
            (r, _) => r,
        }
    }
}

impl fmt::Display for FusionRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FusionRule {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        Self::NAMES
            .iter()
            .position(|&n| n == s)
            .map(|i| Self::ALL[i])
            .ok_or_else(|| ModelError::unknown("fusion", &s, &Self::NAMES))
    }
}
