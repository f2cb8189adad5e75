//! Missing modalities and corruptions (issue 16): the seeded mask (a function
//! of seed and sample id only, its observed rate within binomial tolerance,
//! never a sample left empty, the policies), the mask in training (stored,
//! resume-exact, what unimodal trains on), each corruption kind on
//! hand-checkable examples, level 0 reproducing plain evaluation bitwise, and
//! the robustness scores against direct trapezoid sums.

mod data_common;
mod trainer_common;

use mla_cpu::Cpu;
use mla_models::data::loader::make_batch;
use mla_models::data::{
    Corruption, CorruptionKind, Corruptor, Dataset, MissingMask, MissingPolicy, MissingRates,
    ModalityStats, Split,
};
use mla_models::rng::Rng;
use mla_models::robustness::{
    effective_robustness, effective_robustness_sum, parse_levels, relative_robustness,
};
use mla_models::trainer::{
    eval, load_fusion_fit, load_model, run_dir, EvalOptions, MethodKind, MissingTrain, TrainConfig,
    Trainer,
};
use std::sync::Arc;
use trainer_common::{
    history, small_mlp, stopped_and_resumed, synthetic, train_in, Synthetic, TempDir,
};

fn open(spec: &Synthetic, tag: &str) -> (TempDir, Arc<Dataset>) {
    let dir = synthetic(tag, spec);
    let ds = Arc::new(Dataset::open(dir.path()).unwrap());
    (dir, ds)
}

fn rates(s: &str, ds: &Dataset) -> Vec<f64> {
    s.parse::<MissingRates>()
        .unwrap()
        .resolve(ds, false)
        .unwrap()
}

fn big() -> Synthetic {
    Synthetic {
        train: 3000,
        val: 32,
        test: 32,
        ..Synthetic::default()
    }
}

/// |observed - p| within 4.5 binomial standard deviations of n draws.
fn within_binomial(observed: f64, p: f64, n: usize) -> bool {
    (observed - p).abs() <= 4.5 * (p * (1.0 - p) / n as f64).sqrt() + 1e-12
}

#[test]
fn the_mask_is_a_function_of_seed_and_sample_only() {
    let (_d, ds) = open(&big(), "mask-det");
    let train = ds.indices(Split::Train);
    let r = rates("image=0.3,audio=0.4", &ds);
    let a = MissingMask::draw(&ds, &train, &r, 5, MissingPolicy::KeepOne).unwrap();
    assert_eq!(
        a,
        MissingMask::draw(&ds, &train, &r, 5, MissingPolicy::KeepOne).unwrap()
    );
    // Any order of the same samples: the same mask.
    let mut shuffled = train.clone();
    Rng::new(1).shuffle(&mut shuffled);
    assert_eq!(
        a,
        MissingMask::draw(&ds, &shuffled, &r, 5, MissingPolicy::KeepOne).unwrap()
    );
    // A subset's mask is the mask restricted to it.
    let subset: Vec<usize> = train.iter().copied().filter(|s| s % 3 == 0).collect();
    let b = MissingMask::draw(&ds, &subset, &r, 5, MissingPolicy::KeepOne).unwrap();
    for (ma, mb) in a.modalities.iter().zip(&b.modalities) {
        let restricted: Vec<usize> = ma.hidden.iter().copied().filter(|s| s % 3 == 0).collect();
        assert_eq!(restricted, mb.hidden, "{}", ma.name);
    }
    // Another seed: another mask.
    let c = MissingMask::draw(&ds, &train, &r, 6, MissingPolicy::KeepOne).unwrap();
    assert_ne!(a.modalities[0].hidden, c.modalities[0].hidden);
    // A modality's draw does not move when another modality's rate changes.
    let only_image = MissingMask::draw(
        &ds,
        &train,
        &rates("image=0.3", &ds),
        5,
        MissingPolicy::KeepOne,
    )
    .unwrap();
    let both_missing: Vec<usize> = a.modalities[0]
        .hidden
        .iter()
        .copied()
        .chain(a.modalities[1].hidden.iter().copied())
        .collect();
    // Image's hidden set with audio at 0.4 is image's set alone minus the samples
    // keep-one gave image back to (those had both drawn).
    assert!(a.modalities[0]
        .hidden
        .iter()
        .all(|s| only_image.modalities[0].hidden.binary_search(s).is_ok()));
    assert!(!both_missing.is_empty());
}

