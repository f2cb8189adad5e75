//! Device buffers and the caching allocator behind them.
//!
//! A training step allocates the same sizes every step, so freed buffers go
//! onto a free list keyed by their (rounded) byte size and the next request of
//! that size takes one back: after the first step no `cuMemAlloc` runs and
//! device memory stays flat. Everything runs on one stream, so a buffer freed
//! on the host while kernels that use it are still queued is safe to hand out
//! again: its next user is queued behind them.

use cudarc::driver::{result, sys, CudaContext, CudaStream, DriverError};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Allocation granularity: sizes are rounded up to this many bytes.
const ROUND: usize = 512;

fn rounded(bytes: usize) -> usize {
    bytes.div_ceil(ROUND) * ROUND
}

/// Free lists of device allocations by byte size.
pub(crate) struct Pool {
    free: Mutex<HashMap<usize, Vec<sys::CUdeviceptr>>>,
    /// Bytes handed out to live buffers.
    live: AtomicUsize,
    /// Bytes parked on the free lists.
    cached: AtomicUsize,
    /// Largest total (live + cached) the pool is allowed to keep; beyond it
    /// released buffers are freed instead of cached.
    cap: usize,
    async_alloc: bool,
}

/// Snapshot of the allocator, for tests and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes held by live tensors.
    pub live_bytes: usize,
    /// Bytes kept on free lists for reuse.
    pub cached_bytes: usize,
}

impl Pool {
    pub(crate) fn new(total_mem: usize, async_alloc: bool) -> Self {
        Pool {
            free: Mutex::new(HashMap::new()),
            live: AtomicUsize::new(0),
            cached: AtomicUsize::new(0),
            cap: total_mem / 10 * 9,
            async_alloc,
        }
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        MemoryStats {
            live_bytes: self.live.load(Ordering::Relaxed),
            cached_bytes: self.cached.load(Ordering::Relaxed),
        }
    }

    /// A buffer of `bytes` (already rounded): from the free list, else fresh;
    /// when the device is full, the free lists are returned to the driver and
    /// the allocation retried once.
    pub(crate) fn alloc(
        &self,
        stream: sys::CUstream,
        bytes: usize,
    ) -> Result<sys::CUdeviceptr, DriverError> {
        if let Some(ptr) = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&bytes)
            .and_then(|l| l.pop())
        {
            self.cached.fetch_sub(bytes, Ordering::Relaxed);
            self.live.fetch_add(bytes, Ordering::Relaxed);
            return Ok(ptr);
        }
        let ptr = match self.raw_alloc(stream, bytes) {
            Ok(p) => p,
            Err(DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => {
                self.trim(stream);
                self.raw_alloc(stream, bytes)?
            }
            Err(e) => return Err(e),
        };
        self.live.fetch_add(bytes, Ordering::Relaxed);
        Ok(ptr)
    }

    fn raw_alloc(
        &self,
        stream: sys::CUstream,
        bytes: usize,
    ) -> Result<sys::CUdeviceptr, DriverError> {
        // SAFETY: plain allocation; the memory is only used through `DeviceBuffer`.
        unsafe {
            if self.async_alloc {
                result::malloc_async(stream, bytes)
            } else {
                result::malloc_sync(bytes)
            }
        }
    }

    pub(crate) fn raw_free(&self, stream: sys::CUstream, ptr: sys::CUdeviceptr) {
        // Errors cannot be reported from a drop; a failed free only leaks.
        // SAFETY: `ptr` came from `raw_alloc` and no live buffer refers to it.
        unsafe {
            let _ = if self.async_alloc {
                result::free_async(ptr, stream)
            } else {
                result::free_sync(ptr)
            };
        }
    }

    /// Parks `ptr` on its free list; `false` when the pool is over its cap and
    /// the caller must free it instead.
    fn release(&self, ptr: sys::CUdeviceptr, bytes: usize) -> bool {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
        let total = self.live.load(Ordering::Relaxed) + self.cached.load(Ordering::Relaxed);
        if total + bytes > self.cap {
            return false;
        }
        self.cached.fetch_add(bytes, Ordering::Relaxed);
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(bytes)
            .or_default()
            .push(ptr);
        true
    }

    /// Returns every cached buffer to the driver.
    pub(crate) fn trim(&self, stream: sys::CUstream) {
        let lists: Vec<(usize, Vec<sys::CUdeviceptr>)> = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (bytes, ptrs) in lists {
            for ptr in ptrs {
                self.cached.fetch_sub(bytes, Ordering::Relaxed);
                self.raw_free(stream, ptr);
            }
        }
    }
}

/// A device's memory: its pool and the context and stream its buffers are
/// allocated and freed on. The device and each of its buffers hold it, so
/// that buffers need nothing else of the device (no module circle).
pub(crate) struct Memory {
    pub(crate) pool: Pool,
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) ordinal: usize,
}

impl Drop for Memory {
    fn drop(&mut self) {
        // The last buffer (or the device) is gone: give the cached blocks back.
        if self.ctx.bind_to_thread().is_ok() {
            let _ = self.stream.synchronize();
            self.pool.trim(self.stream.cu_stream());
        }
    }
}

/// A flat device buffer of `len` elements of `T`, returned to the pool on drop.
pub struct DeviceBuffer<T> {
    ptr: sys::CUdeviceptr,
    len: usize,
    bytes: usize,
    mem: Arc<Memory>,
    _elem: PhantomData<T>,
}

// SAFETY: the buffer is a device address plus bookkeeping; all access goes through the device's stream.
unsafe impl<T> Send for DeviceBuffer<T> {}
unsafe impl<T> Sync for DeviceBuffer<T> {}

impl<T> DeviceBuffer<T> {
    /// Uninitialised buffer (callers fill it before anyone reads it).
    pub(crate) fn alloc(mem: &Arc<Memory>, len: usize) -> Result<Self, DriverError> {
        let bytes = rounded(len * std::mem::size_of::<T>());
        let ptr = if bytes == 0 {
            0
        } else {
            mem.pool.alloc(mem.stream.cu_stream(), bytes)?
        };
        Ok(DeviceBuffer {
            ptr,
            len,
            bytes,
            mem: mem.clone(),
            _elem: PhantomData,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Device address (0 for an empty buffer).
    pub(crate) fn ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }
    pub(crate) fn num_bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

impl<T> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        if self.bytes > 0
            && !self.mem.pool.release(self.ptr, self.bytes)
            && self.mem.ctx.bind_to_thread().is_ok()
        {
            self.mem
                .pool
                .raw_free(self.mem.stream.cu_stream(), self.ptr);
        }
    }
}

impl<T> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer({} x {}, cuda:{})",
            self.len,
            std::any::type_name::<T>(),
            self.mem.ordinal
        )
    }
}
