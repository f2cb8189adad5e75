//! AV-MNIST prepared from the real raw files (skipped, with a message, when they are absent):
//! shapes, splits, speaker-held-out pairing, label agreement, the audio statistics and the
//! PCA against golden/, byte-identical reruns. The default preparation is made once and
//! shared; its directory is deleted as soon as it is opened (the maps stay valid).

mod data_common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use data_common::*;
use mla_models::data::avmnist::audio::LogMel;
use mla_models::data::avmnist::idx::read_idx;
use mla_models::data::avmnist::pca::Pca;
use mla_models::data::avmnist::prepare::read_mnist;
use mla_models::data::avmnist::wav::read_wav;
use mla_models::data::npy::read_npy_f64;
use mla_models::data::{
    prepare_avmnist, AvmnistOptions, DType, Dataset, NpyArray, PrepareReport, Split,
};
use serde_json::Value;

const FILES: [&str; 6] = [
    "dataset.json",
    "image.npy",
    "audio.npy",
    "audio_index.npy",
    "labels.npy",
    "split.npy",
];
const SPEAKERS: [&str; 6] = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"];

struct Prepared {
    raw: PathBuf,
    ds: Dataset,
    audio: NpyArray,
    audio_index: Vec<i64>,
    hashes: Vec<(u64, u64)>,
    report: PrepareReport,
}

fn prepare_into(raw: &Path, out: &Path, pca: Option<f64>) -> PrepareReport {
    let mut o = AvmnistOptions::new(raw, out);
    o.image_pca_drop = pca;
    prepare_avmnist(&o, &mut |_| {}).unwrap()
}

fn prepared() -> Option<&'static Prepared> {
    static P: OnceLock<Option<Prepared>> = OnceLock::new();
    P.get_or_init(|| {
        let raw = avmnist_raw()?;
        let tmp = TempDir::new("avmnist");
        let out = tmp.join("avmnist");
        let report = prepare_into(&raw, &out, None);
        let hashes = FILES.iter().map(|f| file_hash(&out.join(f))).collect();
        let ds = Dataset::open(&out).unwrap();
        let audio = NpyArray::open(out.join("audio.npy"), DType::F32).unwrap();
        let audio_index = NpyArray::open(out.join("audio_index.npy"), DType::I64)
            .unwrap()
            .as_slice::<i64>()
            .unwrap()
            .to_vec();
        drop(tmp);
        Some(Prepared {
            raw,
            ds,
            audio,
            audio_index,
            hashes,
            report,
        })
    })
    .as_ref()
}

