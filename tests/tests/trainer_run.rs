//! The trainer end to end on a small synthetic dataset: learning, determinism,
//! resume, missing modalities, model selection, evaluation from a checkpoint,
//! error paths.

mod trainer_common;

use mla_cpu::Cpu;
use mla_models::checkpoint::Checkpoint;
use mla_models::data::{Dataset, Split};
use mla_models::trainer::{
    eval, load_fusion_fit, load_model, run_dir, EvalOptions, FusionRule, HgmMode, MethodKind,
    OptimizerKind, Silent, TrainConfig, TrainError, Trainer,
};
use std::sync::Arc;
use trainer_common::{history, stopped_and_resumed, synthetic, train_in, Synthetic, TempDir};

fn cfg(method: MethodKind) -> TrainConfig {
    TrainConfig {
        method,
        epochs: 3,
        batch_size: 32,
        eval_batch_size: 64,
        lr: 0.02,
        ..TrainConfig::default()
    }
}

fn open(dir: &TempDir) -> Arc<Dataset> {
    Arc::new(Dataset::open(dir.path()).unwrap())
}

#[test]
fn mla_learns_both_modalities_and_reports_every_metric() {
    let data = synthetic("mla", &Synthetic::default());
    let mut t = Trainer::new(Cpu, open(&data), cfg(MethodKind::Mla)).unwrap();
    let s = t.run(&mut Silent).unwrap();
    assert_eq!(s.epochs, 3);
    assert!((1..=3).contains(&s.best_epoch));
    // Chance is 0.25 on 4 balanced classes.
    assert!(s.test.fused_accuracy > 0.9, "{s:?}");
    assert!(
        s.test.modality_accuracy.get("image").unwrap() > 0.9,
        "{s:?}"
    );
    assert!(
        s.test.modality_accuracy.get("audio").unwrap() > 0.5,
        "{s:?}"
    );
    let fa = s
        .test
        .fusion_accuracy
        .as_ref()
        .expect("MLA reports both fusions");
    let rule = s.test.fusion_rule.expect("MLA names its fusion rule");
    assert_eq!(fa.0.len(), FusionRule::CONCRETE.len(), "{fa:?}");
    assert_eq!(fa.get(rule.as_str()).unwrap(), s.test.fused_accuracy);
    // auto chose on validation: the chosen rule is the most accurate there.
    let fit = s
        .fusion_fit
        .as_ref()
        .expect("MLA fits its fusion on validation");
    assert_eq!(fit.chosen, rule);
    assert_eq!(s.val.fusion_rule, Some(rule));
    let va = s.val.fusion_accuracy.as_ref().unwrap();
    assert!(va.iter().all(|(_, a)| a <= va.get(rule.as_str()).unwrap()));
    assert_eq!(fit.samples, s.val.samples);
    for nv in [
        &s.test.calibration_error,
        &s.test.calibration_error_calibrated,
    ] {
        let e = nv.as_ref().expect("ECE before and after calibration");
        assert!(e.iter().all(|(_, x)| (0.0..=1.0).contains(&x)), "{e:?}");
    }
    let gap = s.test.modality_gap.expect("gap on test");
    assert!(gap > 0.0 && gap <= 2.0, "{gap}");
    assert_eq!(s.test.samples, 96);
    // HGM ran every step and kept part of the head gradient.
    assert_eq!(s.hgm_surviving_fraction.len(), 3);
    assert!(
        s.hgm_surviving_fraction
            .iter()
            .all(|&f| f > 0.0 && f <= 1.0 + 1e-6),
        "{:?}",
        s.hgm_surviving_fraction
    );
    let h = &t.state().history;
    assert_eq!(h.len(), 3);
    assert!(h[2].train_loss < h[0].train_loss, "{h:?}");
    let by_mod = h[0].train_loss_by_modality.as_ref().unwrap();
    assert!(by_mod.get("image").is_some() && by_mod.get("audio").is_some());
    // The reported best is the epoch with the highest validation accuracy (first on ties).
    let best = h.iter().fold(&h[0], |b, r| {
        if r.val.fused_accuracy > b.val.fused_accuracy {
            r
        } else {
            b
        }
    });
    assert_eq!(best.epoch, s.best_epoch);
    assert_eq!(best.val, s.val);
}

