//! Checkpoints: named f32 tensors (weights, HGM P, optimizer state) plus JSON
//! documents (config, trainer state) in one safetensors file.
//!
//! Files are written atomically: a temp file in the destination directory,
//! fsync, rename over the destination, fsync of the directory. A crash leaves
//! either the old file or the new one, never a torn one, so `--resume` can
//! always trust `last.safetensors`.
//!
//! Every file carries a CRC-32 of each tensor (its name, dtype, shape and bytes) and of
//! the metadata, verified on load: a bit flipped on disk or in transit is an error naming
//! the file and the damaged part, not a model that silently computes garbage. Format
//! `mla-checkpoint/1` files (written before checksums existed) cannot be verified and are
//! refused with an error saying so. Non-finite weights are refused on load too.

use mla_core::{Backend, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Written into every checkpoint's metadata so foreign safetensors files are recognised.
/// Version 2 added the checksums.
pub const FORMAT: &str = "mla-checkpoint/2";
/// The format before checksums: recognised only to say why it is refused.
const FORMAT_UNCHECKED: &str = "mla-checkpoint/1";
const FORMAT_KEY: &str = "format";
/// Metadata entry holding the checksums (JSON, see [`Checksums`]).
pub const CHECKSUM_KEY: &str = "mla.checksums";
const CHECKSUM_ALGORITHM: &str = "crc32";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {op} failed: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: not a valid safetensors file: {msg}")]
    Malformed { path: PathBuf, msg: String },
    #[error("checkpoint {path}: format is {found:?}, expected {FORMAT:?} (not written by mla?)")]
    Format {
        path: PathBuf,
        found: Option<String>,
    },
    #[error("checkpoint {path}: format {FORMAT_UNCHECKED:?} has no checksums, so its contents cannot be verified; it was written by an older mla: retrain, or resume and evaluate it with that version")]
    Unverifiable { path: PathBuf },
    #[error("checkpoint {path}: corrupt: {what} (the file changed after it was written)")]
    Corrupt { path: PathBuf, what: String },
    #[error("checkpoint {path}: tensor `{name}` holds the non-finite value {value} at element {index}; the weights are unusable (did training diverge?)")]
    NonFinite {
        path: PathBuf,
        name: String,
        index: usize,
        value: f32,
    },
    #[error("checkpoint {path}: {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("checkpoint {path}: cannot allocate {bytes} bytes to read it")]
    OutOfMemory { path: PathBuf, bytes: u64 },
    #[error("checkpoint {path}: tensor `{name}` has dtype {dtype}, expected F32")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("checkpoint {path}: missing tensor `{name}`")]
    Missing { path: PathBuf, name: String },
    #[error("checkpoint {path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error(
        "checkpoint {path}: unexpected tensors {names:?} (written by a different model or method?)"
    )]
    Unexpected { path: PathBuf, names: Vec<String> },
    #[error("checkpoint {path}: metadata `{key}` is missing")]
    MissingMeta { path: PathBuf, key: String },
    #[error("checkpoint {path}: metadata `{key}` is not valid: {msg}")]
    BadMeta {
        path: PathBuf,
        key: String,
        msg: String,
    },
    #[error("checkpoint: tensor `{name}` has {len} values but shape {shape:?} holds {expected}")]
    Length {
        name: String,
        len: usize,
        shape: Vec<usize>,
        expected: usize,
    },
    #[error("checkpoint: reading tensor `{name}` from the backend failed: {source}")]
    Backend {
        name: String,
        source: mla_core::Error,
    },
}

pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// One stored tensor, on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl StoredTensor {
    /// Uploads to a backend.
    pub fn to_tensor<B: Backend<f32>>(&self, backend: &B) -> mla_core::Result<Tensor<f32, B>> {
        Tensor::from_slice(backend, &self.data, self.shape.clone())
    }
}

/// An in-memory checkpoint: tensors by name and JSON documents by key.
/// `path` names where it came from (or goes), for error messages.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    path: PathBuf,
    tensors: BTreeMap<String, StoredTensor>,
    meta: BTreeMap<String, String>,
}

struct F32View<'a> {
    shape: &'a [usize],
    bytes: Vec<u8>,
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The checksums of a file: CRC-32 (hex) of the metadata and of each tensor.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Checksums {
    algorithm: String,
    metadata: String,
    tensors: BTreeMap<String, String>,
}

fn hex(crc: u32) -> String {
    format!("{crc:08x}")
}

/// CRC-32 of every metadata entry but the checksums, in key order, each key and value
/// length-prefixed so that moving bytes between entries changes the sum.
fn metadata_crc<'a>(entries: impl Iterator<Item = (&'a str, &'a str)>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut sorted: Vec<(&str, &str)> = entries.filter(|(k, _)| *k != CHECKSUM_KEY).collect();
    sorted.sort_unstable();
    for (k, v) in sorted {
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.finalize()
}

