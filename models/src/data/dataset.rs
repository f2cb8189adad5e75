//! The `mla-dataset/1` reader: a JSON manifest plus memory-mapped `.npy` files. Everything
//! that can be checked once (shapes, dtypes, labels, splits, index ranges, every sample
//! having a modality) is checked at open; finiteness is checked per row as rows are read.
//!
//! Every size a file declares is checked, with overflow-safe arithmetic, against what the
//! files hold and against the limits below before anything is allocated from it; every
//! file is opened only if it is a regular file inside the dataset directory.

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::error::DataError;
use super::files::{self, MAX_MANIFEST_BYTES};
use super::npy::{DType, NpyArray};

pub const FORMAT: &str = "mla-dataset/1";
pub const MANIFEST: &str = "dataset.json";

/// Largest `num_classes`: the head and every per-class buffer are sized by it, so a typo
/// like 4294967295 must not reach an allocation. ImageNet-21k has 21,841 classes.
pub const MAX_CLASSES: usize = 1 << 16;
/// Most values in one row of a modality (the product of its input shape): 2^24 f32 values
/// are 64 MiB per sample. Encoders are sized by it, so it must be bounded even when the
/// data file has no rows at all (shape (0, huge, huge) holds zero bytes).
pub const MAX_ROW_VALUES: usize = 1 << 24;
/// Most modalities in one dataset (each has its own encoder and memory map).
pub const MAX_MODALITIES: usize = 256;
/// Longest modality name, in bytes (names become parameter and file names).
pub const MAX_MODALITY_NAME: usize = 64;

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

/// One row of a modality as [`Dataset::row`] returns it: borrowed from the memory map when
/// the file's data is aligned (every file numpy writes), else copied out of the map (only
/// this row, never the file). Derefs to `[f32]` and compares with slices and vectors.
#[derive(Clone)]
pub enum Row<'a> {
    Mapped(&'a [f32]),
    Copied(Vec<f32>),
}

impl std::ops::Deref for Row<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Row::Mapped(s) => s,
            Row::Copied(v) => v,
        }
    }
}

impl AsRef<[f32]> for Row<'_> {
    fn as_ref(&self) -> &[f32] {
        self
    }
}

impl fmt::Debug for Row<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq for Row<'_> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}
impl PartialEq<[f32]> for Row<'_> {
    fn eq(&self, other: &[f32]) -> bool {
        **self == *other
    }
}
impl PartialEq<&[f32]> for Row<'_> {
    fn eq(&self, other: &&[f32]) -> bool {
        **self == **other
    }
}
impl PartialEq<Vec<f32>> for Row<'_> {
    fn eq(&self, other: &Vec<f32>) -> bool {
        **self == **other
    }
}
impl PartialEq<Row<'_>> for [f32] {
    fn eq(&self, other: &Row<'_>) -> bool {
        *self == **other
    }
}
impl PartialEq<Row<'_>> for &[f32] {
    fn eq(&self, other: &Row<'_>) -> bool {
        **self == **other
    }
}
impl PartialEq<Row<'_>> for Vec<f32> {
    fn eq(&self, other: &Row<'_>) -> bool {
        **self == **other
    }
}

#[derive(Clone, Debug)]
struct ModalityData {
    /// Shared: a dataset with a missing-modality mask on top ([`Dataset::with_hidden`])
    /// maps the same file.
    data: Arc<NpyArray>,
    rows: usize,
    row_len: usize,
    /// Row of `data` per sample (-1 = missing); None = row i belongs to sample i.
    index: Option<Vec<i64>>,
}

#[derive(Clone, Debug)]
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

    /// A file path from the manifest, resolved inside `dir` (canonical form `root`):
    /// anything that could leave the directory (absolute paths, `..`, a symbolic link
    /// pointing outside) is rejected. Returns (the path as written, the resolved path).
    fn file(
        &self,
        dir: &Path,
        root: &Path,
        obj: &Value,
        field: &str,
        what: &str,
    ) -> Result<(PathBuf, PathBuf), DataError> {
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
        let joined = dir.join(rel);
        let real = files::resolve_inside(root, &joined, self.path, &format!("{what}.{field}"))?;
        Ok((joined, real))
    }
}

impl Dataset {
    pub fn open(dir: impl AsRef<Path>) -> Result<Dataset, DataError> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join(MANIFEST);
        // Symbolic links are resolved against the directory's own canonical form, so a
        // dataset reached through a link to its directory is fine.
        let root =
            std::fs::canonicalize(&dir).map_err(|e| DataError::io(&manifest_path, "read", e))?;
        let manifest_real = files::resolve_inside(&root, &manifest_path, &manifest_path, MANIFEST)?;
        let text = files::read_regular(&manifest_real, MAX_MANIFEST_BYTES, "manifest")
            .map_err(|e| e.renamed(&manifest_real, &manifest_path))?;
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
            Some(c) if c >= 1 && c <= MAX_CLASSES as u64 => c as usize,
            Some(c) if c > MAX_CLASSES as u64 => {
                return Err(m.err(format!(
                    "field \"num_classes\" is {c}, more than the limit of {MAX_CLASSES}"
                )))
            }
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

