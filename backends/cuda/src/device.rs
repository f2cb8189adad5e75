//! One CUDA device: context, the single stream every op runs on, cuBLAS,
//! the kernel cache and the buffer pool. Shared by every `Cuda` handle for
//! the same ordinal in the process.

use crate::kernels::{self, Kernel, KernelModule, Loaded, MODULE_COUNT};
use crate::memory::{DeviceBuffer, Memory, Pool};
use crate::profile::{EventPair, Profile};
use crate::staging::{PinnedWord, Staging, MAX_STAGED};
use crate::CudaFloat;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{result, sys, CudaContext, CudaStream, DriverError};
use mla_core::{Error, Result};
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

pub(crate) const BACKEND: &str = "cuda";

/// `Error::Backend` for a failed driver call in `op`.
pub(crate) fn drv(op: &'static str) -> impl FnOnce(DriverError) -> Error {
    move |e| Error::backend(op, BACKEND, format!("{e:?}"))
}

/// Pointer to a kernel argument, as `cuLaunchKernel` wants it.
#[inline]
pub(crate) fn arg<A>(a: &A) -> *mut c_void {
    a as *const A as *mut c_void
}

pub(crate) struct Device {
    pub(crate) ordinal: usize,
    pub(crate) name: String,
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: Mutex<CudaBlas>,
    pub(crate) sm_count: u32,
    pub(crate) total_mem: usize,
    pub(crate) info: crate::DeviceInfo,
    compute_capability: (i32, i32),
    /// `[element slot][module slot]`: compiled on first use, errors kept so they are reported, not retried.
    modules: [[OnceLock<std::result::Result<Loaded, String>>; MODULE_COUNT]; 2],
    /// The pool, shared with every buffer of this device.
    pub(crate) mem: Arc<Memory>,
    /// One `u32` of error bits set by kernels that meet bad indices.
    err_word: sys::CUdeviceptr,
    /// A `u32` kept at zero between kernels: a kernel that counts its finished
    /// blocks in it (see `rls_mv`) resets it before it exits.
    counter: sys::CUdeviceptr,
    /// Where `err_word` is copied at each synchronisation.
    err_host: PinnedWord,
    staging: Mutex<Staging>,
    /// Per-op device time, when `MLA_CUDA_PROFILE` asks for it.
    profile: Option<Mutex<Profile>>,
}

// SAFETY: every raw handle in here is only used with the context bound and on `stream`.
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

/// Devices opened so far, by ordinal: opening one twice gives the same device.
static OPEN: Mutex<Vec<Arc<Device>>> = Mutex::new(Vec::new());

/// The libraries `dynamic-loading` needs, probed before any call (a missing one panics otherwise).
fn probe_libraries() -> std::result::Result<(), String> {
    // SAFETY: these only try to open the shared libraries.
    let (driver, nvrtc, cublas) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
        )
    };
    let missing: Vec<&str> = [
        (driver, "the CUDA driver (libcuda)"),
        (nvrtc, "NVRTC (libnvrtc)"),
        (cublas, "cuBLAS (libcublas)"),
    ]
    .iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, name)| *name)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "no CUDA device usable: missing {}",
            missing.join(", ")
        ))
    }
}

impl Device {
    pub(crate) fn open(ordinal: usize) -> Result<Arc<Device>> {
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = open.iter().find(|d| d.ordinal == ordinal) {
            return Ok(d.clone());
        }
        // The libraries are loaded lazily and cudarc panics on a missing symbol
        // (e.g. a driver older than the bindings): turn any panic into an error.
        let dev = std::panic::catch_unwind(|| Device::init(ordinal))
            .unwrap_or_else(|_| Err("the CUDA libraries panicked during initialisation (driver too old for CUDA 13?)".into()))
            .map_err(|msg| Error::backend("cuda_init", BACKEND, msg))?;
        let dev = Arc::new(dev);
        open.push(dev.clone());
        Ok(dev)
    }

