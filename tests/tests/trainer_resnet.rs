//! ResNet encoders in the trainer: batch-norm statistics change only for the
//! encoders a step ran (ReconBoost's phase 1 trains image alone), never at
//! evaluation, are never stepped by the optimizer, and travel in checkpoints
//! so that resume is exact.

mod trainer_common;

use mla_cpu::Cpu;
use mla_models::data::{Dataset, Split};
use mla_models::trainer::{EvalOptions, FusionRule, MethodKind, TrainConfig, Trainer};
use std::collections::BTreeMap;
use std::sync::Arc;
use trainer_common::{history, stopped_and_resumed, synthetic, train_in, Synthetic, TempDir};

fn cfg(method: MethodKind) -> TrainConfig {
    TrainConfig {
        method,
        encoder: "resnet18-small".into(),
        width_mult: 0.125,
        feature_size: 64,
        epochs: 1,
        batch_size: 32,
        eval_batch_size: 64,
        lr: 0.02,
        hgm: if method == MethodKind::Mla {
            mla_models::trainer::HgmMode::Owm
        } else {
            mla_models::trainer::HgmMode::None
        },
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

fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
}

#[test]
fn batch_norm_statistics_move_only_for_the_encoders_that_ran() {
    let d = synthetic("rn-bn", &Synthetic::default());
    let ds = Arc::new(Dataset::open(d.path()).unwrap());
    // ReconBoost's first epoch is phase 1 on image alone.
    let mut t = Trainer::new(Cpu, ds.clone(), cfg(MethodKind::Reconboost)).unwrap();
    let before = params(&t);
    assert!(before.contains_key("encoder.image.layer1.0.bn1.running_mean"));
    assert!(before.contains_key("encoder.audio.layer4.1.bn2.running_var"));
    t.time_steps(0, 3).unwrap();
    let after = params(&t);
    let mut moved_image = 0;
    for (n, v) in &after {
        if !is_buffer(n) {
            continue;
        }
        if n.starts_with("encoder.image.") {
            moved_image += usize::from(v != &before[n]);
        } else {
            assert_eq!(v, &before[n], "{n}: audio did not run");
        }
    }
    assert!(moved_image > 30, "{moved_image} image buffers moved");
    // The summary's parameter count leaves the buffers out.
    let trainable: usize = after
        .iter()
        .filter(|(n, _)| !is_buffer(n))
        .map(|(_, v)| v.len())
        .sum();
    let prov = mla_models::trainer::provenance::Provenance::of(&ds, t.model());
    assert_eq!(prov.parameters as usize, trainable);
    assert!(trainable < after.values().map(Vec::len).sum::<usize>());
    assert_eq!(after["encoder.image.bn1.num_batches_tracked"], vec![3.0]);
    // No optimizer state for a buffer: no gradient reaches one.
    let names: Vec<String> = t.model().params().names().map(String::from).collect();
    for n in names.iter().filter(|n| is_buffer(n)) {
        assert_eq!(t.optimizer().param_steps(n), 0, "{n}");
    }
    // Evaluation reads the running statistics and leaves them alone, and is
    // deterministic.
    let mean = EvalOptions {
        fusion: Some(FusionRule::Mean),
        ..EvalOptions::default()
    };
    let a = t.evaluate(Split::Validation, &mean).unwrap();
    let b = t.evaluate(Split::Validation, &mean).unwrap();
    assert_eq!(a, b);
    assert_eq!(params(&t), after);
}

#[test]
fn resnet_models_learn_and_resume_exactly() {
    let d = synthetic("rn-resume", &Synthetic::default());
    let ds = Arc::new(Dataset::open(d.path()).unwrap());
    let runs = TempDir::new("rn-resume-runs");
    for m in [MethodKind::Mla, MethodKind::Joint] {
        let c = TrainConfig {
            epochs: 3,
            ..cfg(m)
        };
        let (full, fs) = train_in(&ds, c.clone(), &runs.join(&format!("full-{m}")));
        let (resumed, rs) =
            stopped_and_resumed(&ds, c.clone(), 1, &runs.join(&format!("part-{m}")));
        assert_eq!(history(&resumed), history(&full), "{m}");
        assert_eq!(params(&resumed), params(&full), "{m}");
        assert_eq!(rs.test, fs.test, "{m}");
        // 4 classes: chance is 0.25.
        assert!(
            fs.test.fused_accuracy > 0.5,
            "{m}: {}",
            fs.test.fused_accuracy
        );
    }
}

#[test]
fn a_feature_size_other_than_the_resnet_width_is_a_clear_error() {
    let d = synthetic("rn-size", &Synthetic::default());
    let ds = Arc::new(Dataset::open(d.path()).unwrap());
    let e = match Trainer::new(
        Cpu,
        ds,
        TrainConfig {
            feature_size: 128,
            ..cfg(MethodKind::Joint)
        },
    ) {
        Ok(_) => panic!("a wrong feature size was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("resnet18-small") && e.contains("--feature-size 64"),
        "{e}"
    );
}