        let (labels_path, labels_real) = m.file(&dir, &root, &manifest, "labels", "dataset")?;
        let labels_raw = NpyArray::open_as(&labels_real, &labels_path, DType::I64)?;
        let n = vector_len(&labels_raw)?;
        // n is backed by 8n bytes of the file; the allocation is still fallible.
        let mut labels = Vec::new();
        files::try_reserve(&mut labels, n, &labels_path, "labels")?;
        for (i, y) in labels_raw.iter::<i64>().into_iter().flatten().enumerate() {
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

        let (split_path, split_real) = m.file(&dir, &root, &manifest, "split", "dataset")?;
        let split_raw = NpyArray::open_as(&split_real, &split_path, DType::U8)?;
        check_len(&split_raw, n, &labels_path)?;
        let mut split = Vec::new();
        files::try_reserve(&mut split, n, &split_path, "splits")?;
        for (i, s) in split_raw.iter::<u8>().into_iter().flatten().enumerate() {
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
        if entries.len() > MAX_MODALITIES {
            return Err(m.err(format!(
                "{} modalities, more than the limit of {MAX_MODALITIES}",
                entries.len()
            )));
        }
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
            let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
            if mname.len() > MAX_MODALITY_NAME || !mname.chars().all(name_ok) {
                return Err(m.err(format!(
                    "{what}: name {mname:?} must be at most {MAX_MODALITY_NAME} ASCII letters, digits, '_' or '-'"
                )));
            }
            if !seen.insert(mname.clone()) {
                return Err(m.err(format!("modality name {mname:?} appears twice")));
            }
            let what = format!("modality {mname:?}");
            let (data_path, data_real) = m.file(&dir, &root, entry, "data", &what)?;
            let arr = NpyArray::open_as(&data_real, &data_path, DType::F32)?;
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
            // With zero rows the file holds nothing whatever the other dimensions say, so
            // their product is checked here, not by the file size.
            let row_len = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .filter(|&l| l <= MAX_ROW_VALUES);
            let Some(row_len) = row_len else {
                return Err(DataError::NpyShape {
                    path: data_path,
                    found: arr.shape().to_vec(),
                    expected: format!(
                        "rows of at most {MAX_ROW_VALUES} values (the product of the dimensions after the first)"
                    ),
                });
            };
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
                    let (index_path, index_real) = m.file(&dir, &root, entry, "index", &what)?;
                    let idx = NpyArray::open_as(&index_real, &index_path, DType::I64)?;
                    check_len(&idx, n, &labels_path)?;
                    let values = idx.to_vec::<i64>()?;
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
                data: Arc::new(arr),
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

    /// The data file and stored row of `modality` for `sample` (None = missing).
    fn locate(
        &self,
        modality: usize,
        sample: usize,
    ) -> Result<Option<(&ModalityData, usize)>, DataError> {
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
        Ok(Some((d, row)))
    }

    /// Stored row of `modality` for `sample`: None = missing; else zero-copy from the map
    /// when the file's data is aligned, a copy of this one row otherwise.
    /// Rejects non-finite values in the row it reads.
    pub fn row(&self, modality: usize, sample: usize) -> Result<Option<Row<'_>>, DataError> {
        let Some((d, row)) = self.locate(modality, sample)? else {
            return Ok(None);
        };
        let values = match d.data.as_slice::<f32>() {
            Some(all) => Row::Mapped(&all[row * d.row_len..(row + 1) * d.row_len]),
            None => {
                let mut v = Vec::new();
                d.data.read_into(row * d.row_len, d.row_len, &mut v)?;
                Row::Copied(v)
            }
        };
        check_finite(d, sample, row, &values)?;
        Ok(Some(values))
    }

    /// Appends the stored row of `modality` for `sample` to `out` (one copy from the map,
    /// at any alignment) and returns true; returns false, appending nothing, when the
    /// sample lacks the modality. Rejects non-finite values, leaving `out` as it was.
    pub fn read_row_into(
        &self,
        modality: usize,
        sample: usize,
        out: &mut Vec<f32>,
    ) -> Result<bool, DataError> {
        let Some((d, row)) = self.locate(modality, sample)? else {
            return Ok(false);
        };
        let start = out.len();
        d.data.read_into(row * d.row_len, d.row_len, out)?;
        if let Err(e) = check_finite(d, sample, row, &out[start..]) {
            out.truncate(start);
            return Err(e);
        }
        Ok(true)
    }
}

impl Dataset {
    /// This dataset with `hidden[m]` (sample ids) missing modality `m` on top of what it
    /// already lacks: the files stay shared, only the sample-to-row index changes, so
    /// every reader (loader, `has`, `row`) sees the mask. Refused when an id is out of
    /// range or a sample would be left with no modality at all.
    pub fn with_hidden(&self, hidden: &[Vec<usize>]) -> Result<Dataset, DataError> {
        if hidden.len() != self.data.len() {
            return Err(DataError::InvalidArgument(format!(
                "a missing-modality mask for {} modalities on a dataset with {}",
                hidden.len(),
                self.data.len()
            )));
        }
        let mut out = self.clone();
        let n = self.len();
        for (d, ids) in out.data.iter_mut().zip(hidden) {
            if ids.is_empty() {
                continue;
            }
            let index = d.index.get_or_insert_with(|| (0..n as i64).collect());
            for &s in ids {
                if s >= n {
                    return Err(DataError::SampleOutOfRange { sample: s, len: n });
                }
                index[s] = -1;
            }
        }
        if let Some(s) = hidden
            .iter()
            .flatten()
            .find(|&&s| (0..out.data.len()).all(|m| !out.has(m, s)))
        {
            return Err(DataError::InvalidArgument(format!(
                "the missing-modality mask leaves sample {s} with no modality"
            )));
        }
        Ok(out)
    }
}

fn check_finite(
    d: &ModalityData,
    sample: usize,
    row: usize,
    values: &[f32],
) -> Result<(), DataError> {
    match values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((element, &value)) => Err(DataError::NonFinite {
            path: d.data.path().to_path_buf(),
            sample,
            row,
            element,
            value,
        }),
        None => Ok(()),
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
