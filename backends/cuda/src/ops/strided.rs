//! Strided copy: the kernel behind narrow, concat, broadcast_to and contiguous copies.

use super::{collapse, need_len, padded, u, BLOCK, MAX_RANK};
use crate::device::{arg, Device};
use crate::kernels::KernelModule;
use crate::memory::DeviceBuffer;
use crate::CudaFloat;
use mla_core::{Error, Result};

pub(crate) static MODULE: KernelModule = KernelModule {
    slot: 0,
    name: "strided",
    source: SOURCE,
    functions: &["copy_strided_u32", "copy_strided_u64"],
};

const SOURCE: &str = r#"
#define MAX_RANK 8
struct Layout { i64 dims[MAX_RANK]; i64 dst[MAX_RANK]; i64 src[MAX_RANK]; int rank; };

/* I: index type; 32-bit division is much cheaper, used when the block is small enough. */
template <typename I>
__device__ void copy_impl(T* __restrict__ dst, u64 dst_off, const T* __restrict__ src, u64 src_off, u64 n, const Layout& l) {
    for (I i = (I)(blockIdx.x * blockDim.x + threadIdx.x); i < (I)n; i += (I)blockDim.x * gridDim.x) {
        I rem = i;
        u64 d = dst_off, s = src_off;
        for (int ax = l.rank - 1; ax >= 0; --ax) {
            I dim = (I)l.dims[ax];
            I q = rem / dim;
            I idx = rem - q * dim;
            rem = q;
            d += (u64)idx * (u64)l.dst[ax];
            s += (u64)idx * (u64)l.src[ax];
        }
        dst[d] = src[s];
    }
}
extern "C" __global__ void copy_strided_u32(T* dst, u64 dst_off, const T* src, u64 src_off, u64 n, Layout l) {
    copy_impl<u32>(dst, dst_off, src, src_off, n, l);
}
extern "C" __global__ void copy_strided_u64(T* dst, u64 dst_off, const T* src, u64 src_off, u64 n, Layout l) {
    copy_impl<u64>(dst, dst_off, src, src_off, n, l);
}
"#;

#[repr(C)]
struct Layout {
    dims: [i64; MAX_RANK],
    dst: [i64; MAX_RANK],
    src: [i64; MAX_RANK],
    rank: i32,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_strided<T: CudaFloat>(
    dev: &Device,
    dst: &mut DeviceBuffer<T>,
    dst_offset: usize,
    dst_strides: &[usize],
    src: &DeviceBuffer<T>,
    src_offset: usize,
    src_strides: &[usize],
    dims: &[usize],
) -> Result<()> {
    let op = "copy_strided";
    let rank = dims.len();
    if dst_strides.len() != rank || src_strides.len() != rank {
        return Err(Error::invalid(
            op,
            "strides and dims differ in rank",
            &[dims, dst_strides, src_strides],
        ));
    }
    let n: usize = dims.iter().product();
    if n == 0 {
        return Ok(());
    }
    let last = |off: usize, strides: &[usize]| {
        off + dims
            .iter()
            .zip(strides)
            .map(|(d, s)| (d - 1) * s)
            .sum::<usize>()
    };
    need_len(
        op,
        "destination",
        dst.len(),
        last(dst_offset, dst_strides) + 1,
    )?;
    need_len(op, "source", src.len(), last(src_offset, src_strides) + 1)?;
    dev.enter(op)?;
    let (cd, cs) = collapse(dims, &[dst_strides, src_strides]);
    if cd.is_empty() || (cd.len() == 1 && cs[0][0] == 1 && cs[1][0] == 1) {
        return dev.copy_device(dst, dst_offset, src, src_offset, n, op);
    }
    if cd.len() > MAX_RANK {
        return Err(Error::backend(
            op,
            "cuda",
            format!(
                "layout of rank {} does not collapse to {MAX_RANK} axes",
                cd.len()
            ),
        ));
    }
    let layout = Layout {
        dims: padded(&cd),
        dst: padded(&cs[0]),
        src: padded(&cs[1]),
        rank: cd.len() as i32,
    };
    let name = if n < (1 << 31) {
        "copy_strided_u32"
    } else {
        "copy_strided_u64"
    };
    let f = dev.kernel::<T>(&MODULE, name, op)?;
    let (d, doff, s, soff, nn) = (dst.ptr(), u(dst_offset), src.ptr(), u(src_offset), u(n));
    let grid = dev.grid_for(n, BLOCK);
    dev.launch(
        f,
        (grid, 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [
            arg(&d),
            arg(&doff),
            arg(&s),
            arg(&soff),
            arg(&nn),
            arg(&layout),
        ],
        op,
    )
}
