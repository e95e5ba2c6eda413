//! `upload-server migrate`: every file of `UPLOAD_ROOT/storage` into the bucket and the
//! catalog, a few at a time, streamed (never a whole file in memory), without changing
//! `UPLOAD_ROOT`.
//!
//! Per file: the data object first (its SHA-256 computed on the way and checked against the
//! sidecar's), a HEAD to check its size, then the sidecar object (the filesystem's text, or
//! for a file without a readable sidecar the one the filesystem store makes up, with the
//! SHA-256 just computed), the catalog row last (with it the owner's usage). A file whose
//! row and object are already there with its size and SHA-256 is skipped, so a rerun after
//! an interruption does only what is left.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, Stream, StreamExt as _};
use tokio::io::AsyncReadExt as _;

use super::progress::Progress;
use super::{connect, created_at, human, quiet_logs, same_sha, to_utc, Outcome, Target, JOBS};
use crate::config::Settings;
use crate::store::key::{Key, UserId};
use crate::store::pg::{CatalogError, FileRecord};
use crate::store::read::{meta_from, rfc3339, MAX_SIDECAR};
use crate::store::s3::S3Error;
use crate::store::sidecar::Meta;
use crate::store::sink::Hashes;
use crate::store::StoreError;

/// Bytes read from a file at a time.
const CHUNK: usize = 256 << 10;

/// A data file found under `storage/`.
#[derive(Debug)]
struct Source {
    key: Key,
    path: PathBuf,
    size: u64,
    modified: SystemTime,
}

/// What the walk of `storage/` found.
#[derive(Debug, Default)]
struct Walk {
    files: Vec<Source>,
    /// Entries the server never serves (dot-names, links, names that are no key), with why.
    ignored: Vec<String>,
    /// Folders that could not be read, with why: their files are not copied.
    unreadable: Vec<String>,
}

/// What became of one file.
enum Done {
    Copied(u64),
    Skipped,
    Failed,
}

/// Copies `settings.upload_root`'s files into the bucket and catalog of the `s3` settings.
pub async fn run(settings: &Settings) -> Outcome {
    quiet_logs();
    let say_unusable = |why: &str| {
        eprintln!(
            "upload-server: configuration error: {}",
            why.replace('\n', " ")
        );
        Outcome::Unusable
    };
    let storage = settings.upload_root.join("storage");
    if !storage.is_dir() {
        return say_unusable(&format!(
            "UPLOAD_ROOT {}: no storage/ folder to copy from",
            settings.upload_root.display()
        ));
    }
    let target = match connect(settings, "migrate").await {
        Ok(t) => Arc::new(t),
        Err(why) => return say_unusable(&why),
    };
    let walk = {
        let storage = storage.clone();
        match tokio::task::spawn_blocking(move || walk(&storage)).await {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                return say_unusable(&format!(
                    "UPLOAD_ROOT {}: cannot read storage/: {e}",
                    settings.upload_root.display()
                ))
            }
            Err(e) => return say_unusable(&format!("walking storage/: {e}")),
        }
    };
    let total_bytes = walk.files.iter().map(|f| f.size).sum();
    let progress = Progress::new("migrate", walk.files.len() as u64, total_bytes);
    for why in &walk.ignored {
        progress.say(&format!("ignored (the server never serves it): {why}"));
    }
    for why in &walk.unreadable {
        progress.say(&format!("FAILED {why}"));
    }

    let ticker = progress.ticker();
    let (mut copied, mut skipped, mut failed, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut results = stream::iter(walk.files)
        .map(|source| {
            let target = target.clone();
            let progress = progress.clone();
            async move {
                let done = copy_one(&target, &source, &progress).await;
                progress.file_done();
                done
            }
        })
        .buffer_unordered(JOBS);
    while let Some(done) = results.next().await {
        match done {
            Done::Copied(n) => {
                copied += 1;
                bytes += n;
            }
            Done::Skipped => skipped += 1,
            Done::Failed => failed += 1,
        }
    }
    drop(ticker);
    failed += walk.unreadable.len() as u64;
    let ignored = if walk.ignored.is_empty() {
        String::new()
    } else {
        format!(", {} ignored", walk.ignored.len())
    };
    println!(
        "migrate: {copied} copied, {skipped} skipped, {failed} failed{ignored}; {} copied in {:.1} s",
        human(bytes),
        progress.elapsed().as_secs_f64()
    );
    if failed > 0 {
        Outcome::SomeFailed
    } else {
        Outcome::Done
    }
}