#[test]
fn observed_rates_match_the_targets_within_binomial_tolerance() {
    let (_d, ds) = open(&big(), "mask-rate");
    let train = ds.indices(Split::Train);
    let n = train.len();
    for (spec, want) in [
        ("image=0.3", [0.3, 0.0]),
        ("audio=0.7", [0.0, 0.7]),
        ("image=0.1", [0.1, 0.0]),
    ] {
        let m =
            MissingMask::draw(&ds, &train, &rates(spec, &ds), 11, MissingPolicy::Strict).unwrap();
        assert_eq!(m.restored, 0, "{spec}: one modality masked never conflicts");
        for (mm, p) in m.modalities.iter().zip(want) {
            assert_eq!(mm.eligible, n);
            assert!(
                within_binomial(mm.observed_rate(), p, n),
                "{spec} {}: observed {} for target {p}",
                mm.name,
                mm.observed_rate()
            );
        }
    }
    // all=0.5 with keep-one: a quarter of the samples draw both and get one back
    // (each modality half the time), so each modality is hidden from 3/8 of them.
    let m = MissingMask::draw(
        &ds,
        &train,
        &rates("all=0.5", &ds),
        11,
        MissingPolicy::KeepOne,
    )
    .unwrap();
    assert!(within_binomial(m.restored as f64 / n as f64, 0.25, n));
    for mm in &m.modalities {
        assert!(
            within_binomial(mm.observed_rate(), 0.375, n),
            "{}: {}",
            mm.name,
            mm.observed_rate()
        );
    }
    // Rate 0: nothing hidden, the dataset unchanged.
    let z =
        MissingMask::draw(&ds, &train, &rates("all=0", &ds), 11, MissingPolicy::Strict).unwrap();
    assert!(z.modalities.iter().all(|m| m.hidden.is_empty()));
    let same = z.apply(&ds).unwrap();
    for s in 0..ds.len() {
        for m in 0..2 {
            assert_eq!(same.has(m, s), ds.has(m, s));
        }
    }
}

