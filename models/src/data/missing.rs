//! Missing modalities on purpose: a seeded per-sample mask that hides modalities at given
//! rates, on top of what the dataset already lacks (`--missing-rate image=0.5,audio=0.3`).
//!
//! Each (sample, modality) draw depends only on the seed and the sample id, never on which
//! other samples are masked, their order or the thread count: the mask of a subset is the
//! subset of the mask. A sample the draw would leave with nothing is resolved by the
//! policy: `keep-one` gives it back one of the modalities it has, chosen uniformly from
//! the same per-sample stream (so the observed rates fall below the targets by the share
//! of such conflicts, reported in the mask); `strict` refuses the mask instead.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::dataset::Dataset;
use super::error::DataError;
use crate::rng::Rng;

const MASK_STREAM: u64 = 0x4d49_5353_494e_4731; // "MISSING1"
/// The file format tag of a stored mask.
pub const MASK_FORMAT: &str = "mla-missing-mask/1";
/// Largest stored mask read back (200k samples x 8 modalities of ids fit easily).
const MAX_MASK_BYTES: u64 = 256 << 20;

/// What a sample the draw would leave with no modality gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissingPolicy {
    /// One of its modalities back, chosen uniformly (seeded).
    #[default]
    KeepOne,
    /// An error: the rates must never empty a sample.
    Strict,
}

impl FromStr for MissingPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep-one" => Ok(MissingPolicy::KeepOne),
            "strict" => Ok(MissingPolicy::Strict),
            _ => Err(format!(
                "unknown missing-modality policy {s:?}: expected keep-one or strict"
            )),
        }
    }
}

impl fmt::Display for MissingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MissingPolicy::KeepOne => "keep-one",
            MissingPolicy::Strict => "strict",
        })
    }
}

/// `NAME=RATE,...` as written on the command line; `all` names every modality, and a
/// named modality overrides `all` whichever comes first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MissingRates(pub Vec<(String, f64)>);

impl TryFrom<String> for MissingRates {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<MissingRates> for String {
    fn from(r: MissingRates) -> String {
        r.to_string()
    }
}

impl FromStr for MissingRates {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out: Vec<(String, f64)> = Vec::new();
        for part in s.split(',').map(str::trim) {
            let (name, rate) = part.split_once('=').ok_or_else(|| {
                format!("missing rate {part:?}: expected MODALITY=RATE (or all=RATE)")
            })?;
            let name = name.trim();
            if name.is_empty() {
                return Err(format!("missing rate {part:?}: no modality name"));
            }
            let rate: f64 = rate
                .trim()
                .parse()
                .map_err(|_| format!("missing rate {part:?}: {rate:?} is not a number"))?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("missing rate {part:?}: the rate must be in [0, 1]"));
            }
            if out.iter().any(|(n, _)| n == name) {
                return Err(format!("missing rate: {name} is given twice"));
            }
            out.push((name.to_string(), rate));
        }
        Ok(MissingRates(out))
    }
}

impl fmt::Display for MissingRates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(n, r)| format!("{n}={r}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl MissingRates {
    /// The rate of each of `dataset`'s modalities. `allow_one`: a rate of 1 (every
    /// sample loses the modality) is accepted, as at test time; training refuses it.
    pub fn resolve(&self, dataset: &Dataset, allow_one: bool) -> Result<Vec<f64>, DataError> {
        let names: Vec<&str> = dataset
            .modalities()
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        let all = self.0.iter().find(|(n, _)| n == "all").map(|(_, r)| *r);
        let mut rates = vec![all.unwrap_or(0.0); names.len()];
        for (name, rate) in &self.0 {
            if name == "all" {
                continue;
            }
            let m = dataset.modality_index(name).ok_or_else(|| {
                DataError::InvalidArgument(format!(
                    "missing rate {name}={rate}: {} has modalities {} (or all)",
                    dataset.dir().display(),
                    names.join(", ")
                ))
            })?;
            rates[m] = *rate;
        }
        for (m, &r) in rates.iter().enumerate() {
            if !(r >= 0.0 && (r < 1.0 || (allow_one && r == 1.0))) {
                let range = if allow_one { "[0, 1]" } else { "[0, 1)" };
                return Err(DataError::InvalidArgument(format!(
                    "missing rate {}={r}: the rate must be in {range}",
                    names[m]
                )));
            }
        }
        Ok(rates)
    }
}

/// One modality's part of a mask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaskedModality {
    pub name: String,
    pub rate: f64,
    /// Masked samples that had the modality before the mask.
    pub eligible: usize,
    /// Sample ids the mask hides, ascending.
    pub hidden: Vec<usize>,
}

impl MaskedModality {
    /// Share of the eligible samples the mask hides.
    pub fn observed_rate(&self) -> f64 {
        if self.eligible == 0 {
            0.0
        } else {
            self.hidden.len() as f64 / self.eligible as f64
        }
    }
}

/// A drawn mask: what it hides and how it was drawn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MissingMask {
    pub format: String,
    pub seed: u64,
    pub policy: MissingPolicy,
    /// Samples the mask was drawn over.
    pub samples: usize,
    /// Samples given a modality back by `keep-one`.
    pub restored: usize,
    /// One entry per dataset modality, in manifest order.
    pub modalities: Vec<MaskedModality>,
}

