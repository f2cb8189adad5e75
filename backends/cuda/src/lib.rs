//! CUDA backend on cudarc: cuBLAS for GEMM, NVRTC kernels (compiled once per
//! process, templated on the element type) for everything else, one stream,
//! a caching allocator, and a fused RLS projection kernel for HGM.
//!
//! The CUDA libraries are loaded at run time: this crate builds and links on
//! machines without CUDA, and [`Cuda::new`] / [`is_available`] report a
//! missing driver, library or device as an error / `false`, never a panic.
//!
//! Only [`mla_core::Backend::to_vec`], [`mla_core::Backend::index_to_vec`] and
//! [`mla_core::Backend::synchronize`] wait for the device. Kernels that meet
//! an out-of-range index (labels, gathered rows, pooling argmax) cannot return
//! an error without a synchronisation, so they raise a flag on the device and
//! the next of those three calls reports it.

mod device;
mod kernels;
mod memory;
mod ops;
mod profile;
mod staging;

use cudarc::driver::DeviceRepr;
use device::Device;
use mla_core::{
    AdamConfig, Backend, BinaryOp, Conv2dGeometry, Element, GemmConfig, Pool2dGeometry, Result,
    SgdConfig, UnaryOp,
};
use std::sync::Arc;
use std::time::Duration;

pub use memory::{DeviceBuffer, MemoryStats};
pub use profile::OpTime;

/// Element types with device kernels: `f32` (training) and `f64` (checks).
pub trait CudaFloat: Element + DeviceRepr + private::Sealed {
    /// The C type the kernels are instantiated with.
    const C_TYPE: &'static str;
    /// Index into per-type tables.
    const SLOT: usize;
    /// Column-major strided-batched GEMM in this precision.
    ///
    /// # Safety
    /// Pointers and leading dimensions must describe valid device matrices.
    #[allow(clippy::too_many_arguments)]
    #[doc(hidden)]
    unsafe fn cublas_gemm(
        handle: cudarc::cublas::sys::cublasHandle_t,
        ta: cudarc::cublas::sys::cublasOperation_t,
        tb: cudarc::cublas::sys::cublasOperation_t,
        dims: [i32; 3],
        a: (u64, i32, i64),
        b: (u64, i32, i64),
        c: (u64, i32, i64),
        batch: i32,
    ) -> std::result::Result<(), cudarc::cublas::result::CublasError>;
}

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

macro_rules! cuda_float {
    ($t:ty, $c:literal, $slot:literal, $gemm:ident, $batched:ident) => {
        impl CudaFloat for $t {
            const C_TYPE: &'static str = $c;
            const SLOT: usize = $slot;
            unsafe fn cublas_gemm(
                handle: cudarc::cublas::sys::cublasHandle_t,
                ta: cudarc::cublas::sys::cublasOperation_t,
                tb: cudarc::cublas::sys::cublasOperation_t,
                [m, n, k]: [i32; 3],
                (a, lda, sa): (u64, i32, i64),
                (b, ldb, sb): (u64, i32, i64),
                (c, ldc, sc): (u64, i32, i64),
                batch: i32,
            ) -> std::result::Result<(), cudarc::cublas::result::CublasError> {
                let (one, zero): ($t, $t) = (1.0, 0.0);
                if batch == 1 {
                    cudarc::cublas::result::$gemm(
                        handle,
                        ta,
                        tb,
                        m,
                        n,
                        k,
                        &one,
                        a as *const $t,
                        lda,
                        b as *const $t,
                        ldb,
                        &zero,
                        c as *mut $t,
                        ldc,
                    )
                } else {
                    cudarc::cublas::result::$batched(
                        handle,
                        ta,
                        tb,
                        m,
                        n,
                        k,
                        &one,
                        a as *const $t,
                        lda,
                        sa,
                        b as *const $t,
                        ldb,
                        sb,
                        &zero,
                        c as *mut $t,
                        ldc,
                        sc,
                        batch,
                    )
                }
            }
        }
    };
}
cuda_float!(f32, "float", 0, sgemm, sgemm_strided_batched);
cuda_float!(f64, "double", 1, dgemm, dgemm_strided_batched);

