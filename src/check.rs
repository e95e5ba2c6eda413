//! `upload-server check`: the pre-flight check of an env file and its data root, run before
//! switching a deployment over (README "Upgrading from the Python service"). It reads the
//! settings as the server would, reports the upgrade hazards (secrets and the public URL
//! the old service made up when unset), and looks at the root without changing it.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use secrecy::ExposeSecret as _;

use crate::config::{read_sources, Settings};
use crate::store::audit::Findings;
use crate::store::health::Probe;
use crate::store::FileStore;

/// Examples kept of each finding.
const EXAMPLES: usize = 5;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fine.
    Ok,
    /// Worth knowing; does not fail the check.
    Warn,
    /// Fails the check (exit 1).
    Problem,
}

/// What the check found, line by line.
#[derive(Debug, Default)]
pub struct Report {
    /// Each finding with its level.
    pub lines: Vec<(Level, String)>,
}

impl Report {
    fn push(&mut self, level: Level, text: impl Into<String>) {
        self.lines.push((level, text.into()));
    }

    /// No problems (warnings allowed).
    pub fn passed(&self) -> bool {
        !self.lines.iter().any(|(l, _)| *l == Level::Problem)
    }

    fn count(&self, level: Level) -> usize {
        self.lines.iter().filter(|(l, _)| *l == level).count()
    }

    fn findings(&mut self, level: Level, what: &str, f: &Findings) {
        if f.count == 0 {
            return;
        }
        let mut text = format!("{} {what}", f.count);
        for e in &f.examples {
            text.push_str(&format!("\n           {e}"));
        }
        if f.count > f.examples.len() as u64 {
            text.push_str("\n           ...");
        }
        self.push(level, text);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (level, text) in &self.lines {
            let tag = match level {
                Level::Ok => "ok",
                Level::Warn => "WARN",
                Level::Problem => "PROBLEM",
            };
            writeln!(f, "{tag:<8}   {text}")?;
        }
        let (problems, warnings) = (self.count(Level::Problem), self.count(Level::Warn));
        if problems == 0 {
            writeln!(f, "check passed ({warnings} warnings)")
        } else {
            writeln!(f, "check FAILED: {problems} problems, {warnings} warnings")
        }
    }
}

/// The settings whose absence the old service papered over, and what their absence does
/// here.
const UPGRADE_HAZARDS: &[(&str, &str)] = &[
    (
        "AUTH_SERVICE_TOKEN",
        "the old service fell back to a built-in token; this one turns service authentication \
         off, so every service client gets 401. Set the token the clients send",
    ),
    (
        "UPLOAD_SIGNING_KEY",
        "the old service signed URLs with a public default key; this one makes a new key in \
         UPLOAD_ROOT/.signing_key, so signed URLs already handed out stop verifying. Set a new \
         secret key (and expect old links to fail), or the key the old service was given",
    ),
    (
        "PUBLIC_BASE_URL",
        "returned URLs (public links, signed URLs) would name http://BIND_HOST:PORT, which \
         clients behind nginx cannot reach. Set the https:// address clients use",
    ),
];

/// Runs every check; `accept_new_secrets` turns the upgrade hazards into warnings.
pub fn run(env_file: Option<&Path>, accept_new_secrets: bool) -> Report {
    let mut report = Report::default();
    let (file_vars, env_vars) = match read_sources(env_file) {
        Ok(v) => v,
        Err(e) => {
            report.push(Level::Problem, format!("env file: {e}"));
            return report;
        }
    };
    match env_file {
        Some(p) => report.push(
            Level::Ok,
            format!("env file {} read ({} lines)", p.display(), file_vars.len()),
        ),
        None => report.push(Level::Ok, "no --env-file: the process environment only"),
    }
    upgrade_hazards(&mut report, &file_vars, &env_vars, accept_new_secrets);
    let settings = match Settings::from_sources(file_vars, env_vars) {
        Ok(s) => s,
        Err(e) => {
            report.push(Level::Problem, format!("settings: {e}"));
            return report;
        }
    };
    report.push(Level::Ok, "settings parse");
    if settings.service_tokens.len() > 1 {
        // The old service took the whole value as one token: a token holding a comma is now
        // several tokens, and clients sending the whole value are refused.
        report.push(
            Level::Warn,
            format!(
                "AUTH_SERVICE_TOKEN holds {} comma-separated tokens: each is accepted on its own, \
                 a client sending the whole value is refused (fine while rotating; a single \
                 token of the old service must not contain a comma)",
                settings.service_tokens.len()
            ),
        );
    }
    if let Ok(addr) = settings.listen_addr() {
        if !settings.public_base_url_set && !addr.ip().is_loopback() {
            report.push(
                Level::Warn,
                format!(
                    "BIND_HOST {} is not loopback and PUBLIC_BASE_URL is unset",
                    addr.ip()
                ),
            );
        }
    }
    check_root(&mut report, &settings);
    report
}

