//! Head gradient modification (HGM), exactly as MLA.md: an orthogonal
//! projection of the shared head's weight gradient maintained by recursive
//! least squares. It sits between backward and the optimizer step: it
//! rewrites `grad(head.weight)` and updates P; the optimizer never knows.
//!
//! For a step of modality m with (detached) batch features `h` `[b, s]`:
//! `r = mean_i h_i`; `grad W <- (grad W) P_{t-1}` (the bias gradient is left
//! alone); then `P <- P - P r (P r)^T / (alpha + r^T P r)`, via the backend's
//! fused `rls_project`.
//!
//! - `owm`: one P shared by all modalities (projects with it, then updates it).
//! - `cross`: one P_k per modality; a step of m projects with P_m and updates
//!   every P_k with k != m, so a modality is never restricted by its own features.
//!
//! Alpha modes: `absolute` uses alpha as given; `relative` uses alpha times
//! the running mean of `r^T r` over the steps so far (this one included), so
//! one alpha transfers across encoders and feature sizes. It is computed
//! without reading the device: updating P with `r / sqrt(mean r^T r)` and
//! alpha is the same update as with `r` and `alpha * mean r^T r`, since
//! `P r r^T P / (alpha m + r^T P r) = P r' r'^T P / (alpha + r'^T P r')`
//! for `r' = r / sqrt(m)`. Either way P stays symmetric PSD with eigenvalues
//! in [0, 1]: the update is the same RLS step on another vector.
//!
//! The surviving fraction `|(grad W) P| / |grad W|` of each step is computed
//! on the device and accumulated there; it is read back only when asked
//! ([`Hgm::fraction_stats`]), so a CUDA step does not synchronise for it.

use crate::error::{ModelError, Result};
use crate::model::HEAD_WEIGHT;
use crate::params::StateDict;
use mla_core::{Backend, Element, Tensor};
use std::fmt;
use std::str::FromStr;

/// Head gradient modification: off, one P shared by all modalities, or one P per modality.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HgmMode {
    None,
    Owm,
    Cross,
}

/// How `--alpha` is read (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlphaMode {
    #[default]
    Absolute,
    Relative,
}

impl AlphaMode {
    pub const NAMES: [&'static str; 2] = ["absolute", "relative"];
    pub fn as_str(self) -> &'static str {
        match self {
            AlphaMode::Absolute => "absolute",
            AlphaMode::Relative => "relative",
        }
    }
}

impl fmt::Display for AlphaMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AlphaMode {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "absolute" => Ok(AlphaMode::Absolute),
            "relative" => Ok(AlphaMode::Relative),
            _ => Err(ModelError::unknown("alpha mode", s.trim(), &Self::NAMES)),
        }
    }
}

/// Alpha over training: `constant` (`--alpha`), or `linear:START:END` from
/// START at the first step to END at the last step of the configured
/// epochs (read in the alpha mode, so relative values with `relative`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum AlphaSchedule {
    #[default]
    Constant,
    Linear {
        start: f64,
        end: f64,
    },
}

impl AlphaSchedule {
    /// Alpha at `progress` in [0, 1] of training; `alpha` for `constant`.
    pub fn at(self, alpha: f64, progress: f64) -> f64 {
        match self {
            AlphaSchedule::Constant => alpha,
            AlphaSchedule::Linear { start, end } => {
                start + (end - start) * progress.clamp(0.0, 1.0)
            }
        }
    }
}

impl fmt::Display for AlphaSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlphaSchedule::Constant => f.write_str("constant"),
            AlphaSchedule::Linear { start, end } => write!(f, "linear:{start}:{end}"),
        }
    }
}

