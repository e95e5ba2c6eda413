//! The `upload-server` binary: read settings, start logging, bind, serve until SIGTERM/SIGINT,
//! let requests in flight finish (30 s at most), exit 0. SIGHUP reloads the secrets from the
//! env file (`upload_server::startup::reload_secrets`).
//!
//! Run: `UPLOAD_ROOT=./data AUTH_SERVICE_TOKEN=dev-token cargo run --release`
//! Options: `--env-file PATH` (also `UPLOAD_ENV_FILE`), `--help`, `--version`.
//! `upload-server check [--env-file PATH] [--accept-new-secrets]`: the pre-flight check of
//! an env file and its data root (`src/check.rs`), without serving.
//! `upload-server migrate [--env-file PATH]`: copies `UPLOAD_ROOT/storage` into the bucket
//! and catalog of `STORAGE_BACKEND=s3`; `upload-server reindex [--env-file PATH] [--prune]`
//! rebuilds the catalog's file rows from the bucket (`src/migrate/`).
//!
//! Exit codes: 0 stopped cleanly (or `check` found nothing wrong, or `migrate`/`reindex` did
//! every file); 1 `check` found problems, some files of `migrate`/`reindex` failed, or the
//! server failed while serving; 2 a configuration error, which includes every failure
//! before serving (bad value, address in use, root not writable) and a bucket or database
//! that `migrate`/`reindex` cannot reach: one stderr line naming the setting.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use upload_server::config::{ConfigError, Settings, SettingsSource};

/// How long requests in flight may run after a stop signal.
const DRAIN: Duration = Duration::from_secs(30);

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// Serve (the default).
    Serve { env_file: Option<PathBuf> },
    /// `check`: the pre-flight check.
    Check {
        env_file: Option<PathBuf>,
        accept_new_secrets: bool,
    },
    /// `migrate`: `UPLOAD_ROOT/storage` into the bucket and catalog.
    Migrate { env_file: Option<PathBuf> },
    /// `reindex`: the catalog's file rows from the bucket.
    Reindex {
        env_file: Option<PathBuf>,
        prune: bool,
    },
}

fn main() -> ExitCode {
    let env_file = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Serve { env_file }) => env_file,
        Ok(Command::Check {
            env_file,
            accept_new_secrets,
        }) => {
            let report = upload_server::check::run(env_file.as_deref(), accept_new_secrets);
            print!("{report}");
            return if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Ok(Command::Migrate { env_file }) => {
            return run_tool(env_file, |settings| async move {
                upload_server::migrate::migrate(&settings).await
            })
        }
        Ok(Command::Reindex { env_file, prune }) => {
            return run_tool(env_file, move |settings| async move {
                let options = upload_server::migrate::ReindexOptions { prune };
                upload_server::migrate::reindex(&settings, options).await
            })
        }
        Err(code) => return code,
    };
    let (settings, source) = match Settings::load(env_file.as_deref()) {
        Ok(s) => s,
        Err(e) => return config_error(e),
    };
    upload_server::telemetry::init(settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("upload-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::Start(e)) => {
            eprintln!("upload-server: configuration error: {}", one_line(&e));
            ExitCode::from(2)
        }
        Err(ServeError::Serving(e)) => {
            eprintln!("upload-server: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs `migrate` or `reindex` with the settings, exiting with its outcome's code.
fn run_tool<F, Fut>(env_file: Option<PathBuf>, tool: F) -> ExitCode
where
    F: FnOnce(Settings) -> Fut,
    Fut: std::future::Future<Output = upload_server::migrate::Outcome>,
{
    let settings = match Settings::from_env(env_file.as_deref()) {
        Ok(s) => s,
        Err(e) => return config_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("upload-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    ExitCode::from(runtime.block_on(tool(settings)).code())
}

/// The one line a configuration error gets, exit 2.
fn config_error(e: ConfigError) -> ExitCode {
    eprintln!("upload-server: configuration error: {e}");
    ExitCode::from(2)
}

/// An error's whole chain on one line (causes may hold line breaks).
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace(['\n', '\r'], " ")
}

const USAGE: &str = "Usage: upload-server [--env-file PATH]
       upload-server check [--env-file PATH] [--accept-new-secrets]
       upload-server migrate [--env-file PATH]
       upload-server reindex [--env-file PATH] [--prune]

Settings come from the environment; --env-file or UPLOAD_ENV_FILE names a KEY=VALUE file
(systemd's EnvironmentFile form), the environment winning over it.

check: validates the settings and the data root (permissions, free space, sidecars, the
signing key) and reports AUTH_SERVICE_TOKEN, UPLOAD_SIGNING_KEY or PUBLIC_BASE_URL left unset
as upgrade hazards (warnings with --accept-new-secrets); exit 0 when fine, 1 otherwise.

migrate: copies every file of UPLOAD_ROOT/storage (with its .meta sidecar) into the bucket
and the PostgreSQL catalog named by STORAGE_BACKEND=s3, S3_* and DATABASE_URL, 4 files at a
time, checking each SHA-256 against the sidecar's; UPLOAD_ROOT is only read. Files already
in the bucket and the catalog are skipped, so a rerun finishes an interrupted run. Exit 0
when every file is there, 1 when some failed (each is named on stderr), 2 when a setting is
wrong or the bucket or database cannot be reached.

reindex: rebuilds the catalog's file rows from the bucket: a row for every object under
{S3_PREFIX}/storage/ that has none, from its .meta sidecar object; existing rows are kept;
--prune removes rows whose object is gone. Users' usage is recounted. Exit codes as migrate.

Settings (name, default, meaning):";

/// `Err(code)` when the process should exit now (`--help`, `--version`, a bad argument).
fn parse_args(args: impl Iterator<Item = String>) -> Result<Command, ExitCode> {
    let mut env_file = None;
    let mut accept_new_secrets = false;
    let mut prune = false;
    let mut args = args.peekable();
    let sub = match args.peek().map(String::as_str) {
        Some(s @ ("check" | "migrate" | "reindex")) => {
            let s = s.to_owned();
            args.next();
            Some(s)
        }
        _ => None,
    };
    let check = sub.as_deref() == Some("check");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--env-file" => match args.next() {
                Some(p) => env_file = Some(PathBuf::from(p)),
                None => {
                    eprintln!("upload-server: configuration error: --env-file: needs a path");
                    return Err(ExitCode::from(2));
                }
            },
            a if a.starts_with("--env-file=") => {
                env_file = Some(PathBuf::from(&a["--env-file=".len()..]))
            }
            "--accept-new-secrets" if check => accept_new_secrets = true,
            "--prune" if sub.as_deref() == Some("reindex") => prune = true,
            "--version" | "-V" => {
                println!("upload-server {}", env!("CARGO_PKG_VERSION"));
                return Err(ExitCode::SUCCESS);
            }
            "--help" | "-h" => {
                println!(
                    "upload-server {}\n\n{USAGE}\n{}",
                    env!("CARGO_PKG_VERSION"),
                    upload_server::config::help_text()
                );
                return Err(ExitCode::SUCCESS);
            }
            other => {
                eprintln!("upload-server: unknown argument '{other}' (try --help)");
                return Err(ExitCode::from(2));
            }
        }
    }
    Ok(match sub.as_deref() {
        Some("check") => Command::Check {
            env_file,
            accept_new_secrets,
        },
        Some("migrate") => Command::Migrate { env_file },
        Some("reindex") => Command::Reindex { env_file, prune },
        _ => Command::Serve { env_file },
    })
}

/// Why serving ended badly: before the first connection (a configuration error, exit 2) or
/// while serving (exit 1).
enum ServeError {
    Start(anyhow::Error),
    Serving(anyhow::Error),
}

/// Binds the listen address; a failure names the setting to change.
async fn bind(settings: &Settings) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = settings.listen_addr()?;
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let var = match e.kind() {
            std::io::ErrorKind::AddrInUse => "PORT",
            std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => "PORT",
            _ => "BIND_HOST",
        };
        anyhow::anyhow!("{var}: cannot listen on {addr}: {e}")
    })
}

