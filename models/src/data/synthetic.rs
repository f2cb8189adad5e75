//! A synthetic dataset of any modality shapes (`mla prepare synthetic`):
//! for timing steps at shapes no prepared dataset has (`mla bench` at the
//! CREMA-D shapes: audio `[1, 257, 188]`, a video frame `[3, 224, 224]`),
//! and for smoke tests. Each modality's rows are a class pattern plus
//! Gaussian noise, so the task is learnable and every modality informative
//! (its `signal` sets how much); a few distinct rows per class are shared
//! by many samples through the index file, which keeps large shapes small
//! on disk.

use std::path::PathBuf;

use serde_json::json;

use crate::data::dataset::{Split, FORMAT};
use crate::data::error::DataError;
use crate::data::npy::write_npy;
use crate::data::output::{check_output_free, Staged};
use crate::rng::Rng;

/// Largest data file one modality may have (the rows are built in memory).
pub const MAX_MODALITY_BYTES: u64 = 8 << 30;

#[derive(Clone, Debug)]
pub struct SyntheticOptions {
    pub out: PathBuf,
    /// Name and row shape of each modality, in training order.
    pub modalities: Vec<(String, Vec<usize>)>,
    pub classes: usize,
    /// Samples in all; 80% train, 10% validation, the rest test.
    pub samples: usize,
    /// Distinct rows per class and modality.
    pub rows_per_class: usize,
    /// Amplitude of the class pattern against unit-variance noise.
    pub signal: f64,
    pub seed: u64,
}

#[derive(Clone, Debug)]
pub struct SyntheticReport {
    pub out: PathBuf,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
    /// Bytes of each modality's data file.
    pub bytes: Vec<u64>,
}

const ROWS_STREAM: u64 = 0x5359_4e54_4845_5431; // "SYNTHET1"

/// Parses `NAME=D1xD2x...` (e.g. `audio=1x257x188`).
pub fn parse_modality(spec: &str) -> Result<(String, Vec<usize>), DataError> {
    let bad = |why: &str| {
        DataError::InvalidArgument(format!(
            "modality {spec:?}: {why}; expected NAME=D1xD2x... such as audio=1x257x188"
        ))
    };
    let (name, dims) = spec.split_once('=').ok_or_else(|| bad("no '='"))?;
    let dims = dims
        .split('x')
        .map(|d| d.trim().parse::<usize>().ok().filter(|&d| d > 0))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("each dimension must be a whole number >= 1"))?;
    Ok((name.to_string(), dims))
}

fn check(opts: &SyntheticOptions) -> Result<Vec<u64>, DataError> {
    let arg = |m: String| Err(DataError::InvalidArgument(m));
    if opts.modalities.is_empty() {
        return arg("at least one modality (--modality NAME=DIMS)".into());
    }
    for (i, (name, _)) in opts.modalities.iter().enumerate() {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return arg(format!(
                "modality name {name:?}: use ASCII letters, digits, '_' and '-'"
            ));
        }
        if opts.modalities[..i].iter().any(|(n, _)| n == name) {
            return arg(format!("modality {name} given twice"));
        }
    }
    if opts.classes < 2 {
        return arg(format!(
            "--classes must be at least 2, got {}",
            opts.classes
        ));
    }
    if opts.rows_per_class == 0 {
        return arg("--rows-per-class must be at least 1".into());
    }
    if opts.samples < 10 {
        return arg(format!(
            "--samples must be at least 10 (each split needs a sample), got {}",
            opts.samples
        ));
    }
    if !(opts.signal.is_finite() && opts.signal >= 0.0) {
        return arg(format!(
            "--signal must be a finite number >= 0, got {}",
            opts.signal
        ));
    }
    let rows = (opts.classes as u64).checked_mul(opts.rows_per_class as u64);
    opts.modalities
        .iter()
        .map(|(name, dims)| {
            dims.iter()
                .try_fold(4u64, |a, &d| a.checked_mul(d as u64))
                .and_then(|b| b.checked_mul(rows?))
                .filter(|&b| b <= MAX_MODALITY_BYTES)
                .ok_or_else(|| {
                    DataError::InvalidArgument(format!(
                        "modality {name}: {} classes x {} rows of {dims:?} floats exceed {} GiB",
                        opts.classes,
                        opts.rows_per_class,
                        MAX_MODALITY_BYTES >> 30
                    ))
                })
        })
        .collect()
}

