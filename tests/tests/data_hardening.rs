//! Regression tests of issue 14's file-reading failures: each case that once panicked,
//! aborted, hung or grew without bound now ends in a clean error (or, for the valid
//! inputs, in the right data) without allocating what the file only declares.
//!
//! The binary's allocator refuses any single allocation over `CAP` (returning null, so an
//! infallible allocation aborts this binary and fails the test, and a fallible one becomes
//! the error under test) and tracks the bytes each thread holds, so that a test can assert
//! what reading a file cost.

mod data_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use data_common::*;
use mla_models::checkpoint::{Checkpoint, CheckpointError};
use mla_models::data::avmnist::idx::{read_idx, MAX_IDX_BYTES};
use mla_models::data::avmnist::wav::read_wav;
use mla_models::data::dataset::{MAX_CLASSES, MAX_ROW_VALUES};
use mla_models::data::loader::make_batch;
use mla_models::data::npy::write_npy;
use mla_models::data::{DataError, Dataset, Row};
use serde_json::json;

const CAP: usize = 256 << 20;

struct Capped;

thread_local! {
    /// Bytes currently allocated by this thread (frees by other threads make it drift,
    /// which the tests below avoid by measuring single-threaded work) and the peak.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    // try_with: the thread-locals may be gone while a thread is being torn down.
    let _ = LIVE.try_with(|l| {
        let now = l.get() + delta;
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > CAP {
            return std::ptr::null_mut();
        }
        account(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > CAP {
            return std::ptr::null_mut();
        }
        account(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > CAP {
            return std::ptr::null_mut();
        }
        account(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

/// Runs `f` and returns its result with the most bytes this thread held above the start.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get) - base;
    (out, peak.max(0) as usize)
}

/// Runs `f` on a thread and fails the test if it has not finished within `secs`: a read
/// that blocks forever (a FIFO opened for reading) must fail here, not hang CI.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not return within {secs} s (blocked?)"))
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let st = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(st.success(), "mkfifo {}", path.display());
}

fn fixture_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    write_fixture(dir.path());
    dir
}

#[test]
fn fifos_are_refused_not_opened() {
    for file in ["b.npy", "a_index.npy", "labels.npy", "dataset.json"] {
        let dir = fixture_dir("fifo");
        mkfifo(&dir.join(file));
        let root = dir.path().to_path_buf();
        let err = within(20, file, move || Dataset::open(&root).map(|_| ()))
            .expect_err("a FIFO was accepted");
        let msg = err.to_string();
        assert!(
            matches!(err, DataError::NotRegularFile { .. }),
            "{file}: {msg}"
        );
        assert!(msg.contains(file) && msg.contains("FIFO"), "{msg}");
    }
    // The raw sources and checkpoints too.
    let dir = TempDir::new("fifo-raw");
    let wav = dir.join("0_x_0.wav");
    mkfifo(&wav);
    let err = within(20, "read_wav", move || read_wav(&wav).map(|_| ())).unwrap_err();
    assert!(matches!(err, DataError::NotRegularFile { .. }), "{err}");
    let idx = dir.join("train-labels-idx1-ubyte");
    mkfifo(&idx);
    let err = within(20, "read_idx", move || read_idx(&idx).map(|_| ())).unwrap_err();
    assert!(matches!(err, DataError::NotRegularFile { .. }), "{err}");
    let ckpt = dir.join("last.safetensors");
    mkfifo(&ckpt);
    let shown = ckpt.clone();
    let err = within(20, "Checkpoint::load", move || {
        Checkpoint::load(&ckpt).map(|_| ())
    })
    .unwrap_err();
    assert!(matches!(err, CheckpointError::NotRegular { .. }), "{err}");
    assert!(err.to_string().contains(&*shown.to_string_lossy()), "{err}");
}

#[test]
fn symlinks_leaving_the_dataset_are_refused() {
    let outside = TempDir::new("outside");
    write_npy(outside.join("b.npy"), &[N, 5], &b_rows()).unwrap();
    write_npy(outside.join("labels.npy"), &[N], &LABELS).unwrap();
    let dir = fixture_dir("escape");
    for (file, field) in [("b.npy", "data"), ("labels.npy", "labels")] {
        std::fs::remove_file(dir.join(file)).unwrap();
        std::os::unix::fs::symlink(outside.join(file), dir.join(file)).unwrap();
        let err = Dataset::open(dir.path()).expect_err("escaping symlink followed");
        let msg = err.to_string();
        assert!(matches!(err, DataError::SymlinkEscapes { .. }), "{msg}");
        assert!(msg.contains("dataset.json") && msg.contains(field), "{msg}");
        // Restore, so the next file is the only escape.
        std::fs::remove_file(dir.join(file)).unwrap();
        std::fs::copy(outside.join(file), dir.join(file)).unwrap();
    }
    // A chain of links that ends outside, through a link inside, is refused too.
    std::fs::remove_file(dir.join("b.npy")).unwrap();
    std::os::unix::fs::symlink(outside.join("b.npy"), dir.join("hop.npy")).unwrap();
    std::os::unix::fs::symlink("hop.npy", dir.join("b.npy")).unwrap();
    assert!(matches!(
        Dataset::open(dir.path()),
        Err(DataError::SymlinkEscapes { .. })
    ));
    // The manifest itself may not point outside either.
    let dir = fixture_dir("escape-manifest");
    std::fs::rename(dir.join("dataset.json"), outside.join("dataset.json")).unwrap();
    std::os::unix::fs::symlink(outside.join("dataset.json"), dir.join("dataset.json")).unwrap();
    assert!(matches!(
        Dataset::open(dir.path()),
        Err(DataError::SymlinkEscapes { .. })
    ));
}

#[test]
fn symlinks_inside_the_dataset_are_followed() {
    let dir = fixture_dir("inside");
    std::fs::create_dir(dir.join("store")).unwrap();
    std::fs::rename(dir.join("b.npy"), dir.join("store/b-v2.npy")).unwrap();
    std::os::unix::fs::symlink("store/b-v2.npy", dir.join("b.npy")).unwrap();
    // The directory itself reached through a link is fine: containment is checked against
    // its canonical form.
    let link = TempDir::new("dirlink");
    let via = link.join("ds");
    std::os::unix::fs::symlink(dir.path(), &via).unwrap();
    let ds = Dataset::open(&via).unwrap();
    assert_eq!(ds.row(1, 2).unwrap().unwrap(), &b_rows()[10..15]);
}

#[test]
fn wav_linked_to_dev_zero_is_refused() {
    let dir = TempDir::new("devzero");
    let wav = dir.join("3_theo_0.wav");
    std::os::unix::fs::symlink("/dev/zero", &wav).unwrap();
    let (res, peak) = peak_during(|| read_wav(&wav));
    let err = res.unwrap_err();
    assert!(matches!(err, DataError::NotRegularFile { .. }), "{err}");
    assert!(err.to_string().contains("character device"), "{err}");
    assert!(peak < 1 << 20, "refusing /dev/zero cost {peak} bytes");
    // Through the FSDD listing, the way preparation reaches it.
    let recs = mla_models::data::avmnist::prepare::list_fsdd(dir.path()).unwrap();
    let err = mla_models::data::avmnist::prepare::audio_features(&recs).unwrap_err();
    assert!(err.to_string().contains("3_theo_0.wav"), "{err}");
    // /dev/zero as a data file of a dataset (inside the directory by name only).
    let ds = fixture_dir("devzero-ds");
    std::fs::remove_file(ds.join("b.npy")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", ds.join("b.npy")).unwrap();
    assert!(Dataset::open(ds.path()).is_err());
}

/// A gzip member of `n` zero bytes (compresses about 1000:1).
fn gz_member(prefix: &[u8], zeros: usize) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(prefix).unwrap();
    let chunk = vec![0u8; 1 << 16];
    let mut left = zeros;
    while left > 0 {
        let k = left.min(chunk.len());
        e.write_all(&chunk[..k]).unwrap();
        left -= k;
    }
    e.finish().unwrap()
}

#[test]
fn gzip_bomb_is_stopped_at_the_declared_size() {
    let dir = TempDir::new("bomb");
    // The header declares 60,000 bytes; the stream expands to 2 GiB: the first member
    // holds the header, 2047 more members of 1 MiB of zeros follow (about 2 MB on disk).
    let mut bomb = gz_member(&idx_bytes(&[60_000], &[]), 1 << 20);
    let member = gz_member(&[], 1 << 20);
    for _ in 0..2047 {
        bomb.extend_from_slice(&member);
    }
    assert!(bomb.len() < 4 << 20, "bomb is {} bytes", bomb.len());
    let path = dir.join("train-labels-idx1-ubyte.gz");
    std::fs::write(&path, &bomb).unwrap();
    let t = Instant::now();
    let (res, peak) = peak_during(|| read_idx(&path));
    let err = res.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("more than the 60000 bytes"), "{msg}");
    assert!(
        peak < 16 << 20,
        "rejecting the bomb held {peak} bytes; the file is {}",
        bomb.len()
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // A header declaring more than the limit is refused before any data is decompressed.
    let huge = gz_member(&idx_bytes(&[1 << 20, 28, 28], &[]), 1 << 20);
    std::fs::write(&path, &huge).unwrap();
    let (res, peak) = peak_during(|| read_idx(&path));
    let msg = res.unwrap_err().to_string();
    assert!(msg.contains(&format!("limit of {MAX_IDX_BYTES}")), "{msg}");
    assert!(peak < 8 << 20, "{peak}");
}

#[test]
fn multi_member_gzip_is_read_whole() {
    let dir = TempDir::new("multigz");
    let data: Vec<u8> = (0..3 * 28 * 28).map(|i| (i % 251) as u8).collect();
    let whole = idx_bytes(&[3, 28, 28], &data);
    // `cat a.gz b.gz c.gz`, split at arbitrary points (one inside the header).
    let mut gz = gzip(&whole[..7]);
    gz.extend(gzip(&whole[7..1000]));
    gz.extend(gzip(&whole[1000..]));
    let path = dir.join("t10k-images-idx3-ubyte.gz");
    std::fs::write(&path, &gz).unwrap();
    let a = read_idx(&path).unwrap();
    assert_eq!(a.dims, vec![3, 28, 28]);
    assert_eq!(a.data, data);
    // Short of the declared size across members: a clear error with both numbers.
    let mut short = gzip(&whole[..7]);
    short.extend(gzip(&whole[7..1000]));
    std::fs::write(&path, &short).unwrap();
    let msg = read_idx(&path).unwrap_err().to_string();
    assert!(
        msg.contains("need 2352 bytes") && msg.contains("holds 984"),
        "{msg}"
    );
    // A damaged member is caught by its CRC.
    let mut bad = gz.clone();
    let mid = bad.len() - 12;
    bad[mid] ^= 0x10;
    std::fs::write(&path, &bad).unwrap();
    assert!(read_idx(&path).is_err());
}

/// Writes `data` as an f32 .npy file with an arbitrary (e.g. wrapping) shape.
fn npy_with_shape(path: &Path, shape: &str, data: &[u8]) {
    let text = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let mut text = text.into_bytes();
    while !(10 + text.len() + 1).is_multiple_of(64) {
        text.push(b' ');
    }
    text.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&text);
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn wrapping_npy_shapes_are_rejected() {
    // The issue's case: zero rows, a row size of 2^64 - 1, every index -1 (the other
    // modality holds every sample), which once panicked in init::uniform.
    for shape in [
        "(0, 4294967297, 4294967295)",
        "(0, 18446744073709551615, 2)",
        "(0, 4294967296, 4294967296)",
        "(0, 65536, 65536)",
    ] {
        let dir = fixture_dir("wrap");
        npy_with_shape(&dir.join("a.npy"), shape, &[]);
        write_npy(dir.join("a_index.npy"), &[N], &[-1i64; N]).unwrap();
        let (res, peak) = peak_during(|| Dataset::open(dir.path()));
        let err = res.expect_err(shape);
        let msg = err.to_string();
        assert!(matches!(err, DataError::NpyShape { .. }), "{shape}: {msg}");
        assert!(
            msg.contains("a.npy") && msg.contains(&MAX_ROW_VALUES.to_string()),
            "{msg}"
        );
        assert!(peak < 1 << 20, "{shape}: {peak}");
    }
    // A shape whose element count overflows with rows.
    let dir = fixture_dir("wrap2");
    npy_with_shape(&dir.join("b.npy"), "(4294967297, 4294967295, 1)", &[0; 64]);
    assert!(Dataset::open(dir.path()).is_err());
    // The layer initialiser no longer panics on a size that overflows.
    let mut rng = mla_models::rng::Rng::new(0);
    let r = mla_models::init::uniform::<f32, _>(
        &mla_cpu::Cpu::new(),
        &[4294967297, 4294967295, 2],
        0.1,
        &mut rng,
    );
    assert!(r.is_err());
    let r = mla_models::init::uniform::<f32, _>(&mla_cpu::Cpu::new(), &[1 << 40], 0.1, &mut rng);
    assert!(r.is_err());
}

#[test]
fn huge_num_classes_is_rejected_before_allocating() {
    for classes in [
        json!(2147483648u64),
        json!(4294967295u64),
        json!(10_000_000),
        json!(MAX_CLASSES + 1),
    ] {
        let dir = fixture_dir("classes");
        let mut m = manifest();
        m["num_classes"] = classes.clone();
        m.as_object_mut().unwrap().remove("class_names");
        write_manifest(dir.path(), &m);
        let (res, peak) = peak_during(|| Dataset::open(dir.path()));
        let msg = res.expect_err("huge num_classes accepted").to_string();
        assert!(
            msg.contains("dataset.json") && msg.contains(&format!("limit of {MAX_CLASSES}")),
            "{classes}: {msg}"
        );
        assert!(peak < 1 << 20, "{classes}: {peak} bytes");
    }
    // The limit itself is accepted (labels 0..3 are inside it).
    let dir = fixture_dir("classes-max");
    let mut m = manifest();
    m["num_classes"] = json!(MAX_CLASSES);
    m.as_object_mut().unwrap().remove("class_names");
    write_manifest(dir.path(), &m);
    assert_eq!(
        Dataset::open(dir.path()).unwrap().num_classes(),
        MAX_CLASSES
    );
}

#[test]
fn unaligned_npy_is_mapped_not_copied() {
    // 64 MiB of f32 rows at an offset that is not a multiple of 4.
    const ROWS: usize = 4096;
    const DIM: usize = 4096;
    let dir = fixture_dir("unaligned");
    let text = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({ROWS}, {DIM}), }}");
    let mut text = text.into_bytes();
    while (10 + text.len() + 1) % 4 != 1 {
        text.push(b' ');
    }
    text.push(b'\n');
    let value = |r: usize, c: usize| (r * DIM + c) as f32 * 0.25;
    {
        let f = std::fs::File::create(dir.join("big.npy")).unwrap();
        let mut w = std::io::BufWriter::new(f);
        w.write_all(b"\x93NUMPY\x01\x00").unwrap();
        w.write_all(&(text.len() as u16).to_le_bytes()).unwrap();
        w.write_all(&text).unwrap();
        for r in 0..ROWS {
            for c in 0..DIM {
                w.write_all(&value(r, c).to_le_bytes()).unwrap();
            }
        }
    }
    let index: Vec<i64> = (0..N as i64).map(|i| i * 700 + 3).collect();
    write_npy(dir.join("big_index.npy"), &[N], &index).unwrap();
    let mut m = manifest();
    m["modalities"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "big", "data": "big.npy", "index": "big_index.npy"}));
    write_manifest(dir.path(), &m);

    let (ds, peak) = peak_during(|| Dataset::open(dir.path()).unwrap());
    assert!(
        peak < 1 << 20,
        "opening a 64 MiB unaligned file held {peak} bytes"
    );
    let (rows, peak) = peak_during(|| {
        (0..N)
            .map(|s| ds.row(2, s).unwrap().unwrap())
            .collect::<Vec<Row<'_>>>()
    });
    // Six rows of 16 KiB each are copied, not the file.
    assert!(peak < N * DIM * 4 + (1 << 16), "{peak}");
    for (s, row) in rows.iter().enumerate() {
        assert!(matches!(row, Row::Copied(_)), "unaligned row {s} borrowed");
        let r = index[s] as usize;
        assert_eq!(row[0], value(r, 0));
        assert_eq!(row[DIM - 1], value(r, DIM - 1));
        assert_eq!(row.len(), DIM);
    }
    let (batch, peak) = peak_during(|| make_batch(&ds, &[5, 0, 3]).unwrap());
    assert!(peak < 3 * DIM * 4 + (1 << 16), "{peak}");
    let mb = &batch.modalities[2];
    assert_eq!(mb.present, vec![0, 1, 2]);
    assert_eq!(&mb.data[..DIM], &*rows[5]);
    assert_eq!(&mb.data[2 * DIM..], &*rows[3]);
    // The aligned fixture modalities are still borrowed from the map.
    assert!(matches!(ds.row(1, 0).unwrap().unwrap(), Row::Mapped(_)));
}

