//! The `mla` binary: train / resume / eval / bench on a small synthetic
//! dataset, and every bad-input path ending in one clear error line and a
//! non-zero exit.

mod cli_common;
#[path = "../../tests/tests/trainer_common/mod.rs"]
mod trainer_common;

use cli_common::{fails, json, mla, ok, s};

use serde_json::Value;
use std::path::Path;
use trainer_common::{synthetic, Synthetic, TempDir};

const QUICK: [&str; 10] = [
    "--batch-size",
    "32",
    "--lr",
    "0.02",
    "--backend",
    "cpu",
    "--threads",
    "2",
    "--quiet",
    "--eval-batch-size",
];

fn train_args<'a>(data: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    let mut v = vec!["train", "--data", data, "--out", out, "--epochs", epochs];
    v.extend_from_slice(&QUICK);
    v.push("64");
    v
}

#[test]
fn train_writes_the_run_directory_and_resume_matches_a_full_run() {
    let data = synthetic("cli-train", &Synthetic::default());
    let runs = TempDir::new("cli-runs");
    let full = runs.join("full");
    let stdout = ok(&train_args(s(data.path()), s(&full), "3"));
    assert!(
        stdout.contains("fused (entropy)") && stdout.contains("modality gap"),
        "{stdout}"
    );

    let summary = json(&full.join("summary.json"));
    assert_eq!(summary["method"], "mla");
    assert_eq!(summary["epochs"], 3);
    let best = summary["best_epoch"].as_u64().unwrap();
    assert!((1..=3).contains(&best));
    for split in ["val", "test"] {
        let acc = summary[split]["fused_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        for m in ["image", "audio"] {
            let a = summary[split]["modality_accuracy"][m].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&a), "{split} {m} {a}");
        }
    }
    assert!(
        summary["test"]["fused_accuracy"].as_f64().unwrap() > 0.8,
        "{summary}"
    );
    assert!(summary["test"]["modality_gap"].as_f64().is_some());
    assert!(summary["test"]["fusion_accuracy"]["mean"]
        .as_f64()
        .is_some());
    assert!(summary["train_seconds"].as_f64().unwrap() > 0.0);
    assert!(summary["samples_per_second"].as_f64().unwrap() > 0.0);
    let lines = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
    for l in lines.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["val"]["fused_accuracy"].is_number() && v["train_loss"].is_number());
    }
    let config = json(&full.join("config.json"));
    assert_eq!(config["method"], "mla");
    assert_eq!(config["hgm"], "owm");

    // Interrupted after 1 epoch, resumed to 3: the same result.
    let part = runs.join("part");
    ok(&train_args(s(data.path()), s(&part), "1"));
    ok(&[
        "train",
        "--resume",
        s(&part),
        "--epochs",
        "3",
        "--backend",
        "cpu",
        "--threads",
        "2",
        "--quiet",
    ]);
    let resumed = json(&part.join("summary.json"));
    for k in [
        "best_epoch",
        "epochs",
        "val",
        "test",
        "hgm_surviving_fraction",
    ] {
        assert_eq!(resumed[k], summary[k], "{k}");
    }

    // eval of the best checkpoint reproduces the summary's test metrics.
    let best_ckpt = full.join("best.safetensors");
    let out = ok(&[
        "eval",
        "--checkpoint",
        s(&best_ckpt),
        "--json",
        "--backend",
        "cpu",
    ]);
    let e: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        e["metrics"]["fused_accuracy"],
        summary["test"]["fused_accuracy"]
    );
    assert_eq!(
        e["metrics"]["modality_accuracy"],
        summary["test"]["modality_accuracy"]
    );
    let table = ok(&[
        "eval",
        "--checkpoint",
        s(&best_ckpt),
        "--data",
        s(data.path()),
        "--split",
        "val",
    ]);
    assert!(table.contains("validation"), "{table}");
    let out = ok(&[
        "eval",
        "--checkpoint",
        s(&best_ckpt),
        "--drop-modality",
        "audio",
        "--json",
    ]);
    let e: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        e["metrics"]["fused_accuracy"],
        summary["test"]["modality_accuracy"]["image"]
    );

    // Re-using a run directory is refused; resuming a complete run just reports it.
    let err = fails(&train_args(s(data.path()), s(&full), "3"));
    assert!(err.contains("--resume"), "{err}");
    let again = ok(&["train", "--resume", s(&full), "--backend", "cpu", "--quiet"]);
    assert!(again.contains("best epoch"), "{again}");
    // Hyper-parameters cannot change on resume.
    let out = mla(&["train", "--resume", s(&full), "--lr", "0.5"]);
    assert!(!out.status.success());
    // --overwrite replaces the run (here with a 1-epoch one).
    let mut a = train_args(s(data.path()), s(&full), "1");
    a.push("--overwrite");
    ok(&a);
    assert_eq!(json(&full.join("summary.json"))["epochs"], 1);
}

