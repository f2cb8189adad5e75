//! ReconBoost and G-Blending (BASELINES.md sections 6, 8 and 12): what each
//! phase of ReconBoost steps and leaves bitwise alone, beta's gradient only
//! in phase 2, the phase-1 loss and its gradient against a direct f64
//! computation, the stage schedule; G-Blending's weights (non-negative, sum
//! 1, symmetric) and its step against a direct gradient of the weighted sum
//! of per-logit cross-entropies.

mod trainer_common;

use mla_core::{Indices, Tape, Tensor};
use mla_cpu::Cpu;
use mla_models::data::{Dataset, Loader};
use mla_models::methods::gblending::{normalise, BlendLosses};
use mla_models::methods::reconboost::{
    sample_weights, schedule_at, starts_phase, true_class_prob, weighted_ce,
};
use mla_models::model::{scatter_rows, HEAD_BETA};
use mla_models::rng::Rng;
use mla_models::trainer::{
    BlendRule, GblendingParams, MethodKind, ReconboostParams, StageSchedule, TrainConfig, Trainer,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use trainer_common::{synthetic, Synthetic};

fn cfg(method: MethodKind) -> TrainConfig {
    TrainConfig {
        method,
        encoder: "mlp".into(),
        feature_size: 16,
        epochs: 1,
        batch_size: 32,
        eval_batch_size: 64,
        lr: 0.05,
        // Plain SGD: a parameter moves by exactly -lr * (its gradient).
        momentum: 0.0,
        weight_decay: 0.0,
        hgm: mla_models::trainer::HgmMode::None,
        ..TrainConfig::default()
    }
}

type Params = BTreeMap<String, Vec<f32>>;

fn params(t: &Trainer<Cpu>) -> Params {
    t.model()
        .params()
        .iter()
        .map(|(n, p)| (n.to_string(), p.to_vec().unwrap()))
        .collect()
}

fn moved(a: &Params, b: &Params) -> Vec<String> {
    a.keys().filter(|n| a[*n] != b[*n]).cloned().collect()
}

fn groups(names: &[String]) -> Vec<String> {
    let mut g: Vec<String> = names
        .iter()
        .map(|n| match n.split('.').collect::<Vec<_>>().as_slice() {
            ["encoder", m, ..] => format!("encoder.{m}"),
            _ => n.clone(),
        })
        .collect();
    g.dedup();
    g.sort();
    g.dedup();
    g
}

#[test]
fn reconboost_phases_step_what_they_own_and_beta_only_in_phase_two() {
    let d = synthetic("rb-phases", &Synthetic::default());
    let ds = Arc::new(Dataset::open(d.path()).unwrap());
    let c = cfg(MethodKind::Reconboost);
    // 384 train samples, batch 32: 12 steps per epoch; schedule 1:1 gives
    // epoch 1 phase 1 (image), epoch 2 phase 2 (ensemble {image}), epoch 3
    // phase 1 (audio).
    let snapshot = |steps: usize| {
        let mut t = Trainer::new(Cpu, ds.clone(), c.clone()).unwrap();
        t.time_steps(0, steps).unwrap();
        params(&t)
    };
    let p0 = params(&Trainer::new(Cpu, ds.clone(), c.clone()).unwrap());
    let (p12, p13, p24, p25) = (snapshot(12), snapshot(13), snapshot(24), snapshot(25));
    let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        groups(&moved(&p0, &p12)),
        want(&["encoder.image", "head.bias", "head.weight"]),
        "phase 1 on image: its encoder and the shared head, not audio, not beta"
    );
    assert_eq!(
        groups(&moved(&p12, &p13)),
        want(&["encoder.image", "head.beta", "head.bias", "head.weight"]),
        "phase 2 with the ensemble {{image}}: beta moves, audio is no member yet"
    );
    assert_eq!(
        groups(&moved(&p24, &p25)),
        want(&["encoder.audio", "head.bias", "head.weight"]),
        "phase 1 on audio"
    );
    assert_eq!(p0[HEAD_BETA], vec![1.0], "beta starts at 1 (official)");
}

