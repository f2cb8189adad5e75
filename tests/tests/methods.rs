//! The balancing methods in the trainer (BASELINES.md section 12): the
//! reductions to `joint` bit for bit, gradient changes that land before the
//! optimizer adds weight decay, what each method changes and what it leaves
//! alone (compared parameter by parameter with a `joint` step from the same
//! weights and batch), training well above chance on two and three
//! modalities, exact resume.

mod trainer_common;

use mla_cpu::Cpu;
use mla_models::data::Dataset;
use mla_models::trainer::{
    AgmParams, EpochWindow, GblendingParams, MethodKind, OgmParams, PmrParams, ReconboostParams,
    Silent, StageSchedule, TrainConfig, Trainer,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use trainer_common::{history, stopped_and_resumed, synthetic, train_in, Synthetic, TempDir};

fn cfg(method: MethodKind) -> TrainConfig {
    TrainConfig {
        method,
        // One quick estimation (the default trains 3 copies x 10 epochs).
        gblending: (method == MethodKind::Gblending).then_some(GblendingParams {
            every: 2,
            epochs: 1,
            ..GblendingParams::default()
        }),
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

fn dataset(tag: &str, touch: bool) -> (TempDir, Arc<Dataset>) {
    let d = synthetic(
        tag,
        &Synthetic {
            touch,
            ..Synthetic::default()
        },
    );
    let ds = Arc::new(Dataset::open(d.path()).unwrap());
    (d, ds)
}

type Params = BTreeMap<String, Vec<f32>>;

fn params(t: &Trainer<Cpu>) -> Params {
    t.model()
        .params()
        .iter()
        .map(|(n, p)| (n.to_string(), p.to_vec().unwrap()))
        .collect()
}

/// The parameters before and after `steps` training steps of `c`.
fn stepped(ds: &Arc<Dataset>, c: TrainConfig, steps: usize) -> (Params, Params) {
    let mut t = Trainer::new(Cpu, ds.clone(), c).unwrap();
    let before = params(&t);
    t.time_steps(0, steps).unwrap();
    (before, params(&t))
}

fn is_encoder_weight(name: &str, modality: &str) -> bool {
    name.starts_with(&format!("encoder.{modality}.")) && name.ends_with(".weight")
}

#[test]
fn zero_alpha_and_outside_the_window_are_the_joint_step_bit_for_bit() {
    let (_d, ds) = dataset("m-reduce", false);
    let (_, joint) = stepped(&ds, cfg(MethodKind::Joint), 6);
    let window_later = EpochWindow { start: 3, end: 9 };
    let cases = [
        TrainConfig {
            ogm: Some(OgmParams {
                alpha: 0.0,
                ..OgmParams::default()
            }),
            ..cfg(MethodKind::Ogm)
        },
        TrainConfig {
            ogm: Some(OgmParams {
                window: window_later,
                ..OgmParams::default()
            }),
            ..cfg(MethodKind::OgmGe)
        },
        TrainConfig {
            pmr: Some(PmrParams {
                alpha: 0.0,
                ..PmrParams::default()
            }),
            ..cfg(MethodKind::Pmr)
        },
        TrainConfig {
            pmr: Some(PmrParams {
                window: window_later,
                ..PmrParams::default()
            }),
            ..cfg(MethodKind::Pmr)
        },
    ];
    for c in cases {
        let what = format!("{} {:?} {:?}", c.method, c.ogm, c.pmr);
        let (_, got) = stepped(&ds, c, 6);
        assert_eq!(got, joint, "{what}");
    }
    // And the active methods do change something.
    for m in [MethodKind::Ogm, MethodKind::OgmGe, MethodKind::Pmr] {
        let (_, got) = stepped(&ds, cfg(m), 6);
        assert_ne!(got, joint, "{m}");
    }
}

#[test]
fn ogm_scales_only_the_dominant_encoders_weight_gradients_by_one_k() {
    let (_d, ds) = dataset("m-ogm", false);
    let (w0, joint) = stepped(&ds, cfg(MethodKind::Joint), 1);
    let (w0b, ogm) = stepped(&ds, cfg(MethodKind::Ogm), 1);
    assert_eq!(w0, w0b, "same initialisation");
    let alpha = OgmParams::default().alpha;
    let mut ks = BTreeMap::new();
    for (name, after) in &ogm {
        let modality = ["image", "audio"]
            .into_iter()
            .find(|m| is_encoder_weight(name, m));
        match modality {
            // Heads, biases: the joint gradient, untouched.
            None => assert_eq!(after, &joint[name], "{name}"),
            Some(m) => {
                // delta_ogm = k * delta_joint for every element.
                let mut ratios = Vec::new();
                for ((a, j), w) in after.iter().zip(&joint[name]).zip(&w0[name]) {
                    let (dj, da) = ((j - w) as f64, (a - w) as f64);
                    if dj.abs() > 1e-5 {
                        ratios.push(da / dj);
                    }
                }
                assert!(!ratios.is_empty(), "{name}");
                let k = ratios.iter().sum::<f64>() / ratios.len() as f64;
                for r in &ratios {
                    assert!((r - k).abs() < 2e-3, "{name}: {r} vs {k}");
                }
                let prev = ks.insert(m, k);
                if let Some(p) = prev {
                    assert!((p - k).abs() < 2e-3, "one k per encoder: {p} vs {k}");
                }
            }
        }
    }
    let damped: Vec<_> = ks.iter().filter(|(_, &k)| k < 0.999).collect();
    assert_eq!(damped.len(), 1, "exactly one modality damped: {ks:?}");
    let (&dom, &k) = damped[0];
    assert!(k > 0.0 && k <= 1.0 - alpha.tanh() + 2e-3, "{dom}: {k}");
}

#[test]
fn ogm_modulates_before_weight_decay() {
    let (_d, ds) = dataset("m-ogm-wd", false);
    // alpha 1e6: k = 1 - tanh(1e6 rho) = 0 for the dominant modality, so its
    // weights get the weight-decay update alone: w <- w - lr * wd * w.
    let c = TrainConfig {
        weight_decay: 0.05,
        ogm: Some(OgmParams {
            alpha: 1e6,
            ..OgmParams::default()
        }),
        ..cfg(MethodKind::Ogm)
    };
    let (lr, wd) = (c.lr, c.weight_decay);
    let (w0, after) = stepped(&ds, c, 1);
    let pure_decay = |name: &str| {
        after[name].iter().zip(&w0[name]).all(|(&x, &w)| {
            let p = w as f64 - lr * wd * w as f64;
            (x as f64 - p).abs() <= 1e-6 * (p.abs() + 1e-3)
        })
    };
    let mut decayed = BTreeMap::new();
    for name in after.keys().filter(|n| n.ends_with(".weight")) {
        let m = ["image", "audio"]
            .into_iter()
            .find(|m| is_encoder_weight(name, m));
        match m {
            Some(m) => {
                decayed
                    .entry(m)
                    .or_insert_with(Vec::new)
                    .push(pure_decay(name));
            }
            None => assert!(!pure_decay(name), "{name}: the head got no gradient step"),
        }
    }
    // One encoder (the dominant one) moved by weight decay alone in every
    // weight tensor; the other by its gradient in every one.
    let all: Vec<(&str, bool)> = decayed
        .iter()
        .map(|(m, v)| {
            assert!(v.iter().all(|&x| x == v[0]), "{m}: {v:?}");
            (*m, v[0])
        })
        .collect();
    assert_eq!(all.iter().filter(|(_, d)| *d).count(), 1, "{all:?}");
}

#[test]
fn ogm_ge_noise_lands_on_both_encoders_weights_only() {
    let (_d, ds) = dataset("m-ge", false);
    let (_, joint) = stepped(&ds, cfg(MethodKind::Joint), 1);
    // alpha 0: k = 1, so any change is the noise.
    let c = TrainConfig {
        ogm: Some(OgmParams {
            alpha: 0.0,
            ..OgmParams::default()
        }),
        ..cfg(MethodKind::OgmGe)
    };
    let (_, ge) = stepped(&ds, c.clone(), 1);
    for (name, a) in &ge {
        let encoder_weight = is_encoder_weight(name, "image") || is_encoder_weight(name, "audio");
        if encoder_weight {
            assert_ne!(a, &joint[name], "{name}: no noise");
        } else {
            assert_eq!(
                a, &joint[name],
                "{name}: noise outside the encoders' weights"
            );
        }
    }
    // Seeded: the same run gives the same noise.
    assert_eq!(stepped(&ds, c.clone(), 1).1, ge);
}

#[test]
fn pmr_changes_only_the_weaker_encoder_and_never_the_head() {
    let (_d, ds) = dataset("m-pmr", false);
    let (_, joint) = stepped(&ds, cfg(MethodKind::Joint), 1);
    let (_, pmr) = stepped(&ds, cfg(MethodKind::Pmr), 1);
    let changed: Vec<&String> = pmr.keys().filter(|n| pmr[*n] != joint[*n]).collect();
    assert!(!changed.is_empty());
    // The prototype CE depends on one encoder's features and the (constant)
    // prototypes: the head and the other encoder get exactly the joint gradient.
    let encoders: std::collections::BTreeSet<&str> = changed
        .iter()
        .map(|n| n.split('.').nth(1).unwrap())
        .collect();
    assert!(
        changed.iter().all(|n| n.starts_with("encoder.")),
        "{changed:?}"
    );
    assert_eq!(encoders.len(), 1, "{changed:?}");
}

#[test]
fn every_method_learns_two_and_three_modalities() {
    for touch in [false, true] {
        let (_d, ds) = dataset(if touch { "m-three" } else { "m-two" }, touch);
        for m in [
            MethodKind::Joint,
            MethodKind::Ogm,
            MethodKind::OgmGe,
            MethodKind::Pmr,
            MethodKind::Mmpareto,
            MethodKind::Agm,
            MethodKind::Mla,
            MethodKind::Reconboost,
            MethodKind::Gblending,
        ] {
            let c = TrainConfig {
                epochs: 3,
                momentum: 0.9,
                weight_decay: 1e-4,
                lr: 0.02,
                ..cfg(m)
            };
            let mut t = Trainer::new(Cpu, ds.clone(), c).unwrap();
            let s = t.run(&mut Silent).unwrap();
            assert_eq!(s.test.modality_accuracy.0.len(), if touch { 3 } else { 2 });
            // 4 classes: chance is 0.25.
            assert!(
                s.test.fused_accuracy > 0.6,
                "{m} (touch {touch}): {}",
                s.test.fused_accuracy
            );
            let stats = t.state().history[0].method_stats.clone();
            match m {
                MethodKind::Ogm | MethodKind::OgmGe => {
                    let st = stats.expect("ogm reports its coefficients");
                    assert!(
                        st.get("k_mean.image").is_some()
                            && st.get("damped_fraction.audio").is_some()
                    );
                    if touch {
                        assert!(st.get("k_mean.touch").is_some());
                    }
                }
                MethodKind::Mmpareto => {
                    let st = stats.expect("mmpareto reports cos and conflicts");
                    // Separate backward passes: g1 != g2, so cos < 1 (with
                    // BalanceBenchmark's accumulated gradients it is 1 exactly).
                    let cos = st.get("cos_mean.audio").unwrap();
                    assert!(cos < 0.999 && cos >= -1.0, "{cos}");
                    assert!(st.get("conflict_fraction.image").is_some());
                }
                MethodKind::Agm => {
                    let st = stats.expect("agm reports its coefficients");
                    assert!(st.get("kappa_mean.image").unwrap() > 0.0);
                    assert!(st.get("running_score.audio").unwrap() > 0.0);
                }
                MethodKind::Pmr => {
                    let st = stats.expect("pmr reports its prototype steps");
                    let f = st.get("prototype_loss_fraction.audio").unwrap();
                    assert!((0.0..=1.0).contains(&f));
                }
                MethodKind::Reconboost => {
                    let st = stats.expect("reconboost reports its stage");
                    assert_eq!(st.get("phase"), Some(1.0));
                    assert_eq!(st.get("trained.image"), Some(1.0));
                    // Nothing else in the ensemble yet: q = 1 for every sample.
                    assert_eq!(st.get("mean_q"), Some(1.0));
                    let st3 = t.state().history[2].method_stats.clone().unwrap();
                    let q = st3.get("mean_q").unwrap();
                    assert!(q > 0.0 && q < 1.0, "{q}");
                }
                MethodKind::Gblending => {
                    let st = stats.expect("gblending reports its weights");
                    let w = st.get("weight.output").unwrap();
                    assert!((0.0..=1.0).contains(&w));
                    if touch {
                        assert!(st.get("weight.touch").is_some());
                    }
                }
                _ => assert!(stats.is_none()),
            }
        }
    }
}

#[test]
fn methods_resume_exactly() {
    let (_d, ds) = dataset("m-resume", true);
    let runs = TempDir::new("m-resume-runs");
    let cases = [
        cfg(MethodKind::OgmGe),
        cfg(MethodKind::Mmpareto),
        cfg(MethodKind::Agm),
        cfg(MethodKind::Gblending),
        // Stopped inside a phase (epochs 1-2 are phase 1): the resumed epoch
        // must not reset the optimizer; 1:1 resumes at a phase start.
        TrainConfig {
            reconboost: Some(ReconboostParams {
                schedule: StageSchedule {
                    stage: 2,
                    correct: 1,
                },
                ..ReconboostParams::default()
            }),
            ..cfg(MethodKind::Reconboost)
        },
        cfg(MethodKind::Reconboost),
        TrainConfig {
            // Momentum so the stored prototypes matter on resume.
            pmr: Some(PmrParams {
                momentum: 0.5,
                ..PmrParams::default()
            }),
            ..cfg(MethodKind::Pmr)
        },
    ];
    for (i, c) in cases.into_iter().enumerate() {
        let c = TrainConfig {
            epochs: 3,
            momentum: 0.9,
            weight_decay: 1e-4,
            ..c
        };
        let tag = format!("{}-{i}", c.method);
        let (full, fs) = train_in(&ds, c.clone(), &runs.join(&format!("full-{tag}")));
        let (resumed, rs) = stopped_and_resumed(&ds, c, 1, &runs.join(&format!("part-{tag}")));
        assert_eq!(history(&resumed), history(&full), "{tag}");
        assert_eq!(params(&resumed), params(&full), "{tag}");
        assert_eq!(rs.test, fs.test, "{tag}");
    }
}

#[test]
fn agm_with_alpha_zero_is_the_joint_step_up_to_summation_order() {
    let (_d, ds) = dataset("m-agm", true);
    let (_, joint) = stepped(&ds, cfg(MethodKind::Joint), 4);
    let c = TrainConfig {
        agm: Some(AgmParams {
            alpha: 0.0,
            clip: false,
            ..AgmParams::default()
        }),
        ..cfg(MethodKind::Agm)
    };
    let (w0, agm) = stepped(&ds, c, 4);
    for (name, a) in &agm {
        for ((x, j), w) in a.iter().zip(&joint[name]).zip(&w0[name]) {
            // The same update within float rounding of the decomposition.
            let step = (j - w).abs().max(1e-7);
            assert!((x - j).abs() <= 1e-3 * step + 1e-6, "{name}: {x} vs {j}");
        }
    }
    // A non-zero alpha changes the steps.
    let (_, moved) = stepped(&ds, cfg(MethodKind::Agm), 4);
    assert_ne!(moved, joint);
}

#[test]
fn mmpareto_heads_keep_their_plain_gradients() {
    let (_d, ds) = dataset("m-pareto", false);
    let (_, joint) = stepped(&ds, cfg(MethodKind::Joint), 1);
    let (w0, pareto) = stepped(&ds, cfg(MethodKind::Mmpareto), 1);
    // The fused head gets the multimodal loss's gradient alone: the joint step.
    for n in ["head.weight", "head.bias"] {
        assert_eq!(pareto[n], joint[n], "{n}");
    }
    // Every encoder tensor and every modality's own head moved.
    for (n, v) in &pareto {
        if n.starts_with("encoder.") || n.starts_with("heads.") {
            assert_ne!(v, &w0[n], "{n}");
        }
    }
    assert!(pareto.contains_key("heads.audio.weight") && pareto.contains_key("heads.image.bias"));
    // Encoders differ from the joint step (amplified by 1.5 at least).
    assert_ne!(
        pareto["encoder.image.fc1.weight"],
        joint["encoder.image.fc1.weight"]
    );
}

#[test]
fn method_flags_belong_to_their_method() {
    let c = TrainConfig {
        ogm: Some(OgmParams::default()),
        ..cfg(MethodKind::Pmr)
    };
    let e = c.validate().unwrap_err();
    assert!(e.contains("--ogm-") && e.contains("pmr"), "{e}");
    let c = TrainConfig {
        pmr: Some(PmrParams::default()),
        ..cfg(MethodKind::Joint)
    };
    assert!(c.validate().unwrap_err().contains("--pmr-"));
    let c = TrainConfig {
        ogm: Some(OgmParams {
            alpha: -1.0,
            ..OgmParams::default()
        }),
        ..cfg(MethodKind::Ogm)
    };
    assert!(c.validate().unwrap_err().contains("--ogm-alpha"));
    let c = TrainConfig {
        agm: Some(AgmParams::default()),
        ..cfg(MethodKind::Ogm)
    };
    assert!(c.validate().unwrap_err().contains("--agm-"));
    let c = TrainConfig {
        reconboost: Some(ReconboostParams::default()),
        ..cfg(MethodKind::Gblending)
    };
    assert!(c.validate().unwrap_err().contains("--reconboost-"));
    let c = TrainConfig {
        reconboost: Some(ReconboostParams {
            w1: 1.0,
            w2: 2.0,
            ..ReconboostParams::default()
        }),
        ..cfg(MethodKind::Reconboost)
    };
    assert!(c.validate().unwrap_err().contains("w1 >= w2"));
    let c = TrainConfig {
        gblending: Some(GblendingParams {
            epochs: 1,
            rule: mla_models::trainer::BlendRule::Bb,
            ..GblendingParams::default()
        }),
        ..cfg(MethodKind::Gblending)
    };
    assert!(c.validate().unwrap_err().contains("--gblending-epochs"));
    let e = "ogm_ge".parse::<MethodKind>().unwrap_err();
    assert!(e.contains("ogm-ge") && e.contains("pmr"), "{e}");
}
