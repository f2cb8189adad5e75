//! Helpers of the trainer_* and cli_* tests: temp dirs and a small synthetic
//! two-modality dataset written with the project's own .npy writer.
#![allow(dead_code)]

use mla_cpu::Cpu;
use mla_models::data::npy::write_npy;
use mla_models::data::Dataset;
use mla_models::rng::Rng;
use mla_models::trainer::{
    EpochRecord, HgmMode, MethodKind, Silent, Summary, TrainConfig, Trainer,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "mla-trainer-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Synthetic {
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub classes: usize,
    /// Every this-many-th sample has no audio (0: audio always present).
    pub audio_missing_every: usize,
    pub seed: u64,
    /// Test samples get other labels and pure-noise images (drawn from a
    /// separate stream, so train and validation stay bit for bit the same).
    pub scramble_test: bool,
    /// A third modality "touch" (`[1, 4, 4]`, a class-dependent pixel under
    /// noise, medium strength).
    pub touch: bool,
}

impl Default for Synthetic {
    fn default() -> Self {
        Synthetic {
            train: 384,
            val: 96,
            test: 96,
            classes: 4,
            audio_missing_every: 0,
            seed: 7,
            scramble_test: false,
            touch: false,
        }
    }
}

pub const IMAGE_SHAPE: [usize; 3] = [1, 8, 8];
pub const AUDIO_SHAPE: [usize; 3] = [1, 6, 10];

impl Synthetic {
    pub fn len(&self) -> usize {
        self.train + self.val + self.test
    }

    /// Writes an mla-dataset/1 directory: an "image" modality whose class is
    /// a bright 2x2 block at a class-dependent place (easy), and an "audio"
    /// modality whose class is a faint row pattern under heavy noise (hard),
    /// so the two modalities differ in strength as in AV-MNIST.
    pub fn write(&self, dir: &Path) {
        let n = self.len();
        let mut rng = Rng::new(self.seed);
        let labels: Vec<i64> = (0..n).map(|i| (i % self.classes) as i64).collect();
        let split: Vec<u8> = (0..n)
            .map(|i| {
                if i < self.train {
                    0
                } else if i < self.train + self.val {
                    1
                } else {
                    2
                }
            })
            .collect();
        let img_len: usize = IMAGE_SHAPE.iter().product();
        let mut image = vec![0f32; n * img_len];
        for i in 0..n {
            let c = labels[i] as usize;
            let row = &mut image[i * img_len..(i + 1) * img_len];
            for v in row.iter_mut() {
                *v = (0.3 * rng.normal()) as f32;
            }
            let (y, x) = (2 * (c / 2) + 1, 2 * (c % 2) + 3);
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                row[(y + dy) * 8 + x + dx] += 1.5;
            }
        }
        let aud_len: usize = AUDIO_SHAPE.iter().product();
        let present: Vec<bool> = (0..n)
            .map(|i| self.audio_missing_every == 0 || i % self.audio_missing_every != 1)
            .collect();
        let rows = present.iter().filter(|&&p| p).count();
        let mut audio = Vec::with_capacity(rows * aud_len);
        let mut index = vec![-1i64; n];
        for i in 0..n {
            if !present[i] {
                continue;
            }
            index[i] = (audio.len() / aud_len) as i64;
            let c = labels[i] as usize;
            for r in 0..6 {
                for _ in 0..10 {
                    let signal = if r == c % 6 { 1.0 } else { 0.0 };
                    audio.push((signal + rng.normal()) as f32);
                }
            }
        }
        let mut touch = Vec::with_capacity(n * 16);
        for &l in &labels {
            for p in 0..16 {
                let signal = if p == 5 * (l as usize % 4) { 1.2 } else { 0.0 };
                touch.push((signal + 0.7 * rng.normal()) as f32);
            }
        }
        let mut labels = labels;
        if self.scramble_test {
            let mut other = Rng::new(self.seed ^ 0x5eed);
            for i in self.train + self.val..n {
                labels[i] =
                    (labels[i] + 1 + other.below(self.classes - 1) as i64) % self.classes as i64;
                for v in &mut image[i * img_len..(i + 1) * img_len] {
                    *v = other.normal() as f32;
                }
            }
        }
        write_npy(dir.join("labels.npy"), &[n], &labels).unwrap();
        write_npy(dir.join("split.npy"), &[n], &split).unwrap();
        write_npy(dir.join("image.npy"), &[n, 1, 8, 8], &image).unwrap();
        write_npy(dir.join("audio.npy"), &[rows, 1, 6, 10], &audio).unwrap();
        write_npy(dir.join("audio_index.npy"), &[n], &index).unwrap();
        let mut modalities = vec![
            json!({"name": "image", "data": "image.npy"}),
            json!({"name": "audio", "data": "audio.npy", "index": "audio_index.npy"}),
        ];
        if self.touch {
            write_npy(dir.join("touch.npy"), &[n, 1, 4, 4], &touch).unwrap();
            modalities.push(json!({"name": "touch", "data": "touch.npy"}));
        }
        let manifest = json!({
            "format": "mla-dataset/1",
            "name": "synthetic",
            "num_classes": self.classes,
            "class_names": (0..self.classes).map(|c| c.to_string()).collect::<Vec<_>>(),
            "labels": "labels.npy",
            "split": "split.npy",
            "modalities": modalities,
            "recipe": {"synthetic": true, "seed": self.seed}
        });
        std::fs::write(
            dir.join("dataset.json"),
            serde_json::to_vec_pretty(&manifest).unwrap(),
        )
        .unwrap();
    }
}

