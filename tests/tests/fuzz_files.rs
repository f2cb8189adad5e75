//! Fuzz suite of every file format mla reads: `.npy`, `dataset.json`, index files, IDX,
//! gzip, WAV and safetensors checkpoints. A seeded generator (reproducible: each failure
//! prints its format, case number and defect) produces inputs that are malformed by
//! construction, each of which must end in a clean error: an `Err` whose message is one
//! line and names the file, never a panic, a hang or an abort. Random mutations that may
//! or may not stay valid are run too and must only not panic.
//!
//! Allocation is capped in this binary: an allocation above `CAP`, or one that would take
//! the process past `TOTAL_CAP`, gets a null pointer. A fallible allocation (what the
//! readers use for sizes taken from files) turns that into the error under test; an
//! infallible one aborts the binary, which fails the suite instead of exhausting the
//! machine.
//!
//! `MLA_FUZZ_SEED` changes the seed, `MLA_FUZZ_SCALE` multiplies the case counts.

mod data_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Display;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use data_common::*;
use mla_models::checkpoint::Checkpoint;
use mla_models::data::avmnist::idx::{parse_idx, read_idx};
use mla_models::data::avmnist::wav::{encode_wav, parse_wav, read_wav};
use mla_models::data::npy::{encode_header, parse_header, write_npy};
use mla_models::data::{DType, Dataset, NpyArray};
use mla_models::rng::Rng;
use serde_json::{json, Value};

const CAP: usize = 64 << 20;
const TOTAL_CAP: usize = 1 << 30;

struct Capped;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicUsize = AtomicUsize::new(0);

