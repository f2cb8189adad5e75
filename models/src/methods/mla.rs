//! `mla`: alternating unimodal steps through one shared head (MLA.md). Each
//! batch gives one step per modality, in model order: that modality's
//! encoder and the head, cross-entropy of its own logits, HGM on
//! `grad(head.weight)` before the optimizer. The other encoders get no
//! gradient, so the optimizer gives them no momentum or weight-decay step.

use super::forgetting::{Probe, PROBE_EVERY};
use super::{labels_at, sum_over_ranks, upload_modality, Method, StepCtx};
use crate::data::{Batch, Dataset};
use crate::hgm::Hgm;
use crate::metrics::NamedValues;
use crate::model::Model;
use crate::params::StateDict;
use crate::trainer::config::{AlphaSchedule, HgmMode, MethodKind, TrainConfig};
use crate::trainer::layout::ModelLayout;
use crate::trainer::records::EpochRecord;
use crate::trainer::stats::Pending;
use crate::trainer::{Result, TrainError};
use mla_core::{Backend, Tape};

pub struct Mla<B: Backend<f32>> {
    hgm: Option<Hgm<B>>,
    schedule: AlphaSchedule,
    alpha: f64,
    /// The forgetting probe (two or more modalities).
    probe: Option<Probe>,
    measuring: bool,
    names: Vec<String>,
}

impl<B: Backend<f32>> Mla<B> {
    pub fn new(
        backend: &B,
        cfg: &TrainConfig,
        layout: &ModelLayout,
        dataset: &Dataset,
        val: &[usize],
    ) -> Result<Self> {
        let hgm = match cfg.hgm {
            HgmMode::None => None,
            mode => {
                let names: Vec<&str> = layout.modalities.iter().map(String::as_str).collect();
                let alpha = cfg.alpha_schedule.at(cfg.alpha, 0.0);
                Some(
                    Hgm::new(backend, mode, alpha, cfg.feature_size, &names)?
                        .with_alpha_mode(cfg.alpha_mode),
                )
            }
        };
        let probe = if layout.modalities.len() > 1 {
            Some(Probe::new(dataset, val, cfg.seed, layout.modalities.len())?)
        } else {
            None
        };
        Ok(Mla {
            hgm,
            schedule: cfg.alpha_schedule,
            alpha: cfg.alpha,
            probe,
            measuring: true,
            names: layout.modalities.clone(),
        })
    }

    /// The MLA steps of one batch with the forgetting probe around each.
    fn probed_steps(
        &mut self,
        ctx: &mut StepCtx<'_, B>,
        batch: &Batch,
        out: &mut Pending<B>,
    ) -> Result<()> {
        let Some(probe) = self.probe.as_mut() else {
            return Ok(());
        };
        let m = ctx.layout.modalities.len();
        let mut feats = (0..m)
            .map(|k| probe.features(ctx.model, ctx.layout, k))
            .collect::<Result<Vec<_>>>()?;
        for mi in 0..m {
            // Scores before the step, kept when the step happens (under data
            // parallelism only the reduction knows whether some rank had rows).
            let others: Vec<usize> = (0..m).filter(|&k| k != mi && feats[k].is_some()).collect();
            let mut before = Vec::with_capacity(others.len());
            for &k in &others {
                before.push(probe.score(ctx.model, ctx.layout, k, feats[k].as_ref().unwrap())?);
            }
            let stepped = modality_step(ctx, batch, mi, self.hgm.as_mut(), out)?;
            if !stepped {
                continue;
            }
            for (&k, b) in others.iter().zip(&before) {
                let after = probe.score(ctx.model, ctx.layout, k, feats[k].as_ref().unwrap())?;
                probe.record(k, b, &after);
            }
            feats[mi] = probe.features(ctx.model, ctx.layout, mi)?;
        }
        Ok(())
    }
}

impl<B: Backend<f32>> Method<B> for Mla<B> {
    fn kind(&self) -> MethodKind {
        MethodKind::Mla
    }

    fn begin_epoch(&mut self, _ctx: &super::EpochCtx<'_, B>) -> Result<()> {
        if let Some(h) = self.hgm.as_mut() {
            h.reset_fractions();
        }
        if let Some(p) = self.probe.as_mut() {
            p.reset();
        }
        Ok(())
    }

    fn step(
        &mut self,
        ctx: &mut StepCtx<'_, B>,
        batch: &Batch,
        out: &mut Pending<B>,
    ) -> Result<()> {
        if let (Some(h), AlphaSchedule::Linear { .. }) = (self.hgm.as_mut(), self.schedule) {
            h.set_alpha(self.schedule.at(self.alpha, ctx.progress))?;
        }
        if self.measuring && self.probe.is_some() && ctx.step.is_multiple_of(PROBE_EVERY) {
            return self.probed_steps(ctx, batch, out);
        }
        for mi in 0..ctx.layout.modalities.len() {
            modality_step(ctx, batch, mi, self.hgm.as_mut(), out)?;
        }
        Ok(())
    }