#[test]
fn no_sample_is_left_without_a_modality() {
    // Every third sample lacks audio in the dataset itself: hiding image from
    // them would empty them, so keep-one gives image back.
    let spec = Synthetic {
        audio_missing_every: 3,
        ..big()
    };
    let (_d, ds) = open(&spec, "mask-empty");
    let train = ds.indices(Split::Train);
    let lacking_audio = train.iter().filter(|&&s| !ds.has(1, s)).count();
    let m = MissingMask::draw(
        &ds,
        &train,
        &rates("image=0.9,audio=0.9", &ds),
        3,
        MissingPolicy::KeepOne,
    )
    .unwrap();
    let masked = m.apply(&ds).unwrap();
    for &s in &train {
        assert!(masked.has(0, s) || masked.has(1, s), "sample {s} is empty");
        if !ds.has(1, s) {
            assert!(masked.has(0, s), "sample {s} had only image");
        }
    }
    assert_eq!(m.modalities[1].eligible, train.len() - lacking_audio);
    // Strict refuses the same rates, naming the policy and a sample.
    let err = MissingMask::draw(
        &ds,
        &train,
        &rates("image=0.9,audio=0.9", &ds),
        3,
        MissingPolicy::Strict,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("strict") && err.contains("sample"), "{err}");
    // Strict with only image masked still conflicts on the samples lacking audio.
    let err = MissingMask::draw(
        &ds,
        &train,
        &rates("image=0.5", &ds),
        3,
        MissingPolicy::Strict,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no modality"), "{err}");
    // A hand-made mask emptying a sample is refused by the dataset.
    let s = *train.iter().find(|&&s| !ds.has(1, s)).unwrap();
    let err = ds.with_hidden(&[vec![s], vec![]]).unwrap_err().to_string();
    assert!(err.contains(&format!("sample {s}")), "{err}");
    let err = ds
        .with_hidden(&[vec![ds.len()], vec![]])
        .unwrap_err()
        .to_string();
    assert!(err.contains(&ds.len().to_string()), "{err}");
}

#[test]
fn bad_rates_are_clear_errors() {
    let (_d, ds) = open(&Synthetic::default(), "mask-bad");
    for (text, needle) in [
        ("image", "MODALITY=RATE"),
        ("image=x", "not a number"),
        ("image=1.5", "[0, 1]"),
        ("image=-0.1", "[0, 1]"),
        ("image=NaN", "[0, 1]"),
        ("image=0.1,image=0.2", "twice"),
        ("=0.1", "no modality name"),
    ] {
        let err = text.parse::<MissingRates>().unwrap_err();
        assert!(err.contains(needle), "{text}: {err}");
    }
    let r: MissingRates = "touch=0.1".parse().unwrap();
    let err = r.resolve(&ds, false).unwrap_err().to_string();
    assert!(err.contains("image, audio"), "{err}");
    // Training refuses a rate of 1 (a modality never trained); evaluation accepts it.
    let r: MissingRates = "audio=1".parse().unwrap();
    let err = r.resolve(&ds, false).unwrap_err().to_string();
    assert!(err.contains("[0, 1)"), "{err}");
    assert_eq!(r.resolve(&ds, true).unwrap(), vec![0.0, 1.0]);
    // A named modality overrides all, in either order.
    for text in ["all=0.2,audio=0.5", "audio=0.5,all=0.2"] {
        let r: MissingRates = text.parse().unwrap();
        assert_eq!(r.resolve(&ds, false).unwrap(), vec![0.2, 0.5]);
    }
}

fn small_cfg(method: MethodKind) -> TrainConfig {
    TrainConfig {
        missing: Some(MissingTrain {
            rates: "image=0.4".parse().unwrap(),
            policy: MissingPolicy::KeepOne,
            seed: 9,
        }),
        ..small_mlp(method)
    }
}

#[test]
fn training_stores_the_mask_and_resumes_exactly() {
    let (_d, ds) = open(&Synthetic::default(), "mask-train");
    let runs = TempDir::new("mask-train-runs");
    for method in [MethodKind::Mla, MethodKind::Joint] {
        let cfg = small_cfg(method);
        let full_dir = runs.join(&format!("{method}-full"));
        let (full, summary) = train_in(&ds, cfg.clone(), &full_dir);
        let mask = full.missing_mask().unwrap().clone();
        let stored = MissingMask::read(&full_dir.join(run_dir::MASK)).unwrap();
        assert_eq!(stored, mask);
        let report = summary.missing.unwrap();
        assert_eq!(report.modalities[0].hidden, mask.modalities[0].hidden.len());
        assert!(report.modalities[0].hidden > 0);
        assert_eq!(report.samples, ds.indices(Split::Train).len());
        let resumed_dir = runs.join(&format!("{method}-resumed"));
        let (resumed, _) = stopped_and_resumed(&ds, cfg.clone(), 1, &resumed_dir);
        assert_eq!(history(&full), history(&resumed), "{method}");
        assert_eq!(resumed.missing_mask(), Some(&mask));
        // A stored mask that does not belong to the config is refused on resume.
        let refused = |other: &MissingMask, what: &str| -> String {
            std::fs::write(
                resumed_dir.join(run_dir::MASK),
                serde_json::to_string(other).unwrap(),
            )
            .unwrap();
            match Trainer::resume(Cpu, ds.clone(), &resumed_dir, Some(3)) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{method}: a mask of another {what} was accepted"),
            }
        };
        let mut other = stored.clone();
        other.seed += 1;
        let err = refused(&other, "seed");
        assert!(err.contains("seed"), "{err}");
        let mut other = stored.clone();
        other.modalities[0].rate = 0.5;
        let err = refused(&other, "rate");
        assert!(err.contains("rates"), "{err}");
    }
}

