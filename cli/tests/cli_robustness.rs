//! `mla train --missing-rate`, `mla eval --missing-rate/--corrupt` and `mla
//! robustness` on a small synthetic dataset: the stored mask (the same at
//! any thread count), level 0 equal to plain evaluation, the robustness
//! files and scores against the curve they report, and bad input as one
//! clear error.

mod cli_common;
#[path = "../../tests/tests/trainer_common/mod.rs"]
mod trainer_common;

use cli_common::{fails, json, ok, s};
use serde_json::Value;
use std::path::Path;
use trainer_common::{synthetic, Synthetic, TempDir};

fn train(data: &str, out: &Path, threads: &str, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--data",
        data,
        "--out",
        s(out),
        "--epochs",
        "1",
        "--encoder",
        "mlp",
        "--batch-size",
        "32",
        "--backend",
        "cpu",
        "--threads",
        threads,
        "--quiet",
    ];
    args.extend_from_slice(extra);
    ok(&args);
}

fn metrics(v: &Value) -> &Value {
    &v["metrics"]
}

#[test]
fn the_train_mask_is_stored_and_the_same_at_any_thread_count() {
    let data = synthetic("cli-missing", &Synthetic::default());
    let runs = TempDir::new("cli-missing-runs");
    let d = s(data.path());
    let rate = [
        "--missing-rate",
        "image=0.3,audio=0.2",
        "--missing-seed",
        "4",
    ];
    train(d, &runs.join("t1"), "1", &rate);
    train(d, &runs.join("t2"), "2", &rate);
    let m1 = std::fs::read(runs.join("t1/missing_mask.json")).unwrap();
    assert_eq!(
        m1,
        std::fs::read(runs.join("t2/missing_mask.json")).unwrap()
    );
    let summary = json(&runs.join("t1/summary.json"));
    let image = &summary["missing"]["modalities"][0];
    assert_eq!(image["name"], "image");
    assert_eq!(image["rate"], 0.3);
    let mask = json(&runs.join("t1/missing_mask.json"));
    assert_eq!(
        image["hidden"].as_u64().unwrap() as usize,
        mask["modalities"][0]["hidden"].as_array().unwrap().len()
    );
    assert_eq!(summary["missing"]["seed"], 4);
    // The flags are in config.toml: training from it draws the same mask.
    let toml = std::fs::read_to_string(runs.join("t1/config.toml")).unwrap();
    assert!(
        toml.contains("missing-rate") || toml.contains("missing_rate"),
        "{toml}"
    );
    ok(&[
        "train",
        "--config",
        s(&runs.join("t1/config.toml")),
        "--out",
        s(&runs.join("t3")),
        "--quiet",
    ]);
    assert_eq!(
        m1,
        std::fs::read(runs.join("t3/missing_mask.json")).unwrap()
    );
}

#[test]
fn eval_at_level_zero_is_plain_eval_and_rate_one_is_dropping() {
    let data = synthetic("cli-eval-pert", &Synthetic::default());
    let runs = TempDir::new("cli-eval-pert-runs");
    let run = runs.join("r");
    train(s(data.path()), &run, "2", &[]);
    let ckpt = run.join("best.safetensors");
    let c = s(&ckpt);
    let eval = |extra: &[&str]| -> Value {
        let mut args = vec!["eval", "--checkpoint", c, "--json", "--backend", "cpu"];
        args.extend_from_slice(extra);
        serde_json::from_str(&ok(&args)).unwrap()
    };
    let plain = eval(&[]);
    let zero = eval(&[
        "--missing-rate",
        "all=0",
        "--corrupt",
        "audio=gaussian:0",
        "--corrupt",
        "image=dropout:0",
    ]);
    assert_eq!(metrics(&plain), metrics(&zero));
    let dropped = eval(&["--drop-modality", "audio"]);
    let all_missing = eval(&["--missing-rate", "audio=1"]);
    assert_eq!(
        metrics(&dropped)["fused_accuracy"],
        metrics(&all_missing)["fused_accuracy"]
    );
    // A test-time mask and a corruption are seeded: same seed, same numbers.
    let seeded = [
        "--missing-rate",
        "audio=0.5",
        "--missing-seed",
        "3",
        "--corrupt",
        "image=saltpepper:0.3",
    ];
    let (a, b) = (eval(&seeded), eval(&seeded));
    assert_eq!(metrics(&a), metrics(&b));
    assert_eq!(a["missing"]["modalities"][1]["name"], "audio");
    assert_ne!(metrics(&a), metrics(&plain));
}

