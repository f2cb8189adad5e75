//! The AV-MNIST recipe end to end: read, featurise, standardise, degrade, pair, write.
//! Output goes to a sibling temporary directory that is renamed into place only once
//! `dataset.json` (written last) and every file are on disk.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde_json::{json, Value};

use super::audio::{self, LogMel};
use super::idx::read_idx;
use super::pca::Pca;
use super::wav::read_wav;
use crate::data::dataset::{Split, FORMAT};
use crate::data::error::DataError;
use crate::data::npy::write_npy;
use crate::data::output::{check_output_free, Staged};
use crate::rng::Rng;

pub const TRAIN_SPEAKERS: [&str; 4] = ["george", "jackson", "lucas", "nicolas"];
pub const VALIDATION_SPEAKERS: [&str; 1] = ["yweweler"];
pub const TEST_SPEAKERS: [&str; 1] = ["theo"];
/// The last this many MNIST training images form the validation split.
pub const VALIDATION_IMAGES: usize = 5000;
pub const IMAGE_SIDE: usize = 28;
pub const IMAGE_DIM: usize = IMAGE_SIDE * IMAGE_SIDE;
pub const NUM_CLASSES: usize = 10;

const PAIRING_STREAM: u64 = 0x5041_4952_494e_4731; // "PAIRING1"
const NOISE_STREAM: u64 = 0x4e4f_4953_4531_3131; // "NOISE111"

#[derive(Clone, Debug, PartialEq)]
pub struct AvmnistOptions {
    /// Folder with `mnist/` and `fsdd/`.
    pub raw: PathBuf,
    /// Output dataset directory (must not exist, or be empty).
    pub out: PathBuf,
    pub seed: u64,
    /// Sigma of the Gaussian pixel noise (0 = none).
    pub image_noise: f64,
    /// Remove the leading principal components holding this fraction of the variance.
    pub image_pca_drop: Option<f64>,
}

