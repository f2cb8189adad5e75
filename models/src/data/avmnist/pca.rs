//! PCA for the image degradation: mean and population covariance (chunked f64 GEMMs on the
//! backend the caller passes), a symmetric eigensolver of our own (Householder tridiagonalisation then
//! implicit QL with shifts), and removal of the leading components.

use mla_core::{Backend, Tensor};
use rayon::prelude::*;

use crate::data::error::DataError;

/// Rows per GEMM chunk: large enough for an efficient GEMM, small enough to keep the f64
/// copy of a chunk around 30 MB.
const CHUNK_ROWS: usize = 4096;

fn engine_err(e: mla_core::Error) -> DataError {
    DataError::Prepare(format!("PCA: {e}"))
}

/// Per-column mean (f64) of `n` rows of `d` values.
pub fn column_mean(rows: &[f32], d: usize) -> Vec<f64> {
    let n = rows.len() / d;
    let mut sum = vec![0.0f64; d];
    for r in rows.chunks_exact(d) {
        sum.iter_mut().zip(r).for_each(|(s, &x)| *s += x as f64);
    }
    sum.iter().map(|s| s / n as f64).collect()
}

/// Column blocks of the covariance: only the blocks on and below the diagonal are
/// computed (the rest by symmetry), each block product as its own task.
const COL_BLOCKS: usize = 4;

/// Population covariance `[d, d]` of the rows about `mean`. Each block is one GEMM per chunk
/// and chunks are summed in a fixed order, so the result does not depend on the threads.
pub fn covariance<B: Backend<f64>>(
    backend: &B,
    rows: &[f32],
    d: usize,
    mean: &[f64],
) -> Result<Vec<f64>, DataError> {
    let n = rows.len() / d;
    let nb = COL_BLOCKS.min(d).max(1);
    let bounds: Vec<usize> = (0..=nb).map(|b| b * d / nb).collect();
    let pairs: Vec<(usize, usize)> = (0..nb).flat_map(|i| (0..=i).map(move |j| (i, j))).collect();
    let mut cov = vec![0.0f64; d * d];
    for chunk in rows.chunks(CHUNK_ROWS * d) {
        let m = chunk.len() / d;
        // Centred f64 copies of each column block, [m, width] row-major.
        let blocks: Vec<Tensor<f64, B>> = (0..nb)
            .into_par_iter()
            .map(|b| {
                let (lo, hi) = (bounds[b], bounds[b + 1]);
                let mut xc = Vec::with_capacity(m * (hi - lo));
                for x in chunk.chunks_exact(d) {
                    xc.extend(
                        x[lo..hi]
                            .iter()
                            .zip(&mean[lo..hi])
                            .map(|(&x, mu)| x as f64 - mu),
                    );
                }
                Tensor::from_slice(backend, &xc, [m, hi - lo]).map_err(engine_err)
            })
            .collect::<Result<_, _>>()?;
        let parts: Vec<Vec<f64>> = pairs
            .par_iter()
            .map(|&(i, j)| {
                blocks[i]
                    .matmul_t(&blocks[j], true, false)
                    .and_then(|t| t.to_vec())
                    .map_err(engine_err)
            })
            .collect::<Result<_, _>>()?;
        for (&(i, j), part) in pairs.iter().zip(&parts) {
            let w = bounds[j + 1] - bounds[j];
            for (r, prow) in part.chunks_exact(w).enumerate() {
                let row = (bounds[i] + r) * d + bounds[j];
                cov[row..row + w]
                    .iter_mut()
                    .zip(prow)
                    .for_each(|(c, p)| *c += p);
            }
        }
    }
    for r in 0..d {
        for c in 0..r {
            cov[r * d + c] /= n as f64;
            cov[c * d + r] = cov[r * d + c];
        }
        cov[r * d + r] /= n as f64;
    }
    Ok(cov)
}