/// Finds every data file under `storage/` the way the filesystem store lists them: user
/// folders and folders below them, no symbolic link followed, `{file}.meta` the sidecar of
/// `{file}`, names starting with `.` never served.
fn walk(storage: &Path) -> std::io::Result<Walk> {
    let mut w = Walk::default();
    for (name, entry) in sorted_entries(storage)? {
        let rel = format!("storage/{}", name.to_string_lossy());
        let Some(name) = name.to_str() else {
            w.ignored.push(format!("{rel}: not UTF-8"));
            continue;
        };
        let kind = entry.file_type()?;
        if !kind.is_dir() {
            w.ignored
                .push(format!("{rel}: not a user folder (a file or a link)"));
            continue;
        }
        let Ok(user) = UserId::parse(name) else {
            w.ignored.push(format!("{rel}: not a user id"));
            continue;
        };
        walk_folder(&mut w, &user, &entry.path(), &mut Vec::new());
    }
    w.files.sort_by(|a, b| a.key.cmp_text(&b.key));
    Ok(w)
}

/// A folder's entries, by name.
fn sorted_entries(dir: &Path) -> std::io::Result<Vec<(std::ffi::OsString, std::fs::DirEntry)>> {
    let mut entries = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| (e.file_name(), e)))
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

fn walk_folder(w: &mut Walk, user: &UserId, dir: &Path, rel: &mut Vec<String>) {
    let shown = |rel: &[String], name: &str| {
        let mut parts = vec!["storage", user.as_str()];
        parts.extend(rel.iter().map(String::as_str));
        parts.push(name);
        parts.join("/")
    };
    let entries = match sorted_entries(dir) {
        Ok(e) => e,
        Err(e) => {
            w.unreadable
                .push(format!("{}/: cannot read the folder: {e}", dir.display()));
            return;
        }
    };
    let names: std::collections::HashSet<&std::ffi::OsStr> =
        entries.iter().map(|(n, _)| n.as_os_str()).collect();
    for (name, entry) in &entries {
        let Some(name) = name.to_str() else {
            w.ignored.push(format!(
                "{}: not UTF-8",
                shown(rel, &name.to_string_lossy())
            ));
            continue;
        };
        let md = match entry.metadata() {
            Ok(md) => md,
            // Gone since the folder was read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                w.unreadable.push(format!("{}: {e}", shown(rel, name)));
                continue;
            }
        };
        let kind = md.file_type();
        if name.starts_with('.') {
            w.ignored.push(format!("{}: a dot-name", shown(rel, name)));
            continue;
        }
        if kind.is_symlink() {
            w.ignored.push(format!(
                "{}: a symbolic link (never followed)",
                shown(rel, name)
            ));
            continue;
        }
        if kind.is_dir() {
            rel.push(name.to_owned());
            walk_folder(w, user, &entry.path(), rel);
            rel.pop();
            continue;
        }
        if !kind.is_file() {
            w.ignored
                .push(format!("{}: not a regular file", shown(rel, name)));
            continue;
        }
        if let Some(data) = name.strip_suffix(".meta") {
            if !names.contains(std::ffi::OsStr::new(data)) {
                w.ignored
                    .push(format!("{}: a sidecar without its file", shown(rel, name)));
            }
            continue;
        }
        let path_in_user = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", rel.join("/"))
        };
        match Key::from_user_path(user.as_str(), &path_in_user) {
            Ok(key) => w.files.push(Source {
                key,
                path: entry.path(),
                size: md.len(),
                modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            }),
            Err(_) => w
                .ignored
                .push(format!("{}: not a valid file key", shown(rel, name))),
        }
    }
}

/// Opens a file of the tree for reading, refusing a symbolic link put there since the walk.
async fn open_nofollow(path: &Path) -> std::io::Result<tokio::fs::File> {
    let flags = rustix::fs::OFlags::NOFOLLOW.bits();
    tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags as i32)
        .open(path)
        .await
}

