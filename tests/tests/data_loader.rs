//! The mini-batch loader: each sample exactly once per epoch, seeded reshuffles, missing
//! modalities reported in `present`, errors surfaced, clean stop when dropped mid-epoch.

mod data_common;

use std::collections::HashSet;
use std::sync::Arc;

use data_common::*;
use mla_models::data::npy::write_npy;
use mla_models::data::{seeded_subset, DataError, Dataset, Loader, Split};
use proptest::prelude::*;
use serde_json::json;

/// n samples, 4 classes; "img" ([3] rows, every third sample missing), "vec" ([2, 2], all).
fn dataset(n: usize, poison: Option<usize>) -> (TempDir, Arc<Dataset>) {
    let dir = TempDir::new("loader");
    let labels: Vec<i64> = (0..n as i64).map(|i| (i * 7) % 4).collect();
    let split: Vec<u8> = (0..n).map(|i| (i % 5 == 4) as u8).collect();
    let img_index: Vec<i64> = (0..n as i64)
        .map(|i| if i % 3 == 2 { -1 } else { i / 3 * 2 + i % 3 })
        .collect();
    let rows = img_index.iter().max().map_or(0, |&m| m + 1) as usize;
    let img: Vec<f32> = (0..rows * 3).map(|i| i as f32).collect();
    let mut vec: Vec<f32> = (0..n * 4).map(|i| -(i as f32)).collect();
    if let Some(s) = poison {
        vec[s * 4 + 1] = f32::NAN;
    }
    write_npy(dir.join("labels.npy"), &[n], &labels).unwrap();
    write_npy(dir.join("split.npy"), &[n], &split).unwrap();
    write_npy(dir.join("img.npy"), &[rows, 3], &img).unwrap();
    write_npy(dir.join("img_index.npy"), &[n], &img_index).unwrap();
    write_npy(dir.join("vec.npy"), &[n, 2, 2], &vec).unwrap();
    let m = json!({
        "format": "mla-dataset/1", "name": "loader", "num_classes": 4,
        "labels": "labels.npy", "split": "split.npy",
        "modalities": [
            {"name": "img", "data": "img.npy", "index": "img_index.npy"},
            {"name": "vec", "data": "vec.npy"}
        ]
    });
    write_manifest(dir.path(), &m);
    let ds = Arc::new(Dataset::open(dir.path()).unwrap());
    (dir, ds)
}

fn epoch(ds: &Arc<Dataset>, samples: &[usize], bs: usize, seed: Option<u64>, e: u64) -> Vec<usize> {
    let loader = Loader::new(ds.clone(), samples.to_vec(), bs, seed, e).unwrap();
    let nb = loader.num_batches();
    let mut order = Vec::new();
    let mut count = 0;
    for batch in loader {
        let b = batch.unwrap();
        count += 1;
        assert!(!b.samples.is_empty() && b.samples.len() <= bs);
        order.extend_from_slice(&b.samples);
    }
    assert_eq!(count, nb);
    order
}

#[test]
fn batches_hold_the_right_data() {
    let (_dir, ds) = dataset(47, None);
    let train = ds.indices(Split::Train);
    let loader = Loader::new(ds.clone(), train.clone(), 8, Some(3), 0).unwrap();
    assert_eq!(loader.num_batches(), train.len().div_ceil(8));
    let mut seen = Vec::new();
    for (bi, batch) in loader.enumerate() {
        let b = batch.unwrap();
        if bi + 1 < train.len().div_ceil(8) {
            assert_eq!(b.len(), 8);
        } else {
            assert_eq!(b.len(), train.len() - 8 * bi);
        }
        assert_eq!(b.modalities.len(), 2);
        for (pos, &s) in b.samples.iter().enumerate() {
            assert_eq!(b.labels[pos] as usize, ds.label(s));
        }
        for (m, mb) in b.modalities.iter().enumerate() {
            let row_len = [3, 4][m];
            let expect: Vec<usize> = (0..b.len())
                .filter(|&p| ds.row(m, b.samples[p]).unwrap().is_some())
                .collect();
            assert_eq!(mb.present, expect, "modality {m}");
            assert_eq!(mb.data.len(), mb.present.len() * row_len);
            for (k, &p) in mb.present.iter().enumerate() {
                assert_eq!(
                    &mb.data[k * row_len..(k + 1) * row_len],
                    ds.row(m, b.samples[p]).unwrap().unwrap()
                );
            }
        }
        // Every third sample lacks "img": the batch must say so.
        let missing = b.samples.iter().filter(|&&s| s % 3 == 2).count();
        assert_eq!(b.modalities[0].present.len(), b.len() - missing);
        seen.extend(b.samples);
    }
    seen.sort_unstable();
    assert_eq!(seen, train);
}

