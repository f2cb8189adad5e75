//! `mla train --distributed` (issue 18). With the `mpi` feature (CI:
//! `cargo test --release -p mla-cli --features mpi --test cli_distributed`,
//! after installing Open MPI), under `mpirun --oversubscribe -np 2` and 3:
//! the same metrics as one process, rank 0's files only, a killed or
//! failing rank ending the job with an error instead of a hang, resume with
//! the same W. Without the feature: one clear error.

mod cli_common;
#[path = "../../tests/tests/trainer_common/mod.rs"]
mod trainer_common;

use cli_common::s;
use trainer_common::{synthetic, Synthetic, TempDir};

fn data(tag: &str) -> TempDir {
    synthetic(
        tag,
        &Synthetic {
            // Six batches of 32 and one of 1: some ranks' last share is empty.
            train: 193,
            val: 64,
            test: 64,
            audio_missing_every: 3,
            ..Synthetic::default()
        },
    )
}

fn train_args<'a>(data: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        data,
        "--out",
        out,
        "--epochs",
        epochs,
        "--method",
        "mla",
        "--encoder",
        "mlp",
        "--feature-size",
        "16",
        "--batch-size",
        "32",
        "--lr",
        "0.05",
        "--backend",
        "cpu",
        "--threads",
        "1",
        "--quiet",
    ]
}

#[cfg(not(feature = "mpi"))]
#[test]
fn without_the_mpi_feature_distributed_is_one_clear_error() {
    let d = data("dist-nompi");
    let runs = TempDir::new("dist-nompi-runs");
    let out = runs.join("r");
    let mut args = train_args(s(d.path()), s(&out), "1");
    args.push("--distributed");
    let e = cli_common::fails(&args);
    assert!(
        e.contains("without MPI") && e.contains("--features mpi"),
        "{e}"
    );
}

#[cfg(feature = "mpi")]
mod with_mpi {
    use super::*;
    use cli_common::{ok, BIN};
    use serde_json::Value;
    use std::path::Path;
    use std::process::{Command, Output, Stdio};
    use std::time::{Duration, Instant};

