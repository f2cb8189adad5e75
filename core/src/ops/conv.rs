use crate::backend::{Backend, Conv2dGeometry, GemmConfig};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Output of a convolution forward pass plus what its backward needs.
pub struct Conv2dOut<T: Element, B: Backend<T>> {
    pub out: Tensor<T, B>,
    pub cols: Tensor<T, B>,
    pub geometry: Conv2dGeometry,
}

/// Validates an NCHW input against an `[oc, c, kh, kw]` weight.
pub fn conv2d_geometry(
    x: &[usize],
    w: &[usize],
    stride: usize,
    pad: usize,
) -> Result<Conv2dGeometry> {
    let op = "conv2d";
    let ([n, c, h, wd], [oc, wc, kh, kw]) = (x, w) else {
        return Err(Error::invalid(
            op,
            "expected input [n, c, h, w] and weight [oc, c, kh, kw]",
            &[x, w],
        ));
    };
    if c != wc || *oc == 0 {
        return Err(Error::shape_mismatch(op, x, w));
    }
    if *c == 0 {
        return Err(Error::invalid(op, "input has no channels", &[x, w]));
    }
    if stride == 0 {
        return Err(Error::invalid(op, "stride must be at least 1", &[x, w]));
    }
    let padded = |size: usize| pad.checked_mul(2).and_then(|p| p.checked_add(size));
    let (Some(ph), Some(pw)) = (padded(*h), padded(*wd)) else {
        return Err(Error::invalid(
            op,
            format!("padding {pad} overflows the input size"),
            &[x, w],
        ));
    };
    if ph < *kh || pw < *kw || *kh == 0 || *kw == 0 {
        return Err(Error::invalid(
            op,
            format!("kernel larger than the padded input (pad {pad})"),
            &[x, w],
        ));
    }
    Ok(Conv2dGeometry {
        n: *n,
        c: *c,
        h: *h,
        w: *wd,
        kh: *kh,
        kw: *kw,
        stride,
        pad,
        oh: (ph - kh) / stride + 1,
        ow: (pw - kw) / stride + 1,
    })
}

impl<T: Element, B: Backend<T>> Tensor<T, B> {
    /// 2-D cross-correlation (no bias) by im2col + one batched GEMM.
    pub fn conv2d_full(&self, w: &Self, stride: usize, pad: usize) -> Result<Conv2dOut<T, B>> {
        let g = conv2d_geometry(self.dims(), w.dims(), stride, pad)?;
        let oc = w.dims()[0];
        let (ckk, ohw) = (g.col_rows(), g.col_cols());
        let backend = self.backend();
        let cols = Tensor::from_storage(
            backend,
            backend.im2col(self.storage(), &g)?,
            [g.n, ckk, ohw],
        );
        let cfg = GemmConfig {
            batch: g.n,
            m: oc,
            n: ohw,
            k: ckk,
            trans_a: false,
            trans_b: false,
            stride_a: 0,
            stride_b: ckk * ohw,
        };
        let out = super::matmul::gemm(backend, &cfg, w.storage(), cols.storage())?;
        let out = Tensor::from_storage(backend, out, [g.n, oc, g.oh, g.ow]);
        Ok(Conv2dOut {
            out,
            cols,
            geometry: g,
        })
    }

    pub fn conv2d(&self, w: &Self, stride: usize, pad: usize) -> Result<Self> {
        Ok(self.conv2d_full(w, stride, pad)?.out)
    }
}

/// Gradients of a convolution for the input and the weight.
pub(crate) fn conv2d_backward<T: Element, B: Backend<T>>(
    cols: &Tensor<T, B>,
    w: &Tensor<T, B>,
    g: &Conv2dGeometry,
    grad: &Tensor<T, B>,
    needs: &[bool],
) -> Result<Vec<Option<Tensor<T, B>>>> {
    let backend = grad.backend();
    let oc = w.dims()[0];
    let (ckk, ohw) = (g.col_rows(), g.col_cols());
    let gx = if needs[0] {
        let cfg = GemmConfig {
            batch: g.n,
            m: ckk,
            n: ohw,
            k: oc,
            trans_a: true,
            trans_b: false,
            stride_a: 0,
            stride_b: oc * ohw,
        };
        let dcols = super::matmul::gemm(backend, &cfg, w.storage(), grad.storage())?;
        let dx = backend.col2im(&dcols, g)?;
        Some(Tensor::from_storage(backend, dx, [g.n, g.c, g.h, g.w]))
    } else {
        None
    };
    let gw = if needs[1] {
        let cfg = GemmConfig {
            batch: g.n,
            m: oc,
            n: ckk,
            k: ohw,
            trans_a: false,
            trans_b: true,
            stride_a: oc * ohw,
            stride_b: ckk * ohw,
        };
        let per_sample = super::matmul::gemm(backend, &cfg, grad.storage(), cols.storage())?;
        let summed = backend.sum_axis(&per_sample, 1, g.n, oc * ckk)?;
        Some(Tensor::from_storage(backend, summed, w.dims().to_vec()))
    } else {
        None
    };
    Ok(vec![gx, gw])
}
