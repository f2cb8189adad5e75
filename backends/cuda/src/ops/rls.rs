//! Fused HGM step: project the head gradient with the old P, then the RLS
//! update of P, in two launches and no host round trip.
//!
//! 1. `rls_mv`: produces `u = P r` and `G P` (P is symmetric, so row j of P
//!    gives `u[j]` and column j of `G P`) in one pass over P. The last block
//!    to finish (a counter in device memory, reset by that block) computes
//!    `1 / (alpha + r.u)` once, in a fixed order.
//! 2. `rls_update`: `P -= (u_i u_j) (1/d)`, one row of P per block row.
//!    `u_i u_j` is commutative in floating point, so P stays exactly symmetric.
//!
//! When `s` is a multiple of 16 bytes' worth of elements both kernels use
//! 16-byte loads (every buffer starts 512-byte aligned), and `rls_mv` gives
//! each warp four rows of P (every element of r or of a gradient row read
//! from shared memory serves four rows of P) and splits each row between four
//! warps; the vectors are staged in shared memory tile by tile, so a warp
//! waits for one round trip per tile instead of one per vector. At s = 2048, P
//! (16 MiB) fits in the L2 of an H100/H200, where `rls_update` can find it
//! again. Measured times and what still keeps this at 3x the bandwidth floor:
//! BENCHMARKS.md.

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
#define RLS_WARPS 8       /* warps per block in rls_mv */
#define MV_ROWS 4         /* rows of P per warp in rls_mv_vec */
#define MV_KS 4           /* warps sharing the columns of the same rows in rls_mv_vec */
#define MV_GROUPS (RLS_WARPS / MV_KS)

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

/* Called by every block after its last store of u: the last block to get here
   computes inv = 1 / (alpha + r.u) in a fixed order and resets the counter. */
__device__ void rls_finish(const T* __restrict__ r, const T* u, u64 s, T alpha, T* inv, u32* counter) {
    __shared__ T scratch[32];
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    T part = (T)0;
    /* u was written by other blocks: read it through L2. */
    for (u64 k = threadIdx.x; k < s; k += blockDim.x) part += r[k] * __ldcg(u + k);
    T d = alpha + block_sum(part, scratch);
    if (threadIdx.x == 0) {
        *inv = (T)1 / d;
        *counter = 0u;
    }
}

/* One warp per row of P (any s). */
extern "C" __global__ void rls_mv(const T* __restrict__ P, const T* __restrict__ r, const T* __restrict__ G,
                                  T* u, T* __restrict__ proj, u64 s, u64 c, T alpha, T* inv, u32* counter) {
    int lane = threadIdx.x & 31;
    u64 j = (u64)blockIdx.x * RLS_WARPS + (threadIdx.x >> 5);
    if (j < s) {
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
    rls_finish(r, u, s, alpha, inv, counter);
}

/* One step of warp_sum32: keeps N / 2 of the N values, trading the other
   half with the lane N / 2 away. */
template <int N>
__device__ __forceinline__ void warp_sum_step(T* a, int lane) {
    bool upper = (lane & (N / 2)) != 0;
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
        T send = upper ? a[i] : a[i + N / 2];
        T keep = upper ? a[i + N / 2] : a[i];
        a[i] = keep + __shfl_xor_sync(0xffffffffu, send, N / 2);
    }
}

/* Sums 32 values over the warp in 31 shuffles: afterwards lane l holds, in
   a[0], the warp total of a[l]. Every index is a compile-time constant, so
   the array stays in registers. */
__device__ __forceinline__ void warp_sum32(T* a, int lane) {
    warp_sum_step<32>(a, lane);
    warp_sum_step<16>(a, lane);
    warp_sum_step<8>(a, lane);
    warp_sum_step<4>(a, lane);
    warp_sum_step<2>(a, lane);
}

