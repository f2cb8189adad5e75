//! Terminal output of training and evaluation: a progress bar per epoch
//! (stderr, hidden when stderr is not a terminal), one line per finished
//! epoch, and summary tables (stdout).

use indicatif::{ProgressBar, ProgressStyle};
use mla_models::data::Split;
use mla_models::fusion::{FusionFit, FusionRule};
use mla_models::metrics::NamedValues;
use mla_models::model::HeadKind;
use mla_models::trainer::{AlphaMode, AlphaSchedule, EvalMetrics};
use mla_models::trainer::{EpochRecord, MethodKind, Observer, Summary};
use std::time::Instant;

pub fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// Progress bars and epoch lines.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Progress {
            bar: None,
            started: Instant::now(),
            quiet,
        }
    }
}

impl Observer for Progress {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize, _samples: usize) {
        if self.quiet {
            return;
        }
        let bar = ProgressBar::new(batches as u64);
        let style = ProgressStyle::with_template(&format!(
            "epoch {epoch}/{epochs} [{{bar:30.cyan/blue}}] {{pos}}/{{len}} batches {{msg}} ({{elapsed}}, eta {{eta}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        self.bar = Some(bar);
        self.started = Instant::now();
    }

    fn progress(&mut self, batches: usize, samples: u64, loss: f64) {
        if let Some(bar) = &self.bar {
            let rate = samples as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(batches as u64);
            bar.set_message(format!("loss {loss:.4}, {rate:.0} samples/s"));
        }
    }

    fn evaluating(&mut self, split: Split) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("evaluating {split}"));
        }
    }

    fn epoch_end(&mut self, r: &EpochRecord) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.quiet {
            return;
        }
        let mods: Vec<String> = r
            .val
            .modality_accuracy
            .iter()
            .map(|(m, a)| format!("{m} {}", pct(a)))
            .collect();
        let mut hgm = r
            .hgm_surviving_fraction
            .map(|f| format!(", head gradient kept {f:.3}"))
            .unwrap_or_default();
        if let Some(f) = &r.forgetting {
            hgm.push_str(&format!(
                ", forgetting {:+.5} loss / {:+.2}% acc per step",
                f.loss_increase,
                100.0 * f.accuracy_drop
            ));
        }
        eprintln!(
            "epoch {}: loss {:.4}, val fused {} ({}){hgm}, {:.0} samples/s, {:.1} s{}",
            r.epoch,
            r.train_loss,
            pct(r.val.fused_accuracy),
            mods.join(", "),
            r.samples_per_second,
            r.epoch_seconds,
            if r.best { "  [best]" } else { "" }
        );
    }
}

/// One table row; `val` is `None` for a table without a validation column.
fn row(
    out: &mut String,
    name: &str,
    val: Option<Option<f64>>,
    test: Option<f64>,
    fmt: fn(f64) -> String,
) {
    let cell = |v: Option<f64>| v.map(fmt).unwrap_or_else(|| "-".into());
    match val {
        Some(v) => out.push_str(&format!(
            "  {name:<26} {:>10} {:>10}\n",
            cell(v),
            cell(test)
        )),
        None => out.push_str(&format!("  {name:<26} {:>10}\n", cell(test))),
    }
}

/// Rows of one or two evaluations side by side.
pub fn metrics_table(
    method: MethodKind,
    fusion: FusionRule,
    val: Option<&EvalMetrics>,
    test: &EvalMetrics,
    test_label: &str,
) -> String {
    let mut out = match val {
        Some(_) => format!("  {:<26} {:>10} {:>10}\n", "", "val", test_label),
        None => format!("  {:<26} {:>10}\n", "", test_label),
    };
    // Per row: Some(value or missing) with a validation column, None without.
    let v = |f: &dyn Fn(&EvalMetrics) -> Option<f64>| val.map(f);
    let used = test.fusion_rule.unwrap_or(fusion);
    let fused_name = match method {
        m if m.fuses_by_rule() && used != fusion => format!("fused ({fusion}: {used})"),
        m if m.fuses_by_rule() => format!("fused ({fusion})"),
        MethodKind::Unimodal => "fused (= modality)".into(),
        m => format!("fused ({m}: concatenation head)"),
    };
    row(
        &mut out,
        &fused_name,
        v(&|m| Some(m.fused_accuracy)),
        Some(test.fused_accuracy),
        pct,
    );
    row(
        &mut out,
        "fused macro-F1",
        v(&|m| Some(m.fused_macro_f1)),
        Some(test.fused_macro_f1),
        f1,
    );
    if let Some(fa) = &test.fusion_accuracy {
        for (rule, acc) in fa.iter() {
            if rule != used.as_str() {
                let vr = v(&|m| m.fusion_accuracy.as_ref().and_then(|f| f.get(rule)));
                row(&mut out, &format!("fused ({rule})"), vr, Some(acc), pct);
            }
        }
    }
    for (name, acc) in test.modality_accuracy.iter() {
        let label = if method.head() == HeadKind::Concat {
            format!("{name} (head slice)")
        } else if method.head() == HeadKind::ConcatUnimodal {
            format!("{name} (own head)")
        } else if method.head() == HeadKind::Ensemble {
            format!("{name} (beta x shared head)")
        } else {
            name.to_string()
        };
        row(
            &mut out,
            &label,
            v(&|m| m.modality_accuracy.get(name)),
            Some(acc),
            pct,
        );
    }
    for (name, x) in test.modality_macro_f1.iter() {
        let vr = v(&|m| m.modality_macro_f1.get(name));
        row(&mut out, &format!("{name} macro-F1"), vr, Some(x), f1);
    }
    let ece_rows: [(&str, fn(&EvalMetrics) -> Option<&NamedValues>); 2] = [
        ("ECE", |m| m.calibration_error.as_ref()),
        ("ECE calibrated", |m| {
            m.calibration_error_calibrated.as_ref()
        }),
    ];
    for (label, get) in ece_rows {
        if let Some(e) = get(test) {
            for (name, x) in e.iter() {
                let vr = v(&|m| get(m).and_then(|e| e.get(name)));
                row(&mut out, &format!("{label} {name}"), vr, Some(x), |x| {
                    format!("{x:.4}")
                });
            }
        }
    }
    if test.modality_gap.is_some() {
        row(
            &mut out,
            "modality gap",
            v(&|m| m.modality_gap),
            test.modality_gap,
            |g| format!("{g:.4}"),
        );
    }
    row(
        &mut out,
        "loss",
        v(&|m| Some(m.loss)),
        Some(test.loss),
        |l| format!("{l:.4}"),
    );
    row(
        &mut out,
        "samples",
        v(&|m| Some(m.samples as f64)),
        Some(test.samples as f64),
        |n| format!("{n:.0}"),
    );
    out
}