impl AvmnistOptions {
    /// The default recipe: seed 0, no image degradation.
    pub fn new(raw: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        AvmnistOptions {
            raw: raw.into(),
            out: out.into(),
            seed: 0,
            image_noise: 0.0,
            image_pca_drop: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PrepareReport {
    pub out: PathBuf,
    pub samples: usize,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
    pub audio_rows: usize,
    pub audio_mean: f64,
    pub audio_std: f64,
    /// Principal components removed from the images (None without --image-pca-drop).
    pub pca_components_removed: Option<usize>,
    pub pca_variance_removed: Option<f64>,
    pub seconds: f64,
}

/// One FSDD recording, identified by its file name `{digit}_{speaker}_{index}.wav`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recording {
    pub digit: u8,
    pub speaker: String,
    pub index: u32,
    pub path: PathBuf,
}

/// MNIST: train images then test images (official order), `IMAGE_DIM` bytes each.
pub struct Mnist {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub n_train: usize,
    pub n_test: usize,
}

fn raw_err(path: &Path, problem: impl Into<String>) -> DataError {
    DataError::RawSource {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// `name.gz` if present, else the uncompressed `name`.
fn mnist_file(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let plain = dir.join(name);
    if plain.is_file() {
        return Ok(plain);
    }
    Err(raw_err(
        dir,
        format!("neither {name}.gz nor {name} found (MNIST is expected here)"),
    ))
}

fn read_images(path: &Path) -> Result<Vec<u8>, DataError> {
    let a = read_idx(path)?;
    if a.dims.len() != 3 || a.dims[1] != IMAGE_SIDE || a.dims[2] != IMAGE_SIDE {
        return Err(DataError::Idx {
            path: path.to_path_buf(),
            problem: format!("dimensions {:?}; expected [N, 28, 28] images", a.dims),
        });
    }
    Ok(a.data)
}

fn read_labels(path: &Path, n_images: usize) -> Result<Vec<u8>, DataError> {
    let a = read_idx(path)?;
    if a.dims != [n_images] {
        return Err(DataError::Idx {
            path: path.to_path_buf(),
            problem: format!(
                "dimensions {:?}; expected [{n_images}] labels, one per image",
                a.dims
            ),
        });
    }
    if let Some((i, &y)) = a
        .data
        .iter()
        .enumerate()
        .find(|(_, &y)| y as usize >= NUM_CLASSES)
    {
        return Err(DataError::Idx {
            path: path.to_path_buf(),
            problem: format!("label {y} of item {i} is not a digit"),
        });
    }
    Ok(a.data)
}

/// Reads the four MNIST files of `dir` (gzip or not).
pub fn read_mnist(dir: &Path) -> Result<Mnist, DataError> {
    let paths = [
        mnist_file(dir, "train-images-idx3-ubyte")?,
        mnist_file(dir, "train-labels-idx1-ubyte")?,
        mnist_file(dir, "t10k-images-idx3-ubyte")?,
        mnist_file(dir, "t10k-labels-idx1-ubyte")?,
    ];
    let (train, test) = rayon::join(|| read_images(&paths[0]), || read_images(&paths[2]));
    let (train, test) = (train?, test?);
    let (n_train, n_test) = (train.len() / IMAGE_DIM, test.len() / IMAGE_DIM);
    if n_train <= VALIDATION_IMAGES {
        return Err(raw_err(
            &paths[0],
            format!("{n_train} training images; more than {VALIDATION_IMAGES} are needed"),
        ));
    }
    let mut labels = read_labels(&paths[1], n_train)?;
    labels.extend(read_labels(&paths[3], n_test)?);
    let mut images = train;
    images.extend_from_slice(&test);
    Ok(Mnist {
        images,
        labels,
        n_train,
        n_test,
    })
}

fn parse_recording_name(name: &str) -> Option<(u8, String, u32)> {
    let stem = name.strip_suffix(".wav")?;
    let mut parts = stem.split('_');
    let (digit, speaker, index) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || digit.len() != 1 || speaker.is_empty() || index.is_empty() {
        return None;
    }
    if !index.bytes().all(|b| b.is_ascii_digit())
        || !speaker.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return None;
    }
    Some((
        digit.parse().ok()?,
        speaker.to_string(),
        index.parse().ok()?,
    ))
}

/// The recordings of an FSDD folder, ordered by (digit, speaker, index as an integer).
pub fn list_fsdd(dir: &Path) -> Result<Vec<Recording>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, "list", e))?;
    let mut recs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, "list", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".wav") {
            continue;
        }
        let (digit, speaker, index) = parse_recording_name(&name).ok_or_else(|| {
            raw_err(
                &entry.path(),
                "recording name does not follow {digit}_{speaker}_{index}.wav",
            )
        })?;
        recs.push(Recording {
            digit,
            speaker,
            index,
            path: entry.path(),
        });
    }
    // The path breaks ties ("1_x_01.wav" vs "1_x_1.wav") so the order never depends on
    // the directory listing.
    recs.sort_by(|a, b| {
        (a.digit, &a.speaker, a.index, &a.path).cmp(&(b.digit, &b.speaker, b.index, &b.path))
    });
    if recs.is_empty() {
        return Err(raw_err(
            dir,
            "no .wav recordings found (FSDD is expected here)",
        ));
    }
    Ok(recs)
}

/// Log-mel features (before standardisation), `[R, N_MELS * N_FRAMES]` row-major.
pub fn audio_features(recs: &[Recording]) -> Result<Vec<f64>, DataError> {
    let lm = LogMel::new();
    let rows: Vec<Vec<f64>> = recs
        .par_iter()
        .map(|r| {
            let wav = read_wav(&r.path)?;
            if wav.sample_rate != audio::SAMPLE_RATE {
                return Err(DataError::Wav {
                    path: r.path.clone(),
                    problem: format!(
                        "sample rate {} Hz; the recipe needs {} Hz",
                        wav.sample_rate,
                        audio::SAMPLE_RATE
                    ),
                });
            }
            Ok(lm.compute(&wav.samples))
        })
        .collect::<Result<_, _>>()?;
    Ok(rows.concat())
}

