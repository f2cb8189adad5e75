//! Fused HGM step: project the head gradient with the old P, then the RLS
//! update of P, in two launches and no host round trip.
//!
//! 1. `rls_mv`: one warp per row j of P reads that row once and produces both
//!    `u[j] = (P r)[j]` and column j of `G P` (P is symmetric, so column j of
//!    `G P` is `G` times row j). Up to 15 classes share each pass over P.
//! 2. `rls_update`: every block recomputes `d = alpha + r.u` in the same fixed
//!    order (so all blocks agree bit for bit) and subtracts `(u_i u_j) (1/d)`.
//!    `u_i u_j` is commutative in floating point, so P stays exactly symmetric.
//!
//! When `s` is a multiple of 16 bytes' worth of elements both kernels use
//! 16-byte loads (every buffer starts 512-byte aligned), which cuts the load
//! instructions per byte of P by 4 (f32) and keeps the pass memory-bound.

use super::{need_len, u};
use crate::device::{arg, Device};
use crate::kernels::KernelModule;
use crate::memory::DeviceBuffer;
use crate::CudaFloat;
use mla_core::{Error, Result};
use std::sync::Arc;

pub(crate) static MODULE: KernelModule = KernelModule {
    slot: 10,
    name: "rls",
    source: SOURCE,
    functions: &["rls_mv", "rls_mv_vec", "rls_update", "rls_update_vec"],
};

const SOURCE: &str = r#"
#define RLS_V 16          /* vectors (r and gradient rows) per pass over P */
#define RLS_WARPS 8       /* rows of P per block in rls_mv */

/* 16-byte loads (float4 / double2) for the aligned variants: s a multiple of VN. */
template <typename X> struct V16;
template <> struct V16<float> { typedef float4 t; };
template <> struct V16<double> { typedef double2 t; };
typedef V16<T>::t TV;
#define VN ((int)(16 / sizeof(T)))
union Pack { TV v; T e[16 / sizeof(T)]; };

/* Vector 0 is r, vector v > 0 is row v - 1 of G. */
__device__ __forceinline__ const T* vec_row(const T* r, const T* G, u64 v, u64 s) {
    return v == 0 ? r : G + (v - 1) * s;
}

__device__ __forceinline__ void rls_mv_store(T total, u64 v, u64 j, u64 s, T* u, T* proj) {
    if (v == 0) u[j] = total;
    else proj[(v - 1) * s + j] = total;
}

extern "C" __global__ void rls_mv(const T* __restrict__ P, const T* __restrict__ r, const T* __restrict__ G,
                                  T* __restrict__ u, T* __restrict__ proj, u64 s, u64 c) {
    int lane = threadIdx.x & 31;
    u64 j = (u64)blockIdx.x * RLS_WARPS + (threadIdx.x >> 5);
    if (j >= s) return;
    const T* row = P + j * s;
    u64 nv = c + 1;
    for (u64 v0 = 0; v0 < nv; v0 += RLS_V) {
        T acc[RLS_V];
#pragma unroll
        for (int v = 0; v < RLS_V; ++v) acc[v] = (T)0;
#pragma unroll 2
        for (u64 k = lane; k < s; k += 32) {
            T p = row[k];
#pragma unroll
            for (int v = 0; v < RLS_V; ++v)
                if (v0 + v < nv) acc[v] += p * vec_row(r, G, v0 + v, s)[k];
        }
#pragma unroll
        for (int v = 0; v < RLS_V; ++v) {
            T total = warp_sum(acc[v]);
            if (lane == 0 && v0 + v < nv) rls_mv_store(total, v0 + v, j, s, u, proj);
        }
    }
}

extern "C" __global__ void rls_mv_vec(const T* __restrict__ P, const T* __restrict__ r, const T* __restrict__ G,
                                      T* __restrict__ u, T* __restrict__ proj, u64 s, u64 c) {
    int lane = threadIdx.x & 31;
    u64 j = (u64)blockIdx.x * RLS_WARPS + (threadIdx.x >> 5);
    if (j >= s) return;
    const T* row = P + j * s;
    u64 nv = c + 1;
    for (u64 v0 = 0; v0 < nv; v0 += RLS_V) {
        T acc[RLS_V];
#pragma unroll
        for (int v = 0; v < RLS_V; ++v) acc[v] = (T)0;
#pragma unroll 2
        for (u64 k = (u64)lane * VN; k < s; k += 32 * VN) {
            Pack p;
            p.v = *reinterpret_cast<const TV*>(row + k);
#pragma unroll
            for (int v = 0; v < RLS_V; ++v) {
                if (v0 + v < nv) {
                    Pack x;
                    x.v = *reinterpret_cast<const TV*>(vec_row(r, G, v0 + v, s) + k);
#pragma unroll
                    for (int e = 0; e < VN; ++e) acc[v] += p.e[e] * x.e[e];
                }
            }
        }
#pragma unroll
        for (int v = 0; v < RLS_V; ++v) {
            T total = warp_sum(acc[v]);
            if (lane == 0 && v0 + v < nv) rls_mv_store(total, v0 + v, j, s, u, proj);
        }
    }
}

