//! Test-time corruptions of one modality's inputs (`--corrupt audio=gaussian:0.5`),
//! applied to the rows a batch holds, i.e. to the data as the model sees it (after any
//! `mla prepare` step).
//!
//! Every value a corruption draws comes from a stream of (seed, modality, sample id), so
//! a sample is corrupted the same way whatever batch, order or thread count it is
//! evaluated in. Level 0 leaves the rows untouched (bitwise).
//!
//! The scales come from the training split of the dataset (the inputs the model learnt
//! from): the per-value standard deviation for `gaussian`, the modality's minimum and
//! maximum for `saltpepper`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::dataset::{Dataset, Split};
use super::error::DataError;
use super::loader::Batch;
use crate::rng::Rng;

const CORRUPT_STREAM: u64 = 0x434f_5252_5550_5431; // "CORRUPT1"
/// Largest `gaussian` level (in standard deviations): beyond it the inputs are noise
/// whose magnitude can overflow an encoder.
pub const MAX_GAUSSIAN_LEVEL: f64 = 1e3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CorruptionKind {
    /// Adds N(0, (LEVEL * std_j)^2) to value j, std_j over the training split.
    Gaussian,
    /// Sets a fraction LEVEL of the values to the modality's minimum or maximum (even odds).
    SaltPepper,
    /// Sets a fraction LEVEL of the values to zero.
    Dropout,
    /// Zeroes one band of round(LEVEL * T) consecutive time frames (last axis).
    TimeMask,
    /// Zeroes one band of round(LEVEL * F) consecutive frequency bins (second-to-last axis).
    FreqMask,
}

impl CorruptionKind {
    pub const ALL: [CorruptionKind; 5] = [
        CorruptionKind::Gaussian,
        CorruptionKind::SaltPepper,
        CorruptionKind::Dropout,
        CorruptionKind::TimeMask,
        CorruptionKind::FreqMask,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CorruptionKind::Gaussian => "gaussian",
            CorruptionKind::SaltPepper => "saltpepper",
            CorruptionKind::Dropout => "dropout",
            CorruptionKind::TimeMask => "timemask",
            CorruptionKind::FreqMask => "freqmask",
        }
    }

    /// The levels the kind accepts, for errors.
    fn check_level(self, level: f64) -> Result<(), String> {
        let ok = match self {
            CorruptionKind::Gaussian => (0.0..=MAX_GAUSSIAN_LEVEL).contains(&level),
            _ => (0.0..=1.0).contains(&level),
        };
        if ok {
            Ok(())
        } else if self == CorruptionKind::Gaussian {
            Err(format!(
                "a gaussian level is a number of standard deviations in [0, {MAX_GAUSSIAN_LEVEL}], not {level}"
            ))
        } else {
            Err(format!(
                "a {} level is a fraction in [0, 1], not {level}",
                self.name()
            ))
        }
    }
}

impl FromStr for CorruptionKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CorruptionKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = CorruptionKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown corruption {s:?}: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `MODALITY=KIND:LEVEL` as written on the command line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Corruption {
    pub modality: String,
    pub kind: CorruptionKind,
    pub level: f64,
}

impl FromStr for Corruption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("corruption {s:?}: expected MODALITY=KIND:LEVEL, e.g. audio=gaussian:0.5");
        let (modality, rest) = s.split_once('=').ok_or_else(bad)?;
        let (kind, level) = rest.split_once(':').ok_or_else(bad)?;
        let modality = modality.trim();
        if modality.is_empty() {
            return Err(bad());
        }
        let kind: CorruptionKind = kind.trim().parse()?;
        let level: f64 = level
            .trim()
            .parse()
            .map_err(|_| format!("corruption {s:?}: level {level:?} is not a number"))?;
        kind.check_level(level)
            .map_err(|e| format!("corruption {s:?}: {e}"))?;
        Ok(Corruption {
            modality: modality.to_string(),
            kind,
            level,
        })
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:{}", self.modality, self.kind, self.level)
    }
}

/// The scales of one modality over a set of samples.
#[derive(Clone, Debug, PartialEq)]
pub struct ModalityStats {
    /// Population standard deviation of each value of the row.
    pub std: Vec<f32>,
    pub min: f32,
    pub max: f32,
    /// Samples the statistics are over.
    pub samples: usize,
}

impl ModalityStats {
    /// Over the samples of `samples` having modality `m` (f64 sums, two passes).
    pub fn of(dataset: &Dataset, m: usize, samples: &[usize]) -> Result<ModalityStats, DataError> {
        let len = dataset.row_len(m).ok_or(DataError::ModalityOutOfRange {
            modality: m,
            count: dataset.modalities().len(),
        })?;
        let mut mean = vec![0f64; len];
        let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        let mut count = 0usize;
        for &s in samples {
            if let Some(row) = dataset.row(m, s)? {
                for (a, &v) in mean.iter_mut().zip(row.iter()) {
                    *a += v as f64;
                    min = min.min(v);
                    max = max.max(v);
                }
                count += 1;
            }
        }
        if count == 0 {
            return Err(DataError::InvalidArgument(format!(
                "no sample has modality {}: it has no statistics to scale a corruption by",
                dataset.modalities()[m].name
            )));
        }
        mean.iter_mut().for_each(|a| *a /= count as f64);
        let mut var = vec![0f64; len];
        for &s in samples {
            if let Some(row) = dataset.row(m, s)? {
                for ((a, &v), mu) in var.iter_mut().zip(row.iter()).zip(&mean) {
                    let d = v as f64 - mu;
                    *a += d * d;
                }
            }
        }
        Ok(ModalityStats {
            std: var
                .iter()
                .map(|v| (v / count as f64).sqrt() as f32)
                .collect(),
            min,
            max,
            samples: count,
        })
    }
}