fn trapezoid(levels: &[f64], acc: &[f64]) -> f64 {
    let span = levels[levels.len() - 1] - levels[0];
    (0..levels.len() - 1)
        .map(|i| (levels[i + 1] - levels[i]) / span * (acc[i] + acc[i + 1]) / 2.0)
        .sum()
}

fn curve(r: &Value) -> (Vec<f64>, Vec<f64>) {
    r["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["level"].as_f64().unwrap(),
                l["fused_accuracy"]["mean"].as_f64().unwrap(),
            )
        })
        .unzip()
}

#[test]
fn robustness_writes_the_curve_its_scores_and_a_plot() {
    let data = synthetic("cli-rob", &Synthetic::default());
    let runs = TempDir::new("cli-rob-runs");
    let d = s(data.path());
    train(d, &runs.join("mla"), "2", &[]);
    train(d, &runs.join("joint"), "2", &["--method", "joint"]);
    let rob = |run: &str, out: &str, extra: &[&str]| -> Value {
        let ckpt = runs.join(run).join("best.safetensors");
        let out = runs.join(out);
        let mut args = vec![
            "robustness",
            "--checkpoint",
            s(&ckpt),
            "--modality",
            "image",
            "--kind",
            "dropout",
            "--levels",
            "0,0.25,0.5,1",
            "--seeds",
            "2",
            "--out",
            s(&out),
            "--backend",
            "cpu",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let table = ok(&args);
        assert!(table.contains("relative robustness"), "{table}");
        json(&out.join("robustness.json"))
    };
    let joint = rob("joint", "rob-joint", &[]);
    let (levels, acc) = curve(&joint);
    assert_eq!(levels, vec![0.0, 0.25, 0.5, 1.0]);
    // Level 0 is evaluated once, the others once per seed.
    let per_seed = |r: &Value, i: usize| {
        r["levels"][i]["fused_accuracy"]["per_seed"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(per_seed(&joint, 0), 1);
    assert_eq!(per_seed(&joint, 2), 2);
    let rel = joint["relative_robustness"].as_f64().unwrap();
    assert!((rel - trapezoid(&levels, &acc)).abs() < 1e-12);
    assert!(joint.get("effective_robustness").is_none());
    let csv = std::fs::read_to_string(runs.join("rob-joint/robustness.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + levels.len());
    assert!(csv.starts_with("level,seeds,fused_accuracy_mean"));
    let svg = std::fs::read_to_string(runs.join("rob-joint/robustness.svg")).unwrap();
    assert!(svg.trim_end().ends_with("</svg>") && svg.contains("fused"));
    // The same command again: the same report.
    assert_eq!(joint, rob("joint", "rob-joint-again", &[]));
    // Against a reference: the gap, shifted to agree at level 0.
    let ref_path = runs.join("rob-joint/robustness.json");
    let mla = rob("mla", "rob-mla", &["--reference", s(&ref_path)]);
    let (_, mla_acc) = curve(&mla);
    let gap: Vec<f64> = mla_acc
        .iter()
        .zip(&acc)
        .map(|(a, r)| a - (r + mla_acc[0] - acc[0]))
        .collect();
    let eff = mla["effective_robustness"].as_f64().unwrap();
    assert!((eff - trapezoid(&levels, &gap)).abs() < 1e-12);
    let sum = mla["effective_robustness_sum"].as_f64().unwrap();
    assert!((sum - gap.iter().sum::<f64>()).abs() < 1e-12);
    let own = rob("joint", "rob-self", &["--reference", s(&ref_path)]);
    assert_eq!(own["effective_robustness"].as_f64().unwrap(), 0.0);
    // `mla report --robustness`: one row per method (three joint reports, one mla).
    let plots = runs.join("plots");
    let table = ok(&[
        "report",
        "--robustness",
        s(runs.path()),
        "--plot",
        s(&plots),
    ]);
    let svg = std::fs::read_to_string(plots.join("image-dropout.svg")).unwrap();
    assert!(svg.contains("joint (3 checkpoints)") && svg.contains("mla (1 checkpoints)"));
    let row = |method: &str| {
        table
            .lines()
            .find(|l| l.contains(&format!("| {method} |")))
            .unwrap_or_else(|| panic!("no {method} row: {table}"))
            .to_string()
    };
    assert!(row("joint").contains("| 3 |"), "{table}");
    let mla_row = row("mla");
    assert!(
        mla_row.contains(&format!(
            "{:.4} ± 0.0000",
            mla["relative_robustness"].as_f64().unwrap()
        )),
        "{mla_row}"
    );
    assert!(
        mla_row.contains(&format!("{eff:.4} ± 0.0000 (1 refs)")),
        "{mla_row}"
    );
    // A reference over other levels or another perturbation is refused.
    let ckpt = runs.join("mla/best.safetensors");
    let base = |levels: &'static str, kind: &'static str| {
        vec![
            "robustness".to_string(),
            "--checkpoint".into(),
            s(&ckpt).into(),
            "--modality".into(),
            "image".into(),
            "--kind".into(),
            kind.into(),
            "--levels".into(),
            levels.into(),
            "--out".into(),
            s(&runs.join("bad")).into(),
            "--reference".into(),
            s(&ref_path).into(),
        ]
    };
    let run = |v: Vec<String>| fails(&v.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run(base("0,0.5,1", "dropout")).contains("levels"));
    assert!(run(base("0,0.25,0.5,1", "gaussian")).contains("dropout"));
}

#[test]
fn bad_perturbations_are_one_clear_error() {
    let data = synthetic("cli-pert-bad", &Synthetic::default());
    let runs = TempDir::new("cli-pert-bad-runs");
    let d = s(data.path());
    let out = runs.join("x");
    let o = s(&out);
    let base = ["train", "--data", d, "--out", o, "--epochs", "1", "--quiet"];
    let train_fails = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        fails(&a)
    };
    assert!(train_fails(&["--missing-rate", "image=1"]).contains("[0, 1)"));
    assert!(train_fails(&["--missing-rate", "touch=0.1"]).contains("image, audio"));
    assert!(train_fails(&["--missing-rate", "image=0.1,image=0.2"]).contains("twice"));
    assert!(
        train_fails(&["--missing-rate", "all=0.6", "--missing-policy", "strict"])
            .contains("strict")
    );
    assert!(train_fails(&["--missing-policy", "strict"]).contains("--missing-rate"));
    train(d, &runs.join("r"), "2", &[]);
    let ckpt = runs.join("r/best.safetensors");
    let c = s(&ckpt);
    assert!(
        fails(&["eval", "--checkpoint", c, "--corrupt", "audio=blur:0.1"]).contains("gaussian")
    );
    assert!(fails(&["eval", "--checkpoint", c, "--corrupt", "audio=dropout:2"]).contains("[0, 1]"));
    assert!(fails(&["eval", "--checkpoint", c, "--missing-rate", "audio=1.5"]).contains("[0, 1]"));
    let rob = |extra: &[&str]| {
        let mut a = vec![
            "robustness",
            "--checkpoint",
            c,
            "--out",
            o,
            "--backend",
            "cpu",
        ];
        a.extend_from_slice(extra);
        fails(&a)
    };
    assert!(rob(&["--modality", "touch", "--kind", "dropout"]).contains("image, audio"));
    assert!(rob(&[
        "--modality",
        "audio",
        "--kind",
        "missing",
        "--levels",
        "0,1.5"
    ])
    .contains("[0, 1]"));
    assert!(rob(&[
        "--modality",
        "audio",
        "--kind",
        "dropout",
        "--levels",
        "1:0:0.1"
    ])
    .contains("START"));
    assert!(rob(&[
        "--modality",
        "audio",
        "--kind",
        "saltpepper",
        "--levels",
        "0,2"
    ])
    .contains("[0, 1]"));
    assert!(rob(&["--modality", "audio", "--kind", "dropout", "--seeds", "0"]).contains("--seeds"));
    let missing_ref = runs.join("nothing.json");
    assert!(rob(&[
        "--modality",
        "audio",
        "--kind",
        "dropout",
        "--reference",
        s(&missing_ref)
    ])
    .contains("nothing.json"));
}

#[test]
fn report_skips_unfinished_runs() {
    let data = synthetic("cli-report-unfinished", &Synthetic::default());
    let runs = TempDir::new("cli-report-unfinished-runs");
    let d = s(data.path());
    train(d, &runs.join("done"), "2", &[]);
    train(d, &runs.join("killed"), "2", &[]);
    // As if killed after its first epoch of two: the summary says 1 epoch.
    let toml_path = runs.join("killed/config.toml");
    let t = std::fs::read_to_string(&toml_path).unwrap();
    std::fs::write(&toml_path, t.replace("epochs = 1", "epochs = 2")).unwrap();
    let out = cli_common::mla(&["report", s(runs.path())]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("killed") && stderr.contains("1 of its 2 epochs"),
        "{stderr}"
    );
    assert!(
        stdout.contains("1 runs from") || stdout.contains("| 1 |"),
        "{stdout}"
    );
}