async fn serve(settings: Settings, source: SettingsSource) -> Result<(), ServeError> {
    // SIGHUP is taken before the slow part of the start (the recount of the ledgers): from
    // here on a reload signal can never find the default action, which ends the process.
    let hangups = hangup_signals();
    let limits = upload_server::server::ConnLimits::from_settings(&settings);
    // Bound first: a port in use is reported before the root is touched.
    let listener = bind(&settings).await.map_err(ServeError::Start)?;
    let bound = listener
        .local_addr()
        .map_err(|e| ServeError::Start(e.into()))?;
    if !settings.public_base_url_set && !bound.ip().is_loopback() {
        tracing::warn!(
            addr = %bound,
            public_base_url = %settings.public_base_url,
            "PUBLIC_BASE_URL is not set and the server listens beyond loopback: returned URLs name this address; set PUBLIC_BASE_URL to the address clients use"
        );
    }
    let state = upload_server::startup::build_state(settings)
        .await
        .map_err(ServeError::Start)?;
    let app = upload_server::startup::router(state.clone());
    spawn_reloader(state, source, hangups);
    tracing::info!(
        addr = %bound,
        max_connections = limits.max_connections,
        "listening"
    );
    // One plain line whatever RUST_LOG and LOG_FORMAT say, for whoever started the server
    // with PORT=0 (the tests) to learn the port taken.
    eprintln!("upload-server: listening on {bound}");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = upload_server::server::serve(listener, app, limits, async move {
        stop_signal().await;
        tracing::info!("stop signal: draining requests in flight");
        let _ = stop_tx.send(());
    });
    let drained = async move {
        // Wait for the signal, then give requests in flight DRAIN to finish.
        if stop_rx.await.is_ok() {
            tokio::time::sleep(DRAIN).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r.map_err(|e| ServeError::Serving(e.into()))?,
        () = drained => tracing::warn!("requests still running after {DRAIN:?}: stopping anyway"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reloads the secrets on each SIGHUP; a reload that fails keeps the secrets in use and
/// says why.
/// The SIGHUP stream, when it can be had.
#[cfg(unix)]
fn hangup_signals() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reloads are off");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signals() -> Option<()> {
    None
}

/// Rereads the env file's secrets on every SIGHUP; a reload that fails keeps those in use.
#[cfg(unix)]
fn spawn_reloader(
    state: upload_server::state::AppState,
    source: SettingsSource,
    hangups: Option<tokio::signal::unix::Signal>,
) {
    let Some(mut hangups) = hangups else {
        return;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let file = source
                .env_file()
                .map_or_else(|| "-".to_owned(), |p| p.display().to_string());
            tracing::info!(env_file = %file, "SIGHUP: reloading the secrets");
            let reloaded = match source.reread() {
                Ok(settings) => upload_server::startup::reload_secrets(&state, &settings)
                    .await
                    .map_err(|e| format!("{e:#}")),
                Err(e) => Err(e.to_string()),
            };
            if let Err(why) = reloaded {
                tracing::error!(error = %why, "reload failed: the secrets in use are kept");
            }
        }
    });
}

#[cfg(not(unix))]
fn spawn_reloader(_: upload_server::state::AppState, _: SettingsSource, _: Option<()>) {}

async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