/// CRC-32 of a tensor's name, dtype, shape and little-endian bytes: a flip in the header
/// that renames or reshapes a tensor is caught like one in its data.
fn tensor_crc(name: &str, shape: &[usize], bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(b"F32");
    h.update(&(shape.len() as u64).to_le_bytes());
    for &d in shape {
        h.update(&(d as u64).to_le_bytes());
    }
    h.update(bytes);
    h.finalize()
}

impl Checkpoint {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn insert(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> Result<()> {
        let name = name.into();
        let expected = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        if expected != data.len() {
            return Err(CheckpointError::Length {
                name,
                len: data.len(),
                shape,
                expected,
            });
        }
        self.tensors.insert(name, StoredTensor { shape, data });
        Ok(())
    }

    /// Reads a backend tensor to the host and stores it.
    pub fn insert_tensor<B: Backend<f32>>(
        &mut self,
        name: impl Into<String>,
        t: &Tensor<f32, B>,
    ) -> Result<()> {
        let name = name.into();
        let data = t.to_vec().map_err(|source| CheckpointError::Backend {
            name: name.clone(),
            source,
        })?;
        self.insert(name, t.dims().to_vec(), data)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Result<&StoredTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| CheckpointError::Missing {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    /// The tensor `name`, checked to have exactly `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&StoredTensor> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(CheckpointError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                found: t.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(t)
    }

    /// Fails if the checkpoint holds a tensor outside `known` (e.g. a joint
    /// checkpoint loaded as MLA): silently ignoring weights hides mistakes.
    pub fn reject_unknown<'a>(&self, known: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let known: std::collections::HashSet<&str> = known.into_iter().collect();
        let names: Vec<String> = self
            .names()
            .filter(|n| !known.contains(n))
            .map(str::to_string)
            .collect();
        if names.is_empty() {
            Ok(())
        } else {
            Err(CheckpointError::Unexpected {
                path: self.path.clone(),
                names,
            })
        }
    }

    pub fn set_json<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        if key == FORMAT_KEY || key == CHECKSUM_KEY {
            return Err(CheckpointError::BadMeta {
                path: self.path.clone(),
                key: key.to_string(),
                msg: "the key is reserved for the file format".into(),
            });
        }
        let s = serde_json::to_string(value).map_err(|e| CheckpointError::BadMeta {
            path: self.path.clone(),
            key: key.to_string(),
            msg: e.to_string(),
        })?;
        self.meta.insert(key.to_string(), s);
        Ok(())
    }

    pub fn json<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        let s = self
            .meta
            .get(key)
            .ok_or_else(|| CheckpointError::MissingMeta {
                path: self.path.clone(),
                key: key.to_string(),
            })?;
        serde_json::from_str(s).map_err(|e| CheckpointError::BadMeta {
            path: self.path.clone(),
            key: key.to_string(),
            msg: e.to_string(),
        })
    }

    pub fn has_json(&self, key: &str) -> bool {
        self.meta.contains_key(key)
    }

    /// Serialises to safetensors bytes (little-endian f32, metadata strings, checksums).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut sums = Checksums {
            algorithm: CHECKSUM_ALGORITHM.into(),
            ..Checksums::default()
        };
        let views: Vec<(&str, F32View<'_>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                sums.tensors
                    .insert(name.clone(), hex(tensor_crc(name, &t.shape, &bytes)));
                (
                    name.as_str(),
                    F32View {
                        shape: &t.shape,
                        bytes,
                    },
                )
            })
            .collect();
        let mut meta: HashMap<String, String> = self
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        meta.insert(FORMAT_KEY.to_string(), FORMAT.to_string());
        sums.metadata = hex(metadata_crc(
            meta.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ));
        let sums = serde_json::to_string(&sums).map_err(|e| CheckpointError::BadMeta {
            path: self.path.clone(),
            key: CHECKSUM_KEY.into(),
            msg: e.to_string(),
        })?;
        meta.insert(CHECKSUM_KEY.to_string(), sums);
        safetensors::tensor::serialize(views, Some(meta)).map_err(|e| CheckpointError::Malformed {
            path: self.path.clone(),
            msg: e.to_string(),
        })
    }

    /// Parses safetensors bytes, verifying the checksums and that every value is finite;
    /// `path` is only used in error messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let malformed = |msg: String| CheckpointError::Malformed {
            path: path.to_path_buf(),
            msg,
        };
        let (n, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| malformed(e.to_string()))?;
        // The JSON header is padded with spaces; a parser also skips tabs and newlines
        // there, which would let a damaged padding byte through unnoticed.
        let text = &bytes[8..8 + n];
        if text.iter().rposition(|&b| b != b' ').map(|i| text[i]) != Some(b'}') {
            return Err(malformed(
                "the header is followed by bytes other than space padding".into(),
            ));
        }
        let st = SafeTensors::deserialize(bytes).map_err(|e| malformed(e.to_string()))?;
        let mut meta: BTreeMap<String, String> = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let corrupt = |what: String| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            what,
        };
        match meta.get(FORMAT_KEY) {
            Some(f) if f == FORMAT => {}
            Some(f) if f == FORMAT_UNCHECKED => {
                return Err(CheckpointError::Unverifiable {
                    path: path.to_path_buf(),
                })
            }
            found => {
                return Err(CheckpointError::Format {
                    path: path.to_path_buf(),
                    found: found.cloned(),
                })
            }
        }
        let sums = meta
            .get(CHECKSUM_KEY)
            .ok_or_else(|| corrupt(format!("metadata `{CHECKSUM_KEY}` is missing")))?;
        let sums: Checksums = serde_json::from_str(sums)
            .map_err(|e| corrupt(format!("metadata `{CHECKSUM_KEY}` is not valid: {e}")))?;
        if sums.algorithm != CHECKSUM_ALGORITHM {
            return Err(corrupt(format!(
                "checksum algorithm {:?}, expected {CHECKSUM_ALGORITHM:?}",
                sums.algorithm
            )));
        }
        if hex(metadata_crc(
            meta.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )) != sums.metadata
        {
            return Err(corrupt("the metadata does not match its checksum".into()));
        }
        meta.remove(FORMAT_KEY);
        meta.remove(CHECKSUM_KEY);
        if let Some(name) = sums.tensors.keys().find(|n| st.tensor(n).is_err()) {
            return Err(corrupt(format!(
                "tensor `{name}` has a checksum but is not in the file"
            )));
        }
        let mut tensors = BTreeMap::new();
        for (name, view) in st.iter() {
            let sum = sums
                .tensors
                .get(name)
                .ok_or_else(|| corrupt(format!("tensor `{name}` has no checksum")))?;
            let t = stored_from_view(name, &view, path)?;
            if hex(tensor_crc(name, &t.shape, view.data())) != *sum {
                return Err(corrupt(format!(
                    "tensor `{name}` does not match its checksum"
                )));
            }
            check_finite(name, &t, path)?;
            tensors.insert(name.to_string(), t);
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            tensors,
            meta,
        })
    }

    /// Reads and verifies `path`; only a regular file is read (a FIFO would block, a
    /// device never end), into memory allocated fallibly.
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_bytes(&read_regular(path)?, path)
    }

    /// Writes atomically to `path` (see the module docs).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomic(path, &bytes)
    }
}

