use crate::backend::{Backend, GemmConfig};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Every GEMM of the core goes through here: the backend's, counted in
/// [`crate::flops`].
pub(crate) fn gemm<T: Element, B: Backend<T>>(
    backend: &B,
    cfg: &GemmConfig,
    a: &B::Storage,
    b: &B::Storage,
) -> Result<B::Storage> {
    let out = backend.gemm(cfg, a, b)?;
    crate::flops::add_gemm(cfg.batch, cfg.m, cfg.n, cfg.k);
    Ok(out)
}

impl<T: Element, B: Backend<T>> Tensor<T, B> {
    /// `op(self) @ op(rhs)` for rank-2 tensors, `op` transposing when asked.
    pub fn matmul_t(&self, rhs: &Self, trans_a: bool, trans_b: bool) -> Result<Self> {
        let op = "matmul";
        let (ar, ac) = self
            .shape()
            .as_matrix(op)
            .map_err(|_| Error::shape_mismatch(op, self.dims(), rhs.dims()))?;
        let (br, bc) = rhs
            .shape()
            .as_matrix(op)
            .map_err(|_| Error::shape_mismatch(op, self.dims(), rhs.dims()))?;
        let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
        let (k2, n) = if trans_b { (bc, br) } else { (br, bc) };
        if k != k2 {
            return Err(Error::shape_mismatch(op, self.dims(), rhs.dims()));
        }
        let cfg = GemmConfig {
            batch: 1,
            m,
            n,
            k,
            trans_a,
            trans_b,
            stride_a: 0,
            stride_b: 0,
        };
        let out = gemm(self.backend(), &cfg, self.storage(), rhs.storage())?;
        Ok(Tensor::from_storage(self.backend(), out, [m, n]))
    }

    pub fn matmul(&self, rhs: &Self) -> Result<Self> {
        self.matmul_t(rhs, false, false)
    }

    /// Rank-2 transpose (a copy).
    pub fn t(&self) -> Result<Self> {
        let (r, c) = self.shape().as_matrix("transpose")?;
        let mut out = self.backend().zeros(r * c)?;
        self.backend()
            .copy_strided(&mut out, 0, &[r, 1], self.storage(), 0, &[1, c], &[c, r])?;
        Ok(Tensor::from_storage(self.backend(), out, [c, r]))
    }
}

/// Gradients of `C = op(A) @ op(B)`.
pub(crate) fn matmul_backward<T: Element, B: Backend<T>>(
    a: &Tensor<T, B>,
    b: &Tensor<T, B>,
    ta: bool,
    tb: bool,
    grad: &Tensor<T, B>,
    needs: &[bool],
) -> Result<Vec<Option<Tensor<T, B>>>> {
    let ga = if needs[0] {
        Some(if ta {
            b.matmul_t(grad, tb, true)?
        } else {
            grad.matmul_t(b, false, !tb)?
        })
    } else {
        None
    };
    let gb = if needs[1] {
        Some(if tb {
            grad.matmul_t(a, true, ta)?
        } else {
            a.matmul_t(grad, !ta, false)?
        })
    } else {
        None
    };
    Ok(vec![ga, gb])
}