#[test]
fn baselines_and_bench_run() {
    let spec = Synthetic {
        audio_missing_every: 5,
        ..Synthetic::default()
    };
    let data = synthetic("cli-baselines", &spec);
    let runs = TempDir::new("cli-baseline-runs");
    let joint = runs.join("joint");
    let mut a = train_args(s(data.path()), s(&joint), "2");
    a.extend_from_slice(&["--method", "joint"]);
    let out = ok(&a);
    assert!(out.contains("head slice"), "{out}");
    let sj = json(&joint.join("summary.json"));
    assert_eq!(sj["method"], "joint");
    assert_eq!(sj["hgm"], "none");
    assert!(sj["test"]["modality_accuracy"]["audio"].is_number());

    let uni = runs.join("uni");
    let mut a = train_args(s(data.path()), s(&uni), "1");
    a.extend_from_slice(&[
        "--method",
        "unimodal",
        "--modality",
        "image",
        "--encoder",
        "mlp",
    ]);
    ok(&a);
    let su = json(&uni.join("summary.json"));
    assert_eq!(
        su["test"]["fused_accuracy"],
        su["test"]["modality_accuracy"]["image"]
    );
    assert!(su["test"]["modality_accuracy"]["audio"].is_null());

    // The balancing methods, with their flags recorded in config and summary.
    let ogm = runs.join("ogm");
    let mut a = train_args(s(data.path()), s(&ogm), "1");
    a.extend_from_slice(&[
        "--method",
        "ogm-ge",
        "--ogm-alpha",
        "0.3",
        "--modulation-window",
        "0:10",
        "--ogm-rule",
        "continuous",
        "--encoder",
        "mlp",
    ]);
    let out = ok(&a);
    assert!(out.contains("ogm-ge (alpha 0.3, window 0:10"), "{out}");
    let so = json(&ogm.join("summary.json"));
    assert_eq!(so["method"], "ogm-ge");
    assert_eq!(so["ogm"]["alpha"], 0.3);
    assert_eq!(so["ogm"]["rule"], "continuous");
    let metrics = std::fs::read_to_string(ogm.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("k_mean.image"), "{metrics}");
    let pmr = runs.join("pmr");
    let mut a = train_args(s(data.path()), s(&pmr), "1");
    a.extend_from_slice(&["--method", "pmr", "--pmr-alpha", "2", "--encoder", "mlp"]);
    ok(&a);
    let sp = json(&pmr.join("summary.json"));
    let agm = runs.join("agm");
    let mut a = train_args(s(data.path()), s(&agm), "1");
    a.extend_from_slice(&[
        "--method",
        "agm",
        "--agm-alpha",
        "1.5",
        "--agm-no-clip",
        "--encoder",
        "mlp",
    ]);
    let out = ok(&a);
    assert!(
        out.contains("agm (alpha 1.5, window 0:20, clip false"),
        "{out}"
    );
    assert_eq!(json(&agm.join("summary.json"))["agm"]["clip"], false);
    // MMPareto: per-modality heads are in the checkpoint and `mla eval`
    // reproduces the summary's test numbers from it.
    let mp = runs.join("mmpareto");
    let mut a = train_args(s(data.path()), s(&mp), "1");
    a.extend_from_slice(&[
        "--method",
        "mmpareto",
        "--mmpareto-norm-scope",
        "per-tensor",
        "--encoder",
        "mlp",
    ]);
    let out = ok(&a);
    assert!(
        out.contains("(own head)") && out.contains("norm scope per-tensor"),
        "{out}"
    );
    let sm = json(&mp.join("summary.json"));
    let e: Value = serde_json::from_str(&ok(&[
        "eval",
        "--checkpoint",
        s(&mp.join("best.safetensors")),
        "--json",
        "--backend",
        "cpu",
    ]))
    .unwrap();
    assert_eq!(e["metrics"]["fused_accuracy"], sm["test"]["fused_accuracy"]);
    assert_eq!(
        e["metrics"]["modality_accuracy"],
        sm["test"]["modality_accuracy"]
    );
    // ReconBoost: beta is in the checkpoint (a new head kind) and `mla eval`
    // reproduces the summary's test numbers, fused by rule.
    let rb = runs.join("reconboost");
    let mut a = train_args(s(data.path()), s(&rb), "2");
    a.extend_from_slice(&[
        "--method",
        "reconboost",
        "--reconboost-w1",
        "4",
        "--reconboost-schedule",
        "1:1",
        "--encoder",
        "mlp",
    ]);
    let out = ok(&a);
    assert!(
        out.contains("reconboost (w1 4, w2 1, schedule 1:1, fresh optimizer per phase")
            && out.contains("(beta x shared head)"),
        "{out}"
    );
    let sr = json(&rb.join("summary.json"));
    assert_eq!(sr["reconboost"]["w1"], 4.0);
    let e: Value = serde_json::from_str(&ok(&[
        "eval",
        "--checkpoint",
        s(&rb.join("best.safetensors")),
        "--json",
        "--backend",
        "cpu",
    ]))
    .unwrap();
    assert_eq!(e["metrics"]["fused_accuracy"], sr["test"]["fused_accuracy"]);
    assert_eq!(
        e["metrics"]["fusion_accuracy"],
        sr["test"]["fusion_accuracy"]
    );
    // ResNet encoders: the feature size follows the width; batch-norm
    // statistics are in the checkpoint, so `mla eval` reproduces the summary.
    let rn = runs.join("resnet");
    let mut a = train_args(s(data.path()), s(&rn), "1");
    a.extend_from_slice(&[
        "--method",
        "joint",
        "--encoder",
        "resnet18-small",
        "--width-mult",
        "0.125",
    ]);
    ok(&a);
    assert_eq!(json(&rn.join("config.json"))["feature_size"], 64);
    let srn = json(&rn.join("summary.json"));
    let e: Value = serde_json::from_str(&ok(&[
        "eval",
        "--checkpoint",
        s(&rn.join("best.safetensors")),
        "--json",
        "--backend",
        "cpu",
    ]))
    .unwrap();
    assert_eq!(
        e["metrics"]["fused_accuracy"],
        srn["test"]["fused_accuracy"]
    );
    let gb = runs.join("gblending");
    let mut a = train_args(s(data.path()), s(&gb), "1");
    a.extend_from_slice(&[
        "--method",
        "gblending",
        "--gblending-every",
        "0",
        "--gblending-epochs",
        "2",
        "--gblending-rule",
        "bb",
        "--encoder",
        "mlp",
    ]);
    let out = ok(&a);
    assert!(
        out.contains("gblending (every 0, 2 estimation epochs, bb rule)"),
        "{out}"
    );
    let metrics = std::fs::read_to_string(gb.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("weight.output"), "{metrics}");
    assert_eq!(sp["pmr"]["alpha"], 2.0);
    assert_eq!(sp["pmr"]["window"]["end"], 60);
    let out = ok(&[
        "bench",
        "--data",
        s(data.path()),
        "--method",
        "pmr",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--batch-size",
        "16",
        "--encoder",
        "mlp",
        "--json",
        "--backend",
        "cpu",
    ]);
    let b: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(b["ms_per_step_median"].as_f64().unwrap() > 0.0);

    let out = ok(&[
        "bench",
        "--data",
        s(data.path()),
        "--steps",
        "5",
        "--warmup",
        "1",
        "--batch-size",
        "16",
        "--json",
        "--backend",
        "cpu",
    ]);
    let b: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(b["ms_per_step_median"].as_f64().unwrap() > 0.0);
    assert!(b["samples_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(b["hgm"], "owm");
    let text = ok(&[
        "bench",
        "--data",
        s(data.path()),
        "--steps",
        "3",
        "--warmup",
        "0",
        "--batch-size",
        "16",
        "--backend",
        "cpu",
    ]);
    assert!(
        text.contains("steps/s") && text.contains("samples/s"),
        "{text}"
    );
}

/// `mla prepare synthetic` writes a dataset of the shapes asked for, which
/// `mla bench` times ResNet steps on (3 channels in one modality, 1 in the
/// other); a bad shape is one error naming it.
#[test]
fn synthetic_shapes_prepare_and_bench() {
    let dir = TempDir::new("cli-synth");
    let data = dir.join("s");
    let out = ok(&[
        "prepare",
        "synthetic",
        "--out",
        s(&data),
        "--modality",
        "audio=1x9x7",
        "--modality",
        "visual=3x8x8",
        "--classes",
        "3",
        "--samples",
        "40",
    ]);
    assert!(out.contains("train 32, validation 4, test 4"), "{out}");
    let ds = mla_models::data::Dataset::open(&data).unwrap();
    assert_eq!(ds.modalities()[1].shape, vec![3, 8, 8]);
    // One step of a narrow resnet18 over both modalities at a batch size.
    let bench = |batch: &'static str, json: bool| {
        let mut v = vec![
            "bench",
            "--data",
            s(&data),
            "--encoder",
            "resnet18",
            "--width-mult",
            "0.0625",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--batch-size",
            batch,
            "--backend",
            "cpu",
        ];
        if json {
            v.push("--json");
        }
        mla(&v)
    };
    let o = bench("8", true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let b: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(b["modalities"], "audio,visual");
    assert_eq!(b["optimizer"], "sgd");
    assert!(b["gflop_per_step"].as_f64().unwrap() > 0.0);
    // A batch larger than the train split (32) is timed, with a warning.
    let o = bench("50", false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: --batch-size 50 is larger than the train split")
            && err.contains("32 samples"),
        "{err}"
    );
    // Vector modalities get the mlp encoder when --encoder is not given
    // (cnn needs [C, H, W]), said at start-up and recorded in the config;
    // an explicit cnn stays an error.
    let vec_data = dir.join("v");
    ok(&[
        "prepare",
        "synthetic",
        "--out",
        s(&vec_data),
        "--modality",
        "a=16",
        "--modality",
        "b=1x12x12",
        "--classes",
        "3",
        "--samples",
        "60",
    ]);
    let run = dir.join("vrun");
    let o = mla(&[
        "train",
        "--data",
        s(&vec_data),
        "--epochs",
        "1",
        "--out",
        s(&run),
        "--backend",
        "cpu",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("encoders: a=mlp,b=cnn"), "{err}");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("encoder = \"a=mlp,b=cnn\""), "{config}");
    assert_eq!(json(&run.join("summary.json"))["encoder"], "a=mlp,b=cnn");
    // bench takes train's optimizer flags, checked as train checks them.
    let out = ok(&[
        "bench",
        "--data",
        s(&vec_data),
        "--optimizer",
        "adam",
        "--lr",
        "0.001",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
        "--backend",
        "cpu",
    ]);
    let b: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(b["optimizer"], "adam");
    assert_eq!(b["encoder"], "a=mlp,b=cnn");
    let err = fails(&[
        "bench",
        "--data",
        s(&vec_data),
        "--lr",
        "-1",
        "--backend",
        "cpu",
    ]);
    assert!(err.contains("--lr must be a positive number"), "{err}");
    let err = fails(&[
        "train",
        "--data",
        s(&vec_data),
        "--epochs",
        "1",
        "--out",
        s(&dir.join("vrun-cnn")),
        "--backend",
        "cpu",
        "--encoder",
        "cnn",
    ]);
    assert!(err.contains("modality 'a'") && err.contains("mlp"), "{err}");
    // Without --data, bench takes AV-MNIST from the cache as train does,
    // preparing it from --raw there.
    let cache = dir.join("cache");
    let err = fails(&[
        "bench",
        "--raw",
        "/no/such/raw",
        "--cache-dir",
        s(&cache),
        "--steps",
        "1",
        "--backend",
        "cpu",
    ]);
    assert!(
        err.contains("cannot prepare AV-MNIST from /no/such/raw"),
        "{err}"
    );
    let err = fails(&[
        "prepare",
        "synthetic",
        "--out",
        s(&dir.join("t")),
        "--modality",
        "visual=3x0x8",
    ]);
    assert!(
        err.contains("visual=3x0x8") && err.contains("whole number"),
        "{err}"
    );
    assert!(!dir.join("t").exists());
}

#[test]
fn bad_input_gives_one_clear_error_and_a_nonzero_exit() {
    let data = synthetic("cli-errors", &Synthetic::default());
    let d = s(data.path());
    let runs = TempDir::new("cli-error-runs");
    let out = runs.join("x");
    let o = s(&out);
    let base = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "--data",
            d,
            "--out",
            o,
            "--backend",
            "cpu",
            "--quiet",
            "--epochs",
            "1",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run = |extra: &[&'static str]| {
        let v = base(extra);
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        fails(&refs)
    };

    let e = fails(&["train", "--data", "/no/such/dataset", "--backend", "cpu"]);
    assert!(e.contains("/no/such/dataset"), "{e}");
    let e = run(&["--encoder", "transformer"]);
    assert!(e.contains("transformer") && e.contains("mlp"), "{e}");
    // A negative number is a value that reaches the flag's check, not an
    // unknown argument.
    for (flag, want) in [
        ("--lr", "--lr must be a positive number"),
        ("--weight-decay", "--weight-decay must be >= 0"),
    ] {
        let e = run(&[flag, "-1"]);
        assert!(
            e.contains(want) && !e.contains("unexpected argument"),
            "{e}"
        );
    }
    let e = run(&["--method", "unimodal"]);
    assert!(e.contains("--modality"), "{e}");
    let e = run(&["--method", "unimodal", "--modality", "smell"]);
    assert!(e.contains("smell") && e.contains("image, audio"), "{e}");
    // Synchronised batch norm needs a data-parallel job, from the command
    // line or from a config file (a normal train key).
    let e = run(&["--encoder", "resnet18-small", "--sync-bn"]);
    assert!(
        e.contains("--sync-bn") && e.contains("--distributed"),
        "{e}"
    );
    let toml = runs.join("sync-bn.toml");
    std::fs::write(&toml, "sync-bn = true\nencoder = \"resnet18-small\"\n").unwrap();
    let v = base(&[]);
    let mut refs: Vec<&str> = v.iter().map(String::as_str).collect();
    refs.extend(["--config", s(&toml)]);
    let e = fails(&refs);
    assert!(
        e.contains("--sync-bn") && e.contains("--distributed"),
        "{e}"
    );
    let e = run(&["--method", "joint", "--hgm", "owm"]);
    assert!(e.contains("--hgm"), "{e}");
    // A flag of another method, out-of-range values.
    let e = run(&["--method", "pmr", "--ogm-alpha", "0.5"]);
    assert!(
        e.contains("--ogm-alpha") && e.contains("ogm or ogm-ge"),
        "{e}"
    );
    let e = run(&["--method", "joint", "--modulation-window", "0:5"]);
    assert!(e.contains("--modulation-window"), "{e}");
    let e = run(&["--method", "ogm", "--ogm-alpha", "-1"]);
    assert!(e.contains("--ogm-alpha must be"), "{e}");
    let e = run(&["--method", "ogm", "--mmpareto-scale", "2"]);
    assert!(
        e.contains("--mmpareto-scale") && e.contains("mmpareto"),
        "{e}"
    );
    let e = run(&["--method", "mmpareto", "--mmpareto-scale", "0"]);
    assert!(e.contains("--mmpareto-scale must be"), "{e}");
    let e = run(&["--method", "joint", "--agm-stale-kappa"]);
    assert!(e.contains("--agm-stale-kappa") && e.contains("agm"), "{e}");
    let e = run(&["--method", "agm", "--agm-alpha", "-2"]);
    assert!(e.contains("--agm-alpha must be"), "{e}");
    let e = run(&[
        "--encoder",
        "resnet18-small",
        "--width-mult",
        "0.125",
        "--feature-size",
        "10",
    ]);
    assert!(e.contains("--feature-size 64"), "{e}");
    let e = run(&["--encoder", "resnet18", "--width-mult", "0"]);
    assert!(e.contains("--width-mult"), "{e}");
    let e = run(&["--method", "joint", "--reconboost-keep-optimizer"]);
    assert!(
        e.contains("--reconboost-keep-optimizer") && e.contains("reconboost"),
        "{e}"
    );
    let e = run(&["--method", "reconboost", "--reconboost-w2", "9"]);
    assert!(e.contains("w1 >= w2"), "{e}");
    let e = run(&["--method", "mla", "--gblending-epochs", "3"]);
    assert!(
        e.contains("--gblending-epochs") && e.contains("gblending"),
        "{e}"
    );
    let e = fails(&[
        "train",
        "--data",
        d,
        "--method",
        "reconboost",
        "--reconboost-schedule",
        "0:2",
    ]);
    assert!(e.contains("STAGE:CORRECT"), "{e}");
    let e = run(&["--method", "pmr", "--pmr-momentum", "1"]);
    assert!(e.contains("--pmr-momentum must be in [0, 1)"), "{e}");
    let e = fails(&[
        "train",
        "--data",
        d,
        "--method",
        "ogm",
        "--modulation-window",
        "5:2",
    ]);
    assert!(e.contains("START:END"), "{e}");
    let e = run(&["--lr", "1e9", "--momentum", "0", "--hgm", "none"]);
    assert!(
        e.contains("non-finite") && e.contains("epoch 1") && e.contains("step"),
        "{e}"
    );
    // Unknown names are rejected by the argument parser (exit 2) with the valid ones.
    let e = fails(&["train", "--data", d, "--method", "lazy"]);
    assert!(
        e.contains("lazy")
            && e.contains(
                "mla, joint, unimodal, ogm, ogm-ge, pmr, mmpareto, agm, reconboost, gblending"
            ),
        "{e}"
    );
    let e = fails(&["train", "--data", d, "--hgm", "orthogonal"]);
    assert!(e.contains("orthogonal"), "{e}");

    // A malformed dataset: the manifest names a missing file.
    let broken = TempDir::new("cli-broken");
    Synthetic::default().write(broken.path());
    std::fs::remove_file(broken.join("audio.npy")).unwrap();
    let e = fails(&["train", "--data", s(broken.path()), "--backend", "cpu"]);
    assert!(e.contains("audio.npy"), "{e}");

    // Without --data: the cached AV-MNIST, prepared from --raw when absent.
    let cache = TempDir::new("cli-cache");
    let e = fails(&[
        "train",
        "--cache-dir",
        s(cache.path()),
        "--raw",
        "/no/raw/avmnist",
        "--backend",
        "cpu",
        "--quiet",
    ]);
    assert!(e.contains("/no/raw/avmnist") && e.contains("README"), "{e}");
    assert!(
        std::fs::read_dir(cache.path()).unwrap().next().is_none(),
        "a failed preparation leaves nothing behind"
    );
    std::fs::create_dir(cache.join("avmnist")).unwrap();
    Synthetic::default().write(&cache.join("avmnist"));
    let cached_run = runs.join("cached");
    let out = ok(&[
        "train",
        "--cache-dir",
        s(cache.path()),
        "--raw",
        "/no/raw/avmnist",
        "--out",
        s(&cached_run),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--backend",
        "cpu",
        "--quiet",
    ]);
    assert!(out.contains("best epoch 1 of 1"), "{out}");
    let rc = json(&cached_run.join("config.json"));
    assert!(rc["data"].as_str().unwrap().ends_with("avmnist"), "{rc}");

    let e = fails(&["eval", "--checkpoint", "/no/such.safetensors", "--data", d]);
    assert!(e.contains("/no/such.safetensors"), "{e}");
    let e = fails(&["train", "--resume", "/no/such/run"]);
    assert!(e.contains("/no/such/run"), "{e}");

    // Without a usable GPU, --backend cuda must say so (with one, it trains).
    let cuda_out = runs.join("cuda");
    let out = mla(&[
        "train",
        "--data",
        d,
        "--out",
        s(&cuda_out),
        "--backend",
        "cuda",
        "--quiet",
        "--epochs",
        "1",
    ]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.trim().starts_with("error") && err.to_lowercase().contains("cuda"),
            "{err}"
        );
    }
}

#[test]
fn config_files_set_flags_the_command_line_overrides_and_runs_reproduce() {
    let data = synthetic("cli-config", &Synthetic::default());
    let runs = TempDir::new("cli-config-runs");
    let file = runs.join("run.toml");
    std::fs::write(
        &file,
        format!(
            "# a run config\ndata = {:?}\nmethod = \"pmr\"\npmr_alpha = 2.0\nencoder = \"mlp\"\nepochs = 1\nbatch-size = 32\nlr = 0.02\nbackend = \"cpu\"\nthreads = 2\nquiet = true\n",
            s(data.path())
        ),
    )
    .unwrap();
    let first = runs.join("first");
    // The command line wins over the file (epochs 2, not 1).
    ok(&[
        "train",
        "--config",
        s(&file),
        "--out",
        s(&first),
        "--epochs",
        "2",
    ]);
    let sm = json(&first.join("summary.json"));
    assert_eq!(sm["epochs"], 2);
    assert_eq!(sm["method"], "pmr");
    assert_eq!(sm["pmr"]["alpha"], 2.0);
    let resolved = std::fs::read_to_string(first.join("config.toml")).unwrap();
    for line in [
        "epochs = 2",
        "method = \"pmr\"",
        "pmr_alpha = 2",
        "threads = 2",
        "backend = \"cpu\"",
        "batch_size = 32",
    ] {
        assert!(resolved.contains(line), "{line}: {resolved}");
    }
    assert!(
        !resolved.contains("\nout ") && !resolved.contains("quiet"),
        "{resolved}"
    );
    // The resolved file reruns the same configuration, metric for metric.
    let again = runs.join("again");
    ok(&[
        "train",
        "--config",
        s(&first.join("config.toml")),
        "--out",
        s(&again),
        "--quiet",
    ]);
    let sa = json(&again.join("summary.json"));
    assert_eq!(sa["test"], sm["test"]);
    // Provenance and cost: the same build and dataset for both runs.
    for k in [
        "mla_version",
        "git_commit",
        "cpu_model",
        "dataset_hash",
        "parameters",
    ] {
        assert_eq!(sa["provenance"][k], sm["provenance"][k], "{k}");
    }
    let hash = sm["provenance"]["dataset_hash"].as_str().unwrap();
    assert!(
        hash.len() == 8 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{hash}"
    );
    assert!(!sm["provenance"]["git_commit"].as_str().unwrap().is_empty());
    assert!(sm["provenance"]["parameters"].as_u64().unwrap() > 1000);
    assert_eq!(sm["epoch_train_seconds"].as_array().unwrap().len(), 2);
    assert!(sm["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(sa["val"], sm["val"]);
    let evals = |dir: &Path| -> Vec<Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                serde_json::json!([v["val"], v["train_loss"], v["method_stats"]])
            })
            .collect()
    };
    assert_eq!(evals(&again), evals(&first));
    // Resuming with a new total records it.
    ok(&[
        "train",
        "--resume",
        s(&first),
        "--epochs",
        "3",
        "--quiet",
        "--backend",
        "cpu",
    ]);
    let resolved = std::fs::read_to_string(first.join("config.toml")).unwrap();
    assert!(resolved.contains("epochs = 3"), "{resolved}");

    // Errors name the file, the line and the key; exit 2 before any work.
    let bad = |name: &str, text: &str| {
        let f = runs.join(name);
        std::fs::write(&f, text).unwrap();
        let out = mla(&["train", "--config", s(&f), "--out", s(&runs.join("never"))]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains(name), "{err}");
        err
    };
    let e = bad("unknown.toml", "method = \"joint\"\n\nlearning_rate = 3\n");
    assert!(
        e.contains("line 3") && e.contains("learning_rate") && e.contains("feature_size"),
        "{e}"
    );
    let e = bad("type.toml", "lr = \"fast\"\n");
    assert!(
        e.contains("line 1") && e.contains("`lr`") && e.contains("fast"),
        "{e}"
    );
    let e = bad("switch.toml", "\nquiet = 1\n");
    assert!(e.contains("line 2") && e.contains("true or false"), "{e}");
    let e = bad("method.toml", "method = \"lazy\"\n");
    assert!(e.contains("lazy") && e.contains("reconboost"), "{e}");
    let e = bad("nested.toml", "resume = \"somewhere\"\n");
    assert!(e.contains("cannot be set in a config file"), "{e}");
    let e = bad("syntax.toml", "method = \n");
    assert!(e.contains("line 1"), "{e}");
    assert!(!runs.join("never").exists());
    let e = fails(&["train", "--config", "/no/such/run.toml"]);
    assert!(e.contains("/no/such/run.toml"), "{e}");
}

