//! Where a run's numbers come from and what they cost: the mla version and
//! git commit of the build, the backend and CPU, the dataset's identity (a
//! hash of its manifest and file sizes), the parameter count, the peak
//! resident memory and each epoch's training time. Written into every
//! summary.

use crate::data::Dataset;
use crate::model::Model;
use mla_core::Backend;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub mla_version: String,
    /// `git rev-parse HEAD` at build time (`-dirty` with uncommitted
    /// changes to tracked files; "unknown" outside a checkout).
    pub git_commit: String,
    /// `model name` of /proc/cpuinfo ("unknown" elsewhere).
    pub cpu_model: String,
    /// CRC-32 of the manifest bytes and of every file's relative name and
    /// size under the dataset directory, in name order (hex): two runs with the same value read the same files.
    pub dataset_hash: String,
    /// Trainable parameters (batch-norm buffers excluded).
    pub parameters: u64,
}

/// Whether a model tensor is a batch-norm buffer rather than a parameter.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name.ends_with(".num_batches_tracked")
}

impl Provenance {
    pub fn of<B: Backend<f32>>(dataset: &Dataset, model: &Model<B>) -> Provenance {
        let parameters = model
            .params()
            .iter()
            .filter(|(n, _)| !is_buffer(n))
            .map(|(_, t)| t.dims().iter().product::<usize>() as u64)
            .sum();
        Provenance {
            mla_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: env!("MLA_GIT_COMMIT").into(),
            cpu_model: cpu_model(),
            dataset_hash: dataset_hash(dataset.dir()),
            parameters,
        }
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// See [`Provenance::dataset_hash`]. Only metadata and the manifest are read.
pub fn dataset_hash(dir: &std::path::Path) -> String {
    let mut h = crc32fast::Hasher::new();
    if let Ok(m) = std::fs::read(dir.join(crate::data::dataset::MANIFEST)) {
        h.update(&m);
    }
    let mut files = Vec::new();
    list_files(dir, "", 4, &mut files);
    files.sort();
    for (name, len) in files {
        h.update(name.as_bytes());
        h.update(&len.to_le_bytes());
    }
    format!("{:08x}", h.finalize())
}

/// Regular files under `dir` (relative names, `depth` levels of folders).
fn list_files(dir: &std::path::Path, rel: &str, depth: usize, out: &mut Vec<(String, u64)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = format!("{rel}{}", e.file_name().to_string_lossy());
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_file() {
            if let Ok(m) = e.metadata() {
                out.push((name, m.len()));
            }
        } else if ft.is_dir() && depth > 0 {
            list_files(&e.path(), &format!("{name}/"), depth - 1, out);
        }
    }
}

/// Peak resident memory of this process so far (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let t = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = t
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}
