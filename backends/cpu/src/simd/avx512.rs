//! AVX-512F kernels (16 f32 lanes). Tails use masked loads and stores, which
//! never touch the masked-off memory.
//!
//! # Safety
//! Every function here requires a CPU with AVX-512F; callers check
//! [`super::Isa::is_available`] first. Pointer arguments follow the contracts
//! documented in [`super::scalar`], which is the reference implementation.

// Register arrays are indexed by constant-bound loops that the compiler unrolls.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::x86_64::*;

/// Where `tile_m` prefetches the next B panel to.
const PREFETCH_HINT: i32 = _MM_HINT_T0;

include!("avx512_kernels.rs");
avx512_kernels!(#[target_feature(enable = "avx512f")]);