impl FromStr for AlphaSchedule {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        if t == "constant" {
            return Ok(AlphaSchedule::Constant);
        }
        let bad = |why: &str| {
            ModelError::bad_spec(
                "alpha schedule",
                s.trim(),
                format!("{why}; expected constant or linear:START:END with START, END > 0"),
            )
        };
        let parts: Vec<&str> = t.split(':').collect();
        match parts.as_slice() {
            ["linear", a, b] => {
                let num = |x: &str| {
                    x.parse::<f64>()
                        .map_err(|_| bad(&format!("'{x}' is not a number")))
                };
                let (start, end) = (num(a)?, num(b)?);
                for v in [start, end] {
                    check_alpha(v)
                        .map_err(|_| bad(&format!("{v} is not a positive finite alpha")))?;
                }
                Ok(AlphaSchedule::Linear { start, end })
            }
            _ => Err(bad("unknown form")),
        }
    }
}

impl serde::Serialize for AlphaSchedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for AlphaSchedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl HgmMode {
    pub const NAMES: [&'static str; 3] = ["none", "owm", "cross"];
    pub fn as_str(self) -> &'static str {
        match self {
            HgmMode::None => "none",
            HgmMode::Owm => "owm",
            HgmMode::Cross => "cross",
        }
    }
    fn code(self) -> f64 {
        match self {
            HgmMode::None => 0.0,
            HgmMode::Owm => 1.0,
            HgmMode::Cross => 2.0,
        }
    }
}

impl fmt::Display for HgmMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HgmMode {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(HgmMode::None),
            "owm" => Ok(HgmMode::Owm),
            "cross" => Ok(HgmMode::Cross),
            _ => Err(ModelError::unknown("HGM mode", s.trim(), &Self::NAMES)),
        }
    }
}

/// Surviving fraction of the head gradient for one modality since the last reset.
#[derive(Clone, Debug, PartialEq)]
pub struct FractionStat {
    pub modality: String,
    /// Mean over the steps of `|(grad W) P| / |grad W|`.
    pub mean: f64,
    /// The most recent step's fraction.
    pub last: f64,
    pub steps: u64,
}

struct FractionAcc<T: Element, B: Backend<T>> {
    sum: Tensor<T, B>,
    last: Tensor<T, B>,
    steps: u64,
}

/// Added to `|grad W|^2` so an all-zero gradient reports a fraction of 0, not NaN.
const TINY: f64 = 1e-30;

pub struct Hgm<B, T = f32>
where
    T: Element,
    B: Backend<T>,
{
    mode: HgmMode,
    alpha: f64,
    feature_size: usize,
    modalities: Vec<String>,
    /// `owm`: one matrix; `cross`: one per modality (spec order); `none`: empty.
    p: Vec<Tensor<T, B>>,
    track_fraction: bool,
    fractions: Vec<Option<FractionAcc<T, B>>>,
    alpha_mode: AlphaMode,
    /// `relative`: sum of `r^T r` over the steps so far (a device scalar), and their count.
    rr_sum: Option<Tensor<T, B>>,
    rr_count: u64,
}

impl<T: Element, B: Backend<T>> Hgm<B, T> {
    /// `P_0 = I` (`s x s`) for each matrix the mode needs. `alpha > 0`.
    pub fn new(
        backend: &B,
        mode: HgmMode,
        alpha: f64,
        feature_size: usize,
        modalities: &[&str],
    ) -> Result<Self> {
        check_alpha(alpha)?;
        if feature_size == 0 {
            return Err(ModelError::Config(
                "HGM: feature size must be positive".into(),
            ));
        }
        if modalities.is_empty() {
            return Err(ModelError::Config(
                "HGM: needs at least one modality".into(),
            ));
        }
        let count = match mode {
            HgmMode::None => 0,
            HgmMode::Owm => 1,
            HgmMode::Cross => modalities.len(),
        };
        let s = feature_size;
        let mut eye = vec![T::zero(); s * s];
        for i in 0..s {
            eye[i * s + i] = T::one();
        }
        let p = (0..count)
            .map(|_| Tensor::from_slice(backend, &eye, [s, s]))
            .collect::<mla_core::Result<Vec<_>>>()?;
        Ok(Hgm {
            mode,
            alpha,
            feature_size,
            modalities: modalities.iter().map(|m| m.to_string()).collect(),
            p,
            track_fraction: true,
            fractions: (0..modalities.len()).map(|_| None).collect(),
            alpha_mode: AlphaMode::Absolute,
            rr_sum: None,
            rr_count: 0,
        })
    }

