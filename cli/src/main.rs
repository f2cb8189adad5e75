//! The `mla` binary: prepare data, train, evaluate, benchmark.

mod alloc;
mod backend;
mod cmd_bench;
mod cmd_eval;
mod cmd_prepare;
mod cmd_train;
mod report;

use clap::{Parser, Subcommand};

/// Large step buffers are recycled instead of page-faulted in every step (see alloc.rs).
#[global_allocator]
static GLOBAL: alloc::CachingAlloc = alloc::CachingAlloc::new();

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
    Train(cmd_train::Args),
    /// Evaluate a checkpoint.
    Eval(cmd_eval::Args),
    /// Time training steps.
    Bench(cmd_bench::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Prepare(a)) => cmd_prepare::run(a),
        Some(Command::Train(a)) => cmd_train::run(a),
        Some(Command::Eval(a)) => cmd_eval::run(a),
        Some(Command::Bench(a)) => cmd_bench::run(a),
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
