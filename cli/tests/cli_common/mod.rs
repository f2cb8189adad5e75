//! Running the `mla` binary in tests: success with its stdout, or failure
//! with exactly one `error:` line and no panic.
#![allow(dead_code)]

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_mla");

pub fn mla(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run mla")
}

pub fn ok(args: &[&str]) -> String {
    let out = mla(args);
    assert!(
        out.status.success(),
        "mla {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail with exactly one `error:` line on stderr; returns it.
pub fn fails(args: &[&str]) -> String {
    let out = mla(args);
    assert!(
        !out.status.success(),
        "mla {args:?} should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "mla {args:?} panicked: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(
        errors.len(),
        1,
        "mla {args:?}: expected one error line: {err}"
    );
    errors[0].to_string()
}

pub fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
