//! AV-MNIST preparation end to end on a small synthetic raw folder (same layout as the real
//! one): every option, byte-identical reruns, the atomic output, and clear input errors.

mod data_common;

use std::path::{Path, PathBuf};

use data_common::*;
use mla_models::data::avmnist::prepare::{add_image_noise, IMAGE_DIM};
use mla_models::data::{prepare_avmnist, AvmnistOptions, DataError, Dataset, Split};
use mla_models::rng::Rng;

const N_TRAIN: usize = 5040; // the last 5,000 are validation: 40 train images
const N_TEST: usize = 30;
const SPEAKERS: [&str; 6] = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"];
const PER_SPEAKER_DIGIT: usize = 2;

/// Writes mnist/ (images gzip, labels plain) and fsdd/ into a new temp dir.
fn raw_folder() -> TempDir {
    let dir = TempDir::new("synthraw");
    let mnist = dir.join("mnist");
    std::fs::create_dir(&mnist).unwrap();
    let mut rng = Rng::new(77);
    for (name, n) in [("train", N_TRAIN), ("t10k", N_TEST)] {
        let labels: Vec<u8> = (0..n).map(|_| rng.below(10) as u8).collect();
        // Each image is a digit-dependent pattern plus noise, so PCA has structure to find.
        let images: Vec<u8> = labels
            .iter()
            .flat_map(|&y| {
                let phase = rng.uniform();
                (0..IMAGE_DIM)
                    .map(|p| {
                        let base =
                            ((p % 28) as f64 * 0.2 + y as f64 + phase * 6.0).sin() * 100.0 + 120.0;
                        (base + rng.normal() * 20.0).clamp(0.0, 255.0) as u8
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        std::fs::write(
            mnist.join(format!("{name}-images-idx3-ubyte.gz")),
            gzip(&idx_bytes(&[n, 28, 28], &images)),
        )
        .unwrap();
        std::fs::write(
            mnist.join(format!("{name}-labels-idx1-ubyte")),
            idx_bytes(&[n], &labels),
        )
        .unwrap();
    }
    let fsdd = dir.join("fsdd");
    std::fs::create_dir(&fsdd).unwrap();
    for d in 0..10 {
        for s in SPEAKERS {
            for i in 0..PER_SPEAKER_DIGIT {
                let len = 500 + rng.below(9000);
                let f = 200.0 + 90.0 * d as f64 + 10.0 * i as f64;
                let samples: Vec<i16> = (0..len)
                    .map(|t| {
                        ((t as f64 * f / 8000.0 * std::f64::consts::TAU).sin() * 8000.0
                            + rng.normal() * 300.0) as i16
                    })
                    .collect();
                std::fs::write(
                    fsdd.join(format!("{d}_{s}_{i}.wav")),
                    wav_bytes(8000, &samples),
                )
                .unwrap();
            }
        }
    }
    dir
}

fn opts(raw: &Path, out: PathBuf) -> AvmnistOptions {
    AvmnistOptions::new(raw, out)
}

fn prepare(o: &AvmnistOptions) -> Result<mla_models::data::PrepareReport, DataError> {
    let mut lines = Vec::new();
    let r = prepare_avmnist(o, &mut |m: &str| lines.push(m.to_string()));
    if r.is_ok() {
        assert!(
            lines.iter().any(|l| l.contains("writing")),
            "progress: {lines:?}"
        );
    }
    r
}

const FILES: [&str; 6] = [
    "dataset.json",
    "image.npy",
    "audio.npy",
    "audio_index.npy",
    "labels.npy",
    "split.npy",
];

#[test]
fn every_option_is_reproducible_and_recorded() {
    let raw = raw_folder();
    let out = TempDir::new("synthout");
    let mut o = opts(raw.path(), out.join("a"));
    o.seed = 3;
    o.image_noise = 0.1;
    o.image_pca_drop = Some(0.5);
    let r = prepare(&o).unwrap();
    assert_eq!(
        (r.samples, r.train, r.validation, r.test),
        (N_TRAIN + N_TEST, 40, 5000, N_TEST)
    );
    let k = r.pca_components_removed.unwrap();
    assert!(k >= 1 && r.pca_variance_removed.unwrap() >= 0.5);
    o.out = out.join("b");
    prepare(&o).unwrap();
    for f in FILES {
        assert_eq!(
            std::fs::read(out.join("a").join(f)).unwrap(),
            std::fs::read(out.join("b").join(f)).unwrap(),
            "{f} differs between runs with the same options"
        );
    }
    // The manifest records every option and derived value.
    let ds = Dataset::open(out.join("a")).unwrap();
    let rec = &ds.manifest()["recipe"];
    assert_eq!(rec["seed"], 3);
    assert_eq!(rec["image_noise"], 0.1);
    assert_eq!(rec["image_pca_drop"], 0.5);
    assert_eq!(rec["image"]["pca"]["components_removed"], k);
    let close = |v: &serde_json::Value, x: f64| (v.as_f64().unwrap() - x).abs() <= 1e-12 * x.abs();
    assert!(close(&rec["audio"]["standardise_mean"], r.audio_mean));
    assert!(close(&rec["audio"]["standardise_std"], r.audio_std));
    // No temporary folders left beside the output.
    let names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn structure_of_the_default_recipe() {
    let raw = raw_folder();
    let out = TempDir::new("synthdef");
    let r = prepare(&opts(raw.path(), out.join("d"))).unwrap();
    assert_eq!(r.pca_components_removed, None);
    let ds = Dataset::open(out.join("d")).unwrap();
    assert_eq!(ds.name(), "avmnist");
    assert_eq!(ds.num_classes(), 10);
    let names: Vec<&str> = ds.modalities().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["image", "audio"]);
    assert_eq!(ds.modalities()[0].shape, vec![1, 28, 28]);
    assert_eq!(ds.modalities()[1].shape, vec![1, 40, 63]);
    assert_eq!(ds.indices(Split::Train), (0..40).collect::<Vec<_>>());
    assert_eq!(
        ds.indices(Split::Validation),
        (40..N_TRAIN).collect::<Vec<_>>()
    );
    assert_eq!(
        ds.indices(Split::Test),
        (N_TRAIN..N_TRAIN + N_TEST).collect::<Vec<_>>()
    );
    // Without noise or PCA an image is its pixels / 255; it matches the raw file.
    let raw_imgs =
        mla_models::data::avmnist::idx::read_idx(&raw.join("mnist/train-images-idx3-ubyte.gz"))
            .unwrap();
    for s in [0, 39, 40, N_TRAIN - 1] {
        let row = ds.row(0, s).unwrap().unwrap();
        let expect: Vec<f32> = raw_imgs.data[s * IMAGE_DIM..(s + 1) * IMAGE_DIM]
            .iter()
            .map(|&p| p as f32 / 255.0)
            .collect();
        assert_eq!(row, expect.as_slice());
    }
    // Audio rows follow (digit, speaker, index); each sample's recording has its digit.
    let per_digit = SPEAKERS.len() * PER_SPEAKER_DIGIT;
    let index = mla_models::data::NpyArray::open(
        out.join("d/audio_index.npy"),
        mla_models::data::DType::I64,
    )
    .unwrap();
    let index = index.as_slice::<i64>().unwrap();
    for (s, &row) in index.iter().enumerate() {
        let row = row as usize;
        assert_eq!(row / per_digit, ds.label(s), "sample {s}");
        let speaker = SPEAKERS[row % per_digit / PER_SPEAKER_DIGIT];
        let allowed: &[&str] = match ds.split_of(s) {
            Split::Train => &["george", "jackson", "lucas", "nicolas"],
            Split::Validation => &["yweweler"],
            Split::Test => &["theo"],
        };
        assert!(allowed.contains(&speaker), "sample {s}: {speaker}");
    }
}

#[test]
fn pca_drop_removes_the_leading_variance() {
    let raw = raw_folder();
    let out = TempDir::new("synthpca");
    let clean = Dataset::open({
        prepare(&opts(raw.path(), out.join("clean"))).unwrap();
        out.join("clean")
    })
    .unwrap();
    let mut o = opts(raw.path(), out.join("pca"));
    o.image_pca_drop = Some(0.6);
    let r = prepare(&o).unwrap();
    let pca = Dataset::open(out.join("pca")).unwrap();
    let train = clean.indices(Split::Train);
    let moments = |ds: &Dataset| {
        let rows: Vec<Vec<f64>> = train
            .iter()
            .map(|&s| {
                ds.row(0, s)
                    .unwrap()
                    .unwrap()
                    .iter()
                    .map(|&x| x as f64)
                    .collect()
            })
            .collect();
        let mean: Vec<f64> = (0..IMAGE_DIM)
            .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / rows.len() as f64)
            .collect();
        let var: f64 = rows
            .iter()
            .map(|r| {
                r.iter()
                    .zip(&mean)
                    .map(|(x, m)| (x - m) * (x - m))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / rows.len() as f64;
        (mean, var)
    };
    let (m0, v0) = moments(&clean);
    let (m1, v1) = moments(&pca);
    // Removing components around the train mean keeps that mean ...
    assert!(m0.iter().zip(&m1).all(|(a, b)| (a - b).abs() < 1e-5));
    // ... and leaves exactly the variance the remaining components hold.
    let kept = 1.0 - r.pca_variance_removed.unwrap();
    assert!(
        (v1 / v0 - kept).abs() < 1e-5,
        "kept {} of the variance, recipe says {kept}",
        v1 / v0
    );
    let trace = pca.manifest()["recipe"]["image"]["pca"]["trace"]
        .as_f64()
        .unwrap();
    assert!((trace - v0).abs() < 1e-6 * v0, "trace {trace} vs {v0}");
}

#[test]
fn noise_is_clipped_seeded_and_has_the_right_scale() {
    let mut a = vec![0.5f32; IMAGE_DIM * 50];
    let mut b = a.clone();
    add_image_noise(&mut a, IMAGE_DIM, 0.1, 1);
    add_image_noise(&mut b, IMAGE_DIM, 0.1, 1);
    assert_eq!(a, b);
    let mut c = vec![0.5f32; IMAGE_DIM * 50];
    add_image_noise(&mut c, IMAGE_DIM, 0.1, 2);
    assert_ne!(a, c, "the seed must matter");
    let n = a.len() as f64;
    let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let sd = (a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!(
        (mean - 0.5).abs() < 0.005 && (sd - 0.1).abs() < 0.005,
        "mean {mean} sd {sd}"
    );
    let mut c = [0.0f32, 1.0].repeat(IMAGE_DIM * 10);
    add_image_noise(&mut c, IMAGE_DIM, 0.5, 2);
    assert!(c.iter().all(|&x| (0.0..=1.0).contains(&x)));
    assert!(c.iter().any(|&x| x > 0.0 && x < 1.0));
}

#[test]
fn output_is_never_clobbered_nor_left_half_written() {
    let raw = raw_folder();
    let out = TempDir::new("synthatomic");
    // A non-empty destination is refused before any work and left alone.
    std::fs::create_dir(out.join("busy")).unwrap();
    std::fs::write(out.join("busy/keep.txt"), b"mine").unwrap();
    let err = prepare(&opts(raw.path(), out.join("busy"))).unwrap_err();
    assert!(matches!(err, DataError::OutputExists { .. }), "{err}");
    assert_eq!(std::fs::read(out.join("busy/keep.txt")).unwrap(), b"mine");
    // An empty one is filled.
    std::fs::create_dir(out.join("empty")).unwrap();
    prepare(&opts(raw.path(), out.join("empty"))).unwrap();
    Dataset::open(out.join("empty")).unwrap();
    // A bad recording fails the run: no output and no temporary folder remain.
    std::fs::write(raw.join("fsdd/4_theo_1.wav"), b"RIFF\0\0\0\0WAVEjunk").unwrap();
    let err = prepare(&opts(raw.path(), out.join("failed"))).unwrap_err();
    assert!(err.to_string().contains("4_theo_1.wav"), "{err}");
    let mut names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["busy", "empty"]);
}

#[test]
fn bad_inputs_and_options_give_clear_errors() {
    let raw = raw_folder();
    let out = TempDir::new("synthbad");
    for (noise, drop) in [
        (-0.1, None),
        (f64::NAN, None),
        (0.0, Some(0.0)),
        (0.0, Some(1.5)),
        (0.0, Some(f64::NAN)),
    ] {
        let mut o = opts(raw.path(), out.join("x"));
        o.image_noise = noise;
        o.image_pca_drop = drop;
        assert!(
            matches!(prepare(&o), Err(DataError::InvalidArgument(_))),
            "{noise} {drop:?}"
        );
    }
    let err = prepare(&opts(&raw.join("nowhere"), out.join("x"))).unwrap_err();
    assert!(
        err.to_string().contains("nowhere") && err.to_string().contains("mnist"),
        "{err}"
    );
    std::fs::remove_file(raw.join("mnist/t10k-labels-idx1-ubyte")).unwrap();
    let err = prepare(&opts(raw.path(), out.join("x"))).unwrap_err();
    assert!(err.to_string().contains("t10k-labels-idx1-ubyte"), "{err}");
    // Labels that do not match the image count.
    std::fs::write(
        raw.join("mnist/t10k-labels-idx1-ubyte"),
        idx_bytes(&[N_TEST - 1], &[1; N_TEST - 1]),
    )
    .unwrap();
    let err = prepare(&opts(raw.path(), out.join("x"))).unwrap_err();
    assert!(
        matches!(err, DataError::Idx { .. }) && err.to_string().contains("t10k-labels"),
        "{err}"
    );
    // A wrong sample rate is named.
    std::fs::write(
        raw.join("mnist/t10k-labels-idx1-ubyte"),
        idx_bytes(&[N_TEST], &[1; N_TEST]),
    )
    .unwrap();
    std::fs::write(raw.join("fsdd/2_lucas_0.wav"), wav_bytes(16000, &[0; 100])).unwrap();
    let err = prepare(&opts(raw.path(), out.join("x"))).unwrap_err();
    assert!(
        err.to_string().contains("2_lucas_0.wav") && err.to_string().contains("16000"),
        "{err}"
    );
    assert!(!out.join("x").exists());
}
