//! Evaluation: encoders on the device, one read-back of features and logits
//! per batch into a host table of the split's per-modality logits, then
//! fusion (fitted on validation only), calibration and metrics on the host,
//! per sample (a sample's prediction never depends on its batch mates).

use super::config::{FusionRule, TrainConfig};
use super::layout::{build_model, ModelLayout};
use super::records::EvalMetrics;
use super::{named, Result, TrainError};
use crate::checkpoint::Checkpoint;
use crate::data::{Corruptor, Dataset, Loader};
use crate::dist::Dist;
use crate::fusion::{calibration_errors, Fusion, FusionFit, LogitTable};
use crate::methods::{upload, upload_modality};
use crate::metrics::{argmax, Confusion, Counter, GapAccumulator, NamedValues};
use crate::model::{scatter_rows, HeadKind, Model, HEAD_BIAS};
use crate::shapley::{self, Removal, Shapley, ShapleyValues};
use mla_core::{Backend, Tape, Tensor};
use std::sync::Arc;

/// The model of a checkpoint, checked against `dataset`: same modalities,
/// shapes and classes, every weight present with its shape.
pub fn load_model<B: Backend<f32>>(
    backend: &B,
    dataset: &Dataset,
    ckpt: &Checkpoint,
) -> Result<(Model<B>, ModelLayout, TrainConfig)> {
    let cfg: TrainConfig = ckpt.json(super::state::CONFIG_KEY)?;
    let saved: ModelLayout = ckpt.json(super::state::LAYOUT_KEY)?;
    check_metadata(ckpt, &cfg, &saved)?;
    let (mut model, layout) = build_model(backend, dataset, &cfg)?;
    if saved.modalities != layout.modalities
        || saved.shapes != layout.shapes
        || saved.num_classes != layout.num_classes
    {
        return Err(TrainError::Config(format!(
            "{} was trained on modalities {:?} with shapes {:?} and {} classes, but {} has {:?} with shapes {:?} and {} classes",
            ckpt.path().display(),
            saved.modalities,
            saved.shapes,
            saved.num_classes,
            dataset.dir().display(),
            layout.modalities,
            layout.shapes,
            layout.num_classes
        )));
    }
    super::state::load_params(&mut model, ckpt)?;
    Ok((model, layout, cfg))
}

/// The sizes in a checkpoint's metadata must agree with its head weight
/// before a model is built from them: a tampered `feature_size` would
/// otherwise size the allocation of every layer.
fn check_metadata(ckpt: &Checkpoint, cfg: &TrainConfig, layout: &ModelLayout) -> Result<()> {
    let head = ckpt.get(crate::model::HEAD_WEIGHT)?;
    let inputs = match cfg.method.head() {
        HeadKind::Concat | HeadKind::ConcatUnimodal => layout.modalities.len(),
        HeadKind::Shared | HeadKind::Single | HeadKind::Ensemble => 1,
    };
    let want = cfg
        .feature_size
        .checked_mul(inputs)
        .map(|w| vec![layout.num_classes, w]);
    if want.as_deref() != Some(head.shape.as_slice()) {
        return Err(TrainError::Config(format!(
            "{}: metadata says {} classes and feature size {} ({} modalities, method {}), but {} has shape {:?}; the checkpoint is inconsistent",
            ckpt.path().display(),
            layout.num_classes,
            cfg.feature_size,
            layout.modalities.len(),
            cfg.method,
            crate::model::HEAD_WEIGHT,
            head.shape
        )));
    }
    Ok(())
}

/// What to evaluate beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    /// Fusion rule of the fused accuracy (MLA); the run's rule when `None`.
    pub fusion: Option<FusionRule>,
    /// Fusion parameters fitted on validation (from the checkpoint); the
    /// fitted rules are reported only with one.
    pub fit: Option<FusionFit>,
    /// Modalities removed at test time.
    pub drop: Vec<String>,
    /// Compute the modality gap.
    pub gap: bool,
    /// How modalities are removed for the Shapley values in the metrics.
    pub shapley: Removal,
    /// Test-time corruptions of the inputs (`--corrupt`).
    pub corrupt: Option<Arc<Corruptor>>,
}

