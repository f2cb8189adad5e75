//! Writing a dataset directory so that a crash never leaves a half-written
//! dataset where a reader looks: every file goes into a `*.tmp-*` folder
//! next to the destination, is synced, and the folder is renamed into place
//! last (shared by every `mla prepare` recipe).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::data::dataset::MANIFEST;
use crate::data::error::DataError;

/// `out` may be written: it does not exist, or is an empty directory.
pub fn check_output_free(out: &Path) -> Result<(), DataError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                Err(DataError::OutputExists {
                    path: out.to_path_buf(),
                })
            } else {
                Ok(())
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(DataError::OutputExists {
            path: out.to_path_buf(),
        }),
        Err(e) => Err(DataError::io(out, "inspect", e)),
    }
}

fn sync_path(path: &Path) -> Result<(), DataError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| DataError::io(path, "sync", e))
}

/// A dataset being written: files go to [`Staged::file`], [`Staged::commit`]
/// writes the manifest and moves the folder to its destination. Dropped
/// without a commit (an error on the way), the temporary folder is removed.
pub struct Staged {
    tmp: Option<PathBuf>,
    out: PathBuf,
}

impl Staged {
    pub fn new(out: &Path) -> Result<Staged, DataError> {
        let name = out.file_name().ok_or_else(|| {
            DataError::InvalidArgument(format!(
                "output path {} has no directory name",
                out.display()
            ))
        })?;
        check_output_free(out)?;
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, "create", e))?;
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = parent.join(format!(
            "{}.tmp-{}-{nonce:08x}",
            name.to_string_lossy(),
            std::process::id()
        ));
        std::fs::create_dir(&tmp).map_err(|e| DataError::io(&tmp, "create", e))?;
        Ok(Staged {
            tmp: Some(tmp),
            out: out.to_path_buf(),
        })
    }

    /// Where to write the dataset's file `name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.tmp.as_deref().unwrap_or(Path::new(".")).join(name)
    }

    /// Syncs every file written, writes `manifest`, and renames the folder
    /// to the destination (an empty directory there, checked again now, is
    /// replaced; anything else is kept and reported).
    pub fn commit(mut self, manifest: &Value) -> Result<PathBuf, DataError> {
        let tmp = self.tmp.clone().unwrap_or_default();
        for entry in std::fs::read_dir(&tmp).map_err(|e| DataError::io(&tmp, "list", e))? {
            let entry = entry.map_err(|e| DataError::io(&tmp, "list", e))?;
            sync_path(&entry.path())?;
        }
        let mut text = serde_json::to_string_pretty(manifest)
            .map_err(|e| DataError::Prepare(e.to_string()))?;
        text.push('\n');
        let manifest_path = tmp.join(MANIFEST);
        std::fs::write(&manifest_path, text)
            .map_err(|e| DataError::io(&manifest_path, "write", e))?;
        sync_path(&manifest_path)?;
        sync_path(&tmp)?;
        let out = &self.out;
        check_output_free(out)?;
        if out.is_dir() {
            std::fs::remove_dir(out)
                .map_err(|e| DataError::io(out, "replace the empty directory", e))?;
        }
        std::fs::rename(&tmp, out)
            .map_err(|e| DataError::io(out, "move the prepared dataset into place", e))?;
        self.tmp = None;
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = sync_path(parent);
        }
        Ok(out.clone())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = self.tmp.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}