#[test]
fn unimodal_trains_only_on_samples_keeping_its_modality() {
    let (_d, ds) = open(&Synthetic::default(), "mask-uni");
    let cfg = TrainConfig {
        modality: Some("image".into()),
        ..small_cfg(MethodKind::Unimodal)
    };
    let t = Trainer::new(Cpu, ds.clone(), cfg).unwrap();
    let hidden = &t.missing_mask().unwrap().modalities[0].hidden;
    let train = ds.indices(Split::Train);
    assert_eq!(t.train_samples().len(), train.len() - hidden.len());
    assert!(t
        .train_samples()
        .iter()
        .all(|s| hidden.binary_search(s).is_err()));
    // Validation and test stay complete.
    assert_eq!(
        t.eval_samples(Split::Validation).len(),
        ds.indices(Split::Validation).len()
    );
}

/// The format fixture: `a` [2, 3] rows (frequency x time) with an index
/// (samples 2 and 5 lack it), `b` [5] vectors; train samples 0, 1, 4.
fn fixture() -> (data_common::TempDir, Dataset) {
    let dir = data_common::TempDir::new("corrupt");
    data_common::write_fixture(dir.path());
    let ds = Dataset::open(dir.path()).unwrap();
    (dir, ds)
}

fn corrupted(ds: &Dataset, spec: &str, seed: u64, samples: &[usize]) -> Vec<Vec<f32>> {
    let c = Corruptor::new(ds, &[spec.parse::<Corruption>().unwrap()], seed).unwrap();
    let mut b = make_batch(ds, samples).unwrap();
    c.apply(&mut b);
    let m = ds.modality_index(spec.split('=').next().unwrap()).unwrap();
    let len = ds.row_len(m).unwrap();
    b.modalities[m]
        .data
        .chunks(len)
        .map(|r| r.to_vec())
        .collect()
}

fn rows(ds: &Dataset, m: usize, samples: &[usize]) -> Vec<Vec<f32>> {
    samples
        .iter()
        .filter_map(|&s| ds.row(m, s).unwrap().map(|r| r.to_vec()))
        .collect()
}

#[test]
fn statistics_match_a_naive_computation_over_the_training_split() {
    let (_d, ds) = fixture();
    let train = ds.indices(Split::Train);
    for m in 0..2 {
        let st = ModalityStats::of(&ds, m, &train).unwrap();
        let rs = rows(&ds, m, &train);
        assert_eq!(st.samples, rs.len());
        for j in 0..rs[0].len() {
            let col: Vec<f64> = rs.iter().map(|r| r[j] as f64).collect();
            let mean = col.iter().sum::<f64>() / col.len() as f64;
            let var = col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / col.len() as f64;
            assert!((st.std[j] as f64 - var.sqrt()).abs() < 1e-6, "m {m} j {j}");
        }
        let all: Vec<f32> = rs.concat();
        assert_eq!(st.min, all.iter().copied().fold(f32::INFINITY, f32::min));
        assert_eq!(
            st.max,
            all.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        );
    }
}