/* s a multiple of VN: MV_ROWS rows per warp, each row's columns split over
   MV_KS warps. The block walks the columns in tiles of MV_TILE vectors of VN:
   each tile's slice of r and of the gradient rows is staged in shared memory
   by the whole block (independent loads, one round trip), while this warp's
   loads of P for the tile are already in flight. */
#define MV_TILE (32 * MV_KS)

/* Copies 16 bytes from global to shared memory, or zeros them when !ok. On
   sm_80 and newer an asynchronous copy (no registers, every copy of a loop in
   flight at once); stage16_wait() waits for this thread's copies. */
__device__ __forceinline__ void stage16(void* dst, const void* src, bool ok) {
#if __CUDA_ARCH__ >= 800
    unsigned saddr = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(saddr), "l"(src), "r"(ok ? 16 : 0));
#else
    Pack x;
    if (ok) x.v = *reinterpret_cast<const TV*>(src);
    else {
#pragma unroll
        for (int e = 0; e < VN; ++e) x.e[e] = (T)0;
    }
    *reinterpret_cast<TV*>(dst) = x.v;
#endif
}
__device__ __forceinline__ void stage16_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;\n" ::);
#endif
}
extern "C" __global__ void rls_mv_vec(const T* __restrict__ P, const T* __restrict__ r, const T* __restrict__ G,
                                      T* u, T* __restrict__ proj, u64 s, u64 c, T alpha, T* inv, u32* counter) {
    __shared__ T part[MV_GROUPS][MV_KS][2][32];
    __shared__ TV vs[RLS_V][MV_TILE];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int ks = warp % MV_KS, grp = warp / MV_KS;
    u64 j0 = ((u64)blockIdx.x * MV_GROUPS + grp) * MV_ROWS;
    u64 nv = c + 1;
    for (u64 v0 = 0; v0 < nv; v0 += RLS_V) {
        /* acc[h * 32 + rr2 * RLS_V + v]: row 2h + rr2, vector v0 + v. */
        T acc[2 * 32];
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[i] = (T)0;
        for (u64 kt = 0; kt < s; kt += (u64)MV_TILE * VN) {
            u64 k = kt + ((u64)ks * 32 + lane) * VN;
            bool mine = j0 < s && k < s;
            Pack p[MV_ROWS];
#pragma unroll
            for (int rr = 0; rr < MV_ROWS; ++rr) {
                if (mine && j0 + rr < s) p[rr].v = *reinterpret_cast<const TV*>(P + (j0 + rr) * s + k);
                else {
#pragma unroll
                    for (int e = 0; e < VN; ++e) p[rr].e[e] = (T)0;
                }
            }
            /* blockDim.x is RLS_WARPS * 32 (the launch fixes it). */
#pragma unroll
            for (int i = threadIdx.x; i < RLS_V * MV_TILE; i += RLS_WARPS * 32) {
                int v = i / MV_TILE, col = i % MV_TILE;
                u64 kk = kt + (u64)col * VN;
                bool ok = v0 + v < nv && kk < s;
                stage16(&vs[v][col], ok ? (const void*)(vec_row(r, G, v0 + v, s) + kk) : (const void*)r, ok);
            }
            stage16_wait();
            __syncthreads();
            if (mine) {
#pragma unroll
                for (int v = 0; v < RLS_V; ++v) {
                    if (v0 + v < nv) {
                        Pack x;
                        x.v = vs[v][ks * 32 + lane];
#pragma unroll
                        for (int rr = 0; rr < MV_ROWS; ++rr)
#pragma unroll
                            for (int e = 0; e < VN; ++e) acc[rr * RLS_V + v] += p[rr].e[e] * x.e[e];
                    }
                }
            }
            __syncthreads();
        }
        warp_sum32(acc, lane);
        warp_sum32(acc + 32, lane);
        part[grp][ks][0][lane] = acc[0];
        part[grp][ks][1][lane] = acc[32];
        __syncthreads();
        if (ks == 0) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                T total = part[grp][0][h][lane];
#pragma unroll
                for (int q = 1; q < MV_KS; ++q) total += part[grp][q][h][lane];
                u64 j = j0 + 2 * h + lane / RLS_V, v = v0 + lane % RLS_V;
                if (j < s && v < nv) rls_mv_store(total, v, j, s, u, proj);
            }
        }
        __syncthreads();
    }
    rls_finish(r, u, s, alpha, inv, counter);
}