#[test]
fn reconboost_resets_the_optimizer_at_each_phase_start_only() {
    let d = synthetic("rb-reset", &Synthetic::default());
    let ds = Arc::new(Dataset::open(d.path()).unwrap());
    let with = |reset: bool, steps: usize| {
        let c = TrainConfig {
            momentum: 0.9,
            reconboost: Some(ReconboostParams {
                reset_optimizer: reset,
                schedule: StageSchedule {
                    stage: 2,
                    correct: 1,
                },
                ..ReconboostParams::default()
            }),
            ..cfg(MethodKind::Reconboost)
        };
        let mut t = Trainer::new(Cpu, ds.clone(), c).unwrap();
        t.time_steps(0, steps).unwrap();
        params(&t)
    };
    // Epochs 1-2 are one phase: no reset between them.
    assert_eq!(with(true, 24), with(false, 24));
    // Epoch 3 starts phase 2: its first step runs without momentum.
    assert_ne!(with(true, 25), with(false, 25));
}

#[test]
fn reconboost_phase_one_loss_and_gradient_match_a_direct_f64_computation() {
    let mut rng = Rng::new(11);
    let (n, c) = (7usize, 5usize);
    let z: Vec<f32> = (0..n * c).map(|_| rng.normal() as f32 * 2.0).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i * 3 % c) as u32).collect();
    let q: Vec<f64> = (0..n).map(|i| i as f64 / (n - 1) as f64).collect();
    let p = ReconboostParams {
        w1: 4.0,
        w2: 1.5,
        ..ReconboostParams::default()
    };
    let w = sample_weights(&p, &q, c);
    for (&wi, &qi) in w.iter().zip(&q) {
        assert!(
            ((p.w1 - p.w2) / c as f64..=p.w1 / c as f64).contains(&wi),
            "{wi} at q {qi}"
        );
    }
    let tape = Tape::new(&Cpu);
    let zv = tape.var(Tensor::from_slice(&Cpu, &z, [n, c]).unwrap());
    let loss = weighted_ce(&zv, &labels, &w).unwrap();
    let got = loss.value().to_vec().unwrap()[0] as f64;
    let grads = tape.backward(&loss).unwrap();
    let gz = grads.get(&zv).unwrap().to_vec().unwrap();
    let (mut want, mut want_g) = (0.0, vec![0.0f64; n * c]);
    for i in 0..n {
        let row: Vec<f64> = z[i * c..(i + 1) * c].iter().map(|&v| v as f64).collect();
        let y = labels[i] as usize;
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        let wi = (p.w1 - p.w2 * q[i]) / c as f64;
        want += wi * (lse - row[y]) / n as f64;
        for j in 0..c {
            let sm = (row[j] - lse).exp();
            want_g[i * c + j] = wi / n as f64 * (sm - f64::from(u8::from(j == y)));
        }
        assert!((true_class_prob(&row, y) - (row[y] - lse).exp()).abs() < 1e-12);
    }
    assert!(
        (got - want).abs() < 1e-5 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    for (g, w) in gz.iter().zip(&want_g) {
        assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
    }
    // w2 = 0: the loss is (w1 / C) CE.
    let p0 = ReconboostParams { w2: 0.0, ..p };
    let l0 = weighted_ce(&zv, &labels, &sample_weights(&p0, &q, c)).unwrap();
    let ce = zv
        .cross_entropy(&Indices::new(&Cpu, &labels).unwrap())
        .unwrap();
    let (a, b) = (
        l0.value().to_vec().unwrap()[0] as f64,
        ce.value().to_vec().unwrap()[0] as f64 * p.w1 / c as f64,
    );
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
}

#[test]
fn reconboost_schedule_alternates_modalities_and_grows_the_ensemble() {
    let p = ReconboostParams::default(); // 1:1
    let two: Vec<_> = (1..=6).map(|e| schedule_at(&p, 2, e)).collect();
    assert_eq!(
        two,
        vec![
            (0, Some(0), 1),
            (0, None, 1),
            (1, Some(1), 2),
            (1, None, 2),
            (2, Some(0), 2),
            (2, None, 2)
        ]
    );
    let p = ReconboostParams {
        schedule: StageSchedule {
            stage: 2,
            correct: 1,
        },
        ..p
    };
    let three: Vec<_> = (1..=9).map(|e| schedule_at(&p, 3, e).1).collect();
    assert_eq!(
        three,
        vec![
            Some(0),
            Some(0),
            None,
            Some(1),
            Some(1),
            None,
            Some(2),
            Some(2),
            None
        ]
    );
    let starts: Vec<bool> = (1..=6).map(|e| starts_phase(&p, e)).collect();
    assert_eq!(starts, vec![true, false, true, true, false, true]);
    assert!("0:1".parse::<StageSchedule>().is_err());
    assert!("4:0".parse::<StageSchedule>().is_ok());
}