/// Eigen-decomposition of a symmetric `[n, n]` matrix (only the lower triangle is read).
/// Returns eigenvalues in descending order and the eigenvectors as the rows of an
/// `[n, n]` matrix, in the same order.
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>), DataError> {
    if a.len() != n * n {
        return Err(DataError::InvalidArgument(format!(
            "eigensolver: {} values for a {n}x{n} matrix",
            a.len()
        )));
    }
    if n == 0 {
        return Ok((vec![], vec![]));
    }
    let mut full: Vec<f64> = (0..n * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            if r >= c {
                a[i]
            } else {
                a[c * n + r]
            }
        })
        .collect();
    let (mut d, mut e, mut z) = tridiagonalize(&mut full, n);
    // The QL rotations combine pairs of eigenvector columns of Q, i.e. rows of z = Q^T.
    tridiagonal_ql(&mut d, &mut e, &mut z, n)?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[j].total_cmp(&d[i]).then(i.cmp(&j)));
    let values = order.iter().map(|&i| d[i]).collect();
    let mut vectors = Vec::with_capacity(n * n);
    for &i in &order {
        vectors.extend_from_slice(&z[i * n..(i + 1) * n]);
    }
    Ok((values, vectors))
}

/// Rows of the trailing block above which its updates run on the rayon pool.
const PAR_ROWS: usize = 128;

/// Householder reduction of the symmetric matrix `a` (full storage, row-major; destroyed)
/// to tridiagonal T = Q^T A Q: returns T's diagonal `d`, its sub-diagonal in `e[1..]`
/// (`e[0] = 0`) and `Q^T` (row-major). Every inner loop runs along contiguous rows.
fn tridiagonalize(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut e = vec![0.0; n];
    // reflectors[k] = (beta, v) with H_k = I - beta v v^T acting on indices k+1..n.
    let mut reflectors: Vec<Option<(f64, Vec<f64>)>> = Vec::with_capacity(n.saturating_sub(2));
    for k in 0..n.saturating_sub(2) {
        let lo = k + 1;
        let x = a[k * n + lo..(k + 1) * n].to_vec();
        let tail: f64 = x[1..].iter().map(|t| t * t).sum();
        if tail == 0.0 {
            // Column k is already reduced.
            e[lo] = x[0];
            reflectors.push(None);
            continue;
        }
        let norm = (x[0] * x[0] + tail).sqrt();
        let alpha = if x[0] > 0.0 { -norm } else { norm };
        let mut v = x;
        v[0] -= alpha;
        let beta = 2.0 / (v[0] * v[0] + tail);
        e[lo] = alpha;
        // p = beta A22 v, then w = p - (beta/2)(p.v) v, A22 -= v w^T + w v^T.
        let m = n - lo;
        let block = &mut a[lo * n..];
        let row_dot =
            |row: &[f64]| beta * row[lo..].iter().zip(&v).map(|(r, vi)| r * vi).sum::<f64>();
        let p: Vec<f64> = if m > PAR_ROWS {
            block.par_chunks(n).map(row_dot).collect()
        } else {
            block.chunks(n).map(row_dot).collect()
        };
        let kk = 0.5 * beta * p.iter().zip(&v).map(|(pi, vi)| pi * vi).sum::<f64>();
        let w: Vec<f64> = p.iter().zip(&v).map(|(pi, vi)| pi - kk * vi).collect();
        let update = |(i, row): (usize, &mut [f64])| {
            let (vi, wi) = (v[i], w[i]);
            for ((r, vj), wj) in row[lo..].iter_mut().zip(&v).zip(&w) {
                *r -= vi * wj + wi * vj;
            }
        };
        if m > PAR_ROWS {
            block.par_chunks_mut(n).enumerate().for_each(update);
        } else {
            block.chunks_mut(n).enumerate().for_each(update);
        }
        // Row and column k now hold (alpha, 0, ...); they are not read again.
        reflectors.push(Some((beta, v)));
    }
    if n >= 2 {
        e[n - 1] = a[(n - 2) * n + n - 1];
    }
    let d: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();

    // Q = H_0 H_1 ... H_{n-3}, accumulated backwards so each step only touches the
    // trailing block where the partial product differs from the identity.
    let mut q = vec![0.0; n * n];
    (0..n).for_each(|i| q[i * n + i] = 1.0);
    for (k, r) in reflectors.iter().enumerate().rev() {
        let Some((beta, v)) = r else { continue };
        let lo = k + 1;
        let block = &mut q[lo * n..];
        // u = v^T Q[lo.., lo..]
        let mut u = vec![0.0; n - lo];
        for (row, &vi) in block.chunks(n).zip(v) {
            u.iter_mut()
                .zip(&row[lo..])
                .for_each(|(uj, qj)| *uj += vi * qj);
        }
        let update = |(i, row): (usize, &mut [f64])| {
            let s = beta * v[i];
            row[lo..]
                .iter_mut()
                .zip(&u)
                .for_each(|(qj, uj)| *qj -= s * uj);
        };
        if n - lo > PAR_ROWS {
            block.par_chunks_mut(n).enumerate().for_each(update);
        } else {
            block.chunks_mut(n).enumerate().for_each(update);
        }
    }
    let mut qt = vec![0.0; n * n];
    for r in 0..n {
        for c in 0..n {
            qt[c * n + r] = q[r * n + c];
        }
    }
    (d, e, qt)
}

