//! Checkpoints: named f32 tensors (weights, HGM P, optimizer state) plus JSON
//! documents (config, trainer state) in one safetensors file.
//!
//! Files are written atomically: a temp file in the destination directory,
//! fsync, rename over the destination, fsync of the directory. A crash leaves
//! either the old file or the new one, never a torn one, so `--resume` can
//! always trust `last.safetensors`.

use mla_core::{Backend, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Written into every checkpoint's metadata so foreign safetensors files are recognised.
pub const FORMAT: &str = "mla-checkpoint/1";
const FORMAT_KEY: &str = "format";

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
        let expected: usize = shape.iter().product();
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

    /// Serialises to safetensors bytes (little-endian f32, metadata strings).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let views: Vec<(&str, F32View<'_>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
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
        safetensors::tensor::serialize(views, Some(meta)).map_err(|e| CheckpointError::Malformed {
            path: self.path.clone(),
            msg: e.to_string(),
        })
    }

    /// Parses safetensors bytes; `path` is only used in error messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let malformed = |msg: String| CheckpointError::Malformed {
            path: path.to_path_buf(),
            msg,
        };
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| malformed(e.to_string()))?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| malformed(e.to_string()))?;
        let mut meta: BTreeMap<String, String> = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        match meta.remove(FORMAT_KEY) {
            Some(f) if f == FORMAT => {}
            found => {
                return Err(CheckpointError::Format {
                    path: path.to_path_buf(),
                    found,
                })
            }
        }
        let mut tensors = BTreeMap::new();
        for (name, view) in st.iter() {
            tensors.insert(name.to_string(), stored_from_view(name, &view, path)?);
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            tensors,
            meta,
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            op: "read",
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Writes atomically to `path` (see the module docs).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomic(path, &bytes)
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
    let data = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
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
