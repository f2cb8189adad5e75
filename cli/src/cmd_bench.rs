//! `mla bench`: times training steps (by default MLA, cnn encoders, batch 64,
//! both modalities, HGM owm) and reports steps/s and samples/s.

use crate::backend::{self, BackendChoice, OnBackend};
use crate::CliResult;
use mla_core::Backend;
use mla_models::data::Dataset;
use mla_models::trainer::{HgmMode, MethodKind, TrainConfig, Trainer, DEFAULT_ALPHA};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Dataset directory in the mla-dataset/1 format. [default: AV-MNIST,
    /// prepared from --raw into the cache directory on first use, as `mla train`]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Raw AV-MNIST sources (mnist/ and fsdd/) for a bench without --data.
    #[arg(long, value_name = "DIR", default_value = "../shared/data/avmnist")]
    raw: PathBuf,
    /// Where a bench without --data finds (or keeps) the prepared AV-MNIST.
    /// [default: $XDG_CACHE_HOME/mla, else ~/.cache/mla]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// The method whose step is timed: mla, joint, unimodal, ogm, ogm-ge,
    /// pmr, mmpareto, agm, reconboost or gblending.
    #[arg(long, default_value = "mla")]
    method: MethodKind,
    /// The modality of --method unimodal.
    #[arg(long, value_name = "NAME")]
    modality: Option<String>,
    /// Encoders, as `mla train --encoder`: cnn, mlp, resnet18 or
    /// resnet18-small for every modality, or NAME=KIND,... one by one.
    /// [default: cnn for [C, H, W] inputs, mlp for vectors]
    #[arg(long, value_name = "SPEC")]
    encoder: Option<String>,
    /// Feature size of each encoder. [default: 128; with resnet encoders 512 x --width-mult]
    #[arg(long, value_name = "S")]
    feature_size: Option<usize>,
    /// Width multiplier of resnet encoders.
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    width_mult: f64,
    /// Samples per mini-batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// sgd (with --momentum), adam or adamw. [default: sgd, as train]
    #[arg(long)]
    optimizer: Option<mla_models::trainer::OptimizerKind>,
    /// Learning rate. [default: train's]
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// SGD momentum. [default: train's]
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// L2 weight decay, >= 0. [default: train's]
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// HGM of MLA steps. [default: owm for mla]
    #[arg(long)]
    hgm: Option<HgmMode>,
    /// HGM alpha of MLA steps.
    #[arg(long, default_value_t = DEFAULT_ALPHA)]
    alpha: f64,
    /// Timed steps (one step = one mini-batch: every modality's step for MLA).
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Untimed steps first (allocator and cache warm-up).
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Seed of the initialisation and of the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CPU threads (rayon and GEMM pools). [default: every core]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> CliResult {
    if args.steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    backend::set_threads(args.threads)?;
    backend::dispatch(args.backend, args)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Peak resident set size of this process in MiB (Linux; `None` elsewhere).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

impl OnBackend for Args {
    type Output = ();

    fn run<B: Backend<f32>>(self, backend: B, name: &str) -> CliResult {
        let hgm = match (self.method, self.hgm) {
            (MethodKind::Mla, h) => h.unwrap_or(HgmMode::Owm),
            (_, None | Some(HgmMode::None)) => HgmMode::None,
            (m, Some(h)) => {
                return Err(
                    format!("--hgm {h} applies to --method mla only (got --method {m})").into(),
                )
            }
        };
        let data = match &self.data {
            Some(d) => d.clone(),
            None => crate::cmd_train::default_dataset(
                &self.raw,
                self.cache_dir.as_deref(),
                self.json,
                true,
            )?,
        };
        let dataset = Arc::new(Dataset::open(&data)?);
        let train = dataset.indices(mla_models::data::Split::Train).len();
        if self.batch_size > train {
            // Every step then sees the whole train split, fewer samples
            // than the batch size asks for: the timing is not that batch's.
            eprintln!(
                "warning: --batch-size {} is larger than the train split of {} ({train} samples): each step uses {train}",
                self.batch_size,
                data.display()
            );
        }
        let encoder = self.encoder.clone().unwrap_or_else(|| {
            mla_models::encoders::default_encoder_spec(
                dataset
                    .modalities()
                    .iter()
                    .map(|m| (m.name.as_str(), m.shape.as_slice())),
            )
        });
        let d = TrainConfig::default();
        let cfg = TrainConfig {
            optimizer: self.optimizer.unwrap_or(d.optimizer),
            lr: self.lr.unwrap_or(d.lr),
            momentum: self.momentum.unwrap_or(d.momentum),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            method: self.method,
            modality: self.modality.clone(),
            encoder: encoder.clone(),
            feature_size: self.feature_size.unwrap_or_else(|| {
                mla_models::encoders::default_feature_size(&encoder, self.width_mult)
            }),
            width_mult: self.width_mult,
            batch_size: self.batch_size,
            hgm,
            alpha: self.alpha,
            seed: self.seed,
            ..d
        };
        let optimizer = cfg.optimizer;
        let probe = backend.clone();
        let mut trainer = Trainer::new(backend, dataset, cfg)?;
        if self.warmup > 0 {
            trainer.time_steps(self.warmup, 0)?;
        }
        // MLA_CUDA_PROFILE: the per-op report covers the timed steps only
        // (warm-up pays one-off costs: allocations, cuBLAS's kernel loading).
        if let Some(cuda) = (&probe as &dyn std::any::Any).downcast_ref::<mla_cuda::Cuda>() {
            cuda.take_profile()
                .map_err(|e| format!("resetting the CUDA profile: {e}"))?;
        }
        let times = trainer.time_steps(0, self.steps)?;
        let total_s: f64 = times.iter().map(|t| t.seconds).sum();
        let samples: usize = times.iter().map(|t| t.samples).sum();
        let gflop = times.iter().map(|t| t.flops as f64).sum::<f64>() / 1e9;
        let gflop_per_step = gflop / times.len() as f64;
        let mut ms: Vec<f64> = times.iter().map(|t| t.seconds * 1e3).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        let median = percentile(&ms, 0.5);
        let sps = samples as f64 / total_s;
        let steps_per_s = times.len() as f64 / total_s;
        let modalities = trainer.modalities().join(",");
        if self.json {
            let out = serde_json::json!({
                "method": self.method,
                "modalities": modalities,
                "encoder": encoder,
                "batch_size": self.batch_size,
                "hgm": hgm,
                "optimizer": optimizer,
                "backend": name,
                "cpu_isa": mla_cpu::active_isa().name(),
                "threads": self.threads,
                "warmup": self.warmup,
                "steps": self.steps,
                "ms_per_step_median": median,
                "ms_per_step_mean": total_s * 1e3 / times.len() as f64,
                "ms_per_step_p10": percentile(&ms, 0.1),
                "ms_per_step_p90": percentile(&ms, 0.9),
                "steps_per_second": steps_per_s,
                "samples_per_second": sps,
                "gflop_per_step": gflop_per_step,
                "gflop_per_second": gflop / total_s,
                "peak_rss_mib": peak_rss_mib(),
            });
            println!("{out}");
        } else {
            println!(
                "{} steps of {} ({modalities}), encoder {}, batch {}, hgm {hgm} on {name} (CPU kernels: {}):",
                self.steps,
                self.method,
                encoder,
                self.batch_size,
                mla_cpu::active_isa().name()
            );
            println!(
                "  {:.2} ms/step median (p10 {:.2}, p90 {:.2}), {steps_per_s:.2} steps/s, {sps:.0} samples/s",
                median,
                percentile(&ms, 0.1),
                percentile(&ms, 0.9)
            );
            println!(
                "  {gflop_per_step:.3} GFLOP per step in matrix products (GEMMs, HGM's projection): {:.1} GFLOP/s",
                gflop / total_s
            );
            if let Some(rss) = peak_rss_mib() {
                println!("  peak resident memory {rss:.0} MiB");
            }
        }
        Ok(())
    }
}