/// What one pass over a split leaves on the host: per-modality logits of
/// every scored sample (for fusion, its fit and calibration), per-modality
/// and joint-head counters, the modality gap.
pub struct SplitOutputs {
    pub table: LogitTable,
    /// With own per-modality heads (MMPareto), the concat head's slice
    /// logits, which the Shapley coalitions of the fused head use.
    slices: Option<LogitTable>,
    per_modality: Vec<Counter>,
    joint: Option<Counter>,
    gap: Option<f64>,
    /// What `gap` is computed from (when asked for), kept for a reduction.
    gap_acc: Option<GapAccumulator>,
    /// Confusion matrices next to `per_modality` and `joint`, for macro-F1.
    per_modality_confusion: Vec<Confusion>,
    joint_confusion: Option<Confusion>,
    head: HeadKind,
    removed: Removed,
    removal: Removal,
}

/// What stands in for a removed modality in a Shapley coalition, per
/// modality: the logit row the model gives it under each removal rule. The
/// encoders are per sample (no batch statistics), so `h_m(0)` is one
/// constant vector and one zero sample per modality gives the row exactly.
struct Removed {
    /// `head(h_m(0))`; for a concat head the slice `W_m h_m(0) + b / M`.
    zero_input: Vec<Vec<f32>>,
    /// `head(0) = b`; for a concat head the slice of zero features, `b / M`.
    zero_feature: Vec<Vec<f32>>,
    /// A concat head's bias `b` and `b / M`: each slice row carries `b / M`,
    /// and a modality missing from a sample contributes zero features, so
    /// the head's logits are `b + sum over present m of (slice_m - b / M)`.
    concat_bias: Option<(Vec<f32>, Vec<f32>)>,
}

/// The fusion fit stored in `ckpt`, checked against the model's modalities;
/// `None` for a checkpoint without one (written before fusion fitting, or
/// of a method without per-modality fusion).
pub fn load_fusion_fit(ckpt: &Checkpoint, layout: &ModelLayout) -> Result<Option<FusionFit>> {
    if !ckpt.has_json(super::state::FUSION_KEY) {
        return Ok(None);
    }
    let fit: FusionFit = ckpt.json(super::state::FUSION_KEY)?;
    fit.check(&layout.modalities)
        .map_err(|e| TrainError::Config(format!("{}: {e}", ckpt.path().display())))?;
    Ok(Some(fit))
}

/// Evaluates `model` on `samples` of `dataset`.
pub fn evaluate<B: Backend<f32>>(
    model: &Model<B>,
    cfg: &TrainConfig,
    layout: &ModelLayout,
    dataset: &Arc<Dataset>,
    samples: &[usize],
    opts: &EvalOptions,
) -> Result<EvalMetrics> {
    let out = collect(model, cfg, layout, dataset, samples, opts)?;
    out.metrics(
        cfg,
        layout,
        opts.fusion.unwrap_or(cfg.fusion),
        opts.fit.as_ref(),
    )
}