    fn end_epoch(&mut self, record: &mut EpochRecord) -> Result<()> {
        if let Some(h) = &self.hgm {
            let fr = h.fraction_stats()?;
            let steps: u64 = fr.iter().map(|f| f.steps).sum();
            if steps > 0 {
                let mean = fr.iter().map(|f| f.mean * f.steps as f64).sum::<f64>() / steps as f64;
                record.hgm_surviving_fraction = Some(mean);
                record.hgm_surviving_fraction_by_modality = Some(NamedValues(
                    fr.iter().map(|f| (f.modality.clone(), f.mean)).collect(),
                ));
            }
            record.hgm_alpha = Some(h.effective_alpha()?);
        }
        if let Some(p) = &self.probe {
            record.forgetting = p.summary(&self.names);
        }
        Ok(())
    }

    fn set_measuring(&mut self, on: bool) {
        self.measuring = on;
    }

    fn state_prefix(&self) -> &'static str {
        "hgm."
    }

    fn scalars_key(&self) -> &'static str {
        "hgm_scalars"
    }

    fn state(&self) -> Result<StateDict<B>> {
        Ok(self.hgm.as_ref().map(Hgm::state).unwrap_or_default())
    }

    fn load_state(&mut self, sd: &StateDict<B>) -> Result<()> {
        match self.hgm.as_mut() {
            Some(h) => Ok(h.load_state(sd)?),
            None if sd.tensors.is_empty() && sd.scalars.is_empty() => Ok(()),
            None => Err(TrainError::Config(
                "the checkpoint holds HGM state but the run has no HGM".into(),
            )),
        }
    }
}

/// One unimodal step on model modality `mi` through the shared (MLA) or own
/// (unimodal) head: features, head, CE, backward, HGM (when given) on
/// `grad(head.weight)`, optimizer step on that encoder and the head only.
/// Returns whether the step happened (some row of the batch, over every
/// rank under data parallelism, has the modality).
pub(crate) fn modality_step<B: Backend<f32>>(
    ctx: &mut StepCtx<'_, B>,
    batch: &Batch,
    mi: usize,
    hgm: Option<&mut Hgm<B>>,
    out: &mut Pending<B>,
) -> Result<bool> {
    let mb = &batch.modalities[ctx.layout.data_index[mi]];
    let name = &ctx.layout.modalities[mi];
    let rows = mb.present.len();
    let local = if rows == 0 {
        None
    } else {
        let x = upload_modality(ctx.backend, ctx.layout, batch, mi)?;
        let labels = labels_at(ctx.backend, batch, &mb.present)?;
        let tape = Tape::new(ctx.backend);
        let p = ctx.model.track(&tape, Model::<B>::step_trainable(name));
        let h = ctx.model.features(&p, name, &tape.constant(x))?;
        let logits = ctx.model.head_logits(&p, &h)?;
        let loss = logits.cross_entropy(&labels)?;
        let g = tape.backward(&loss)?;
        // Only the feature values leave the block: HGM's r is detached.
        Some((p.gradients(g), loss.into_value(), h.into_value()))
    };
    let Some(dist) = ctx.dist else {
        let Some((mut grads, loss, h)) = local else {
            return Ok(false);
        };
        if let Some(hgm) = hgm {
            hgm.apply(name, &h, &mut grads)?;
        }
        drop(h);
        ctx.optim.step(ctx.model.params_mut(), &grads)?;
        out.push(ctx.step, Some(mi), loss);
        return Ok(true);
    };
    // HGM's r is the mean feature over the global batch: the feature sums
    // travel with the gradients.
    let s = ctx.model.spec().feature_size;
    let sums = match (&local, hgm.is_some()) {
        (_, false) => Vec::new(),
        (None, true) => vec![0f32; s],
        (Some((_, _, h)), true) => {
            let mut acc = vec![0f32; s];
            for row in h.to_vec()?.chunks(s) {
                for (a, x) in acc.iter_mut().zip(row) {
                    *a += x;
                }
            }
            acc
        }
    };
    let l = local.as_ref().map(|(g, l, _)| (g.as_slice(), l));
    let trainable = Model::<B>::step_trainable(name);
    let Some(mut r) = sum_over_ranks(dist, ctx.backend, ctx.model, trainable, l, rows, &sums)?
    else {
        return Ok(false);
    };
    drop(local);
    if let Some(hgm) = hgm {
        let inv = 1.0 / r.rows as f32;
        let mean: Vec<f32> = r.extra.iter().map(|x| x * inv).collect();
        let mean = mla_core::Tensor::from_slice(ctx.backend, &mean, vec![s])?;
        hgm.apply_mean(name, &mean, &mut r.grads)?;
    }
    ctx.optim.step(ctx.model.params_mut(), &r.grads)?;
    out.push(ctx.step, Some(mi), r.loss);
    Ok(true)
}
