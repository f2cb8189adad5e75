//! The global thread count.

use mla_core::{Error, Result};

/// Sizes rayon's global pool, which runs every parallel loop of this backend.
/// Call it once, before any tensor work (e.g. from a `--threads N` flag);
/// without it rayon uses `RAYON_NUM_THREADS` or the number of CPUs. The GEMM
/// hand-off workers are sized from it too (`n - 1` of them).
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
