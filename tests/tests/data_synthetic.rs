//! `mla prepare synthetic`: the dataset it writes opens with the
//! mla-dataset/1 reader with the promised shapes, labels, splits and row
//! sharing, repeats by seed, and every bad option is an error before a
//! file is written.

mod data_common;

use data_common::TempDir;
use mla_models::data::synthetic::parse_modality;
use mla_models::data::{prepare_synthetic, Dataset, SyntheticOptions};
use std::path::PathBuf;

fn opts(out: PathBuf) -> SyntheticOptions {
    SyntheticOptions {
        out,
        modalities: vec![("a".into(), vec![1, 4, 5]), ("b".into(), vec![7])],
        classes: 3,
        samples: 20,
        rows_per_class: 2,
        signal: 1.0,
        seed: 0,
    }
}

#[test]
fn writes_a_dataset_the_reader_accepts() {
    let dir = TempDir::new("synth");
    let o = opts(dir.path().join("s"));
    let r = prepare_synthetic(&o).unwrap();
    assert_eq!((r.train, r.validation, r.test), (16, 2, 2));
    assert_eq!(r.bytes, vec![6 * 20 * 4, 6 * 7 * 4]);
    let ds = Dataset::open(&o.out).unwrap();
    assert_eq!(ds.len(), 20);
    assert_eq!(ds.num_classes(), 3);
    assert_eq!(ds.modalities()[0].shape, vec![1, 4, 5]);
    assert_eq!(ds.modalities()[1].shape, vec![7]);
    for i in 0..20 {
        assert_eq!(ds.label(i), i % 3);
    }
    // Samples of one class and row share values; the rows of two
    // classes differ.
    let row = |m, i| ds.row(m, i).unwrap().unwrap().to_vec();
    assert_eq!(row(1, 0), row(1, 6));
    assert_ne!(row(1, 0), row(1, 3));
    assert_ne!(row(1, 0), row(1, 1));
    // Same seed, same files; another seed, other rows.
    let again = prepare_synthetic(&opts(dir.path().join("t"))).unwrap();
    let ds2 = Dataset::open(&again.out).unwrap();
    assert_eq!(ds2.row(0, 4).unwrap().unwrap().to_vec(), row(0, 4));
    let mut o3 = opts(dir.path().join("u"));
    o3.seed = 1;
    let ds3 = Dataset::open(prepare_synthetic(&o3).unwrap().out).unwrap();
    assert_ne!(ds3.row(0, 4).unwrap().unwrap().to_vec(), row(0, 4));
}

/// A change to valid options, and a word its error must contain.
type BadCase = (Box<dyn Fn(&mut SyntheticOptions)>, &'static str);

#[test]
fn bad_options_are_errors_before_anything_is_written() {
    let dir = TempDir::new("synth");
    let cases: Vec<BadCase> = vec![
        (Box::new(|o| o.modalities.clear()), "at least one modality"),
        (Box::new(|o| o.modalities[1].0 = "a".into()), "given twice"),
        (
            Box::new(|o| o.modalities[1].0 = "a/b".into()),
            "ASCII letters",
        ),
        (Box::new(|o| o.classes = 1), "--classes"),
        (Box::new(|o| o.samples = 9), "--samples"),
        (Box::new(|o| o.rows_per_class = 0), "--rows-per-class"),
        (Box::new(|o| o.signal = f64::NAN), "--signal"),
        (
            Box::new(|o| o.modalities[0].1 = vec![1 << 20, 1 << 20]),
            "exceed 8 GiB",
        ),
        (
            Box::new(|o| o.modalities[0].1 = vec![usize::MAX, 2]),
            "exceed 8 GiB",
        ),
    ];
    for (edit, want) in cases {
        let mut o = opts(dir.path().join("x"));
        edit(&mut o);
        let e = prepare_synthetic(&o).unwrap_err().to_string();
        assert!(e.contains(want), "{e:?} lacks {want:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
    let filled = dir.path().join("full");
    std::fs::create_dir(&filled).unwrap();
    std::fs::write(filled.join("f"), b"x").unwrap();
    assert!(prepare_synthetic(&opts(filled)).is_err());
}

#[test]
fn modality_specs_parse() {
    assert_eq!(
        parse_modality("audio=1x257x188").unwrap(),
        ("audio".to_string(), vec![1, 257, 188])
    );
    for bad in ["audio", "a=1x0", "a=1xx2", "a=-1", "a="] {
        assert!(parse_modality(bad).is_err(), "{bad}");
    }
}