/// The split of sample `i` of `n`: the first 80% train, the next 10%
/// validation, the rest test.
fn split_of(i: usize, n: usize) -> Split {
    match i * 10 / n {
        0..=7 => Split::Train,
        8 => Split::Validation,
        _ => Split::Test,
    }
}

pub fn prepare_synthetic(opts: &SyntheticOptions) -> Result<SyntheticReport, DataError> {
    let bytes = check(opts)?;
    check_output_free(&opts.out)?;
    let (n, k, per) = (opts.samples, opts.classes, opts.rows_per_class);
    let staged = Staged::new(&opts.out)?;
    // Sample i has class i mod k and uses row `class + k * j` of every
    // modality, j cycling through the class's rows.
    let labels: Vec<i64> = (0..n).map(|i| (i % k) as i64).collect();
    let index: Vec<i64> = (0..n)
        .map(|i| (i % k + k * ((i / k) % per)) as i64)
        .collect();
    let splits: Vec<u8> = (0..n).map(|i| split_of(i, n).code()).collect();
    let mut entries = Vec::new();
    for (m, (name, dims)) in opts.modalities.iter().enumerate() {
        let d: usize = dims.iter().product();
        let rows = k * per;
        let mut data = Vec::new();
        crate::data::files::try_reserve(&mut data, rows * d, &opts.out, "synthetic rows")?;
        let mut rng = Rng::derive(opts.seed, ROWS_STREAM.wrapping_add(m as u64));
        for r in 0..rows {
            let c = (r % k) as f64;
            // A class pattern: a sinusoid over the row's elements whose
            // frequency and phase depend on the class and the modality.
            let freq = std::f64::consts::TAU * (c + 1.0) / d as f64;
            let phase = c + m as f64;
            data.extend(
                (0..d)
                    .map(|j| (opts.signal * (freq * j as f64 + phase).sin() + rng.normal()) as f32),
            );
        }
        let mut shape = vec![rows];
        shape.extend_from_slice(dims);
        write_npy(staged.file(&format!("{name}.npy")), &shape, &data)?;
        write_npy(staged.file(&format!("{name}_index.npy")), &[n], &index)?;
        entries.push(json!({
            "name": name,
            "data": format!("{name}.npy"),
            "index": format!("{name}_index.npy"),
        }));
    }
    write_npy(staged.file("labels.npy"), &[n], &labels)?;
    write_npy(staged.file("split.npy"), &[n], &splits)?;
    let manifest = json!({
        "format": FORMAT,
        "name": "synthetic",
        "num_classes": k,
        "labels": "labels.npy",
        "split": "split.npy",
        "modalities": entries,
        "recipe": {
            "generator": format!("mla-models {} prepare_synthetic", env!("CARGO_PKG_VERSION")),
            "seed": opts.seed,
            "samples": n,
            "rows_per_class": per,
            "signal": opts.signal,
            "rows": "signal * sin(2 pi (class + 1) j / d + class + modality) + N(0, 1) over element j of d",
            "labels": "sample i: class i mod classes, row class + classes * ((i / classes) mod rows_per_class)",
            "splits": "first 80% train, next 10% validation, the rest test",
        },
    });
    let out = staged.commit(&manifest)?;
    let count = |s: Split| (0..n).filter(|&i| split_of(i, n) == s).count();
    Ok(SyntheticReport {
        out,
        train: count(Split::Train),
        validation: count(Split::Validation),
        test: count(Split::Test),
        bytes,
    })
}