    /// The same HGM reading alpha in `mode` (before any step).
    pub fn with_alpha_mode(mut self, mode: AlphaMode) -> Self {
        self.alpha_mode = mode;
        self
    }
    pub fn alpha_mode(&self) -> AlphaMode {
        self.alpha_mode
    }

    /// Running mean of `r^T r` (`relative` mode, after a step); reads the device.
    pub fn feature_scale(&self) -> Result<Option<f64>> {
        match (&self.rr_sum, self.alpha_mode) {
            (Some(sum), AlphaMode::Relative) if self.rr_count > 0 => {
                Ok(Some(sum.to_scalar()?.as_f64() / self.rr_count as f64))
            }
            _ => Ok(None),
        }
    }

    /// The alpha the last step's update used in absolute terms.
    pub fn effective_alpha(&self) -> Result<f64> {
        Ok(self.alpha * self.feature_scale()?.unwrap_or(1.0))
    }

    /// `relative`: adds this step's `r^T r` to the running sum and returns
    /// `r / sqrt(mean r^T r)` (module docs); `absolute`: `r`.
    fn scaled_mean(&mut self, r: Tensor<T, B>) -> Result<Tensor<T, B>> {
        if self.alpha_mode == AlphaMode::Absolute {
            return Ok(r);
        }
        let rr = r.sqr()?.sum_all()?;
        let sum = match self.rr_sum.take() {
            None => rr,
            Some(s) => s.add(&rr)?,
        };
        self.rr_count += 1;
        // TINY keeps an all-zero feature history at r' = 0 instead of 0/0.
        let scale = sum.affine(1.0 / self.rr_count as f64, TINY)?.sqrt()?;
        self.rr_sum = Some(sum);
        Ok(r.div(&scale)?)
    }

    pub fn mode(&self) -> HgmMode {
        self.mode
    }
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
    /// Changes alpha from the next step on (an alpha schedule).
    pub fn set_alpha(&mut self, alpha: f64) -> Result<()> {
        check_alpha(alpha)?;
        self.alpha = alpha;
        Ok(())
    }
    /// Turns the device-side fraction bookkeeping (a few small kernels per step) on or off.
    pub fn set_track_fraction(&mut self, on: bool) {
        self.track_fraction = on;
    }

    /// The P matrix a step of `modality` projects with (None under `none`).
    pub fn projector(&self, modality: &str) -> Result<Option<&Tensor<T, B>>> {
        let m = self.index(modality)?;
        Ok(match self.mode {
            HgmMode::None => None,
            HgmMode::Owm => Some(&self.p[0]),
            HgmMode::Cross => Some(&self.p[m]),
        })
    }

    fn index(&self, modality: &str) -> Result<usize> {
        self.modalities
            .iter()
            .position(|m| m == modality)
            .ok_or_else(|| {
                let valid: Vec<&str> = self.modalities.iter().map(|s| s.as_str()).collect();
                ModelError::unknown("modality", modality, &valid)
            })
    }

    /// HGM for one MLA step of `modality`: replaces the `head.weight` entry of
    /// `grads` by its projection and updates P from `features` (`[batch, s]`,
    /// the step's encoder output; only its values are used). Other entries,
    /// `head.bias` included, are left as they are. A no-op under `none`.
    pub fn apply(
        &mut self,
        modality: &str,
        features: &Tensor<T, B>,
        grads: &mut [(String, Tensor<T, B>)],
    ) -> Result<()> {
        self.apply_by(modality, grads, |h, g| h.project(modality, features, g))
    }