impl MissingMask {
    /// Draws the mask of `rates` (one per dataset modality) over `samples`.
    pub fn draw(
        dataset: &Dataset,
        samples: &[usize],
        rates: &[f64],
        seed: u64,
        policy: MissingPolicy,
    ) -> Result<MissingMask, DataError> {
        let m_count = dataset.modalities().len();
        if rates.len() != m_count {
            return Err(DataError::InvalidArgument(format!(
                "{} missing rates for a dataset with {m_count} modalities",
                rates.len()
            )));
        }
        let base = Rng::derive(seed, MASK_STREAM).next_u64();
        let mut hidden = vec![Vec::new(); m_count];
        let mut eligible = vec![0usize; m_count];
        let (mut restored, mut conflicts, mut first_conflict) = (0usize, 0usize, None);
        let mut has = vec![false; m_count];
        let mut drop = vec![false; m_count];
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for &s in &sorted {
            if s >= dataset.len() {
                return Err(DataError::SampleOutOfRange {
                    sample: s,
                    len: dataset.len(),
                });
            }
            let mut rng = Rng::derive(base, s as u64);
            for m in 0..m_count {
                // One draw per modality whether or not it is used keeps each
                // modality's draw the same when another modality's rate changes.
                let u = rng.uniform();
                has[m] = dataset.has(m, s);
                drop[m] = has[m] && u < rates[m];
                eligible[m] += has[m] as usize;
            }
            let kept = (0..m_count).filter(|&m| has[m] && !drop[m]).count();
            if kept == 0 {
                match policy {
                    MissingPolicy::Strict => {
                        conflicts += 1;
                        first_conflict.get_or_insert(s);
                        continue;
                    }
                    MissingPolicy::KeepOne => {
                        let present: Vec<usize> = (0..m_count).filter(|&m| has[m]).collect();
                        drop[present[rng.below(present.len())]] = false;
                        restored += 1;
                    }
                }
            }
            for m in (0..m_count).filter(|&m| drop[m]) {
                hidden[m].push(s);
            }
        }
        if let Some(s) = first_conflict {
            return Err(DataError::InvalidArgument(format!(
                "the missing rates would leave {conflicts} of {} samples with no modality \
                 (the first: sample {s}) and --missing-policy strict refuses that; \
                 lower the rates or use keep-one",
                sorted.len()
            )));
        }
        Ok(MissingMask {
            format: MASK_FORMAT.into(),
            seed,
            policy,
            samples: sorted.len(),
            restored,
            modalities: dataset
                .modalities()
                .iter()
                .zip(hidden)
                .enumerate()
                .map(|(m, (info, hidden))| MaskedModality {
                    name: info.name.clone(),
                    rate: rates[m],
                    eligible: eligible[m],
                    hidden,
                })
                .collect(),
        })
    }

    /// `dataset` with the mask applied.
    pub fn apply(&self, dataset: &Dataset) -> Result<Dataset, DataError> {
        self.check(dataset)?;
        let hidden: Vec<Vec<usize>> = self.modalities.iter().map(|m| m.hidden.clone()).collect();
        dataset.with_hidden(&hidden)
    }

    /// Whether the mask fits `dataset`: its modalities, in order, and ids in range,
    /// ascending and unique.
    pub fn check(&self, dataset: &Dataset) -> Result<(), DataError> {
        let bad = |problem: String| DataError::InvalidArgument(format!("missing mask: {problem}"));
        if self.format != MASK_FORMAT {
            return Err(bad(format!(
                "format {:?}, expected {MASK_FORMAT:?}",
                self.format
            )));
        }
        let names: Vec<&str> = self.modalities.iter().map(|m| m.name.as_str()).collect();
        let want: Vec<&str> = dataset
            .modalities()
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        if names != want {
            return Err(bad(format!(
                "drawn for modalities {}, the dataset has {}",
                names.join(", "),
                want.join(", ")
            )));
        }
        for m in &self.modalities {
            if let Some(w) = m.hidden.windows(2).find(|w| w[0] >= w[1]) {
                return Err(bad(format!(
                    "{}: sample ids not ascending and unique ({} then {})",
                    m.name, w[0], w[1]
                )));
            }
            if let Some(&s) = m.hidden.last().filter(|&&s| s >= dataset.len()) {
                return Err(DataError::SampleOutOfRange {
                    sample: s,
                    len: dataset.len(),
                });
            }
        }
        Ok(())
    }

    /// Reads a mask written as JSON, refusing files over 256 MiB before reading them.
    pub fn read(path: &Path) -> Result<MissingMask, DataError> {
        let io = |e: std::io::Error| DataError::Io {
            path: path.to_path_buf(),
            action: "read",
            source: e,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_MASK_BYTES {
            return Err(DataError::InvalidArgument(format!(
                "{}: {len} bytes, more than a missing mask may have ({MAX_MASK_BYTES})",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        serde_json::from_str(&text).map_err(|e| {
            DataError::InvalidArgument(format!("{}: not a missing mask: {e}", path.display()))
        })
    }
}
