//! Helpers shared by the data_* test files: temporary directories and dataset fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use mla_models::data::npy::{encode_header, write_npy};
use serde_json::{json, Value};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p =
            std::env::temp_dir().join(format!("mla-test-{tag}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a file with an arbitrary header and raw data bytes (for malformed fixtures).
pub fn write_raw_npy(path: &Path, descr: &str, fortran: bool, shape: &[usize], data: &[u8]) {
    let mut bytes = encode_header(descr, fortran, shape);
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// The fixture: N = 6 samples, 3 classes; modality "a" ([2, 3] rows, R = 4, with an index,
/// samples 2 and 5 missing it), modality "b" ([5] rows, no index, R = N).
pub const N: usize = 6;
pub const LABELS: [i64; N] = [0, 1, 2, 1, 0, 2];
pub const SPLIT: [u8; N] = [0, 0, 1, 2, 0, 2];
pub const A_INDEX: [i64; N] = [3, 0, -1, 1, 3, -1];

pub fn a_rows() -> Vec<f32> {
    (0..4 * 6).map(|i| i as f32 * 0.5 - 3.0).collect()
}
pub fn b_rows() -> Vec<f32> {
    (0..N * 5).map(|i| (i as f32).sin()).collect()
}

pub fn manifest() -> Value {
    json!({
        "format": "mla-dataset/1",
        "name": "fixture",
        "num_classes": 3,
        "class_names": ["zero", "one", "two"],
        "labels": "labels.npy",
        "split": "split.npy",
        "modalities": [
            {"name": "a", "data": "a.npy", "index": "a_index.npy"},
            {"name": "b", "data": "b.npy"}
        ],
        "recipe": {"made_by": "test"}
    })
}

pub fn write_manifest(dir: &Path, m: &Value) {
    std::fs::write(
        dir.join("dataset.json"),
        serde_json::to_vec_pretty(m).unwrap(),
    )
    .unwrap();
}

/// Writes the valid fixture into `dir`.
pub fn write_fixture(dir: &Path) {
    write_npy(dir.join("labels.npy"), &[N], &LABELS).unwrap();
    write_npy(dir.join("split.npy"), &[N], &SPLIT).unwrap();
    write_npy(dir.join("a.npy"), &[4, 2, 3], &a_rows()).unwrap();
    write_npy(dir.join("a_index.npy"), &[N], &A_INDEX).unwrap();
    write_npy(dir.join("b.npy"), &[N, 5], &b_rows()).unwrap();
    write_manifest(dir, &manifest());
}

/// Raw f32 little-endian bytes.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
pub fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The raw AV-MNIST folder: MLA_AVMNIST_RAW, else ../shared/data/avmnist from
/// the workspace root. Absent, the test is skipped with a message, except
/// under CI=true, where the data is part of the checkout and a missing folder
/// must fail the suite rather than pass it silently.
pub fn avmnist_raw() -> Option<PathBuf> {
    let p = match std::env::var_os("MLA_AVMNIST_RAW") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/avmnist"),
    };
    if p.join("mnist").is_dir() && p.join("fsdd").is_dir() {
        Some(p)
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "raw AV-MNIST not found at {} under CI=true (set MLA_AVMNIST_RAW)",
            p.display()
        );
    } else {
        eprintln!(
            "SKIPPED: raw AV-MNIST not found at {} (set MLA_AVMNIST_RAW)",
            p.display()
        );
        None
    }
}

/// An IDX file of unsigned bytes, written independently of the library's parser.
pub fn idx_bytes(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        v.extend_from_slice(&(d as u32).to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A mono 16-bit PCM WAV file with an extra odd-sized chunk before the data, written
/// independently of the library's encoder.
pub fn wav_bytes(rate: u32, samples: &[i16]) -> Vec<u8> {
    let mut body = b"WAVEfmt ".to_vec();
    body.extend_from_slice(&16u32.to_le_bytes());
    for v in [1u16, 1] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(&rate.to_le_bytes());
    body.extend_from_slice(&(rate * 2).to_le_bytes());
    body.extend_from_slice(&2u16.to_le_bytes());
    body.extend_from_slice(&16u16.to_le_bytes());
    body.extend_from_slice(b"LIST");
    body.extend_from_slice(&3u32.to_le_bytes());
    body.extend_from_slice(b"abc\0"); // 3 bytes + 1 pad byte
    body.extend_from_slice(b"data");
    body.extend_from_slice(&((samples.len() * 2) as u32).to_le_bytes());
    samples
        .iter()
        .for_each(|s| body.extend_from_slice(&s.to_le_bytes()));
    let mut v = b"RIFF".to_vec();
    v.extend_from_slice(&(body.len() as u32).to_le_bytes());
    v.extend_from_slice(&body);
    v
}

/// A fast 64-bit hash of a file (FNV-1a over 8-byte words), for byte-identity checks
/// without keeping both files around.
pub fn file_hash(path: &Path) -> (u64, u64) {
    let bytes = std::fs::read(path).unwrap();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (bytes.len() as u64, h)
}