/// Runs the encoders over `samples` and keeps what [`SplitOutputs::metrics`] needs.
pub fn collect<B: Backend<f32>>(
    model: &Model<B>,
    cfg: &TrainConfig,
    layout: &ModelLayout,
    dataset: &Arc<Dataset>,
    samples: &[usize],
    opts: &EvalOptions,
) -> Result<SplitOutputs> {
    let m_count = layout.modalities.len();
    let mut dropped = vec![false; m_count];
    for d in &opts.drop {
        let i = layout
            .modalities
            .iter()
            .position(|m| m == d)
            .ok_or_else(|| {
                TrainError::Config(format!(
                    "--drop-modality {d}: the model has modalities {}",
                    layout.modalities.join(", ")
                ))
            })?;
        dropped[i] = true;
    }
    if dropped.iter().all(|&d| d) {
        return Err(TrainError::Config(
            "every modality of the model is dropped: nothing left to evaluate".into(),
        ));
    }
    let backend = model.params().backend().clone();
    let classes = layout.num_classes;
    let s = cfg.feature_size;
    let mut per_modality = vec![Counter::default(); m_count];
    let mut joint = cfg.method.head().is_concat().then(Counter::default);
    let mut per_modality_confusion = vec![Confusion::new(classes); m_count];
    let mut joint_confusion = joint.is_some().then(|| Confusion::new(classes));
    let mut table = LogitTable::new(m_count, classes);
    let mut slices =
        (model.spec().head == HeadKind::ConcatUnimodal).then(|| LogitTable::new(m_count, classes));
    let mut gap = GapAccumulator::new(m_count, s);
    let loader = Loader::new(
        dataset.clone(),
        samples.to_vec(),
        cfg.eval_batch_size,
        None,
        0,
    )?;
    let mut first = 0usize;
    for batch in loader {
        let mut batch = batch?;
        if let Some(c) = &opts.corrupt {
            c.apply(&mut batch);
        }
        let n = batch.len();
        // Per modality: (row of each batch position or None, host logits).
        let mut rows_of: Vec<Vec<Option<usize>>> = vec![vec![None; n]; m_count];
        let mut logits_of: Vec<Vec<f32>> = vec![Vec::new(); m_count];
        // Own per-modality heads (MMPareto): the concat head's slices as well,
        // for the Shapley coalitions of the fused head.
        let mut slices_of: Vec<Vec<f32>> = vec![Vec::new(); m_count];
        let tape = Tape::no_grad(&backend);
        let p = model.track(&tape, |_| false);
        let mut feats = Vec::with_capacity(m_count);
        for mi in 0..m_count {
            let mb = &batch.modalities[layout.data_index[mi]];
            if dropped[mi] || mb.present.is_empty() {
                feats.push(None);
                continue;
            }
            let name = &layout.modalities[mi];
            let x = tape.constant(upload_modality(&backend, layout, &batch, mi)?);
            let h = model.features(&p, name, &x)?;
            let z = model.modality_logits(&p, name, &h)?.into_value().to_vec()?;
            let sample_of = |row: usize| samples[first + mb.present[row]];
            let what = format!("modality {name}");
            check_finite(
                &z,
                classes,
                "logit",
                &what,
                sample_of,
                "the model diverged or its weights are corrupt",
            )?;
            // Features are checked as well as logits: a ReLU or a max-pool can
            // turn an overflowed feature back into a finite, meaningless logit.
            let hv = h.value().to_vec()?;
            check_finite(
                &hv,
                s,
                "feature",
                &what,
                sample_of,
                "its input overflows the encoder, or the weights are corrupt",
            )?;
            if opts.gap {
                gap.add(mi, &hv);
            }
            for (k, &pos) in mb.present.iter().enumerate() {
                rows_of[mi][pos] = Some(k);
                let (row, label) = (
                    &z[k * classes..(k + 1) * classes],
                    batch.labels[pos] as usize,
                );
                per_modality[mi].add_row(row, label);
                per_modality_confusion[mi].add_row(row, label);
            }
            logits_of[mi] = z;
            if slices.is_some() {
                slices_of[mi] = model.slice_logits(&p, name, &h)?.into_value().to_vec()?;
            }
            feats.push(Some((h, mb.present.as_slice())));
        }
        let present = |pos: usize| (0..m_count).any(|mi| rows_of[mi][pos].is_some());
        if let Some(counter) = joint.as_mut() {
            let mut full = Vec::with_capacity(m_count);
            for f in &feats {
                full.push(match f {
                    None => tape.constant(Tensor::zeros(&backend, [n, s])?),
                    Some((h, present)) if present.len() == n => h.clone(),
                    Some((h, present)) => scatter_rows(h, present, n)?,
                });
            }
            let refs: Vec<_> = full.iter().collect();
            let j = model.joint_logits(&p, &refs)?.into_value().to_vec()?;
            check_finite(
                &j,
                classes,
                "logit",
                "the joint head",
                |row| samples[first + row],
                "the model diverged or its weights are corrupt",
            )?;
            for pos in (0..n).filter(|&pos| present(pos)) {
                let (row, label) = (
                    &j[pos * classes..(pos + 1) * classes],
                    batch.labels[pos] as usize,
                );
                counter.add_row(row, label);
                if let Some(cm) = joint_confusion.as_mut() {
                    cm.add_row(row, label);
                }
            }
        }
        // Samples with something left to predict from (a dropped or missing
        // modality leaves the fusion; a sample with nothing left is not scored).
        for pos in (0..n).filter(|&pos| present(pos)) {
            let rows: Vec<Option<&[f32]>> = (0..m_count)
                .map(|mi| rows_of[mi][pos].map(|k| &logits_of[mi][k * classes..(k + 1) * classes]))
                .collect();
            table.push(batch.labels[pos] as usize, &rows)?;
            if let Some(t) = slices.as_mut() {
                let rows: Vec<Option<&[f32]>> = (0..m_count)
                    .map(|mi| {
                        rows_of[mi][pos].map(|k| &slices_of[mi][k * classes..(k + 1) * classes])
                    })
                    .collect();
                t.push(batch.labels[pos] as usize, &rows)?;
            }
        }
        first += n;
    }
    Ok(SplitOutputs {
        table,
        slices,
        per_modality,
        joint,
        gap: if opts.gap { gap.gap() } else { None },
        gap_acc: opts.gap.then_some(gap),
        per_modality_confusion,
        joint_confusion,
        head: model.spec().head,
        removed: removed_rows(model, layout, s)?,
        removal: opts.shapley,
    })
}

