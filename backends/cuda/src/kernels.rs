//! NVRTC kernel modules: each op file declares its CUDA C source as a
//! `KernelModule`; the device compiles it once per element type on first use
//! and keeps the loaded functions for the life of the process.

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;
use std::ffi::CString;
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
    pub(crate) fn get(&self, module: &KernelModule, name: &str) -> Option<Kernel<'_>> {
        module
            .functions
            .iter()
            .position(|f| *f == name)
            .map(|i| Kernel {
                function: &self.functions[i],
                name: module.functions[i],
            })
    }
}

/// A loaded kernel and its name (the profile reports time by kernel name).
#[derive(Clone, Copy)]
pub(crate) struct Kernel<'a> {
    pub function: &'a CudaFunction,
    pub name: &'static str,
}

/// NVRTC output: a CUBIN for the exact architecture, or PTX for the driver to JIT.
enum Image {
    Cubin(Vec<u8>),
    Ptx(Vec<u8>),
}

/// Runs NVRTC on `src` with `options`; `cubin` asks for machine code (needs an `sm_XY` architecture).
fn nvrtc(src: &str, name: &str, options: &[String], cubin: bool) -> Result<Image, String> {
    use cudarc::nvrtc::{result, sys};
    let csrc = CString::new(src).map_err(|_| "kernel source contains a NUL byte".to_string())?;
    let cname = CString::new(name).map_err(|_| "kernel name contains a NUL byte".to_string())?;
    let prog = result::create_program(&csrc, Some(&cname))
        .map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    // SAFETY: `prog` is live until destroyed at the end; buffers are sized by NVRTC.
    let out = unsafe {
        match result::compile_program(prog, options) {
            Err(e) => {
                let log = result::get_program_log(prog).unwrap_or_default();
                let log: Vec<u8> = log
                    .iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| c as u8)
                    .collect();
                Err(format!(
                    "{e:?} with {options:?}:\n{}",
                    String::from_utf8_lossy(&log)
                ))
            }
            Ok(()) if cubin => {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| format!("nvrtcGetCUBINSize: {e:?}"))
                    .and_then(|_| {
                        let mut buf = vec![0u8; size];
                        sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut std::ffi::c_char)
                            .result()
                            .map(|_| Image::Cubin(buf))
                            .map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))
                    })
            }
            Ok(()) => result::get_ptx(prog)
                .map(|p| Image::Ptx(p.iter().map(|&c| c as u8).collect()))
                .map_err(|e| format!("nvrtcGetPTX: {e:?}")),
        }
    };
    // SAFETY: created above, not used after this.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// Compiles and loads `module` for `c_type` on a device of compute capability
/// `cc`. PTX first: NVRTC's front end is quick and the driver caches its JIT
/// output across processes. If the driver cannot load that PTX (an NVRTC newer
/// than the driver writes a PTX version it does not know), machine code for
/// the exact architecture instead.
pub(crate) fn compile(
    ctx: &Arc<CudaContext>,
    module: &KernelModule,
    c_type: &str,
    cc: (i32, i32),
) -> Result<Loaded, String> {
    let src = full_source(module, c_type);
    let name = format!("{}_{c_type}.cu", module.name);
    let opts = |arch: String| {
        vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".to_string(),
        ]
    };
    let fail = |what: String| {
        format!(
            "NVRTC could not build the {} kernels for {c_type}: {what}",
            module.name
        )
    };
    let ptx_image = nvrtc(
        &src,
        &name,
        &opts(format!("compute_{}{}", cc.0, cc.1)),
        false,
    );
    let from_ptx = match ptx_image {
        Ok(Image::Ptx(mut b)) => {
            b.retain(|&c| c != 0);
            ctx.load_module(Ptx::from_src(String::from_utf8_lossy(&b).into_owned()))
                .map_err(|e| format!("loading PTX: {e:?}"))
        }
        Ok(Image::Cubin(_)) => Err("NVRTC returned machine code for a PTX request".to_string()),
        Err(e) => Err(e),
    };
    let loaded = match from_ptx {
        Ok(m) => m,
        Err(ptx_err) => {
            let cubin = match nvrtc(&src, &name, &opts(format!("sm_{}{}", cc.0, cc.1)), true) {
                Ok(Image::Cubin(b)) => b,
                Ok(Image::Ptx(_)) => {
                    return Err(fail("NVRTC returned PTX for a machine-code request".into()))
                }
                Err(e) => return Err(fail(format!("{e}\n(as PTX: {ptx_err})"))),
            };
            ctx.load_module(Ptx::from_binary(cubin)).map_err(|e| {
                fail(format!(
                    "loading machine code failed: {e:?} (as PTX: {ptx_err})"
                ))
            })?
        }
    };
    let functions = module
        .functions
        .iter()
        .map(|f| {
            loaded
                .load_function(f)
                .map_err(|e| format!("kernel {f} missing from the {} module: {e:?}", module.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Loaded {
        _module: loaded,
        functions,
    })
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
    use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

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
                // Machine code too (the fallback path), for one element type to keep this quick.
                if c_type == "float" {
                    match nvrtc(
                        &full_source(m, c_type),
                        "t.cu",
                        &["--gpu-architecture=sm_90".into(), "--std=c++17".into()],
                        true,
                    ) {
                        Ok(Image::Cubin(b)) => {
                            assert!(b.len() > 100, "{} ({c_type}): empty cubin", m.name)
                        }
                        Ok(Image::Ptx(_)) => panic!("asked for a cubin, got PTX"),
                        Err(e) => panic!("{} ({c_type}) as sm_90: {e}", m.name),
                    }
                }
                let opts = CompileOptions {
                    options: vec!["--gpu-architecture=compute_80".into(), "--std=c++17".into()],
                    ..Default::default()
                };
                let ptx =
                    compile_ptx_with_opts(full_source(m, c_type), opts).unwrap_or_else(
                        |e| match e {
                            cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                                panic!(
                                    "{} ({c_type}) does not compile:\n{}",
                                    m.name,
                                    log.to_string_lossy()
                                )
                            }
                            other => panic!("{} ({c_type}): {other:?}", m.name),
                        },
                    );
                let text = ptx.to_src();
                for f in m.functions {
                    assert!(
                        text.contains(&format!(".entry {f}(")),
                        "{} ({c_type}): no entry point {f} in the PTX",
                        m.name
                    );
                }
            }
        }
    }
}
