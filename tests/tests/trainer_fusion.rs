//! Fusion inside the trainer: the fit comes from validation alone (test
//! labels and inputs cannot move it), and every rule's accuracy and each
//! modality's accuracy match a direct per-sample computation on data with
//! missing modalities.

mod trainer_common;

use mla_core::{Tape, Tensor};
use mla_cpu::Cpu;
use mla_models::data::loader::make_batch;
use mla_models::data::{Dataset, Split};
use mla_models::fusion::FusionRule;
use mla_models::trainer::{EvalOptions, GblendingParams, MethodKind, Silent, TrainConfig, Trainer};
use std::sync::Arc;
use trainer_common::{synthetic, Synthetic, AUDIO_SHAPE, IMAGE_SHAPE};

fn cfg() -> TrainConfig {
    TrainConfig {
        method: MethodKind::Mla,
        epochs: 3,
        batch_size: 32,
        eval_batch_size: 64,
        lr: 0.02,
        ..TrainConfig::default()
    }
}

#[test]
fn auto_never_looks_at_test() {
    let clean = synthetic("fit-clean", &Synthetic::default());
    let scrambled = synthetic(
        "fit-scrambled",
        &Synthetic {
            scramble_test: true,
            ..Synthetic::default()
        },
    );
    let run = |dir: &trainer_common::TempDir| {
        let ds = Arc::new(Dataset::open(dir.path()).unwrap());
        let mut t = Trainer::new(Cpu, ds, cfg()).unwrap();
        t.run(&mut Silent).unwrap()
    };
    let (a, b) = (run(&clean), run(&scrambled));
    assert!(
        (a.test.fused_accuracy - b.test.fused_accuracy).abs() > 0.3,
        "the scrambled test split must score differently: {} vs {}",
        a.test.fused_accuracy,
        b.test.fused_accuracy
    );
    assert!(a.fusion_fit.is_some());
    assert_eq!(
        a.fusion_fit, b.fusion_fit,
        "the fit moved with the test split"
    );
    assert_eq!(a.val, b.val);
    assert_eq!(a.best_epoch, b.best_epoch);
    assert_eq!(a.test.fusion_rule, b.test.fusion_rule);
}

#[test]
fn rules_and_modality_accuracy_match_a_direct_per_sample_computation() {
    let spec = Synthetic {
        audio_missing_every: 3,
        ..Synthetic::default()
    };
    let dir = synthetic("fit-missing", &spec);
    let ds = Arc::new(Dataset::open(dir.path()).unwrap());
    // Every kind of per-modality logits: the shared head (mla), the concat
    // head's slices (joint, ogm-ge, pmr), own heads (mmpareto).
    for method in [
        MethodKind::Mla,
        MethodKind::Joint,
        MethodKind::OgmGe,
        MethodKind::Pmr,
        MethodKind::Mmpareto,
        MethodKind::Agm,
        MethodKind::Reconboost,
        MethodKind::Gblending,
    ] {
        check_method(&ds, method);
    }
}

