//! The global thread count.

use mla_core::{Error, Result};

/// Sizes rayon's global pool, which runs every parallel loop of this backend.
/// Call it once, before any tensor work (e.g. from a `--threads N` flag);
/// without it rayon uses `RAYON_NUM_THREADS` or the number of CPUs. The GEMM
/// hand-off workers are sized from it too (`n - 1` of them).
///
/// The calling thread becomes the pool's first worker (plus `n - 1` new
/// ones): a parallel loop it starts runs its first part at once instead of
/// handing the whole loop to a sleeping worker and sleeping until it is done,
/// two wake-ups per element-wise op. At one thread every loop then runs
/// inline on the caller. So call it from the thread that does the tensor work
/// and outlives it (a program's main thread), and do not block that thread
/// on another thread's tensor work: at one thread, parallel loops started by
/// other threads wait until the calling thread enters a parallel loop.
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid(
            "set_num_threads",
            "thread count must be at least 1",
            &[],
        ));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .use_current_thread()
        .build_global()
        .map_err(|e| {
            Error::invalid(
                "set_num_threads",
                format!("cannot size the thread pool to {n} ({e}); call it before any tensor work"),
                &[],
            )
        })?;
    Ok(())
}

/// The thread count of the backend's pool (what [`set_num_threads`] set, or
/// rayon's default).
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}
