//! Pinned host memory that uploads and the error-word read go through.
//!
//! A copy from pageable host memory makes the driver wait for everything
//! already queued on the stream before it starts, so each batch upload would
//! stall the host behind the whole previous training step and host work
//! (tape, launches) could never overlap the GPU. From pinned memory the copy
//! is queued like a kernel. A chunk is handed out again once the event
//! recorded after its copy has completed; with every chunk busy the host waits
//! for the oldest one, which also bounds how far it runs ahead of the GPU.

use cudarc::driver::{result, sys, DriverError};
use std::ffi::c_void;

/// Smallest chunk: batch uploads of every size share a few chunks.
const MIN_CHUNK: usize = 64 << 10;
/// Larger uploads (whole datasets, checkpoints) are copied from pageable
/// memory: pinning that much would take more host memory than it saves time.
pub(crate) const MAX_STAGED: usize = 64 << 20;
/// Copies in flight at most before the host waits for the oldest.
const MAX_CHUNKS: usize = 16;

struct Chunk {
    host: *mut u8,
    cap: usize,
    /// Recorded after the chunk's last copy.
    done: sys::CUevent,
    last_use: u64,
}

pub(crate) struct Staging {
    chunks: Vec<Chunk>,
    uses: u64,
}

// SAFETY: the raw pointers are pinned host allocations owned by this struct; access is under the device's mutex.
unsafe impl Send for Staging {}

impl Staging {
    pub(crate) fn new() -> Self {
        Staging {
            chunks: Vec::new(),
            uses: 0,
        }
    }

    /// Queues a copy of `src` to `dst` on `stream` through a pinned chunk.
    ///
    /// # Safety
    /// `dst` must be a device allocation of at least `src.len()` bytes, and the
    /// context of `stream` bound to the calling thread.
    pub(crate) unsafe fn upload(
        &mut self,
        dst: sys::CUdeviceptr,
        src: &[u8],
        stream: sys::CUstream,
    ) -> Result<(), DriverError> {
        let i = self.chunk_for(src.len())?;
        let chunk = &mut self.chunks[i];
        std::ptr::copy_nonoverlapping(src.as_ptr(), chunk.host, src.len());
        result::memcpy_htod_async(
            dst,
            std::slice::from_raw_parts(chunk.host, src.len()),
            stream,
        )?;
        result::event::record(chunk.done, stream)?;
        self.uses += 1;
        chunk.last_use = self.uses;
        Ok(())
    }

    /// A chunk of at least `len` bytes whose last copy has finished.
    unsafe fn chunk_for(&mut self, len: usize) -> Result<usize, DriverError> {
        for (i, c) in self.chunks.iter().enumerate() {
            if c.cap >= len && result::event::query(c.done).is_ok() {
                return Ok(i);
            }
        }
        let cap = len.next_power_of_two().max(MIN_CHUNK);
        if self.chunks.len() < MAX_CHUNKS {
            let host = result::malloc_host(cap, 0)? as *mut u8;
            let done = match result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING) {
                Ok(e) => e,
                Err(e) => {
                    let _ = result::free_host(host as *mut c_void);
                    return Err(e);
                }
            };
            self.chunks.push(Chunk {
                host,
                cap,
                done,
                last_use: 0,
            });
            return Ok(self.chunks.len() - 1);
        }
        // Every chunk busy: wait for the oldest copy, then grow that chunk if needed.
        let i = (0..self.chunks.len())
            .min_by_key(|&i| self.chunks[i].last_use)
            .unwrap_or(0);
        let c = &mut self.chunks[i];
        result::event::synchronize(c.done)?;
        if c.cap < len {
            let host = result::malloc_host(cap, 0)? as *mut u8;
            let _ = result::free_host(c.host as *mut c_void);
            c.host = host;
            c.cap = cap;
        }
        Ok(i)
    }

    /// Releases every chunk.
    ///
    /// # Safety
    /// No copy from a chunk may still be pending (the stream is synchronised).
    pub(crate) unsafe fn release(&mut self) {
        for c in self.chunks.drain(..) {
            let _ = result::event::destroy(c.done);
            let _ = result::free_host(c.host as *mut c_void);
        }
    }
}

/// One pinned `u32` the device error word is copied into at each synchronisation,
/// so reading it costs no second synchronous copy.
pub(crate) struct PinnedWord(*mut u32);

// SAFETY: a pinned host allocation owned by this value; only read after the stream is synchronised.
unsafe impl Send for PinnedWord {}
unsafe impl Sync for PinnedWord {}

impl PinnedWord {
    pub(crate) fn new() -> Result<Self, DriverError> {
        // SAFETY: a 4-byte pinned allocation, zeroed before use.
        unsafe {
            let p = result::malloc_host(4, 0)? as *mut u32;
            p.write(0);
            Ok(PinnedWord(p))
        }
    }

    /// Queues a copy of the device word at `src` into this word.
    ///
    /// # Safety
    /// `src` is a live 4-byte device allocation; the word is read only after the stream is synchronised.
    pub(crate) unsafe fn fetch(
        &self,
        src: sys::CUdeviceptr,
        stream: sys::CUstream,
    ) -> Result<(), DriverError> {
        result::memcpy_dtoh_async(std::slice::from_raw_parts_mut(self.0, 1), src, stream)
    }

    /// The value copied by the last `fetch` (after a stream synchronisation).
    pub(crate) fn get(&self) -> u32 {
        // SAFETY: a live 4-byte allocation; the caller synchronised the stream after `fetch`.
        unsafe { self.0.read_volatile() }
    }
}

impl Drop for PinnedWord {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`; the device synchronises its stream before dropping this.
        unsafe {
            let _ = result::free_host(self.0 as *mut c_void);
        }
    }
}
