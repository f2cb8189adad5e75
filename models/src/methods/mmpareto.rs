//! `mmpareto`: Pareto integration of multimodal and unimodal gradients
//! (BASELINES.md section 3). The model is the concatenation head plus one
//! head per modality (`HeadKind::ConcatUnimodal`).
//!
//! Per step, two separate backward passes (each on its own forward: a tape
//! is spent by its backward): `L_mm = CE(fused)` gives `g1` and the fused
//! head's gradient; `sum_m CE(u_m)` gives each encoder's `g2` and its own
//! head's gradient. Per encoder, over all its tensors at once: `cos(G1, G2)`;
//! no conflict (cos > 0) weighs the two 0.5/0.5, a conflict takes the
//! two-task min-norm weights. `D = 2 (gamma1 g1 + gamma2 g2)` is rescaled to
//! norm `scale * max(|G|, |D|)` (`G = g1 + g2`), over the whole encoder
//! (`global`, the default: the result keeps a non-negative inner product
//! with both objectives) or per tensor (`per-tensor`, the official code,
//! which can break that guarantee). Heads keep their plain gradients.
//! Not BalanceBenchmark's version, whose accumulated gradients make
//! `g1 == g2` and the method "summed loss times 3".
//!
//! Host reads per step: three dot products per encoder tensor, in one read
//! per encoder.

use super::gradops::dot;
use super::{
    joint_forward, labels_at, sum_over_ranks, sum_over_ranks_by, upload_batch, Method, StepCtx, T32,
};
use crate::data::Batch;
use crate::encoders::Encoder;
use crate::metrics::NamedValues;
use crate::trainer::config::{MethodKind, MmparetoParams, NormScope, TrainConfig};
use crate::trainer::layout::ModelLayout;
use crate::trainer::records::EpochRecord;
use crate::trainer::stats::Pending;
use crate::trainer::{Result, TrainError};
use mla_core::{Backend, Indices, Tape, Tensor};

pub struct Mmpareto {
    params: MmparetoParams,
    names: Vec<String>,
    /// `encoder.<modality>.` of each modality.
    prefixes: Vec<String>,
    /// This epoch, per modality: sum of cos, conflict steps, steps.
    cos_sum: Vec<f64>,
    conflicts: Vec<u64>,
    steps: Vec<u64>,
}

impl Mmpareto {
    pub fn new(cfg: &TrainConfig, layout: &ModelLayout) -> Result<Self> {
        let m = super::balanced_modalities(cfg, layout)?;
        Ok(Mmpareto {
            params: cfg.mmpareto_params(),
            names: layout.modalities.clone(),
            prefixes: layout
                .modalities
                .iter()
                .map(|m| Encoder::prefix_for(m))
                .collect(),
            cos_sum: vec![0.0; m],
            conflicts: vec![0; m],
            steps: vec![0; m],
        })
    }
}

/// The two-task min-norm weight `gamma1` of `v11 = |G1|^2`, `v12 = <G1, G2>`,
/// `v22 = |G2|^2` (the official `_min_norm_element_from2`).
pub fn min_norm_gamma(v11: f64, v12: f64, v22: f64) -> f64 {
    if v12 >= v11 {
        0.999
    } else if v12 >= v22 {
        0.001
    } else {
        (v22 - v12) / (v11 + v22 - 2.0 * v12)
    }
}

/// What the combination decided for one encoder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub cos: f64,
    pub gamma1: f64,
    /// Per-tensor coefficients come out of [`combine`]; this is the global
    /// factor `scale * max(1, |G| / |D|)` (also reported under per-tensor).
    pub factor: f64,
}

