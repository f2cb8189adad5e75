//! The mla-dataset/1 reader: a valid dataset reads back exactly; every malformed case of
//! DATASET-FORMAT.md gives its own error naming the file; random bytes never panic.

mod data_common;

use data_common::*;
use mla_models::data::npy::{encode_header, parse_header, write_npy};
use mla_models::data::{DataError, Dataset, Split};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::Path;

fn fixture() -> TempDir {
    let dir = TempDir::new("fmt");
    write_fixture(dir.path());
    dir
}

/// Opens `dir`, expecting an error whose message names `file`.
fn open_err(dir: &TempDir, file: &str) -> DataError {
    let err = Dataset::open(dir.path()).expect_err("malformed dataset opened");
    let msg = err.to_string();
    assert!(msg.contains(file), "error {msg:?} does not name {file}");
    err
}

#[test]
fn valid_dataset_reads_back() {
    let dir = fixture();
    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(ds.name(), "fixture");
    assert_eq!(ds.dir(), dir.path());
    assert_eq!(ds.num_classes(), 3);
    assert_eq!(ds.class_names(), ["zero", "one", "two"]);
    assert_eq!(ds.len(), N);
    assert_eq!(ds.modalities().len(), 2);
    assert_eq!(ds.modalities()[0].name, "a");
    assert_eq!(ds.modalities()[0].shape, vec![2, 3]);
    assert_eq!(ds.modalities()[1].shape, vec![5]);
    assert_eq!(ds.modality_index("b"), Some(1));
    assert_eq!(ds.modality_index("c"), None);
    assert_eq!(ds.manifest()["recipe"]["made_by"], "test");
    for i in 0..N {
        assert_eq!(ds.label(i), LABELS[i] as usize);
        assert_eq!(
            ds.split_of(i).to_string(),
            ["train", "validation", "test"][SPLIT[i] as usize]
        );
        let a = ds.row(0, i).unwrap();
        if A_INDEX[i] < 0 {
            assert!(a.is_none());
        } else {
            let r = A_INDEX[i] as usize;
            assert_eq!(a.unwrap(), &a_rows()[r * 6..(r + 1) * 6]);
        }
        assert_eq!(
            ds.row(1, i).unwrap().unwrap(),
            &b_rows()[i * 5..(i + 1) * 5]
        );
    }
    assert_eq!(ds.indices(Split::Train), vec![0, 1, 4]);
    assert_eq!(ds.indices(Split::Validation), vec![2]);
    assert_eq!(ds.indices(Split::Test), vec![3, 5]);
    assert!(matches!(
        ds.row(0, N),
        Err(DataError::SampleOutOfRange { .. })
    ));
    assert!(matches!(
        ds.row(2, 0),
        Err(DataError::ModalityOutOfRange { .. })
    ));
}

#[test]
fn optional_fields_default() {
    let dir = fixture();
    let mut m = manifest();
    m.as_object_mut().unwrap().remove("class_names");
    m.as_object_mut().unwrap().remove("name");
    write_manifest(dir.path(), &m);
    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(ds.class_names(), ["0", "1", "2"]);
    assert!(!ds.name().is_empty());
}

