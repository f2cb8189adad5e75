//! Hand-written f32 kernels for the shapes matrixmultiply is slow on: GEMV,
//! rank-1 updates and small / skinny GEMM tiles.
//!
//! Each kernel exists once per instruction set (AVX-512F, AVX2+FMA, portable
//! scalar). The instruction set is detected once per process; `set_isa_override`
//! forces a slower one (tests use it to run every path the machine has), and the
//! per-call functions in [`crate::kernels`] take an [`Isa`] directly.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(test)]
mod avx512_emu;
pub(crate) mod scalar;

use mla_core::{Error, Result};
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set the f32 kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, no explicit SIMD.
    Scalar,
    /// 256-bit AVX2 with fused multiply-add.
    Avx2,
    /// 512-bit AVX-512 Foundation.
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    fn code(self) -> u8 {
        match self {
            Isa::Scalar => 1,
            Isa::Avx2 => 2,
            Isa::Avx512 => 3,
        }
    }

    fn from_code(c: u8) -> Option<Isa> {
        match c {
            1 => Some(Isa::Scalar),
            2 => Some(Isa::Avx2),
            3 => Some(Isa::Avx512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512 => "avx512f",
        }
    }

    /// Whether this CPU can run the kernels for `self`.
    pub fn is_available(self) -> bool {
        self <= detected()
    }

    /// Every instruction set this CPU can run, slowest first (always includes `Scalar`).
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }
}

/// 0 = not probed yet.
static DETECTED: AtomicU8 = AtomicU8::new(0);
/// 0 = no override.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

fn probe() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        // The AVX-512 path reuses AVX2 helpers (panel transposes); every AVX-512 CPU has AVX2.
        if avx2 && is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

/// The best instruction set of this CPU, probed once.
pub fn detected() -> Isa {
    match Isa::from_code(DETECTED.load(Ordering::Relaxed)) {
        Some(isa) => isa,
        None => {
            let isa = probe();
            DETECTED.store(isa.code(), Ordering::Relaxed);
            isa
        }
    }
}

/// The instruction set the backend dispatches to: the override if set, else the detected one.
pub fn active_isa() -> Isa {
    Isa::from_code(OVERRIDE.load(Ordering::Relaxed)).unwrap_or_else(detected)
}

/// Forces the backend's f32 kernels onto `isa` (`None` restores detection).
/// Process-wide; meant for tests and benchmarks. Asking for an instruction set
/// this CPU lacks is an error, never a crash.
pub fn set_isa_override(isa: Option<Isa>) -> Result<()> {
    match isa {
        Some(i) if !i.is_available() => Err(Error::invalid(
            "set_isa_override",
            format!(
                "{} is not supported by this CPU (best: {})",
                i.name(),
                detected().name()
            ),
            &[],
        )),
        Some(i) => {
            OVERRIDE.store(i.code(), Ordering::Relaxed);
            Ok(())
        }
        None => {
            OVERRIDE.store(0, Ordering::Relaxed);
            Ok(())
        }
    }
}

/// The environment variable that forces the kernels onto a slower
/// instruction set, for comparing paths on one machine (an AVX-512 CPU
/// running its AVX2 kernels, say).
pub const ISA_ENV: &str = "MLA_CPU_ISA";

/// Applies [`ISA_ENV`] (`scalar`, `avx2` or `avx512`) as the override, if set;
/// returns the instruction set now active. An unknown value, or one this CPU
/// lacks, is an error naming the variable.
pub fn isa_from_env() -> std::result::Result<Isa, String> {
    let Some(v) = std::env::var_os(ISA_ENV) else {
        return Ok(active_isa());
    };
    let v = v.to_string_lossy();
    let isa = match v.trim().to_ascii_lowercase().as_str() {
        "scalar" => Isa::Scalar,
        "avx2" | "avx2+fma" => Isa::Avx2,
        "avx512" | "avx512f" => Isa::Avx512,
        _ => {
            return Err(format!(
                "{ISA_ENV}={v}: unknown instruction set; use scalar, avx2 or avx512"
            ))
        }
    };
    if !isa.is_available() {
        return Err(format!(
            "{ISA_ENV}={v}: {} is not supported by this CPU (best: {})",
            isa.name(),
            detected().name()
        ));
    }
    set_isa_override(Some(isa)).map_err(|e| format!("{ISA_ENV}={v}: {e}"))?;
    Ok(isa)
}

/// Panics with a clear message when a kernel is asked to run on an unsupported ISA;
/// this is what keeps the `unsafe` calls into `target_feature` code sound.
#[inline]
pub(crate) fn check(isa: Isa) {
    assert!(
        isa.is_available(),
        "{} kernels requested on a CPU without {}",
        isa.name(),
        isa.name()
    );
}
