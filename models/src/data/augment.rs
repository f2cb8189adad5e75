//! Training-time augmentation of image-like modalities (`--augment
//! image=crop:4+flip`): torchvision's RandomCrop with zero padding P (the
//! image shifted by up to P pixels each way, uncovered pixels 0) followed by
//! RandomHorizontalFlip (p = 0.5), on rows laid out `[.., H, W]`.
//!
//! Each draw comes from (seed, epoch, modality, sample id), so a sample is
//! augmented the same way whatever batch or thread count it is in, a new way
//! every epoch, and a resumed run replays exactly what an uninterrupted one
//! saw.

use std::fmt;
use std::str::FromStr;

use super::dataset::Dataset;
use super::error::DataError;
use super::loader::Batch;
use crate::rng::Rng;

const AUGMENT_STREAM: u64 = 0x4155_474d_454e_5431; // "AUGMENT1"
/// Largest crop padding (pixels).
pub const MAX_PADDING: usize = 64;

/// One modality's augmentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Augmentation {
    /// RandomCrop padding (0: no crop).
    pub crop: usize,
    /// RandomHorizontalFlip.
    pub flip: bool,
}

/// `MODALITY=crop:P+flip,...` for several modalities.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AugmentSpec(pub Vec<(String, Augmentation)>);

impl FromStr for AugmentSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out: Vec<(String, Augmentation)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = |why: &str| {
                format!("--augment {part:?}: {why}; expected MODALITY=crop:P, MODALITY=flip or MODALITY=crop:P+flip")
            };
            let (m, ops) = part.split_once('=').ok_or_else(|| bad("no '='"))?;
            let m = m.trim();
            if m.is_empty() {
                return Err(bad("no modality name"));
            }
            let mut a = Augmentation::default();
            for op in ops.split('+').map(str::trim) {
                match op.split_once(':') {
                    None if op == "flip" && !a.flip => a.flip = true,
                    Some(("crop", p)) if a.crop == 0 => {
                        let p: usize = p.parse().map_err(|_| {
                            bad(&format!("crop padding '{p}' is not a whole number"))
                        })?;
                        if p == 0 || p > MAX_PADDING {
                            return Err(bad(&format!(
                                "crop padding {p} is outside 1..={MAX_PADDING}"
                            )));
                        }
                        a.crop = p;
                    }
                    _ => return Err(bad(&format!("unknown or repeated operation '{op}'"))),
                }
            }
            if out.iter().any(|(n, _)| n == m) {
                return Err(format!("--augment: {m} is given twice"));
            }
            out.push((m.to_string(), a));
        }
        Ok(AugmentSpec(out))
    }
}

impl fmt::Display for AugmentSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(m, a)| {
                let mut ops = Vec::new();
                if a.crop > 0 {
                    ops.push(format!("crop:{}", a.crop));
                }
                if a.flip {
                    ops.push("flip".to_string());
                }
                format!("{m}={}", ops.join("+"))
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl serde::Serialize for AugmentSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for AugmentSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl AugmentSpec {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An [`AugmentSpec`] resolved against a dataset's modalities and shapes.
#[derive(Clone, Debug)]
pub struct Augmenter {
    /// (dataset modality index, augmentation, (planes, H, W)).
    items: Vec<(usize, Augmentation, (usize, usize, usize))>,
    seed: u64,
}

impl Augmenter {
    pub fn new(dataset: &Dataset, spec: &AugmentSpec, seed: u64) -> Result<Augmenter, DataError> {
        let mut items = Vec::new();
        for (name, a) in &spec.0 {
            let m = dataset.modality_index(name).ok_or_else(|| {
                let names: Vec<&str> = dataset
                    .modalities()
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect();
                DataError::InvalidArgument(format!(
                    "--augment {name}: the dataset has modalities {}",
                    names.join(", ")
                ))
            })?;
            let shape = &dataset.modalities()[m].shape;
            if shape.len() < 2 {
                return Err(DataError::InvalidArgument(format!(
                    "--augment {name}: crops and flips need rows laid out [.., H, W]; {name} has shape {shape:?}"
                )));
            }
            let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
            let planes = shape.iter().product::<usize>() / (h * w).max(1);
            items.push((m, *a, (planes, h, w)));
        }
        Ok(Augmenter { items, seed })
    }

    /// Augments the rows of `batch` (drawn for `epoch`) in place.
    pub fn apply(&self, batch: &mut Batch, epoch: u64) {
        let epoch_base = Rng::derive(self.seed ^ AUGMENT_STREAM, epoch).next_u64();
        for &(m, a, (planes, h, w)) in &self.items {
            let Some(mb) = batch.modalities.get_mut(m) else {
                continue;
            };
            let len = planes * h * w;
            if len == 0 {
                continue;
            }
            let base = Rng::derive(epoch_base, m as u64).next_u64();
            let mut scratch = vec![0f32; len];
            for (k, &pos) in mb.present.iter().enumerate() {
                let mut rng = Rng::derive(base, batch.samples[pos] as u64);
                let row = &mut mb.data[k * len..(k + 1) * len];
                // Both draws always happen, so adding a flip keeps the crops.
                let p = a.crop as i64;
                let dy = rng.below(2 * a.crop + 1) as i64 - p;
                let dx = rng.below(2 * a.crop + 1) as i64 - p;
                let flip = rng.uniform() < 0.5;
                if a.crop > 0 {
                    shift(row, &mut scratch, (planes, h, w), dy, dx);
                }
                if a.flip && flip {
                    for plane in row.chunks_mut(h * w) {
                        for line in plane.chunks_mut(w) {
                            line.reverse();
                        }
                    }
                }
            }
        }
    }
}

/// `out[y][x] = in[y + dy][x + dx]`, 0 outside: RandomCrop of the zero-padded
/// image at offset (P + dy, P + dx).
fn shift(
    row: &mut [f32],
    scratch: &mut [f32],
    (planes, h, w): (usize, usize, usize),
    dy: i64,
    dx: i64,
) {
    scratch.fill(0.0);
    for c in 0..planes {
        for y in 0..h as i64 {
            let sy = y + dy;
            if sy < 0 || sy >= h as i64 {
                continue;
            }
            for x in 0..w as i64 {
                let sx = x + dx;
                if sx >= 0 && sx < w as i64 {
                    scratch[(c * h + y as usize) * w + x as usize] =
                        row[(c * h + sy as usize) * w + sx as usize];
                }
            }
        }
    }
    row.copy_from_slice(scratch);
}
