//! The forgetting measure: MLA reports, per epoch, how much a modality step
//! raised the other modalities' probe loss through the shared head. With HGM
//! at a tiny alpha the head weight's gradient is projected away almost
//! entirely, so the measure shrinks against a run without HGM.

mod trainer_common;

use mla_cpu::Cpu;
use mla_models::data::Dataset;
use mla_models::trainer::{HgmMode, Method, Silent, TrainConfig, Trainer};
use std::sync::Arc;
use trainer_common::{synthetic, Synthetic};

fn cfg(hgm: HgmMode, alpha: f64) -> TrainConfig {
    TrainConfig {
        method: Method::Mla,
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
fn forgetting_is_reported_and_vanishes_when_hgm_freezes_the_head() {
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
    j.method = Method::Joint;
    let (joint, jh) = run(j);
    assert!(joint.forgetting_loss_increase.is_empty() && jh[0].forgetting.is_none());
}