#[test]
fn version_2_header_accepted() {
    let dir = fixture();
    let mut bytes = encode_header("<f4", false, &[N, 5]);
    // Re-encode the same dictionary with a 4-byte length field (format 2.0).
    let text = bytes[10..].to_vec();
    bytes = b"\x93NUMPY\x02\x00".to_vec();
    bytes.extend_from_slice(&(text.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&text);
    bytes.extend_from_slice(&f32_bytes(&b_rows()));
    std::fs::write(dir.join("b.npy"), bytes).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(ds.row(1, 3).unwrap().unwrap(), &b_rows()[15..20]);
}

#[test]
fn missing_files() {
    let dir = fixture();
    std::fs::remove_file(dir.join("b.npy")).unwrap();
    assert!(matches!(
        open_err(&dir, "b.npy"),
        DataError::MissingFile { .. }
    ));
    let dir = fixture();
    std::fs::remove_file(dir.join("dataset.json")).unwrap();
    assert!(matches!(
        open_err(&dir, "dataset.json"),
        DataError::MissingFile { .. }
    ));
    let dir = fixture();
    std::fs::remove_file(dir.join("a_index.npy")).unwrap();
    assert!(matches!(
        open_err(&dir, "a_index.npy"),
        DataError::MissingFile { .. }
    ));
}

#[test]
fn unreadable_files() {
    let dir = fixture();
    std::fs::remove_file(dir.join("labels.npy")).unwrap();
    std::fs::create_dir(dir.join("labels.npy")).unwrap();
    // A directory where a file belongs is refused before it is opened.
    assert!(matches!(
        open_err(&dir, "labels.npy"),
        DataError::NotRegularFile { .. }
    ));
    let dir = fixture();
    std::fs::remove_file(dir.join("dataset.json")).unwrap();
    std::fs::create_dir(dir.join("dataset.json")).unwrap();
    assert!(matches!(
        open_err(&dir, "dataset.json"),
        DataError::NotRegularFile { .. }
    ));
}

#[test]
fn bad_manifests() {
    let dir = fixture();
    std::fs::write(dir.join("dataset.json"), b"{\"format\": \"mla-dataset/1\",").unwrap();
    assert!(matches!(
        open_err(&dir, "dataset.json"),
        DataError::ManifestJson { .. }
    ));

    let mut m = manifest();
    m["format"] = json!("mla-dataset/2");
    write_manifest(dir.path(), &m);
    assert!(matches!(
        open_err(&dir, "dataset.json"),
        DataError::UnknownFormat { .. }
    ));
    m.as_object_mut().unwrap().remove("format");
    write_manifest(dir.path(), &m);
    assert!(matches!(
        open_err(&dir, "dataset.json"),
        DataError::UnknownFormat { .. }
    ));

    for (field, value) in [
        ("num_classes", json!(0)),
        ("num_classes", json!("3")),
        ("class_names", json!(["x"])),
        ("modalities", json!([])),
        (
            "modalities",
            json!([{"name": "a", "data": "a.npy", "index": "a_index.npy"}, {"name": "a", "data": "b.npy"}]),
        ),
        ("modalities", json!([{"data": "b.npy"}])),
        ("labels", json!(7)),
    ] {
        let mut m = manifest();
        m[field] = value;
        write_manifest(dir.path(), &m);
        let err = open_err(&dir, "dataset.json");
        assert!(matches!(err, DataError::Manifest { .. }), "{field}: {err}");
    }
}

#[test]
fn paths_may_not_leave_the_directory() {
    let dir = fixture();
    for bad in ["../labels.npy", "/etc/passwd", "sub/../../x.npy", ""] {
        let mut m = manifest();
        m["labels"] = json!(bad);
        write_manifest(dir.path(), &m);
        let err = open_err(&dir, "dataset.json");
        assert!(matches!(err, DataError::PathEscapes { .. }), "{bad}: {err}");
        let mut m = manifest();
        m["modalities"][1]["data"] = json!(bad);
        write_manifest(dir.path(), &m);
        assert!(matches!(
            open_err(&dir, "dataset.json"),
            DataError::PathEscapes { .. }
        ));
    }
    // Subdirectories inside DIR are fine.
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::copy(dir.join("labels.npy"), dir.join("sub/labels.npy")).unwrap();
    let mut m = manifest();
    m["labels"] = json!("./sub/labels.npy");
    write_manifest(dir.path(), &m);
    Dataset::open(dir.path()).unwrap();
}

#[test]
fn unparseable_headers() {
    let dir = fixture();
    let cases: Vec<Vec<u8>> = vec![
        b"PK\x03\x04 this is a zip file, not npy at all".to_vec(),
        b"\x93NUMPY\x01\x00\xff\xff{'descr'".to_vec(),
        b"\x93NUMPY\x03\x00\x10\x00{'descr': '<f4'}   \n".to_vec(),
        {
            let text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (6, 5 }\n";
            let mut v = b"\x93NUMPY\x01\x00".to_vec();
            v.extend_from_slice(&(text.len() as u16).to_le_bytes());
            v.extend_from_slice(text);
            v
        },
        {
            let text = b"{'descr': '<f4', 'fortran_order': False}\n";
            let mut v = b"\x93NUMPY\x01\x00".to_vec();
            v.extend_from_slice(&(text.len() as u16).to_le_bytes());
            v.extend_from_slice(text);
            v
        },
        b"\x93NU".to_vec(),
        Vec::new(),
    ];
    for bytes in cases {
        std::fs::write(dir.join("b.npy"), &bytes).unwrap();
        let err = open_err(&dir, "b.npy");
        assert!(matches!(err, DataError::NpyHeader { .. }), "{err}");
    }
}

#[test]
fn wrong_dtype() {
    let dir = fixture();
    write_npy(dir.join("labels.npy"), &[N], &LABELS.map(|x| x as f32)).unwrap();
    assert!(matches!(
        open_err(&dir, "labels.npy"),
        DataError::NpyDtype { .. }
    ));
    let dir = fixture();
    write_npy(
        dir.join("b.npy"),
        &[N, 5],
        &b_rows().iter().map(|&x| x as f64).collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(matches!(
        open_err(&dir, "b.npy"),
        DataError::NpyDtype { .. }
    ));
    let dir = fixture();
    write_raw_npy(&dir.join("split.npy"), "<i4", false, &[N], &[0u8; 4 * N]);
    assert!(matches!(
        open_err(&dir, "split.npy"),
        DataError::NpyDtype { .. }
    ));
}

#[test]
fn big_endian_rejected() {
    let dir = fixture();
    let be: Vec<u8> = b_rows().iter().flat_map(|x| x.to_be_bytes()).collect();
    write_raw_npy(&dir.join("b.npy"), ">f4", false, &[N, 5], &be);
    assert!(matches!(
        open_err(&dir, "b.npy"),
        DataError::NpyByteOrder { .. }
    ));
    let dir = fixture();
    let be: Vec<u8> = LABELS.iter().flat_map(|x| x.to_be_bytes()).collect();
    write_raw_npy(&dir.join("labels.npy"), ">i8", false, &[N], &be);
    assert!(matches!(
        open_err(&dir, "labels.npy"),
        DataError::NpyByteOrder { .. }
    ));
}

#[test]
fn fortran_order_rejected() {
    let dir = fixture();
    write_raw_npy(
        &dir.join("b.npy"),
        "<f4",
        true,
        &[N, 5],
        &f32_bytes(&b_rows()),
    );
    assert!(matches!(
        open_err(&dir, "b.npy"),
        DataError::NpyFortranOrder { .. }
    ));
}

#[test]
fn truncated_data() {
    let dir = fixture();
    let bytes = f32_bytes(&b_rows());
    write_raw_npy(
        &dir.join("b.npy"),
        "<f4",
        false,
        &[N, 5],
        &bytes[..bytes.len() - 1],
    );
    assert!(matches!(
        open_err(&dir, "b.npy"),
        DataError::NpyTruncated { .. }
    ));
    let dir = fixture();
    write_raw_npy(
        &dir.join("a_index.npy"),
        "<i8",
        false,
        &[N],
        &i64_bytes(&A_INDEX)[..8],
    );
    assert!(matches!(
        open_err(&dir, "a_index.npy"),
        DataError::NpyTruncated { .. }
    ));
    // A header promising an absurd amount of data is "truncated", not an overflow panic.
    let dir = fixture();
    write_raw_npy(&dir.join("b.npy"), "<f4", false, &[usize::MAX / 2, 3], &[]);
    assert!(matches!(
        open_err(&dir, "b.npy"),
        DataError::NpyTruncated { .. } | DataError::NpyHeader { .. }
    ));
}

#[test]
fn labels_out_of_range() {
    for bad in [3i64, -1, i64::MAX] {
        let dir = fixture();
        let mut labels = LABELS;
        labels[4] = bad;
        write_npy(dir.join("labels.npy"), &[N], &labels).unwrap();
        match open_err(&dir, "labels.npy") {
            DataError::LabelOutOfRange { sample, value, .. } => {
                assert_eq!((sample, value), (4, bad))
            }
            e => panic!("{e}"),
        }
    }
}

#[test]
fn split_values_checked() {
    let dir = fixture();
    let mut split = SPLIT;
    split[1] = 3;
    write_npy(dir.join("split.npy"), &[N], &split).unwrap();
    assert!(matches!(
        open_err(&dir, "split.npy"),
        DataError::InvalidSplit {
            sample: 1,
            value: 3,
            ..
        }
    ));
}

#[test]
fn index_out_of_range() {
    for bad in [4i64, -2, i64::MIN] {
        let dir = fixture();
        let mut idx = A_INDEX;
        idx[3] = bad;
        write_npy(dir.join("a_index.npy"), &[N], &idx).unwrap();
        match open_err(&dir, "a_index.npy") {
            DataError::IndexOutOfRange {
                sample,
                value,
                rows,
                ..
            } => assert_eq!((sample, value, rows), (3, bad, 4)),
            e => panic!("{e}"),
        }
    }
}

#[test]
fn length_mismatches() {
    let dir = fixture();
    write_npy(dir.join("split.npy"), &[N - 1], &SPLIT[..N - 1]).unwrap();
    assert!(matches!(
        open_err(&dir, "split.npy"),
        DataError::LengthMismatch { .. }
    ));
    let dir = fixture();
    write_npy(
        dir.join("a_index.npy"),
        &[N + 1],
        &[A_INDEX.as_slice(), &[0]].concat(),
    )
    .unwrap();
    assert!(matches!(
        open_err(&dir, "a_index.npy"),
        DataError::LengthMismatch { .. }
    ));
    // Without an index file the data file must have one row per sample.
    let dir = fixture();
    write_npy(dir.join("b.npy"), &[N - 1, 5], &b_rows()[..(N - 1) * 5]).unwrap();
    assert!(matches!(
        open_err(&dir, "b.npy"),
        DataError::LengthMismatch { .. }
    ));
    // Labels must be a vector.
    let dir = fixture();
    write_npy(dir.join("labels.npy"), &[2, 3], &LABELS).unwrap();
    assert!(matches!(
        open_err(&dir, "labels.npy"),
        DataError::NpyShape { .. }
    ));
}

#[test]
fn every_modality_missing() {
    let dir = fixture();
    // Give "b" an index too, missing exactly where "a" is missing for sample 5.
    write_npy(dir.join("b_index.npy"), &[N], &[0i64, 1, 2, 3, 4, -1]).unwrap();
    let mut m = manifest();
    m["modalities"][1]["index"] = json!("b_index.npy");
    write_manifest(dir.path(), &m);
    match open_err(&dir, "dataset.json") {
        DataError::AllModalitiesMissing { sample, .. } => assert_eq!(sample, 5),
        e => panic!("{e}"),
    }
    // Missing "b" where "a" is present is fine.
    write_npy(dir.join("b_index.npy"), &[N], &[-1i64, 1, 2, -1, 4, 5]).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    assert!(ds.row(1, 0).unwrap().is_none());
    assert_eq!(ds.row(1, 5).unwrap().unwrap(), &b_rows()[25..30]);
}

#[test]
fn non_finite_values_rejected_on_read() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let dir = fixture();
        let mut rows = a_rows();
        rows[6 + 4] = bad; // row 1, element 4: used by sample 3 only
        write_npy(dir.join("a.npy"), &[4, 2, 3], &rows).unwrap();
        let ds = Dataset::open(dir.path()).unwrap();
        assert!(ds.row(0, 0).unwrap().is_some());
        let err = ds.row(0, 3).expect_err("non-finite row read");
        assert!(err.to_string().contains("a.npy"), "{err}");
        match err {
            DataError::NonFinite {
                sample,
                row,
                element,
                ..
            } => assert_eq!((sample, row, element), (3, 1, 4)),
            e => panic!("{e}"),
        }
    }
}

