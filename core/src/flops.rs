//! A count of the floating-point operations of the matrix products that ran
//! on this thread: every GEMM the core issues (matmul and convolution,
//! forward and backward) at `2 * batch * m * n * k`, plus what a caller adds
//! for a fused matrix kernel (HGM's projection). Elementwise ops, reductions
//! and optimizer updates are not counted.
//!
//! Per thread because a tape runs on the thread that built it: a trainer
//! reads the count of its own steps even where several train side by side
//! in one process (data-parallel ranks as threads, tests). The backend's own
//! worker threads never issue core ops, so nothing is missed.

use std::cell::Cell;

thread_local! {
    static FLOPS: Cell<u64> = const { Cell::new(0) };
}

/// The operations counted on this thread so far (wrapping at 2^64).
pub fn count() -> u64 {
    FLOPS.with(|c| c.get())
}

/// Adds `n` operations to this thread's count.
pub fn add(n: u64) {
    FLOPS.with(|c| c.set(c.get().wrapping_add(n)));
}

/// Adds one GEMM of `batch` products of `m x k` by `k x n`.
pub(crate) fn add_gemm(batch: usize, m: usize, n: usize, k: usize) {
    add(2 * batch as u64 * m as u64 * n as u64 * k as u64);
}