impl Capped {
    fn admit(&self, size: usize) -> bool {
        if size > CAP || LIVE.fetch_add(size, Ordering::Relaxed) + size > TOTAL_CAP {
            if size <= CAP {
                LIVE.fetch_sub(size, Ordering::Relaxed);
            }
            REFUSED.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !self.admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !self.admit(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new_size > layout.size() {
                LIVE.fetch_sub(new_size - layout.size(), Ordering::Relaxed);
            }
        } else if new_size < layout.size() {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

fn seed() -> u64 {
    std::env::var("MLA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d6c_615f_6675_7a7a)
}

fn scaled(n: usize) -> usize {
    let k: f64 = std::env::var("MLA_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * k).ceil() as usize).max(1)
}

/// Counts outcomes and collects failures of one format's run.
struct Tally {
    format: &'static str,
    strict: usize,
    loose: usize,
    failures: Vec<String>,
}

impl Tally {
    fn new(format: &'static str) -> Self {
        Tally {
            format,
            strict: 0,
            loose: 0,
            failures: Vec::new(),
        }
    }

    /// A malformed input: `run` must return an Err whose message is one line naming `name`.
    fn expect_err<T, E: Display>(
        &mut self,
        case: usize,
        defect: &str,
        name: &str,
        run: impl FnOnce() -> Result<T, E>,
    ) {
        self.strict += 1;
        match catch_unwind(AssertUnwindSafe(run)) {
            Err(_) => self.fail(case, defect, "panicked".into()),
            Ok(Ok(_)) => self.fail(case, defect, "was accepted".into()),
            Ok(Err(e)) => {
                let msg = e.to_string();
                if msg.contains('\n') || !msg.contains(name) {
                    self.fail(
                        case,
                        defect,
                        format!("unclear error {msg:?} (must name {name})"),
                    );
                }
            }
        }
    }

    /// An input that may or may not be valid: `run` must not panic.
    fn no_panic<T, E: Display>(
        &mut self,
        case: usize,
        defect: &str,
        run: impl FnOnce() -> Result<T, E>,
    ) {
        self.loose += 1;
        match catch_unwind(AssertUnwindSafe(run)) {
            Err(_) => self.fail(case, defect, "panicked".into()),
            Ok(Err(e)) if e.to_string().contains('\n') => {
                self.fail(case, defect, format!("multi-line error {e}"))
            }
            Ok(_) => {}
        }
    }

    fn fail(&mut self, case: usize, defect: &str, what: String) {
        if self.failures.len() < 30 {
            self.failures.push(format!(
                "{} case {case} ({defect}, seed {}): {what}",
                self.format,
                seed()
            ));
        } else {
            self.failures.push(String::new());
        }
    }

    fn finish(self, min_strict: usize) {
        eprintln!(
            "{}: {} malformed inputs rejected cleanly, {} mutations survived without a panic",
            self.format, self.strict, self.loose
        );
        assert!(
            self.failures.is_empty(),
            "{} failures:\n{}",
            self.failures.len(),
            self.failures
                .iter()
                .filter(|f| !f.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            self.strict >= min_strict,
            "{}: only {} malformed cases",
            self.format,
            self.strict
        );
    }
}

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len())]
}

/// Integers that break size arithmetic.
const NASTY: [u64; 14] = [
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    (1 << 32) + 1,
    1 << 40,
    1 << 48,
    (1 << 53) + 1,
    1 << 62,
    (1 << 63) - 1,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
    10_000_000,
    4_294_967_297,
];

/// Mutates 1..=4 random bytes of `b` to different values.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.push(rng.next_u64() as u8);
        return;
    }
    for _ in 0..1 + rng.below(4) {
        let i = rng.below(b.len());
        let x = 1 + rng.below(255) as u8;
        b[i] ^= x;
    }
}

fn random_shape(rng: &mut Rng) -> Vec<usize> {
    (0..1 + rng.below(3)).map(|_| 1 + rng.below(5)).collect()
}

/// A valid f32 .npy file of `shape` (data all 1.5).
fn npy_f32(shape: &[usize]) -> Vec<u8> {
    let mut b = encode_header("<f4", false, shape);
    let n: usize = shape.iter().product();
    for _ in 0..n {
        b.extend_from_slice(&1.5f32.to_le_bytes());
    }
    b
}

/// A header with the given dictionary text, format 1.0, padded like numpy.
fn npy_text(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut text = dict.as_bytes().to_vec();
    while !(10 + text.len() + 1).is_multiple_of(64) {
        text.push(b' ');
    }
    text.push(b'\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(text.len() as u16).to_le_bytes());
    b.extend_from_slice(&text);
    b.extend_from_slice(data);
    b
}

fn dims_text(dims: &[String]) -> String {
    match dims {
        [d] => format!("({d},)"),
        _ => format!("({})", dims.join(", ")),
    }
}

/// One malformed .npy file (bytes, defect), for an f32 reader.
fn bad_npy(rng: &mut Rng) -> (Vec<u8>, &'static str) {
    let shape = random_shape(rng);
    let good = npy_f32(&shape);
    let header_len = encode_header("<f4", false, &shape).len();
    let data: Vec<u8> = good[header_len..].to_vec();
    match rng.below(13) {
        0 => {
            let mut b = good.clone();
            b.truncate(rng.below(good.len()));
            (b, "truncated")
        }
        1 => {
            let mut b = good;
            let i = rng.below(6);
            b[i] ^= 1 + rng.below(255) as u8;
            (b, "bad magic")
        }
        2 => {
            let mut b = good;
            let (major, minor) = *pick(
                rng,
                &[(0u8, 0u8), (3, 0), (1, 1), (2, 7), (255, 255), (4, 0)],
            );
            b[6] = major;
            b[7] = minor;
            (b, "unsupported version")
        }
        3 => {
            let mut b = good.clone();
            let len = (good.len() - 10 + 1 + rng.below(60000)) as u16;
            b[8..10].copy_from_slice(&len.max((good.len() - 9) as u16).to_le_bytes());
            (b, "header length past the end")
        }
        4 => {
            // Huge or negative dimensions, none zero: needs more bytes than any file has.
            let mut dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            let k = rng.below(dims.len());
            dims[k] = match rng.below(3) {
                0 => pick(rng, &NASTY).to_string(),
                1 => format!("-{}", 1 + rng.below(1 << 20)),
                _ => format!("{}", (1u128 << 64) + rng.below(1000) as u128),
            };
            if rng.below(2) == 0 {
                dims.push(pick(rng, &NASTY).to_string());
            }
            let dict = format!(
                "{{'descr': '<f4', 'fortran_order': False, 'shape': {}, }}",
                dims_text(&dims)
            );
            (npy_text(&dict, &data), "huge or negative dimension")
        }
        5 => {
            let descr = *pick(
                rng,
                &[
                    ">f4", "<f8", "<i4", "|b1", "f4", "<f", "", "<c8", "<f2", "|u1", "<i8", ">i8",
                    "<U4", "O",
                ],
            );
            let dict = format!(
                "{{'descr': '{descr}', 'fortran_order': False, 'shape': {}, }}",
                dims_text(&shape.iter().map(|d| d.to_string()).collect::<Vec<_>>())
            );
            (npy_text(&dict, &data), "wrong dtype")
        }
        6 => {
            let dict =
                "{'descr': [('a', '<f4'), ('b', '<f4')], 'fortran_order': False, 'shape': (2,), }";
            (npy_text(dict, &data), "structured dtype")
        }
        7 => {
            let shape = [2 + rng.below(3), 2 + rng.below(3)];
            let n = shape[0] * shape[1];
            let mut b = encode_header("<f4", true, &shape);
            b.extend(std::iter::repeat_n(0u8, 4 * n));
            (b, "fortran order")
        }
        8 => {
            let dims: Vec<String> = (0..33 + rng.below(100)).map(|_| "1".to_string()).collect();
            let dict = format!(
                "{{'descr': '<f4', 'fortran_order': False, 'shape': {}, }}",
                dims_text(&dims)
            );
            (npy_text(&dict, &data), "too many dimensions")
        }
        9 => {
            let depth = 9 + rng.below(200);
            let shape = format!("{}1{}", "(".repeat(depth), ",)".repeat(depth));
            let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            (npy_text(&dict, &data), "nesting too deep")
        }
        10 => {
            let dims = dims_text(&shape.iter().map(|d| d.to_string()).collect::<Vec<_>>());
            let dict = match rng.below(5) {
                0 => format!("{{'fortran_order': False, 'shape': {dims}, }}"),
                1 => "{'descr': '<f4', 'shape': (1,), }".to_string(),
                2 => "{'descr': '<f4', 'fortran_order': False, }".to_string(),
                3 => format!(
                    "{{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}"
                ),
                _ => format!(
                    "{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, 'extra': 1, }}"
                ),
            };
            (npy_text(&dict, &data), "missing, duplicate or unknown key")
        }
        11 => {
            // One more row than the data holds.
            let mut more = shape.clone();
            more[0] += 1 + rng.below(1000);
            let mut b = encode_header("<f4", false, &more);
            b.extend_from_slice(&data);
            (b, "more rows than data")
        }
        _ => {
            let mut b = good;
            let i = 10 + rng.below(header_len - 10);
            b[i] = 0x80 | rng.next_u64() as u8;
            (b, "non-ASCII header")
        }
    }
}

#[test]
fn fuzz_npy() {
    let mut rng = Rng::derive(seed(), 1);
    let mut t = Tally::new("npy");
    let dir = TempDir::new("fuzz-npy");
    for case in 0..scaled(2500) {
        let (bytes, defect) = bad_npy(&mut rng);
        // The header parser alone, on the bytes: it must not panic (it may accept a
        // header whose data is missing; the file reader below must not).
        if catch_unwind(|| parse_header(&bytes, Path::new("mem.npy"))).is_err() {
            t.fail(case, defect, "parse_header panicked".into());
        }
        let name = format!("c{case}.npy");
        let path = dir.join(&name);
        std::fs::write(&path, &bytes).unwrap();
        t.expect_err(case, defect, &name, || NpyArray::open(&path, DType::F32));
        let _ = std::fs::remove_file(&path);
    }
    // Random mutations of valid files, opened for every dtype.
    for case in 0..scaled(500) {
        let mut b = npy_f32(&random_shape(&mut rng));
        mutate(&mut rng, &mut b);
        let path = dir.join("m.npy");
        std::fs::write(&path, &b).unwrap();
        for dt in [DType::F32, DType::I64, DType::U8] {
            t.no_panic(case, "mutation", || {
                NpyArray::open(&path, dt).map(|a| {
                    // Whatever opens must be readable in full.
                    match dt {
                        DType::F32 => a.to_vec::<f32>().map(|v| v.len()),
                        DType::I64 => a.to_vec::<i64>().map(|v| v.len()),
                        _ => a.to_vec::<u8>().map(|v| v.len()),
                    }
                })
            });
        }
    }
    t.finish(scaled(2500));
}

/// Writes the fixture into a fresh directory, then applies one dataset-level defect.
fn bad_dataset(rng: &mut Rng, dir: &Path) -> (&'static str, String) {
    write_fixture(dir);
    let mut m = manifest();
    let here = dir.file_name().unwrap().to_string_lossy().into_owned();
    match rng.below(16) {
        0 => {
            let v = pick(
                rng,
                &[
                    json!(0),
                    json!(-1),
                    json!(-2147483648i64),
                    json!(2147483648u64),
                    json!(4294967295u64),
                    json!(4294967296u64),
                    json!(10_000_000),
                    json!(65537),
                    json!(u64::MAX),
                    json!(1.5),
                    json!("3"),
                    json!(null),
                    json!(true),
                    json!([3]),
                    json!({"n": 3}),
                    json!(1),
                    json!(2),
                ],
            )
            .clone();
            let keep_names = rng.below(2) == 0;
            if !keep_names {
                m.as_object_mut().unwrap().remove("class_names");
            }
            // 1 or 2 classes are valid numbers, but the labels go up to 2.
            let small = v == json!(1) || v == json!(2);
            m["num_classes"] = v;
            write_manifest(dir, &m);
            let name = if small && !keep_names {
                "labels.npy"
            } else {
                "dataset.json"
            };
            ("num_classes", name.into())
        }
        1 => {
            let len = *pick(rng, &[0usize, 1, 2, 4, 5, 100]);
            m["class_names"] = if rng.below(3) == 0 {
                json!([1, 2, 3])
            } else if rng.below(2) == 0 {
                json!("zero one two")
            } else {
                Value::Array((0..len).map(|i| json!(i.to_string())).collect())
            };
            write_manifest(dir, &m);
            ("class_names", "dataset.json".into())
        }
        2 => {
            m["format"] = pick(
                rng,
                &[
                    json!("mla-dataset/2"),
                    json!(""),
                    json!(1),
                    json!(null),
                    json!("MLA-DATASET/1"),
                ],
            )
            .clone();
            if rng.below(4) == 0 {
                m.as_object_mut().unwrap().remove("format");
            }
            write_manifest(dir, &m);
            ("format", "dataset.json".into())
        }
        3 => {
            let field = *pick(rng, &["labels", "split"]);
            let v = pick(
                rng,
                &[
                    json!("../labels.npy"),
                    json!("/etc/passwd"),
                    json!(""),
                    json!("x/../../labels.npy"),
                    json!("nope.npy"),
                    json!("."),
                    json!(7),
                    json!(null),
                ],
            )
            .clone();
            let name = match v.as_str() {
                Some("nope.npy") => "nope.npy".to_string(),
                Some(".") => here,
                _ => "dataset.json".to_string(),
            };
            m[field] = v;
            write_manifest(dir, &m);
            ("bad file path", name)
        }
        4 => {
            let key = *pick(rng, &["data", "index"]);
            let v = pick(
                rng,
                &[
                    json!("../a.npy"),
                    json!("/dev/zero"),
                    json!("missing.npy"),
                    json!(false),
                    json!("."),
                ],
            )
            .clone();
            let name = match v.as_str() {
                Some("missing.npy") => "missing.npy".to_string(),
                Some(".") => here,
                _ => "dataset.json".to_string(),
            };
            m["modalities"][0][key] = v;
            write_manifest(dir, &m);
            ("bad modality path", name)
        }
        5 => {
            m["modalities"] = pick(
                rng,
                &[
                    json!([]),
                    json!({}),
                    json!("a"),
                    json!([1]),
                    json!([{"name": "a", "data": "a.npy", "index": "a_index.npy"}, {"name": "a", "data": "b.npy"}]),
                    json!([{"name": "", "data": "b.npy"}]),
                    json!([{"name": "a/b", "data": "b.npy"}]),
                    json!([{"name": "a b", "data": "b.npy"}]),
                    json!([{"name": "x".repeat(65), "data": "b.npy"}]),
                    json!([{"data": "b.npy"}]),
                    json!([{"name": "b"}]),
                    json!([{"name": 3, "data": "b.npy"}]),
                ],
            )
            .clone();
            write_manifest(dir, &m);
            ("modalities", "dataset.json".into())
        }
        6 => {
            let many: Vec<Value> = (0..257)
                .map(|i| json!({"name": format!("m{i}"), "data": "b.npy"}))
                .collect();
            m["modalities"] = Value::Array(many);
            write_manifest(dir, &m);
            ("too many modalities", "dataset.json".into())
        }
        7 => {
            let text = serde_json::to_vec_pretty(&m).unwrap();
            let cut = rng.below(text.len());
            std::fs::write(dir.join("dataset.json"), &text[..cut]).unwrap();
            ("truncated manifest", "dataset.json".into())
        }
        8 => {
            let v = pick(
                rng,
                &[
                    json!([]),
                    json!(null),
                    json!(3),
                    json!("mla-dataset/1"),
                    json!([{"format": "mla-dataset/1"}]),
                ],
            )
            .clone();
            std::fs::write(dir.join("dataset.json"), serde_json::to_vec(&v).unwrap()).unwrap();
            ("manifest not an object", "dataset.json".into())
        }
        9 => {
            // Index values outside [-1, R).
            let mut idx = A_INDEX.to_vec();
            let s = rng.below(N);
            idx[s] = if rng.below(2) == 0 {
                -2 - rng.below(1 << 30) as i64
            } else {
                4 + (*pick(rng, &NASTY) >> 1) as i64 % (1 << 62)
            };
            write_npy(dir.join("a_index.npy"), &[N], &idx).unwrap();
            ("index out of range", "a_index.npy".into())
        }
        10 => {
            let n = *pick(rng, &[0usize, 1, N - 1, N + 1, 2 * N]);
            let idx: Vec<i64> = (0..n).map(|i| (i % 4) as i64).collect();
            let file = *pick(rng, &["a_index.npy", "split.npy"]);
            if file == "split.npy" {
                write_npy(dir.join(file), &[n], &vec![0u8; n]).unwrap();
            } else {
                write_npy(dir.join(file), &[n], &idx).unwrap();
            }
            ("length mismatch", file.into())
        }
        11 => {
            let file = *pick(rng, &["a_index.npy", "labels.npy", "split.npy", "a.npy"]);
            // f32 [N] would be a valid data file (scalar rows): only the others for a.npy.
            match rng.below(if file == "a.npy" { 2 } else { 3 }) {
                0 => write_npy(dir.join(file), &[N], &[0.0f64; N]).unwrap(),
                1 => write_npy(dir.join(file), &[N, 1], &[0i64; N]).unwrap(),
                _ => write_npy(dir.join(file), &[N], &[0.5f32; N]).unwrap(),
            }
            let defect = if file == "a.npy" {
                "data dtype"
            } else {
                "vector dtype or rank"
            };
            (defect, file.into())
        }
        12 => {
            let mut labels = LABELS.to_vec();
            labels[rng.below(N)] = if rng.below(2) == 0 {
                -1 - rng.below(100) as i64
            } else {
                3 + rng.below(1 << 40) as i64
            };
            write_npy(dir.join("labels.npy"), &[N], &labels).unwrap();
            ("label out of range", "labels.npy".into())
        }
        13 => {
            let mut split = SPLIT.to_vec();
            split[rng.below(N)] = 3 + rng.below(253) as u8;
            write_npy(dir.join("split.npy"), &[N], &split).unwrap();
            ("split value", "split.npy".into())
        }
        14 => {
            // Every modality missing for one sample.
            let s = rng.below(N);
            let mut idx = A_INDEX.to_vec();
            idx[s] = -1;
            write_npy(dir.join("a_index.npy"), &[N], &idx).unwrap();
            let mut b_idx: Vec<i64> = (0..N as i64).collect();
            b_idx[s] = -1;
            write_npy(dir.join("b_index.npy"), &[N], &b_idx).unwrap();
            m["modalities"][1]["index"] = json!("b_index.npy");
            write_manifest(dir, &m);
            ("all modalities missing", "dataset.json".into())
        }
        _ => {
            // A data file whose rows are too long or wrap (zero rows, so no bytes needed).
            let (d1, d2) = (*pick(rng, &NASTY), *pick(rng, &NASTY));
            let dict =
                format!("{{'descr': '<f4', 'fortran_order': False, 'shape': (0, {d1}, {d2}), }}");
            std::fs::write(dir.join("a.npy"), npy_text(&dict, &[])).unwrap();
            write_npy(dir.join("a_index.npy"), &[N], &[-1i64; N]).unwrap();
            ("row size", "a.npy".into())
        }
    }
}

#[test]
fn fuzz_dataset_and_index_files() {
    let mut rng = Rng::derive(seed(), 2);
    let mut t = Tally::new("dataset.json and index files");
    let root = TempDir::new("fuzz-ds");
    for case in 0..scaled(3000) {
        let dir = root.join(&format!("d{case}"));
        std::fs::create_dir(&dir).unwrap();
        let (defect, name) = bad_dataset(&mut rng, &dir);
        t.expect_err(case, defect, &name, || Dataset::open(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // Random byte mutations of the manifest.
    let dir = root.join("mut");
    std::fs::create_dir(&dir).unwrap();
    write_fixture(&dir);
    let good = serde_json::to_vec_pretty(&manifest()).unwrap();
    for case in 0..scaled(500) {
        let mut b = good.clone();
        mutate(&mut rng, &mut b);
        std::fs::write(dir.join("dataset.json"), &b).unwrap();
        t.no_panic(case, "manifest mutation", || Dataset::open(&dir));
    }
    t.finish(scaled(3000));
}

/// One malformed uncompressed IDX stream.
fn bad_idx(rng: &mut Rng) -> (Vec<u8>, &'static str) {
    let dims: Vec<usize> = (0..1 + rng.below(3)).map(|_| 1 + rng.below(6)).collect();
    let n: usize = dims.iter().product();
    let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
    match rng.below(7) {
        0 => {
            let k = 1 + rng.below(20);
            let mut v = idx_bytes(&dims, &data);
            if rng.below(2) == 0 {
                v.truncate(v.len() - k.min(n));
            } else {
                v.extend(std::iter::repeat_n(7u8, k));
            }
            (v, "data length differs from the dimensions")
        }
        1 => {
            let mut v = vec![0, 0, 0x08, 1 + rng.below(4) as u8];
            for _ in 0..v[3] {
                v.extend_from_slice(&((*pick(rng, &NASTY) as u32) | 1 << 31).to_be_bytes());
            }
            v.extend_from_slice(&data);
            (v, "huge dimensions")
        }
        2 => {
            let mut v = idx_bytes(&dims, &data);
            v[rng.below(2)] = 1 + rng.below(255) as u8;
            (v, "bad magic")
        }
        3 => {
            let mut v = idx_bytes(&dims, &data);
            v[2] = *pick(rng, &[0x09u8, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]);
            (v, "element type")
        }
        4 => {
            let mut v = idx_bytes(&dims, &data);
            v[3] = 0;
            (v, "rank 0")
        }
        5 => {
            let v = idx_bytes(&dims, &data);
            let cut = rng.below(4 + 4 * dims.len());
            (v[..cut].to_vec(), "header truncated")
        }
        _ => {
            // Rank says more dimensions than the file holds.
            let mut v = vec![0, 0, 0x08, 200 + rng.below(55) as u8];
            v.extend_from_slice(&[0, 0, 0, 1]);
            (v, "rank past the end")
        }
    }
}

#[test]
fn fuzz_idx() {
    let mut rng = Rng::derive(seed(), 3);
    let mut t = Tally::new("IDX");
    let dir = TempDir::new("fuzz-idx");
    for case in 0..scaled(1500) {
        let (bytes, defect) = bad_idx(&mut rng);
        if case % 5 == 0 {
            let path = dir.join("x-idx1-ubyte");
            std::fs::write(&path, &bytes).unwrap();
            t.expect_err(case, defect, "x-idx1-ubyte", || read_idx(&path));
        } else {
            t.expect_err(case, defect, "mem.idx", || {
                parse_idx(&bytes, Path::new("mem.idx"))
            });
        }
    }
    for case in 0..scaled(300) {
        let mut b = idx_bytes(&[3, 4], &[9; 12]);
        mutate(&mut rng, &mut b);
        t.no_panic(case, "mutation", || parse_idx(&b, Path::new("m.idx")));
    }
    t.finish(scaled(1500));
}

fn gz(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// One malformed gzip-compressed IDX file.
/// One malformed gzip-compressed IDX file: (bytes, defect, the data it would decode to if
/// the damage happened to hit bits deflate does not use, else None).
fn bad_gzip(rng: &mut Rng) -> (Vec<u8>, &'static str, Option<Vec<u8>>) {
    let dims = [1 + rng.below(40), 1 + rng.below(40)];
    let n = dims[0] * dims[1];
    let data: Vec<u8> = (0..n).map(|_| rng.below(7) as u8).collect();
    let good = idx_bytes(&dims, &data);
    let level = rng.below(10) as u32;
    match rng.below(8) {
        0 => {
            let (bad, _) = bad_idx(rng);
            (gz(&bad, level), "gzip of a malformed IDX stream", None)
        }
        1 => {
            let z = gz(&good, level);
            let cut = 2 + rng.below(z.len() - 2);
            (z[..cut].to_vec(), "truncated gzip", None)
        }
        2 => {
            // The trailer: CRC-32 and size of the uncompressed data.
            let mut z = gz(&good, level);
            let i = z.len() - 1 - rng.below(8);
            z[i] ^= 1 << rng.below(8);
            (z, "damaged trailer", None)
        }
        3 => {
            // The compressed body. A flip in bits deflate does not use (the padding of a
            // stored block header, of the last byte) leaves the same data: then, and only
            // then, reading it back is correct.
            let mut z = gz(&good, level);
            let body = 10..z.len() - 8;
            let i = body.start + rng.below(body.len());
            z[i] ^= 1 << rng.below(8);
            (z, "damaged deflate data", Some(data))
        }
        4 => {
            let mut z = gz(&good, level);
            z.extend_from_slice(&gz(&[7u8; 3], level));
            (z, "extra member past the declared size", None)
        }
        5 => {
            let mut z = gz(&good, level);
            let junk: Vec<u8> = (0..1 + rng.below(30))
                .map(|_| 1 + rng.below(255) as u8)
                .collect();
            z.extend_from_slice(&junk);
            (z, "trailing garbage", None)
        }
        6 => {
            // A small bomb: the declared size, then many more zeros in further members.
            let mut z = gz(&good, level);
            let zeros = gz(&vec![0u8; 1 << 16], 9);
            for _ in 0..1 + rng.below(64) {
                z.extend_from_slice(&zeros);
            }
            (z, "expands past the declared size", None)
        }
        _ => {
            // Split across members, one member damaged.
            let k = 1 + rng.below(good.len() - 1);
            let mut a = gz(&good[..k], level);
            let b = gz(&good[k..], level);
            let i = a.len() - 1 - rng.below(8);
            a[i] ^= 1 << rng.below(8);
            a.extend_from_slice(&b);
            (a, "multi-member with a damaged trailer", None)
        }
    }
}

#[test]
fn fuzz_gzip() {
    let mut rng = Rng::derive(seed(), 4);
    let mut t = Tally::new("gzip");
    let dir = TempDir::new("fuzz-gz");
    let path = dir.join("x-idx3-ubyte.gz");
    for case in 0..scaled(1500) {
        let (bytes, defect, same) = bad_gzip(&mut rng);
        std::fs::write(&path, &bytes).unwrap();
        if let (Some(data), Ok(Ok(a))) = (&same, catch_unwind(|| read_idx(&path))) {
            if a.data != *data {
                t.fail(case, defect, "damaged stream read as different data".into());
            }
            t.loose += 1;
            continue;
        }
        t.expect_err(case, defect, "x-idx3-ubyte.gz", || read_idx(&path));
    }
    // Valid multi-member files split at random points must read back exactly.
    for case in 0..scaled(200) {
        let data: Vec<u8> = (0..300).map(|_| rng.below(256) as u8).collect();
        let good = idx_bytes(&[10, 30], &data);
        let mut z = Vec::new();
        let mut at = 0;
        while at < good.len() {
            let k = (1 + rng.below(100)).min(good.len() - at);
            z.extend(gz(&good[at..at + k], rng.below(10) as u32));
            at += k;
        }
        std::fs::write(&path, &z).unwrap();
        match read_idx(&path) {
            Ok(a) if a.data == data && a.dims == [10, 30] => {}
            other => t.fail(
                case,
                "valid multi-member",
                format!("{:?}", other.map(|a| a.dims)),
            ),
        }
    }
    for case in 0..scaled(300) {
        let mut z = gz(&idx_bytes(&[5, 5], &[3; 25]), 6);
        mutate(&mut rng, &mut z);
        std::fs::write(&path, &z).unwrap();
        t.no_panic(case, "mutation", || read_idx(&path));
    }
    // A few damaged-body cases hit unused bits and read back correctly (counted above as
    // surviving mutations); the rest must all be rejected.
    t.finish(scaled(1400));
}

/// A WAV file from (format tag, channels, rate, bits, fmt size, data) with chunk order.
fn wav_from(
    tag: u16,
    channels: u16,
    bits: u16,
    fmt_len: u32,
    data: &[u8],
    data_len: u32,
    fmt_first: bool,
) -> Vec<u8> {
    let mut fmt = Vec::new();
    fmt.extend_from_slice(&tag.to_le_bytes());
    fmt.extend_from_slice(&channels.to_le_bytes());
    fmt.extend_from_slice(&8000u32.to_le_bytes());
    fmt.extend_from_slice(&16000u32.to_le_bytes());
    fmt.extend_from_slice(&2u16.to_le_bytes());
    fmt.extend_from_slice(&bits.to_le_bytes());
    fmt.resize(fmt_len as usize, 0);
    let mut chunks = Vec::new();
    let mut fmt_chunk = b"fmt ".to_vec();
    fmt_chunk.extend_from_slice(&fmt_len.to_le_bytes());
    fmt_chunk.extend_from_slice(&fmt);
    let mut data_chunk = b"data".to_vec();
    data_chunk.extend_from_slice(&data_len.to_le_bytes());
    data_chunk.extend_from_slice(data);
    if fmt_first {
        chunks.extend(fmt_chunk);
        chunks.extend(data_chunk);
    } else {
        chunks.extend(data_chunk);
        chunks.extend(fmt_chunk);
    }
    let mut v = b"RIFF".to_vec();
    v.extend_from_slice(&(4 + chunks.len() as u32).to_le_bytes());
    v.extend_from_slice(b"WAVE");
    v.extend(chunks);
    v
}

fn bad_wav(rng: &mut Rng) -> (Vec<u8>, &'static str) {
    let n = 1 + rng.below(200);
    let data: Vec<u8> = (0..2 * n).map(|_| rng.next_u64() as u8).collect();
    let dl = data.len() as u32;
    match rng.below(9) {
        0 => {
            let mut v = wav_from(1, 1, 16, 16, &data, dl, true);
            let i = if rng.below(2) == 0 {
                rng.below(4)
            } else {
                8 + rng.below(4)
            };
            v[i] ^= 1 + rng.below(255) as u8;
            (v, "not RIFF/WAVE")
        }
        1 => {
            let v = wav_from(1, 1, 16, 16, &data, dl, true);
            (v[..rng.below(12)].to_vec(), "too short")
        }
        2 => {
            let huge = dl + 1 + (rng.next_u64() as u32 % (u32::MAX - dl));
            (
                wav_from(1, 1, 16, 16, &data, huge, true),
                "data chunk past the end",
            )
        }
        3 => {
            // A fmt chunk declaring more than the file holds.
            let mut v = wav_from(1, 1, 16, 16, &data, dl, true);
            let huge = *pick(rng, &[u32::MAX, u32::MAX - 7, 1 << 31, 100_000]);
            v[16..20].copy_from_slice(&huge.to_le_bytes());
            (v, "fmt chunk past the end")
        }
        4 => (
            wav_from(1, 1, 16, rng.below(16) as u32, &data, dl, true),
            "short fmt chunk",
        ),
        5 => {
            let (tag, ch, bits) = match rng.below(3) {
                0 => (*pick(rng, &[0u16, 2, 3, 6, 7, 0xFFFE]), 1, 16),
                1 => (1, *pick(rng, &[0u16, 2, 6, 65535]), 16),
                _ => (1, 1, *pick(rng, &[0u16, 8, 24, 32, 15, 17])),
            };
            (
                wav_from(tag, ch, bits, 16, &data, dl, true),
                "unsupported encoding",
            )
        }
        6 => (wav_from(1, 1, 16, 16, &data, dl, false), "data before fmt"),
        7 => (
            wav_from(1, 1, 16, 16, &data[..data.len() - 1], dl - 1, true),
            "odd data size",
        ),
        _ => {
            // The file ends before the data chunk (a fmt chunk, nothing else).
            let v = wav_from(1, 1, 16, 16, &data, dl, true);
            (v[..36 + rng.below(8)].to_vec(), "no data chunk")
        }
    }
}

#[test]
fn fuzz_wav() {
    let mut rng = Rng::derive(seed(), 5);
    let mut t = Tally::new("WAV");
    let dir = TempDir::new("fuzz-wav");
    for case in 0..scaled(1500) {
        let (bytes, defect) = bad_wav(&mut rng);
        if case % 5 == 0 {
            let path = dir.join("0_x_1.wav");
            std::fs::write(&path, &bytes).unwrap();
            t.expect_err(case, defect, "0_x_1.wav", || read_wav(&path));
        } else {
            t.expect_err(case, defect, "mem.wav", || {
                parse_wav(&bytes, Path::new("mem.wav"))
            });
        }
    }
    for case in 0..scaled(300) {
        let samples: Vec<i16> = (0..50).map(|i| i * 7).collect();
        let mut b = encode_wav(8000, &samples);
        mutate(&mut rng, &mut b);
        t.no_panic(case, "mutation", || parse_wav(&b, Path::new("m.wav")));
    }
    t.finish(scaled(1500));
}

fn checkpoint(rng: &mut Rng) -> Checkpoint {
    let mut c = Checkpoint::new();
    for i in 0..1 + rng.below(3) {
        let shape = random_shape(rng);
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        c.insert(format!("layer{i}.weight"), shape, data).unwrap();
    }
    c.set_json(
        "config",
        &json!({"lr": rng.uniform(), "epochs": rng.below(10)}),
    )
    .unwrap();
    c
}

/// A safetensors file with an arbitrary header text and `data_len` data bytes.
fn safetensors_raw(header: &str, data_len: usize) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut v = (h.len() as u64).to_le_bytes().to_vec();
    v.extend(h);
    v.extend(std::iter::repeat_n(0x3fu8, data_len));
    v
}

fn bad_checkpoint(rng: &mut Rng) -> (Vec<u8>, &'static str) {
    let good = checkpoint(rng).to_bytes().unwrap();
    match rng.below(6) {
        0 | 1 => {
            let mut b = good;
            mutate(rng, &mut b);
            (b, "bytes changed")
        }
        2 => {
            let cut = rng.below(good.len());
            (good[..cut].to_vec(), "truncated")
        }
        3 => {
            let mut b = good;
            b[..8].copy_from_slice(&pick(rng, &NASTY).to_le_bytes());
            (b, "header length")
        }
        4 => {
            let dtype = *pick(rng, &["F32", "F16", "I64", "U8", "BOOL", "F64"]);
            let shape: Vec<u64> = (0..rng.below(4))
                .map(|_| *pick(rng, &NASTY) >> rng.below(64))
                .collect();
            let end = *pick(rng, &[0u64, 4, 16, 1 << 40, u64::MAX]);
            let header = format!(
                r#"{{"__metadata__":{{"format":"mla-checkpoint/2"}},"w":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[0,{end}]}}}}"#
            );
            (
                safetensors_raw(&header, rng.below(64)),
                "random tensor header",
            )
        }
        _ => {
            // A well-formed safetensors file of ours whose checksum entry is wrong.
            let sums = *pick(
                rng,
                &[
                    r#""{}""#,
                    r#""not json""#,
                    r#""{\"algorithm\":\"crc32\",\"metadata\":\"00000000\",\"tensors\":{}}""#,
                    r#""{\"algorithm\":\"md5\",\"metadata\":\"0\",\"tensors\":{\"w\":\"0\"}}""#,
                ],
            );
            let header = format!(
                r#"{{"__metadata__":{{"format":"mla-checkpoint/2","mla.checksums":{sums}}},"w":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}"#
            );
            (safetensors_raw(&header, 4), "bad checksum entry")
        }
    }
}

#[test]
fn fuzz_checkpoints() {
    let mut rng = Rng::derive(seed(), 6);
    let mut t = Tally::new("safetensors checkpoint");
    let dir = TempDir::new("fuzz-ckpt");
    for case in 0..scaled(2000) {
        let (bytes, defect) = bad_checkpoint(&mut rng);
        if case % 10 == 0 {
            let path = dir.join("last.safetensors");
            std::fs::write(&path, &bytes).unwrap();
            t.expect_err(case, defect, "last.safetensors", || Checkpoint::load(&path));
        } else {
            t.expect_err(case, defect, "mem.safetensors", || {
                Checkpoint::from_bytes(&bytes, Path::new("mem.safetensors"))
            });
        }
    }
    t.finish(scaled(2000));
}

#[test]
fn the_allocation_cap_is_in_force() {
    // The cap this suite relies on: a fallible allocation over it fails cleanly.
    let mut v: Vec<u8> = Vec::new();
    assert!(v.try_reserve_exact(CAP + 1).is_err());
    assert!(REFUSED.load(Ordering::Relaxed) >= 1);
    v.try_reserve_exact(1 << 20).unwrap();
}
