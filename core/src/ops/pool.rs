use crate::backend::{Backend, Pool2dGeometry};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::tensor::{Indices, Tensor};

/// Validates an NCHW input for a `kh x kw` pool with `pad` on every side
/// (sizes rounded down, as PyTorch without `ceil_mode`).
pub fn pool2d_geometry(
    op: &'static str,
    x: &[usize],
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
) -> Result<Pool2dGeometry> {
    let [n, c, h, w] = x else {
        return Err(Error::invalid(op, "expected input [n, c, h, w]", &[x]));
    };
    if kh == 0 || kw == 0 || stride == 0 {
        return Err(Error::invalid(
            op,
            format!("kernel {kh}x{kw} and stride {stride} must be positive"),
            &[x],
        ));
    }
    // PyTorch's bound: with more padding a window could lie wholly in the
    // padding and its max would be -inf.
    if pad > kh / 2 || pad > kw / 2 {
        return Err(Error::invalid(
            op,
            format!("padding {pad} exceeds half the kernel {kh}x{kw}"),
            &[x],
        ));
    }
    let (ph, pw) = (h + 2 * pad, w + 2 * pad);
    if kh > ph || kw > pw {
        return Err(Error::invalid(
            op,
            format!("kernel {kh}x{kw} larger than the input plane (pad {pad})"),
            &[x],
        ));
    }
    let planes = n
        .checked_mul(*c)
        .ok_or_else(|| Error::invalid(op, "element count overflows usize", &[x]))?;
    Ok(Pool2dGeometry {
        planes,
        h: *h,
        w: *w,
        kh,
        kw,
        stride,
        pad,
        oh: (ph - kh) / stride + 1,
        ow: (pw - kw) / stride + 1,
    })
}

impl<T: Element, B: Backend<T>> Tensor<T, B> {
    /// Max pooling of `k x k` windows with `pad` on every side (padding never
    /// wins); also returns the argmax indices its backward needs.
    pub fn max_pool2d_full(
        &self,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<(Self, Indices<T, B>, crate::backend::Pool2dGeometry)> {
        let g = pool2d_geometry("max_pool2d", self.dims(), k, k, stride, pad)?;
        let (y, argmax) = self.backend().max_pool2d(self.storage(), &g)?;
        let d = self.dims();
        let out = Tensor::from_storage(self.backend(), y, [d[0], d[1], g.oh, g.ow]);
        let len = self.backend().index_len(&argmax);
        Ok((out, Indices::from_raw(argmax, len), g))
    }

    pub fn max_pool2d(&self, k: usize, stride: usize) -> Result<Self> {
        Ok(self.max_pool2d_full(k, stride, 0)?.0)
    }

    /// Max pooling with padding, e.g. ResNet's 3x3 / stride 2 / pad 1 stem pool.
    pub fn max_pool2d_pad(&self, k: usize, stride: usize, pad: usize) -> Result<Self> {
        Ok(self.max_pool2d_full(k, stride, pad)?.0)
    }

    pub fn avg_pool2d_full(
        &self,
        kh: usize,
        kw: usize,
        stride: usize,
    ) -> Result<(Self, Pool2dGeometry)> {
        let g = pool2d_geometry("avg_pool2d", self.dims(), kh, kw, stride, 0)?;
        let y = self.backend().avg_pool2d(self.storage(), &g)?;
        let d = self.dims();
        Ok((
            Tensor::from_storage(self.backend(), y, [d[0], d[1], g.oh, g.ow]),
            g,
        ))
    }

    pub fn avg_pool2d(&self, k: usize, stride: usize) -> Result<Self> {
        Ok(self.avg_pool2d_full(k, k, stride)?.0)
    }

    /// Average over each whole plane: `[n, c, h, w] -> [n, c, 1, 1]`.
    pub fn global_avg_pool2d(&self) -> Result<Self> {
        let d = self.dims();
        if d.len() != 4 || d[2] == 0 || d[3] == 0 {
            return Err(Error::invalid(
                "global_avg_pool2d",
                "expected input [n, c, h, w] with a non-empty plane",
                &[d],
            ));
        }
        Ok(self.avg_pool2d_full(d[2], d[3], 1)?.0)
    }
}

pub(crate) fn max_pool2d_backward<T: Element, B: Backend<T>>(
    argmax: &Indices<T, B>,
    g: &Pool2dGeometry,
    in_dims: &[usize],
    grad: &Tensor<T, B>,
) -> Result<Tensor<T, B>> {
    let s = grad
        .backend()
        .max_pool2d_backward(grad.storage(), argmax.storage(), g)?;
    Ok(Tensor::from_storage(grad.backend(), s, in_dims.to_vec()))
}

pub(crate) fn avg_pool2d_backward<T: Element, B: Backend<T>>(
    g: &Pool2dGeometry,
    in_dims: &[usize],
    grad: &Tensor<T, B>,
) -> Result<Tensor<T, B>> {
    let s = grad.backend().avg_pool2d_backward(grad.storage(), g)?;
    Ok(Tensor::from_storage(grad.backend(), s, in_dims.to_vec()))
}