impl SplitOutputs {
    /// Data-parallel evaluation: each rank's outputs on its contiguous share
    /// of a split, made the whole split's on every rank. Counters,
    /// confusions and gap sums add; the logit tables are concatenated in
    /// rank order, which is the split's order. Two sums: the table sizes,
    /// then everything.
    pub(crate) fn gathered(mut self, d: &Dist) -> Result<Self> {
        let (w, r) = (d.world(), d.rank());
        let mut rows = vec![0f64; w];
        rows[r] = self.table.len() as f64;
        d.sum_f64(&mut rows)?;
        let rows: Vec<usize> = rows.iter().map(|&x| x as usize).collect();
        let (before, total) = (rows[..r].iter().sum::<usize>(), rows.iter().sum::<usize>());
        let mut buf = Vec::new();
        for c in self.per_modality.iter().chain(self.joint.iter()) {
            buf.extend([c.correct as f64, c.total as f64, c.loss_sum]);
        }
        for m in self
            .per_modality_confusion
            .iter()
            .chain(self.joint_confusion.iter())
        {
            buf.extend(m.counts().iter().map(|&x| x as f64));
        }
        if let Some(g) = &self.gap_acc {
            g.write_flat(&mut buf);
        }
        let base = buf.len();
        let width = self.table.row_width();
        let tables: Vec<&LogitTable> = std::iter::once(&self.table)
            .chain(self.slices.iter())
            .collect();
        buf.resize(base + tables.len() * total * width, 0.0);
        for (k, t) in tables.iter().enumerate() {
            let at = base + k * total * width + before * width;
            t.write_rows(&mut buf[at..at + t.len() * width]);
        }
        d.sum_f64(&mut buf)?;
        let mut it = buf[..base].iter().copied();
        for c in self.per_modality.iter_mut().chain(self.joint.iter_mut()) {
            let mut v = [0.0; 3];
            v.iter_mut().for_each(|x| *x = it.next().unwrap_or(0.0));
            (c.correct, c.total, c.loss_sum) = (v[0] as u64, v[1] as u64, v[2]);
        }
        let classes = self.table.classes();
        for m in self
            .per_modality_confusion
            .iter_mut()
            .chain(self.joint_confusion.iter_mut())
        {
            m.set_counts(it.by_ref().take(classes * classes).map(|x| x as u64));
        }
        if let Some(g) = self.gap_acc.as_mut() {
            g.read_flat(&mut it);
            self.gap = g.gap();
        }
        let modalities = self.table.modalities();
        self.table = LogitTable::from_rows(modalities, classes, &buf[base..base + total * width]);
        if self.slices.is_some() {
            let at = base + total * width;
            self.slices = Some(LogitTable::from_rows(
                modalities,
                classes,
                &buf[at..at + total * width],
            ));
        }
        Ok(self)
    }
}

