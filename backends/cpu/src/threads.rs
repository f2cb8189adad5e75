//! The global thread count.

use mla_core::{Error, Result};

/// Sizes rayon's global pool, which runs every parallel loop of this backend.
/// Call it once, before any tensor work (e.g. from a `--threads N` flag);
/// without it rayon uses `RAYON_NUM_THREADS` or the number of CPUs.
///
/// A lone large f32 GEMM (and f64) runs on matrixmultiply's own pool instead,
/// which reads `MATMUL_NUM_THREADS` once, at its first GEMM: unless the user
/// set that variable, this sets it to `n` too, so the whole backend uses `n`
/// threads (the two pools never run at the same time).
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
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        std::env::set_var("MATMUL_NUM_THREADS", n.to_string());
    }
    Ok(())
}
