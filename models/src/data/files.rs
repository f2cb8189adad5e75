//! Opening input files without trusting them: only regular files are opened (a FIFO would
//! block `open()` forever, `/dev/zero` would be read until memory runs out), files named
//! by a dataset manifest must stay inside the dataset directory after every symbolic link
//! is resolved, and whole-file reads are bounded by a limit and allocated fallibly.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::DataError;

/// Largest `dataset.json` read (the manifest is a few hundred bytes in practice; even a
/// million class names fit).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// What kind of non-regular file `meta` describes, for the error message.
fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// Opens `path` for reading if it is a regular file, following symbolic links; returns the
/// file and its length. The type is checked before opening (so a FIFO is never opened) and
/// again on the open file, which is opened non-blocking so that a file swapped for a FIFO
/// in between cannot make `open()` hang either.
pub fn open_regular(path: &Path) -> Result<(File, u64), DataError> {
    let not_regular = |meta: &Metadata| DataError::NotRegularFile {
        path: path.to_path_buf(),
        kind: kind_of(meta),
    };
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, "inspect", e))?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let mut opts = OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK has no effect on reads of regular files, which is all we keep open.
        opts.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = opts
        .open(path)
        .map_err(|e| DataError::io(path, "open", e))?;
    let meta = file
        .metadata()
        .map_err(|e| DataError::io(path, "read metadata of", e))?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok((file, meta.len()))
}

/// Reads the whole regular file `path`, refusing files longer than `limit` bytes before
/// anything is allocated. `what` names the file's role in the error ("WAV file", ...).
pub fn read_regular(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, DataError> {
    let (file, len) = open_regular(path)?;
    let too_large = |size: u64| DataError::TooLarge {
        path: path.to_path_buf(),
        what,
        size,
        limit,
    };
    if len > limit {
        return Err(too_large(len));
    }
    let mut bytes = Vec::new();
    try_reserve(&mut bytes, len as usize, path, what)?;
    // The file may grow after the metadata was read: never read past the limit.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io(path, "read", e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// `v.try_reserve_exact(n)` with an error naming the file instead of an abort.
pub fn try_reserve<T>(
    v: &mut Vec<T>,
    n: usize,
    path: &Path,
    what: &'static str,
) -> Result<(), DataError> {
    v.try_reserve_exact(n).map_err(|_| DataError::OutOfMemory {
        path: path.to_path_buf(),
        what,
        bytes: (n as u128 * std::mem::size_of::<T>() as u128).min(u64::MAX as u128) as u64,
    })
}

/// The file `rel` (a manifest entry already checked to be relative, without `..`) of the
/// dataset directory whose canonical form is `root`: resolves every symbolic link and
/// refuses a target outside `root`. Returns the canonical path, which is what gets opened.
pub fn resolve_inside(
    root: &Path,
    joined: &Path,
    manifest: &Path,
    field: &str,
) -> Result<PathBuf, DataError> {
    let real = std::fs::canonicalize(joined).map_err(|e| DataError::io(joined, "resolve", e))?;
    if !real.starts_with(root) {
        return Err(DataError::SymlinkEscapes {
            path: manifest.to_path_buf(),
            field: field.to_string(),
            target: real,
        });
    }
    Ok(real)
}