    /// `mpirun -np W mla ARGS --distributed`, killed (and the test failed)
    /// if it runs past `limit`: a hang is a failure, never a stuck CI job.
    fn mpirun(w: usize, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
        let mut c = Command::new("mpirun");
        c.args(["--oversubscribe", "-np", &w.to_string(), BIN])
            .args(args)
            .arg("--distributed")
            // CI containers run as root; Open MPI refuses root without these.
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("mpirun (install openmpi-bin)");
        let started = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "mpirun -np {w} {args:?} hung past {limit:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn succeeded(out: &Output, what: &str) {
        assert!(
            out.status.success(),
            "{what} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn records(dir: &Path) -> Vec<Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn f(v: &Value) -> f64 {
        v.as_f64().unwrap()
    }

    #[test]
    fn two_and_three_ranks_train_what_one_process_trains() {
        let d = data("dist-mpi-same");
        let runs = TempDir::new("dist-mpi-same-runs");
        let one = runs.join("one");
        ok(&train_args(s(d.path()), s(&one), "2"));
        let single = records(&one);
        for w in [2, 3] {
            let dir = runs.join(&format!("w{w}"));
            let out = mpirun(
                w,
                &train_args(s(d.path()), s(&dir), "2"),
                &[],
                Duration::from_secs(180),
            );
            succeeded(&out, &format!("W={w}"));
            // One summary printed (rank 0's), not W.
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(stdout.matches("run directory:").count(), 1, "{stdout}");
            assert_eq!(files(&dir), files(&one), "W={w}: rank 0's files only");
            for (a, b) in records(&dir).iter().zip(&single) {
                let what = format!("W={w} epoch {}", b["epoch"]);
                let close = |x: f64, y: f64, k: &str| {
                    assert!(
                        (x - y).abs() <= 1e-4 + 1e-4 * y.abs(),
                        "{what} {k}: {x} vs {y}"
                    )
                };
                close(f(&a["train_loss"]), f(&b["train_loss"]), "train loss");
                close(f(&a["val"]["loss"]), f(&b["val"]["loss"]), "val loss");
                let acc = |r: &Value| f(&r["val"]["fused_accuracy"]);
                assert!((acc(a) - acc(b)).abs() <= 1.5 / 64.0, "{what} accuracy");
                assert_eq!(a["train_samples"], b["train_samples"], "{what}");
                assert_eq!(a["distributed"]["world"], w, "{what}");
                assert!(a["distributed"]["allreduce"]["bytes"].as_u64().unwrap() > 0);
                assert!(b.get("distributed").is_none());
            }
        }
    }

    #[test]
    fn a_killed_rank_ends_the_job_with_an_error() {
        let d = data("dist-mpi-kill");
        let runs = TempDir::new("dist-mpi-kill-runs");
        let dir = runs.join("r");
        let out = mpirun(
            2,
            &train_args(s(d.path()), s(&dir), "4"),
            &[("MLA_TEST_KILL", "1:3")],
            Duration::from_secs(120),
        );
        assert!(
            !out.status.success(),
            "the job must fail when a rank is killed"
        );
        // Epoch 1 was written before the kill (epoch 2's writes may or may
        // not have finished when mpirun stopped rank 0); epoch 3 never ran.
        let n = records(&dir).len();
        assert!((1..=2).contains(&n), "{n} epochs recorded");
    }

    #[test]
    fn a_failing_rank_ends_the_job_with_its_error() {
        let d = data("dist-mpi-fail");
        let runs = TempDir::new("dist-mpi-fail-runs");
        let dir = runs.join("r");
        ok(&train_args(s(d.path()), s(&dir), "1"));
        // Rank 0 refuses the run directory already there; rank 1 waits in its
        // first collective until the job is aborted.
        let out = mpirun(
            2,
            &train_args(s(d.path()), s(&dir), "1"),
            &[],
            Duration::from_secs(120),
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("error: rank 0 of 2") && err.contains("--overwrite"),
            "{err}"
        );
    }

    #[test]
    fn a_resumed_job_replays_the_uninterrupted_one() {
        let d = data("dist-mpi-resume");
        let runs = TempDir::new("dist-mpi-resume-runs");
        let (whole, part) = (runs.join("whole"), runs.join("part"));
        let limit = Duration::from_secs(180);
        succeeded(
            &mpirun(2, &train_args(s(d.path()), s(&whole), "2"), &[], limit),
            "whole",
        );
        succeeded(
            &mpirun(2, &train_args(s(d.path()), s(&part), "1"), &[], limit),
            "part",
        );
        let resume = [
            "train",
            "--resume",
            s(&part),
            "--epochs",
            "2",
            "--threads",
            "1",
            "--backend",
            "cpu",
            "--quiet",
        ];
        succeeded(&mpirun(2, &resume, &[], limit), "resume");
        let strip = |mut r: Value| {
            for k in ["train_seconds", "epoch_seconds", "samples_per_second"] {
                r.as_object_mut().unwrap().remove(k);
            }
            r["distributed"]["allreduce"]
                .as_object_mut()
                .unwrap()
                .remove("seconds");
            r
        };
        let a: Vec<Value> = records(&whole).into_iter().map(strip).collect();
        let b: Vec<Value> = records(&part).into_iter().map(strip).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn sync_bn_ranks_train_what_one_process_trains_and_refusals_never_hang() {
        // Every sample with both modalities; 100 in batches of 32 end on a
        // batch of 4 (two rows per rank).
        let d = synthetic(
            "dist-mpi-syncbn",
            &Synthetic {
                train: 100,
                val: 64,
                test: 64,
                audio_missing_every: 0,
                ..Synthetic::default()
            },
        );
        let runs = TempDir::new("dist-mpi-syncbn-runs");
        let resnet = |dir: &Path, method: &'static str| -> Vec<String> {
            let mut v: Vec<String> = train_args(s(d.path()), s(dir), "1")
                .iter()
                .map(|x| x.to_string())
                .collect();
            v.extend(
                [
                    "--method",
                    method,
                    "--encoder",
                    "resnet18-small",
                    "--width-mult",
                    "0.125",
                    "--feature-size",
                    "64",
                ]
                .map(String::from),
            );
            v
        };
        let one = runs.join("one");
        let a = resnet(&one, "joint");
        ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let dir = runs.join("w2");
        let mut a = resnet(&dir, "joint");
        a.push("--sync-bn".into());
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = mpirun(2, &args, &[], Duration::from_secs(180));
        succeeded(&out, "W=2 --sync-bn");
        for (a, b) in records(&dir).iter().zip(&records(&one)) {
            let close = |x: f64, y: f64, k: &str| {
                assert!((x - y).abs() <= 1e-4 + 1e-4 * y.abs(), "{k}: {x} vs {y}")
            };
            close(f(&a["train_loss"]), f(&b["train_loss"]), "train loss");
            // Evaluation uses the running statistics: equal only if they are.
            close(f(&a["val"]["loss"]), f(&b["val"]["loss"]), "val loss");
        }
        // A refused method: every rank fails with the same error, none waits.
        let mut a = resnet(&runs.join("pmr"), "pmr");
        a.push("--sync-bn".into());
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = mpirun(2, &args, &[], Duration::from_secs(60));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--sync-bn") && err.contains("pmr"), "{err}");
    }
}