/// `cos`, the weights and, per tensor, the coefficients `(a, b)` of the
/// final gradient `a g1 + b g2` from the per-tensor dot products
/// `(v11, v12, v22)` (host, f64).
pub fn decide(dots: &[[f64; 3]], scope: NormScope, scale: f64) -> (Decision, Vec<(f64, f64)>) {
    let (v11, v12, v22) = dots.iter().fold((0.0, 0.0, 0.0), |(a, b, c), d| {
        (a + d[0], b + d[1], c + d[2])
    });
    // torch's cosine_similarity: x.y / max(|x| |y|, 1e-8).
    let cos = v12 / (v11.sqrt() * v22.sqrt()).max(1e-8);
    let gamma1 = if cos > 0.0 {
        0.5
    } else {
        min_norm_gamma(v11, v12, v22)
    };
    let gamma2 = 1.0 - gamma1;
    let norms = |v11: f64, v12: f64, v22: f64| {
        let g = (v11 + 2.0 * v12 + v22).max(0.0).sqrt();
        let d = 2.0
            * (gamma1 * gamma1 * v11 + 2.0 * gamma1 * gamma2 * v12 + gamma2 * gamma2 * v22)
                .max(0.0)
                .sqrt();
        (g, d)
    };
    let factor_of = |(g, d): (f64, f64)| {
        if d > 0.0 {
            scale * (g / d).max(1.0)
        } else {
            // D = 0: the result is 0 whatever the factor (the official code
            // gives inf * 0 = NaN here).
            scale
        }
    };
    let global = factor_of(norms(v11, v12, v22));
    let coeffs = dots
        .iter()
        .map(|d| {
            let f = match scope {
                NormScope::Global => global,
                NormScope::PerTensor => factor_of(norms(d[0], d[1], d[2])),
            };
            (2.0 * f * gamma1, 2.0 * f * gamma2)
        })
        .collect();
    (
        Decision {
            cos,
            gamma1,
            factor: global,
        },
        coeffs,
    )
}

/// The combined gradient of one encoder's tensors from its `g1` and `g2`
/// (same tensors, same order): dot products on the device, one read, then
/// `a g1 + b g2` per tensor on the device.
pub fn combine<B: Backend<f32>>(
    g1: &[&T32<B>],
    g2: &[&T32<B>],
    scope: NormScope,
    scale: f64,
) -> Result<(Vec<T32<B>>, Decision)> {
    if g1.len() != g2.len() || g1.is_empty() {
        return Err(TrainError::Config(format!(
            "mmpareto: {} multimodal and {} unimodal gradient tensors for one encoder",
            g1.len(),
            g2.len()
        )));
    }
    let mut parts = Vec::with_capacity(3 * g1.len());
    for (a, b) in g1.iter().zip(g2) {
        for (x, y) in [(a, a), (a, b), (b, b)] {
            parts.push(dot(x, y)?.reshape(vec![1])?);
        }
    }
    let refs: Vec<&T32<B>> = parts.iter().collect();
    let host = Tensor::concat(&refs, 0)?.to_vec()?;
    let dots: Vec<[f64; 3]> = host
        .chunks_exact(3)
        .map(|c| [c[0] as f64, c[1] as f64, c[2] as f64])
        .collect();
    let (decision, coeffs) = decide(&dots, scope, scale);
    let out = g1
        .iter()
        .zip(g2)
        .zip(&coeffs)
        .map(|((a, b), &(ca, cb))| Ok(a.scale(ca)?.add(&b.scale(cb)?)?))
        .collect::<Result<Vec<_>>>()?;
    Ok((out, decision))
}

/// One rank's two backward passes of a step.
struct Passes<B: Backend<f32>> {
    g1: Vec<(String, T32<B>)>,
    l_mm: T32<B>,
    g2: Vec<(String, T32<B>)>,
    l_u: T32<B>,
    /// Each modality's unimodal loss (`None`: no row has it).
    l_m: Vec<Option<T32<B>>>,
}

impl Mmpareto {
    /// Pass 1, the multimodal loss; pass 2, the unimodal losses, each
    /// through its own head.
    fn passes<B: Backend<f32>>(&self, ctx: &StepCtx<'_, B>, batch: &Batch) -> Result<Passes<B>> {
        let labels = Indices::new(ctx.backend, &batch.labels)?;
        let (g1, l_mm) = {
            let inputs = upload_batch(ctx.backend, ctx.layout, batch)?;
            let tape = Tape::new(ctx.backend);
            let p = ctx.model.track(&tape, |_| true);
            let f = joint_forward(ctx.model, ctx.layout, &p, &tape, inputs, batch.len())?;
            let loss = f.logits.cross_entropy(&labels)?;
            let g = tape.backward(&loss)?;
            (p.gradients(g), loss.into_value())
        };
        let inputs = upload_batch(ctx.backend, ctx.layout, batch)?;
        let tape = Tape::new(ctx.backend);
        let p = ctx.model.track(&tape, |_| true);
        let mut total: Option<mla_core::Var<f32, B>> = None;
        let mut l_m = vec![None; inputs.len()];
        for (mi, input) in inputs.into_iter().enumerate() {
            let Some(input) = input else { continue };
            let name = &ctx.layout.modalities[mi];
            let h = ctx.model.features(&p, name, &tape.constant(input.x))?;
            let y = labels_at(ctx.backend, batch, input.present)?;
            let l = ctx.model.modality_logits(&p, name, &h)?.cross_entropy(&y)?;
            l_m[mi] = Some(l.value().clone());
            total = Some(match total {
                None => l,
                Some(t) => t.add(&l)?,
            });
        }
        let loss = total.ok_or_else(|| {
            TrainError::Config("mmpareto: a batch with no modality present".into())
        })?;
        let g = tape.backward(&loss)?;
        Ok(Passes {
            g1,
            l_mm,
            g2: p.gradients(g),
            l_u: loss.into_value(),
            l_m,
        })
    }