/// One corruption, resolved against a dataset: its modality index, the row shape and
/// the scales.
#[derive(Clone, Debug)]
struct Resolved {
    data_index: usize,
    kind: CorruptionKind,
    level: f64,
    /// (frequency bins, time frames, channels) of a spectrogram row; (1, len, 1) otherwise.
    bands: (usize, usize, usize),
    stats: Option<ModalityStats>,
}

/// Corruptions resolved against a dataset, ready to apply to its batches.
#[derive(Clone, Debug)]
pub struct Corruptor {
    items: Vec<Resolved>,
    seed: u64,
}

impl Corruptor {
    /// Resolves `specs` against `dataset`: known modalities (each at most once), kinds
    /// that fit their shapes; statistics over its training split.
    pub fn new(dataset: &Dataset, specs: &[Corruption], seed: u64) -> Result<Corruptor, DataError> {
        let train = dataset.indices(Split::Train);
        let mut items = Vec::new();
        for c in specs {
            let err = |p: String| DataError::InvalidArgument(format!("--corrupt {c}: {p}"));
            c.kind.check_level(c.level).map_err(err)?;
            let m = dataset.modality_index(&c.modality).ok_or_else(|| {
                let names: Vec<&str> = dataset
                    .modalities()
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect();
                err(format!("the dataset has modalities {}", names.join(", ")))
            })?;
            if items.iter().any(|r: &Resolved| r.data_index == m) {
                return Err(err(format!("{} is corrupted twice", c.modality)));
            }
            let shape = &dataset.modalities()[m].shape;
            let len: usize = shape.iter().product();
            let bands = match c.kind {
                CorruptionKind::TimeMask | CorruptionKind::FreqMask => {
                    if shape.len() < 2 {
                        return Err(err(format!(
                            "{} masks a spectrogram, laid out [.., frequency, time]; {} has shape {shape:?}",
                            c.kind, c.modality
                        )));
                    }
                    let (f, t) = (shape[shape.len() - 2], shape[shape.len() - 1]);
                    (f, t, len / (f * t).max(1))
                }
                _ => (1, len, 1),
            };
            let stats = match c.kind {
                CorruptionKind::Gaussian | CorruptionKind::SaltPepper => {
                    Some(ModalityStats::of(dataset, m, &train)?)
                }
                _ => None,
            };
            items.push(Resolved {
                data_index: m,
                kind: c.kind,
                level: c.level,
                bands,
                stats,
            });
        }
        Ok(Corruptor { items, seed })
    }

    /// The same corruptions at `level` (every one of them) with draws from `seed`; the
    /// statistics are kept (a robustness sweep computes them once).
    pub fn at(&self, level: f64, seed: u64) -> Result<Corruptor, DataError> {
        let mut out = self.clone();
        for r in &mut out.items {
            r.kind
                .check_level(level)
                .map_err(DataError::InvalidArgument)?;
            r.level = level;
        }
        out.seed = seed;
        Ok(out)
    }

    /// Corrupts the rows of `batch` in place.
    pub fn apply(&self, batch: &mut Batch) {
        for r in &self.items {
            if r.level == 0.0 {
                continue;
            }
            let Some(mb) = batch.modalities.get_mut(r.data_index) else {
                continue;
            };
            let len = r.bands.0 * r.bands.1 * r.bands.2;
            if len == 0 {
                continue;
            }
            let base = Rng::derive(self.seed ^ CORRUPT_STREAM, r.data_index as u64).next_u64();
            for (k, &pos) in mb.present.iter().enumerate() {
                let mut rng = Rng::derive(base, batch.samples[pos] as u64);
                corrupt_row(r, &mut mb.data[k * len..(k + 1) * len], &mut rng);
            }
        }
    }
}

fn corrupt_row(r: &Resolved, row: &mut [f32], rng: &mut Rng) {
    let level = r.level;
    match r.kind {
        CorruptionKind::Gaussian => {
            let stats = r.stats.as_ref().expect("gaussian statistics");
            for (v, &sd) in row.iter_mut().zip(&stats.std) {
                *v += (level * sd as f64 * rng.normal()) as f32;
            }
        }
        CorruptionKind::SaltPepper => {
            let stats = r.stats.as_ref().expect("salt-and-pepper statistics");
            for v in row.iter_mut() {
                // Both draws always, so a value's fate does not shift the stream.
                let (u, coin) = (rng.uniform(), rng.uniform());
                if u < level {
                    *v = if coin < 0.5 { stats.min } else { stats.max };
                }
            }
        }
        CorruptionKind::Dropout => {
            for v in row.iter_mut() {
                if rng.uniform() < level {
                    *v = 0.0;
                }
            }
        }
        CorruptionKind::TimeMask | CorruptionKind::FreqMask => {
            let (f, t, channels) = r.bands;
            let time = r.kind == CorruptionKind::TimeMask;
            let extent = if time { t } else { f };
            let width = ((level * extent as f64).round() as usize).min(extent);
            if width == 0 {
                return;
            }
            let start = rng.below(extent - width + 1);
            for c in 0..channels {
                for fi in 0..f {
                    for ti in 0..t {
                        let band = if time { ti } else { fi };
                        if (start..start + width).contains(&band) {
                            row[(c * f + fi) * t + ti] = 0.0;
                        }
                    }
                }
            }
        }
    }
}