#[test]
fn misaligned_data_is_copied_not_misread() {
    // A hand-written header of odd length puts f32 data at an unaligned offset.
    let dir = fixture();
    let mut text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (6, 5)}".to_vec();
    while (10 + text.len() + 1) % 4 != 1 {
        text.push(b' ');
    }
    text.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&text);
    assert_ne!(bytes.len() % 4, 0);
    bytes.extend_from_slice(&f32_bytes(&b_rows()));
    std::fs::write(dir.join("b.npy"), bytes).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    for i in 0..N {
        assert_eq!(
            ds.row(1, i).unwrap().unwrap(),
            &b_rows()[i * 5..(i + 1) * 5]
        );
    }
}

fn valid_header_bytes() -> Vec<u8> {
    encode_header("<f4", false, &[N, 5])
}

/// Arbitrary JSON values, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|x| json!(x)),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| json!(x)),
        "[a-z./_0-9-]{0,12}".prop_map(Value::String),
        Just(json!("mla-dataset/1")),
        Just(json!("a.npy")),
        Just(json!("labels.npy")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,12}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_as_npy_header_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_header(&bytes, Path::new("x.npy"));
        // Behind a valid magic and version too, so the dictionary parser gets exercised.
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        v.extend_from_slice(&bytes);
        let _ = parse_header(&v, Path::new("x.npy"));
    }

    #[test]
    fn mutated_headers_never_panic(pos in 0usize..128, byte in any::<u8>(), cut in 0usize..200) {
        let mut h = valid_header_bytes();
        let p = pos % h.len();
        h[p] = byte;
        h.truncate(cut.max(1));
        let _ = parse_header(&h, Path::new("x.npy"));
    }

    #[test]
    fn header_like_text_never_panics(text in "[{}()\\[\\]'\":, a-z_<>0-9TrueFalsLN-]{0,80}") {
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(text.len() as u16).to_le_bytes());
        v.extend_from_slice(text.as_bytes());
        let _ = parse_header(&v, Path::new("x.npy"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_npy_files_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), keep_magic in any::<bool>()) {
        let dir = fixture();
        let mut v = bytes;
        if keep_magic && v.len() >= 10 {
            v[..8].copy_from_slice(b"\x93NUMPY\x01\x00");
        }
        std::fs::write(dir.join("a_index.npy"), &v).unwrap();
        prop_assert!(Dataset::open(dir.path()).is_err());
    }

    #[test]
    fn random_manifest_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let dir = fixture();
        std::fs::write(dir.join("dataset.json"), &bytes).unwrap();
        let _ = Dataset::open(dir.path());
    }

    #[test]
    fn random_manifests_never_panic(value in json_value(), field in 0usize..9) {
        let dir = fixture();
        let _ = std::fs::write(dir.join("dataset.json"), serde_json::to_vec(&value).unwrap());
        let _ = Dataset::open(dir.path());
        // A random value in one place of an otherwise valid manifest.
        let mut m = manifest();
        match field {
            0 => m["format"] = value,
            1 => m["num_classes"] = value,
            2 => m["class_names"] = value,
            3 => m["labels"] = value,
            4 => m["split"] = value,
            5 => m["modalities"] = value,
            6 => m["modalities"][0] = value,
            7 => m["modalities"][0]["index"] = value,
            _ => m["modalities"][1]["data"] = value,
        }
        write_manifest(dir.path(), &m);
        let _ = Dataset::open(dir.path());
    }
}