/// The bytes of the regular file `path`, read into memory allocated fallibly (never
/// more than the length checked first, should the file grow meanwhile).
fn read_regular(path: &Path) -> Result<Vec<u8>> {
    use crate::data::DataError;
    use std::io::Read;
    let io = |op: &'static str, source: std::io::Error| CheckpointError::Io {
        path: path.to_path_buf(),
        op,
        source,
    };
    let (file, len) = crate::data::files::open_regular(path).map_err(|e| match e {
        DataError::NotRegularFile { kind, .. } => CheckpointError::NotRegular {
            path: path.to_path_buf(),
            kind,
        },
        DataError::MissingFile { .. } => io("read", std::io::ErrorKind::NotFound.into()),
        DataError::Io { action, source, .. } => io(action, source),
        other => io("read", std::io::Error::other(other.to_string())),
    })?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX))
        .map_err(|_| CheckpointError::OutOfMemory {
            path: path.to_path_buf(),
            bytes: len,
        })?;
    file.take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| io("read", e))?;
    Ok(bytes)
}

/// The f32 tensors of a plain safetensors file, such as PyTorch's
/// `safetensors.torch.save_file(model.state_dict(), path)` writes (no mla
/// metadata or checksums), in file order; every value must be finite.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, StoredTensor)>> {
    let bytes = read_regular(path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Malformed {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (name, view) in st.iter() {
        let t = stored_from_view(name, &view, path)?;
        check_finite(name, &t, path)?;
        out.push((name.to_string(), t));
    }
    Ok(out)
}

/// Refuses a tensor holding a NaN or an infinity, naming the first.
fn check_finite(name: &str, t: &StoredTensor, path: &Path) -> Result<()> {
    match t.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((index, &value)) => Err(CheckpointError::NonFinite {
            path: path.to_path_buf(),
            name: name.to_string(),
            index,
            value,
        }),
        None => Ok(()),
    }
}

fn stored_from_view(name: &str, view: &TensorView<'_>, path: &Path) -> Result<StoredTensor> {
    if view.dtype() != Dtype::F32 {
        return Err(CheckpointError::Dtype {
            path: path.to_path_buf(),
            name: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        });
    }
    let mut data = Vec::new();
    data.try_reserve_exact(view.data().len() / 4)
        .map_err(|_| CheckpointError::OutOfMemory {
            path: path.to_path_buf(),
            bytes: view.data().len() as u64,
        })?;
    data.extend(
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
    Ok(StoredTensor {
        shape: view.shape().to_vec(),
        data,
    })
}

/// Temp file next to `path`, fsync, rename, fsync the directory. On any
/// failure the temp file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |op: &'static str| {
        move |source| CheckpointError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| CheckpointError::Io {
            path: path.to_path_buf(),
            op: "write",
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path has no file name",
            ),
        })?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io("create temp file"))?;
        f.write_all(bytes).map_err(io("write"))?;
        f.sync_all().map_err(io("fsync"))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io("rename"))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    // Make the rename itself durable. Some filesystems refuse to fsync a
    // directory; the data is already safe in the file then, so not an error.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