    /// Both passes summed over the ranks: `g1` averages over the global
    /// batch, each modality's share of `g2` (its encoder and head) over the
    /// global batch's rows that have the modality, and the unimodal loss is
    /// the sum of the global per-modality means, as one process has them.
    #[allow(clippy::type_complexity)]
    fn sum_passes<B: Backend<f32>>(
        &self,
        d: &crate::dist::Dist,
        ctx: &StepCtx<'_, B>,
        batch: &Batch,
        local: Option<Passes<B>>,
    ) -> Result<Option<(Vec<(String, T32<B>)>, Vec<(String, T32<B>)>, T32<B>, T32<B>)>> {
        let n = batch.len();
        let m = self.prefixes.len();
        let rows_m: Vec<usize> = (0..m)
            .map(|mi| batch.modalities[ctx.layout.data_index[mi]].present.len())
            .collect();
        let l1 = local.as_ref().map(|p| (p.g1.as_slice(), &p.l_mm));
        let Some(r1) = sum_over_ranks(d, ctx.backend, ctx.model, |_| true, l1, n, &[])? else {
            return Ok(None);
        };
        let mut extra = vec![0f32; 2 * m];
        if let Some(p) = &local {
            for (mi, l) in p.l_m.iter().enumerate() {
                if let Some(l) = l {
                    extra[2 * mi] = l.to_scalar()? * rows_m[mi] as f32;
                    extra[2 * mi + 1] = rows_m[mi] as f32;
                }
            }
        }
        let heads: Vec<String> = self
            .names
            .iter()
            .map(|name| format!("{}{name}.", crate::model::UNIMODAL_HEADS_PREFIX))
            .collect();
        let rows_of = |name: &str| {
            (0..m)
                .find(|&mi| name.starts_with(&self.prefixes[mi]) || name.starts_with(&heads[mi]))
                .map_or(n, |mi| rows_m[mi])
        };
        let l2 = local.as_ref().map(|p| (p.g2.as_slice(), &p.l_u));
        let weights = crate::dist::Weights::MeanOver(&rows_of);
        let Some(r2) =
            sum_over_ranks_by(d, ctx.backend, ctx.model, |_| true, l2, weights, n, &extra)?
        else {
            return Ok(None);
        };
        let l_u: f32 = (0..m)
            .filter(|&mi| r2.extra[2 * mi + 1] > 0.0)
            .map(|mi| r2.extra[2 * mi] / r2.extra[2 * mi + 1])
            .sum();
        let l_u = Tensor::from_slice(ctx.backend, &[l_u], Vec::<usize>::new())?;
        Ok(Some((r1.grads, r2.grads, r1.loss, l_u)))
    }
}

impl<B: Backend<f32>> Method<B> for Mmpareto {
    fn kind(&self) -> MethodKind {
        MethodKind::Mmpareto
    }

    fn begin_epoch(&mut self, _ctx: &super::EpochCtx<'_, B>) -> Result<()> {
        self.cos_sum.iter_mut().for_each(|v| *v = 0.0);
        self.conflicts.iter_mut().for_each(|v| *v = 0);
        self.steps.iter_mut().for_each(|v| *v = 0);
        Ok(())
    }

