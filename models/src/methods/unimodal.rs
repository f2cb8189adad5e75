//! `unimodal`: one modality, its encoder and its own head (the baseline
//! each modality's accuracy inside a multimodal model is compared with).

use super::mla::modality_step;
use super::{Method, StepCtx};
use crate::data::Batch;
use crate::trainer::config::MethodKind;
use crate::trainer::stats::Pending;
use crate::trainer::Result;
use mla_core::Backend;

pub struct Unimodal;

impl<B: Backend<f32>> Method<B> for Unimodal {
    fn kind(&self) -> MethodKind {
        MethodKind::Unimodal
    }

    fn step(
        &mut self,
        ctx: &mut StepCtx<'_, B>,
        batch: &Batch,
        out: &mut Pending<B>,
    ) -> Result<()> {
        modality_step(ctx, batch, 0, None, out).map(|_| ())
    }
}