fn upgrade_hazards(
    report: &mut Report,
    file_vars: &HashMap<String, String>,
    env_vars: &HashMap<String, String>,
    accept: bool,
) {
    let set = |k: &str| {
        [env_vars, file_vars]
            .iter()
            .any(|m| m.get(k).is_some_and(|v| !v.trim().is_empty()))
    };
    for (var, why) in UPGRADE_HAZARDS {
        if set(var) {
            report.push(Level::Ok, format!("{var} is set"));
        } else if accept {
            report.push(
                Level::Warn,
                format!("{var} is not set (accepted with --accept-new-secrets): {why}"),
            );
        } else {
            report.push(
                Level::Problem,
                format!("upgrade hazard: {var} is not set: {why}"),
            );
        }
    }
}

fn check_root(report: &mut Report, settings: &Settings) {
    let root = &settings.upload_root;
    let meta = match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => {
            report.push(
                Level::Problem,
                format!("UPLOAD_ROOT {} is not a folder", root.display()),
            );
            return;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.push(
                Level::Warn,
                format!(
                    "UPLOAD_ROOT {} does not exist: the server creates it at start",
                    root.display()
                ),
            );
            return;
        }
        Err(e) => {
            report.push(
                Level::Problem,
                format!("UPLOAD_ROOT {}: {e}", root.display()),
            );
            return;
        }
    };
    let mode = meta.mode() & 0o7777;
    let store = match FileStore::inspect(root) {
        Ok(s) => s,
        Err(e) => {
            report.push(
                Level::Problem,
                format!("UPLOAD_ROOT {} cannot be opened: {e}", root.display()),
            );
            return;
        }
    };
    let described = format!(
        "UPLOAD_ROOT {}: owner {}:{}, mode {mode:04o}",
        root.display(),
        meta.uid(),
        meta.gid()
    );
    match store.probe_writable() {
        Probe::Written => report.push(Level::Ok, format!("{described}, writable")),
        Probe::Full => report.push(Level::Problem, format!("{described}: the disk is full")),
        Probe::Refused => report.push(
            Level::Problem,
            format!("{described}: refuses writes (read-only mount or permissions)"),
        ),
    }
    if mode & 0o002 != 0 {
        report.push(
            Level::Problem,
            format!("UPLOAD_ROOT {} is writable by everyone", root.display()),
        );
    }
    if rustix::process::geteuid().is_root() && meta.uid() == 0 {
        report.push(
            Level::Warn,
            "the check runs as root and the root belongs to root: the service's own user \
             may not be able to write it",
        );
    }
    match store.free_bytes() {
        Some(free) if free < settings.max_body_bytes => report.push(
            Level::Problem,
            format!(
                "free space {} is less than one largest upload (MAX_BODY_MB, {})",
                gib(free),
                gib(settings.max_body_bytes)
            ),
        ),
        Some(free) => report.push(Level::Ok, format!("free space {}", gib(free))),
        None => report.push(Level::Warn, "free space cannot be read"),
    }
    signing_key(report, settings, root);

    let audit = store.audit(EXAMPLES);
    if !root.join("storage").is_dir() {
        report.push(
            Level::Warn,
            "no storage/ folder yet: the server creates it at start",
        );
    }
    report.push(
        Level::Ok,
        format!("{} files, {} in storage/", audit.files, gib(audit.bytes)),
    );
    report.findings(
        Level::Problem,
        "folders under storage/ cannot be read:",
        &audit.unreadable_folders,
    );
    report.findings(
        Level::Problem,
        "sidecars cannot be read (their files are served with a guessed type and name):",
        &audit.bad_sidecars,
    );
    report.findings(
        Level::Warn,
        "files have no sidecar (old files: listed and served with a type guessed from the name):",
        &audit.without_sidecar,
    );
    report.findings(
        Level::Warn,
        "files or sidecars belong to another user than UPLOAD_ROOT's owner:",
        &audit.foreign_owner,
    );
}

fn signing_key(report: &mut Report, settings: &Settings, root: &Path) {
    if let Some(key) = &settings.signing_key {
        let len = key.expose_secret().len();
        if len < 16 {
            report.push(
                Level::Warn,
                format!("UPLOAD_SIGNING_KEY is short ({len} bytes): use 32 random bytes or more"),
            );
        } else {
            report.push(
                Level::Ok,
                format!("UPLOAD_SIGNING_KEY usable ({len} bytes)"),
            );
        }
        return;
    }
    let path = root.join(".signing_key");
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().is_empty() => report.push(
            Level::Problem,
            format!("{} is empty: the server will not start", path.display()),
        ),
        Ok(_) => {
            let mode = std::fs::metadata(&path).map_or(0, |m| m.mode() & 0o777);
            if mode & 0o077 != 0 {
                report.push(
                    Level::Problem,
                    format!(
                        "{} has mode {mode:04o}: others can read it (want 0600)",
                        path.display()
                    ),
                );
            } else {
                report.push(Level::Ok, format!("signing key kept in {}", path.display()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => report.push(
            Level::Warn,
            format!(
                "no signing key yet: the server makes {} at start",
                path.display()
            ),
        ),
        Err(e) => report.push(
            Level::Problem,
            format!("{} cannot be read: {e}", path.display()),
        ),
    }
}

/// Bytes as GiB with one decimal.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}