#[test]
fn each_corruption_kind_does_what_it_says() {
    let (_d, ds) = fixture();
    let samples: Vec<usize> = (0..ds.len()).collect();
    let clean_b = rows(&ds, 1, &samples);
    let clean_a = rows(&ds, 0, &samples);
    let st_b = ModalityStats::of(&ds, 1, &ds.indices(Split::Train)).unwrap();
    // Level 0 of every kind: bitwise unchanged.
    for kind in ["gaussian", "saltpepper", "dropout"] {
        assert_eq!(corrupted(&ds, &format!("b={kind}:0"), 1, &samples), clean_b);
    }
    for kind in ["timemask", "freqmask"] {
        assert_eq!(corrupted(&ds, &format!("a={kind}:0"), 1, &samples), clean_a);
    }
    // dropout 1: all zero; saltpepper 1: only the training min and max.
    assert!(corrupted(&ds, "b=dropout:1", 1, &samples)
        .iter()
        .flatten()
        .all(|&v| v == 0.0));
    let sp = corrupted(&ds, "b=saltpepper:1", 1, &samples);
    assert!(sp.iter().flatten().all(|&v| v == st_b.min || v == st_b.max));
    // dropout 0.5: every value either kept exactly or zeroed.
    let d = corrupted(&ds, "b=dropout:0.5", 2, &samples);
    let zeroed = d
        .iter()
        .flatten()
        .zip(clean_b.iter().flatten())
        .filter(|(c, o)| {
            assert!(**c == 0.0 || c == o);
            **c == 0.0 && **o != 0.0
        })
        .count();
    assert!(zeroed > 0 && zeroed < clean_b.concat().len());
    // gaussian: noise scaled per value by the training std.
    let g = corrupted(&ds, "b=gaussian:0.5", 3, &samples);
    for (r, o) in g.iter().zip(&clean_b) {
        for j in 0..r.len() {
            if st_b.std[j] == 0.0 {
                assert_eq!(r[j], o[j]);
            }
        }
    }
    assert_ne!(g, clean_b);
    // timemask on a's [2, 3] rows: level 1/3 zeroes one time frame in both
    // frequency rows and nothing else; freqmask 1/2 one frequency row.
    for r_idx in 0..clean_a.len() {
        let t = &corrupted(&ds, "a=timemask:0.3333", 4, &samples)[r_idx];
        let o = &clean_a[r_idx];
        let zero_cols: Vec<usize> = (0..3)
            .filter(|&ti| t[ti] == 0.0 && t[3 + ti] == 0.0)
            .collect();
        assert_eq!(zero_cols.len(), 1, "row {r_idx}: {t:?}");
        for i in 0..6 {
            if i % 3 != zero_cols[0] {
                assert_eq!(t[i], o[i]);
            }
        }
        let f = &corrupted(&ds, "a=freqmask:0.5", 4, &samples)[r_idx];
        let zero_rows: Vec<usize> = (0..2)
            .filter(|&fi| f[3 * fi..3 * fi + 3].iter().all(|&v| v == 0.0))
            .collect();
        assert_eq!(zero_rows.len(), 1, "row {r_idx}: {f:?}");
        let kept = 1 - zero_rows[0];
        assert_eq!(&f[3 * kept..3 * kept + 3], &o[3 * kept..3 * kept + 3]);
    }
    assert!(corrupted(&ds, "a=timemask:1", 4, &samples)
        .iter()
        .flatten()
        .all(|&v| v == 0.0));
}

#[test]
fn a_sample_is_corrupted_the_same_way_in_any_batch() {
    let (_d, ds) = fixture();
    let together = corrupted(&ds, "b=gaussian:1", 7, &[5, 0, 3, 1]);
    let alone: Vec<Vec<f32>> = [5, 0, 3, 1]
        .iter()
        .flat_map(|&s| corrupted(&ds, "b=gaussian:1", 7, &[s]))
        .collect();
    assert_eq!(together, alone);
    assert_ne!(together, corrupted(&ds, "b=gaussian:1", 8, &[5, 0, 3, 1]));
}

