//! A training loop that builds and drops its tape every step keeps a flat
//! resident set: nothing from step t (tape nodes, saved activations, im2col
//! buffers, gradients) survives into step t+1. One test in this binary so no
//! other test's allocations move the measurement.

use mla_core::Indices;
use mla_cpu::Cpu;
use mla_models::rng::Rng;
use mla_tests::train::{bars, convnet_logits, convnet_params, sgd_step};

/// Resident set size in bytes, from /proc/self/status (VmRSS, in kB).
fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

const BATCH: usize = 32;
const SIZE: usize = 12;
const CHANNELS: usize = 4;

/// Allowance on top of 5% for allocator noise: glibc keeps freed chunks in
/// per-thread arenas (rayon workers each touch theirs) and trims them lazily,
/// so the resident set wobbles by a few hundred kB between otherwise identical
/// steps. 1 MiB covers that and is still small next to any real leak (see the
/// sensitivity check in the test).
const SLACK_BYTES: usize = 1 << 20;

#[test]
fn resident_memory_stays_flat_over_2000_steps() {
    let Some(_) = rss_bytes() else {
        eprintln!("skipped: /proc/self/status has no VmRSS on this platform");
        return;
    };
    let mut rng = Rng::new(99);
    let (x, y) = bars(&mut rng, 256, SIZE);
    let mut params = convnet_params(&mut rng, SIZE, CHANNELS, 2);
    let mut order: Vec<usize> = (0..256).collect();
    let mut rss_at_200 = 0;
    for step in 0..2000 {
        if step % (256 / BATCH) == 0 {
            rng.shuffle(&mut order);
        }
        let start = (step % (256 / BATCH)) * BATCH;
        let rows = &order[start..start + BATCH];
        let pick = Indices::<f32, Cpu>::from_usize(&Cpu, rows).unwrap();
        let batch_labels: Vec<u32> = rows.iter().map(|&r| y[r]).collect();
        let target = Indices::new(&Cpu, &batch_labels).unwrap();
        let loss = sgd_step(&mut params, 0.05, |tape, p| {
            let xb = tape.constant(x.clone()).gather_rows(&pick)?;
            convnet_logits(p, &xb)?.cross_entropy(&target)
        })
        .unwrap();
        assert!(loss.is_finite());
        if step + 1 == 200 {
            rss_at_200 = rss_bytes().unwrap();
        }
    }
    let rss_at_2000 = rss_bytes().unwrap();

    // Sensitivity: the im2col buffer alone is BATCH * 9 * SIZE^2 f32 per step.
    // Keeping even 1% of it per step over 1800 steps would exceed the slack,
    // so this test can see a leak of a tape or of any saved activation.
    let im2col_bytes = BATCH * 9 * SIZE * SIZE * 4;
    assert!(
        1800 * im2col_bytes / 100 > SLACK_BYTES,
        "test too insensitive for its slack"
    );

    let limit = rss_at_200 + rss_at_200 / 20 + SLACK_BYTES;
    eprintln!(
        "VmRSS after 200 steps: {} kB, after 2000: {} kB (limit {} kB)",
        rss_at_200 / 1024,
        rss_at_2000 / 1024,
        limit / 1024
    );
    assert!(
        rss_at_2000 <= limit,
        "resident memory grew from {} kB (step 200) to {} kB (step 2000), limit {} kB",
        rss_at_200 / 1024,
        rss_at_2000 / 1024,
        limit / 1024
    );
}
