//! `libero`: the operator's commands. `libero --help` lists them, `libero <command> --help`
//! says what each does and takes.

use clap::Parser;
use libero_cli::cli::Cli;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // A usage mistake ends here, with clap's message and exit code 2; `--help` with 0.
    let cli = Cli::parse();
    if let Err(e) = cli.run().await {
        eprintln!("libero: {e:#}");
        std::process::exit(1);
    }
}
