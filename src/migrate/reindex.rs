//! `upload-server reindex`: the catalog's file rows rebuilt from the bucket. Every data
//! object under `{S3_PREFIX}storage/` gets a row unless it has one (rows already there are
//! left as they are); with `--prune`, rows whose object is gone are removed. The usage of
//! every user touched is then recounted from the rows.
//!
//! A row takes its metadata from the sidecar object (one the server makes up from the name
//! when it is missing or unreadable, said on stderr); a sidecar without a SHA-256 or a
//! CRC-32 (the old service wrote no CRC-32) has them computed from the object's bytes, and a
//! SHA-256 that the bytes do not match fails that object (no row).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};

use super::progress::Progress;
use super::{connect, created_at, human, quiet_logs, same_sha, Outcome, Target, JOBS};
use crate::config::Settings;
use crate::store::key::{Key, UserId};
use crate::store::pg::{CatalogError, FileRecord};
use crate::store::read::{meta_from, MAX_SIDECAR};
use crate::store::s3::{ObjectInfo, S3Error};
use crate::store::sidecar::Meta;
use crate::store::sink::Hashes;
use crate::store::StoreError;

/// What `reindex` is asked to do besides adding missing rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReindexOptions {
    /// Remove the rows whose object is gone.
    pub prune: bool,
}

/// Catalog rows read per page while looking for rows without an object.
const PAGE: u64 = 1000;

/// What became of one data object.
enum Done {
    Added,
    Kept,
    Failed,
}

/// Rebuilds the catalog's file rows from the bucket of the `s3` settings.
pub async fn run(settings: &Settings, options: ReindexOptions) -> Outcome {
    quiet_logs();
    let unusable = |why: &str| {
        eprintln!(
            "upload-server: configuration error: {}",
            why.replace('\n', " ")
        );
        Outcome::Unusable
    };
    let target = match connect(settings, "reindex").await {
        Ok(t) => Arc::new(t),
        Err(why) => return unusable(&why),
    };
    // Rows made after this (uploads to a live server) are never taken for rows whose
    // object is gone: the listing below cannot have seen their objects.
    let started = chrono::Utc::now();
    let listing = match list_bucket(&target).await {
        Ok(l) => l,
        Err(e) => return unusable(&format!("listing the bucket: {e}")),
    };
    let prefix = target.s3.prefix().to_owned();
    let mut data: Vec<(Key, ObjectInfo, bool)> = Vec::new();
    let mut ignored = 0u64;
    let total_bytes = listing
        .iter()
        .filter(|(k, _)| !k.ends_with(".meta"))
        .map(|(_, o)| o.size)
        .sum();
    let total = listing.keys().filter(|k| !k.ends_with(".meta")).count() as u64;
    let progress = Progress::new("reindex", total, total_bytes);
    for (text, info) in &listing {
        if let Some(of) = text.strip_suffix(".meta") {
            if !listing.contains_key(of) {
                progress.say(&format!(
                    "ignored: {prefix}{text}: a sidecar without its data object"
                ));
            }
            continue;
        }
        match Key::parse(text) {
            Ok(key) => {
                let has_sidecar = listing.contains_key(&format!("{text}.meta"));
                data.push((key, info.clone(), has_sidecar));
            }
            Err(_) => {
                ignored += 1;
                progress.say(&format!(
                    "ignored (the server never serves it): {prefix}{text}: not a valid file key"
                ));
            }
        }
    }
    let users: BTreeSet<UserId> = data.iter().map(|(k, _, _)| k.owner().clone()).collect();

    let ticker = progress.ticker();
    let (mut added, mut kept, mut failed) = (0u64, 0u64, 0u64);
    let mut results = stream::iter(data)
        .map(|(key, info, has_sidecar)| {
            let target = target.clone();
            let progress = progress.clone();
            async move {
                let done = match index_one(&target, &key, &info, has_sidecar, &progress).await {
                    Ok(done) => done,
                    Err(why) => {
                        progress.say(&format!("FAILED {key}: {why}"));
                        Done::Failed
                    }
                };
                progress.file_done();
                done
            }
        })
        .buffer_unordered(JOBS);
    while let Some(done) = results.next().await {
        match done {
            Done::Added => added += 1,
            Done::Kept => kept += 1,
            Done::Failed => failed += 1,
        }
    }
    drop(ticker);

    let (orphans, pruned_users) =
        match rows_without_object(&target, &listing, started, options.prune, &progress).await {
            Ok(r) => r,
            Err(why) => {
                progress.say(&format!("FAILED looking for rows without an object: {why}"));
                failed += 1;
                (Orphans::default(), BTreeSet::new())
            }
        };
    failed += orphans.failed;
    for user in users.union(&pruned_users) {
        if let Err(e) = target.catalog.reconcile(user).await {
            progress.say(&format!("FAILED recounting the usage of {user}: {e}"));
            failed += 1;
        }
    }

    let ignored = if ignored > 0 {
        format!(", {ignored} ignored")
    } else {
        String::new()
    };
    let rows = if options.prune {
        format!("{} rows without an object pruned", orphans.pruned)
    } else {
        format!(
            "{} rows without an object (--prune removes them)",
            orphans.found
        )
    };
    println!(
        "reindex: {added} added, {kept} kept, {failed} failed{ignored}; {rows}; {} of objects in {:.1} s",
        human(total_bytes),
        progress.elapsed().as_secs_f64()
    );
    if failed > 0 {
        Outcome::SomeFailed
    } else {
        Outcome::Done
    }
}

