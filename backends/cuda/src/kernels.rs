//! NVRTC kernel modules: each op file declares its CUDA C source as a
//! `KernelModule`; the device compiles it once per element type on first use
//! and keeps the loaded functions for the life of the process.

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use std::sync::Arc;

/// One CUDA C translation unit and the `extern "C"` kernels it defines.
pub(crate) struct KernelModule {
    /// Position in the device's module table (unique, `< MODULE_COUNT`).
    pub slot: usize,
    pub name: &'static str,
    pub source: &'static str,
    pub functions: &'static [&'static str],
}

/// Number of kernel modules (one per op file that has device code).
pub(crate) const MODULE_COUNT: usize = 11;

/// Shared by every module: the element type `T` is set by the host
/// (`typedef float T;` or `typedef double T;`) in front of this.
const PRELUDE: &str = r#"
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

__device__ __forceinline__ float t_exp(float x) { return expf(x); }
__device__ __forceinline__ double t_exp(double x) { return exp(x); }
__device__ __forceinline__ float t_log(float x) { return logf(x); }
__device__ __forceinline__ double t_log(double x) { return log(x); }
__device__ __forceinline__ float t_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double t_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float t_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double t_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float t_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double t_max(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ bool t_isnan(T x) { return x != x; }
#define T_NEG_INF ((T)__longlong_as_double(0xfff0000000000000ULL))

/* Bits of the device error word; the host reads it at the next synchronisation. */
#define ERR_GATHER_INDEX 1u
#define ERR_SCATTER_INDEX 2u
#define ERR_LABEL 4u
#define ERR_ARGMAX 8u

#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)(n); i += (u64)blockDim.x * gridDim.x)

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
    for (int o = 16; o > 0; o >>= 1) v = t_max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every
   thread gets the result. `scratch` holds 32 values. Fixed order: the same
   inputs give the same bits in every block. */
template <typename A>
__device__ A block_sum(A v, A* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    A t = lane < nwarps ? scratch[lane] : (A)0;
    return warp_sum(t);
}
"#;

/// Full source of `module` for element type `c_type` ("float" or "double").
pub(crate) fn full_source(module: &KernelModule, c_type: &str) -> String {
    format!("typedef {c_type} T;\n{PRELUDE}\n{}", module.source)
}

/// A compiled module and its functions, in the order of `KernelModule::functions`.
pub(crate) struct Loaded {
    _module: Arc<CudaModule>,
    functions: Vec<CudaFunction>,
}

impl Loaded {
    pub(crate) fn get(&self, module: &KernelModule, name: &str) -> Option<&CudaFunction> {
        module.functions.iter().position(|f| *f == name).map(|i| &self.functions[i])
    }
}

/// Compiles and loads `module` for `c_type` on `ctx`; the error text carries the NVRTC log.
pub(crate) fn compile(ctx: &Arc<CudaContext>, module: &KernelModule, c_type: &str, arch: &str) -> Result<Loaded, String> {
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some(format!("{}_{c_type}.cu", module.name)),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(full_source(module, c_type), opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. } => {
            format!("NVRTC failed to compile the {} kernels for {c_type} ({nvrtc:?}):\n{}", module.name, log.to_string_lossy())
        }
        other => format!("NVRTC failed on the {} kernels for {c_type}: {other:?}", module.name),
    })?;
    let loaded = ctx
        .load_module(ptx)
        .map_err(|e| format!("loading the {} kernels for {c_type} failed: {e:?}", module.name))?;
    let functions = module
        .functions
        .iter()
        .map(|f| loaded.load_function(f).map_err(|e| format!("kernel {f} missing from the {} module: {e:?}", module.name)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Loaded { _module: loaded, functions })
}

/// Every module, for tests and for warming the cache.
pub(crate) fn all_modules() -> [&'static KernelModule; MODULE_COUNT] {
    use crate::ops::*;
    [
        &strided::MODULE,
        &unary::MODULE,
        &binary::MODULE,
        &reduce::MODULE,
        &softmax::MODULE,
        &loss::MODULE,
        &gather::MODULE,
        &conv::MODULE,
        &pool::MODULE,
        &optim::MODULE,
        &rls::MODULE,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_slots_are_distinct_and_in_range() {
        let mut seen = [false; MODULE_COUNT];
        for m in all_modules() {
            assert!(m.slot < MODULE_COUNT, "{} slot {}", m.name, m.slot);
            assert!(!seen[m.slot], "slot {} used twice ({})", m.slot, m.name);
            seen[m.slot] = true;
        }
    }

    /// Compiles every kernel for both element types with NVRTC alone (no GPU
    /// needed) and checks each declared entry point is in the PTX. Skips when
    /// libnvrtc is not installed.
    #[test]
    fn every_module_compiles_with_nvrtc() {
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipping: NVRTC (libnvrtc) not found");
            return;
        }
        for m in all_modules() {
            for c_type in ["float", "double"] {
                let opts = CompileOptions {
                    options: vec!["--gpu-architecture=compute_80".into(), "--std=c++17".into()],
                    ..Default::default()
                };
                let ptx = compile_ptx_with_opts(full_source(m, c_type), opts).unwrap_or_else(|e| match e {
                    cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                        panic!("{} ({c_type}) does not compile:\n{}", m.name, log.to_string_lossy())
                    }
                    other => panic!("{} ({c_type}): {other:?}", m.name),
                });
                let text = ptx.to_src();
                for f in m.functions {
                    assert!(text.contains(&format!(".entry {f}(")), "{} ({c_type}): no entry point {f} in the PTX", m.name);
                }
            }
        }
    }
}
