//! The run directory: `config.json`, `metrics.jsonl`, `summary.json`,
//! `best.safetensors`, `last.safetensors`. Every file is replaced atomically,
//! so an interrupted run leaves a directory `--resume` can continue from.

use super::config::TrainConfig;
use super::records::{EpochRecord, Summary};
use super::TrainError;
use crate::checkpoint::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `config.json`: the run's config plus the dataset it trains on (so
/// `--resume RUN_DIR` needs no other flag).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub data: PathBuf,
    #[serde(flatten)]
    pub config: TrainConfig,
}

pub const CONFIG: &str = "config.json";
pub const METRICS: &str = "metrics.jsonl";
pub const SUMMARY: &str = "summary.json";
pub const BEST: &str = "best.safetensors";
pub const LAST: &str = "last.safetensors";
/// The resolved `mla train` flags of the run (written by the CLI).
pub const CONFIG_TOML: &str = "config.toml";
/// The train split's `--missing-rate` mask (`data::MissingMask` as JSON).
pub const MASK: &str = "missing_mask.json";
/// Every file a run writes.
pub const RUN_FILES: [&str; 7] = [CONFIG, CONFIG_TOML, METRICS, SUMMARY, BEST, LAST, MASK];

/// Reads `DIR/config.json`.
pub fn read_config(dir: &Path) -> Result<RunConfig, TrainError> {
    let path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, "read", e))?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::RunDir(format!("{}: not a valid run config: {e}", path.display())))
}

#[derive(Clone, Debug)]
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    /// A new run directory: created if absent; refused if it already holds
    /// any run file (resuming is explicit) unless `overwrite`, which removes
    /// them first. Stale temp files of interrupted writes are removed.
    pub fn create(dir: &Path, overwrite: bool) -> Result<RunDir, TrainError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| TrainError::io(dir, "create the run directory", e))?;
        let rd = RunDir {
            dir: dir.to_path_buf(),
        };
        let held: Vec<&str> = RUN_FILES
            .into_iter()
            .filter(|f| dir.join(f).exists())
            .collect();
        if !held.is_empty() && !overwrite {
            return Err(TrainError::RunDir(format!(
                "{} already holds a run ({} exists); continue it with --resume {}, choose another --out, or pass --overwrite",
                dir.display(),
                held.join(", "),
                dir.display()
            )));
        }
        for f in held {
            let path = dir.join(f);
            std::fs::remove_file(&path).map_err(|e| TrainError::io(&path, "remove", e))?;
        }
        rd.remove_stale_temps()?;
        Ok(rd)
    }

    /// An existing run directory, for `--resume`: it must hold `config.json`
    /// (a run killed before its first checkpoint starts over from it).
    /// Stale temp files of interrupted writes are removed.
    pub fn open(dir: &Path) -> Result<RunDir, TrainError> {
        let rd = Self::open_reading(dir)?;
        rd.remove_stale_temps()?;
        Ok(rd)
    }

    /// As [`RunDir::open`], leaving the directory as it is: for a reader
    /// beside the writer (a data-parallel rank other than 0), whose
    /// in-flight temporary files are not stale.
    pub fn open_reading(dir: &Path) -> Result<RunDir, TrainError> {
        if !dir.is_dir() {
            return Err(TrainError::RunDir(format!(
                "{}: no such run directory",
                dir.display()
            )));
        }
        if !dir.join(CONFIG).is_file() {
            return Err(TrainError::RunDir(format!(
                "{}: no {CONFIG}: not a run directory",
                dir.display()
            )));
        }
        Ok(RunDir {
            dir: dir.to_path_buf(),
        })
    }

    /// Whether a checkpoint to resume from exists (an epoch has finished).
    pub fn has_checkpoint(&self) -> bool {
        self.file(LAST).is_file()
    }

    /// Removes `.NAME.tmp-PID` files of the run's files: what an atomic write
    /// leaves when the process dies between creating and renaming it.
    fn remove_stale_temps(&self) -> Result<(), TrainError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| TrainError::io(&self.dir, "list", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| TrainError::io(&self.dir, "list", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = RUN_FILES
                .iter()
                .any(|f| name.starts_with(&format!(".{f}.tmp-")));
            if stale && entry.file_type().is_ok_and(|t| t.is_file()) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|e| TrainError::io(&path, "remove", e))?;
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads `config.json`.
    pub fn read_config(&self) -> Result<RunConfig, TrainError> {
        read_config(&self.dir)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a text file of the run atomically (temp file, then rename).
    pub fn write_text(&self, name: &str, text: &str) -> Result<(), TrainError> {
        write_atomic(&self.file(name), text.as_bytes())?;
        Ok(())
    }

    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), TrainError> {
        let path = self.file(name);
        let mut text = serde_json::to_string_pretty(value).map_err(|e| {
            TrainError::RunDir(format!("{}: cannot serialise: {e}", path.display()))
        })?;
        text.push('\n');
        write_atomic(&path, text.as_bytes())?;
        Ok(())
    }

    /// Rewrites `metrics.jsonl` from the full history: after a resume it holds
    /// exactly the epochs of the checkpoint, then the new ones.
    pub fn write_metrics(&self, history: &[EpochRecord]) -> Result<(), TrainError> {
        let mut text = String::new();
        for r in history {
            let line = serde_json::to_string(r).map_err(|e| {
                TrainError::RunDir(format!(
                    "{METRICS}: cannot serialise epoch {}: {e}",
                    r.epoch
                ))
            })?;
            text.push_str(&line);
            text.push('\n');
        }
        write_atomic(&self.file(METRICS), text.as_bytes())?;
        Ok(())
    }

    pub fn write_summary(&self, summary: &Summary) -> Result<(), TrainError> {
        self.write_json(SUMMARY, summary)
    }
}
