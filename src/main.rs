//! The `stationd` binary: parses the command line, loads the config, sets up logging,
//! builds the runtime and runs the daemon until SIGTERM/SIGINT. Maps failures to exit
//! codes that systemd can act on (see `EXIT_*`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stationd::config::{Config, EMBEDDED_DEFAULTS};

/// Configuration error: systemd's `RestartPreventExitStatus=78` stops a restart loop on it
/// (78 is EX_CONFIG from sysexits.h).
const EXIT_CONFIG: u8 = 78;
/// Runtime failure (a service failed, a device could not be opened): restart may help.
const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(
    name = "stationd",
    version,
    about = "Factory edge station daemon: cameras, inspection, records, plant interfaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (on the embedded laptop defaults without --config).
    Run {
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Parse and validate a config file, check the files it names, and exit.
    CheckConfig { path: PathBuf },
    /// Print the embedded default config.
    PrintDefaultConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { path } => match Config::load(&path).and_then(|c| c.check_files().map(|()| c)) {
            Ok(_) => {
                eprintln!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{}: {err}", path.display());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::PrintDefaultConfig => {
            #[allow(clippy::print_stdout, reason = "printing the config is this command's job")]
            {
                print!("{EMBEDDED_DEFAULTS}");
            }
            ExitCode::SUCCESS
        }
        Command::Run { config } => {
            let loaded = match &config {
                Some(path) => Config::load(path).and_then(|c| c.check_files().map(|()| c)),
                None => Ok(Config::embedded_defaults()).and_then(|c| c.check_files().map(|()| c)),
            };
            let config = match loaded {
                Ok(config) => config,
                Err(err) => {
                    let source = config.as_deref().map_or("embedded defaults".into(), |p| p.display().to_string());
                    eprintln!("stationd: config error in {source}: {err}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            stationd::telemetry::init(&config.log_filter);
            tracing::info!(version = env!("CARGO_PKG_VERSION"), state_dir = %config.state_dir.display(), "stationd starting");
            let runtime =
                match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("stationd-rt").build() {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        tracing::error!(cause = %err, "cannot build the async runtime");
                        return ExitCode::from(EXIT_FAILURE);
                    }
                };
            match runtime.block_on(stationd::app::run(config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("stationd stopped: {err:#}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
    }
}

/// SIGTERM (systemd's stop) or SIGINT (Ctrl-C) both mean: drain and stop.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(cause = %err, "cannot listen for SIGTERM; only Ctrl-C stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "signal received"),
    }
}
