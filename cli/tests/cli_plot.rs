//! `mla plot`: synthetic `metrics.jsonl` files (no training) drawn into an
//! SVG, and every bad input ending in one error line naming the file.

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_mla");

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("mla-cli-plot-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mla(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run mla")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a command that must fail with exactly one `error:` line; returns it.
fn fails(args: &[&str]) -> String {
    let out = mla(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mla {args:?} should fail: {err}");
    assert!(!err.contains("panicked"), "mla {args:?} panicked: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(
        errors.len(),
        1,
        "mla {args:?}: expected one error line: {err}"
    );
    errors[0].to_string()
}

/// One line as `mla train` writes it (the fields that matter here).
fn record(epoch: usize, acc: f64) -> serde_json::Value {
    json!({
        "epoch": epoch,
        "train_loss": 2.0 / epoch as f64,
        "val": {
            "samples": 100,
            "fused_accuracy": acc,
            "loss": 1.0 / epoch as f64,
            "fused_macro_f1": acc * 0.9,
            "fusion_rule": "entropy",
            "modality_accuracy": {"audio": acc - 0.1, "image": acc - 0.05}
        },
        "best": true,
        "train_samples": 1000,
        "train_seconds": 1.5,
        "epoch_seconds": 2.0,
        "samples_per_second": 666.0
    })
}

/// A run directory `dir/name` whose metrics.jsonl has one line per accuracy.
fn run_dir(dir: &TempDir, name: &str, accs: &[f64]) -> PathBuf {
    let run = dir.join(name);
    std::fs::create_dir_all(&run).unwrap();
    let text: String = accs
        .iter()
        .enumerate()
        .map(|(i, &a)| format!("{}\n", record(i + 1, a)))
        .collect();
    std::fs::write(run.join("metrics.jsonl"), text).unwrap();
    run
}

/// The trimmed contents of the SVG's `<text>` elements.
fn texts(svg: &str) -> Vec<&str> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| Some(t[t.find('>')? + 1..t.find("</text>")?].trim()))
        .collect()
}

/// The `fill` colour of each `<circle>` (one per plotted point), in order.
fn circle_fills(svg: &str) -> Vec<&str> {
    svg.split("<circle")
        .skip(1)
        .map(|c| {
            let f = &c[c.find("fill=\"").expect("circle fill") + 6..];
            &f[..f.find('"').unwrap()]
        })
        .collect()
}

fn plot_ok(args: &[&str]) -> String {
    let out = mla(args);
    assert!(
        out.status.success(),
        "mla {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out_path = args[args.iter().position(|a| *a == "--out").unwrap() + 1];
    std::fs::read_to_string(out_path).unwrap()
}

#[test]
fn plots_one_curve_per_run_with_one_marker_per_epoch() {
    let dir = TempDir::new("ok");
    let a = run_dir(&dir, "mla-seed0", &[0.5, 0.6, 0.7, 0.75]);
    let b = run_dir(&dir, "joint-seed0", &[0.4, 0.55]);
    let out = dir.join("acc.svg");
    let svg = plot_ok(&["plot", s(&a), s(&b), "--out", s(&out)]);
    let trimmed = svg.trim();
    assert!(
        trimmed.starts_with("<svg") || trimmed.starts_with("<?xml"),
        "{svg}"
    );
    assert!(trimmed.ends_with("</svg>"), "{svg}");
    let texts = texts(&svg);
    for want in ["mla-seed0", "joint-seed0", "epoch", "val.fused_accuracy"] {
        assert!(texts.contains(&want), "{want} missing from {texts:?}");
    }
    // One marker per epoch, in the series' order and each series in its own colour.
    let fills = circle_fills(&svg);
    assert_eq!(fills.len(), 4 + 2, "{svg}");
    assert!(fills[..4].iter().all(|f| *f == fills[0]), "{fills:?}");
    assert!(fills[4..].iter().all(|f| *f == fills[4]), "{fills:?}");
    assert_ne!(fills[0], fills[4]);
    // No temporary file is left next to the plot.
    let mut names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["acc.svg", "joint-seed0", "mla-seed0"]);
}

