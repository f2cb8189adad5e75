//! The MLA trainer on CUDA against the CPU backend, from the same seed (so the
//! same initial weights and batches): one full step (both modalities, HGM on)
//! gives the same loss, parameters, optimizer state and P; one epoch reaches
//! the same accuracy within a point. Synthetic data (the trainer tests'
//! generator), so it runs wherever the binaries do.

mod cuda_common;
mod trainer_common;

use cuda_common::cuda;
use mla_core::Backend;
use mla_cpu::Cpu;
use mla_models::data::Dataset;
use mla_models::trainer::{HgmMode, MethodKind, Silent, TrainConfig, Trainer};
use std::sync::Arc;
use trainer_common::{synthetic, Synthetic};

fn mla_cfg(batch: usize) -> TrainConfig {
    TrainConfig {
        method: MethodKind::Mla,
        epochs: 1,
        batch_size: batch,
        eval_batch_size: 128,
        lr: 0.05,
        hgm: HgmMode::Owm,
        ..TrainConfig::default()
    }
}

fn trainer<B: Backend<f32>>(backend: B, ds: &Arc<Dataset>, cfg: &TrainConfig) -> Trainer<B> {
    Trainer::new(backend, ds.clone(), cfg.clone()).unwrap()
}

#[test]
fn one_mla_step_matches_cpu() {
    let Some(cuda) = cuda() else { return };
    // 32 training samples, batch 32: the epoch is exactly one MLA step.
    let data = synthetic(
        "cuda-step",
        &Synthetic {
            train: 32,
            val: 16,
            test: 16,
            ..Synthetic::default()
        },
    );
    let ds = Arc::new(Dataset::open(data.path()).unwrap());
    let cfg = mla_cfg(32);
    let mut on_cpu = trainer(Cpu, &ds, &cfg);
    let mut on_gpu = trainer(cuda.clone(), &ds, &cfg);
    // Same initial weights.
    let (c0, g0) = (on_cpu.checkpoint().unwrap(), on_gpu.checkpoint().unwrap());
    for name in c0.names() {
        assert_eq!(
            c0.get(name).unwrap(),
            g0.get(name).unwrap(),
            "initial {name}"
        );
    }
    let rc = on_cpu.run_epoch(&mut Silent).unwrap();
    let rg = on_gpu.run_epoch(&mut Silent).unwrap();
    assert!(
        (rc.train_loss - rg.train_loss).abs() <= 1e-5 * rc.train_loss.abs().max(1.0),
        "loss: cpu {} cuda {}",
        rc.train_loss,
        rg.train_loss
    );
    let (cc, cg) = (on_cpu.checkpoint().unwrap(), on_gpu.checkpoint().unwrap());
    let names: Vec<&str> = cc.names().collect();
    assert_eq!(names, cg.names().collect::<Vec<_>>());
    assert!(
        names
            .iter()
            .any(|n| *n == "hgm.p" || n.starts_with("hgm.p.")),
        "no HGM state in {names:?}"
    );
    for name in names {
        let (a, b) = (cc.get(name).unwrap(), cg.get(name).unwrap());
        assert_eq!(a.shape, b.shape, "{name}");
        cuda_common::assert_close(name, &b.data, &a.data, 1e-4, 1e-5);
    }
    // HGM kept part of the head gradient on both, the same part.
    let (fc, fg) = (
        rc.hgm_surviving_fraction.unwrap(),
        rg.hgm_surviving_fraction.unwrap(),
    );
    assert!(
        (fc - fg).abs() <= 1e-4,
        "surviving fraction: cpu {fc} cuda {fg}"
    );
}

#[test]
fn one_epoch_reaches_the_same_accuracy() {
    let Some(cuda) = cuda() else { return };
    let data = synthetic(
        "cuda-epoch",
        &Synthetic {
            train: 768,
            val: 200,
            test: 1000,
            ..Synthetic::default()
        },
    );
    let ds = Arc::new(Dataset::open(data.path()).unwrap());
    let cfg = mla_cfg(32);
    let sc = trainer(Cpu, &ds, &cfg).run(&mut Silent).unwrap();
    let sg = trainer(cuda.clone(), &ds, &cfg).run(&mut Silent).unwrap();
    eprintln!(
        "1 epoch, test accuracy: cpu fused {:.4} {:?}; cuda fused {:.4} {:?}",
        sc.test.fused_accuracy,
        sc.test.modality_accuracy,
        sg.test.fused_accuracy,
        sg.test.modality_accuracy
    );
    assert!(
        sc.test.fused_accuracy > 0.5,
        "the CPU run did not learn: {sc:?}"
    );
    // The fused accuracy saturates on this data after one epoch; the audio
    // (hard) modality does not, so the comparison below is not vacuous.
    assert!(
        sc.test.modality_accuracy.get("audio").unwrap() < 0.95,
        "{:?}",
        sc.test.modality_accuracy
    );
    assert!(
        (sc.test.fused_accuracy - sg.test.fused_accuracy).abs() <= 0.01,
        "cpu {:?}\ncuda {:?}",
        sc.test,
        sg.test
    );
    for (m, acc) in sc.test.modality_accuracy.iter() {
        let other = sg.test.modality_accuracy.get(m).unwrap();
        assert!((acc - other).abs() <= 0.01, "{m}: cpu {acc} cuda {other}");
    }
}
