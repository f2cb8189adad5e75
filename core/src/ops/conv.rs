use crate::backend::{Backend, Conv2dGeometry};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Output of a convolution forward pass plus what its backward needs
/// besides the input and the weight.
pub struct Conv2dOut<T: Element, B: Backend<T>> {
    pub out: Tensor<T, B>,
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
    /// 2-D cross-correlation (no bias): the backend's convolution, counted
    /// in [`crate::flops`] as the GEMM it is (`[oc, ckk]` by `[ckk, ohw]`
    /// per sample).
    pub fn conv2d_full(&self, w: &Self, stride: usize, pad: usize) -> Result<Conv2dOut<T, B>> {
        let g = conv2d_geometry(self.dims(), w.dims(), stride, pad)?;
        let oc = w.dims()[0];
        let backend = self.backend();
        let out = backend.conv2d(self.storage(), w.storage(), &g, oc)?;
        let f = g.forward_gemm(oc, g.n);
        crate::flops::add_gemm(f.batch, f.m, f.n, f.k);
        let out = Tensor::from_storage(backend, out, [g.n, oc, g.oh, g.ow]);
        Ok(Conv2dOut { out, geometry: g })
    }

    pub fn conv2d(&self, w: &Self, stride: usize, pad: usize) -> Result<Self> {
        Ok(self.conv2d_full(w, stride, pad)?.out)
    }
}

/// Gradients of a convolution for the input and the weight.
pub(crate) fn conv2d_backward<T: Element, B: Backend<T>>(
    x: &Tensor<T, B>,
    w: &Tensor<T, B>,
    g: &Conv2dGeometry,
    grad: &Tensor<T, B>,
    needs: &[bool],
) -> Result<Vec<Option<Tensor<T, B>>>> {
    let backend = grad.backend();
    let oc = w.dims()[0];
    let (gx, gw) = backend.conv2d_backward(
        x.storage(),
        w.storage(),
        grad.storage(),
        g,
        oc,
        needs[0],
        needs[1],
    )?;
    for (needed, f) in [
        (needs[0], g.input_grad_gemm(oc, g.n)),
        (needs[1], g.weight_grad_gemm(oc, g.n)),
    ] {
        if needed {
            crate::flops::add_gemm(f.batch, f.m, f.n, f.k);
        }
    }
    Ok(vec![
        gx.map(|s| Tensor::from_storage(backend, s, [g.n, g.c, g.h, g.w])),
        gw.map(|s| Tensor::from_storage(backend, s, w.dims().to_vec())),
    ])
}