/// Every object under `{prefix}storage/`, by key without the prefix.
async fn list_bucket(target: &Target) -> Result<BTreeMap<String, ObjectInfo>, S3Error> {
    let prefix = target.s3.prefix().to_owned();
    target
        .s3
        .list_prefix("storage")
        .try_fold(BTreeMap::new(), |mut all, info| {
            let key = info
                .location
                .strip_prefix(&prefix)
                .unwrap_or(&info.location)
                .to_owned();
            all.insert(key, info);
            async move { Ok(all) }
        })
        .await
}

/// A row for one data object, unless it has one.
async fn index_one(
    target: &Target,
    key: &Key,
    info: &ObjectInfo,
    has_sidecar: bool,
    progress: &Progress,
) -> Result<Done, String> {
    match target.catalog.file(key).await {
        Ok(_) => {
            progress.add_bytes(info.size);
            return Ok(Done::Kept);
        }
        Err(CatalogError::Store(StoreError::NotFound(_))) => {}
        Err(e) => return Err(format!("catalog: {e}")),
    }
    let text = key.to_string();
    let sidecar = if has_sidecar {
        match read_object(target, &format!("{text}.meta"), MAX_SIDECAR).await {
            Ok(b) => b,
            Err(S3Error::NotFound) => None,
            Err(e) => return Err(format!("bucket: the sidecar: {e}")),
        }
    } else {
        None
    };
    let readable = sidecar.filter(|b| Meta::from_json(b, "", "").is_some());
    if readable.is_none() {
        let why = if has_sidecar {
            "its sidecar object is no JSON object (or too large)"
        } else {
            "it has no sidecar object"
        };
        progress.say(&format!(
            "WARN {text}: {why}: the row gets the metadata the server makes up from the name"
        ));
    }
    let meta = meta_from(readable.as_deref(), key);

    let (mut size, mut sha256, mut crc32) = (info.size, meta.sha256.clone(), meta.crc32);
    if sha256.is_none() || crc32.is_none() {
        let (n, sha, crc) = hash_object(target, &text, progress)
            .await
            .map_err(|e| format!("bucket: reading the object: {e}"))?;
        if let Some(s) = &meta.sha256 {
            if !same_sha(s, &sha) {
                return Err(format!(
                    "SHA-256 mismatch: the bytes hash to {sha}, the sidecar says {s}: not recorded"
                ));
            }
        }
        (size, sha256, crc32) = (n, Some(sha), Some(crc));
    } else {
        progress.add_bytes(info.size);
    }
    let record = FileRecord {
        key: key.clone(),
        size,
        sha256,
        crc32,
        mime: meta.mime.clone(),
        created_at: created_at(&meta, info.last_modified),
        meta,
    };
    let inserted = target
        .catalog
        .insert_file(&record)
        .await
        .map_err(|e| format!("catalog: {e}"))?;
    Ok(if inserted { Done::Added } else { Done::Kept })
}

/// The whole object at `key`, or `None` when it is larger than `limit`.
async fn read_object(target: &Target, key: &str, limit: usize) -> Result<Option<Vec<u8>>, S3Error> {
    let mut got = target.s3.get_range(key, None).await?;
    if got.size > limit as u64 {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(got.size).unwrap_or(0));
    while let Some(chunk) = got.stream.next().await {
        bytes.extend_from_slice(&chunk?);
    }
    Ok(Some(bytes))
}

/// Size, hex SHA-256 and CRC-32 of the object at `key`, streamed.
async fn hash_object(
    target: &Target,
    key: &str,
    progress: &Progress,
) -> Result<(u64, String, u32), S3Error> {
    let mut got = target.s3.get_range(key, None).await?;
    let mut hashes = Hashes::default();
    let mut size = 0u64;
    while let Some(chunk) = got.stream.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        progress.add_bytes(chunk.len() as u64);
        hashes.update(&chunk);
    }
    let (sha, crc) = hashes.finish();
    Ok((size, sha, crc))
}

/// Rows whose object the listing did not see.
#[derive(Debug, Default)]
struct Orphans {
    /// Found (confirmed gone by a HEAD).
    found: u64,
    /// Removed (`--prune`).
    pruned: u64,
    /// That could not be checked or removed.
    failed: u64,
}

/// Walks the catalog for rows whose object is gone (not listed, and a HEAD confirms it),
/// made before `started`; removes them with `prune`. Returns the counts and the users whose
/// rows were removed.
async fn rows_without_object(
    target: &Target,
    listing: &BTreeMap<String, ObjectInfo>,
    started: chrono::DateTime<chrono::Utc>,
    prune: bool,
    progress: &Progress,
) -> Result<(Orphans, BTreeSet<UserId>), CatalogError> {
    let mut orphans = Orphans::default();
    let mut users = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = target
            .catalog
            .file_keys_after(after.as_deref(), PAGE)
            .await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        for (text, created) in page {
            if listing.contains_key(&text) || created >= started {
                continue;
            }
            match target.s3.head(&text).await {
                Err(S3Error::NotFound) => {}
                Ok(_) => continue,
                Err(e) => {
                    progress.say(&format!("FAILED {text}: bucket: {e}"));
                    orphans.failed += 1;
                    continue;
                }
            }
            orphans.found += 1;
            if !prune {
                progress.say(&format!("WARN {text}: the row's object is gone"));
                continue;
            }
            let Ok(key) = Key::parse(&text) else {
                progress.say(&format!("FAILED {text}: not a valid key: left as it is"));
                orphans.failed += 1;
                continue;
            };
            match target.catalog.delete_file(&key).await {
                Ok(_) | Err(CatalogError::Store(StoreError::NotFound(_))) => {
                    progress.say(&format!("pruned {text}: its object is gone"));
                    orphans.pruned += 1;
                    users.insert(key.owner().clone());
                }
                Err(e) => {
                    progress.say(&format!("FAILED {text}: catalog: {e}"));
                    orphans.failed += 1;
                }
            }
        }
    }
    Ok((orphans, users))
}
