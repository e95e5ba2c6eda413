//! What a run says while it works: one line per problem on stderr, always; and, when stderr
//! is a terminal, a progress line redrawn in place (files done of all, bytes, rate), cleared
//! before each problem line so the two never mix.

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::human;

/// How often the progress line is redrawn.
const TICK: Duration = Duration::from_millis(200);

/// Counters of a run and the stderr they are shown on.
#[derive(Debug)]
pub(super) struct Progress {
    command: &'static str,
    tty: bool,
    total_files: u64,
    total_bytes: u64,
    files: AtomicU64,
    bytes: AtomicU64,
    started: Instant,
    /// Held while writing; `true` while a progress line is on the screen.
    shown: Mutex<bool>,
}

impl Progress {
    /// Counters for `total_files` files of `total_bytes` bytes.
    pub(super) fn new(command: &'static str, total_files: u64, total_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            command,
            tty: std::io::stderr().is_terminal(),
            total_files,
            total_bytes,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: Instant::now(),
            shown: Mutex::new(false),
        })
    }

    /// Bytes moved (or read).
    pub(super) fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// One more file done, whatever came of it.
    pub(super) fn file_done(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
    }

    /// Time since the start.
    pub(super) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Says `line` on stderr, as `upload-server COMMAND: line`.
    pub(super) fn say(&self, line: &str) {
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = std::io::stderr().lock();
        if *shown {
            let _ = write!(err, "\r\x1b[K");
            *shown = false;
        }
        let _ = writeln!(err, "upload-server {}: {line}", self.command);
    }

    /// Redraws the progress line (terminals only).
    fn draw(&self) {
        if !self.tty {
            return;
        }
        let files = self.files.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (bytes as f64 / secs) as u64;
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K{}: {files}/{} files, {} of {}, {}/s",
            self.command,
            self.total_files,
            human(bytes),
            human(self.total_bytes),
            human(rate)
        );
        let _ = err.flush();
        *shown = true;
    }

    /// Takes the progress line off the screen.
    pub(super) fn clear(&self) {
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        if *shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            *shown = false;
        }
    }

    /// Redraws the progress line every [`TICK`] until the returned guard is dropped (which
    /// clears it). Nothing on a stderr that is no terminal.
    pub(super) fn ticker(self: &Arc<Self>) -> Ticker {
        let task = self.tty.then(|| {
            let this = self.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(TICK);
                loop {
                    every.tick().await;
                    this.draw();
                }
            })
        });
        Ticker {
            progress: self.clone(),
            task,
        }
    }
}

/// Stops the redrawing and clears the line when dropped.
pub(super) struct Ticker {
    progress: Arc<Progress>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.progress.clear();
    }
}