/// Implicit QL with Wilkinson-style shifts on the tridiagonal (d, e); eigenvector rows in
/// `z` (z holds the transform's transpose) are rotated along.
fn tridiagonal_ql(d: &mut [f64], e: &mut [f64], z: &mut [f64], n: usize) -> Result<(), DataError> {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut iter = 0;
            loop {
                iter += 1;
                if iter > 60 {
                    return Err(DataError::Prepare(format!(
                        "eigensolver: no convergence for eigenvalue {l} of {n}"
                    )));
                }
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for x in &mut d[l + 2..n] {
                    *x -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    let (lo, hi) = z.split_at_mut((i + 1) * n);
                    let zi = &mut lo[i * n..];
                    let zi1 = &mut hi[..n];
                    for (a, b) in zi.iter_mut().zip(zi1.iter_mut()) {
                        let h = *b;
                        *b = s * *a + c * h;
                        *a = c * *a - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    Ok(())
}

/// A fitted PCA: mean, eigenvalues (descending) and components (rows), total variance.
#[derive(Clone, Debug)]
pub struct Pca {
    pub dim: usize,
    pub mean: Vec<f64>,
    pub eigenvalues: Vec<f64>,
    pub components: Vec<f64>,
    /// Trace of the covariance (total variance).
    pub trace: f64,
}

impl Pca {
    /// Fits on `rows` (`n` rows of `dim` values), population covariance.
    pub fn fit<B: Backend<f64>>(backend: &B, rows: &[f32], dim: usize) -> Result<Pca, DataError> {
        if dim == 0 || rows.is_empty() || !rows.len().is_multiple_of(dim) {
            return Err(DataError::InvalidArgument(format!(
                "PCA of {} values in rows of {dim}",
                rows.len()
            )));
        }
        let mean = column_mean(rows, dim);
        let cov = covariance(backend, rows, dim, &mean)?;
        let trace = (0..dim).map(|i| cov[i * dim + i]).sum();
        let (eigenvalues, components) = symmetric_eigen(&cov, dim)?;
        Ok(Pca {
            dim,
            mean,
            eigenvalues,
            components,
            trace,
        })
    }

    /// The smallest k whose leading components hold at least `fraction` of the variance.
    pub fn components_for_fraction(&self, fraction: f64) -> usize {
        let mut acc = 0.0;
        for (k, &l) in self.eigenvalues.iter().enumerate() {
            if acc >= fraction * self.trace {
                return k;
            }
            acc += l;
        }
        self.eigenvalues.len()
    }

    /// Fraction of the variance held by the first k components.
    pub fn variance_fraction(&self, k: usize) -> f64 {
        self.eigenvalues[..k.min(self.eigenvalues.len())]
            .iter()
            .sum::<f64>()
            / self.trace
    }

    /// x <- x - ((x - mean) V_k) V_k^T for every row of `rows`, in f64; no clipping.
    pub fn remove_components<B: Backend<f64>>(
        &self,
        backend: &B,
        rows: &mut [f32],
        k: usize,
    ) -> Result<(), DataError> {
        let d = self.dim;
        if k == 0 {
            return Ok(());
        }
        let vk = Tensor::<f64, B>::from_slice(backend, &self.components[..k * d], [k, d])
            .map_err(engine_err)?;
        for chunk in rows.chunks_mut(CHUNK_ROWS * d) {
            let m = chunk.len() / d;
            let mut xc = vec![0.0f64; chunk.len()];
            xc.par_chunks_mut(d)
                .zip(chunk.par_chunks(d))
                .for_each(|(o, x)| {
                    o.iter_mut()
                        .zip(x)
                        .zip(&self.mean)
                        .for_each(|((o, &x), mu)| *o = x as f64 - mu);
                });
            let x = Tensor::<f64, B>::from_slice(backend, &xc, [m, d]).map_err(engine_err)?;
            let coords = x.matmul_t(&vk, false, true).map_err(engine_err)?;
            let recon = coords
                .matmul(&vk)
                .map_err(engine_err)?
                .to_vec()
                .map_err(engine_err)?;
            chunk
                .par_iter_mut()
                .zip(recon.par_iter())
                .for_each(|(x, r)| *x = (*x as f64 - r) as f32);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn covariance_matches_naive_loops() {
        let (n, d) = (CHUNK_ROWS + 37, 13);
        let mut rng = Rng::new(5);
        let rows: Vec<f32> = (0..n * d)
            .map(|i| (rng.normal() + (i % d) as f64 * 0.1) as f32)
            .collect();
        let mean = column_mean(&rows, d);
        let cov = covariance(&mla_cpu::Cpu, &rows, d, &mean).unwrap();
        for a in 0..d {
            for b in 0..d {
                let naive: f64 = (0..n)
                    .map(|r| {
                        (rows[r * d + a] as f64 - mean[a]) * (rows[r * d + b] as f64 - mean[b])
                    })
                    .sum::<f64>()
                    / n as f64;
                assert!(
                    (cov[a * d + b] - naive).abs() < 1e-12,
                    "{a},{b}: {} vs {naive}",
                    cov[a * d + b]
                );
            }
        }
    }

    #[test]
    fn eigen_decomposition_reconstructs() {
        let mut cases = Vec::new();
        for n in [1, 2, 3, 7, 20, 200] {
            let mut rng = Rng::new(n as u64);
            let b: Vec<f64> = (0..n * n).map(|_| rng.normal()).collect();
            cases.push((
                n,
                (0..n * n)
                    .map(|i| b[i] + b[(i % n) * n + i / n])
                    .collect::<Vec<_>>(),
            ));
        }
        // Already tridiagonal / diagonal with repeated eigenvalues, and a rank-2 matrix.
        cases.push((
            5,
            (0..25)
                .map(|i| {
                    if i % 6 == 0 {
                        [2.0, 2.0, 1.0, 2.0, 0.0][i / 6]
                    } else {
                        0.0
                    }
                })
                .collect(),
        ));
        let u: Vec<f64> = (0..150).map(|i| (i as f64 * 0.37).sin()).collect();
        cases.push((
            150,
            (0..150 * 150)
                .map(|i| u[i / 150] * u[i % 150] + 0.5 * u[i / 150].powi(2) * u[i % 150].powi(2))
                .collect(),
        ));
        for (n, a) in cases {
            let (vals, vecs) = symmetric_eigen(&a, n).unwrap();
            assert!(vals.windows(2).all(|w| w[0] >= w[1]));
            for i in 0..n {
                let vi = &vecs[i * n..(i + 1) * n];
                for j in 0..n {
                    let dot: f64 = vi
                        .iter()
                        .zip(&vecs[j * n..(j + 1) * n])
                        .map(|(x, y)| x * y)
                        .sum();
                    assert!(
                        (dot - (i == j) as u8 as f64).abs() < 1e-10,
                        "n={n} orthonormality {i},{j}: {dot}"
                    );
                }
                for r in 0..n {
                    let av: f64 = (0..n).map(|c| a[r * n + c] * vi[c]).sum();
                    assert!(
                        (av - vals[i] * vi[r]).abs() < 1e-9 * (1.0 + vals[i].abs()),
                        "n={n} A v = l v"
                    );
                }
            }
        }
    }
}
