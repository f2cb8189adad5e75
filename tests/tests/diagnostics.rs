//! Diagnostics of every run (issue 10): macro-F1 and Shapley modality
//! contributions in the evaluation metrics, checked on small trained models
//! against direct computations: BalanceBenchmark's definition of `v(S)`
//! (inputs of the removed modalities replaced by zeros, a full forward per
//! coalition), a null player (a concat head slice of zeros), and two
//! identical modalities.

mod trainer_common;

use mla_core::{Tape, Tensor};
use mla_cpu::Cpu;
use mla_models::data::loader::make_batch;
use mla_models::data::{Dataset, Split};
use mla_models::fusion::{Fusion, FusionFit, FusionRule};
use mla_models::metrics::argmax;
use mla_models::model::{Model, HEAD_WEIGHT};
use mla_models::shapley::{Removal, ShapleyValues};
use mla_models::trainer::{
    build_model, eval, EvalOptions, MethodKind, ModelLayout, Silent, Summary, TrainConfig, Trainer,
};
use std::path::Path;
use std::sync::Arc;
use trainer_common::{synthetic, Synthetic, TempDir};

fn cfg(method: MethodKind) -> TrainConfig {
    TrainConfig {
        method,
        epochs: 2,
        batch_size: 32,
        eval_batch_size: 64,
        lr: 0.02,
        ..TrainConfig::default()
    }
}

fn open(dir: &Path) -> Arc<Dataset> {
    Arc::new(Dataset::open(dir).unwrap())
}

/// A trained model of `method` on `ds`, as a fresh model with its layout,
/// the run's summary and its validation fusion fit (MLA).
fn trained(
    ds: &Arc<Dataset>,
    c: &TrainConfig,
) -> (Model<Cpu>, ModelLayout, Summary, Option<FusionFit>) {
    let mut t = Trainer::new(Cpu, ds.clone(), c.clone()).unwrap();
    let summary = t.run(&mut Silent).unwrap();
    let (mut model, layout) = build_model(&Cpu, ds, c).unwrap();
    model.set_params(t.model().params().clone()).unwrap();
    (model, layout, summary, t.fusion_fit().cloned())
}

fn values(
    model: &Model<Cpu>,
    c: &TrainConfig,
    layout: &ModelLayout,
    ds: &Arc<Dataset>,
    removal: Removal,
    fit: Option<&FusionFit>,
) -> ShapleyValues {
    let samples = ds.indices(Split::Test);
    let out = eval::collect(model, c, layout, ds, &samples, &EvalOptions::default()).unwrap();
    out.shapley_values(removal, c.fusion, fit).unwrap()
}

/// `v(S)` by BalanceBenchmark's definition: the test split run through the
/// model once per coalition with the removed modalities' inputs set to
/// zero, then fused (`fusion`) or the joint head. Batches as in evaluation.
fn zeroed_input_values(
    model: &Model<Cpu>,
    layout: &ModelLayout,
    ds: &Arc<Dataset>,
    batch: usize,
    fusion: Option<&Fusion>,
) -> Vec<f64> {
    let samples = ds.indices(Split::Test);
    let names: Vec<&str> = layout.modalities.iter().map(String::as_str).collect();
    let m_count = names.len();
    (0..1usize << m_count)
        .map(|mask| {
            let mut correct = 0usize;
            for chunk in samples.chunks(batch) {
                let b = make_batch(ds, chunk).unwrap();
                let tape = Tape::no_grad(&Cpu);
                let p = model.track(&tape, |_| false);
                let (mut feats, mut logits) = (Vec::new(), Vec::new());
                for (mi, name) in names.iter().enumerate() {
                    let mb = &b.modalities[layout.data_index[mi]];
                    assert_eq!(mb.present.len(), chunk.len(), "fixture has every modality");
                    let mut data = mb.data.clone();
                    if mask & (1 << mi) == 0 {
                        data.iter_mut().for_each(|v| *v = 0.0);
                    }
                    let mut dims = vec![chunk.len()];
                    dims.extend_from_slice(&layout.shapes[mi]);
                    let x = tape.constant(Tensor::from_slice(&Cpu, &data, dims).unwrap());
                    let h = model.features(&p, name, &x).unwrap();
                    let z = model.modality_logits(&p, name, &h).unwrap();
                    logits.push(z.into_value().to_vec().unwrap());
                    feats.push(h);
                }
                let k = layout.num_classes;
                let fused: Vec<f32> = match fusion {
                    None => {
                        let refs: Vec<_> = feats.iter().collect();
                        model
                            .joint_logits(&p, &refs)
                            .unwrap()
                            .into_value()
                            .to_vec()
                            .unwrap()
                    }
                    Some(f) => (0..chunk.len())
                        .flat_map(|i| {
                            let rows: Vec<Option<&[f32]>> = logits
                                .iter()
                                .map(|z| Some(&z[i * k..(i + 1) * k]))
                                .collect();
                            let (mut out, mut w) = (vec![0.0; k], vec![0.0; m_count]);
                            f.combine(&rows, &mut out, &mut w).unwrap();
                            out.into_iter().map(|v| v as f32).collect::<Vec<_>>()
                        })
                        .collect(),
                };
                correct += (0..chunk.len())
                    .filter(|&i| argmax(&fused[i * k..(i + 1) * k]) == b.labels[i] as usize)
                    .count();
            }
            correct as f64 / samples.len() as f64
        })
        .collect()
}

