//! The per-modality logits of a whole split on the host: what fusion rules
//! are fitted on (validation) and scored on (validation and test).

use super::combine::Fusion;
use crate::error::{ModelError, Result};
use crate::metrics::Counter;

/// Samples x modalities x classes logits with a presence mask and labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogitTable {
    modalities: usize,
    classes: usize,
    labels: Vec<usize>,
    /// `[n, modalities, classes]`, zeros where absent.
    logits: Vec<f32>,
    /// `[n, modalities]`.
    present: Vec<bool>,
}

impl LogitTable {
    pub fn new(modalities: usize, classes: usize) -> Self {
        LogitTable {
            modalities,
            classes,
            ..LogitTable::default()
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn modalities(&self) -> usize {
        self.modalities
    }
    pub fn classes(&self) -> usize {
        self.classes
    }
    pub fn label(&self, i: usize) -> usize {
        self.labels[i]
    }

    /// Values per sample in [`LogitTable::write_rows`]: the label, a
    /// presence flag per modality, the logits.
    pub fn row_width(&self) -> usize {
        1 + self.modalities * (1 + self.classes)
    }

    /// The samples as `len() x row_width()` f64 values (exact for f32
    /// logits): what a data-parallel evaluation sums into place.
    pub fn write_rows(&self, out: &mut [f64]) {
        let (nm, c) = (self.modalities, self.classes);
        for (i, row) in out.chunks_exact_mut(self.row_width()).enumerate() {
            row[0] = self.labels[i] as f64;
            for m in 0..nm {
                row[1 + m] = f64::from(u8::from(self.present[i * nm + m]));
            }
            for (o, &v) in row[1 + nm..]
                .iter_mut()
                .zip(&self.logits[i * nm * c..(i + 1) * nm * c])
            {
                *o = v as f64;
            }
        }
    }

    /// The table [`LogitTable::write_rows`] wrote (`values.len()` a multiple
    /// of the row width).
    pub fn from_rows(modalities: usize, classes: usize, values: &[f64]) -> Self {
        let mut t = LogitTable::new(modalities, classes);
        for row in values.chunks_exact(t.row_width()) {
            t.labels.push(row[0] as usize);
            t.present
                .extend(row[1..1 + modalities].iter().map(|&p| p > 0.5));
            t.logits
                .extend(row[1 + modalities..].iter().map(|&v| v as f32));
        }
        t
    }

    /// Adds one sample: its label and each modality's logits (`None` when
    /// absent). At least one modality, finite logits, label in range.
    pub fn push(&mut self, label: usize, rows: &[Option<&[f32]>]) -> Result<()> {
        let (nm, c) = (self.modalities, self.classes);
        if rows.len() != nm {
            return Err(ModelError::Fusion(format!(
                "{} modalities given for a table of {nm}",
                rows.len()
            )));
        }
        if label >= c {
            return Err(ModelError::Fusion(format!(
                "label {label} outside {c} classes"
            )));
        }
        if rows.iter().all(Option::is_none) {
            return Err(ModelError::Fusion("sample with no modality present".into()));
        }
        for (m, r) in rows.iter().enumerate() {
            match r {
                Some(z) if z.len() != c => {
                    return Err(ModelError::Fusion(format!(
                        "modality {m}: {} logits for {c} classes",
                        z.len()
                    )))
                }
                Some(z) if z.iter().any(|v| !v.is_finite()) => {
                    return Err(ModelError::Fusion(format!(
                        "modality {m}: non-finite logit"
                    )))
                }
                Some(z) => {
                    self.logits.extend_from_slice(z);
                    self.present.push(true);
                }
                None => {
                    self.logits.extend(std::iter::repeat_n(0.0, c));
                    self.present.push(false);
                }
            }
        }
        self.labels.push(label);
        Ok(())
    }

    /// Modality m's logits of sample i, if present.
    pub fn row(&self, i: usize, m: usize) -> Option<&[f32]> {
        let k = i * self.modalities + m;
        self.present[k].then(|| &self.logits[k * self.classes..(k + 1) * self.classes])
    }

    /// Every modality's row of sample i.
    pub fn rows(&self, i: usize) -> Vec<Option<&[f32]>> {
        (0..self.modalities).map(|m| self.row(i, m)).collect()
    }

    /// The same samples with the modalities reordered: column k of the
    /// result is column `order[k]` of this table.
    pub fn permuted(&self, order: &[usize]) -> Result<LogitTable> {
        let mut t = LogitTable::new(order.len(), self.classes);
        for i in 0..self.len() {
            let rows = self.rows(i);
            let r: Vec<Option<&[f32]>> = order.iter().map(|&m| rows[m]).collect();
            t.push(self.labels[i], &r)?;
        }
        Ok(t)
    }

    /// Accuracy and loss of `fusion` over every sample.
    pub fn score(&self, fusion: &Fusion) -> Result<Counter> {
        let mut counter = Counter::default();
        let mut out = vec![0.0f64; self.classes];
        let mut w = vec![0.0f64; self.modalities];
        let mut row = vec![0.0f32; self.classes];
        for i in 0..self.len() {
            fusion.combine(&self.rows(i), &mut out, &mut w)?;
            row.iter_mut().zip(&out).for_each(|(r, &o)| *r = o as f32);
            counter.add_row(&row, self.labels[i]);
        }
        Ok(counter)
    }
}
