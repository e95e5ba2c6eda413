//! The env file (`UPLOAD_ENV_FILE`, systemd's `EnvironmentFile`): `KEY=VALUE` lines read
//! as systemd reads them, with no `$VAR` expansion (dotenvy would change a secret `ab$HOME`).

use std::collections::HashMap;
use std::path::Path;

use super::ConfigError;

/// Reads an env file as systemd's `EnvironmentFile` does: `KEY=VALUE` lines, `#`/`;`
/// comments, optional quotes around the value, no `$VAR` expansion.
pub(super) fn read_env_file(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "UPLOAD_ENV_FILE",
            format!("cannot read '{}': {e}", path.display()),
        )
    })?;
    parse_env_file(&text).map_err(|(line, msg)| {
        ConfigError::new(
            "UPLOAD_ENV_FILE",
            format!("{}:{line}: {msg}", path.display()),
        )
    })
}

/// Parses env-file text; an error carries the 1-based line number.
pub(super) fn parse_env_file(text: &str) -> Result<HashMap<String, String>, (usize, String)> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err((i + 1, "expected KEY=VALUE".to_owned()));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((i + 1, format!("'{key}' is not a variable name")));
        }
        out.insert(key.to_owned(), unquote(value.trim()));
    }
    Ok(out)
}

fn unquote(v: &str) -> String {
    let b = v.as_bytes();
    if v.len() >= 2 && b[0] == b'"' && b[v.len() - 1] == b'"' {
        let inner = &v[1..v.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        out
    } else if v.len() >= 2 && b[0] == b'\'' && b[v.len() - 1] == b'\'' {
        v[1..v.len() - 1].to_owned()
    } else {
        v.to_owned()
    }
}
