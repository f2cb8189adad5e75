//! Backend ops: each file holds the CUDA C source of its kernels next to the
//! host code that checks arguments and launches them.

pub(crate) mod binary;
pub(crate) mod conv;
pub(crate) mod gather;
pub(crate) mod gemm;
pub(crate) mod loss;
pub(crate) mod optim;
pub(crate) mod pool;
pub(crate) mod reduce;
pub(crate) mod rls;
pub(crate) mod softmax;
pub(crate) mod strided;
pub(crate) mod unary;

use mla_core::{Error, Result};

/// Threads per block for 1-D element-wise kernels.
pub(crate) const BLOCK: u32 = 256;

/// Largest rank the strided kernels take after collapsing axes.
pub(crate) const MAX_RANK: usize = 8;

/// Errors when a buffer holds fewer than `need` elements.
pub(crate) fn need_len(op: &'static str, what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::invalid(
            op,
            format!("{what} holds {have} elements, {need} needed"),
            &[&[have], &[need]],
        ));
    }
    Ok(())
}

/// `usize` to the `u64` kernels take.
#[inline]
pub(crate) fn u(x: usize) -> u64 {
    x as u64
}

/// Drops axes of size 1 and merges neighbours that are contiguous for every
/// operand, so most layouts reach the kernels as rank 1 or 2.
pub(crate) fn collapse(dims: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_dims: Vec<usize> = Vec::with_capacity(dims.len());
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::with_capacity(dims.len()); strides.len()];
    for (ax, &d) in dims.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let mergeable = !out_dims.is_empty()
            && strides
                .iter()
                .zip(&out_strides)
                .all(|(st, os)| os.last() == Some(&(st[ax] * d)));
        if mergeable {
            *out_dims.last_mut().expect("non-empty") *= d;
            for (st, os) in strides.iter().zip(out_strides.iter_mut()) {
                *os.last_mut().expect("non-empty") = st[ax];
            }
        } else {
            out_dims.push(d);
            for (st, os) in strides.iter().zip(out_strides.iter_mut()) {
                os.push(st[ax]);
            }
        }
    }
    (out_dims, out_strides)
}

/// Fixed-size copy of a (collapsed) layout for a kernel parameter.
pub(crate) fn padded(v: &[usize]) -> [i64; MAX_RANK] {
    let mut a = [0i64; MAX_RANK];
    for (d, &s) in a.iter_mut().zip(v) {
        *d = s as i64;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::collapse;

    #[test]
    fn collapse_merges_contiguous_and_drops_unit_axes() {
        // A contiguous [2, 3, 4] copy is one run of 24.
        let (d, s) = collapse(&[2, 3, 4], &[&[12, 4, 1], &[12, 4, 1]]);
        assert_eq!(d, vec![24]);
        assert_eq!(s, vec![vec![1], vec![1]]);
        // Bias row broadcast over [5, 1, 7]: rows stay separate, the unit axis goes.
        let (d, s) = collapse(&[5, 1, 7], &[&[7, 7, 1], &[0, 0, 1]]);
        assert_eq!(d, vec![5, 7]);
        assert_eq!(s, vec![vec![7, 1], vec![0, 1]]);
        // Narrowing axis 1 of [2, 6, 3] to length 2 starting anywhere: inner two axes merge.
        let (d, s) = collapse(&[2, 2, 3], &[&[6, 3, 1], &[18, 3, 1]]);
        assert_eq!(d, vec![2, 6]);
        assert_eq!(s, vec![vec![6, 1], vec![18, 1]]);
        // All-broadcast scalar.
        let (d, s) = collapse(&[1, 1], &[&[1, 1], &[0, 0]]);
        assert!(d.is_empty());
        assert_eq!(s, vec![Vec::<usize>::new(), vec![]]);
    }
}