/// What the driver reports about a device (for logs and benchmark reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub sm_count: u32,
    pub total_memory: usize,
    pub memory_clock_khz: Option<u64>,
    pub memory_bus_bits: Option<u64>,
    pub l2_bytes: Option<u64>,
}

impl DeviceInfo {
    /// Theoretical DRAM bandwidth in bytes/s (double data rate x bus width),
    /// when the driver reports clock and width.
    pub fn peak_bandwidth(&self) -> Option<f64> {
        Some(2.0 * self.memory_clock_khz? as f64 * 1e3 * self.memory_bus_bits? as f64 / 8.0)
    }
}

/// A CUDA device. Cheap to clone; every handle for the same ordinal shares
/// one context, stream, kernel cache and buffer pool.
#[derive(Clone)]
pub struct Cuda {
    dev: Arc<Device>,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cuda({}: {})", self.dev.ordinal, self.dev.name)
    }
}

impl Cuda {
    /// Opens device `ordinal`. Fails with `Error::Backend` (op `cuda_init`)
    /// when the driver, NVRTC or cuBLAS is missing, or there is no such device.
    pub fn new(ordinal: usize) -> Result<Cuda> {
        Ok(Cuda {
            dev: Device::open(ordinal)?,
        })
    }

    pub fn ordinal(&self) -> usize {
        self.dev.ordinal
    }

    /// The device's marketing name (e.g. "NVIDIA H100 80GB HBM3").
    pub fn device_name(&self) -> &str {
        &self.dev.name
    }

    /// Name, compute capability, memory system.
    pub fn info(&self) -> &DeviceInfo {
        &self.dev.info
    }

    /// Total device memory in bytes.
    pub fn total_memory(&self) -> usize {
        self.dev.total_mem
    }

    /// Bytes held by live buffers and by the allocator's free lists.
    pub fn memory_stats(&self) -> MemoryStats {
        self.dev.mem.pool.stats()
    }

    /// Compiles (or finds in the cache) every kernel for `T` now, so that
    /// first-use compilation stays out of timings.
    pub fn compile_kernels<T: CudaFloat>(&self) -> Result<()> {
        for m in kernels::all_modules() {
            if let Some(f) = m.functions.first() {
                self.dev.kernel::<T>(m, f, "compile_kernels")?;
            }
        }
        Ok(())
    }

    /// Runs `f` and returns the device time of the work it queued, measured
    /// between two CUDA events on the stream (gaps between queued kernels
    /// count; the host's own wait does not). Waits for that work to finish.
    pub fn time_on_device<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<(R, Duration)> {
        self.dev.enter("time_on_device")?;
        self.dev.time("time_on_device", f)
    }

    /// Device time per op name since the last call, largest first, when the
    /// process runs with `MLA_CUDA_PROFILE=1` (`None` otherwise). Waits for
    /// the device.
    pub fn take_profile(&self) -> Result<Option<Vec<OpTime>>> {
        self.dev.enter("take_profile")?;
        self.dev.take_profile()
    }

    /// Hands the allocator's cached buffers back to the driver.
    pub fn trim_memory(&self) -> Result<()> {
        self.dev.enter("trim_memory")?;
        self.dev.mem.pool.trim(self.dev.stream.cu_stream());
        Ok(())
    }
}

/// Whether a CUDA device with working driver, NVRTC and cuBLAS is present
/// (what `--backend auto` asks). Never panics.
pub fn is_available() -> bool {
    Cuda::new(0).is_ok()
}

impl<T: CudaFloat> Backend<T> for Cuda {
    type Storage = DeviceBuffer<T>;
    type Index = DeviceBuffer<u32>;

