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
    /// Play a tightening controller (Open Protocol) for benches and demos. Type `ok`,
    /// `nok`, `drop`, `cut`, `enable`, `disable` or `status` on stdin to drive it.
    WrenchSim(WrenchSimArgs),
    /// Manage REST API users directly in the station's database. Works while the daemon
    /// runs: it learns of the change at the user's next login, and refresh tokens are
    /// void at once (access tokens from before a reset lapse within their lifetime).
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user. The password is read from the first line of stdin with
    /// --password-stdin; otherwise a random one is made and printed.
    Add {
        username: String,
        /// admin, engineer or operator.
        #[arg(long)]
        role: String,
        #[arg(long)]
        password_stdin: bool,
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Give a user a new random password (printed) and enable it; its sessions end.
    ResetPassword {
        username: String,
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct WrenchSimArgs {
    /// Address to listen on (controllers use port 4545).
    #[arg(long, default_value = "127.0.0.1:4545")]
    bind: std::net::SocketAddr,
    /// Produce a result every this many milliseconds while the tool is enabled.
    #[arg(long, value_name = "MS")]
    interval_ms: Option<u64>,
    /// Share of scheduled results that are NOK (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    nok_ratio: f64,
    /// Offer link-level acknowledgement (MID 9997) to clients starting with MID 0001 rev >= 6.
    #[arg(long)]
    link_level: bool,
    /// Highest MID 0001 revision answered; above it, error 97.
    #[arg(long, default_value_t = 7)]
    max_comm_revision: u16,
    /// Highest MID 0061 revision (1 to 7) answered; 999 is always offered.
    #[arg(long, default_value_t = 7)]
    max_result_revision: u16,
    /// Close a link after this many seconds without traffic.
    #[arg(long, default_value_t = 15)]
    idle_timeout_s: u64,
    /// After a link drops without MID 0003, answer new clients with error 96 this long.
    #[arg(long, default_value_t = 0)]
    ghost_s: u64,
    /// Write telegrams in small pieces at random boundaries.
    #[arg(long)]
    split_writes: bool,
    /// Delay every reply to a request by this many milliseconds.
    #[arg(long, default_value_t = 0)]
    reply_delay_ms: u64,
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
        Command::WrenchSim(args) => wrench_sim(args),
        Command::User(command) => user(command),
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

fn user(command: UserCommand) -> ExitCode {
    use stationd::auth::{Role, check_password_rules, check_username, hash_password, random_password};
    use stationd::storage::{Db, NewUser, UserChange, UserUpdate};

    let config_path = match &command {
        UserCommand::Add { config, .. } | UserCommand::ResetPassword { config, .. } => config.clone(),
    };
    let config = match &config_path {
        Some(path) => Config::load(path),
        None => Ok(Config::embedded_defaults()),
    };
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("stationd user: config error: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let fail = |message: String| {
        eprintln!("stationd user: {message}");
        ExitCode::from(EXIT_FAILURE)
    };
    let mut db = match Db::open_for_users(&config.state_dir) {
        Ok(db) => db,
        Err(err) => return fail(format!("cannot open the database in {}: {err}", config.state_dir.display())),
    };
    let now = chrono::Utc::now();
    let show = |username: &str, password: &str| {
        #[allow(clippy::print_stdout, reason = "printing the new password is this command's job")]
        {
            println!("user {username}: password {password}");
        }
    };
    match command {
        UserCommand::Add { username, role, password_stdin, .. } => {
            let Some(role) = Role::parse(&role) else {
                return fail(format!("role {role:?} is not one of admin, engineer, operator"));
            };
            if let Err(reason) = check_username(&username) {
                return fail(reason);
            }
            let (password, generated) = if password_stdin {
                let mut line = String::new();
                if let Err(err) = std::io::stdin().read_line(&mut line) {
                    return fail(format!("cannot read the password from stdin: {err}"));
                }
                (line.trim_end_matches(['\r', '\n']).to_owned(), false)
            } else {
                (random_password(), true)
            };
            if let Err(reason) = check_password_rules(&username, &password) {
                return fail(reason);
            }
            let new =
                NewUser { username: username.clone(), email: None, role, password_hash: hash_password(&password) };
            match db.insert_user(new, now) {
                Ok(Some(_)) => {
                    let _ =
                        db.audit(now, None, None, "user_created", &format!("command line: user {username} ({role})"));
                    if generated {
                        show(&username, &password);
                    } else {
                        eprintln!("user {username} ({role}) added");
                    }
                    ExitCode::SUCCESS
                }
                Ok(None) => fail(format!("user {username:?} exists")),
                Err(err) => fail(err.to_string()),
            }
        }
        UserCommand::ResetPassword { username, .. } => {
            let user = match db.user_by_name(&username) {
                Ok(Some(user)) => user,
                Ok(None) => return fail(format!("no user {username:?}")),
                Err(err) => return fail(err.to_string()),
            };
            let password = random_password();
            let update = UserUpdate {
                password_hash: Some(hash_password(&password)),
                active: Some(true),
                ..UserUpdate::default()
            };
            match db.update_user(&user.id, update, now) {
                Ok(UserChange::Done(_)) => {
                    let _ = db.audit(now, None, None, "password_reset", &format!("command line: user {username}"));
                    show(&username, &password);
                    ExitCode::SUCCESS
                }
                Ok(_) => fail(format!("no user {username:?}")),
                Err(err) => fail(err.to_string()),
            }
        }
    }
}

fn wrench_sim(args: WrenchSimArgs) -> ExitCode {
    use stationd::south::wrench::sim::{SimController, SimSettings};
    use tokio::io::AsyncBufReadExt;

    if !(0.0..=1.0).contains(&args.nok_ratio) || !(1..=7).contains(&args.max_result_revision) {
        eprintln!("stationd wrench-sim: --nok-ratio must be 0 to 1 and --max-result-revision 1 to 7");
        return ExitCode::from(2);
    }
    stationd::telemetry::init("info");
    let settings = SimSettings {
        max_comm_revision: args.max_comm_revision,
        max_result_revision: args.max_result_revision,
        link_level: args.link_level,
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout_s.max(1)),
        ghost_session: std::time::Duration::from_secs(args.ghost_s),
        result_interval: args.interval_ms.filter(|ms| *ms > 0).map(std::time::Duration::from_millis),
        nok_ratio: args.nok_ratio,
        ..SimSettings::default()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("stationd wrench-sim: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(async move {
        let sim = match SimController::bind(args.bind, settings).await {
            Ok(sim) => sim,
            Err(err) => {
                eprintln!("stationd wrench-sim: cannot listen on {}: {err}", args.bind);
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let handle = sim.handle();
        handle.set_split_writes(args.split_writes);
        handle.set_reply_delay(std::time::Duration::from_millis(args.reply_delay_ms));
        tracing::info!(addr = %handle.addr(), "wrench simulator listening");
        let token = tokio_util::sync::CancellationToken::new();
        let run = sim.run(token.clone());
        tokio::pin!(run);
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut stdin_open = true;
        loop {
            tokio::select! {
                () = &mut run => break,
                () = shutdown_signal() => {
                    token.cancel();
                }
                line = lines.next_line(), if stdin_open => match line {
                    Ok(Some(line)) => match line.trim() {
                        "ok" | "nok" => match handle.tighten(line.trim() == "ok") {
                            Some(id) => tracing::info!(tightening_id = id, "tightening"),
                            None => tracing::warn!("the tool is disabled: no tightening"),
                        },
                        "drop" => handle.drop_link(),
                        "cut" => handle.drop_mid_next_result(),
                        "enable" | "disable" => handle.set_tool_enabled(line.trim() == "enable"),
                        "status" => tracing::info!(stats = ?handle.stats(), "simulator"),
                        "" => {}
                        other => tracing::warn!(command = other, "commands: ok, nok, drop, cut, enable, disable, status"),
                    },
                    _ => stdin_open = false,
                },
            }
        }
        ExitCode::SUCCESS
    })
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