#[test]
fn shuffling_is_seeded_and_changes_every_epoch() {
    let (_dir, ds) = dataset(200, None);
    let all: Vec<usize> = (0..200).collect();
    let e0 = epoch(&ds, &all, 16, Some(9), 0);
    let e1 = epoch(&ds, &all, 16, Some(9), 1);
    assert_eq!(
        e0,
        epoch(&ds, &all, 16, Some(9), 0),
        "same seed and epoch must give the same order"
    );
    assert_ne!(e0, e1, "epochs must be reshuffled");
    assert_ne!(e0, epoch(&ds, &all, 16, Some(10), 0), "seeds must matter");
    assert_ne!(e0, all, "shuffled order equals the input order");
    // Batch size does not change the order, only how it is cut.
    assert_eq!(e0, epoch(&ds, &all, 7, Some(9), 0));
    // Without shuffling the order is the given one, every epoch.
    let given: Vec<usize> = (0..200).rev().collect();
    assert_eq!(epoch(&ds, &given, 16, None, 0), given);
    assert_eq!(epoch(&ds, &given, 16, None, 5), given);
}

#[test]
fn drop_mid_epoch_stops_the_worker() {
    let (_dir, ds) = dataset(300, None);
    let all: Vec<usize> = (0..300).collect();
    for k in 0..20 {
        let mut loader = Loader::new(ds.clone(), all.clone(), 1, Some(k), 0).unwrap();
        for _ in 0..(k % 4) {
            loader.next().unwrap().unwrap();
        }
        drop(loader); // must return (joins the worker); a hang fails the test by timeout
    }
    // The workers hold clones of the dataset; all of them must be gone now.
    assert_eq!(Arc::strong_count(&ds), 1);
}

#[test]
fn errors_surface_and_end_the_epoch() {
    let (_dir, ds) = dataset(40, Some(13));
    let all: Vec<usize> = (0..40).collect();
    let results: Vec<_> = Loader::new(ds.clone(), all, 5, None, 0).unwrap().collect();
    assert_eq!(
        results.len(),
        3,
        "batches 0 and 1 succeed, batch 2 (samples 10..15) fails, then stop"
    );
    assert!(results[..2].iter().all(Result::is_ok));
    match &results[2] {
        Err(DataError::NonFinite { sample, .. }) => assert_eq!(*sample, 13),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_arguments_rejected() {
    let (_dir, ds) = dataset(10, None);
    assert!(matches!(
        Loader::new(ds.clone(), vec![0, 1], 0, None, 0),
        Err(DataError::InvalidArgument(_))
    ));
    assert!(matches!(
        Loader::new(ds.clone(), vec![0, 10], 4, None, 0),
        Err(DataError::SampleOutOfRange { .. })
    ));
    let empty = Loader::new(ds, vec![], 4, Some(1), 0).unwrap();
    assert_eq!(empty.num_batches(), 0);
    assert_eq!(empty.count(), 0);
}

#[test]
fn seeded_subsets() {
    let pool: Vec<usize> = (0..1000).map(|i| i * 3 + 1).collect();
    let a = seeded_subset(&pool, 100, 5);
    assert_eq!(a.len(), 100);
    assert!(
        a.windows(2).all(|w| w[0] < w[1]),
        "subset must be ascending and distinct"
    );
    let set: HashSet<usize> = pool.iter().copied().collect();
    assert!(a.iter().all(|x| set.contains(x)));
    assert_eq!(a, seeded_subset(&pool, 100, 5));
    assert_ne!(a, seeded_subset(&pool, 100, 6));
    // Not just a prefix: draws span the pool.
    assert!(*a.last().unwrap() > pool[500]);
    assert_eq!(seeded_subset(&pool, 5000, 1), pool);
    assert!(seeded_subset(&pool, 0, 1).is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn every_sample_exactly_once(n in 1usize..120, bs in 1usize..40, seed in any::<u64>(), e in 0u64..5) {
        let (_dir, ds) = dataset(n, None);
        let samples = seeded_subset(&(0..n).collect::<Vec<_>>(), n / 2 + 1, seed);
        let mut order = epoch(&ds, &samples, bs, Some(seed), e);
        prop_assert_eq!(order.len(), samples.len());
        order.sort_unstable();
        prop_assert_eq!(order, samples);
    }
}
