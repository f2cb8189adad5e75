//! Output buffers for kernels.
//!
//! Each op returns a fresh `Vec`, and a training step allocates and frees the
//! same large buffers over and over (the im2col columns of the audio encoder
//! alone are 45 MB). glibc serves blocks above its mmap threshold (at most
//! 32 MB) with fresh `mmap`s and unmaps them on free, so every step paid one
//! page fault plus a page clear per 4 KiB of every large buffer: about a
//! third of a CPU training step. [`tune_allocator`] keeps freed blocks in the
//! heap for reuse instead; buffers that kernels overwrite completely are not
//! zeroed first ([`uninit_vec`]).

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

static POISON: AtomicBool = AtomicBool::new(false);

/// Tests only: fill every not-yet-initialised output buffer with NaN before
/// its kernel runs, so a kernel that forgets to write an element is caught
/// (fresh pages would read as zeros and hide it).
#[doc(hidden)]
pub fn set_poison_uninit(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

static TUNE: Once = Once::new();

/// Makes glibc's malloc reuse freed large blocks instead of returning them to
/// the kernel: no `mmap` for large blocks, no trimming of the heap top. Memory
/// then stays at the high-water mark of a step, which is flat from one step
/// to the next. Process-wide; applied once, on the backend's first output
/// buffer. Not applied when `MLA_CPU_MALLOC_TUNING=0`, and a no-op off glibc.
pub fn tune_allocator() {
    TUNE.call_once(|| {
        if std::env::var_os("MLA_CPU_MALLOC_TUNING").is_some_and(|v| v == "0") {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            extern "C" {
                fn mallopt(
                    param: std::os::raw::c_int,
                    value: std::os::raw::c_int,
                ) -> std::os::raw::c_int;
            }
            // From glibc's malloc.h.
            const M_TRIM_THRESHOLD: std::os::raw::c_int = -1;
            const M_MMAP_MAX: std::os::raw::c_int = -4;
            // SAFETY: mallopt only adjusts allocator parameters; these values are valid for it.
            unsafe {
                mallopt(M_MMAP_MAX, 0);
                mallopt(M_TRIM_THRESHOLD, i32::MAX);
            }
        }
    });
}

/// A `Vec` of `len` elements, every one written by `fill` through the
/// `MaybeUninit` slice it is given (no zeroing pass first).
///
/// # Safety
/// `fill` must initialise all `len` elements.
pub(crate) unsafe fn uninit_vec<T>(len: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    tune_allocator();
    let mut v = Vec::with_capacity(len);
    let spare = &mut v.spare_capacity_mut()[..len];
    if POISON.load(Ordering::Relaxed) {
        // SAFETY: any bit pattern is a valid MaybeUninit; all-ones is a NaN for f32 / f64.
        unsafe { std::ptr::write_bytes(spare.as_mut_ptr(), 0xff, len) };
    }
    fill(spare);
    // SAFETY: the caller guarantees `fill` initialised elements 0..len.
    unsafe { v.set_len(len) };
    v
}

/// A zero-filled `Vec` (after tuning the allocator, see the module comment).
pub(crate) fn zeroed_vec<T: Copy + num_traits::Zero>(len: usize) -> Vec<T> {
    tune_allocator();
    vec![T::zero(); len]
}