/// The sidecar of `source` as the filesystem holds it: its bytes when there is one of a
/// sane size (the store treats a larger one, or a symbolic link, as unreadable).
async fn read_sidecar(source: &Source) -> std::io::Result<Option<Vec<u8>>> {
    let path = Meta::path_for(&source.path);
    let mut file = match open_nofollow(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Ok(Some(Vec::new()))
        }
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_SIDECAR as u64 + 1)
        .read_to_end(&mut bytes)
        .await?;
    Ok((bytes.len() <= MAX_SIDECAR).then_some(bytes))
}

/// The file's bytes as a stream of chunks, counted into `progress`.
fn file_stream(
    file: tokio::fs::File,
    progress: Arc<Progress>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    stream::try_unfold(file, move |mut file| {
        let progress = progress.clone();
        async move {
            let mut buf = BytesMut::with_capacity(CHUNK);
            while buf.len() < CHUNK {
                if file.read_buf(&mut buf).await? == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                return Ok(None);
            }
            progress.add_bytes(buf.len() as u64);
            Ok(Some((buf.freeze(), file)))
        }
    })
}

/// Hex SHA-256 of a local file, streamed.
async fn local_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = open_nofollow(path).await?;
    let mut hashes = Hashes::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(hashes.finish().0);
        }
        hashes.update(&buf[..n]);
    }
}

/// Copies one file; every problem is said on stderr.
async fn copy_one(target: &Target, source: &Source, progress: &Arc<Progress>) -> Done {
    match try_copy(target, source, progress).await {
        Ok(done) => done,
        Err(why) => {
            progress.say(&format!("FAILED {}: {why}", source.key));
            Done::Failed
        }
    }
}

/// The sidecar `text` (a JSON object without a `created_at` member) with `created_at`
/// added as its first member, every other byte as it was (the old service's sidecars keep
/// their layout in the bucket). `None` when `text` has a `created_at` of another type
/// (then the sidecar is written anew from what was read).
fn dated_sidecar(text: &[u8], created_at: Option<&str>) -> Option<Vec<u8>> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(text).ok()?;
    if map.contains_key("created_at") {
        return None;
    }
    let open = text.iter().position(|&b| b == b'{')?;
    let mut member = format!(
        "\"created_at\": {}",
        serde_json::to_string(created_at?).ok()?
    );
    if !map.is_empty() {
        member.push(',');
    }
    let mut out = Vec::with_capacity(text.len() + member.len());
    out.extend_from_slice(&text[..=open]);
    out.extend_from_slice(member.as_bytes());
    out.extend_from_slice(&text[open + 1..]);
    Some(out)
}