fn check_method(ds: &Arc<Dataset>, method: MethodKind) {
    // Briefly trained, so that the image is not yet perfect and the rules
    // disagree on some samples.
    let c = TrainConfig {
        method,
        // ReconBoost trains one modality per epoch, at (w1 - w2 q) / C of
        // the CE's step size: three epochs reach both modalities.
        epochs: if method == MethodKind::Reconboost {
            3
        } else {
            1
        },
        lr: if method == MethodKind::Reconboost {
            0.01
        } else {
            0.002
        },
        gblending: (method == MethodKind::Gblending).then_some(GblendingParams {
            every: 0,
            epochs: 1,
            ..GblendingParams::default()
        }),
        ..cfg()
    };
    let mut t = Trainer::new(Cpu, ds.clone(), c).unwrap();
    t.run(&mut Silent).unwrap();
    let fit = t.fusion_fit().cloned();
    let m = t.evaluate(Split::Test, &EvalOptions::default()).unwrap();
    let model = t.model();
    let names = ["image", "audio"];
    let shapes = [IMAGE_SHAPE, AUDIO_SHAPE];
    // One sample at a time through the model: no batch mates, own indexing.
    let mut rows_of = Vec::new();
    let mut fused_of = Vec::new();
    let mut labels = Vec::new();
    for &i in t.eval_samples(Split::Test) {
        let b = make_batch(ds, &[i]).unwrap();
        let tape = Tape::no_grad(&Cpu);
        let p = model.track(&tape, |_| false);
        let mut rows: Vec<Option<Vec<f32>>> = Vec::new();
        let mut feats = Vec::new();
        for (k, name) in names.iter().enumerate() {
            let mb = &b.modalities[k];
            if mb.present.is_empty() {
                rows.push(None);
                feats.push(tape.constant(Tensor::zeros(&Cpu, [1, 128]).unwrap()));
                continue;
            }
            let mut dims = vec![1];
            dims.extend_from_slice(&shapes[k]);
            let x = tape.constant(Tensor::from_slice(&Cpu, &mb.data, dims).unwrap());
            let h = model.features(&p, name, &x).unwrap();
            rows.push(Some(
                model
                    .modality_logits(&p, name, &h)
                    .unwrap()
                    .into_value()
                    .to_vec()
                    .unwrap(),
            ));
            feats.push(h);
        }
        if !method.fuses_by_rule() {
            let refs: Vec<_> = feats.iter().collect();
            fused_of.push(
                model
                    .joint_logits(&p, &refs)
                    .unwrap()
                    .into_value()
                    .to_vec()
                    .unwrap(),
            );
        }
        rows_of.push(rows);
        labels.push(b.labels[0] as usize);
    }
    let n = labels.len();
    assert!(
        rows_of.iter().any(|r| r[1].is_none()),
        "the fixture must miss audio somewhere"
    );
    let argmax = |v: &[f64]| {
        (0..v.len())
            .max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a)))
            .unwrap()
    };
    let to64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    for (k, name) in names.iter().enumerate() {
        let scored: Vec<usize> = (0..n).filter(|&i| rows_of[i][k].is_some()).collect();
        let correct = scored
            .iter()
            .filter(|&&i| argmax(&to64(rows_of[i][k].as_ref().unwrap())) == labels[i])
            .count();
        let want = correct as f64 / scored.len() as f64;
        // Batched and single-sample forwards may differ in the last bits.
        assert!(
            (m.modality_accuracy.get(name).unwrap() - want).abs()
                <= 1.0 / scored.len() as f64 + 1e-12,
            "{method} {name}"
        );
    }
    assert_eq!(m.samples as usize, n);
    if !method.fuses_by_rule() {
        let correct = (0..n)
            .filter(|&i| argmax(&to64(&fused_of[i])) == labels[i])
            .count();
        let want = correct as f64 / n as f64;
        assert!(
            (m.fused_accuracy - want).abs() <= 1.0 / n as f64 + 1e-12,
            "{method}"
        );
        return;
    }
    let fit = fit.expect("a method fusing by rule fits its fusion on validation");
    let fa = m.fusion_accuracy.as_ref().unwrap();
    let mut direct = Vec::new();
    for r in FusionRule::CONCRETE {
        let f = r.resolve(Some(&fit)).unwrap();
        let mut correct = 0;
        for i in 0..n {
            let rows: Vec<Option<&[f32]>> = rows_of[i].iter().map(|r| r.as_deref()).collect();
            let (mut out, mut w) = (vec![0.0; 4], vec![0.0; 2]);
            f.combine(&rows, &mut out, &mut w).unwrap();
            correct += usize::from(argmax(&out) == labels[i]);
        }
        let want = correct as f64 / n as f64;
        assert!(
            (fa.get(r.as_str()).unwrap() - want).abs() <= 1.0 / n as f64 + 1e-12,
            "{r}: {} vs {want}",
            fa.get(r.as_str()).unwrap()
        );
        // `--fusion r` at evaluation: the fused accuracy is that rule's.
        let with = t
            .evaluate(
                Split::Test,
                &EvalOptions {
                    fusion: Some(r),
                    ..EvalOptions::default()
                },
            )
            .unwrap();
        assert_eq!(with.fusion_rule, Some(r));
        assert!(
            (with.fused_accuracy - want).abs() <= 1.0 / n as f64 + 1e-12,
            "--fusion {r}"
        );
        direct.push(want);
    }
    // The fixture must tell the rules apart, or the check above could not
    // catch an evaluation that ignores --fusion.
    assert!(
        direct
            .iter()
            .any(|d| (d - direct[0]).abs() > 1.5 / n as f64),
        "all rules score alike: {direct:?}"
    );
}