/* (u_i u_j) is rounded once and scaled by the same 1/d for (i, j) and (j, i): P stays exactly symmetric.
   Block row y takes rows y, y + gridDim.y, ...; x spans the columns. */
extern "C" __global__ void rls_update(T* __restrict__ P, const T* __restrict__ u, const T* __restrict__ inv_d, u64 s) {
    T inv = *inv_d;
    for (u64 i = blockIdx.y; i < s; i += gridDim.y) {
        T ui = u[i];
        T* row = P + i * s;
        for (u64 j = (u64)blockIdx.x * blockDim.x + threadIdx.x; j < s; j += (u64)gridDim.x * blockDim.x)
            row[j] -= (ui * u[j]) * inv;
    }
}

extern "C" __global__ void rls_update_vec(T* __restrict__ P, const T* __restrict__ u, const T* __restrict__ inv_d, u64 s) {
    T inv = *inv_d;
    for (u64 i = blockIdx.y; i < s; i += gridDim.y) {
        T ui = u[i];
        T* row = P + i * s;
        for (u64 j = ((u64)blockIdx.x * blockDim.x + threadIdx.x) * VN; j < s; j += (u64)gridDim.x * blockDim.x * VN) {
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

/// Warps per block of `rls_mv` (both variants).
const MV_WARPS: usize = 8;
/// Rows of P per block of `rls_mv_vec`: 4 rows per warp, 4 warps per row.
const MV_ROWS_PER_BLOCK: usize = 8;
const UPDATE_BLOCK: u32 = 256;
/// The driver's limit on `gridDim.y`.
const MAX_GRID_Y: usize = 65_535;

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
    let inv = dev.alloc::<T>(1, op)?;
    let nvec = if grad_w.is_some() { c } else { 0 };
    let (pp, rp, gp, up, jp, ip, cp) = (
        p.ptr(),
        r.ptr(),
        grad_w.map_or(0, |g| g.ptr()),
        uvec.ptr(),
        proj.as_ref().map_or(0, |b| b.ptr()),
        inv.ptr(),
        dev.counter(),
    );
    let (ss, cc, a) = (u(s), u(nvec), T::lit(alpha));
    let vec = s.is_multiple_of(16 / std::mem::size_of::<T>());
    let f = dev.kernel::<T>(&MODULE, if vec { "rls_mv_vec" } else { "rls_mv" }, op)?;
    let rows_per_block = if vec { MV_ROWS_PER_BLOCK } else { MV_WARPS };
    let grid = s.div_ceil(rows_per_block) as u32;
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
            arg(&a),
            arg(&ip),
            arg(&cp),
        ],
        op,
    )?;
    let f = dev.kernel::<T>(
        &MODULE,
        if vec { "rls_update_vec" } else { "rls_update" },
        op,
    )?;
    // x spans a row (16-byte vectors when aligned), y the rows: one block per
    // row when the row fits one block, so every load of P is independent.
    let per_thread = if vec {
        16 / std::mem::size_of::<T>()
    } else {
        1
    };
    let grid_x = s.div_ceil(UPDATE_BLOCK as usize * per_thread).min(1024) as u32;
    let grid_y = s.min(MAX_GRID_Y) as u32;
    dev.launch(
        f,
        (grid_x, grid_y, 1),
        (UPDATE_BLOCK, 1, 1),
        0,
        &mut [arg(&pp), arg(&up), arg(&ip), arg(&ss)],
        op,
    )?;
    Ok(proj)
}