/// A synthetic dataset in a fresh temp dir.
pub fn synthetic(tag: &str, spec: &Synthetic) -> TempDir {
    let d = TempDir::new(tag);
    spec.write(d.path());
    d
}

/// A run's epoch records without their timings: what must agree bit for bit
/// between a resumed and an uninterrupted run.
pub fn history(t: &Trainer<Cpu>) -> Vec<EpochRecord> {
    t.state()
        .history
        .iter()
        .map(|r| r.without_timing())
        .collect()
}

/// A fresh run of `cfg` on `ds` writing into the run directory `dir`,
/// trained to its last epoch.
pub fn train_in(ds: &Arc<Dataset>, cfg: TrainConfig, dir: &Path) -> (Trainer<Cpu>, Summary) {
    let mut t = Trainer::new(Cpu, ds.clone(), cfg)
        .unwrap()
        .with_run_dir(dir)
        .unwrap();
    let s = t.run(&mut Silent).unwrap();
    (t, s)
}

/// `cfg` trained for `first` epochs into `dir`, dropped, then resumed from
/// `dir` up to `cfg.epochs`.
pub fn stopped_and_resumed(
    ds: &Arc<Dataset>,
    cfg: TrainConfig,
    first: usize,
    dir: &Path,
) -> (Trainer<Cpu>, Summary) {
    let total = cfg.epochs;
    drop(train_in(
        ds,
        TrainConfig {
            epochs: first,
            ..cfg
        },
        dir,
    ));
    let mut t = Trainer::resume(Cpu, ds.clone(), dir, Some(total)).unwrap();
    assert_eq!(t.state().epochs_done, first);
    let s = t.run(&mut Silent).unwrap();
    (t, s)
}

/// A small MLP run of `method` (feature size 16, 2 epochs, batch 32, lr
/// 0.05; HGM owm for MLA): what the trainer-level tests train.
pub fn small_mlp(method: MethodKind) -> TrainConfig {
    TrainConfig {
        method,
        encoder: "mlp".into(),
        feature_size: 16,
        epochs: 2,
        batch_size: 32,
        eval_batch_size: 64,
        lr: 0.05,
        hgm: if method == MethodKind::Mla {
            HgmMode::Owm
        } else {
            HgmMode::None
        },
        ..TrainConfig::default()
    }
}