#[test]
fn metric_and_title_flags_choose_what_is_drawn() {
    let dir = TempDir::new("metric");
    let a = run_dir(&dir, "r1", &[0.5, 0.6, 0.7]);
    let out = dir.join("audio.svg");
    let svg = plot_ok(&[
        "plot",
        s(&a),
        "--out",
        s(&out),
        "--metric",
        "val.modality_accuracy.audio",
        "--title",
        "Audio alone",
    ]);
    let labels = texts(&svg);
    assert!(labels.contains(&"Audio alone"), "{labels:?}");
    assert!(
        labels.contains(&"val.modality_accuracy.audio"),
        "{labels:?}"
    );
    assert_eq!(circle_fills(&svg).len(), 3);

    // A lone epoch of a flat metric still draws, and `.` is named after the directory.
    let one = run_dir(&dir, "single", &[0.5]);
    let out = dir.join("loss.svg");
    let plotted = Command::new(BIN)
        .current_dir(&one)
        .args(["plot", ".", "--out", s(&out), "--metric", "train_loss"])
        .output()
        .unwrap();
    assert!(plotted.status.success(), "{plotted:?}");
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(texts(&svg).contains(&"single"), "{svg}");
    assert_eq!(circle_fills(&svg).len(), 1);
}

#[test]
fn bad_inputs_are_one_error_naming_the_file() {
    let dir = TempDir::new("bad");
    let out = dir.join("p.svg");
    let good = run_dir(&dir, "good", &[0.5, 0.6]);

    // No metrics.jsonl.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = fails(&["plot", s(&good), s(&empty), "--out", s(&out)]);
    assert!(
        e.contains(s(&empty)) && e.contains("no metrics.jsonl"),
        "{e}"
    );

    // A malformed line: the file and its line number.
    let broken = run_dir(&dir, "broken", &[0.5]);
    let metrics = broken.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"epoch\": 2, \"val\": \n");
    std::fs::write(&metrics, text).unwrap();
    let e = fails(&["plot", s(&broken), "--out", s(&out)]);
    assert!(e.contains(s(&metrics)) && e.contains("line 2"), "{e}");

    // A metric absent from a line: named, with the line's numeric metrics.
    let e = fails(&["plot", s(&good), "--out", s(&out), "--metric", "val.nope"]);
    assert!(
        e.contains("`val.nope` is absent") && e.contains(s(&good.join("metrics.jsonl"))),
        "{e}"
    );
    assert!(e.contains("line 1"), "{e}");
    for path in [
        "train_loss",
        "val.fused_accuracy",
        "val.modality_accuracy.audio",
    ] {
        assert!(e.contains(path), "{path} not listed: {e}");
    }
    // ... also when only a later line lacks it.
    let partial = run_dir(&dir, "partial", &[0.5, 0.6]);
    let metrics = partial.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"epoch\": 3, \"train_loss\": 0.1}\n");
    std::fs::write(&metrics, text).unwrap();
    let e = fails(&["plot", s(&partial), "--out", s(&out)]);
    assert!(
        e.contains("line 3") && e.contains("numeric metrics: epoch, train_loss"),
        "{e}"
    );

    // A metrics file over 64 MiB (sparse: nothing is written to disk).
    let huge = dir.join("huge");
    std::fs::create_dir_all(&huge).unwrap();
    let f = std::fs::File::create(huge.join("metrics.jsonl")).unwrap();
    f.set_len((64 << 20) + 1).unwrap();
    let e = fails(&["plot", s(&huge), "--out", s(&out)]);
    assert!(
        e.contains(s(&huge.join("metrics.jsonl"))) && e.contains("64 MiB"),
        "{e}"
    );

    // An output directory that does not exist.
    let nowhere = dir.join("no/such/p.svg");
    let e = fails(&["plot", s(&good), "--out", s(&nowhere)]);
    assert!(
        e.contains(s(&nowhere)) && e.contains("does not exist"),
        "{e}"
    );

    // No failure wrote a plot.
    assert!(!out.exists());
}