/* d = alpha + r.u, summed in the same order by every block. */
__device__ __forceinline__ T rls_inv_d(const T* __restrict__ r, const T* __restrict__ u, u64 s, T alpha, T* scratch) {
    T part = (T)0;
    for (u64 k = threadIdx.x; k < s; k += blockDim.x) part += r[k] * u[k];
    return (T)1 / (alpha + block_sum(part, scratch));
}

/* (u_i u_j) is rounded once and scaled by the same 1/d for (i, j) and (j, i): P stays exactly symmetric. */
extern "C" __global__ void rls_update(T* __restrict__ P, const T* __restrict__ r, const T* __restrict__ u, u64 s, T alpha) {
    __shared__ T scratch[32];
    T inv = rls_inv_d(r, u, s, alpha, scratch);
    for (u64 i = blockIdx.x; i < s; i += gridDim.x) {
        T ui = u[i];
        T* row = P + i * s;
#pragma unroll 4
        for (u64 j = threadIdx.x; j < s; j += blockDim.x) row[j] -= (ui * u[j]) * inv;
    }
}

extern "C" __global__ void rls_update_vec(T* __restrict__ P, const T* __restrict__ r, const T* __restrict__ u, u64 s, T alpha) {
    __shared__ T scratch[32];
    T inv = rls_inv_d(r, u, s, alpha, scratch);
    for (u64 i = blockIdx.x; i < s; i += gridDim.x) {
        T ui = u[i];
        T* row = P + i * s;
#pragma unroll 2
        for (u64 j = (u64)threadIdx.x * VN; j < s; j += (u64)blockDim.x * VN) {
            Pack p, uj;
            p.v = *reinterpret_cast<const TV*>(row + j);
            uj.v = *reinterpret_cast<const TV*>(u + j);
#pragma unroll
            for (int e = 0; e < VN; ++e) p.e[e] -= (ui * uj.e[e]) * inv;
            *reinterpret_cast<TV*>(row + j) = p.v;
        }
    }
}
"#;

const MV_WARPS: usize = 8;
const UPDATE_BLOCK: u32 = 256;

pub(crate) fn rls_project<T: CudaFloat>(
    dev: &Arc<Device>,
    p: &mut DeviceBuffer<T>,
    r: &DeviceBuffer<T>,
    grad_w: Option<&DeviceBuffer<T>>,
    c: usize,
    s: usize,
    alpha: f64,
) -> Result<Option<DeviceBuffer<T>>> {
    let op = "rls_project";
    need_len(op, "P", p.len(), s * s)?;
    need_len(op, "r", r.len(), s)?;
    if let Some(g) = grad_w {
        need_len(op, "grad W", g.len(), c * s)?;
    }
    if alpha.is_nan() || alpha <= 0.0 || alpha.is_infinite() {
        return Err(Error::invalid(
            op,
            format!("alpha must be positive and finite, got {alpha}"),
            &[&[s, s]],
        ));
    }
    dev.enter(op)?;
    let proj = match grad_w {
        Some(_) => Some(dev.alloc::<T>(c * s, op)?),
        None => None,
    };
    if s == 0 {
        return Ok(proj);
    }
    let uvec = dev.alloc::<T>(s, op)?;
    let nvec = if grad_w.is_some() { c } else { 0 };
    let (pp, rp, gp, up, jp) = (
        p.ptr(),
        r.ptr(),
        grad_w.map_or(0, |g| g.ptr()),
        uvec.ptr(),
        proj.as_ref().map_or(0, |b| b.ptr()),
    );
    let (ss, cc, a) = (u(s), u(nvec), T::lit(alpha));
    let vec = s % (16 / std::mem::size_of::<T>()) == 0;
    let f = dev.kernel::<T>(&MODULE, if vec { "rls_mv_vec" } else { "rls_mv" }, op)?;
    let grid = s.div_ceil(MV_WARPS) as u32;
    dev.launch(
        f,
        (grid, 1, 1),
        (32 * MV_WARPS as u32, 1, 1),
        0,
        &mut [
            arg(&pp),
            arg(&rp),
            arg(&gp),
            arg(&up),
            arg(&jp),
            arg(&ss),
            arg(&cc),
        ],
        op,
    )?;
    let f = dev.kernel::<T>(
        &MODULE,
        if vec { "rls_update_vec" } else { "rls_update" },
        op,
    )?;
    // Each block re-reads r and u for d: keep the block count near two per SM.
    let grid = s.min(2 * dev.sm_count as usize) as u32;
    dev.launch(
        f,
        (grid, 1, 1),
        (UPDATE_BLOCK, 1, 1),
        0,
        &mut [arg(&pp), arg(&rp), arg(&up), arg(&ss), arg(&a)],
        op,
    )?;
    Ok(proj)
}