#[test]
fn bad_corruptions_are_clear_errors() {
    let (_d, ds) = fixture();
    for (text, needle) in [
        ("b", "MODALITY=KIND:LEVEL"),
        (
            "b=blur:0.1",
            "gaussian, saltpepper, dropout, timemask, freqmask",
        ),
        ("b=dropout:1.5", "[0, 1]"),
        ("b=gaussian:-1", "standard deviations"),
        ("b=dropout:x", "not a number"),
    ] {
        let err = text.parse::<Corruption>().unwrap_err();
        assert!(err.contains(needle), "{text}: {err}");
    }
    let new = |spec: &str| {
        Corruptor::new(&ds, &[spec.parse().unwrap()], 0)
            .unwrap_err()
            .to_string()
    };
    assert!(new("c=dropout:0.1").contains("a, b"));
    // b is a vector: no time or frequency axis.
    let err = new("b=timemask:0.5");
    assert!(err.contains("spectrogram") && err.contains("[5]"), "{err}");
    let twice: Vec<Corruption> = vec![
        "b=dropout:0.1".parse().unwrap(),
        "b=gaussian:1".parse().unwrap(),
    ];
    let err = Corruptor::new(&ds, &twice, 0).unwrap_err().to_string();
    assert!(err.contains("twice"), "{err}");
    assert_eq!(
        "a=timemask:0.25".parse::<Corruption>().unwrap().kind,
        CorruptionKind::TimeMask
    );
}

#[test]
fn level_zero_and_rate_zero_reproduce_plain_evaluation() {
    let (_d, ds) = open(&Synthetic::default(), "level0");
    let runs = TempDir::new("level0-runs");
    let cfg = TrainConfig {
        missing: None,
        epochs: 1,
        ..small_cfg(MethodKind::Mla)
    };
    let (t, _) = train_in(&ds, cfg, runs.path());
    let ckpt = t.checkpoint().unwrap();
    let (model, layout, cfg) = load_model(&Cpu, &ds, &ckpt).unwrap();
    let test = ds.indices(Split::Test);
    let base = EvalOptions {
        fit: load_fusion_fit(&ckpt, &layout).unwrap(),
        ..EvalOptions::default()
    };
    let plain = eval::evaluate(&model, &cfg, &layout, &ds, &test, &base).unwrap();
    let specs: Vec<Corruption> = vec![
        "audio=gaussian:0".parse().unwrap(),
        "image=dropout:0".parse().unwrap(),
    ];
    let zero = EvalOptions {
        corrupt: Some(Arc::new(Corruptor::new(&ds, &specs, 3).unwrap())),
        ..base.clone()
    };
    let masked = MissingMask::draw(&ds, &test, &rates("all=0", &ds), 3, MissingPolicy::Strict)
        .unwrap()
        .apply(&ds)
        .unwrap();
    let with = eval::evaluate(&model, &cfg, &layout, &Arc::new(masked), &test, &zero).unwrap();
    assert_eq!(plain, with);
    // And a real corruption changes the outcome.
    let strong: Vec<Corruption> = vec!["image=saltpepper:0.9".parse().unwrap()];
    let opts = EvalOptions {
        corrupt: Some(Arc::new(Corruptor::new(&ds, &strong, 3).unwrap())),
        ..base.clone()
    };
    let hurt = eval::evaluate(&model, &cfg, &layout, &ds, &test, &opts).unwrap();
    assert_ne!(plain.modality_accuracy, hurt.modality_accuracy);
}