/// The removal rows of every modality: one forward of a single all-zero
/// input and one head on zero features, instead of a pass over the split
/// per coalition.
fn removed_rows<B: Backend<f32>>(
    model: &Model<B>,
    layout: &ModelLayout,
    feature_size: usize,
) -> Result<Removed> {
    let backend = model.params().backend().clone();
    let tape = Tape::no_grad(&backend);
    let p = model.track(&tape, |_| false);
    let mut zero_input = Vec::with_capacity(layout.modalities.len());
    let mut zero_feature = Vec::with_capacity(layout.modalities.len());
    for (name, shape) in layout.modalities.iter().zip(&layout.shapes) {
        let numel: usize = shape.iter().product();
        let x = tape.constant(upload(&backend, &vec![0.0; numel], 1, shape)?);
        let h = model.features(&p, name, &x)?;
        let zeros = tape.constant(Tensor::zeros(&backend, [1, feature_size])?);
        let logits = |h: &mla_core::Var<'_, f32, B>| -> Result<Vec<f32>> {
            let z = match model.spec().head.is_concat() {
                true => model.slice_logits(&p, name, h)?,
                false => model.modality_logits(&p, name, h)?,
            };
            Ok(z.into_value().to_vec()?)
        };
        let (zi, zf) = (logits(&h)?, logits(&zeros)?);
        if zi.iter().chain(&zf).any(|v| !v.is_finite()) {
            return Err(TrainError::Config(format!(
                "non-finite logit of modality {name} on an all-zero input or zero features (the Shapley removal): the weights are corrupt"
            )));
        }
        zero_input.push(zi);
        zero_feature.push(zf);
    }
    let concat_bias = match model.spec().head.is_concat() {
        true => {
            let b = model.params().get(HEAD_BIAS)?.to_vec()?;
            // The same f32 rounding as the device's `b / M` in the slices.
            let m = layout.modalities.len() as f64;
            let share = b.iter().map(|&v| (v as f64 * (1.0 / m)) as f32).collect();
            Some((b, share))
        }
        false => None,
    };
    Ok(Removed {
        zero_input,
        zero_feature,
        concat_bias,
    })
}

/// One error for the first non-finite value of `values` (`row_len` per row),
/// naming what produced it and the dataset sample of its row.
fn check_finite(
    values: &[f32],
    row_len: usize,
    kind: &str,
    what: &str,
    sample_of: impl Fn(usize) -> usize,
    why: &str,
) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(k) => Err(TrainError::Config(format!(
            "non-finite {kind} ({}) of {what} for sample {} of the dataset: {why}",
            values[k],
            sample_of(k / row_len.max(1))
        ))),
    }
}

