//! The raw-source parsers (IDX, WAV, FSDD names) and the audio pipeline against the
//! independent NumPy reference values in golden/.

mod data_common;

use std::path::Path;

use data_common::*;
use mla_models::data::avmnist::audio::{self, mel_filterbank, LogMel};
use mla_models::data::avmnist::idx::{parse_idx, read_idx};
use mla_models::data::avmnist::prepare::{list_fsdd, pair_audio};
use mla_models::data::avmnist::wav::{encode_wav, parse_wav, read_wav};
use mla_models::data::npy::read_npy_f64;
use mla_models::data::{DataError, Split};
use proptest::prelude::*;

#[test]
fn idx_roundtrip_plain_and_gzip() {
    let dir = TempDir::new("idx");
    let data: Vec<u8> = (0..2 * 3 * 4).map(|i| (i * 11) as u8).collect();
    let bytes = idx_bytes(&[2, 3, 4], &data);
    std::fs::write(dir.join("a"), &bytes).unwrap();
    std::fs::write(dir.join("a.gz"), gzip(&bytes)).unwrap();
    for name in ["a", "a.gz"] {
        let a = read_idx(&dir.join(name)).unwrap();
        assert_eq!(a.dims, vec![2, 3, 4]);
        assert_eq!(a.data, data);
    }
}

#[test]
fn idx_errors_name_the_problem() {
    let p = Path::new("x-idx");
    let good = idx_bytes(&[3, 2], &[1, 2, 3, 4, 5, 6]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0, 0], "too short"),
        ([&[1u8, 0], &good[2..]].concat(), "not an IDX file"),
        (
            [&good[..2], &[0x0d], &good[3..]].concat(),
            "not unsigned byte",
        ),
        (good[..good.len() - 1].to_vec(), "need 6 bytes"),
        ([good.as_slice(), &[9]].concat(), "found 7"),
        (vec![0, 0, 8, 3, 0, 0, 0, 1], "inside the header"),
    ];
    for (bytes, needle) in cases {
        let err = parse_idx(&bytes, p).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, DataError::Idx { .. }) && msg.contains(needle) && msg.contains("x-idx"),
            "{msg}"
        );
    }
    let dir = TempDir::new("idxgz");
    let mut gz = gzip(&good);
    let n = gz.len();
    gz.truncate(n - 12);
    std::fs::write(dir.join("t.gz"), gz).unwrap();
    let msg = read_idx(&dir.join("t.gz")).unwrap_err().to_string();
    assert!(msg.contains("gzip"), "{msg}");
    assert!(matches!(
        read_idx(&dir.join("absent.gz")),
        Err(DataError::MissingFile { .. })
    ));
}

#[test]
fn wav_parses_pcm16_with_extra_chunks() {
    let samples: Vec<i16> = (0..101).map(|i| (i * 300 - 15000) as i16).collect();
    let w = parse_wav(&wav_bytes(8000, &samples), Path::new("x.wav")).unwrap();
    assert_eq!(w.sample_rate, 8000);
    assert_eq!(w.samples, samples);
    assert_eq!(
        parse_wav(&encode_wav(8000, &samples), Path::new("x.wav"))
            .unwrap()
            .samples,
        samples
    );
}

#[test]
fn wav_rejects_other_formats() {
    let good = wav_bytes(8000, &[1, 2, 3, 4]);
    let fmt = 20; // offset of the fmt chunk body
    let with = |off: usize, val: &[u8]| {
        let mut b = good.clone();
        b[off..off + val.len()].copy_from_slice(val);
        b
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"RIFX\0\0\0\0WAVE".to_vec(), "not a RIFF/WAVE"),
        (with(fmt, &3u16.to_le_bytes()), "not PCM"),
        (with(fmt + 2, &2u16.to_le_bytes()), "channels"),
        (with(fmt + 14, &8u16.to_le_bytes()), "8 bits"),
        (good[..good.len() - 3].to_vec(), "past the end"),
        (good[..12].to_vec(), "no fmt chunk"),
        (good[..44 - 8 + 4].to_vec(), "no data chunk"),
    ];
    for (bytes, needle) in cases {
        let err = parse_wav(&bytes, Path::new("bad.wav")).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, DataError::Wav { .. }) && msg.contains(needle) && msg.contains("bad.wav"),
            "{needle}: {msg}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_bytes_never_panic_the_parsers(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
        let _ = parse_wav(&bytes, Path::new("r.wav"));
        let _ = parse_idx(&bytes, Path::new("r.idx"));
        let mut riff = b"RIFF\0\0\0\0WAVE".to_vec();
        riff.extend_from_slice(&bytes);
        let _ = parse_wav(&riff, Path::new("r.wav"));
    }
}

