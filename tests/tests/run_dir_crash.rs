//! Run directories through interruptions (issue 14): a run stopped right
//! after any write of an epoch (best, last, metrics, summary), or before its
//! first checkpoint, resumes to the same files and metrics as an
//! uninterrupted run; `--resume` first makes `metrics.jsonl` and
//! `summary.json` agree with `last.safetensors`; stale temp files are removed;
//! a directory holding any run file is refused unless overwriting.

mod trainer_common;

use mla_cpu::Cpu;
use mla_models::checkpoint::Checkpoint;
use mla_models::data::Dataset;
use mla_models::trainer::{run_dir, MethodKind, Silent, Summary, TrainConfig, Trainer};
use std::path::Path;
use std::sync::Arc;
use trainer_common::{history, synthetic, train_in, Synthetic, TempDir};

fn cfg() -> TrainConfig {
    TrainConfig {
        method: MethodKind::Mla,
        encoder: "mlp".into(),
        feature_size: 16,
        epochs: 3,
        batch_size: 32,
        eval_batch_size: 64,
        lr: 0.02,
        ..TrainConfig::default()
    }
}

fn summary(dir: &Path) -> Summary {
    serde_json::from_str(&std::fs::read_to_string(dir.join(run_dir::SUMMARY)).unwrap()).unwrap()
}

fn metrics_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join(run_dir::METRICS))
        .unwrap()
        .lines()
        .count()
}

/// Epochs done in `last.safetensors` (0 when there is none yet).
fn epochs_in_last(dir: &Path) -> usize {
    if !dir.join(run_dir::LAST).exists() {
        return 0;
    }
    let c = Checkpoint::load(&dir.join(run_dir::LAST)).unwrap();
    let s: serde_json::Value = c.json("trainer_state").unwrap();
    s["epochs_done"].as_u64().unwrap() as usize
}

#[test]
fn a_run_stopped_after_any_write_resumes_to_the_uninterrupted_result() {
    let data = synthetic("crash", &Synthetic::default());
    let ds = Arc::new(Dataset::open(data.path()).unwrap());
    let runs = TempDir::new("crash-runs");
    let full_dir = runs.join("full");
    let (full, full_summary) = train_in(&ds, cfg(), &full_dir);
    let best_full = Checkpoint::load(&full_dir.join(run_dir::BEST)).unwrap();
    // Epoch 1 writes best, last, metrics, summary (4 writes); epoch 2 writes
    // 3 or 4 depending on whether it is a new best. Stop after each of the
    // first 8 writes.
    let mut stopped_mid_epoch = 0;
    for n in 1..=8 {
        let dir = runs.join(&format!("stop-{n}"));
        let mut t = Trainer::new(Cpu, ds.clone(), cfg())
            .unwrap()
            .with_run_dir(&dir)
            .unwrap();
        t.stop_after_writes(n);
        let err = t.run(&mut Silent).unwrap_err().to_string();
        assert!(err.contains("injected"), "{err}");
        drop(t);
        // A leftover temp file of an interrupted write.
        let stale = dir.join(".last.safetensors.tmp-999999");
        std::fs::write(&stale, b"partial").unwrap();
        let last = epochs_in_last(&dir);
        let behind = |d: &Path| {
            !d.join(run_dir::SUMMARY).exists()
                || metrics_lines(d) != last
                || summary(d).epochs != last
        };
        if last > 0 && behind(&dir) {
            stopped_mid_epoch += 1;
        }
        let mut resumed = Trainer::resume(Cpu, ds.clone(), &dir, None).unwrap();
        // Recovery: the files describe the checkpoint's epoch again (none
        // before the first checkpoint: the run starts over).
        assert!(!stale.exists(), "stop {n}: stale temp file kept");
        if last > 0 {
            assert_eq!(metrics_lines(&dir), last, "stop {n}");
            assert_eq!(summary(&dir).epochs, last, "stop {n}");
        } else {
            assert!(!dir.join(run_dir::METRICS).exists() && !dir.join(run_dir::BEST).exists());
        }
        let s = resumed.run(&mut Silent).unwrap();
        assert_eq!(history(&resumed), history(&full), "stop {n}");
        assert_eq!(s.test, full_summary.test, "stop {n}");
        assert_eq!(s.best_epoch, full_summary.best_epoch, "stop {n}");
        assert_eq!(summary(&dir).test, full_summary.test, "stop {n}");
        assert_eq!(metrics_lines(&dir), 3);
        let best = Checkpoint::load(&dir.join(run_dir::BEST)).unwrap();
        assert_eq!(
            best.get("head.weight").unwrap(),
            best_full.get("head.weight").unwrap(),
            "stop {n}"
        );
    }
    assert!(
        stopped_mid_epoch >= 2,
        "the stops must leave the files behind the checkpoint"
    );
}

#[test]
fn a_run_stopped_before_its_first_checkpoint_starts_over_from_its_config() {
    let data = synthetic("crash-early", &Synthetic::default());
    let ds = Arc::new(Dataset::open(data.path()).unwrap());
    let runs = TempDir::new("crash-early-runs");
    let dir = runs.join("early");
    // Only config.json (and a temp file) exist: killed during epoch 1.
    drop(
        Trainer::new(Cpu, ds.clone(), cfg())
            .unwrap()
            .with_run_dir(&dir)
            .unwrap(),
    );
    std::fs::write(dir.join(".summary.json.tmp-12345"), b"{").unwrap();
    let mut t = Trainer::resume(Cpu, ds.clone(), &dir, Some(2)).unwrap();
    assert_eq!(t.state().epochs_done, 0);
    let s = t.run(&mut Silent).unwrap();
    let mut straight = Trainer::new(Cpu, ds.clone(), TrainConfig { epochs: 2, ..cfg() }).unwrap();
    assert_eq!(s.test, straight.run(&mut Silent).unwrap().test);
    assert!(!dir.join(".summary.json.tmp-12345").exists());
    assert_eq!(metrics_lines(&dir), 2);
}

#[test]
fn a_directory_with_any_run_file_is_refused_unless_overwriting() {
    let data = synthetic("crash-out", &Synthetic::default());
    let ds = Arc::new(Dataset::open(data.path()).unwrap());
    let runs = TempDir::new("crash-out-runs");
    for f in run_dir::RUN_FILES {
        let dir = runs.join(&format!("has-{f}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(f), b"earlier run").unwrap();
        let err = match Trainer::new(Cpu, ds.clone(), cfg())
            .unwrap()
            .with_run_dir(&dir)
        {
            Ok(_) => panic!("{f}: an earlier run was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(f) && err.contains("--overwrite"), "{err}");
        assert_eq!(std::fs::read(dir.join(f)).unwrap(), b"earlier run");
        let t = Trainer::new(Cpu, ds.clone(), cfg())
            .unwrap()
            .with_new_run_dir(&dir, true)
            .unwrap();
        drop(t);
        // Overwriting removed the earlier file (config.json is the new run's).
        if f != run_dir::CONFIG {
            assert!(!dir.join(f).exists(), "{f}");
        }
    }
}