    fn name(&self) -> &'static str {
        "cuda"
    }
    fn storage_len(&self, s: &DeviceBuffer<T>) -> usize {
        s.len()
    }
    fn index_len(&self, s: &DeviceBuffer<u32>) -> usize {
        s.len()
    }

    fn zeros(&self, len: usize) -> Result<DeviceBuffer<T>> {
        self.dev.enter("zeros")?;
        self.dev.alloc_zeroed(len, "zeros")
    }
    fn from_slice(&self, data: &[T]) -> Result<DeviceBuffer<T>> {
        self.dev.enter("from_slice")?;
        self.dev.upload(data, "from_slice")
    }
    fn to_vec(&self, s: &DeviceBuffer<T>) -> Result<Vec<T>> {
        self.dev.enter("to_vec")?;
        self.dev.download(s, "to_vec")
    }
    fn index_from_slice(&self, idx: &[u32]) -> Result<DeviceBuffer<u32>> {
        self.dev.enter("index_from_slice")?;
        self.dev.upload(idx, "index_from_slice")
    }
    fn index_to_vec(&self, idx: &DeviceBuffer<u32>) -> Result<Vec<u32>> {
        self.dev.enter("index_to_vec")?;
        self.dev.download(idx, "index_to_vec")
    }
    fn synchronize(&self) -> Result<()> {
        self.dev.enter("synchronize")?;
        self.dev.synchronize("synchronize")
    }

    fn copy_strided(
        &self,
        dst: &mut DeviceBuffer<T>,
        dst_offset: usize,
        dst_strides: &[usize],
        src: &DeviceBuffer<T>,
        src_offset: usize,
        src_strides: &[usize],
        dims: &[usize],
    ) -> Result<()> {
        ops::strided::copy_strided(
            &self.dev,
            dst,
            dst_offset,
            dst_strides,
            src,
            src_offset,
            src_strides,
            dims,
        )
    }

    fn gemm(
        &self,
        cfg: &GemmConfig,
        a: &DeviceBuffer<T>,
        b: &DeviceBuffer<T>,
    ) -> Result<DeviceBuffer<T>> {
        ops::gemm::gemm(&self.dev, cfg, a, b)
    }

    fn unary(&self, op: UnaryOp, x: &DeviceBuffer<T>) -> Result<DeviceBuffer<T>> {
        ops::unary::unary(&self.dev, op, x)
    }
    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &DeviceBuffer<T>,
        y: &DeviceBuffer<T>,
        grad: &DeviceBuffer<T>,
    ) -> Result<DeviceBuffer<T>> {
        ops::unary::unary_backward(&self.dev, op, x, y, grad)
    }
    fn binary(
        &self,
        op: BinaryOp,
        lhs: &DeviceBuffer<T>,
        lhs_strides: &[usize],
        rhs: &DeviceBuffer<T>,
        rhs_strides: &[usize],
        out_dims: &[usize],
    ) -> Result<DeviceBuffer<T>> {
        ops::binary::binary(&self.dev, op, lhs, lhs_strides, rhs, rhs_strides, out_dims)
    }

    fn sum_axis(
        &self,
        x: &DeviceBuffer<T>,
        outer: usize,
        len: usize,
        inner: usize,
    ) -> Result<DeviceBuffer<T>> {
        ops::reduce::sum_axis(&self.dev, x, outer, len, inner)
    }
    fn softmax(
        &self,
        x: &DeviceBuffer<T>,
        rows: usize,
        cols: usize,
        log: bool,
    ) -> Result<DeviceBuffer<T>> {
        ops::softmax::softmax(&self.dev, x, rows, cols, log)
    }
    fn softmax_backward(
        &self,
        y: &DeviceBuffer<T>,
        grad: &DeviceBuffer<T>,
        rows: usize,
        cols: usize,
        log: bool,
    ) -> Result<DeviceBuffer<T>> {
        ops::softmax::softmax_backward(&self.dev, y, grad, rows, cols, log)
    }
    fn cross_entropy(
        &self,
        logits: &DeviceBuffer<T>,
        labels: &DeviceBuffer<u32>,
        rows: usize,
        cols: usize,
    ) -> Result<(DeviceBuffer<T>, DeviceBuffer<T>)> {
        ops::loss::cross_entropy(&self.dev, logits, labels, rows, cols)
    }
    fn cross_entropy_backward(
        &self,
        probs: &DeviceBuffer<T>,
        labels: &DeviceBuffer<u32>,
        grad_loss: &DeviceBuffer<T>,
        rows: usize,
        cols: usize,
    ) -> Result<DeviceBuffer<T>> {
        ops::loss::cross_entropy_backward(&self.dev, probs, labels, grad_loss, rows, cols)
    }

    fn gather_rows(
        &self,
        x: &DeviceBuffer<T>,
        idx: &DeviceBuffer<u32>,
        row_len: usize,
    ) -> Result<DeviceBuffer<T>> {
        ops::gather::gather_rows(&self.dev, x, idx, row_len)
    }
    fn scatter_add_rows(
        &self,
        grad: &DeviceBuffer<T>,
        idx: &DeviceBuffer<u32>,
        rows_out: usize,
        row_len: usize,
    ) -> Result<DeviceBuffer<T>> {
        ops::gather::scatter_add_rows(&self.dev, grad, idx, rows_out, row_len)
    }

    fn im2col(&self, x: &DeviceBuffer<T>, g: &Conv2dGeometry) -> Result<DeviceBuffer<T>> {
        ops::conv::im2col(&self.dev, x, g)
    }
    fn col2im(&self, cols: &DeviceBuffer<T>, g: &Conv2dGeometry) -> Result<DeviceBuffer<T>> {
        ops::conv::col2im(&self.dev, cols, g)
    }

    fn max_pool2d(
        &self,
        x: &DeviceBuffer<T>,
        g: &Pool2dGeometry,
    ) -> Result<(DeviceBuffer<T>, DeviceBuffer<u32>)> {
        ops::pool::max_pool2d(&self.dev, x, g)
    }
    fn max_pool2d_backward(
        &self,
        grad: &DeviceBuffer<T>,
        argmax: &DeviceBuffer<u32>,
        g: &Pool2dGeometry,
    ) -> Result<DeviceBuffer<T>> {
        ops::pool::max_pool2d_backward(&self.dev, grad, argmax, g)
    }
    fn avg_pool2d(&self, x: &DeviceBuffer<T>, g: &Pool2dGeometry) -> Result<DeviceBuffer<T>> {
        ops::pool::avg_pool2d(&self.dev, x, g)
    }
    fn avg_pool2d_backward(
        &self,
        grad: &DeviceBuffer<T>,
        g: &Pool2dGeometry,
    ) -> Result<DeviceBuffer<T>> {
        ops::pool::avg_pool2d_backward(&self.dev, grad, g)
    }

    fn sgd_step(
        &self,
        param: &mut DeviceBuffer<T>,
        grad: &DeviceBuffer<T>,
        velocity: Option<&mut DeviceBuffer<T>>,
        cfg: &SgdConfig,
    ) -> Result<()> {
        ops::optim::sgd_step(&self.dev, param, grad, velocity, cfg)
    }
    fn adam_step(
        &self,
        param: &mut DeviceBuffer<T>,
        grad: &DeviceBuffer<T>,
        m: &mut DeviceBuffer<T>,
        v: &mut DeviceBuffer<T>,
        cfg: &AdamConfig,
        step: u64,
    ) -> Result<()> {
        ops::optim::adam_step(&self.dev, param, grad, m, v, cfg, step)
    }

    fn rls_project(
        &self,
        p: &mut DeviceBuffer<T>,
        r: &DeviceBuffer<T>,
        grad_w: Option<&DeviceBuffer<T>>,
        c: usize,
        s: usize,
        alpha: f64,
    ) -> Result<Option<DeviceBuffer<T>>> {
        ops::rls::rls_project(&self.dev, p, r, grad_w, c, s, alpha)
    }
}
