use std::path::PathBuf;
use std::time::Instant;

use mla_models::data::synthetic::parse_modality;
use mla_models::data::{
    prepare_avmnist, prepare_synthetic, AvmnistOptions, DataError, SyntheticOptions,
};

use crate::CliResult;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub dataset: Dataset,
}

#[derive(clap::Subcommand)]
pub enum Dataset {
    /// AV-MNIST: MNIST images paired with FSDD spoken digits (speaker-held-out splits).
    Avmnist(AvmnistArgs),
    /// Synthetic rows of any shapes (class pattern plus Gaussian noise): for `mla bench` at
    /// shapes no prepared dataset has, such as CREMA-D's (audio 1x257x188, a 3x224x224 frame).
    Synthetic(SyntheticArgs),
}

#[derive(clap::Args)]
pub struct SyntheticArgs {
    /// Output dataset directory (must not exist yet, or be empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A modality and its row shape, NAME=D1xD2x... (repeat it; training order).
    #[arg(long = "modality", value_name = "NAME=DIMS", required = true)]
    pub modalities: Vec<String>,
    /// Number of classes, at least 2.
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Samples in all: 80% train, 10% validation, the rest test.
    #[arg(long, default_value_t = 1000)]
    pub samples: usize,
    /// Distinct rows per class and modality, shared by the class's samples.
    #[arg(long, default_value_t = 4)]
    pub rows_per_class: usize,
    /// Amplitude of each class's pattern against unit-variance noise.
    #[arg(long, default_value_t = 1.0)]
    pub signal: f64,
    /// Seed of the rows' random values (the split is fixed: by position).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(clap::Args)]
pub struct AvmnistArgs {
    /// Folder with the raw sources: mnist/ (IDX files) and fsdd/ (WAV recordings).
    #[arg(long, value_name = "DIR", default_value = "../shared/data/avmnist")]
    pub raw: PathBuf,
    /// Output dataset directory (must not exist yet, or be empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Gaussian pixel noise sigma added to every image (then clipped to [0, 1]).
    #[arg(long, value_name = "SIGMA", default_value_t = 0.0)]
    pub image_noise: f64,
    /// Remove the leading principal components of the images holding this fraction of
    /// the variance (PCA fitted on the train split; 0.75 removes 34 components).
    #[arg(long, value_name = "FRAC")]
    pub image_pca_drop: Option<f64>,
    /// Seed of the audio pairing and of the pixel noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: Args) -> CliResult {
    match args.dataset {
        Dataset::Avmnist(a) => run_avmnist(a),
        Dataset::Synthetic(a) => run_synthetic(a),
    }
}

fn run_synthetic(a: SyntheticArgs) -> CliResult {
    let fail = |e: DataError| format!("mla prepare synthetic: {e}");
    let modalities = a
        .modalities
        .iter()
        .map(|m| parse_modality(m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let opts = SyntheticOptions {
        out: a.out,
        modalities,
        classes: a.classes,
        samples: a.samples,
        rows_per_class: a.rows_per_class,
        signal: a.signal,
        seed: a.seed,
    };
    let r = prepare_synthetic(&opts).map_err(fail)?;
    println!("synthetic dataset written to {}", r.out.display());
    println!(
        "  samples     {} (train {}, validation {}, test {}), {} classes",
        opts.samples, r.train, r.validation, r.test, opts.classes
    );
    for ((name, dims), bytes) in opts.modalities.iter().zip(&r.bytes) {
        println!(
            "  {name:<11} {dims:?} per sample, {} distinct rows ({:.1} MiB)",
            opts.classes * opts.rows_per_class,
            *bytes as f64 / (1u64 << 20) as f64
        );
    }
    println!("  seed        {}", opts.seed);
    Ok(())
}

fn run_avmnist(a: AvmnistArgs) -> CliResult {
    let opts = AvmnistOptions {
        raw: a.raw,
        out: a.out,
        seed: a.seed,
        image_noise: a.image_noise,
        image_pca_drop: a.image_pca_drop,
    };
    let start = Instant::now();
    let mut progress = |msg: &str| eprintln!("[{:6.1}s] {msg}", start.elapsed().as_secs_f64());
    let r =
        prepare_avmnist(&opts, &mut progress).map_err(|e| format!("mla prepare avmnist: {e}"))?;
    println!(
        "AV-MNIST written to {} in {:.1} s",
        r.out.display(),
        r.seconds
    );
    println!(
        "  samples     {} (train {}, validation {}, test {})",
        r.samples, r.train, r.validation, r.test
    );
    println!("  image       [1, 28, 28] per sample");
    println!(
        "  audio       {} recordings [1, 40, 63], standardised by mean {:.4}, std {:.4}",
        r.audio_rows, r.audio_mean, r.audio_std
    );
    println!("  speakers    train george/jackson/lucas/nicolas, validation yweweler, test theo");
    if opts.image_noise > 0.0 {
        println!("  image noise sigma {}", opts.image_noise);
    }
    if let (Some(k), Some(v)) = (r.pca_components_removed, r.pca_variance_removed) {
        println!(
            "  image PCA   removed the top {k} components ({:.2}% of the train variance)",
            100.0 * v
        );
    }
    println!("  seed        {}", opts.seed);
    Ok(())
}