#[test]
fn same_seed_same_metrics_bit_for_bit() {
    let data = synthetic("det", &Synthetic::default());
    let ds = open(&data);
    let run = || {
        let mut t = Trainer::new(Cpu, ds.clone(), cfg(MethodKind::Mla)).unwrap();
        let s = t.run(&mut Silent).unwrap();
        (
            t.state()
                .history
                .iter()
                .map(|r| r.without_timing())
                .collect::<Vec<_>>(),
            s.test,
        )
    };
    let (a, ta) = run();
    let (b, tb) = run();
    assert_eq!(a, b);
    assert_eq!(ta, tb);
    // A different seed gives a different run (the seed is really used).
    let mut t = Trainer::new(
        Cpu,
        ds,
        TrainConfig {
            seed: 1,
            ..cfg(MethodKind::Mla)
        },
    )
    .unwrap();
    t.run(&mut Silent).unwrap();
    assert_ne!(t.state().history[0].train_loss, a[0].train_loss);
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    let data = synthetic("resume", &Synthetic::default());
    let ds = open(&data);
    let runs = TempDir::new("resume-runs");
    for (hgm, optimizer) in [
        (HgmMode::Owm, OptimizerKind::Sgd),
        (HgmMode::Cross, OptimizerKind::Sgd),
        (HgmMode::None, OptimizerKind::AdamW),
    ] {
        let lr = if optimizer == OptimizerKind::Sgd {
            0.02
        } else {
            1e-3
        };
        let c = TrainConfig {
            hgm,
            optimizer,
            lr,
            epochs: 4,
            ..cfg(MethodKind::Mla)
        };
        let full_dir = runs.join(&format!("full-{hgm}"));
        let (full, full_summary) = train_in(&ds, c.clone(), &full_dir);
        let part_dir = runs.join(&format!("part-{hgm}"));
        let (resumed, resumed_summary) = stopped_and_resumed(&ds, c, 2, &part_dir);
        assert_eq!(history(&resumed), history(&full), "hgm {hgm}");
        assert_eq!(resumed_summary.test, full_summary.test);
        assert_eq!(resumed_summary.val, full_summary.val);
        assert_eq!(resumed_summary.best_epoch, full_summary.best_epoch);
        // The files agree too: four metrics lines, same best weights.
        let lines = std::fs::read_to_string(part_dir.join(run_dir::METRICS)).unwrap();
        assert_eq!(lines.lines().count(), 4);
        let a = Checkpoint::load(&part_dir.join(run_dir::BEST)).unwrap();
        let b = Checkpoint::load(&full_dir.join(run_dir::BEST)).unwrap();
        assert_eq!(a.get("head.weight").unwrap(), b.get("head.weight").unwrap());
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(part_dir.join(run_dir::SUMMARY)).unwrap(),
        )
        .unwrap();
        assert_eq!(summary["epochs"], 4);
    }
}