fn f1(x: f64) -> String {
    format!("{x:.4}")
}

/// The Shapley contributions of one split in one line (accuracy points),
/// or why there are none: more than 8 modalities, or metrics recorded
/// before Shapley values existed (a resumed old run).
pub fn shapley_line(m: &EvalMetrics, split: &str) -> String {
    let Some(sh) = &m.shapley else {
        return format!(
            "  Shapley ({split}): none recorded (computed for up to 8 modalities, by runs since issue 10)\n"
        );
    };
    let list = |nv: &NamedValues, f: &dyn Fn(f64) -> String| {
        nv.iter()
            .map(|(n, v)| format!("{n} {}", f(v)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let points = |x: f64| format!("{:+.2}", 100.0 * x);
    format!(
        "  Shapley ({split}, {} removal, fused accuracy points): {}; v(none) {}, v(all) {}; per-sample mean |phi| {}\n",
        sh.removal,
        list(&sh.dataset, &points),
        pct(sh.v_empty),
        pct(sh.v_full),
        list(&sh.per_sample_mean_abs, &|x| format!("{x:.3}")),
    )
}

pub fn summary_table(s: &Summary) -> String {
    let what = match s.method {
        MethodKind::Mla => {
            let alpha = match (s.alpha_schedule, s.alpha_mode) {
                (AlphaSchedule::Constant, AlphaMode::Absolute) => format!("alpha {}", s.alpha),
                (AlphaSchedule::Constant, m) => format!("alpha {} ({m})", s.alpha),
                (sch, m) => format!("alpha {sch} ({m})"),
            };
            format!("MLA (hgm {}, {alpha}, fusion {})", s.hgm, s.fusion)
        }
        MethodKind::Joint => "joint (concatenation, one head)".into(),
        MethodKind::Unimodal => format!("unimodal ({})", s.modality.as_deref().unwrap_or("?")),
        m @ (MethodKind::Ogm | MethodKind::OgmGe) => match &s.ogm {
            Some(o) => format!(
                "{m} (alpha {}, window {}, {} tensors, {} rule)",
                o.alpha, o.window, o.tensors, o.rule
            ),
            None => m.to_string(),
        },
        MethodKind::Pmr => match &s.pmr {
            Some(p) => format!(
                "pmr (PCE; alpha {}, momentum {}, window {})",
                p.alpha, p.momentum, p.window
            ),
            None => "pmr".into(),
        },
        MethodKind::Agm => match &s.agm {
            Some(p) => format!(
                "agm (alpha {}, window {}, clip {}, stale kappa {})",
                p.alpha, p.window, p.clip, p.stale_kappa
            ),
            None => "agm".into(),
        },
        MethodKind::Mmpareto => match &s.mmpareto {
            Some(p) => format!("mmpareto (norm scope {}, scale {})", p.norm_scope, p.scale),
            None => "mmpareto".into(),
        },
        MethodKind::Reconboost => match &s.reconboost {
            Some(p) => format!(
                "reconboost (w1 {}, w2 {}, schedule {}, {} optimizer per phase, fusion {})",
                p.w1,
                p.w2,
                p.schedule,
                if p.reset_optimizer { "fresh" } else { "one" },
                s.fusion
            ),
            None => "reconboost".into(),
        },
        MethodKind::Gblending => match &s.gblending {
            Some(p) => format!(
                "gblending (every {}, {} estimation epochs, {} rule)",
                p.every, p.epochs, p.rule
            ),
            None => "gblending".into(),
        },
    };
    let mut out = format!(
        "{what}, encoder {}, seed {}: best epoch {} of {}\n",
        s.encoder, s.seed, s.best_epoch, s.epochs
    );
    out.push_str(&metrics_table(
        s.method,
        s.fusion,
        Some(&s.val),
        &s.test,
        "test",
    ));
    if let Some(f) = &s.fusion_fit {
        out.push_str(&fusion_fit_lines(f));
    }
    out.push_str(&shapley_line(&s.test, "test"));
    if !s.hgm_surviving_fraction.is_empty() {
        let f: Vec<String> = s
            .hgm_surviving_fraction
            .iter()
            .map(|f| format!("{f:.3}"))
            .collect();
        out.push_str(&format!(
            "  head gradient kept by HGM per epoch: {}\n",
            f.join(", ")
        ));
    }
    if !s.forgetting_loss_increase.is_empty() {
        let f: Vec<String> = s
            .forgetting_loss_increase
            .iter()
            .zip(&s.forgetting_accuracy_drop)
            .map(|(l, a)| format!("{l:+.5} ({:+.2}%)", 100.0 * a))
            .collect();
        out.push_str(&format!(
            "  forgetting per modality step (other modalities' probe loss increase, accuracy drop) per epoch: {}\n",
            f.join(", ")
        ));
    }
    if let Some(m) = &s.missing {
        let parts: Vec<String> = m
            .modalities
            .iter()
            .map(|x| {
                format!(
                    "{} {:.2}% of {} (target {}%)",
                    x.name,
                    100.0 * x.observed_rate,
                    x.eligible,
                    100.0 * x.rate
                )
            })
            .collect();
        out.push_str(&format!(
            "  missing on purpose (train, seed {}, {}): {}; {} samples given a modality back\n",
            m.seed,
            m.policy,
            parts.join(", "),
            m.restored
        ));
    }
    let flops = s
        .gflop_per_step
        .map(|g| format!("; {g:.3} GFLOP per step in matrix products"))
        .unwrap_or_default();
    out.push_str(&format!(
        "  time: {:.1} s training ({:.0} samples/s on {}), {:.1} s in all{flops}\n",
        s.train_seconds, s.samples_per_second, s.backend, s.total_seconds
    ));
    if let Some(p) = &s.provenance {
        let mem = s
            .peak_rss_bytes
            .map(|b| format!(", peak memory {:.0} MiB", b as f64 / (1 << 20) as f64))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {} parameters{mem}; mla {} ({}), cpu {}, dataset {}\n",
            p.parameters, p.mla_version, p.git_commit, p.cpu_model, p.dataset_hash
        ));
    }
    out
}

/// The fusion parameters fitted on validation, one line each.
pub fn fusion_fit_lines(f: &FusionFit) -> String {
    let list = |nv: &NamedValues| {
        nv.iter()
            .map(|(n, v)| format!("{n} {v:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "  fusion fitted on {} validation samples: temperatures {}; weights {}; weights with entropy {}; auto chose {}\n",
        f.samples,
        list(&f.temperatures),
        list(&f.weights),
        list(&f.weights_entropy),
        f.chosen
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mla_models::shapley::{Removal, Shapley};

    fn nv(pairs: &[(&str, f64)]) -> NamedValues {
        NamedValues(pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect())
    }

    #[test]
    fn tables_show_macro_f1_and_shapley() {
        let mut m = EvalMetrics {
            samples: 10,
            fused_accuracy: 0.9,
            fused_macro_f1: 0.875,
            modality_accuracy: nv(&[("image", 0.8), ("audio", 0.4)]),
            modality_macro_f1: nv(&[("image", 0.75), ("audio", 0.3125)]),
            ..EvalMetrics::default()
        };
        let t = metrics_table(MethodKind::Joint, FusionRule::Auto, None, &m, "test");
        assert!(t.contains("fused macro-F1") && t.contains("0.8750"), "{t}");
        assert!(t.contains("audio macro-F1") && t.contains("0.3125"), "{t}");
        assert!(shapley_line(&m, "test").contains("none recorded"));
        m.shapley = Some(Shapley {
            removal: Removal::ZeroFeature,
            v_empty: 0.1,
            v_full: 0.9,
            dataset: nv(&[("image", 0.6), ("audio", 0.2)]),
            per_sample_mean: nv(&[("image", 0.6), ("audio", 0.2)]),
            per_sample_mean_abs: nv(&[("image", 0.7), ("audio", 0.25)]),
        });
        let line = shapley_line(&m, "test");
        for want in [
            "zero-feature",
            "image +60.00",
            "audio +20.00",
            "v(none) 10.00%",
            "v(all) 90.00%",
            "audio 0.250",
        ] {
            assert!(line.contains(want), "{want}: {line}");
        }
    }
}