    /// As [`Hgm::apply`] with the batch mean of the features given (`[s]`):
    /// a data-parallel step reduces it over the global batch first.
    pub fn apply_mean(
        &mut self,
        modality: &str,
        mean: &Tensor<T, B>,
        grads: &mut [(String, Tensor<T, B>)],
    ) -> Result<()> {
        self.apply_by(modality, grads, |h, g| h.project_mean(modality, mean, g))
    }

    /// Replaces the `head.weight` entry of `grads` by `project` of it.
    fn apply_by(
        &mut self,
        modality: &str,
        grads: &mut [(String, Tensor<T, B>)],
        project: impl FnOnce(&mut Self, &Tensor<T, B>) -> Result<Tensor<T, B>>,
    ) -> Result<()> {
        self.index(modality)?;
        if self.mode == HgmMode::None {
            return Ok(());
        }
        let slot = head_grad(modality, grads)?;
        slot.1 = project(self, &slot.1)?;
        Ok(())
    }

    /// The lower-level step: returns `grad_w P_{t-1}` (`grad_w` is `[C, s]`)
    /// and updates P as [`Hgm::apply`] does. Under `none` returns `grad_w` unchanged.
    pub fn project(
        &mut self,
        modality: &str,
        features: &Tensor<T, B>,
        grad_w: &Tensor<T, B>,
    ) -> Result<Tensor<T, B>> {
        self.index(modality)?;
        if self.mode == HgmMode::None {
            return Ok(grad_w.clone());
        }
        let s = self.feature_size;
        let fd = features.dims();
        if fd.len() != 2 || fd[1] != s || fd[0] == 0 {
            return Err(ModelError::BadInput {
                what: format!("HGM step of modality '{modality}'"),
                why: format!("features must be [batch >= 1, {s}]"),
                shape: fd.to_vec(),
            });
        }
        self.project_mean(modality, &features.mean_axis(0, false)?, grad_w)
    }

    /// As [`Hgm::project`] with the batch mean of the features (`[s]`).
    pub fn project_mean(
        &mut self,
        modality: &str,
        mean: &Tensor<T, B>,
        grad_w: &Tensor<T, B>,
    ) -> Result<Tensor<T, B>> {
        let m = self.index(modality)?;
        if self.mode == HgmMode::None {
            return Ok(grad_w.clone());
        }
        let s = self.feature_size;
        if mean.dims() != [s] {
            return Err(ModelError::BadInput {
                what: format!("HGM step of modality '{modality}'"),
                why: format!("the feature mean must be [{s}]"),
                shape: mean.dims().to_vec(),
            });
        }
        let gd = grad_w.dims();
        if gd.len() != 2 || gd[1] != s {
            return Err(ModelError::BadInput {
                what: format!("HGM step of modality '{modality}'"),
                why: format!("head weight gradient must be [classes, {s}]"),
                shape: gd.to_vec(),
            });
        }
        let c = gd[0];
        let backend = grad_w.backend().clone();
        let r = self.scaled_mean(mean.clone())?;
        let projected = match self.mode {
            HgmMode::Owm => {
                mla_core::flops::add(rls_flops(c, s, true));
                let out = backend.rls_project(
                    self.p[0].storage_mut()?,
                    r.storage(),
                    Some(grad_w.storage()),
                    c,
                    s,
                    self.alpha,
                )?;
                let out = out.ok_or_else(|| {
                    ModelError::Core(mla_core::Error::backend(
                        "rls_project",
                        backend.name(),
                        "returned no projected gradient",
                    ))
                })?;
                Tensor::from_storage(&backend, out, [c, s])
            }
            HgmMode::Cross => {
                // P is symmetric, so (grad W) P is a plain product; P_m itself is not updated.
                let projected = grad_w.matmul(&self.p[m])?;
                for (k, p) in self.p.iter_mut().enumerate() {
                    if k != m {
                        mla_core::flops::add(rls_flops(c, s, false));
                        backend.rls_project(
                            p.storage_mut()?,
                            r.storage(),
                            None,
                            c,
                            s,
                            self.alpha,
                        )?;
                    }
                }
                projected
            }
            HgmMode::None => unreachable!("handled above"),
        };
        if self.track_fraction {
            self.record_fraction(m, grad_w, &projected)?;
        }
        Ok(projected)
    }

