//! Expected calibration error: how far a modality's confidence (its largest
//! softmax probability) is from its accuracy, over equal-width confidence bins.

/// Bins of [`expected_calibration_error`] (the usual choice since Guo et al. 2017).
pub const ECE_BINS: usize = 15;

/// ECE of `softmax(z / temperature)` over `rows` (`[n, classes]` each with
/// its label): `sum_b n_b / n * |accuracy_b - confidence_b|`, bin b holding
/// confidences in `(b / B, (b + 1) / B]`. `None` without rows.
pub fn expected_calibration_error<'a>(
    rows: impl IntoIterator<Item = (&'a [f32], usize)>,
    temperature: f64,
    bins: usize,
) -> Option<f64> {
    let bins = bins.max(1);
    let mut count = vec![0u64; bins];
    let mut correct = vec![0u64; bins];
    let mut conf_sum = vec![0.0f64; bins];
    let mut n = 0u64;
    for (z, label) in rows {
        let mut best = 0;
        for (j, &v) in z.iter().enumerate() {
            if v > z[best] {
                best = j;
            }
        }
        let top = z[best] as f64 / temperature;
        let denom: f64 = z
            .iter()
            .map(|&v| (v as f64 / temperature - top).exp())
            .sum();
        let conf = 1.0 / denom;
        // (b/B, (b+1)/B]: ceil(conf * B) - 1, clamped for conf at 0 or rounding past 1.
        let b = ((conf * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        count[b] += 1;
        correct[b] += u64::from(best == label);
        conf_sum[b] += conf;
        n += 1;
    }
    (n > 0).then(|| {
        (0..bins)
            .filter(|&b| count[b] > 0)
            .map(|b| {
                let acc = correct[b] as f64 / count[b] as f64;
                let conf = conf_sum[b] / count[b] as f64;
                count[b] as f64 / n as f64 * (acc - conf).abs()
            })
            .sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ece_of_hand_computed_bins() {
        // Two classes. Sample 1: confidence 0.5 (bin 7 of 15), correct.
        // Sample 2: logits (ln 3, 0) -> confidence 0.75 (bin 11), wrong.
        let a = [0.0f32, 0.0];
        let b = [3f32.ln(), 0.0];
        let ece = expected_calibration_error([(&a[..], 0), (&b[..], 1)], 1.0, 15).unwrap();
        let want = 0.5 * (1.0 - 0.5) + 0.5 * (0.0 - 0.75f64).abs();
        assert!((ece - want).abs() < 1e-6, "{ece} vs {want}");
        // Same bin: errors average before the absolute value.
        let ece1 = expected_calibration_error([(&b[..], 0), (&b[..], 1)], 1.0, 1).unwrap();
        assert!((ece1 - 0.25).abs() < 1e-6, "{ece1}");
        assert_eq!(
            expected_calibration_error(std::iter::empty(), 1.0, 15),
            None
        );
    }

    #[test]
    fn temperature_softens_confidence() {
        let z = [4.0f32, 0.0, 0.0];
        // Always wrong: ECE equals the mean confidence, lower when softened.
        let hot = expected_calibration_error([(&z[..], 1)], 1.0, 15).unwrap();
        let soft = expected_calibration_error([(&z[..], 1)], 10.0, 15).unwrap();
        assert!(soft < hot && soft > 1.0 / 3.0, "{soft} {hot}");
    }
}
