//! The `mla-dataset/1` reader: a JSON manifest plus memory-mapped `.npy` files. Everything
//! that can be checked once (shapes, dtypes, labels, splits, index ranges, every sample
//! having a modality) is checked at open; finiteness is checked per row as rows are read.

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::error::DataError;
use super::npy::{DType, NpyArray};

pub const FORMAT: &str = "mla-dataset/1";
pub const MANIFEST: &str = "dataset.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// The value stored in `split.npy`.
    pub fn code(self) -> u8 {
        match self {
            Split::Train => 0,
            Split::Validation => 1,
            Split::Test => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Split> {
        match code {
            0 => Some(Split::Train),
            1 => Some(Split::Validation),
            2 => Some(Split::Test),
            _ => None,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModalityInfo {
    pub name: String,
    /// Shape of one input of this modality (the data file's shape after its first axis).
    pub shape: Vec<usize>,
}

#[derive(Debug)]
struct ModalityData {
    data: NpyArray,
    rows: usize,
    row_len: usize,
    /// Row of `data` per sample (-1 = missing); None = row i belongs to sample i.
    index: Option<Vec<i64>>,
}

#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    manifest: Value,
    name: String,
    num_classes: usize,
    class_names: Vec<String>,
    labels: Vec<u32>,
    split: Vec<Split>,
    modalities: Vec<ModalityInfo>,
    data: Vec<ModalityData>,
}

/// Reads a manifest field, with an error naming the manifest and the field.
struct ManifestReader<'a> {
    path: &'a Path,
}

impl ManifestReader<'_> {
    fn err(&self, problem: String) -> DataError {
        DataError::Manifest {
            path: self.path.to_path_buf(),
            problem,
        }
    }

    fn string<'v>(&self, obj: &'v Value, field: &str, what: &str) -> Result<&'v str, DataError> {
        match obj.get(field) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.err(format!("{what}: field {field:?} must be a string"))),
            None => Err(self.err(format!("{what}: field {field:?} is missing"))),
        }
    }

    /// A file path from the manifest, resolved inside `dir`; anything that could leave
    /// the directory (absolute paths, `..`) is rejected.
    fn file(&self, dir: &Path, obj: &Value, field: &str, what: &str) -> Result<PathBuf, DataError> {
        let entry = self.string(obj, field, what)?;
        let rel = Path::new(entry);
        let inside = !entry.is_empty()
            && rel
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !inside {
            return Err(DataError::PathEscapes {
                path: self.path.to_path_buf(),
                field: format!("{what}.{field}"),
                entry: entry.to_string(),
            });
        }
        Ok(dir.join(rel))
    }
}

impl Dataset {
    pub fn open(dir: impl AsRef<Path>) -> Result<Dataset, DataError> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join(MANIFEST);
        let text =
            std::fs::read(&manifest_path).map_err(|e| DataError::io(&manifest_path, "read", e))?;
        let manifest: Value =
            serde_json::from_slice(&text).map_err(|e| DataError::ManifestJson {
                path: manifest_path.clone(),
                problem: e.to_string(),
            })?;
        let m = ManifestReader {
            path: &manifest_path,
        };
        if !manifest.is_object() {
            return Err(m.err("the manifest must be a JSON object".into()));
        }
        match manifest.get("format") {
            Some(Value::String(f)) if f == FORMAT => {}
            Some(other) => {
                return Err(DataError::UnknownFormat {
                    path: manifest_path,
                    found: other.to_string(),
                })
            }
            None => {
                return Err(DataError::UnknownFormat {
                    path: manifest_path,
                    found: "(field missing)".into(),
                })
            }
        }
        let name = match manifest.get("name") {
            None => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Some(_) => m.string(&manifest, "name", "dataset")?.to_string(),
        };
        let num_classes = match manifest.get("num_classes").and_then(Value::as_u64) {
            Some(c) if c >= 1 && c <= u32::MAX as u64 => c as usize,
            _ => return Err(m.err("field \"num_classes\" must be a positive integer".into())),
        };
        let class_names = match manifest.get("class_names") {
            None => (0..num_classes).map(|c| c.to_string()).collect(),
            Some(Value::Array(a)) if a.len() == num_classes && a.iter().all(Value::is_string) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(_) => {
                return Err(m.err(format!(
                    "field \"class_names\" must be an array of {num_classes} strings"
                )))
            }
        };