/// Scalar mean and population standard deviation over every value of the rows whose
/// speaker is in `speakers`.
pub fn standardisation_stats(
    features: &[f64],
    recs: &[Recording],
    speakers: &[&str],
) -> Option<(f64, f64)> {
    let row_len = features.len() / recs.len().max(1);
    let rows: Vec<&[f64]> = recs
        .iter()
        .zip(features.chunks_exact(row_len))
        .filter(|(r, _)| speakers.contains(&r.speaker.as_str()))
        .map(|(_, f)| f)
        .collect();
    let count = (rows.len() * row_len) as f64;
    if rows.is_empty() {
        return None;
    }
    let mean = rows.iter().map(|r| r.iter().sum::<f64>()).sum::<f64>() / count;
    let var = rows
        .iter()
        .map(|r| r.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>())
        .sum::<f64>()
        / count;
    Some((mean, var.sqrt()))
}

pub fn split_speakers(split: Split) -> &'static [&'static str] {
    match split {
        Split::Train => &TRAIN_SPEAKERS,
        Split::Validation => &VALIDATION_SPEAKERS,
        Split::Test => &TEST_SPEAKERS,
    }
}

/// For each sample, a recording of its digit drawn uniformly (seeded) from its split's
/// speakers; returns audio row indices.
pub fn pair_audio(
    labels: &[u8],
    splits: &[Split],
    recs: &[Recording],
    seed: u64,
) -> Result<Vec<i64>, DataError> {
    // pools[split][digit] = rows, in row order.
    let mut pools = vec![vec![Vec::new(); NUM_CLASSES]; 3];
    for (row, r) in recs.iter().enumerate() {
        for s in Split::ALL {
            if split_speakers(s).contains(&r.speaker.as_str()) && (r.digit as usize) < NUM_CLASSES {
                pools[s.code() as usize][r.digit as usize].push(row as i64);
            }
        }
    }
    let mut rng = Rng::derive(seed, PAIRING_STREAM);
    labels
        .iter()
        .zip(splits)
        .map(|(&y, &s)| {
            let pool = &pools[s.code() as usize][y as usize];
            if pool.is_empty() {
                return Err(DataError::Prepare(format!(
                    "no recording of digit {y} from the {s} speakers {:?} in the FSDD folder",
                    split_speakers(s)
                )));
            }
            Ok(pool[rng.below(pool.len())])
        })
        .collect()
}

/// x <- clip(x + N(0, sigma), 0, 1); each row draws from its own stream (derived from the
/// seed and the row number), so the result is independent of the thread count.
pub fn add_image_noise(images: &mut [f32], dim: usize, sigma: f64, seed: u64) {
    if sigma == 0.0 {
        return;
    }
    let base = Rng::derive(seed, NOISE_STREAM).next_u64();
    images.par_chunks_mut(dim).enumerate().for_each(|(i, row)| {
        let mut rng = Rng::derive(base, i as u64);
        // Box-Muller gives two independent normals per pair of uniforms; use both.
        for pair in row.chunks_mut(2) {
            let r = (-2.0 * (1.0 - rng.uniform()).ln()).sqrt();
            let (s, c) = (std::f64::consts::TAU * rng.uniform()).sin_cos();
            for (x, z) in pair.iter_mut().zip([r * c, r * s]) {
                *x = (*x as f64 + sigma * z).clamp(0.0, 1.0) as f32;
            }
        }
    });
}

/// Deletes the temporary output directory unless the preparation succeeded.
fn check_options(opts: &AvmnistOptions) -> Result<(), DataError> {
    if !(opts.image_noise.is_finite() && opts.image_noise >= 0.0) {
        return Err(DataError::InvalidArgument(format!(
            "image noise sigma must be a finite number >= 0, got {}",
            opts.image_noise
        )));
    }
    if let Some(f) = opts.image_pca_drop {
        if !(f > 0.0 && f <= 1.0) {
            return Err(DataError::InvalidArgument(format!(
                "PCA drop fraction must be in (0, 1], got {f}"
            )));
        }
    }
    for sub in ["mnist", "fsdd"] {
        let p = opts.raw.join(sub);
        if !p.is_dir() {
            return Err(raw_err(
                &opts.raw,
                format!(
                    "no {sub}/ folder here; expected the raw AV-MNIST sources: mnist/ with the four MNIST IDX \
                     files (train/t10k images and labels, optionally .gz) and fsdd/ with the Free Spoken Digit \
                     Dataset recordings (github.com/Jakobovski/free-spoken-digit-dataset, recordings/*.wav)"
                ),
            ));
        }
    }
    if opts.out.file_name().is_none() {
        return Err(DataError::InvalidArgument(format!(
            "output path {} has no directory name",
            opts.out.display()
        )));
    }
    check_output_free(&opts.out)
}

