//! Robustness scores of an accuracy-versus-perturbation curve (MultiBench, Liang et al.
//! 2021): relative robustness is the area under the curve, effective robustness the area
//! of its difference from a reference curve shifted to agree at the first level. Levels
//! are normalised to [0, 1] (first to last), so a score does not depend on the units or
//! the number of levels, and the trapezoid rule handles uneven spacing. With MultiBench's
//! eleven levels 0, 0.1, ..., 1 the relative score is its `relative_robustness_helper`;
//! its effective score sums the differences instead of integrating them, which is
//! `effective_robustness_sum` here.

/// Checks a curve: at least two levels, strictly increasing, finite values.
fn check(levels: &[f64], values: &[f64]) -> Result<(), String> {
    if levels.len() != values.len() {
        return Err(format!(
            "{} levels but {} values",
            levels.len(),
            values.len()
        ));
    }
    if levels.len() < 2 {
        return Err("a robustness score needs at least two levels".into());
    }
    if levels
        .windows(2)
        .any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less))
    {
        return Err("levels must be strictly increasing".into());
    }
    if levels.iter().chain(values).any(|v| !v.is_finite()) {
        return Err("levels and values must be finite".into());
    }
    Ok(())
}

/// Trapezoid area under `values` over `levels` mapped linearly onto [0, 1].
fn area(levels: &[f64], values: &[f64]) -> f64 {
    let (lo, hi) = (levels[0], levels[levels.len() - 1]);
    levels
        .windows(2)
        .zip(values.windows(2))
        .map(|(l, v)| (l[1] - l[0]) / (hi - lo) * (v[0] + v[1]) / 2.0)
        .sum()
}

/// Area under the accuracy curve, levels normalised to [0, 1].
pub fn relative_robustness(levels: &[f64], accuracy: &[f64]) -> Result<f64, String> {
    check(levels, accuracy)?;
    Ok(area(levels, accuracy))
}

/// `accuracy - (reference + accuracy[0] - reference[0])` at each level: the gain over
/// the reference once both start at the same accuracy (both curves checked).
fn shifted_gap(levels: &[f64], accuracy: &[f64], reference: &[f64]) -> Result<Vec<f64>, String> {
    check(levels, accuracy)?;
    check(levels, reference)?;
    let offset = accuracy[0] - reference[0];
    Ok(accuracy
        .iter()
        .zip(reference)
        .map(|(a, r)| a - (r + offset))
        .collect())
}

/// Area of the shifted gap to `reference` (same levels), levels normalised to [0, 1].
pub fn effective_robustness(
    levels: &[f64],
    accuracy: &[f64],
    reference: &[f64],
) -> Result<f64, String> {
    Ok(area(levels, &shifted_gap(levels, accuracy, reference)?))
}

/// MultiBench's form: the sum of the shifted gap over the levels.
pub fn effective_robustness_sum(
    levels: &[f64],
    accuracy: &[f64],
    reference: &[f64],
) -> Result<f64, String> {
    Ok(shifted_gap(levels, accuracy, reference)?.iter().sum())
}

/// Levels written `START:END:STEP` (END included when the steps reach it within a
/// millionth of a step) or as a comma list.
pub fn parse_levels(s: &str) -> Result<Vec<f64>, String> {
    let num = |t: &str| -> Result<f64, String> {
        let v: f64 = t
            .trim()
            .parse()
            .map_err(|_| format!("levels {s:?}: {t:?} is not a number"))?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(format!("levels {s:?}: {t:?} is not finite"))
        }
    };
    let levels = if s.contains(':') {
        let parts: Vec<&str> = s.split(':').collect();
        let [a, b, step] = parts[..] else {
            return Err(format!(
                "levels {s:?}: expected START:END:STEP or a comma list"
            ));
        };
        let (a, b, step) = (num(a)?, num(b)?, num(step)?);
        // NaN fails too.
        if step.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || b < a {
            return Err(format!(
                "levels {s:?}: need START <= END and a positive STEP"
            ));
        }
        let n = ((b - a) / step + 1e-6).floor();
        if n > 10_000.0 {
            return Err(format!("levels {s:?}: more than 10000 levels"));
        }
        // Levels from the index, not by repeated addition: 0.1 * 3 is 0.30000000000000004
        // and the error would otherwise accumulate; rounding to 12 digits prints cleanly.
        (0..=n as usize)
            .map(|i| ((a + i as f64 * step) * 1e12).round() / 1e12)
            .collect()
    } else {
        s.split(',').map(num).collect::<Result<Vec<_>, _>>()?
    };
    if levels
        .windows(2)
        .any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less))
    {
        return Err(format!("levels {s:?}: must be strictly increasing"));
    }
    if levels.is_empty() {
        return Err(format!("levels {s:?}: no level"));
    }
    Ok(levels)
}