        let labels_path = m.file(&dir, &manifest, "labels", "dataset")?;
        let labels_raw = NpyArray::open(&labels_path, DType::I64)?;
        let n = vector_len(&labels_raw)?;
        let mut labels = Vec::with_capacity(n);
        for (i, &y) in labels_raw
            .as_slice::<i64>()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            if y < 0 || y as u64 >= num_classes as u64 {
                return Err(DataError::LabelOutOfRange {
                    path: labels_path,
                    sample: i,
                    value: y,
                    num_classes,
                });
            }
            labels.push(y as u32);
        }
        drop(labels_raw);

        let split_path = m.file(&dir, &manifest, "split", "dataset")?;
        let split_raw = NpyArray::open(&split_path, DType::U8)?;
        check_len(&split_raw, n, &labels_path)?;
        let mut split = Vec::with_capacity(n);
        for (i, &s) in split_raw
            .as_slice::<u8>()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            split.push(Split::from_code(s).ok_or(DataError::InvalidSplit {
                path: split_path.clone(),
                sample: i,
                value: s,
            })?);
        }

        let entries = match manifest.get("modalities") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            _ => return Err(m.err("field \"modalities\" must be a non-empty array".into())),
        };
        let mut modalities = Vec::with_capacity(entries.len());
        let mut data = Vec::with_capacity(entries.len());
        let mut seen = HashSet::new();
        for (j, entry) in entries.iter().enumerate() {
            let what = format!("modalities[{j}]");
            if !entry.is_object() {
                return Err(m.err(format!("{what} must be an object")));
            }
            let mname = m.string(entry, "name", &what)?.to_string();
            if mname.is_empty() {
                return Err(m.err(format!("{what}: name is empty")));
            }
            if !seen.insert(mname.clone()) {
                return Err(m.err(format!("modality name {mname:?} appears twice")));
            }
            let what = format!("modality {mname:?}");
            let data_path = m.file(&dir, entry, "data", &what)?;
            let arr = NpyArray::open(&data_path, DType::F32)?;
            let (rows, shape) = match arr.shape().split_first() {
                Some((&r, rest)) => (r, rest.to_vec()),
                None => {
                    return Err(DataError::NpyShape {
                        path: data_path,
                        found: vec![],
                        expected: "[R, d1, ...] with one row per stored item".into(),
                    })
                }
            };
            let row_len: usize = shape.iter().product();
            if row_len == 0 {
                return Err(DataError::NpyShape {
                    path: data_path,
                    found: arr.shape().to_vec(),
                    expected: "rows with at least one value".into(),
                });
            }
            let index = match entry.get("index") {
                None | Some(Value::Null) => {
                    if rows != n {
                        return Err(DataError::LengthMismatch {
                            path: data_path,
                            what: format!(
                                "without an index file, the row count of modality {mname:?}"
                            ),
                            found: rows,
                            reference: labels_path.display().to_string(),
                            expected: n,
                        });
                    }
                    None
                }
                Some(_) => {
                    let index_path = m.file(&dir, entry, "index", &what)?;
                    let idx = NpyArray::open(&index_path, DType::I64)?;
                    check_len(&idx, n, &labels_path)?;
                    let values = idx.as_slice::<i64>().unwrap_or_default().to_vec();
                    if let Some((i, &v)) = values
                        .iter()
                        .enumerate()
                        .find(|(_, &v)| v < -1 || v >= rows as i64)
                    {
                        return Err(DataError::IndexOutOfRange {
                            path: index_path,
                            sample: i,
                            value: v,
                            rows,
                        });
                    }
                    Some(values)
                }
            };
            modalities.push(ModalityInfo { name: mname, shape });
            data.push(ModalityData {
                data: arr,
                rows,
                row_len,
                index,
            });
        }
        if let Some(i) = (0..n).find(|&i| {
            data.iter()
                .all(|d| d.index.as_ref().is_some_and(|x| x[i] < 0))
        }) {
            return Err(DataError::AllModalitiesMissing {
                path: manifest_path,
                sample: i,
            });
        }
        Ok(Dataset {
            dir,
            manifest,
            name,
            num_classes,
            class_names,
            labels,
            split,
            modalities,
            data,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn modalities(&self) -> &[ModalityInfo] {
        &self.modalities
    }
    pub fn modality_index(&self, name: &str) -> Option<usize> {
        self.modalities.iter().position(|m| m.name == name)
    }
    pub fn manifest(&self) -> &Value {
        &self.manifest
    }

    /// Class of `sample`. Panics if `sample >= len()`, like slice indexing.
    pub fn label(&self, sample: usize) -> usize {
        self.labels[sample] as usize
    }

    /// Split of `sample`. Panics if `sample >= len()`, like slice indexing.
    pub fn split_of(&self, sample: usize) -> Split {
        self.split[sample]
    }

    /// Sample ids of `split`, ascending.
    pub fn indices(&self, split: Split) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.split[i] == split)
            .collect()
    }

    /// Number of values in one row of `modality`.
    pub fn row_len(&self, modality: usize) -> Option<usize> {
        self.data.get(modality).map(|d| d.row_len)
    }

    /// Whether `sample` has `modality` (false for out-of-range arguments).
    pub fn has(&self, modality: usize, sample: usize) -> bool {
        match self.data.get(modality) {
            Some(d) if sample < self.len() => d.index.as_ref().is_none_or(|x| x[sample] >= 0),
            _ => false,
        }
    }

    /// Stored row of `modality` for `sample`: None = missing; else zero-copy from the map.
    /// Rejects non-finite values in the row it reads.
    pub fn row(&self, modality: usize, sample: usize) -> Result<Option<&[f32]>, DataError> {
        let d = self
            .data
            .get(modality)
            .ok_or(DataError::ModalityOutOfRange {
                modality,
                count: self.data.len(),
            })?;
        if sample >= self.len() {
            return Err(DataError::SampleOutOfRange {
                sample,
                len: self.len(),
            });
        }
        let row = match &d.index {
            None => sample,
            Some(x) if x[sample] < 0 => return Ok(None),
            Some(x) => x[sample] as usize,
        };
        debug_assert!(row < d.rows);
        let all = d.data.as_slice::<f32>().unwrap_or_default();
        let values = &all[row * d.row_len..(row + 1) * d.row_len];
        if let Some((element, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(DataError::NonFinite {
                path: d.data.path().to_path_buf(),
                sample,
                row,
                element,
                value,
            });
        }
        Ok(Some(values))
    }
}

fn vector_len(a: &NpyArray) -> Result<usize, DataError> {
    match a.shape() {
        [n] => Ok(*n),
        other => Err(DataError::NpyShape {
            path: a.path().to_path_buf(),
            found: other.to_vec(),
            expected: "a vector [N]".into(),
        }),
    }
}

fn check_len(a: &NpyArray, n: usize, labels_path: &Path) -> Result<(), DataError> {
    let len = vector_len(a)?;
    if len != n {
        return Err(DataError::LengthMismatch {
            path: a.path().to_path_buf(),
            what: "this file".into(),
            found: len,
            reference: labels_path.display().to_string(),
            expected: n,
        });
    }
    Ok(())
}

// The trainer shares one dataset across threads.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Dataset>();
};
