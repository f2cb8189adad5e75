//! Checkpoint files: round trip, atomic replacement, validation errors.

use mla_core::Tensor;
use mla_cpu::Cpu;
use mla_models::checkpoint::{write_atomic, Checkpoint, CheckpointError, FORMAT};
use proptest::prelude::*;
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mla-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn state(epoch: u32, best: f64) -> serde_json::Value {
    serde_json::json!({"epoch": epoch, "best": best})
}

#[test]
fn round_trip_keeps_tensors_and_json_exactly() {
    let dir = scratch("roundtrip");
    let path = dir.join("best.safetensors");
    let cpu = Cpu;
    let w = Tensor::<f32, Cpu>::from_slice(
        &cpu,
        &[1.5, -0.0, f32::MIN_POSITIVE, 3e38, 7.0, -2.25],
        [2, 3],
    )
    .unwrap();
    let mut c = Checkpoint::new();
    c.insert_tensor("head.weight", &w).unwrap();
    c.insert("hgm.p", vec![], vec![0.125]).unwrap();
    c.set_json("state", &state(3, 0.9751)).unwrap();
    c.save(&path).unwrap();
    assert_eq!(listing(&dir), vec!["best.safetensors"]);

    let back = Checkpoint::load(&path).unwrap();
    let t = back.get_shaped("head.weight", &[2, 3]).unwrap();
    let bits: Vec<u32> = t.data.iter().map(|v| v.to_bits()).collect();
    let orig: Vec<u32> = w.to_vec().unwrap().iter().map(|v| v.to_bits()).collect();
    assert_eq!(bits, orig);
    assert_eq!(back.get("hgm.p").unwrap().data, vec![0.125]);
    assert_eq!(
        back.json::<serde_json::Value>("state").unwrap(),
        state(3, 0.9751)
    );
    let up = t.to_tensor(&cpu).unwrap();
    assert_eq!(up.dims(), &[2, 3]);
}

#[test]
fn saving_replaces_the_old_file_and_leaves_no_temp_file() {
    let dir = scratch("replace");
    let path = dir.join("last.safetensors");
    for epoch in 0..3u32 {
        let mut c = Checkpoint::new();
        c.insert(
            "x",
            vec![epoch as usize + 1],
            vec![epoch as f32; epoch as usize + 1],
        )
        .unwrap();
        c.set_json("state", &state(epoch, 0.0)).unwrap();
        c.save(&path).unwrap();
        assert_eq!(listing(&dir), vec!["last.safetensors"]);
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!(
            back.json::<serde_json::Value>("state").unwrap()["epoch"],
            epoch
        );
        assert_eq!(back.get("x").unwrap().shape, vec![epoch as usize + 1]);
    }
}

#[test]
fn failed_write_leaves_destination_untouched_and_no_temp() {
    let dir = scratch("fail");
    let path = dir.join("ckpt.safetensors");
    std::fs::write(&path, b"old contents").unwrap();
    // Renaming a file over a non-empty directory fails: the write must report
    // it, keep the directory, and clean up its temp file.
    let blocker = dir.join("blocker");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), b"x").unwrap();
    let err = write_atomic(&blocker, b"new").unwrap_err();
    assert!(
        matches!(err, CheckpointError::Io { op: "rename", .. }),
        "{err}"
    );
    assert_eq!(listing(&dir), vec!["blocker", "ckpt.safetensors"]);
    assert_eq!(std::fs::read(&path).unwrap(), b"old contents");
    // A missing directory is a clear error, not a panic.
    let err = write_atomic(&dir.join("no/such/dir/x.safetensors"), b"y").unwrap_err();
    assert!(err.to_string().contains("no/such/dir"), "{err}");
}

#[test]
fn validation_names_the_tensor_and_the_problem() {
    let dir = scratch("validate");
    let path = dir.join("c.safetensors");
    let mut c = Checkpoint::new();
    c.insert("encoder.image.fc.weight", vec![4, 2], vec![0.0; 8])
        .unwrap();
    c.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();

    let e = back
        .get_shaped("encoder.image.fc.weight", &[2, 4])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("encoder.image.fc.weight") && e.contains("[4, 2]") && e.contains("[2, 4]"),
        "{e}"
    );
    let e = back.get("head.weight").unwrap_err().to_string();
    assert!(
        e.contains("missing tensor `head.weight`") && e.contains("c.safetensors"),
        "{e}"
    );
    let e = back
        .reject_unknown(["head.weight"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("encoder.image.fc.weight"), "{e}");
    back.reject_unknown(["encoder.image.fc.weight"]).unwrap();
    let e = back
        .json::<serde_json::Value>("state")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`state` is missing"), "{e}");

    let e = Checkpoint::new()
        .insert("w", vec![3], vec![1.0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`w`") && e.contains("[3]"), "{e}");
}

#[test]
fn foreign_and_broken_files_are_rejected() {
    let dir = scratch("foreign");
    let e = Checkpoint::load(&dir.join("absent.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("absent.safetensors") && e.contains("read"),
        "{e}"
    );

    // A valid safetensors file without our format marker.
    let path = dir.join("foreign.safetensors");
    let bytes = safetensors_bytes_without_format();
    std::fs::write(&path, bytes).unwrap();
    let e = Checkpoint::load(&path).unwrap_err().to_string();
    assert!(e.contains(FORMAT), "{e}");

    // Truncated file.
    let mut c = Checkpoint::new();
    c.insert("w", vec![16], vec![1.0; 16]).unwrap();
    let mut b = c.to_bytes().unwrap();
    b.truncate(b.len() - 5);
    let e = Checkpoint::from_bytes(&b, &path).unwrap_err();
    assert!(matches!(e, CheckpointError::Malformed { .. }), "{e}");
}

fn safetensors_bytes_without_format() -> Vec<u8> {
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut h = header.to_vec();
    h.resize(header.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(1.0f32.to_le_bytes());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Checkpoint::from_bytes(&bytes, std::path::Path::new("fuzz.safetensors"));
    }

    #[test]
    fn any_tensor_set_round_trips(shapes in proptest::collection::vec(proptest::collection::vec(0usize..4, 0..3), 1..5)) {
        let mut c = Checkpoint::new();
        for (i, s) in shapes.iter().enumerate() {
            let n: usize = s.iter().product();
            c.insert(format!("t{i}"), s.clone(), (0..n).map(|k| k as f32 * 0.5 - i as f32).collect()).unwrap();
        }
        let b = c.to_bytes().unwrap();
        let back = Checkpoint::from_bytes(&b, std::path::Path::new("mem")).unwrap();
        for (i, s) in shapes.iter().enumerate() {
            let name = format!("t{i}");
            prop_assert_eq!(back.get_shaped(&name, s).unwrap(), c.get(&name).unwrap());
        }
    }
}
