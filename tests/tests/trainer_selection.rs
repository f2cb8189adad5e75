//! Trainer invariants for every method: model selection keeps the first of
//! tied epochs and `best.safetensors` holds that epoch's weights (it is not
//! overwritten by later epochs); the optimizer steps exactly the parameters
//! a method's step used, so MLA's inactive encoder gets no "ghost" step
//! (no momentum, weight decay or Adam step count from a zero gradient).

mod trainer_common;

use mla_cpu::Cpu;
use mla_models::checkpoint::Checkpoint;
use mla_models::data::Dataset;
use mla_models::trainer::{
    run_dir, GblendingParams, MethodKind, OptimizerKind, TrainConfig, Trainer,
};
use std::sync::Arc;
use trainer_common::{synthetic, train_in, Synthetic, TempDir};

const METHODS: [MethodKind; 10] = [
    MethodKind::Mla,
    MethodKind::Joint,
    MethodKind::Unimodal,
    MethodKind::Ogm,
    MethodKind::OgmGe,
    MethodKind::Pmr,
    MethodKind::Mmpareto,
    MethodKind::Agm,
    MethodKind::Reconboost,
    MethodKind::Gblending,
];

fn cfg(method: MethodKind) -> TrainConfig {
    TrainConfig {
        method,
        modality: (method == MethodKind::Unimodal).then(|| "image".to_string()),
        gblending: (method == MethodKind::Gblending).then_some(GblendingParams {
            every: 0,
            epochs: 1,
            ..GblendingParams::default()
        }),
        encoder: "mlp".into(),
        feature_size: 16,
        batch_size: 32,
        eval_batch_size: 64,
        hgm: if method == MethodKind::Mla {
            mla_models::trainer::HgmMode::Owm
        } else {
            mla_models::trainer::HgmMode::None
        },
        ..TrainConfig::default()
    }
}

fn weights(c: &Checkpoint) -> Vec<(String, Vec<f32>)> {
    c.names()
        .filter(|n| n.starts_with("encoder.") || n.starts_with("head"))
        .map(|n| {
            let t = c.get(n).unwrap().to_tensor(&Cpu).unwrap();
            (n.to_string(), t.to_vec().unwrap())
        })
        .collect()
}

#[test]
fn ties_keep_the_first_epoch_and_best_is_never_overwritten() {
    let data = synthetic("select", &Synthetic::default());
    let ds = Arc::new(Dataset::open(data.path()).unwrap());
    let runs = TempDir::new("select-runs");
    for method in METHODS {
        // A learning rate so small that every epoch moves the weights (in
        // their last bits) but no validation prediction: three tied epochs.
        let c = TrainConfig {
            lr: 1e-6,
            momentum: 0.0,
            epochs: 3,
            ..cfg(method)
        };
        let dir = runs.join(&format!("three-{method}"));
        let (t, s) = train_in(&ds, c.clone(), &dir);
        let h = &t.state().history;
        assert!(
            h.iter()
                .all(|r| r.val.fused_accuracy == h[0].val.fused_accuracy),
            "{method}: the fixture must tie: {:?}",
            h.iter().map(|r| r.val.fused_accuracy).collect::<Vec<_>>()
        );
        assert_eq!(s.best_epoch, 1, "{method}: ties keep the first epoch");
        assert_eq!(
            h.iter().map(|r| r.best).collect::<Vec<_>>(),
            vec![true, false, false]
        );
        let one = runs.join(&format!("one-{method}"));
        train_in(&ds, TrainConfig { epochs: 1, ..c }, &one);
        let best = weights(&Checkpoint::load(&dir.join(run_dir::BEST)).unwrap());
        let last = weights(&Checkpoint::load(&dir.join(run_dir::LAST)).unwrap());
        let epoch1 = weights(&Checkpoint::load(&one.join(run_dir::LAST)).unwrap());
        assert_ne!(last, epoch1, "{method}: the fixture must move the weights");
        assert_eq!(best, epoch1, "{method}: best.safetensors is epoch 1's");
    }
}

#[test]
fn only_the_parameters_a_step_used_are_stepped() {
    let data = synthetic("ghost", &Synthetic::default());
    let ds = Arc::new(Dataset::open(data.path()).unwrap());
    for method in METHODS {
        // Adam counts steps per parameter: a ghost step on a zero gradient
        // would count too.
        let c = TrainConfig {
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            ..cfg(method)
        };
        let mut t = Trainer::new(Cpu, ds.clone(), c).unwrap();
        t.time_steps(0, 3).unwrap();
        for name in t.model().params().names() {
            let steps = t.optimizer().param_steps(name);
            // MLA: each modality's step moves its encoder and the shared
            // head, so the head takes two steps per batch, each encoder one.
            // ReconBoost's first epoch is phase 1 on image: the audio
            // encoder and beta take no step.
            let want = if method == MethodKind::Mla && name.starts_with("head.") {
                6
            } else if method == MethodKind::Reconboost
                && (name.starts_with("encoder.audio.") || name == "head.beta")
            {
                0
            } else {
                3
            };
            assert_eq!(steps, want, "{method}: {name}");
        }
    }
}