#[test]
fn reconboost_modality_logits_are_beta_times_the_shared_head() {
    let d = synthetic("rb-logits", &Synthetic::default());
    let ds = Arc::new(Dataset::open(d.path()).unwrap());
    let mut t = Trainer::new(Cpu, ds.clone(), cfg(MethodKind::Reconboost)).unwrap();
    // Past a phase 2 step, so beta is no longer 1.
    t.time_steps(0, 13).unwrap();
    let model = t.model();
    let beta = model.params().get(HEAD_BETA).unwrap().to_vec().unwrap()[0];
    assert_ne!(beta, 1.0);
    let tape = Tape::no_grad(&Cpu);
    let p = model.track(&tape, |_| false);
    let x = Tensor::from_slice(&Cpu, &vec![0.3f32; 2 * 64], [2, 1, 8, 8]).unwrap();
    let h = model.features(&p, "image", &tape.constant(x)).unwrap();
    let z = model
        .modality_logits(&p, "image", &h)
        .unwrap()
        .into_value()
        .to_vec()
        .unwrap();
    let g = model
        .head_logits(&p, &h)
        .unwrap()
        .into_value()
        .to_vec()
        .unwrap();
    for (a, b) in z.iter().zip(&g) {
        assert!(
            (a - beta * b).abs() <= 1e-6 * b.abs().max(1.0),
            "{a} vs {beta} * {b}"
        );
    }
}