    fn record_fraction(
        &mut self,
        m: usize,
        before: &Tensor<T, B>,
        after: &Tensor<T, B>,
    ) -> Result<()> {
        let num = after.sqr()?.sum_all()?;
        let den = before.sqr()?.sum_all()?.affine(1.0, TINY)?;
        let frac = num.div(&den)?.sqrt()?;
        self.fractions[m] = Some(match self.fractions[m].take() {
            None => FractionAcc {
                sum: frac.clone(),
                last: frac,
                steps: 1,
            },
            Some(acc) => FractionAcc {
                sum: acc.sum.add(&frac)?,
                last: frac,
                steps: acc.steps + 1,
            },
        });
        Ok(())
    }

    /// Per modality (that took a step since the last reset), the mean and last
    /// surviving fraction. Reads the device.
    pub fn fraction_stats(&self) -> Result<Vec<FractionStat>> {
        let mut out = Vec::new();
        for (name, acc) in self.modalities.iter().zip(&self.fractions) {
            if let Some(acc) = acc {
                out.push(FractionStat {
                    modality: name.clone(),
                    mean: acc.sum.to_scalar()?.as_f64() / acc.steps as f64,
                    last: acc.last.to_scalar()?.as_f64(),
                    steps: acc.steps,
                });
            }
        }
        Ok(out)
    }

    /// Clears the fraction statistics (e.g. at the start of an epoch).
    pub fn reset_fractions(&mut self) {
        self.fractions.iter_mut().for_each(|f| *f = None);
    }

    /// Checkpoint state: tensors `hgm.p` (owm) or `hgm.p.<modality>` (cross);
    /// scalars `hgm.mode` (0 none, 1 owm, 2 cross), `hgm.alpha`, `hgm.feature_size`.
    pub fn state(&self) -> StateDict<B, T> {
        let mut sd = StateDict::default();
        match self.mode {
            HgmMode::None => {}
            HgmMode::Owm => sd.tensors.push(("hgm.p".into(), self.p[0].clone())),
            HgmMode::Cross => {
                for (m, p) in self.modalities.iter().zip(&self.p) {
                    sd.tensors.push((format!("hgm.p.{m}"), p.clone()));
                }
            }
        }
        sd.scalars.push(("hgm.mode".into(), self.mode.code()));
        if self.alpha_mode == AlphaMode::Relative {
            sd.scalars.push(("hgm.relative".into(), 1.0));
            sd.scalars
                .push(("hgm.rr_count".into(), self.rr_count as f64));
            if let Some(sum) = &self.rr_sum {
                sd.tensors.push(("hgm.rr_sum".into(), sum.clone()));
            }
        }
        sd.scalars.push(("hgm.alpha".into(), self.alpha));
        sd.scalars
            .push(("hgm.feature_size".into(), self.feature_size as f64));
        sd
    }