impl SplitOutputs {
    /// The split's metrics with fusion `rule` (MLA), `fit` the validation
    /// fit (`None`: only the rules without parameters are scored).
    pub fn metrics(
        &self,
        cfg: &TrainConfig,
        layout: &ModelLayout,
        rule: FusionRule,
        fit: Option<&FusionFit>,
    ) -> Result<EvalMetrics> {
        let is_mla = cfg.method.fuses_by_rule();
        let fused = match &self.joint {
            Some(c) => *c,
            // Unimodal: the one modality (every rule gives its prediction).
            None if !is_mla => self.table.score(&FusionRule::Mean.resolve(None)?)?,
            None => self.table.score(&rule.resolve(fit)?)?,
        };
        let fused_accuracy = fused.accuracy().ok_or_else(|| {
            TrainError::Config("no sample has a modality left to evaluate".into())
        })?;
        let fused_confusion = match &self.joint_confusion {
            Some(c) => c.clone(),
            None => self.fused_confusion(&self.fusion_of(rule, fit)?)?,
        };
        // A diagnostic must not fail a run: past 8 modalities (2^M
        // coalitions) there is simply no Shapley record.
        let shapley = (layout.modalities.len() <= shapley::MAX_MODALITIES)
            .then(|| self.shapley(layout, self.removal, rule, fit))
            .transpose()?;
        let mut fusion_accuracy = None;
        let (mut ece, mut ece_cal) = (None, None);
        if is_mla {
            let mut nv = NamedValues::default();
            for r in FusionRule::CONCRETE {
                if r.needs_fit() && fit.is_none() {
                    continue;
                }
                let acc = self
                    .table
                    .score(&r.resolve(fit)?)?
                    .accuracy()
                    .unwrap_or(0.0);
                nv.push(r.as_str(), acc);
            }
            fusion_accuracy = Some(nv);
            (ece, ece_cal) = {
                let (b, a) = calibration_errors(&self.table, &layout.modalities, fit);
                (Some(b), a)
            };
        }
        Ok(EvalMetrics {
            samples: fused.total,
            fused_accuracy,
            loss: fused.mean_loss().unwrap_or(f64::NAN),
            fused_macro_f1: fused_confusion.macro_f1().unwrap_or(0.0),
            fusion_rule: is_mla.then(|| rule.concrete(fit)),
            fusion_accuracy,
            modality_accuracy: named(
                &layout.modalities,
                self.per_modality.iter().map(Counter::accuracy).collect(),
            ),
            modality_macro_f1: named(
                &layout.modalities,
                self.per_modality_confusion
                    .iter()
                    .map(Confusion::macro_f1)
                    .collect(),
            ),
            calibration_error: ece,
            calibration_error_calibrated: ece_cal,
            modality_gap: self.gap,
            shapley,
        })
    }

    /// The per-modality fusion behind the fused prediction: the run's rule
    /// (shared head), the one modality's logits (single head); unused for
    /// the concat head, whose logits come from its slices.
    fn fusion_of(&self, rule: FusionRule, fit: Option<&FusionFit>) -> Result<Fusion> {
        Ok(match self.head {
            HeadKind::Shared | HeadKind::Ensemble => rule.resolve(fit)?,
            HeadKind::Single | HeadKind::Concat | HeadKind::ConcatUnimodal => {
                FusionRule::Mean.resolve(None)?
            }
        })
    }

    /// Sample `i`'s fused prediction from its per-modality rows (`rows[m]`
    /// `None` where absent): `fusion` of the rows, or for the concat head
    /// `b + sum_m (slice_m - b)`, the head on the concatenated features.
    /// The fused row goes through f32 like [`LogitTable::score`], so that
    /// ties resolve as in the reported accuracy.
    fn predict(
        &self,
        rows: &[Option<&[f32]>],
        fusion: &Fusion,
        out: &mut [f64],
    ) -> crate::Result<usize> {
        match &self.removed.concat_bias {
            Some((b, share)) => {
                out.iter_mut().zip(b).for_each(|(o, &b)| *o = b as f64);
                for z in rows.iter().flatten() {
                    for ((o, &v), &bias) in out.iter_mut().zip(*z).zip(share) {
                        *o += v as f64 - bias as f64;
                    }
                }
            }
            None => {
                let mut w = vec![0.0; rows.len()];
                fusion.combine(rows, out, &mut w)?;
            }
        }
        let row: Vec<f32> = out.iter().map(|&o| o as f32).collect();
        Ok(argmax(&row))
    }

