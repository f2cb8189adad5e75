//! The `mla` binary: prepare data, train, evaluate, benchmark.

mod backend;
mod cmd_bench;
mod cmd_eval;
mod cmd_plot;
mod cmd_prepare;
mod cmd_report;
mod cmd_robustness;
mod cmd_sweep;
mod cmd_train;
mod config_file;
mod distributed;
mod perturb;
mod plot;
mod report;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Error type of every command: one clear message, printed once by `main`.
pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser)]
#[command(
    name = "mla",
    version,
    about = "Multimodal learning with alternating unimodal adaptation (MLA)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Build a dataset in the mla-dataset/1 format from raw sources.
    Prepare(cmd_prepare::Args),
    /// Train MLA or a baseline (with no flags: MLA on AV-MNIST).
    // Negative numbers are values (`--lr -1` reaches the value check), for
    // every flag at once.
    #[command(allow_negative_numbers = true)]
    Train(cmd_train::Args),
    /// Evaluate a checkpoint.
    Eval(cmd_eval::Args),
    /// Time training steps.
    Bench(cmd_bench::Args),
    /// Train every combination of a grid of settings (resumable).
    Sweep(cmd_sweep::Args),
    /// Evaluate a checkpoint at every level of a missing rate or corruption
    /// of one modality: accuracy curve, relative and effective robustness.
    Robustness(cmd_robustness::Args),
    /// Aggregate finished runs into a mean ± std table (Markdown, CSV).
    Report(cmd_report::Args),
    /// Plot a metric per epoch of one or more runs as an SVG line chart.
    Plot(cmd_plot::Args),
}

fn main() {
    // `mla report ... | head` closes stdout early: end quietly as other Unix
    // tools do, instead of a panic from println! on a broken pipe.
    #[cfg(unix)]
    // SAFETY: resetting a signal's disposition to the default before any
    // thread starts; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // A flag given twice to `train` takes its last value: the command line
    // comes after a config file's flags and overrides them.
    let cmd = Cli::command().mut_subcommand("train", |c| c.args_override_self(true));
    let train = cmd
        .find_subcommand("train")
        .expect("train subcommand")
        .clone();
    let argv = match config_file::expand(std::env::args_os().collect(), &train) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let matches = cmd.get_matches_from(argv);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Some(Command::Prepare(a)) => cmd_prepare::run(a),
        Some(Command::Train(a)) => {
            let m = matches.subcommand_matches("train").expect("train matches");
            cmd_train::run(a.with_resolved(config_file::resolved(&train, m)))
        }
        Some(Command::Eval(a)) => cmd_eval::run(a),
        Some(Command::Bench(a)) => cmd_bench::run(a),
        Some(Command::Sweep(a)) => cmd_sweep::run(a, &train),
        Some(Command::Report(a)) => cmd_report::run(a),
        Some(Command::Plot(a)) => cmd_plot::run(a),
        Some(Command::Robustness(a)) => cmd_robustness::run(a),
        None => {
            eprintln!("mla: no command given; try `mla train` or `mla --help`");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