/// (digit, speaker, index) of every FSDD file, sorted as the recipe orders audio rows;
/// parsed here independently of the library.
fn fsdd_rows(raw: &Path) -> Vec<(usize, String, u32)> {
    let mut rows: Vec<(usize, String, u32)> = std::fs::read_dir(raw.join("fsdd"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".wav")?.to_string();
            let parts: Vec<&str> = stem.split('_').collect();
            Some((
                parts[0].parse().unwrap(),
                parts[1].to_string(),
                parts[2].parse().unwrap(),
            ))
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn shapes_and_split_counts() {
    let Some(p) = prepared() else { return };
    let ds = &p.ds;
    assert_eq!(ds.len(), 70_000);
    assert_eq!(ds.num_classes(), 10);
    assert_eq!(ds.modalities()[0].name, "image");
    assert_eq!(ds.modalities()[0].shape, vec![1, 28, 28]);
    assert_eq!(ds.modalities()[1].name, "audio");
    assert_eq!(ds.modalities()[1].shape, vec![1, 40, 63]);
    assert_eq!(p.audio.shape(), &[3000, 1, 40, 63]);
    assert_eq!(ds.indices(Split::Train), (0..55_000).collect::<Vec<_>>());
    assert_eq!(
        ds.indices(Split::Validation),
        (55_000..60_000).collect::<Vec<_>>()
    );
    assert_eq!(
        ds.indices(Split::Test),
        (60_000..70_000).collect::<Vec<_>>()
    );
    assert_eq!(
        (
            p.report.train,
            p.report.validation,
            p.report.test,
            p.report.audio_rows
        ),
        (55_000, 5_000, 10_000, 3_000)
    );
    // Every sample has both modalities.
    assert!(p.audio_index.iter().all(|&r| (0..3000).contains(&r)));
}

#[test]
fn speakers_are_held_out_and_labels_agree() {
    let Some(p) = prepared() else { return };
    let rows = fsdd_rows(&p.raw);
    assert_eq!(rows.len(), 3000);
    let mnist_labels: Vec<u8> = ["train", "t10k"]
        .iter()
        .flat_map(|n| {
            read_idx(&p.raw.join(format!("mnist/{n}-labels-idx1-ubyte.gz")))
                .unwrap()
                .data
        })
        .collect();
    let mut seen = [[0usize; 6]; 3];
    for s in 0..p.ds.len() {
        let (digit, speaker, _) = &rows[p.audio_index[s] as usize];
        let label = p.ds.label(s);
        assert_eq!(
            label, mnist_labels[s] as usize,
            "sample {s}: label differs from MNIST"
        );
        assert_eq!(
            *digit, label,
            "sample {s}: image label {label}, audio digit {digit}"
        );
        let split = p.ds.split_of(s);
        let allowed: &[&str] = match split {
            Split::Train => &["george", "jackson", "lucas", "nicolas"],
            Split::Validation => &["yweweler"],
            Split::Test => &["theo"],
        };
        assert!(
            allowed.contains(&speaker.as_str()),
            "sample {s} ({split}) paired with {speaker}"
        );
        seen[split.code() as usize][SPEAKERS.iter().position(|x| x == speaker).unwrap()] += 1;
    }
    // All four training speakers are drawn, roughly equally (uniform over recordings).
    for (k, &c) in seen[0][..4].iter().enumerate() {
        assert!(
            (12_500..15_000).contains(&c),
            "training speaker {} drawn {c} times",
            SPEAKERS[k]
        );
    }
}

#[test]
fn audio_rows_are_standardised_log_mels() {
    let Some(p) = prepared() else { return };
    let stats: Value =
        serde_json::from_slice(&std::fs::read(p.raw.join("golden/stats.json")).unwrap()).unwrap();
    let (gm, gs) = (
        stats["mean"].as_f64().unwrap(),
        stats["std"].as_f64().unwrap(),
    );
    assert!(
        (p.report.audio_mean - gm).abs() < 1e-9 * gm.abs(),
        "mean {} vs golden {gm}",
        p.report.audio_mean
    );
    assert!(
        (p.report.audio_std - gs).abs() < 1e-9 * gs,
        "std {} vs golden {gs}",
        p.report.audio_std
    );
    let recipe = &p.ds.manifest()["recipe"]["audio"];
    // (serde_json's default float parsing may differ from the written value in the last bit.)
    assert!(
        (recipe["standardise_mean"].as_f64().unwrap() - p.report.audio_mean).abs()
            < 1e-12 * gm.abs()
    );
    assert!((recipe["standardise_std"].as_f64().unwrap() - p.report.audio_std).abs() < 1e-12 * gs);

    // The stored (f32) rows of the golden files, de-standardised, match the reference.
    let rows = fsdd_rows(&p.raw);
    let audio = p.audio.as_slice::<f32>().unwrap();
    let per = 40 * 63;
    let (_, golden) = read_npy_f64(p.raw.join("golden/logmel.npy")).unwrap();
    let files = std::fs::read_to_string(p.raw.join("golden/files.txt")).unwrap();
    for (i, name) in files.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let parts: Vec<&str> = name.trim().trim_end_matches(".wav").split('_').collect();
        let key = (
            parts[0].parse().unwrap(),
            parts[1].to_string(),
            parts[2].parse().unwrap(),
        );
        let r = rows.iter().position(|x| *x == key).unwrap();
        let row = &audio[r * per..(r + 1) * per];
        let worst = row
            .iter()
            .zip(&golden[i * per..(i + 1) * per])
            .map(|(&x, g)| (x as f64 * gs + gm - g).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-4, "{name}: max |difference| {worst}");
    }

    // Over the training speakers' rows the standardised values have mean 0 and std 1.
    let train_rows: Vec<usize> = (0..3000)
        .filter(|&r| ["george", "jackson", "lucas", "nicolas"].contains(&rows[r].1.as_str()))
        .collect();
    assert_eq!(train_rows.len(), 2000);
    let vals = || {
        train_rows
            .iter()
            .flat_map(|&r| audio[r * per..(r + 1) * per].iter().map(|&x| x as f64))
    };
    let n = (2000 * per) as f64;
    let mean = vals().sum::<f64>() / n;
    let sd = (vals().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
    assert!(
        mean.abs() < 1e-5 && (sd - 1.0).abs() < 1e-5,
        "mean {mean} std {sd}"
    );
    // Audio row order: a recording's row holds its own features.
    let lm = LogMel::new();
    for r in [0, 1234, 2999] {
        let (d, s, k) = &rows[r];
        let wav = read_wav(&p.raw.join(format!("fsdd/{d}_{s}_{k}.wav"))).unwrap();
        let f = lm.compute(&wav.samples);
        let worst = f
            .iter()
            .zip(&audio[r * per..(r + 1) * per])
            .map(|(a, &b)| ((a - gm) / gs - b as f64).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "row {r}: {worst}");
    }
}

#[test]
fn images_are_mnist_pixels_over_255() {
    let Some(p) = prepared() else { return };
    let train = read_idx(&p.raw.join("mnist/train-images-idx3-ubyte.gz")).unwrap();
    let test = read_idx(&p.raw.join("mnist/t10k-images-idx3-ubyte.gz")).unwrap();
    for s in [0, 1, 54_999, 55_000, 59_999, 60_000, 69_999] {
        let px = if s < 60_000 {
            &train.data[s * 784..(s + 1) * 784]
        } else {
            &test.data[(s - 60_000) * 784..(s - 59_999) * 784]
        };
        let expect: Vec<f32> = px.iter().map(|&v| v as f32 / 255.0).collect();
        assert_eq!(
            p.ds.row(0, s).unwrap().unwrap(),
            expect.as_slice(),
            "sample {s}"
        );
    }
}

#[test]
fn same_options_give_byte_identical_files() {
    // Prepare first, so this overlaps with the shared preparation.
    let Some(raw) = avmnist_raw() else { return };
    let tmp = TempDir::new("avmnist-again");
    prepare_into(&raw, &tmp.join("again"), None);
    let p = prepared().unwrap();
    for (f, h) in FILES.iter().zip(&p.hashes) {
        assert_eq!(
            &file_hash(&tmp.join("again").join(f)),
            h,
            "{f} differs between two runs with the same options"
        );
    }
}

#[test]
fn pca_matches_golden() {
    // The PCA step alone on the real train images (the removal itself is checked end to
    // end on synthetic data in data_avmnist_synth.rs).
    let Some(raw) = avmnist_raw() else { return };
    let golden: Value =
        serde_json::from_slice(&std::fs::read(raw.join("golden/pca.json")).unwrap()).unwrap();
    let mnist = read_mnist(&raw.join("mnist")).unwrap();
    let train: Vec<f32> = mnist.images[..55_000 * 784]
        .iter()
        .map(|&p| p as f32 / 255.0)
        .collect();
    let pca = Pca::fit(&mla_cpu::Cpu, &train, 784).unwrap();
    let trace = golden["trace"].as_f64().unwrap();
    assert!(
        (pca.trace - trace).abs() < 1e-6 * trace,
        "trace {} vs golden {trace}",
        pca.trace
    );
    for (i, g) in golden["top_eigenvalues"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let g = g.as_f64().unwrap();
        assert!(
            (pca.eigenvalues[i] - g).abs() < 1e-6 * g,
            "eigenvalue {i}: {} vs golden {g}",
            pca.eigenvalues[i]
        );
    }
    let k = pca.components_for_fraction(golden["drop_fraction"].as_f64().unwrap());
    assert_eq!(k as u64, golden["components_removed"].as_u64().unwrap());
    let fraction = golden["variance_fraction_removed"].as_f64().unwrap();
    assert!((pca.variance_fraction(k) - fraction).abs() < 1e-6);
    // The eigenvalues sum to the trace, and k is the smallest count reaching the fraction.
    assert!((pca.eigenvalues.iter().sum::<f64>() - pca.trace).abs() < 1e-9 * pca.trace);
    assert!(pca.variance_fraction(k - 1) < 0.75 && pca.variance_fraction(k) >= 0.75);
}
