//! `joint`: every encoder on its present samples, features concatenated,
//! one head, cross-entropy on the fused logits, every parameter updated.

use super::{joint_forward, step_gradients, upload_batch, Method, StepCtx};
use crate::data::Batch;
use crate::dist::Weights;
use crate::trainer::config::MethodKind;
use crate::trainer::stats::Pending;
use crate::trainer::Result;
use mla_core::{Backend, Indices, Tape};

pub struct Joint;

impl<B: Backend<f32>> Method<B> for Joint {
    fn kind(&self) -> MethodKind {
        MethodKind::Joint
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
            let inputs = upload_batch(ctx.backend, ctx.layout, batch)?;
            let labels = Indices::new(ctx.backend, &batch.labels)?;
            let tape = Tape::new(ctx.backend);
            let p = ctx.model.track(&tape, |_| true);
            let f = joint_forward(ctx.model, ctx.layout, &p, &tape, inputs, n)?;
            let loss = f.logits.cross_entropy(&labels)?;
            let g = tape.backward(&loss)?;
            Some((p.gradients(g), loss.into_value()))
        };
        let Some((grads, loss)) = step_gradients(ctx, local, Weights::MeanOver(&|_| n), n)? else {
            return Ok(());
        };
        ctx.optim.step(ctx.model.params_mut(), &grads)?;
        out.push(ctx.step, None, loss);
        Ok(())
    }
}