    fn step(
        &mut self,
        ctx: &mut StepCtx<'_, B>,
        batch: &Batch,
        out: &mut Pending<B>,
    ) -> Result<()> {
        let n = batch.len();
        // A rank's share of the last global batch may be empty.
        let local = if n == 0 {
            None
        } else {
            Some(self.passes(ctx, batch)?)
        };
        let (g1, g2, l_mm, l_u) = match (ctx.dist, local) {
            (None, Some(p)) => (p.g1, p.g2, p.l_mm, p.l_u),
            (None, None) => return Ok(()),
            (Some(d), local) => self.sum_passes(d, ctx, batch, local)?.ok_or_else(|| {
                TrainError::Distributed("mmpareto: the global batch had no rows".into())
            })?,
        };
        let mut grads: Vec<(String, T32<B>)> = Vec::with_capacity(g1.len() + g2.len());
        for (mi, prefix) in self.prefixes.iter().enumerate() {
            let e1: Vec<&(String, T32<B>)> = g1
                .iter()
                .filter(|(n, _)| n.starts_with(prefix.as_str()))
                .collect();
            if e1.is_empty() {
                continue; // absent from this batch
            }
            let e2: Vec<&T32<B>> = e1
                .iter()
                .map(|(n, _)| {
                    g2.iter()
                        .find(|(m, _)| m == n)
                        .map(|(_, t)| t)
                        .ok_or_else(|| {
                            TrainError::Config(format!("mmpareto: no unimodal gradient for `{n}`"))
                        })
                })
                .collect::<Result<_>>()?;
            let t1: Vec<&T32<B>> = e1.iter().map(|(_, t)| t).collect();
            let (combined, d) = combine(&t1, &e2, self.params.norm_scope, self.params.scale)?;
            for ((n, _), g) in e1.iter().zip(combined) {
                grads.push((n.clone(), g));
            }
            self.cos_sum[mi] += d.cos;
            self.conflicts[mi] += u64::from(d.cos <= 0.0);
            self.steps[mi] += 1;
        }
        // Heads: the fused head from L_mm, each modality's head from its L_m.
        let is_encoder = |n: &str| n.starts_with(crate::encoders::ENCODER_PREFIX);
        grads.extend(g1.into_iter().filter(|(n, _)| !is_encoder(n)));
        grads.extend(g2.into_iter().filter(|(n, _)| !is_encoder(n)));
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        ctx.optim.step(ctx.model.params_mut(), &grads)?;
        out.push(ctx.step, None, l_mm.add(&l_u)?);
        Ok(())
    }

