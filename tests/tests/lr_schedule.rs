//! Learning-rate schedules: the per-epoch rates against their closed forms,
//! parsing, and in training (each epoch's rate in its record, epoch 1 the
//! same as a constant run, exact resume).

mod trainer_common;

use mla_models::trainer::{HgmMode, LrSchedule, MethodKind, TrainConfig};
use std::sync::Arc;
use trainer_common::{history, stopped_and_resumed, synthetic, train_in, Synthetic, TempDir};

#[test]
fn rates_follow_the_closed_forms() {
    let cos = LrSchedule::Cosine;
    let want = [
        0.1,
        0.1 * (1.0 + (std::f64::consts::PI / 4.0).cos()) / 2.0,
        0.05,
        0.1 * (1.0 + (3.0 * std::f64::consts::PI / 4.0).cos()) / 2.0,
    ];
    for (e, w) in want.iter().enumerate() {
        assert!((cos.at(0.1, e + 1, 4) - w).abs() < 1e-15, "epoch {}", e + 1);
    }
    let step: LrSchedule = "step:2:0.5".parse().unwrap();
    let got: Vec<f64> = (1..=5).map(|e| step.at(0.08, e, 5)).collect();
    assert_eq!(got, vec![0.08, 0.08, 0.04, 0.04, 0.02]);
    assert_eq!(LrSchedule::Constant.at(0.3, 7, 9), 0.3);
    assert_eq!("cosine".parse::<LrSchedule>().unwrap(), LrSchedule::Cosine);
    assert_eq!(step.to_string(), "step:2:0.5");
    for bad in [
        "linear",
        "step:0:0.5",
        "step:2:1.5",
        "step:2:0",
        "step:x:0.5",
        "step:2",
    ] {
        let err = bad.parse::<LrSchedule>().unwrap_err().to_string();
        assert!(err.contains("step:N:GAMMA"), "{bad}: {err}");
    }
}

#[test]
fn training_uses_each_epochs_rate_and_resumes_exactly() {
    let data = synthetic("lr-schedule", &Synthetic::default());
    let ds = Arc::new(mla_models::data::Dataset::open(data.path()).unwrap());
    let runs = TempDir::new("lr-schedule-runs");
    let cfg = |schedule: LrSchedule| TrainConfig {
        method: MethodKind::Joint,
        encoder: "mlp".into(),
        feature_size: 16,
        epochs: 3,
        batch_size: 32,
        lr: 0.05,
        lr_schedule: schedule,
        hgm: HgmMode::None,
        ..TrainConfig::default()
    };
    let step = LrSchedule::Step {
        every: 1,
        gamma: 0.5,
    };
    let (scheduled, _) = train_in(&ds, cfg(step), &runs.join("step"));
    let (constant, _) = train_in(&ds, cfg(LrSchedule::Constant), &runs.join("constant"));
    let (hs, hc) = (history(&scheduled), history(&constant));
    let lrs: Vec<f64> = hs.iter().map(|r| r.lr.unwrap()).collect();
    assert_eq!(lrs, vec![0.05, 0.025, 0.0125]);
    assert!(hc.iter().all(|r| r.lr == Some(0.05)));
    // Epoch 1 runs at the same rate: the same record; later epochs differ.
    assert_eq!(hs[0], hc[0]);
    assert_ne!(hs[1].train_loss, hc[1].train_loss);
    let (resumed, _) = stopped_and_resumed(&ds, cfg(LrSchedule::Cosine), 1, &runs.join("cos-r"));
    let (full, _) = train_in(&ds, cfg(LrSchedule::Cosine), &runs.join("cos"));
    assert_eq!(history(&full), history(&resumed));
}
