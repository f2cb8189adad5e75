//! End to end on real AV-MNIST: prepare it from the raw sources, train MLA
//! (default recipe: cnn encoders, SGD, HGM owm) on a seeded subset, and check
//! it is far above chance on held-out test samples, for both modalities, and
//! that the selected checkpoint reproduces the reported test metrics.
//! Skipped, with a message, when the raw sources are absent (as the data tests).

mod data_common;
mod trainer_common;

use mla_cpu::Cpu;
use mla_models::checkpoint::Checkpoint;
use mla_models::data::{prepare_avmnist, AvmnistOptions, Dataset, Split};
use mla_models::trainer::{
    eval, load_fusion_fit, load_model, run_dir, EvalOptions, FusionRule, MethodKind, Silent,
    TrainConfig, Trainer,
};
use std::sync::Arc;
use trainer_common::TempDir;

#[test]
fn mla_on_real_avmnist_subset_is_far_above_chance() {
    let Some(raw) = data_common::avmnist_raw() else {
        return;
    };
    let tmp = TempDir::new("avmnist-e2e");
    let data = tmp.join("avmnist");
    prepare_avmnist(&AvmnistOptions::new(&raw, &data), &mut |_| {}).unwrap();
    let ds = Arc::new(Dataset::open(&data).unwrap());
    let cfg = TrainConfig {
        method: MethodKind::Mla,
        epochs: 3,
        train_limit: Some(3000),
        eval_limit: Some(500),
        ..TrainConfig::default()
    };
    let run = tmp.join("run");
    let mut t = Trainer::new(Cpu, ds.clone(), cfg)
        .unwrap()
        .with_run_dir(&run)
        .unwrap();
    let s = t.run(&mut Silent).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&s).unwrap());
    // Chance is 0.10 on ten balanced digits; the test speaker is unseen in training.
    // (The same run scored fused 0.89, image 0.88, audio 0.41 on 1,000 test samples.)
    assert!(
        s.test.fused_accuracy > 0.7,
        "fused {}",
        s.test.fused_accuracy
    );
    assert!(s.test.modality_accuracy.get("image").unwrap() > 0.7);
    assert!(s.test.modality_accuracy.get("audio").unwrap() > 0.25);
    assert_eq!(s.test.samples, 500);
    assert!(t
        .eval_samples(Split::Test)
        .iter()
        .all(|&i| ds.split_of(i) == Split::Test));

    let ckpt = Checkpoint::load(&run.join(run_dir::BEST)).unwrap();
    let (model, layout, cfg) = load_model(&Cpu, &ds, &ckpt).unwrap();
    let m = eval::evaluate(
        &model,
        &cfg,
        &layout,
        &ds,
        t.eval_samples(Split::Test),
        &EvalOptions {
            gap: true,
            fit: load_fusion_fit(&ckpt, &layout).unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    // Every rule, the fitted ones included, as the summary reported it.
    assert_eq!(m, s.test);
    assert_eq!(
        m.fusion_accuracy.as_ref().map(|f| f.0.len()),
        Some(FusionRule::CONCRETE.len())
    );
}