    fn end_epoch(&mut self, record: &mut EpochRecord) -> Result<()> {
        let mut v = NamedValues::default();
        for (mi, name) in self.names.iter().enumerate() {
            if self.steps[mi] > 0 {
                let n = self.steps[mi] as f64;
                v.push(format!("cos_mean.{name}"), self.cos_sum[mi] / n);
                v.push(
                    format!("conflict_fraction.{name}"),
                    self.conflicts[mi] as f64 / n,
                );
            }
        }
        if !v.0.is_empty() {
            record.method_stats = Some(v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use mla_cpu::Cpu;

    fn vecs(seed: u64, sizes: &[usize], anti: f64) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let mut r = Rng::new(seed);
        let a: Vec<Vec<f64>> = sizes
            .iter()
            .map(|&n| (0..n).map(|_| r.normal()).collect())
            .collect();
        // b = -anti * a + noise: anti > 1 gives a conflict (cos < 0).
        let b = a
            .iter()
            .map(|t| t.iter().map(|&x| -anti * x + 0.5 * r.normal()).collect())
            .collect();
        (a, b)
    }

    fn tensors(v: &[Vec<f64>]) -> Vec<T32<Cpu>> {
        v.iter()
            .map(|t| {
                let f: Vec<f32> = t.iter().map(|&x| x as f32).collect();
                Tensor::from_slice(&Cpu, &f, vec![t.len()]).unwrap()
            })
            .collect()
    }

    fn dotf(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>())
            .sum()
    }

    fn run(a: &[Vec<f64>], b: &[Vec<f64>], scope: NormScope) -> (Vec<Vec<f64>>, Decision) {
        let (ta, tb) = (tensors(a), tensors(b));
        let ra: Vec<&T32<Cpu>> = ta.iter().collect();
        let rb: Vec<&T32<Cpu>> = tb.iter().collect();
        let (out, d) = combine(&ra, &rb, scope, 1.5).unwrap();
        let out = out
            .iter()
            .map(|t| t.to_vec().unwrap().iter().map(|&x| x as f64).collect())
            .collect();
        (out, d)
    }

    #[test]
    fn min_norm_weights_never_conflict_with_either_objective() {
        for seed in 0..40 {
            let (a, b) = vecs(seed, &[30, 7], 1.0 + (seed % 5) as f64 * 0.3);
            let (v11, v12, v22) = (dotf(&a, &a), dotf(&a, &b), dotf(&b, &b));
            let g1 = min_norm_gamma(v11, v12, v22);
            let g2 = 1.0 - g1;
            assert!((0.0..=1.0).contains(&g1), "{g1}");
            let d: Vec<Vec<f64>> = a
                .iter()
                .zip(&b)
                .map(|(x, y)| x.iter().zip(y).map(|(p, q)| g1 * p + g2 * q).collect())
                .collect();
            let (da, db, dd) = (dotf(&d, &a), dotf(&d, &b), dotf(&d, &d));
            assert!(da >= -1e-9 * v11 && db >= -1e-9 * v22, "{da} {db}");
            if v12 < v11.min(v22) {
                // Interior: equal progress on both, |d|^2 each.
                assert!(
                    (da - dd).abs() <= 1e-9 * dd.max(1.0) && (db - dd).abs() <= 1e-9 * dd.max(1.0)
                );
            }
        }
        assert_eq!(min_norm_gamma(1.0, 2.0, 5.0), 0.999);
        assert_eq!(min_norm_gamma(5.0, 2.0, 1.0), 0.001);
    }

    #[test]
    fn without_conflict_the_gradient_is_one_and_a_half_times_the_sum() {
        let (a, b) = vecs(3, &[50, 9], -0.8); // b ~ +0.8 a: cos > 0
        for scope in NormScope::ALL {
            let (out, d) = run(&a, &b, *scope);
            assert!(d.cos > 0.0 && d.gamma1 == 0.5);
            for ((o, x), y) in out.iter().zip(&a).zip(&b) {
                for ((&o, &x), &y) in o.iter().zip(x).zip(y) {
                    assert!(
                        (o - 1.5 * (x + y)).abs() < 1e-5 * (1.0 + (x + y).abs()),
                        "{o} {x} {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn under_conflict_global_scope_keeps_the_guarantee_and_the_norm() {
        for seed in 10..30 {
            let (a, b) = vecs(seed, &[40, 11, 3], 1.6);
            let (out, d) = run(&a, &b, NormScope::Global);
            assert!(d.cos <= 0.0, "{}", d.cos);
            assert!(dotf(&out, &a) >= 0.0 && dotf(&out, &b) >= 0.0);
            let g: Vec<Vec<f64>> = a
                .iter()
                .zip(&b)
                .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p + q).collect())
                .collect();
            let dd: Vec<Vec<f64>> = a
                .iter()
                .zip(&b)
                .map(|(x, y)| {
                    x.iter()
                        .zip(y)
                        .map(|(p, q)| 2.0 * (d.gamma1 * p + (1.0 - d.gamma1) * q))
                        .collect()
                })
                .collect();
            let want = 1.5 * dotf(&g, &g).sqrt().max(dotf(&dd, &dd).sqrt());
            let got = dotf(&out, &out).sqrt();
            assert!((got / want - 1.0).abs() < 1e-4, "{got} vs {want}");
            // Direction of D.
            let cos_d = dotf(&out, &dd) / (got * dotf(&dd, &dd).sqrt());
            assert!((cos_d - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn per_tensor_scope_sets_each_tensors_norm() {
        let (a, b) = vecs(5, &[40, 11, 3], 1.6);
        let (out, d) = run(&a, &b, NormScope::PerTensor);
        for ((o, x), y) in out.iter().zip(&a).zip(&b) {
            let g: f64 = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p + q).powi(2))
                .sum::<f64>()
                .sqrt();
            let dn: f64 = x
                .iter()
                .zip(y)
                .map(|(p, q)| (2.0 * (d.gamma1 * p + (1.0 - d.gamma1) * q)).powi(2))
                .sum::<f64>()
                .sqrt();
            let n: f64 = o.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!((n / (1.5 * g.max(dn)) - 1.0).abs() < 1e-4);
        }
    }
}