fn assert_efficient(sv: &ShapleyValues) {
    let sum: f64 = sv.phi.iter().sum();
    assert!((sum - (sv.v_full() - sv.v_empty())).abs() < 1e-12);
    let full = (1 << sv.modalities) - 1;
    for i in 0..sv.samples {
        let s: f64 = sv.sample(i).iter().sum();
        // v_i(M) - v_i(empty) is -1, 0 or 1.
        assert!(
            [-1.0, 0.0, 1.0].iter().any(|d| (s - d).abs() < 1e-12),
            "sample {i}: {s}"
        );
        assert!(sv.sample(i).iter().all(|p| (-1.0..=1.0).contains(p)));
    }
    assert!((sv.value[full] - sv.v_full()).abs() == 0.0);
    for (a, b) in sv.per_sample_mean().iter().zip(&sv.phi) {
        assert!(
            (a - b).abs() < 1e-12,
            "mean of per-sample phi {a} vs dataset phi {b}"
        );
    }
}

#[test]
fn zero_input_values_match_running_the_model_on_zeroed_inputs() {
    let dir = synthetic("diag-zero-input", &Synthetic::default());
    let ds = open(dir.path());
    let n = ds.indices(Split::Test).len() as f64;
    // MMPareto: the fused head is rebuilt from the slices, not from the
    // modalities' own heads.
    for method in [MethodKind::Mla, MethodKind::Joint, MethodKind::Mmpareto] {
        let c = cfg(method);
        let (model, layout, summary, fit) = trained(&ds, &c);
        let sv = values(&model, &c, &layout, &ds, Removal::ZeroInput, fit.as_ref());
        let fusion = (method == MethodKind::Mla).then(|| c.fusion.resolve(fit.as_ref()).unwrap());
        let want = zeroed_input_values(&model, &layout, &ds, c.eval_batch_size, fusion.as_ref());
        for (mask, (got, want)) in sv.value.iter().zip(&want).enumerate() {
            // Kept modalities see the same batches bit for bit; h_m(0) of a
            // single zero sample may differ from a batch of zeros in the
            // last bits, so a near-tie may flip one prediction.
            assert!(
                (got - want).abs() <= 1.0 / n + 1e-12,
                "{method}: v({mask:#b}) = {got}, direct {want}"
            );
        }
        assert_efficient(&sv);
        // The fixture must make the check meaningful: the image alone is
        // far above everything removed, and the summary carries the record.
        assert!(
            sv.value[0b01] > sv.v_empty() + 0.3,
            "{method}: {:?}",
            sv.value
        );
        let rec = summary
            .test
            .shapley
            .as_ref()
            .expect("every run has Shapley values");
        assert_eq!(rec.removal, Removal::ZeroInput);
        assert!(rec.dataset.get("image").unwrap() > 0.1, "{method}: {rec:?}");
        assert!((rec.v_full - summary.test.fused_accuracy).abs() <= 1.0 / n + 1e-12);
        if method == MethodKind::Mla {
            // Same fusion code path as the reported accuracy: exact.
            assert_eq!(rec.v_full, summary.test.fused_accuracy);
        }
    }
}

#[test]
fn a_zero_head_slice_is_a_null_player_under_zero_feature() {
    let dir = synthetic("diag-null", &Synthetic::default());
    let ds = open(dir.path());
    let c = cfg(MethodKind::Joint);
    let (mut model, layout, _, _) = trained(&ds, &c);
    let audio = layout.modalities.iter().position(|m| m == "audio").unwrap();
    let s = c.feature_size;
    let w = model.params().get(HEAD_WEIGHT).unwrap();
    let dims = w.dims().to_vec();
    let mut v = w.to_vec().unwrap();
    let cols = dims[1];
    for row in v.chunks_mut(cols) {
        row[audio * s..(audio + 1) * s]
            .iter_mut()
            .for_each(|x| *x = 0.0);
    }
    model
        .params_mut()
        .set(HEAD_WEIGHT, Tensor::from_slice(&Cpu, &v, dims).unwrap())
        .unwrap();
    for removal in Removal::ALL {
        let sv = values(&model, &c, &layout, &ds, removal, None);
        assert_eq!(sv.phi[audio], 0.0, "{removal}");
        assert!(
            (0..sv.samples).all(|i| sv.sample(i)[audio] == 0.0),
            "{removal}"
        );
        assert!(
            sv.phi[1 - audio] > 0.1,
            "{removal}: the image still counts: {:?}",
            sv.phi
        );
        assert_efficient(&sv);
    }
}

