//! Test-time perturbations shared by `mla eval` and `mla robustness`: a
//! missing-modality mask over the evaluated samples and input corruptions.

use crate::CliResult;
use mla_models::data::{Corruption, Corruptor, Dataset, MissingMask, MissingPolicy, MissingRates};
use std::sync::Arc;

/// The flags of one perturbation.
#[derive(clap::Args, Clone, Debug)]
pub struct PerturbArgs {
    /// Hide modalities of the evaluated samples at these rates
    /// (`image=0.5,audio=0.3` or `all=0.3`), a seeded per-sample mask on
    /// top of what the dataset lacks; a rate of 1 hides the modality from
    /// every sample (as --drop-modality, for those with another one).
    #[arg(long, value_name = "NAME=RATE,...")]
    pub missing_rate: Option<MissingRates>,
    /// Seed of the test-time mask (independent of any training mask).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub missing_seed: u64,
    /// What a sample the mask would leave with nothing gets: keep-one (one
    /// of its modalities back) or strict (an error).
    #[arg(long, value_name = "keep-one|strict", default_value = "keep-one")]
    pub missing_policy: MissingPolicy,
    /// Corrupt a modality's inputs: MODALITY=KIND:LEVEL with KIND gaussian
    /// (adds N(0, LEVEL x the value's standard deviation over the training
    /// split)), saltpepper (a fraction LEVEL of the values set to the
    /// modality's training minimum or maximum), dropout (a fraction LEVEL
    /// zeroed), timemask or freqmask (a band of LEVEL x the time frames or
    /// frequency bins zeroed, for [.., frequency, time] spectrograms).
    /// Seeded per sample; repeat for several modalities.
    #[arg(long, value_name = "MODALITY=KIND:LEVEL")]
    pub corrupt: Vec<Corruption>,
    /// Seed of the corruptions.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub corrupt_seed: u64,
}

/// A dataset and corruptor to evaluate `samples` under.
pub struct Perturbed {
    pub dataset: Arc<Dataset>,
    pub corrupt: Option<Arc<Corruptor>>,
    pub mask: Option<MissingMask>,
}

/// `dataset` with the mask of `rates` over `samples` (none: itself).
pub fn masked(
    dataset: &Arc<Dataset>,
    samples: &[usize],
    rates: Option<&MissingRates>,
    seed: u64,
    policy: MissingPolicy,
) -> CliResult<(Arc<Dataset>, Option<MissingMask>)> {
    let Some(rates) = rates else {
        return Ok((dataset.clone(), None));
    };
    let r = rates.resolve(dataset, true)?;
    let mask = MissingMask::draw(dataset, samples, &r, seed, policy)?;
    Ok((Arc::new(mask.apply(dataset)?), Some(mask)))
}

impl PerturbArgs {
    pub fn apply(&self, dataset: &Arc<Dataset>, samples: &[usize]) -> CliResult<Perturbed> {
        let (ds, mask) = masked(
            dataset,
            samples,
            self.missing_rate.as_ref(),
            self.missing_seed,
            self.missing_policy,
        )?;
        let corrupt = if self.corrupt.is_empty() {
            None
        } else {
            Some(Arc::new(Corruptor::new(
                dataset,
                &self.corrupt,
                self.corrupt_seed,
            )?))
        };
        Ok(Perturbed {
            dataset: ds,
            corrupt,
            mask,
        })
    }

    /// How the evaluation was perturbed, for the printed header.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.missing_rate {
            parts.push(format!(
                "missing {r} (seed {}, {})",
                self.missing_seed, self.missing_policy
            ));
        }
        if !self.corrupt.is_empty() {
            let c: Vec<String> = self.corrupt.iter().map(|c| c.to_string()).collect();
            parts.push(format!(
                "corrupted {} (seed {})",
                c.join(", "),
                self.corrupt_seed
            ));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(", {}", parts.join("; "))
        }
    }
}