/// Builds AV-MNIST from `opts.raw` into `opts.out`. `progress` receives one line per stage.
pub fn prepare_avmnist(
    opts: &AvmnistOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<PrepareReport, DataError> {
    let start = Instant::now();
    check_options(opts)?;

    progress("reading MNIST images and labels");
    let mnist = read_mnist(&opts.raw.join("mnist"))?;
    let n = mnist.n_train + mnist.n_test;
    let n_fit = mnist.n_train - VALIDATION_IMAGES;
    let splits: Vec<Split> = (0..n)
        .map(|i| match i {
            _ if i < n_fit => Split::Train,
            _ if i < mnist.n_train => Split::Validation,
            _ => Split::Test,
        })
        .collect();

    let fsdd = opts.raw.join("fsdd");
    let recs = list_fsdd(&fsdd)?;
    progress(&format!(
        "computing log-mel spectrograms of {} recordings",
        recs.len()
    ));
    let features = audio_features(&recs)?;
    let (mean, std) =
        standardisation_stats(&features, &recs, &TRAIN_SPEAKERS).ok_or_else(|| {
            raw_err(
                &fsdd,
                format!("no recordings of the training speakers {TRAIN_SPEAKERS:?}"),
            )
        })?;
    if !(std > 0.0 && std.is_finite()) {
        return Err(DataError::Prepare(format!(
            "log-mel standard deviation over the training speakers is {std}"
        )));
    }
    let audio_rows: Vec<f32> = features
        .par_iter()
        .map(|&x| ((x - mean) / std) as f32)
        .collect();
    drop(features);

    progress("pairing images with recordings");
    let audio_index = pair_audio(&mnist.labels, &splits, &recs, opts.seed)?;

    progress("scaling images");
    let mut images: Vec<f32> = mnist.images.par_iter().map(|&p| p as f32 / 255.0).collect();
    if opts.image_noise > 0.0 {
        progress(&format!(
            "adding Gaussian pixel noise (sigma {})",
            opts.image_noise
        ));
        add_image_noise(&mut images, IMAGE_DIM, opts.image_noise, opts.seed);
    }
    let mut pca_record = Value::Null;
    let mut pca_removed = None;
    if let Some(frac) = opts.image_pca_drop {
        progress(&format!("fitting PCA on {n_fit} training images"));
        let pca = Pca::fit(&mla_cpu::Cpu, &images[..n_fit * IMAGE_DIM], IMAGE_DIM)?;
        let k = pca.components_for_fraction(frac);
        let removed = pca.variance_fraction(k);
        progress(&format!(
            "removing the top {k} principal components ({:.2}% of the variance)",
            100.0 * removed
        ));
        pca.remove_components(&mla_cpu::Cpu, &mut images, k)?;
        pca_removed = Some((k, removed));
        pca_record = json!({
            "fit_on": "train split images (after noise)",
            "covariance": "population",
            "drop_fraction": frac,
            "components_removed": k,
            "variance_fraction_removed": removed,
            "trace": pca.trace,
            "top_eigenvalues": pca.eigenvalues[..pca.eigenvalues.len().min(k.max(8))].to_vec(),
        });
    }
    if let Some(i) = images.iter().position(|x| !x.is_finite()) {
        return Err(DataError::Prepare(format!(
            "non-finite image value at sample {}",
            i / IMAGE_DIM
        )));
    }
    if let Some(i) = audio_rows.iter().position(|x| !x.is_finite()) {
        return Err(DataError::Prepare(format!(
            "non-finite audio value in {}",
            recs[i / (audio_rows.len() / recs.len())].path.display()
        )));
    }

    let count = |s: Split| splits.iter().filter(|&&x| x == s).count();
    let (n_train, n_val, n_test) = (
        count(Split::Train),
        count(Split::Validation),
        count(Split::Test),
    );
    let recipe = json!({
        "generator": format!("mla-models {} prepare_avmnist", env!("CARGO_PKG_VERSION")),
        "raw": opts.raw.display().to_string(),
        "seed": opts.seed,
        "image_noise": opts.image_noise,
        "image_pca_drop": opts.image_pca_drop,
        "image": {
            "source": "MNIST (train then t10k, official order)",
            "scale": "pixels / 255",
            "noise": "x <- clip(x + N(0, image_noise), 0, 1), before PCA",
            "pca": pca_record,
        },
        "audio": {
            "source": "FSDD",
            "rows": recs.len(),
            "row_order": "(digit, speaker, index as integer)",
            "clip_samples": audio::CLIP_SAMPLES,
            "sample_rate": audio::SAMPLE_RATE,
            "scale": "int16 / 32768",
            "n_fft": audio::N_FFT,
            "hop": audio::HOP,
            "window": "periodic hann",
            "center": false,
            "power": 2,
            "n_mels": audio::N_MELS,
            "fmin": audio::FMIN,
            "fmax": audio::FMAX,
            "mel_scale": "htk, triangular, unnormalised",
            "log": "ln(mel + 1e-6)",
            "standardise_mean": mean,
            "standardise_std": std,
            "standardise_over": "all values of the training speakers' recordings (population std)",
        },
        "speakers": {"train": TRAIN_SPEAKERS, "validation": VALIDATION_SPEAKERS, "test": TEST_SPEAKERS},
        "pairing": "each sample draws a recording of its digit uniformly from its split's speakers (seeded)",
        "splits": {"train": n_train, "validation": n_val, "test": n_test,
                   "rule": "MNIST test -> test; last 5,000 MNIST training images -> validation"},
    });
    let manifest = json!({
        "format": FORMAT,
        "name": "avmnist",
        "num_classes": NUM_CLASSES,
        "class_names": (0..NUM_CLASSES).map(|c| c.to_string()).collect::<Vec<_>>(),
        "labels": "labels.npy",
        "split": "split.npy",
        "modalities": [
            {"name": "image", "data": "image.npy"},
            {"name": "audio", "data": "audio.npy", "index": "audio_index.npy"},
        ],
        "recipe": recipe,
    });

    // Staged next to the destination and renamed into place: a crash leaves only a *.tmp-* folder.
    let staged = Staged::new(&opts.out)?;
    progress(&format!("writing {}", opts.out.display()));
    let labels: Vec<i64> = mnist.labels.iter().map(|&y| y as i64).collect();
    let split_codes: Vec<u8> = splits.iter().map(|s| s.code()).collect();
    write_npy(
        staged.file("image.npy"),
        &[n, 1, IMAGE_SIDE, IMAGE_SIDE],
        &images,
    )?;
    write_npy(
        staged.file("audio.npy"),
        &[recs.len(), 1, audio::N_MELS, audio::N_FRAMES],
        &audio_rows,
    )?;
    write_npy(staged.file("audio_index.npy"), &[n], &audio_index)?;
    write_npy(staged.file("labels.npy"), &[n], &labels)?;
    write_npy(staged.file("split.npy"), &[n], &split_codes)?;
    let out = staged.commit(&manifest)?;

    Ok(PrepareReport {
        out,
        samples: n,
        train: n_train,
        validation: n_val,
        test: n_test,
        audio_rows: recs.len(),
        audio_mean: mean,
        audio_std: std,
        pca_components_removed: pca_removed.map(|p| p.0),
        pca_variance_removed: pca_removed.map(|p| p.1),
        seconds: start.elapsed().as_secs_f64(),
    })
}
