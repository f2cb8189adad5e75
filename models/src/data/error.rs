//! Every way a dataset, a raw source or a preparation can be wrong, each naming the file
//! and the problem, so a user can fix the input without reading our code.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("{}: file not found", path.display())]
    MissingFile { path: PathBuf },

    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },

    #[error("{}: not valid JSON: {problem}", path.display())]
    ManifestJson { path: PathBuf, problem: String },

    #[error("{}: unknown format {found}; expected \"mla-dataset/1\"", path.display())]
    UnknownFormat { path: PathBuf, found: String },

    #[error("{}: {problem}", path.display())]
    Manifest { path: PathBuf, problem: String },

    #[error("{}: {field} = {entry:?} leaves the dataset directory (use a relative path inside it)", path.display())]
    PathEscapes {
        path: PathBuf,
        field: String,
        entry: String,
    },

    #[error("{}: {kind}, not a regular file; only regular files are read", path.display())]
    NotRegularFile { path: PathBuf, kind: &'static str },

    #[error("{}: {field} resolves to {} outside the dataset directory (symbolic links may not leave it)", path.display(), target.display())]
    SymlinkEscapes {
        path: PathBuf,
        field: String,
        target: PathBuf,
    },

    #[error("{}: {what} of {size} bytes is larger than the limit of {limit} bytes", path.display())]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        size: u64,
        limit: u64,
    },

    #[error("{}: cannot allocate {bytes} bytes for the {what}", path.display())]
    OutOfMemory {
        path: PathBuf,
        what: &'static str,
        bytes: u64,
    },

    #[error("{}: cannot parse .npy header: {problem}", path.display())]
    NpyHeader { path: PathBuf, problem: String },

    #[error("{}: byte order of dtype {descr:?} is not little-endian", path.display())]
    NpyByteOrder { path: PathBuf, descr: String },

    #[error("{}: dtype {found:?} where {expected} is required", path.display())]
    NpyDtype {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },

    #[error("{}: Fortran (column-major) order is not supported; save the array in C order", path.display())]
    NpyFortranOrder { path: PathBuf },

    #[error("{}: file is shorter than its header promises: shape {shape:?} needs {needed} bytes after the header, found {found}", path.display())]
    NpyTruncated {
        path: PathBuf,
        shape: Vec<usize>,
        needed: u64,
        found: u64,
    },

    #[error("{}: shape {found:?}, expected {expected}", path.display())]
    NpyShape {
        path: PathBuf,
        found: Vec<usize>,
        expected: String,
    },

    #[error("{}: sample {sample} has label {value}, outside [0, {num_classes})", path.display())]
    LabelOutOfRange {
        path: PathBuf,
        sample: usize,
        value: i64,
        num_classes: usize,
    },

    #[error("{}: sample {sample} has split value {value}; allowed are 0 (train), 1 (validation), 2 (test)", path.display())]
    InvalidSplit {
        path: PathBuf,
        sample: usize,
        value: u8,
    },

    #[error("{}: sample {sample} has index {value}, outside [-1, {rows}) (the data file has {rows} rows)", path.display())]
    IndexOutOfRange {
        path: PathBuf,
        sample: usize,
        value: i64,
        rows: usize,
    },

    #[error("{}: {what} has length {found}, but {reference} has {expected}", path.display())]
    LengthMismatch {
        path: PathBuf,
        what: String,
        found: usize,
        reference: String,
        expected: usize,
    },

    #[error("{}: sample {sample} has every modality missing (index -1 in all index files)", path.display())]
    AllModalitiesMissing { path: PathBuf, sample: usize },

    #[error("{}: non-finite value {value} in row {row} (sample {sample}), element {element}", path.display())]
    NonFinite {
        path: PathBuf,
        sample: usize,
        row: usize,
        element: usize,
        value: f32,
    },

    #[error("sample {sample} out of range: the dataset has {len} samples")]
    SampleOutOfRange { sample: usize, len: usize },

    #[error("modality {modality} out of range: the dataset has {count} modalities")]
    ModalityOutOfRange { modality: usize, count: usize },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("{}: IDX file: {problem}", path.display())]
    Idx { path: PathBuf, problem: String },

    #[error("{}: WAV file: {problem}", path.display())]
    Wav { path: PathBuf, problem: String },

    #[error("{}: {problem}", path.display())]
    RawSource { path: PathBuf, problem: String },

    #[error("{}: output directory already exists and is not empty; remove it or choose another --out", path.display())]
    OutputExists { path: PathBuf },

    #[error("data loader: {0}")]
    Loader(String),

    #[error("preparation: {0}")]
    Prepare(String),
}

impl DataError {
    /// The same error naming `to` where it named `from`: files are opened by their
    /// resolved path but reported by the path the user wrote.
    pub(crate) fn renamed(mut self, from: &std::path::Path, to: &std::path::Path) -> Self {
        if let DataError::MissingFile { path }
        | DataError::Io { path, .. }
        | DataError::NotRegularFile { path, .. }
        | DataError::TooLarge { path, .. }
        | DataError::OutOfMemory { path, .. } = &mut self
        {
            if path == from {
                *path = to.to_path_buf();
            }
        }
        self
    }

    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingFile { path }
        } else {
            DataError::Io {
                path,
                action,
                source,
            }
        }
    }
}