    fn init(ordinal: usize) -> std::result::Result<Device, String> {
        probe_libraries()?;
        result::init().map_err(|e| format!("cuInit failed: {e:?}"))?;
        let count =
            CudaContext::device_count().map_err(|e| format!("cannot count CUDA devices: {e:?}"))?;
        if ordinal >= count.max(0) as usize {
            return Err(format!(
                "no CUDA device with ordinal {ordinal} ({count} present)"
            ));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| format!("cannot create a context on device {ordinal}: {e:?}"))?;
        // One stream, raw device pointers: cudarc's per-buffer events would only add calls.
        // SAFETY: nothing in this crate uses a second stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| format!("cannot create a stream: {e:?}"))?;
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| format!("cannot create a cuBLAS handle: {e:?}"))?;
        let name = ctx.name().unwrap_or_else(|_| format!("cuda:{ordinal}"));
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| format!("cannot read the compute capability: {e:?}"))?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| format!("cannot read the multiprocessor count: {e:?}"))?;
        let total_mem = ctx
            .total_mem()
            .map_err(|e| format!("cannot read the memory size: {e:?}"))?;
        let attr = |a| ctx.attribute(a).ok().filter(|&v| v > 0).map(|v| v as u64);
        let info = crate::DeviceInfo {
            name: name.clone(),
            compute_capability: (major, minor),
            sm_count: sm_count.max(1) as u32,
            total_memory: total_mem,
            memory_clock_khz: attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE),
            memory_bus_bits: attr(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH,
            ),
            l2_bytes: attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE),
        };
        // SAFETY: two 4-byte words (error bits, block counter), zeroed before use, freed in Drop.
        let words = unsafe {
            let p = result::malloc_sync(8)
                .map_err(|e| format!("cannot allocate device memory: {e:?}"))?;
            result::memset_d8_sync(p, 0, 8)
                .map_err(|e| format!("cannot clear device memory: {e:?}"))?;
            p
        };
        let (err_word, counter) = (words, words + 4);
        let err_host =
            PinnedWord::new().map_err(|e| format!("cannot allocate pinned host memory: {e:?}"))?;
        let mem = Arc::new(Memory {
            pool: Pool::new(total_mem, ctx.has_async_alloc()),
            ctx: ctx.clone(),
            stream: stream.clone(),
            ordinal,
        });
        let dev = Device {
            ordinal,
            name,
            stream,
            blas: Mutex::new(blas),
            sm_count: sm_count.max(1) as u32,
            total_mem,
            info,
            compute_capability: (major, minor),
            modules: Default::default(),
            mem,
            err_word,
            counter,
            err_host,
            staging: Mutex::new(Staging::new()),
            profile: Profile::wanted().then(|| Mutex::new(Profile::default())),
            ctx,
        };
        // Compile one module now so a broken NVRTC shows up here, not in the first op.
        dev.kernel::<f32>(
            &crate::ops::strided::MODULE,
            "copy_strided_u32",
            "cuda_init",
        )
        .map_err(|e| e.to_string())?;
        Ok(dev)
    }

    /// Binds the context to the calling thread (every op starts with this).
    #[inline]
    pub(crate) fn enter(&self, op: &'static str) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv(op))
    }

    /// The compiled kernel `name` of `module` for element type `T`.
    pub(crate) fn kernel<T: CudaFloat>(
        &self,
        module: &KernelModule,
        name: &str,
        op: &'static str,
    ) -> Result<Kernel<'_>> {
        let loaded = self.modules[T::SLOT][module.slot].get_or_init(|| {
            kernels::compile(&self.ctx, module, T::C_TYPE, self.compute_capability)
        });
        match loaded {
            Ok(l) => l.get(module, name).ok_or_else(|| {
                Error::backend(
                    op,
                    BACKEND,
                    format!("kernel {name} is not declared in module {}", module.name),
                )
            }),
            Err(msg) => Err(Error::backend(op, BACKEND, msg.clone())),
        }
    }

    /// Queues `f` on the stream.
    pub(crate) fn launch(
        &self,
        f: Kernel<'_>,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        args: &mut [*mut c_void],
        op: &'static str,
    ) -> Result<()> {
        self.profiled(f.name, || {
            // SAFETY: callers pass pointers to live values matching the kernel's parameter list.
            unsafe {
                result::launch_kernel(
                    f.function.cu_function(),
                    grid,
                    block,
                    shared_bytes,
                    self.stream.cu_stream(),
                    args,
                )
            }
            .map_err(drv(op))
        })
    }

    /// Runs `f` (which queues work on the stream) inside a profiling span when
    /// profiling is on.
    pub(crate) fn profiled<R>(&self, op: &'static str, f: impl FnOnce() -> Result<R>) -> Result<R> {
        match &self.profile {
            None => f(),
            Some(p) => p
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .span(op, self.stream.cu_stream(), f)
                .map_err(drv(op))?,
        }
    }

    /// Whether `MLA_CUDA_PROFILE` is on (callers may then build detailed labels).
    pub(crate) fn profiling(&self) -> bool {
        self.profile.is_some()
    }

    /// Per-op device time since the last call (`None` unless `MLA_CUDA_PROFILE` is set).
    pub(crate) fn take_profile(&self) -> Result<Option<Vec<crate::profile::OpTime>>> {
        match &self.profile {
            None => Ok(None),
            Some(p) => p
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .map(Some)
                .map_err(drv("profile")),
        }
    }

    /// Uninitialised buffer of `len` elements.
    pub(crate) fn alloc<E>(&self, len: usize, op: &'static str) -> Result<DeviceBuffer<E>> {
        DeviceBuffer::alloc(&self.mem, len).map_err(drv(op))
    }

    /// Zero-filled buffer of `len` elements.
    pub(crate) fn alloc_zeroed<E>(&self, len: usize, op: &'static str) -> Result<DeviceBuffer<E>> {
        let b = self.alloc::<E>(len, op)?;
        self.memset_zero(&b, op)?;
        Ok(b)
    }

    pub(crate) fn memset_zero<E>(&self, b: &DeviceBuffer<E>, op: &'static str) -> Result<()> {
        if b.num_bytes() > 0 {
            self.profiled(op, || {
                // SAFETY: the range lies inside the buffer.
                unsafe {
                    result::memset_d8_async(b.ptr(), 0, b.num_bytes(), self.stream.cu_stream())
                }
                .map_err(drv(op))
            })?;
        }
        Ok(())
    }

    pub(crate) fn upload<E>(&self, data: &[E], op: &'static str) -> Result<DeviceBuffer<E>> {
        let b = self.alloc::<E>(data.len(), op)?;
        let bytes = std::mem::size_of_val(data);
        if bytes == 0 {
            return Ok(b);
        }
        if bytes <= MAX_STAGED {
            let mut staging = self.staging.lock().unwrap_or_else(|p| p.into_inner());
            self.profiled(op, || {
                // SAFETY: plain values viewed as bytes; `b` holds `bytes` bytes; the context is bound.
                unsafe {
                    let src = std::slice::from_raw_parts(data.as_ptr() as *const u8, bytes);
                    staging.upload(b.ptr(), src, self.stream.cu_stream())
                }
                .map_err(drv(op))
            })?;
        } else {
            // SAFETY: pageable host memory is staged before this returns, so `data` may go away after.
            unsafe { result::memcpy_htod_async(b.ptr(), data, self.stream.cu_stream()) }
                .map_err(drv(op))?;
        }
        Ok(b)
    }

    /// Copies `b` to the host after everything queued before it (a synchronisation point),
    /// then reports errors that kernels flagged on the device in the meantime.
    pub(crate) fn download<E: Clone + Default>(
        &self,
        b: &DeviceBuffer<E>,
        op: &'static str,
    ) -> Result<Vec<E>> {
        let mut out = vec![E::default(); b.len()];
        if !out.is_empty() {
            // SAFETY: `out` has exactly the buffer's size; the stream is synchronised before it is read.
            unsafe { result::memcpy_dtoh_async(&mut out, b.ptr(), self.stream.cu_stream()) }
                .map_err(drv(op))?;
        }
        self.synchronize(op)?;
        Ok(out)
    }

    pub(crate) fn copy_device<E>(
        &self,
        dst: &DeviceBuffer<E>,
        dst_off: usize,
        src: &DeviceBuffer<E>,
        src_off: usize,
        len: usize,
        op: &'static str,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let size = std::mem::size_of::<E>() as u64;
        self.profiled(op, || {
            // SAFETY: callers check both ranges against the buffer lengths.
            unsafe {
                result::memcpy_dtod_async(
                    dst.ptr() + dst_off as u64 * size,
                    src.ptr() + src_off as u64 * size,
                    len * size as usize,
                    self.stream.cu_stream(),
                )
            }
            .map_err(drv(op))
        })
    }

    /// Waits for the stream, then checks the device error word.
    pub(crate) fn synchronize(&self, op: &'static str) -> Result<()> {
        // SAFETY: `err_word` is a live 4-byte allocation; `err_host` is read after the sync.
        unsafe { self.err_host.fetch(self.err_word, self.stream.cu_stream()) }.map_err(drv(op))?;
        self.stream.synchronize().map_err(drv(op))?;
        let word = [self.err_host.get()];
        if word[0] == 0 {
            return Ok(());
        }
        // SAFETY: as above.
        unsafe { result::memset_d8_sync(self.err_word, 0, 4) }.map_err(drv(op))?;
        let (bad_op, what) = match word[0] {
            w if w & 1 != 0 => ("gather_rows", "a row index was out of range"),
            w if w & 2 != 0 => ("scatter_add_rows", "a row index was out of range"),
            w if w & 4 != 0 => (
                "cross_entropy",
                "a label was out of range for the number of classes",
            ),
            _ => (
                "max_pool2d_backward",
                "an argmax index lay outside its pooling window",
            ),
        };
        Err(Error::backend(
            bad_op,
            BACKEND,
            format!("{what} (found on the device, reported at the next synchronisation)"),
        ))
    }

    pub(crate) fn err_word(&self) -> sys::CUdeviceptr {
        self.err_word
    }

    /// The shared block counter (zero whenever no kernel is running).
    pub(crate) fn counter(&self) -> sys::CUdeviceptr {
        self.counter
    }

    /// Device time between two events recorded around the work `f` queues.
    pub(crate) fn time<R>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> Result<R>,
    ) -> Result<(R, std::time::Duration)> {
        let span = EventPair::new().map_err(drv(op))?;
        let stream = self.stream.cu_stream();
        // SAFETY: our stream, with the context bound (callers `enter` first).
        unsafe { span.record_start(stream) }.map_err(drv(op))?;
        let out = f()?;
        unsafe { span.record_end(stream) }.map_err(drv(op))?;
        let seconds = span.seconds().map_err(drv(op))?;
        Ok((out, std::time::Duration::from_secs_f64(seconds)))
    }

    /// Blocks for 1-D grid-stride kernels of `block` threads over `n` items.
    pub(crate) fn grid_for(&self, n: usize, block: u32) -> u32 {
        let want = n.div_ceil(block as usize).max(1);
        want.min(self.sm_count as usize * 64).min(u32::MAX as usize) as u32
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // No kernel may still use `err_word` below; the pool is trimmed
            // by `Memory` once its last buffer is gone too.
            let _ = self.stream.synchronize();
            // SAFETY: allocated in `init`, no kernel or copy can run any more.
            unsafe {
                let _ = result::free_sync(self.err_word);
                self.staging
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .release();
            }
        }
    }
}