#[test]
fn sweeps_run_every_grid_point_resume_and_report_mean_and_std() {
    let data = synthetic("cli-sweep", &Synthetic::default());
    let runs = TempDir::new("cli-sweep-runs");
    let file = runs.join("sweep.toml");
    let write = |epochs: u32| {
        std::fs::write(
            &file,
            format!(
                "[train]\ndata = {:?}\nencoder = \"mlp\"\nepochs = {epochs}\nbatch_size = 32\nlr = 0.02\nbackend = \"cpu\"\n\n[grid]\nmethod = [\"joint\", \"mla\"]\nseed = [0, 1]\n",
                s(data.path())
            ),
        )
        .unwrap();
    };
    write(1);
    let out = runs.join("sweep");
    let sweep = |extra: &[&str]| {
        let mut a = vec![
            "sweep",
            s(&file),
            "--out",
            s(&out),
            "--jobs",
            "2",
            "--threads",
            "2",
        ];
        a.extend_from_slice(extra);
        let o = mla(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (_, err) = sweep(&[]);
    assert!(
        err.contains("4 runs (0 already done)") && err.contains("all 4 runs done"),
        "{err}"
    );
    let names = [
        "method-joint_seed-0",
        "method-joint_seed-1",
        "method-mla_seed-0",
        "method-mla_seed-1",
    ];
    for n in names {
        let sm = json(&out.join(n).join("summary.json"));
        assert_eq!(sm["epochs"], 1, "{n}");
        assert!(out.join(format!("{n}.log")).is_file());
    }
    assert_eq!(json(&out.join(names[3]).join("summary.json"))["seed"], 1);
    // Finished runs are skipped.
    let (_, err) = sweep(&[]);
    assert!(
        err.contains("(4 already done)") && !err.contains("start"),
        "{err}"
    );
    // More epochs: every run is resumed, not restarted.
    write(2);
    let (dry, _) = sweep(&["--dry-run"]);
    assert_eq!(dry.matches("partial").count(), 4, "{dry}");
    let (_, err) = sweep(&[]);
    assert_eq!(err.matches("(resumed)").count(), 4, "{err}");
    let acc: Vec<f64> = names
        .iter()
        .map(|n| {
            let sm = json(&out.join(n).join("summary.json"));
            assert_eq!(sm["epochs"], 2, "{n}");
            sm["test"]["fused_accuracy"].as_f64().unwrap() * 100.0
        })
        .collect();
    // The report: one row per method, mean ± sample std of the two seeds.
    let csv = runs.join("report.csv");
    let md = ok(&["report", s(&out), "--csv", s(&csv)]);
    assert!(
        md.starts_with("| method | runs | seeds | fused acc. (%)"),
        "{md}"
    );
    let mean = (acc[0] + acc[1]) / 2.0;
    let std = ((acc[0] - mean).powi(2) + (acc[1] - mean).powi(2)).sqrt();
    let row = md
        .lines()
        .find(|l| l.starts_with("| joint |"))
        .expect("joint row");
    assert!(
        row.contains(&format!("| 2 | 0 1 | {mean:.2} ± {std:.2} |")),
        "{row}"
    );
    assert!(
        md.lines().any(|l| l.starts_with("| mla | 2 | 0 1 |")),
        "{md}"
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let joint: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(joint[0], "joint");
    assert!(
        (joint[3].parse::<f64>().unwrap() - mean).abs() < 1e-9,
        "{text}"
    );
    assert!(
        (joint[4].parse::<f64>().unwrap() - std).abs() < 1e-9,
        "{text}"
    );
    let md = ok(&[
        "report",
        s(&out),
        "--by",
        "seed",
        "--columns",
        "fused,rules",
    ]);
    assert!(
        md.contains("entropy (%)") && md.lines().filter(|l| l.starts_with("| 0 |")).count() == 1,
        "{md}"
    );
    // Derived columns against the summary they come from: the best single
    // modality, the last epoch's head gradient kept, the mean forgetting.
    let md = ok(&[
        "report",
        s(&out),
        "--by",
        "method,seed",
        "--columns",
        "best,hgm,forgetting,ece",
    ]);
    let sm = json(&out.join("method-mla_seed-1/summary.json"));
    let best = sm["test"]["modality_accuracy"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    let fused = sm["test"]["fused_accuracy"].as_f64().unwrap();
    let kept = sm["hgm_surviving_fraction"]
        .as_array()
        .unwrap_or_else(|| panic!("{sm}"));
    // The probe runs every few steps: a tiny run may have no measurement.
    let forgetting = match sm["forgetting_loss_increase"].as_array() {
        Some(f) => format!(
            "{:.2}",
            1e3 * f.iter().map(|v| v.as_f64().unwrap()).sum::<f64>() / f.len() as f64
        ),
        None => "-".into(),
    };
    let expected = format!(
        "| mla | 1 | 1 | 1 | {:.2} | {:.2} | {:.2} | {forgetting} |",
        100.0 * best,
        100.0 * (fused - best),
        kept.last().unwrap().as_f64().unwrap(),
    );
    assert!(
        md.lines().any(|l| l.starts_with(&expected)),
        "{expected}\n{md}"
    );
    assert!(md.contains("ECE calibrated (%)"), "{md}");
    let joint = md.lines().find(|l| l.starts_with("| joint | 0 |")).unwrap();
    assert!(joint.contains("| - | - |"), "joint has no HGM: {joint}");
    // The rule `auto` chose, counted over the runs of a row.
    let md = ok(&["report", s(&out), "--by", "method", "--columns", "chosen"]);
    let rules: Vec<String> = ["method-mla_seed-0", "method-mla_seed-1"]
        .iter()
        .map(|n| {
            json(&out.join(n).join("summary.json"))["test"]["fusion_rule"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let cell = if rules[0] == rules[1] {
        format!("{} 2", rules[0])
    } else {
        let mut r = rules.clone();
        r.sort();
        format!("{} 1, {} 1", r[0], r[1])
    };
    assert!(
        md.contains("| fusion chosen |") && md.contains(&format!("| mla | 2 | 0 1 | {cell} |")),
        "{cell}\n{md}"
    );
    // A run kept with only its summary (no config.json) covering every
    // epoch counts as done: the sweep does not train it again.
    std::fs::remove_file(out.join("method-joint_seed-0/config.json")).unwrap();
    let (dry, _) = sweep(&["--dry-run"]);
    let line = dry
        .lines()
        .find(|l| l.contains("method-joint_seed-0"))
        .unwrap();
    assert!(line.starts_with("done"), "{dry}");

    // Bad sweep files: one error naming the line and key, nothing run.
    let bad = |text: &str| {
        std::fs::write(&file, text).unwrap();
        fails(&["sweep", s(&file), "--out", s(&runs.join("never"))])
    };
    let e = bad("[grid]\nseed = 3\n");
    assert!(e.contains("line 2") && e.contains("must be a list"), "{e}");
    let e = bad("[train]\nepochs = 1\n[grid]\nepoch = [1, 2]\n");
    assert!(e.contains("line 4") && e.contains("`epoch`"), "{e}");
    let e = bad("[train]\nout = \"x\"\n");
    assert!(e.contains("sets it for every run"), "{e}");
    let e = bad("[grid]\nlr = [0.1, \"fast\"]\n");
    assert!(e.contains("fast"), "{e}");
    let e = bad("[trian]\nlr = 1\n");
    assert!(e.contains("[train] and a [grid]"), "{e}");
    assert!(!runs.join("never").exists());
    let e = fails(&["report", s(&runs.join("never"))]);
    assert!(e.contains("not a directory"), "{e}");
}

#[test]
fn a_sweep_grid_entry_can_set_keys_that_only_one_method_takes() {
    let data = synthetic("cli-sweep-table", &Synthetic::default());
    let runs = TempDir::new("cli-sweep-table-runs");
    let file = runs.join("sweep.toml");
    let head = format!(
        "[train]\ndata = {:?}\nencoder = \"mlp\"\nepochs = 1\nbatch_size = 32\nbackend = \"cpu\"\n\n[grid]\n",
        s(data.path())
    );
    let write = |grid: &str| std::fs::write(&file, format!("{head}{grid}")).unwrap();
    write("method = [\"joint\", { method = \"gblending\", gblending-every = 0, gblending_epochs = 1 }]\nseed = [0]\n");
    let out = runs.join("sweep");
    let dry = ok(&["sweep", s(&file), "--out", s(&out), "--dry-run"]);
    let line = |name: &str| {
        dry.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name}: {dry}"))
            .to_string()
    };
    let joint = line("method-joint_seed-0");
    assert!(
        joint.starts_with("new") && !joint.contains("gblending"),
        "{joint}"
    );
    let gb = line("method-gblending_seed-0");
    assert!(
        gb.contains("--method gblending --gblending-every 0 --gblending-epochs 1 --seed 0"),
        "{gb}"
    );
    let o = mla(&["sweep", s(&file), "--out", s(&out), "--threads", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = std::fs::read_to_string(out.join("method-gblending_seed-0/config.toml")).unwrap();
    assert!(
        cfg.contains("gblending_every = 0") && cfg.contains("gblending_epochs = 1"),
        "{cfg}"
    );
    assert_eq!(
        json(&out.join("method-joint_seed-0/summary.json"))["epochs"],
        1
    );

    // Entries sharing their axis value are named by their other keys too;
    // the others keep the short name.
    write("method = [\"joint\", { method = \"mla\", hgm = \"owm\", alpha = 1 }, { method = \"mla\", hgm = \"none\" }]\nseed = [0]\n");
    let dry = ok(&[
        "sweep",
        s(&file),
        "--out",
        s(&runs.join("named")),
        "--dry-run",
    ]);
    for name in [
        "method-joint_seed-0",
        "method-mla+alpha-1+hgm-owm_seed-0",
        "method-mla+hgm-none_seed-0",
    ] {
        assert!(dry.lines().any(|l| l.contains(name)), "{name}: {dry}");
    }
    assert!(
        dry.lines()
            .any(|l| l.contains("method-mla+alpha-1+hgm-owm_seed-0") && l.contains("--alpha 1")),
        "{dry}"
    );

    // A table without its axis key, a key set twice, a bad value inside.
    let bad = |grid: &str| {
        write(grid);
        fails(&["sweep", s(&file), "--out", s(&runs.join("never"))])
    };
    let e = bad("method = [{ gblending-every = 0 }]\n");
    assert!(
        e.contains("line 9") && e.contains("must set `method`"),
        "{e}"
    );
    let e = bad("method = [{ method = \"joint\", seed = 1 }]\nseed = [0]\n");
    assert!(e.contains("`seed`") && e.contains("one place"), "{e}");
    let e = bad("method = [{ method = \"gblending\", gblending-every = \"often\" }]\n");
    assert!(
        e.contains("line 9") && e.contains("gblending-every") && e.contains("often"),
        "{e}"
    );
    assert!(!runs.join("never").exists());
}

#[test]
fn the_cpu_kernels_can_be_forced_onto_a_slower_instruction_set() {
    let data = synthetic("cli-isa", &Synthetic::default());
    let run = |isa: &str| {
        std::process::Command::new(cli_common::BIN)
            .env("MLA_CPU_ISA", isa)
            .args([
                "bench",
                "--data",
                s(data.path()),
                "--steps",
                "1",
                "--warmup",
                "0",
            ])
            .args([
                "--batch-size",
                "16",
                "--encoder",
                "mlp",
                "--json",
                "--backend",
                "cpu",
            ])
            .output()
            .unwrap()
    };
    let out = run("scalar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(b["cpu_isa"], "scalar");
    assert!(b["gflop_per_step"].as_f64().unwrap() > 0.0);
    let out = run("bogus");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MLA_CPU_ISA=bogus") && !err.contains("panicked"),
        "{err}"
    );
}