/// The synthetic dataset with its image stored twice, as modalities "a" and "b".
fn twin_dataset(tag: &str) -> TempDir {
    let src = synthetic(tag, &Synthetic::default());
    let d = TempDir::new(&format!("{tag}-twin"));
    for f in ["labels.npy", "split.npy", "image.npy"] {
        std::fs::copy(src.join(f), d.join(f)).unwrap();
    }
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("dataset.json")).unwrap()).unwrap();
    m["modalities"] = serde_json::json!([
        {"name": "a", "data": "image.npy"},
        {"name": "b", "data": "image.npy"}
    ]);
    std::fs::write(
        d.join("dataset.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    d
}

#[test]
fn identical_modalities_get_equal_values() {
    let dir = twin_dataset("diag-twins");
    let ds = open(dir.path());
    let c = cfg(MethodKind::Mla);
    let (mut model, layout, _, _) = trained(&ds, &c);
    // Give "b" the encoder of "a": the two modalities are then the same player.
    let a_params: Vec<(String, Tensor<f32, Cpu>)> = model
        .params()
        .iter()
        .filter(|(n, _)| n.starts_with("encoder.a."))
        .map(|(n, t)| (n.replacen("encoder.a.", "encoder.b.", 1), t.clone()))
        .collect();
    assert!(!a_params.is_empty());
    for (n, t) in a_params {
        model.params_mut().set(&n, t).unwrap();
    }
    for rule in [FusionRule::Entropy, FusionRule::Mean] {
        let c = TrainConfig {
            fusion: rule,
            ..c.clone()
        };
        for removal in Removal::ALL {
            let sv = values(&model, &c, &layout, &ds, removal, None);
            assert_eq!(sv.phi[0], sv.phi[1], "{rule} {removal}");
            for i in 0..sv.samples {
                assert_eq!(
                    sv.sample(i)[0],
                    sv.sample(i)[1],
                    "{rule} {removal} sample {i}"
                );
            }
            assert!(sv.phi[0] > 0.05, "{rule} {removal}: {:?}", sv.phi);
            assert_efficient(&sv);
        }
    }
}

#[test]
fn summaries_carry_macro_f1_and_old_ones_still_parse() {
    let dir = synthetic("diag-summary", &Synthetic::default());
    let ds = open(dir.path());
    let mut uni = cfg(MethodKind::Unimodal);
    uni.modality = Some("image".into());
    for c in [cfg(MethodKind::Mla), cfg(MethodKind::Joint), uni] {
        let mut t = Trainer::new(Cpu, ds.clone(), c.clone()).unwrap();
        let s = t.run(&mut Silent).unwrap();
        for m in [&s.val, &s.test] {
            assert!(m.fused_macro_f1 > 0.0 && m.fused_macro_f1 <= 1.0, "{m:?}");
            for name in m.modality_accuracy.iter().map(|(n, _)| n) {
                let f1 = m
                    .modality_macro_f1
                    .get(name)
                    .expect("a macro-F1 per modality");
                assert!((0.0..=1.0).contains(&f1));
            }
            let sh = m.shapley.as_ref().expect("Shapley values");
            let sum: f64 = sh.dataset.iter().map(|(_, v)| v).sum();
            assert!((sum - (sh.v_full - sh.v_empty)).abs() < 1e-12);
        }
        if c.method == MethodKind::Unimodal {
            // The fused prediction is the modality's: same F1, and phi is
            // the whole difference to the all-removed prediction.
            assert_eq!(
                s.test.fused_macro_f1,
                s.test.modality_macro_f1.get("image").unwrap()
            );
            let sh = s.test.shapley.as_ref().unwrap();
            assert!((sh.dataset.get("image").unwrap() - (sh.v_full - sh.v_empty)).abs() < 1e-15);
        }
        // A summary written before these fields existed still parses.
        let mut json = serde_json::to_value(&s).unwrap();
        for split in ["val", "test"] {
            let o = json[split].as_object_mut().unwrap();
            for k in ["fused_macro_f1", "modality_macro_f1", "shapley"] {
                assert!(o.remove(k).is_some(), "{k} is written");
            }
        }
        let old: Summary = serde_json::from_value(json).unwrap();
        assert_eq!(old.test.fused_macro_f1, 0.0);
        assert!(old.test.shapley.is_none());
        assert_eq!(old.test.fused_accuracy, s.test.fused_accuracy);
    }
}
