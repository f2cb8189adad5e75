use mla_core::{Error, Result};

/// N-d strided copy; the innermost axis runs as a tight loop (a memcpy when both strides are 1).
pub(crate) fn copy<T: Copy>(
    dst: &mut [T],
    dst_offset: usize,
    dst_strides: &[usize],
    src: &[T],
    src_offset: usize,
    src_strides: &[usize],
    dims: &[usize],
) -> Result<()> {
    let rank = dims.len();
    if dst_strides.len() != rank || src_strides.len() != rank {
        return Err(Error::invalid(
            "copy_strided",
            "strides and dims differ in rank",
            &[dims, dst_strides, src_strides],
        ));
    }
    if dims.contains(&0) {
        return Ok(());
    }
    let last = |off: usize, strides: &[usize]| {
        off + dims
            .iter()
            .zip(strides)
            .map(|(d, s)| (d - 1) * s)
            .sum::<usize>()
    };
    if last(dst_offset, dst_strides) >= dst.len() || last(src_offset, src_strides) >= src.len() {
        return Err(Error::invalid(
            "copy_strided",
            "block reaches past the end of a buffer",
            &[dims, &[dst.len(), src.len()]],
        ));
    }
    if rank == 0 {
        dst[dst_offset] = src[src_offset];
        return Ok(());
    }
    let n = dims[rank - 1];
    let (ds, ss) = (dst_strides[rank - 1], src_strides[rank - 1]);
    let mut idx = vec![0usize; rank - 1];
    loop {
        let d0 = dst_offset
            + idx
                .iter()
                .zip(dst_strides)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        let s0 = src_offset
            + idx
                .iter()
                .zip(src_strides)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        if ds == 1 && ss == 1 {
            dst[d0..d0 + n].copy_from_slice(&src[s0..s0 + n]);
        } else {
            for j in 0..n {
                dst[d0 + j * ds] = src[s0 + j * ss];
            }
        }
        // Odometer increment over the outer axes.
        let mut ax = rank - 1;
        loop {
            if ax == 0 {
                return Ok(());
            }
            ax -= 1;
            idx[ax] += 1;
            if idx[ax] < dims[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
}