#[test]
fn joint_handles_a_missing_modality() {
    let spec = Synthetic {
        audio_missing_every: 3,
        ..Synthetic::default()
    };
    let data = synthetic("joint-missing", &spec);
    let ds = open(&data);
    let audio_test = ds
        .indices(Split::Test)
        .iter()
        .filter(|&&s| ds.has(1, s))
        .count();
    assert!(audio_test < 96 && audio_test > 0);
    let mut t = Trainer::new(Cpu, ds.clone(), cfg(MethodKind::Joint)).unwrap();
    let s = t.run(&mut Silent).unwrap();
    assert!(s.test.fused_accuracy > 0.8, "{s:?}");
    assert_eq!(s.test.samples, 96);
    assert!(s.test.fusion_accuracy.is_none());
    assert!(
        s.test.modality_accuracy.get("image").is_some()
            && s.test.modality_accuracy.get("audio").is_some()
    );
    assert!(s.hgm_surviving_fraction.is_empty());
    // Audio-only accuracy is measured on the samples having audio.
    let only_audio = t
        .evaluate(
            Split::Test,
            &EvalOptions {
                drop: vec!["image".into()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(only_audio.samples as usize, audio_test);
    assert_eq!(only_audio.modality_accuracy.get("image"), None);

    // MLA skips the missing samples in the audio step and still learns.
    let mut m = Trainer::new(Cpu, ds, cfg(MethodKind::Mla)).unwrap();
    let s = m.run(&mut Silent).unwrap();
    assert!(s.test.fused_accuracy > 0.8, "{s:?}");
}

#[test]
fn unimodal_trains_one_modality_on_the_samples_having_it() {
    let spec = Synthetic {
        audio_missing_every: 4,
        ..Synthetic::default()
    };
    let data = synthetic("unimodal", &spec);
    let ds = open(&data);
    let c = TrainConfig {
        modality: Some("audio".into()),
        epochs: 4,
        ..cfg(MethodKind::Unimodal)
    };
    let mut t = Trainer::new(Cpu, ds.clone(), c).unwrap();
    let with_audio = ds
        .indices(Split::Train)
        .iter()
        .filter(|&&s| ds.has(1, s))
        .count();
    assert_eq!(t.train_samples().len(), with_audio);
    assert_eq!(t.modalities(), &["audio".to_string()]);
    let s = t.run(&mut Silent).unwrap();
    assert_eq!(s.test.modality_accuracy.0.len(), 1);
    assert_eq!(
        s.test.modality_accuracy.get("audio").unwrap(),
        s.test.fused_accuracy
    );
    assert!(s.test.fused_accuracy > 0.4, "{s:?}");
    assert!(t.model().params().names().all(|n| !n.contains("image")));
}

#[test]
fn train_limit_takes_a_seeded_subset() {
    let data = synthetic("limit", &Synthetic::default());
    let ds = open(&data);
    let a = Trainer::new(
        Cpu,
        ds.clone(),
        TrainConfig {
            train_limit: Some(50),
            ..cfg(MethodKind::Mla)
        },
    )
    .unwrap();
    let b = Trainer::new(
        Cpu,
        ds.clone(),
        TrainConfig {
            train_limit: Some(50),
            ..cfg(MethodKind::Mla)
        },
    )
    .unwrap();
    let c = Trainer::new(
        Cpu,
        ds.clone(),
        TrainConfig {
            train_limit: Some(50),
            seed: 3,
            ..cfg(MethodKind::Mla)
        },
    )
    .unwrap();
    assert_eq!(a.train_samples().len(), 50);
    assert_eq!(a.train_samples(), b.train_samples());
    assert_ne!(a.train_samples(), c.train_samples());
    assert!(a
        .train_samples()
        .iter()
        .all(|&s| ds.split_of(s) == Split::Train));
    let e = Trainer::new(
        Cpu,
        ds.clone(),
        TrainConfig {
            eval_limit: Some(20),
            ..cfg(MethodKind::Mla)
        },
    )
    .unwrap();
    for split in [Split::Validation, Split::Test] {
        assert_eq!(e.eval_samples(split).len(), 20);
        assert!(e
            .eval_samples(split)
            .iter()
            .all(|&s| ds.split_of(s) == split));
    }
}

#[test]
fn checkpoint_reproduces_the_reported_test_metrics() {
    let data = synthetic("eval", &Synthetic::default());
    let ds = open(&data);
    let runs = TempDir::new("eval-runs");
    let dir = runs.join("run");
    let (_, s) = train_in(&ds, cfg(MethodKind::Mla), &dir);
    let ckpt = Checkpoint::load(&dir.join(run_dir::BEST)).unwrap();
    let (model, layout, c) = load_model(&Cpu, &ds, &ckpt).unwrap();
    let fit = load_fusion_fit(&ckpt, &layout).unwrap();
    assert_eq!(fit, s.fusion_fit);
    let test = ds.indices(Split::Test);
    let m = eval::evaluate(
        &model,
        &c,
        &layout,
        &ds,
        &test,
        &EvalOptions {
            gap: true,
            fit: fit.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(m, s.test);
    // Every rule from the checkpoint alone gives the summary's test number.
    let fa = s.test.fusion_accuracy.as_ref().unwrap();
    for r in FusionRule::CONCRETE {
        let m = eval::evaluate(
            &model,
            &c,
            &layout,
            &ds,
            &test,
            &EvalOptions {
                fusion: Some(r),
                fit: fit.clone(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(m.fused_accuracy, fa.get(r.as_str()).unwrap(), "{r}");
        assert_eq!(m.fusion_rule, Some(r));
    }
    // Without the fit only the parameter-free rules can run.
    let e = eval::evaluate(&model, &c, &layout, &ds, &test, &EvalOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("auto") && e.contains("validation"), "{e}");
    for f in [
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "best.safetensors",
        "last.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    // Dropping a modality at test time: fused accuracy is that of the other one.
    let no_audio = eval::evaluate(
        &model,
        &c,
        &layout,
        &ds,
        &test,
        &EvalOptions {
            drop: vec!["audio".into()],
            fit: fit.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        no_audio.fused_accuracy,
        s.test.modality_accuracy.get("image").unwrap()
    );
    let e = eval::evaluate(
        &model,
        &c,
        &layout,
        &ds,
        &test,
        &EvalOptions {
            drop: vec!["smell".into()],
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("smell") && e.contains("image, audio"), "{e}");
    // A run directory is never silently overwritten.
    let e = Trainer::new(Cpu, ds, cfg(MethodKind::Mla))
        .unwrap()
        .with_run_dir(&dir)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
}

#[test]
fn bad_configurations_are_clear_errors() {
    let data = synthetic("errors", &Synthetic::default());
    let ds = open(&data);
    let err = |c: TrainConfig| {
        Trainer::new(Cpu, ds.clone(), c)
            .err()
            .expect("must fail")
            .to_string()
    };
    let e = err(cfg(MethodKind::Unimodal));
    assert!(e.contains("--modality"), "{e}");
    let e = err(TrainConfig {
        modality: Some("smell".into()),
        ..cfg(MethodKind::Unimodal)
    });
    assert!(e.contains("smell") && e.contains("image, audio"), "{e}");
    let e = err(TrainConfig {
        encoder: "transformer".into(),
        ..cfg(MethodKind::Mla)
    });
    assert!(e.contains("transformer"), "{e}");
    let e = err(TrainConfig {
        encoder: "image=cnn,smell=mlp".into(),
        ..cfg(MethodKind::Mla)
    });
    assert!(e.contains("smell"), "{e}");
}

#[test]
fn diverging_training_stops_naming_epoch_and_step() {
    let data = synthetic("nan", &Synthetic::default());
    let c = TrainConfig {
        lr: 1e9,
        momentum: 0.0,
        hgm: HgmMode::None,
        ..cfg(MethodKind::Mla)
    };
    let mut t = Trainer::new(Cpu, open(&data), c).unwrap();
    match t.run(&mut Silent) {
        Err(e @ TrainError::NonFinite { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("epoch 1") && msg.contains("step"), "{msg}");
        }
        other => panic!("expected a non-finite loss error, got {other:?}"),
    }
}

#[test]
fn crafted_metadata_is_refused_before_a_model_is_built() {
    let data = synthetic("crafted", &Synthetic::default());
    let ds = open(&data);
    let runs = TempDir::new("crafted-runs");
    let dir = runs.join("run");
    train_in(
        &ds,
        TrainConfig {
            epochs: 1,
            ..cfg(MethodKind::Mla)
        },
        &dir,
    );
    let good = Checkpoint::load(&dir.join(run_dir::LAST)).unwrap();
    // A feature size of 10^9 would size every layer: refused from the head's shape.
    let mut c = good.clone();
    let mut cfg_json: serde_json::Value = c.json("config").unwrap();
    cfg_json["feature_size"] = serde_json::json!(1_000_000_000u64);
    c.set_json("config", &cfg_json).unwrap();
    let path = runs.join("crafted.safetensors");
    c.save(&path).unwrap();
    let e = load_model(&Cpu, &ds, &Checkpoint::load(&path).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("feature size 1000000000") && e.contains("crafted.safetensors"),
        "{e}"
    );
    // A trainer state claiming a million epochs is refused on resume.
    let mut c = good.clone();
    let mut st: serde_json::Value = c.json("trainer_state").unwrap();
    st["epochs_done"] = serde_json::json!(1_000_000u64);
    c.set_json("trainer_state", &st).unwrap();
    c.save(&dir.join(run_dir::LAST)).unwrap();
    let e = Trainer::resume(Cpu, ds, &dir, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("inconsistent") && e.contains("1000000 epochs done"),
        "{e}"
    );
}

#[test]
fn overflowing_logits_are_an_error_naming_modality_and_sample() {
    let data = synthetic("huge-head", &Synthetic::default());
    let ds = open(&data);
    let runs = TempDir::new("huge-head-runs");
    let dir = runs.join("run");
    train_in(
        &ds,
        TrainConfig {
            epochs: 1,
            ..cfg(MethodKind::Mla)
        },
        &dir,
    );
    // Finite weights whose products overflow f32: the logits become infinite.
    let mut c = Checkpoint::load(&dir.join(run_dir::BEST)).unwrap();
    let w = c.get("head.weight").unwrap().clone();
    let huge: Vec<f32> = w.data.iter().map(|v| v.signum() * 3e38).collect();
    let t = mla_core::Tensor::<f32, Cpu>::from_slice(&Cpu, &huge, w.shape.clone()).unwrap();
    c.insert_tensor("head.weight", &t).unwrap();
    let path = runs.join("huge.safetensors");
    c.save(&path).unwrap();
    let ckpt = Checkpoint::load(&path).unwrap();
    let (model, layout, c) = load_model(&Cpu, &ds, &ckpt).unwrap();
    let e = eval::evaluate(
        &model,
        &c,
        &layout,
        &ds,
        &ds.indices(Split::Test),
        &EvalOptions {
            fit: load_fusion_fit(&ckpt, &layout).unwrap(),
            ..Default::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("non-finite logit") && e.contains("modality image") && e.contains("for sample"),
        "{e}"
    );
}