    /// The per-modality rows the fused head is rebuilt from: the table, or
    /// the slices where the table holds own per-modality heads.
    fn coalition_table(&self) -> &LogitTable {
        self.slices.as_ref().unwrap_or(&self.table)
    }

    /// Confusion matrix of the fused prediction over the table.
    fn fused_confusion(&self, fusion: &Fusion) -> crate::Result<Confusion> {
        let mut cm = Confusion::new(self.table.classes());
        let mut out = vec![0.0; self.table.classes()];
        for i in 0..self.table.len() {
            let p = self.predict(&self.table.rows(i), fusion, &mut out)?;
            cm.add(self.table.label(i), p);
        }
        Ok(cm)
    }

    /// Correctness of every table sample's fused prediction when only the
    /// modalities in `mask` are kept: a removed modality's row is replaced
    /// by its `removal` row; a modality absent from a sample (missing or
    /// dropped) stays absent in every coalition, so it contributes nothing
    /// to that sample.
    fn coalition_correct(
        &self,
        mask: usize,
        removal: Removal,
        fusion: &Fusion,
    ) -> crate::Result<Vec<bool>> {
        let replacement = match removal {
            Removal::ZeroInput => &self.removed.zero_input,
            Removal::ZeroFeature => &self.removed.zero_feature,
        };
        let mut out = vec![0.0; self.coalition_table().classes()];
        (0..self.coalition_table().len())
            .map(|i| {
                let rows: Vec<Option<&[f32]>> = self
                    .coalition_table()
                    .rows(i)
                    .into_iter()
                    .enumerate()
                    .map(|(m, r)| {
                        r.map(|z| {
                            if mask & (1 << m) != 0 {
                                z
                            } else {
                                replacement[m].as_slice()
                            }
                        })
                    })
                    .collect();
                Ok(self.predict(&rows, fusion, &mut out)? == self.coalition_table().label(i))
            })
            .collect()
    }

    /// Exact Shapley values of the modalities for the fused accuracy, over
    /// every scored sample of the split, with `removal` (see
    /// [`crate::shapley`]). MLA: the removed modality's logits are replaced
    /// and `rule` (resolved with `fit`) fuses them; joint: the concat head
    /// on `h_m(0)` (zero-input) or 0 (zero-feature) for the removed
    /// modalities (MMPareto: rebuilt from the slices, not the own heads);
    /// unimodal: `phi = v(M) - v(empty)`. Host work only.
    /// The joint's coalition logits are recomputed on the host in f64 from
    /// the slice logits, so `v(M)` can differ from the device head's fused
    /// accuracy where a sample's top two logits tie to float rounding.
    pub fn shapley_values(
        &self,
        removal: Removal,
        rule: FusionRule,
        fit: Option<&FusionFit>,
    ) -> Result<ShapleyValues> {
        let fusion = self.fusion_of(rule, fit)?;
        Ok(shapley::shapley(
            self.coalition_table().modalities(),
            self.coalition_table().len(),
            |mask| self.coalition_correct(mask, removal, &fusion),
        )?)
    }

    /// [`Self::shapley_values`] as the record of a summary.
    pub fn shapley(
        &self,
        layout: &ModelLayout,
        removal: Removal,
        rule: FusionRule,
        fit: Option<&FusionFit>,
    ) -> Result<Shapley> {
        Ok(self
            .shapley_values(removal, rule, fit)?
            .record(removal, &layout.modalities))
    }
}
