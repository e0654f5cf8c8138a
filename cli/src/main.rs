//! The `tollgate` binary: parses the command line, sets up logging and runs the command
//! ([`commands`]), printing why it failed if it did. The gateway is the `tollgate` crate,
//! the control plane `tollgate-admin-api`; this crate only starts them.

mod commands;

use clap::Parser;
use commands::{Command, DEFAULT_CONFIG};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: under load glibc's arena locks and consolidation showed
/// up as ~12% of the gateway's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A credit-metered API gateway on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run {
        config: PathBuf::from(DEFAULT_CONFIG),
        upgrade: false,
    });
    match commands::execute(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tollgate: {message}");
            ExitCode::FAILURE
        }
    }
}
