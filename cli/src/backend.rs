//! `--backend cpu|cuda|auto` and `--threads N`: picks the device once and runs
//! a command generic over it (the trainer is generic over the backend).

use crate::CliResult;
use mla_core::Backend;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// Host CPU (matrixmultiply + SIMD kernels + rayon).
    Cpu,
    /// CUDA device 0; an error if none is usable.
    Cuda,
    /// CUDA when a usable device is present, else the CPU.
    Auto,
}

/// A command body that runs on whichever backend was chosen.
pub trait OnBackend {
    type Output;
    fn run<B: Backend<f32>>(self, backend: B, name: &str) -> CliResult<Self::Output>;
}

/// Sizes the CPU thread pool. Must run before any tensor work: rayon's global
/// pool can be built once.
pub fn set_threads(threads: Option<usize>) -> CliResult {
    let Some(n) = threads else { return Ok(()) };
    if n == 0 {
        return Err("--threads must be at least 1".into());
    }
    mla_cpu::set_num_threads(n).map_err(|e| format!("--threads {n}: {e}"))?;
    Ok(())
}

/// The CPU backend, with the kernels' instruction set forced by
/// `MLA_CPU_ISA` if that is set.
fn cpu() -> CliResult<mla_cpu::Cpu> {
    mla_cpu::isa_from_env()?;
    Ok(mla_cpu::Cpu::new())
}

pub fn dispatch<F: OnBackend>(choice: BackendChoice, f: F) -> CliResult<F::Output> {
    match choice {
        BackendChoice::Cpu => f.run(cpu()?, "cpu"),
        BackendChoice::Cuda => {
            let cuda = mla_cuda::Cuda::new(0)
                .map_err(|e| format!("--backend cuda: no usable CUDA device: {e}"))?;
            run_cuda(cuda, f)
        }
        // Probe once: `auto` falls back to the CPU when the driver, NVRTC,
        // cuBLAS or a device is missing, and says which it picked.
        BackendChoice::Auto => match mla_cuda::Cuda::new(0) {
            Ok(cuda) => run_cuda(cuda, f),
            Err(_) => f.run(cpu()?, "cpu"),
        },
    }
}

fn run_cuda<F: OnBackend>(cuda: mla_cuda::Cuda, f: F) -> CliResult<F::Output> {
    let name = format!("cuda ({})", cuda.device_name());
    let out = f.run(cuda.clone(), &name)?;
    // MLA_CUDA_PROFILE=1: where the device time went, by op.
    if let Some(ops) = cuda
        .take_profile()
        .map_err(|e| format!("reading the CUDA profile: {e}"))?
    {
        let total: f64 = ops.iter().map(|o| o.seconds).sum();
        eprintln!(
            "device time by op (MLA_CUDA_PROFILE), {:.3} s in all:",
            total
        );
        eprintln!(
            "{:<44} {:>7} {:>10} {:>9} {:>6}",
            "op", "calls", "total ms", "us/call", "%"
        );
        for o in &ops {
            eprintln!(
                "{:<44} {:>7} {:>10.3} {:>9.2} {:>6.1}",
                o.op,
                o.calls,
                o.seconds * 1e3,
                o.seconds * 1e6 / o.calls.max(1) as f64,
                100.0 * o.seconds / total.max(f64::MIN_POSITIVE)
            );
        }
    }
    Ok(out)
}