    /// Restores [`Hgm::state`]: mode and feature size must match this HGM's;
    /// P matrices and alpha are taken from the state. On error nothing changes.
    pub fn load_state(&mut self, state: &StateDict<B, T>) -> Result<()> {
        const WHAT: &str = "HGM";
        let scalar = |k: &str| {
            state
                .scalar(k)
                .ok_or_else(|| ModelError::state(WHAT, format!("scalar '{k}' is missing")))
        };
        let mode = scalar("hgm.mode")?;
        if mode != self.mode.code() {
            let found = HgmMode::NAMES.get(mode as usize).copied().unwrap_or("?");
            return Err(ModelError::state(
                WHAT,
                format!(
                    "checkpoint has mode '{found}', this run uses '{}'",
                    self.mode
                ),
            ));
        }
        let s = scalar("hgm.feature_size")?;
        if s != self.feature_size as f64 {
            return Err(ModelError::state(
                WHAT,
                format!(
                    "checkpoint has feature size {s}, this model {}",
                    self.feature_size
                ),
            ));
        }
        let alpha = scalar("hgm.alpha")?;
        check_alpha(alpha).map_err(|e| ModelError::state(WHAT, e.to_string()))?;
        let names: Vec<String> = match self.mode {
            HgmMode::None => vec![],
            HgmMode::Owm => vec!["hgm.p".into()],
            HgmMode::Cross => self
                .modalities
                .iter()
                .map(|m| format!("hgm.p.{m}"))
                .collect(),
        };
        let relative = state.scalar("hgm.relative").unwrap_or(0.0) == 1.0;
        if relative != (self.alpha_mode == AlphaMode::Relative) {
            return Err(ModelError::state(
                WHAT,
                format!(
                    "checkpoint has alpha mode '{}', this run uses '{}'",
                    if relative { "relative" } else { "absolute" },
                    self.alpha_mode
                ),
            ));
        }
        let (rr_sum, rr_count) = if relative {
            let count = scalar("hgm.rr_count")?;
            if !(count >= 0.0 && count.fract() == 0.0 && count < 1e15) {
                return Err(ModelError::state(WHAT, format!("bad step count {count}")));
            }
            let sum = state.tensor("hgm.rr_sum").cloned();
            if sum.as_ref().is_some_and(|t| t.elem_count() != 1)
                || (sum.is_none() != (count == 0.0))
            {
                return Err(ModelError::state(
                    WHAT,
                    "the running r^T r sum and its step count disagree".to_string(),
                ));
            }
            (sum, count as u64)
        } else {
            (None, 0)
        };
        if let Some((k, _)) = state
            .tensors
            .iter()
            .find(|(k, _)| !names.contains(k) && (!relative || k != "hgm.rr_sum"))
        {
            return Err(ModelError::state(
                WHAT,
                format!("unexpected tensor '{k}' for mode '{}'", self.mode),
            ));
        }
        let mut p = Vec::with_capacity(names.len());
        for n in &names {
            let t = state
                .tensor(n)
                .ok_or_else(|| ModelError::state(WHAT, format!("tensor '{n}' is missing")))?;
            let want = [self.feature_size, self.feature_size];
            if t.dims() != want {
                return Err(ModelError::ShapeMismatch {
                    what: "HGM state",
                    name: n.clone(),
                    expected: want.to_vec(),
                    got: t.dims().to_vec(),
                });
            }
            p.push(t.clone());
        }
        self.p = p;
        self.alpha = alpha;
        self.rr_sum = rr_sum;
        self.rr_count = rr_count;
        Ok(())
    }
}

fn check_alpha(alpha: f64) -> Result<()> {
    if alpha.is_finite() && alpha > 0.0 {
        Ok(())
    } else {
        Err(ModelError::Config(format!(
            "HGM alpha must be positive and finite, got {alpha}"
        )))
    }
}

/// The `head.weight` entry of a step's gradients.
fn head_grad<'g, T: Element, B: Backend<T>>(
    modality: &str,
    grads: &'g mut [(String, Tensor<T, B>)],
) -> Result<&'g mut (String, Tensor<T, B>)> {
    grads
        .iter_mut()
        .find(|(n, _)| n == HEAD_WEIGHT)
        .ok_or_else(|| ModelError::MissingParam {
            name: HEAD_WEIGHT.into(),
            context: format!(
                "HGM step of modality '{modality}': no head gradient among the step's gradients"
            ),
        })
}

/// The floating-point operations of one fused RLS projection (counted with
/// the GEMMs, `mla_core::flops`): `P r` and the rank-one update of `P` (2 s^2
/// each), `r^T P r` (2 s), and `grad_W P` (2 c s^2) when projecting.
fn rls_flops(c: usize, s: usize, project: bool) -> u64 {
    let (c, s) = (c as u64, s as u64);
    4 * s * s + 2 * s + if project { 2 * c * s * s } else { 0 }
}