fn small_checkpoint() -> Checkpoint {
    let mut c = Checkpoint::new();
    c.insert(
        "encoder.a.weight",
        vec![3, 2],
        vec![0.5, -1.0, 2.0, 0.25, 3.0, -7.5],
    )
    .unwrap();
    c.insert("head.bias", vec![2], vec![0.125, 9.0]).unwrap();
    c.set_json("config", &json!({"lr": 0.01, "epochs": 3}))
        .unwrap();
    c.set_json("trainer_state", &json!({"epochs_done": 2}))
        .unwrap();
    c
}

#[test]
fn every_bit_flip_of_a_checkpoint_is_rejected() {
    let dir = TempDir::new("bitflip");
    let path = dir.join("last.safetensors");
    let good = small_checkpoint().to_bytes().unwrap();
    Checkpoint::from_bytes(&good, &path).unwrap();
    let mut accepted = Vec::new();
    for bit in 0..good.len() * 8 {
        let mut b = good.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        match Checkpoint::from_bytes(&b, &path) {
            Ok(_) => accepted.push(bit),
            Err(e) => assert!(e.to_string().contains("last.safetensors"), "{e}"),
        }
    }
    assert!(
        accepted.is_empty(),
        "{} of {} single-bit flips accepted (bits {:?})",
        accepted.len(),
        good.len() * 8,
        &accepted[..accepted.len().min(20)]
    );
    // Through a file, a flip in the data names the tensor.
    let mut b = good.clone();
    let last = b.len() - 1;
    b[last] ^= 0x01;
    std::fs::write(&path, &b).unwrap();
    let err = Checkpoint::load(&path).unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("last.safetensors") && msg.contains("checksum"),
        "{msg}"
    );
}