#[test]
fn robustness_scores_match_direct_trapezoid_sums() {
    // Uneven levels: the trapezoid rule over levels mapped onto [0, 1].
    let levels = [0.0, 0.1, 0.5, 1.0];
    let acc = [0.9, 0.8, 0.5, 0.2];
    let direct = 0.1 * (0.9 + 0.8) / 2.0 + 0.4 * (0.8 + 0.5) / 2.0 + 0.5 * (0.5 + 0.2) / 2.0;
    assert!((relative_robustness(&levels, &acc).unwrap() - direct).abs() < 1e-12);
    // Levels in other units (0..2): the same score once normalised.
    let doubled: Vec<f64> = levels.iter().map(|l| 2.0 * l).collect();
    assert!((relative_robustness(&doubled, &acc).unwrap() - direct).abs() < 1e-12);
    // MultiBench's eleven levels: its sum of (a_i + a_i+1) * 0.1 / 2.
    let eleven: Vec<f64> = (0..=10).map(|i| i as f64 / 10.0).collect();
    let a11: Vec<f64> = (0..=10)
        .map(|i| 0.95 - 0.05 * (i as f64).powf(1.3))
        .collect();
    let mb: f64 = (0..10).map(|i| (a11[i] + a11[i + 1]) * 0.1 / 2.0).sum();
    assert!((relative_robustness(&eleven, &a11).unwrap() - mb).abs() < 1e-12);
    // Effective: the gap to the reference shifted to agree at the first level.
    let reference = [0.8, 0.6, 0.4, 0.1];
    let gap: Vec<f64> = acc
        .iter()
        .zip(&reference)
        .map(|(a, r)| a - (r + (0.9 - 0.8)))
        .collect();
    let direct_e = 0.1 * (gap[0] + gap[1]) / 2.0
        + 0.4 * (gap[1] + gap[2]) / 2.0
        + 0.5 * (gap[2] + gap[3]) / 2.0;
    assert!((effective_robustness(&levels, &acc, &reference).unwrap() - direct_e).abs() < 1e-12);
    let sum: f64 = gap.iter().sum();
    assert!((effective_robustness_sum(&levels, &acc, &reference).unwrap() - sum).abs() < 1e-12);
    assert_eq!(effective_robustness(&levels, &acc, &acc).unwrap(), 0.0);
    // Bad curves.
    assert!(relative_robustness(&[0.0], &[0.5]).is_err());
    assert!(relative_robustness(&[0.0, 0.0], &[0.5, 0.4]).is_err());
    assert!(relative_robustness(&[0.0, 1.0], &[0.5]).is_err());
    assert!(relative_robustness(&[0.0, 1.0], &[0.5, f64::NAN]).is_err());
}

#[test]
fn levels_parse_from_ranges_and_lists() {
    let l = parse_levels("0:1:0.1").unwrap();
    assert_eq!(l.len(), 11);
    assert_eq!(l[3], 0.3);
    assert_eq!(l[10], 1.0);
    assert_eq!(parse_levels("0,0.5,1").unwrap(), vec![0.0, 0.5, 1.0]);
    assert_eq!(parse_levels("0:3:1").unwrap(), vec![0.0, 1.0, 2.0, 3.0]);
    for bad in ["1:0:0.1", "0:1:0", "0:1", "0,0.5,0.5", "a,b", "0:1:-1", ""] {
        assert!(parse_levels(bad).is_err(), "{bad}");
    }
}

#[test]
fn every_method_trains_and_resumes_exactly_under_a_mask() {
    let (_d, ds) = open(&Synthetic::default(), "mask-all-methods");
    let runs = TempDir::new("mask-all-methods-runs");
    for &method in MethodKind::ALL {
        let cfg = TrainConfig {
            modality: (method == MethodKind::Unimodal).then(|| "audio".into()),
            missing: Some(MissingTrain {
                rates: "all=0.3".parse().unwrap(),
                policy: MissingPolicy::KeepOne,
                seed: 2,
            }),
            ..small_cfg(method)
        };
        let full_dir = runs.join(&format!("{method}-full"));
        let (full, summary) = train_in(&ds, cfg.clone(), &full_dir);
        assert!(summary.test.fused_accuracy.is_finite(), "{method}");
        let m = summary.missing.as_ref().unwrap();
        assert!(m.restored > 0, "{method}: all=0.3 empties some samples");
        assert!(m.modalities.iter().all(|x| x.hidden > 0), "{method}");
        let (resumed, _) =
            stopped_and_resumed(&ds, cfg, 1, &runs.join(&format!("{method}-resumed")));
        assert_eq!(history(&full), history(&resumed), "{method}");
    }
}
