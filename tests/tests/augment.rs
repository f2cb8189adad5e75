//! `--augment`: crops and flips against a naive reference (zero-pad then
//! crop; reversed lines), seeded per (seed, epoch, sample) and the same in
//! any batch, new each epoch, parsing, and training with it resuming exactly.

mod trainer_common;

use mla_models::data::loader::make_batch;
use mla_models::data::{AugmentSpec, Augmentation, Augmenter, Dataset, Split};
use mla_models::trainer::{HgmMode, MethodKind, TrainConfig};
use std::sync::Arc;
use trainer_common::{history, stopped_and_resumed, synthetic, train_in, Synthetic, TempDir};

fn rows(ds: &Dataset, spec: &str, seed: u64, epoch: u64, samples: &[usize]) -> Vec<Vec<f32>> {
    let a = Augmenter::new(ds, &spec.parse().unwrap(), seed).unwrap();
    let mut b = make_batch(ds, samples).unwrap();
    a.apply(&mut b, epoch);
    b.modalities[0]
        .data
        .chunks(64)
        .map(|r| r.to_vec())
        .collect()
}

/// The image [1, 8, 8] zero-padded by p and cropped back at (p + dy, p + dx).
fn padded_crop(img: &[f32], p: i64, dy: i64, dx: i64) -> Vec<f32> {
    let n = 8 + 2 * p;
    let mut pad = vec![0f32; (n * n) as usize];
    for y in 0..8 {
        for x in 0..8 {
            pad[((y + p) * n + x + p) as usize] = img[(y * 8 + x) as usize];
        }
    }
    let mut out = vec![0f32; 64];
    for y in 0..8 {
        for x in 0..8 {
            out[(y * 8 + x) as usize] = pad[((y + p + dy) * n + x + p + dx) as usize];
        }
    }
    out
}

#[test]
fn crops_and_flips_match_naive_references() {
    let data = synthetic("augment", &Synthetic::default());
    let ds = Dataset::open(data.path()).unwrap();
    let samples: Vec<usize> = (0..40).collect();
    let clean: Vec<Vec<f32>> = samples
        .iter()
        .map(|&s| ds.row(0, s).unwrap().unwrap().to_vec())
        .collect();
    // Every crop is one of the (2p + 1)^2 padded crops; over 40 samples
    // several offsets occur.
    let cropped = rows(&ds, "image=crop:2", 3, 1, &samples);
    let mut offsets = std::collections::BTreeSet::new();
    for (c, o) in cropped.iter().zip(&clean) {
        let found: Vec<(i64, i64)> = (-2..=2)
            .flat_map(|dy| (-2..=2).map(move |dx| (dy, dx)))
            .filter(|&(dy, dx)| padded_crop(o, 2, dy, dx) == *c)
            .collect();
        assert!(!found.is_empty(), "not a padded crop");
        offsets.insert(found[0]);
    }
    assert!(offsets.len() > 5, "{offsets:?}");
    // Flips: each row is itself or its mirror, both occur.
    let flipped = rows(&ds, "image=flip", 3, 1, &samples);
    let mirror =
        |r: &[f32]| -> Vec<f32> { r.chunks(8).flat_map(|l| l.iter().rev().copied()).collect() };
    let n_flipped = flipped
        .iter()
        .zip(&clean)
        .filter(|(f, o)| {
            assert!(*f == *o || **f == mirror(o));
            **f == mirror(o) && *f != *o
        })
        .count();
    assert!(n_flipped > 5 && n_flipped < 35, "{n_flipped}");
    // Crop then flip: the same draws as crop and flip alone, so each row is
    // its crop, mirrored exactly when the flip-only row was.
    let both = rows(&ds, "image=crop:2+flip", 3, 1, &samples);
    for i in 0..samples.len() {
        let want = if flipped[i] != clean[i] {
            mirror(&cropped[i])
        } else {
            cropped[i].clone()
        };
        assert_eq!(both[i], want, "sample {i}");
    }
    // Same sample, any batch: the same result; another epoch: another one.
    let alone: Vec<Vec<f32>> = [7usize, 3, 30]
        .iter()
        .flat_map(|&s| rows(&ds, "image=crop:2+flip", 3, 1, &[s]))
        .collect();
    assert_eq!(alone, rows(&ds, "image=crop:2+flip", 3, 1, &[7, 3, 30]));
    assert_ne!(cropped, rows(&ds, "image=crop:2", 3, 2, &samples));
}

#[test]
fn bad_specs_are_clear_errors() {
    for (bad, needle) in [
        ("image", "no '='"),
        ("image=blur", "unknown or repeated"),
        ("image=flip+flip", "unknown or repeated"),
        ("image=crop:0", "1..=64"),
        ("image=crop:x", "whole number"),
        ("image=flip,image=crop:2", "twice"),
    ] {
        let err = bad.parse::<AugmentSpec>().unwrap_err();
        assert!(err.contains(needle), "{bad}: {err}");
    }
    let spec: AugmentSpec = "image=crop:4+flip".parse().unwrap();
    assert_eq!(
        spec.0[0].1,
        Augmentation {
            crop: 4,
            flip: true
        }
    );
    assert_eq!(spec.to_string(), "image=crop:4+flip");
    let data = synthetic("augment-bad", &Synthetic::default());
    let ds = Dataset::open(data.path()).unwrap();
    let err = Augmenter::new(&ds, &"touch=flip".parse().unwrap(), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("image, audio"), "{err}");
}

#[test]
fn training_with_augmentation_resumes_exactly() {
    let data = synthetic("augment-train", &Synthetic::default());
    let ds = Arc::new(Dataset::open(data.path()).unwrap());
    let runs = TempDir::new("augment-train-runs");
    let cfg = TrainConfig {
        method: MethodKind::Mla,
        encoder: "mlp".into(),
        feature_size: 16,
        epochs: 2,
        batch_size: 32,
        hgm: HgmMode::Owm,
        augment: "image=crop:1+flip".parse().unwrap(),
        ..TrainConfig::default()
    };
    let (full, _) = train_in(&ds, cfg.clone(), &runs.join("full"));
    let (resumed, _) = stopped_and_resumed(&ds, cfg.clone(), 1, &runs.join("resumed"));
    assert_eq!(history(&full), history(&resumed));
    let (plain, _) = train_in(
        &ds,
        TrainConfig {
            augment: AugmentSpec::default(),
            ..cfg
        },
        &runs.join("plain"),
    );
    assert_ne!(history(&full)[0].train_loss, history(&plain)[0].train_loss);
    assert!(!ds.indices(Split::Train).is_empty());
}