#[test]
fn non_finite_weights_name_the_checkpoint() {
    let dir = TempDir::new("nanckpt");
    let path = dir.join("best.safetensors");
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut c = small_checkpoint();
        c.insert("head.bias", vec![2], vec![0.0, bad]).unwrap();
        c.save(&path).unwrap();
        let err = Checkpoint::load(&path).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, CheckpointError::NonFinite { index: 1, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("best.safetensors") && msg.contains("head.bias"),
            "{msg}"
        );
    }
}

#[test]
fn checkpoints_without_checksums_are_refused_with_the_reason() {
    // A format-1 file (before checksums): valid safetensors, "format" = mla-checkpoint/1.
    let header = br#"{"__metadata__":{"format":"mla-checkpoint/1"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut h = header.to_vec();
    h.resize(header.len().next_multiple_of(8), b' ');
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&1.0f32.to_le_bytes());
    let err = Checkpoint::from_bytes(&bytes, Path::new("old.safetensors")).unwrap_err();
    assert!(matches!(err, CheckpointError::Unverifiable { .. }), "{err}");
    assert!(err.to_string().contains("old.safetensors"), "{err}");
    // A current file whose checksum entry was removed is corrupt, not old.
    let good = small_checkpoint().to_bytes().unwrap();
    let text = String::from_utf8_lossy(&good).into_owned();
    assert!(text.contains("mla.checksums"));
    let renamed = good
        .windows(13)
        .position(|w| w == b"mla.checksums")
        .unwrap();
    let mut b = good.clone();
    b[renamed..renamed + 13].copy_from_slice(b"mla.checksumz");
    let err = Checkpoint::from_bytes(&b, Path::new("x.safetensors")).unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
}
