//! The `upload-server` binary: read settings, start logging, bind, serve until SIGTERM/SIGINT,
//! let requests in flight finish (30 s at most), exit 0. SIGHUP reloads the secrets from the
//! env file (`upload_server::startup::reload_secrets`).
//!
//! Run: `UPLOAD_ROOT=./data AUTH_SERVICE_TOKEN=dev-token cargo run --release`
//! Options: `--env-file PATH` (also `UPLOAD_ENV_FILE`), `--help`, `--version`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use upload_server::config::{Settings, SettingsSource};

/// How long requests in flight may run after a stop signal.
const DRAIN: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let env_file = match parse_args(std::env::args().skip(1)) {
        Ok(Some(path)) => Some(path),
        Ok(None) => None,
        Err(code) => return code,
    };
    let (settings, source) = match Settings::load(env_file.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("upload-server: configuration error: {e}");
            return ExitCode::from(2);
        }
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
        Err(e) => {
            eprintln!("upload-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(Some(path))` for `--env-file PATH`; `Err(code)` when the process should exit now.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<PathBuf>, ExitCode> {
    let mut env_file = None;
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
            "--version" | "-V" => {
                println!("upload-server {}", env!("CARGO_PKG_VERSION"));
                return Err(ExitCode::SUCCESS);
            }
            "--help" | "-h" => {
                println!(
                    "upload-server {}\n\nUsage: upload-server [--env-file PATH]\n\n\
                     Settings come from the environment (see README.md); --env-file or\n\
                     UPLOAD_ENV_FILE names a KEY=VALUE file, the environment winning.",
                    env!("CARGO_PKG_VERSION")
                );
                return Err(ExitCode::SUCCESS);
            }
            other => {
                eprintln!("upload-server: unknown argument '{other}' (try --help)");
                return Err(ExitCode::from(2));
            }
        }
    }
    Ok(env_file)
}

async fn serve(settings: Settings, source: SettingsSource) -> anyhow::Result<()> {
    let addr = settings.listen_addr()?;
    let limits = upload_server::server::ConnLimits::from_settings(&settings);
    let state = upload_server::startup::build_state(settings).await?;
    let app = upload_server::startup::router(state.clone());
    spawn_reloader(state, source);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
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
        r = server => r?,
        () = drained => tracing::warn!("requests still running after {DRAIN:?}: stopping anyway"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reloads the secrets on each SIGHUP; a reload that fails keeps the secrets in use and
/// says why.
fn spawn_reloader(state: upload_server::state::AppState, source: SettingsSource) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Taken now, before the server listens: a SIGHUP must never find the default
        // action (ending the process) in place.
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: reloads are off");
                return;
            }
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
    drop((state, source));
}

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
