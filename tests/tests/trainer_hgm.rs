//! HGM in the trainer. Alpha schedules and relative alpha: the per-epoch
//! alpha follows the schedule, and a run stopped mid-way resumes exactly.
//! The forgetting measure: MLA reports, per epoch, how much a modality step
//! raised the other modalities' probe loss through the shared head. With HGM
//! at a tiny alpha the head weight's gradient is projected away almost
//! entirely, so the measure shrinks against a run without HGM.

mod trainer_common;

use mla_cpu::Cpu;
use mla_models::data::Dataset;
use mla_models::trainer::{
    AlphaMode, AlphaSchedule, HgmMode, MethodKind, Silent, TrainConfig, Trainer,
};
use std::sync::Arc;
use trainer_common::{history, synthetic, Synthetic, TempDir};

fn cfg(hgm: HgmMode, alpha: f64) -> TrainConfig {
    TrainConfig {
        method: MethodKind::Mla,
        epochs: 2,
        batch_size: 16,
        eval_batch_size: 64,
        lr: 0.3,
        // Without momentum and weight decay the head moves only by this
        // step's gradient, so HGM's projection is all that holds it.
        momentum: 0.0,
        weight_decay: 0.0,
        hgm,
        alpha,
        ..TrainConfig::default()
    }
}

#[test]
fn forgetting_is_reported_and_shrinks_when_hgm_freezes_the_head_weight() {
    let data = synthetic("forget", &Synthetic::default());
    let ds = Arc::new(Dataset::open(data.path()).unwrap());
    let run = |c: TrainConfig| {
        let mut t = Trainer::new(Cpu, ds.clone(), c).unwrap();
        let s = t.run(&mut Silent).unwrap();
        (s, t.state().history.clone())
    };
    let (none, hist) = run(cfg(HgmMode::None, 1.0));
    assert_eq!(none.forgetting_loss_increase.len(), 2);
    let f = hist[0]
        .forgetting
        .as_ref()
        .expect("MLA measures forgetting");
    // 384 train samples / 16 = 24 batches, probed at batch 16: 2 modality
    // steps, each measuring the other modality.
    assert_eq!(f.measurements, 2);
    assert_eq!(f.probe_samples, 96);
    assert!(f.loss_increase_by_modality.get("image").is_some());
    assert!(f.loss_increase_by_modality.get("audio").is_some());
    let moved: f64 = none.forgetting_loss_increase.iter().map(|v| v.abs()).sum();
    assert!(moved > 1e-3, "without HGM the head moves: {moved}");
    let (frozen, _) = run(cfg(HgmMode::Owm, 1e-8));
    let still: f64 = frozen
        .forgetting_loss_increase
        .iter()
        .map(|v| v.abs())
        .sum();
    eprintln!("forgetting without HGM {moved}, with a tiny alpha {still}");
    // HGM projects head.weight's gradient only; the bias still moves, so the
    // measure shrinks rather than vanishes.
    assert!(
        still < 0.5 * moved,
        "HGM with a tiny alpha keeps the head: {still} vs {moved}"
    );
    // Joint has no modality steps to measure.
    let mut j = cfg(HgmMode::None, 1.0);
    j.method = MethodKind::Joint;
    let (joint, jh) = run(j);
    assert!(joint.forgetting_loss_increase.is_empty() && jh[0].forgetting.is_none());
}

#[test]
fn alpha_schedule_and_relative_alpha_follow_the_config_and_resume_exactly() {
    let data = synthetic("alpha", &Synthetic::default());
    let ds = Arc::new(Dataset::open(data.path()).unwrap());
    let runs = TempDir::new("alpha-runs");
    for (mode, schedule) in [
        (
            AlphaMode::Absolute,
            AlphaSchedule::Linear {
                start: 1e3,
                end: 10.0,
            },
        ),
        (AlphaMode::Relative, AlphaSchedule::Constant),
        (
            AlphaMode::Relative,
            AlphaSchedule::Linear {
                start: 0.5,
                end: 2.0,
            },
        ),
    ] {
        let c = TrainConfig {
            hgm: HgmMode::Owm,
            alpha: 3.0,
            alpha_mode: mode,
            alpha_schedule: schedule,
            epochs: 3,
            ..cfg(HgmMode::Owm, 3.0)
        };
        let mut full = Trainer::new(Cpu, ds.clone(), c.clone()).unwrap();
        full.run(&mut Silent).unwrap();
        let alphas: Vec<f64> = full
            .state()
            .history
            .iter()
            .map(|r| r.hgm_alpha.unwrap())
            .collect();
        if mode == AlphaMode::Absolute {
            // 24 batches an epoch, 72 steps: the last step of epoch e is step 24 e - 1 of 71.
            let want: Vec<f64> = (1..=3)
                .map(|e| schedule.at(3.0, (24 * e - 1) as f64 / 71.0))
                .collect();
            assert_eq!(alphas, want);
            assert_eq!(alphas[2], 10.0);
        } else {
            // Relative: alpha times the running mean of r^T r, positive, and
            // not the configured number itself.
            assert!(
                alphas
                    .iter()
                    .all(|&a| a > 0.0 && a.is_finite() && (a - 3.0).abs() > 1e-6),
                "{alphas:?}"
            );
        }
        // Stopped after one epoch (same config), then resumed: identical.
        let dir = runs.join(&format!("{mode}-{schedule}"));
        let mut part = Trainer::new(Cpu, ds.clone(), c.clone())
            .unwrap()
            .with_run_dir(&dir)
            .unwrap();
        part.run_epoch(&mut Silent).unwrap();
        drop(part);
        let mut resumed = Trainer::resume(Cpu, ds.clone(), &dir, None).unwrap();
        resumed.run(&mut Silent).unwrap();
        assert_eq!(history(&resumed), history(&full), "{mode} {schedule}");
    }
    // Alpha options without HGM are refused.
    let bad = TrainConfig {
        hgm: HgmMode::None,
        alpha_mode: AlphaMode::Relative,
        ..cfg(HgmMode::None, 1.0)
    };
    assert!(bad.validate().unwrap_err().contains("need HGM"));
}