#[test]
fn fsdd_listing_orders_by_digit_speaker_integer_index() {
    let dir = TempDir::new("fsdd");
    for name in [
        "1_bob_10.wav",
        "1_bob_2.wav",
        "0_zed_5.wav",
        "1_amy_7.wav",
        "README.md",
    ] {
        std::fs::write(dir.join(name), encode_wav(8000, &[0; 10])).unwrap();
    }
    let recs = list_fsdd(dir.path()).unwrap();
    let got: Vec<(u8, &str, u32)> = recs
        .iter()
        .map(|r| (r.digit, r.speaker.as_str(), r.index))
        .collect();
    assert_eq!(
        got,
        vec![(0, "zed", 5), (1, "amy", 7), (1, "bob", 2), (1, "bob", 10)]
    );
    std::fs::write(dir.join("one_bob_1.wav"), b"").unwrap();
    let msg = list_fsdd(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("one_bob_1.wav"), "{msg}");
}

#[test]
fn pairing_respects_digit_and_split_speakers() {
    let dir = TempDir::new("pair");
    for d in 0..10 {
        for s in ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"] {
            for i in 0..3 {
                std::fs::write(dir.join(&format!("{d}_{s}_{i}.wav")), b"").unwrap();
            }
        }
    }
    let recs = list_fsdd(dir.path()).unwrap();
    let labels: Vec<u8> = (0..6000).map(|i| ((i * 7) % 10) as u8).collect();
    let splits: Vec<Split> = (0..6000)
        .map(|i| [Split::Train, Split::Validation, Split::Test][i % 3])
        .collect();
    let idx = pair_audio(&labels, &splits, &recs, 4).unwrap();
    let mut used = vec![0usize; recs.len()];
    for i in 0..6000 {
        let r = &recs[idx[i] as usize];
        assert_eq!(r.digit, labels[i]);
        let allowed: &[&str] = match splits[i] {
            Split::Train => &["george", "jackson", "lucas", "nicolas"],
            Split::Validation => &["yweweler"],
            Split::Test => &["theo"],
        };
        assert!(
            allowed.contains(&r.speaker.as_str()),
            "sample {i} ({}) paired with {}",
            splits[i],
            r.speaker
        );
        used[idx[i] as usize] += 1;
    }
    // 2000 train samples over 120 train recordings: every one gets drawn.
    assert!(recs
        .iter()
        .zip(&used)
        .all(|(r, &u)| u > 0 || r.speaker == "theo" || r.speaker == "yweweler"));
    assert_eq!(idx, pair_audio(&labels, &splits, &recs, 4).unwrap());
    assert_ne!(idx, pair_audio(&labels, &splits, &recs, 5).unwrap());
    // A digit with no recording for a split's speakers is an error, not a panic.
    let only_train: Vec<_> = recs
        .iter()
        .filter(|r| r.speaker != "theo")
        .cloned()
        .collect();
    assert!(pair_audio(&labels, &splits, &only_train, 4).is_err());
}

#[test]
fn mel_filterbank_matches_golden() {
    let Some(raw) = avmnist_raw() else { return };
    let (shape, golden) = read_npy_f64(raw.join("golden/mel_filterbank.npy")).unwrap();
    assert_eq!(shape, vec![40, 129]);
    let fb = mel_filterbank(40, 256, 8000.0, 0.0, 4000.0);
    let worst = fb
        .iter()
        .zip(&golden)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-9, "max |difference| {worst}");
}

#[test]
fn log_mel_matches_golden() {
    let Some(raw) = avmnist_raw() else { return };
    let (shape, golden) = read_npy_f64(raw.join("golden/logmel.npy")).unwrap();
    assert_eq!(shape, vec![8, 40, 63]);
    let files = std::fs::read_to_string(raw.join("golden/files.txt")).unwrap();
    let names: Vec<&str> = files.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(names.len(), 8);
    let lm = LogMel::new();
    let per = audio::N_MELS * audio::N_FRAMES;
    for (i, name) in names.iter().enumerate() {
        let wav = read_wav(&raw.join("fsdd").join(name.trim())).unwrap();
        let ours = lm.compute(&wav.samples);
        assert_eq!(ours.len(), per);
        let worst = ours
            .iter()
            .zip(&golden[i * per..(i + 1) * per])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!("{name}: max abs log-mel difference {worst:.3e}");
        // f64 throughout (the reference is f64 NumPy); the stored f32 rows are checked elsewhere.
        assert!(worst < 1e-9, "{name}: max |difference| {worst}");
    }
}