#[test]
fn gblending_weights_are_nonnegative_normalised_and_symmetric() {
    let mut rng = Rng::new(3);
    for _ in 0..200 {
        let l: Vec<BlendLosses> = (0..3)
            .map(|_| BlendLosses {
                train_pre: 1.0 + rng.uniform(),
                val_pre: 1.0 + rng.uniform(),
                train_now: rng.uniform(),
                val_now: 0.5 + rng.uniform(),
            })
            .collect();
        for rule in [BlendRule::Paper, BlendRule::Bb] {
            let w = normalise(&l.iter().map(|x| x.raw_weight(rule)).collect::<Vec<_>>());
            assert!(w.iter().all(|&v| v >= 0.0 && v.is_finite()), "{w:?}");
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }
    // Equal losses, equal weights (either rule).
    let same = BlendLosses {
        train_pre: 2.0,
        val_pre: 2.1,
        train_now: 1.0,
        val_now: 1.6,
    };
    for rule in [BlendRule::Paper, BlendRule::Bb] {
        let w = normalise(&[same.raw_weight(rule); 4]);
        assert!(w.iter().all(|&v| (v - 0.25).abs() < 1e-15), "{w:?}");
    }
    // The paper's rule: G = 2.1 - 1.6 = 0.5, O = (1.6 - 1.0) - (2.1 - 2.0) = 0.5.
    let l = same;
    assert!((l.raw_weight(BlendRule::Paper) - 0.5 / 0.25).abs() < 1e-12);
    assert!((l.raw_weight(BlendRule::Bb) - 0.5 / 0.25).abs() < 1e-12);
    // A configuration whose validation loss grew gets no weight under the
    // paper's rule (BalanceBenchmark's |G| gives it one).
    let worse = BlendLosses { val_now: 2.5, ..l };
    assert_eq!(worse.raw_weight(BlendRule::Paper), 0.0);
    assert!(worse.raw_weight(BlendRule::Bb) > 0.0);
    // Nothing generalises: uniform.
    assert_eq!(normalise(&[0.0, 0.0]), vec![0.5, 0.5]);
    // O = 0 is floored, not infinite.
    let flat = BlendLosses {
        train_pre: 1.0,
        val_pre: 1.0,
        train_now: 0.5,
        val_now: 0.5,
    };
    assert!((flat.raw_weight(BlendRule::Paper) - 0.5 / 1e-4).abs() < 1e-6);
}

#[test]
fn gblending_step_is_the_gradient_of_the_weighted_per_logit_ces() {
    let spec = Synthetic {
        audio_missing_every: 3,
        ..Synthetic::default()
    };
    let d = synthetic("gb-step", &spec);
    let ds = Arc::new(Dataset::open(d.path()).unwrap());
    let c = cfg(MethodKind::Gblending);
    let mut t = Trainer::new(Cpu, ds.clone(), c.clone()).unwrap();
    let before = params(&t);
    // Benchmark steps skip the estimation: the weights stay uniform (1/3).
    t.time_steps(0, 1).unwrap();
    let after = params(&t);
    // The same first batch, the loss written out from its definition.
    let batch = Loader::new(
        ds.clone(),
        t.train_samples().to_vec(),
        c.batch_size,
        Some(c.seed),
        1,
    )
    .unwrap()
    .next()
    .unwrap()
    .unwrap();
    let fresh = Trainer::new(Cpu, ds.clone(), c.clone()).unwrap();
    let model = fresh.model();
    let n = batch.len();
    let tape = Tape::new(&Cpu);
    let p = model.track(&tape, |_| true);
    let names = ["image", "audio"];
    let shapes = [trainer_common::IMAGE_SHAPE, trainer_common::AUDIO_SHAPE];
    let mut full = Vec::new();
    let mut loss = None;
    let third = 1.0 / 3.0;
    for (k, name) in names.iter().enumerate() {
        let mb = &batch.modalities[k];
        let mut dims = vec![mb.present.len()];
        dims.extend_from_slice(&shapes[k]);
        let x = tape.constant(Tensor::from_slice(&Cpu, &mb.data, dims).unwrap());
        let h = model.features(&p, name, &x).unwrap();
        let y: Vec<u32> = mb.present.iter().map(|&i| batch.labels[i]).collect();
        let zk = model.slice_logits(&p, name, &h).unwrap();
        let ce = zk
            .cross_entropy(&Indices::new(&Cpu, &y).unwrap())
            .unwrap()
            .scale(third)
            .unwrap();
        loss = Some(match loss {
            None => ce,
            Some(l) => ce.add(&l).unwrap(),
        });
        full.push(if mb.present.len() == n {
            h
        } else {
            scatter_rows(&h, &mb.present, n).unwrap()
        });
    }
    assert!(
        batch.modalities[1].present.len() < n,
        "the batch must miss audio"
    );
    let refs: Vec<_> = full.iter().collect();
    let z = model.joint_logits(&p, &refs).unwrap();
    let fused = z
        .cross_entropy(&Indices::new(&Cpu, &batch.labels).unwrap())
        .unwrap()
        .scale(third)
        .unwrap();
    let loss = loss.unwrap().add(&fused).unwrap();
    let g = tape.backward(&loss).unwrap();
    let grads = p.gradients(g);
    assert_eq!(grads.len(), before.len());
    for (name, gr) in grads {
        let gr = gr.to_vec().unwrap();
        for ((a, b), gi) in after[&name].iter().zip(&before[&name]).zip(&gr) {
            let want = b - c.lr as f32 * gi;
            assert!(
                (a - want).abs() <= 1e-5 * want.abs().max(1e-2),
                "{name}: {a} vs {want}"
            );
        }
    }
}

#[test]
fn gblending_estimates_weights_before_the_first_epoch_and_reports_them() {
    let d = synthetic("gb-estimate", &Synthetic::default());
    let ds = Arc::new(Dataset::open(d.path()).unwrap());
    for rule in [BlendRule::Paper, BlendRule::Bb] {
        let c = TrainConfig {
            epochs: 2,
            gblending: Some(GblendingParams {
                every: 0,
                epochs: 2,
                rule,
            }),
            ..cfg(MethodKind::Gblending)
        };
        let mut t = Trainer::new(Cpu, ds.clone(), c).unwrap();
        t.run(&mut mla_models::trainer::Silent).unwrap();
        let h = &t.state().history;
        let st0 = h[0].method_stats.clone().unwrap();
        let w: Vec<f64> = ["image", "audio", "output"]
            .iter()
            .map(|k| st0.get(&format!("weight.{k}")).unwrap())
            .collect();
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9 && w.iter().all(|&v| v >= 0.0));
        assert!(st0.get("val_now.output").unwrap() < st0.get("val_pre.output").unwrap());
        // Offline: estimated once; epoch 2 keeps the weights, no new losses.
        let st1 = h[1].method_stats.clone().unwrap();
        assert_eq!(st1.get("weight.image"), Some(w[0]), "{rule}");
        assert!(st1.get("val_pre.image").is_none());
    }
}