async fn try_copy(
    target: &Target,
    source: &Source,
    progress: &Arc<Progress>,
) -> Result<Done, String> {
    let key = &source.key;
    let key_text = key.to_string();
    let sidecar = read_sidecar(source)
        .await
        .map_err(|e| format!("cannot read the sidecar: {e}"))?;
    // `None` when there is no sidecar or one the store cannot read: the bucket then gets
    // the one the store makes up.
    let readable = sidecar
        .filter(|b| Meta::from_json(b, "", "").is_some())
        .or_else(|| {
            if Meta::path_for(&source.path).exists() {
                progress.say(&format!(
                    "WARN {key_text}: the sidecar is no JSON object (or too large): the bucket \
                     gets the metadata the server makes up for it"
                ));
            }
            None
        });
    let mut meta = meta_from(readable.as_deref(), key);

    let row = match target.catalog.file(key).await {
        Ok(row) => Some(row),
        Err(CatalogError::Store(StoreError::NotFound(_))) => None,
        Err(e) => return Err(format!("catalog: {e}")),
    };
    let mut repair = false;
    if let Some(row) = &row {
        let sha = match &meta.sha256 {
            Some(s) => s.clone(),
            None => local_sha256(&source.path)
                .await
                .map_err(|e| format!("cannot read the file: {e}"))?,
        };
        let same =
            row.size == source.size && row.sha256.as_deref().is_some_and(|r| same_sha(r, &sha));
        if !same {
            return Err(format!(
                "the catalog holds another file at this key ({} bytes, sha256 {}): left as it is",
                row.size,
                row.sha256.as_deref().unwrap_or("unknown")
            ));
        }
        match target.s3.head(&key_text).await {
            Ok(info) if info.size == source.size => {
                progress.add_bytes(source.size);
                return Ok(Done::Skipped);
            }
            Ok(_) | Err(S3Error::NotFound) => repair = true,
            Err(e) => return Err(format!("bucket: {e}")),
        }
    }

    // The data object, hashed on the way.
    let file = open_nofollow(&source.path)
        .await
        .map_err(|e| format!("cannot open the file: {e}"))?;
    let written = target
        .s3
        .put_stream(&key_text, file_stream(file, progress.clone()), u64::MAX)
        .await
        .map_err(|e| format!("bucket: {e}"))?;
    let bad = if written.size != source.size {
        Some(format!(
            "the file changed while it was copied ({} bytes, then {})",
            source.size, written.size
        ))
    } else {
        meta.sha256
            .as_deref()
            .filter(|s| !same_sha(s, &written.sha256))
            .map(|s| {
                format!(
                    "SHA-256 mismatch: the bytes hash to {}, the sidecar says {s}: not recorded",
                    written.sha256
                )
            })
    };
    if let Some(why) = bad {
        // Nothing of it may stay where `reindex` would take it for a file.
        if let Err(e) = target.s3.delete(&key_text).await {
            return Err(format!("{why}; removing the object failed too: {e}"));
        }
        return Err(why);
    }
    match target.s3.head(&key_text).await {
        Ok(info) if info.size == written.size => {}
        Ok(info) => {
            return Err(format!(
                "the bucket holds {} bytes after the upload, not {}",
                info.size, written.size
            ))
        }
        Err(e) => return Err(format!("bucket: HEAD after the upload: {e}")),
    }

    // The sidecar object, then the row. A sidecar without `created_at` (the old service
    // wrote none) gets the file's modification time, the date its listings showed: the
    // bucket has no other place for it, and `reindex` would otherwise date the file by
    // its object (the migration's time).
    let undated = meta.created_at.is_none();
    if undated {
        meta.created_at = Some(rfc3339(source.modified));
    }
    let sidecar_bytes = match readable {
        Some(b) if !undated => Bytes::from(b),
        Some(b) if let Some(dated) = dated_sidecar(&b, meta.created_at.as_deref()) => {
            Bytes::from(dated)
        }
        readable => {
            if readable.is_none() {
                meta.sha256 = Some(written.sha256.clone());
            }
            Bytes::from(
                meta.to_json()
                    .map_err(|e| format!("cannot write the sidecar: {e}"))?,
            )
        }
    };
    target
        .s3
        .put_stream(
            &format!("{key_text}.meta"),
            stream::once(async move { Ok::<_, std::io::Error>(sidecar_bytes) }),
            u64::MAX,
        )
        .await
        .map_err(|e| format!("bucket: the sidecar: {e}"))?;
    if !repair {
        let record = FileRecord {
            key: key.clone(),
            size: written.size,
            sha256: Some(written.sha256.clone()),
            crc32: Some(written.crc32),
            mime: meta.mime.clone(),
            created_at: created_at(&meta, to_utc(source.modified)),
            meta,
        };
        target
            .catalog
            .insert_file(&record)
            .await
            .map_err(|e| format!("catalog: {e}"))?;
    }
    Ok(Done::Copied(written.size))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::dated_sidecar;

    #[test]
    fn an_undated_sidecar_gets_created_at_first_and_keeps_its_other_bytes() {
        let old = b"{\n  \"original_name\": \"a.txt\",\n  \"mime\": \"text/plain\"\n}";
        let dated = dated_sidecar(old, Some("2025-11-24T16:00:00.000000Z")).unwrap();
        assert_eq!(
            String::from_utf8(dated).unwrap(),
            "{\"created_at\": \"2025-11-24T16:00:00.000000Z\",\n  \"original_name\": \"a.txt\",\n  \"mime\": \"text/plain\"\n}"
        );
        let empty = dated_sidecar(b" {} ", Some("t")).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&empty).unwrap(),
            serde_json::json!({"created_at": "t"})
        );
        // A created_at of another type: written anew instead (no duplicate member).
        assert_eq!(dated_sidecar(b"{\"created_at\": null}", Some("t")), None);
        assert_eq!(dated_sidecar(b"[1]", Some("t")), None);
    }
}
